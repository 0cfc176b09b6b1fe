"""`python -m bench.report [DIR]`: the figures of bench/results/*.json as the Markdown table of
bench/README.md, with the machine, versions and date they were measured on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .stats import Figure, fmt

ORDER = ("first_sync", "noop_reconcile", "commit_to_synced", "drift_to_healed", "many_apps", "ui", "peer")


def markdown(directory: Path) -> str:
    documents = {}
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text())
        documents[document["benchmark"]] = document
    if not documents:
        raise SystemExit(f"no results in {directory}; run `make bench` first")
    first = next(documents[name] for name in ORDER if name in documents)
    machine, versions = first["machine"], first["versions"]
    flux = versions.get("flux") or {}
    lines = [
        f"Measured {first['date'][:16].replace('T', ' ')} UTC{' (QUICK mode)' if first.get('quick') else ''} on "
        f"{machine.get('nproc')} cores ({machine.get('cpu_model', '?')}), {machine.get('memory_gib')} GiB; "
        f"Kubernetes {versions.get('kubernetes')}, kustomize {versions.get('kustomize')}, Gantry "
        f"{str(versions.get('gantry_git_sha', ''))[:12]}"
        + (", Flux " + ", ".join(f"{k} {v}" for k, v in flux.items()) if flux else "")
        + f"; load average at start {' '.join(str(v) for v in first.get('load_average_at_start', []))}.",
        "",
        "| benchmark | system | metric | median | p10–p90 | n | unit |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name in ORDER:
        document = documents.get(name)
        if document is None or name == "peer":
            continue
        for raw in document["figures"]:
            figure = Figure(raw["system"], raw["metric"], raw["unit"], raw["values"], raw.get("note", ""))
            s = figure.summary
            if s is None:
                continue
            lines.append(f"| {name} | {figure.system} | {figure.metric.strip()} | {fmt(s.median, figure.unit)} | "
                         f"{fmt(s.p10, figure.unit)}–{fmt(s.p90, figure.unit)} | {s.n} | {figure.unit} |")
    peer = documents.get("peer")
    if peer and peer["details"].get("rows"):
        lines += ["", "| quantity (medians) | unit | floor | gantry | flux | gantry/floor | gantry/flux |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for row in peer["details"]["rows"]:
            medians, ratios = row["medians"], row["gantry_over"]
            cells = [fmt(medians.get(s), row["unit"]) for s in ("floor", "gantry", "flux")]
            cells += [f"{ratios[s]:.2f}×" if ratios.get(s) is not None else "–" for s in ("floor", "flux")]
            lines.append(f"| {row['quantity']} | {row['unit']} | " + " | ".join(cells) + " |")
    notes = [n for name in ORDER for n in (documents.get(name) or {}).get("notes", [])
             if "gantry /" in n or "no-op /" in n or "interval" in n]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"))
