"""Health rules users add without a release: CEL expressions per group/kind, in the shape of Flux's
Kustomization `healthCheckExprs` (`inProgress`, `failed`, `current`), read from a ConfigMap or a
file by the controller and re-read while it runs.

    - apiVersion: example.com/v1          # or group: example.com; the version is not compared
      kind: Widget                          # group and kind may be globs: *.example.com, *
      inProgress: "status.phase == 'Building'"
      failed: "status.conditions.exists(c, c.type == 'Ready' && c.status == 'False')"
      current: "status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')"

As in Flux: status about an older generation is Progressing before any expression runs; then the
first of inProgress, failed, current that is true decides (Progressing, Degraded, Healthy); none
true is Progressing. The expressions see the object's top-level fields (`metadata`, `spec`,
`status` …; the three are `{}` when absent). A rule that does not compile, an expression that
fails (a field the object does not have: guard it with `has()`) or gives something other than a
bool makes its objects Unknown, with the expression and the error; it never raises.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from controller.health._base import D, H, P, U, _conditions, _find_condition, _is_false, _stale, _text
from controller.model import HealthResult, Manifest

_FIELDS = (("inProgress", P), ("failed", D), ("current", H))
_KEYS = frozenset({"apiVersion", "group", "kind", "inProgress", "failed", "current"})


@dataclass(frozen=True)
class Expression:
    field: str  # inProgress | failed | current
    source: str
    program: object  # cel.Program


@dataclass(frozen=True)
class Rule:
    """One group/kind's expressions, or why they cannot be used (`error`)."""

    group: str
    kind: str
    where: str  # "ConfigMap gantry/gantry-health-rules, key widgets.yaml, rule 1"
    expressions: tuple[Expression, ...] = ()
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.group}/{self.kind}" if self.group else self.kind


@dataclass(frozen=True)
class UserRules:
    """Parsed rules; `problems` are entries no kind can be blamed for (broken YAML, no kind)."""

    rules: tuple[Rule, ...] = ()
    problems: tuple[str, ...] = ()

    def find(self, group: str, kind: str) -> Rule | None:
        """The rule for (group, kind): an exact one first, else the first whose globs match."""
        for candidate in self.rules:
            if candidate.group == group and candidate.kind == kind:
                return candidate
        for candidate in self.rules:
            if fnmatch.fnmatchcase(group, candidate.group) and fnmatch.fnmatchcase(kind, candidate.kind):
                return candidate
        return None


def parse_rules(texts: Mapping[str, str]) -> UserRules:
    """Rules from YAML texts, each named by where it was read (`ConfigMap ns/name, key k`). A text
    holds a list of rules, or a mapping with that list under `healthCheckExprs` (pasted from Flux)."""
    rules: list[Rule] = []
    problems: list[str] = []
    for where, text in texts.items():
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problems.append(f"{where}: not valid YAML: {_first_line(str(error))}")
            continue
        if isinstance(loaded, dict) and "healthCheckExprs" in loaded:
            loaded = loaded["healthCheckExprs"]
        if loaded is None:
            continue
        if not isinstance(loaded, list):
            problems.append(f"{where}: expected a list of rules (apiVersion, kind, inProgress, failed, current)")
            continue
        for number, entry in enumerate(loaded, 1):
            parsed = _rule(entry, f"{where}, rule {number}")
            if isinstance(parsed, Rule):
                rules.append(parsed)
            else:
                problems.append(parsed)
    return UserRules(tuple(rules), tuple(problems))


def _rule(entry: object, where: str) -> Rule | str:
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str) or not entry["kind"]:
        return f"{where}: a rule needs a kind (and apiVersion or group)"
    group = entry.get("group")
    if group is None:
        api_version = str(entry.get("apiVersion") or "")
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
    rule = Rule(str(group), entry["kind"], where)
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        return _broken(rule, f"unknown field {', '.join(map(repr, unknown))}; the fields are "
                             f"apiVersion (or group), kind, inProgress, failed, current")
    if not entry.get("current"):
        return _broken(rule, "current is required (the expression that says the object is healthy), as in Flux")
    expressions = []
    for name, _ in _FIELDS:
        source = entry.get(name)
        if not source:
            continue
        try:
            expressions.append(Expression(name, str(source), _cel().compile(str(source))))
        except Exception as error:  # noqa: BLE001 (the library raises ValueError, or others on odd input)
            return _broken(rule, f"{name} `{source}`: {_cel_error(error)}")
    return Rule(rule.group, rule.kind, where, tuple(expressions))


