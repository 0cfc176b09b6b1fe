"""Figures: summaries of repeated measurements and the tables `python -m bench` prints.

Pure functions only, so tests/unit/test_bench.py checks them without a cluster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0–100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p10: float
    p90: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Summary":
        return cls(
            n=len(values), median=percentile(values, 50), p10=percentile(values, 10), p90=percentile(values, 90),
            min=min(values), max=max(values), mean=sum(values) / len(values),
        )

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "median": self.median, "p10": self.p10, "p90": self.p90, "min": self.min,
                "max": self.max, "mean": self.mean}


@dataclass
class Figure:
    """One measured quantity for one system: its raw values, their unit and what they are."""

    system: str  # gantry | floor | flux | …
    metric: str  # e.g. "first sync", "RSS idle"
    unit: str  # s, MiB, count, apps/min, CPU s/min, ratio
    values: list[float] = field(default_factory=list)
    note: str = ""
    key: str = ""  # pairs the same quantity across systems for the side-by-side table ("" = not paired)

    @property
    def summary(self) -> Summary | None:
        return Summary.of(self.values) if self.values else None

    def to_dict(self) -> dict:
        summary = self.summary
        return {"system": self.system, "metric": self.metric, "unit": self.unit, "key": self.key,
                "values": [round(v, 6) for v in self.values],
                "summary": {k: round(v, 6) for k, v in summary.to_dict().items()} if summary else None,
                "note": self.note}


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float | None:
    """median(numerator) / median(denominator): how many times the floor (or the peer) a figure is."""
    if not numerator or not denominator:
        return None
    bottom = percentile(denominator, 50)
    return percentile(numerator, 50) / bottom if bottom else None


def fmt(value: float | None, unit: str = "") -> str:
    """A number as people read it: 3 significant figures, integers as integers."""
    if value is None:
        return "–"
    if unit == "count" or (float(value).is_integer() and abs(value) >= 10):
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(title: str, figures: Sequence[Figure], notes: Sequence[str] = ()) -> str:
    """A fixed-width table: one row per figure with median, p10–p90, min–max and n."""
    header = ("system", "metric", "median", "p10–p90", "min–max", "n", "unit")
    rows = [header]
    for figure in figures:
        s = figure.summary
        if s is None:
            rows.append((figure.system, figure.metric, "–", "–", "–", "0", figure.unit))
            continue
        rows.append((
            figure.system, figure.metric + (f" ({figure.note})" if figure.note else ""), fmt(s.median, figure.unit),
            f"{fmt(s.p10, figure.unit)}–{fmt(s.p90, figure.unit)}", f"{fmt(s.min, figure.unit)}–{fmt(s.max, figure.unit)}",
            str(s.n), figure.unit,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) if i < 2 or i == len(row) - 1 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines)


def comparison(title: str, figures: Sequence[Figure], systems: Sequence[str] = ("floor", "gantry", "flux"),
               notes: Sequence[str] = ()) -> tuple[str, list[dict]]:
    """Medians of the same quantity (same `key`) side by side, with Gantry's ratio to the others;
    returns the table and its rows (for the JSON)."""
    keys: list[str] = []
    by_key: dict[str, dict[str, Figure]] = {}
    for figure in figures:
        if figure.key and figure.values:
            if figure.key not in by_key:
                keys.append(figure.key)
            by_key.setdefault(figure.key, {})[figure.system] = figure
    others = [s for s in systems if s != "gantry"]
    header = ("quantity", "unit", *systems, *(f"gantry/{s}" for s in others))
    rows, data = [header], []
    for key in keys:
        found = by_key[key]
        medians = {s: percentile(found[s].values, 50) for s in systems if s in found}
        ratios = {s: ratio(found["gantry"].values, found[s].values) if "gantry" in found and s in found else None
                  for s in others}
        unit = next(iter(found.values())).unit
        label = found.get("gantry", next(iter(found.values()))).metric
        rows.append((key, unit, *(fmt(medians.get(s), unit) for s in systems),
                     *(f"{ratios[s]:.2f}×" if ratios[s] is not None else "–" for s in others)))
        data.append({"quantity": key, "metric": label, "unit": unit, "medians": medians,
                     "gantry_over": ratios, "metrics": {s: f.metric for s, f in found.items()}})
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines), data