def _cel():  # type: ignore[no-untyped-def]
    """The CEL library, imported when the first user rule is read: it costs the controller 13 MiB
    of memory (measured with ru_maxrss), which installs without health rules need not spend."""
    import cel

    return cel


def _broken(rule: Rule, error: str) -> Rule:
    return Rule(rule.group, rule.kind, rule.where, (), error)


def evaluate(rule: Rule, obj: Manifest) -> HealthResult:
    """The object's health by `rule`; every failure is an Unknown result, never an exception."""
    prefix = f"health rule for {rule.label} ({rule.where})"
    if rule.error:
        return HealthResult(U, f"{prefix}: {rule.error}")
    if _stale(obj):
        return HealthResult(P, "waiting for the latest generation to be observed")
    variables = {**obj, **{key: obj.get(key) or {} for key in ("metadata", "spec", "status")}}
    for expression in rule.expressions:
        try:
            value = expression.program.execute(_cel().Context(variables=variables))  # type: ignore[attr-defined]
        except Exception as error:  # noqa: BLE001 (any evaluation error is the rule's, reported)
            return HealthResult(U, f"{prefix}: {expression.field} `{expression.source}`: {_cel_error(error)}")
        if not isinstance(value, bool):
            return HealthResult(U, f"{prefix}: {expression.field} `{expression.source}` gave "
                                   f"{type(value).__name__} {value!r}, not true or false")
        if value:
            status = dict(_FIELDS)[expression.field]
            return HealthResult(status, "" if status is H else _explain(obj, expression.field))
    return HealthResult(P, _explain(obj, "none of the rule's expressions holds yet"))


def _explain(obj: Manifest, verdict: str) -> str:
    """What the object itself says, after the verdict: its Ready condition, or one that is False."""
    conditions = _conditions(obj)
    cond = _find_condition(conditions, "Ready") or next((c for c in conditions if _is_false(c)), None)
    detail = _text(cond)
    return f"{verdict}: {cond.get('type')}: {detail}" if cond and detail else verdict


def _cel_error(error: Exception) -> str:
    """The library's error in one line: parse errors carry `ERROR: <input>:1:7: …` and a caret
    drawing; a missing map key is a bare KeyError."""
    if isinstance(error, KeyError):
        return f"no such key: {error.args[0] if error.args else '?'}"
    text = str(error)
    for line in text.splitlines():
        if "ERROR: <input>:" in line:
            return "at " + line.split("ERROR: <input>:", 1)[1].strip()
    return _first_line(text).split(". Check that", 1)[0]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


# ---------------------------------------------------------------------------------------------


Reader = Callable[[], Mapping[str, str] | None]


@dataclass
class RuleSource:
    """The rules as last read from `readers` (name → a function giving {key: YAML text}, or None
    when its ConfigMap or file does not exist), read again on demand once `ttl` seconds have
    passed, so an edit takes effect within that time without a restart, and parsed only when a
    text changed. A reader that fails keeps what it gave before; `report` hears of each new
    problem (a failing reader, an entry no kind can be blamed for), once."""

    readers: Sequence[tuple[str, Reader]]
    ttl: float = 10.0
    report: Callable[[str], None] = lambda problem: None
    clock: Callable[[], float] = time.monotonic
    _texts: dict[str, str] = field(default_factory=dict)
    _rules: UserRules = field(default_factory=UserRules)
    _read_at: float | None = None
    _reported: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> UserRules:
        with self._lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.ttl:
                self._read_at = now
                self._refresh()
            return self._rules

    def _refresh(self) -> None:
        texts: dict[str, str] = {}
        problems: list[str] = []
        for name, read in self.readers:
            try:
                found = read()
            except Exception as error:  # noqa: BLE001 (an unreadable source keeps its last rules)
                problems.append(f"cannot read health rules from {name}: {_first_line(str(error))}")
                texts.update({k: v for k, v in self._texts.items() if k.startswith(f"{name}, key ")})
                continue
            texts.update({f"{name}, key {key}": str(value) for key, value in (found or {}).items()})
        if texts != self._texts:
            self._texts, self._rules = texts, parse_rules(texts)
            self._reported.clear()  # an edit: what is still wrong in it is news again
        for problem in [*problems, *self._rules.problems, *(f"{r.where}: {r.error}" for r in self._rules.rules
                                                            if r.error)]:
            if problem not in self._reported:
                self._reported.add(problem)
                self.report(problem)
