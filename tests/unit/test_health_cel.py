"""controller/health/_cel.py: health rules users write in CEL (Flux's healthCheckExprs shape),
parsed from YAML texts, evaluated on fixtures (testdata/health/cel/), broken ones reported as
Unknown with the error, and the source that re-reads them while the controller runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from controller.health import HealthContext, RuleSource, assess, parse_rules
from controller.model import HealthResult, HealthStatus

TESTDATA = Path(__file__).parent / "testdata" / "health" / "cel"
H, S, P, D, U = (HealthStatus.HEALTHY, HealthStatus.SUSPENDED, HealthStatus.PROGRESSING, HealthStatus.DEGRADED,
                 HealthStatus.UNKNOWN)
WHERE = "ConfigMap gantry/gantry-health-rules, key rules.yaml"
RULES = parse_rules({WHERE: (TESTDATA / "rules.yaml").read_text()})
WITH_RULES = HealthContext(rules=RULES)


def load(name: str) -> dict:
    return yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())


def with_rule(text: str) -> HealthContext:
    return HealthContext(rules=parse_rules({"test": text}))


@pytest.mark.parametrize(("fixture", "expected"), [
    ("widget-ready", HealthResult(H, "")),
    ("widget-building", HealthResult(P, "inProgress")),
    ("widget-broken", HealthResult(D, "failed: Ready: FluxCapacitorMissing: the flux capacitor is out")),
    ("widget-new", HealthResult(P, "none of the rule's expressions holds yet")),
    ("widget-stale", HealthResult(P, "waiting for the latest generation to be observed")),
])
def test_the_users_rule_decides(fixture: str, expected: HealthResult) -> None:
    assert assess(load(fixture), WITH_RULES) == expected


def test_without_the_rule_the_generic_one_cannot_tell() -> None:
    """Why the user writes the rule: phase Building is no convention, FluxCapacitorMissing no failure word."""
    assert assess(load("widget-building")) is None
    changed = datetime(2025, 1, 14, 9, 12, 4, tzinfo=timezone.utc)
    assert assess(load("widget-broken"), HealthContext(now=changed + timedelta(minutes=1))).status == P
    assert assess(load("widget-broken"), HealthContext(now=changed + timedelta(minutes=11))).status == D  # timed out
    assert assess(load("widget-ready")) == HealthResult(H, "Ready")


def test_a_users_rule_wins_over_a_built_in_one() -> None:
    certificate = yaml.safe_load((TESTDATA.parent / "crds" / "certificate-failed.yaml").read_text())
    context = with_rule("- {apiVersion: cert-manager.io/v1, kind: Certificate, current: 'true'}")
    assert assess(certificate, context) == HealthResult(H, "")


def test_globs_match_groups_and_kinds() -> None:
    database = {"apiVersion": "db.example.org/v1", "kind": "Database", "metadata": {"name": "d"},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert assess(database, WITH_RULES) == HealthResult(H, "")
    # a missing field is an evaluation error, reported, not a crash
    result = assess({**database, "status": {}}, WITH_RULES)
    assert result.status == U
    assert result.message == (f"health rule for *.example.org/* ({WHERE}, rule 2): current "
                              "`status.conditions.exists(c, c.type == 'Ready' && c.status == 'True')`: "
                              "no such key: conditions")


@pytest.mark.parametrize(("text", "message"), [
    ("- {apiVersion: example.com/v1, kind: Widget, current: \"status.phase ==\"}",
     "health rule for example.com/Widget (test, rule 1): current `status.phase ==`: at 1:16: Syntax error"),
    ("- {apiVersion: example.com/v1, kind: Widget, current: \"status.phase\"}",
     "health rule for example.com/Widget (test, rule 1): current `status.phase` gave str 'Ready', not true or false"),
    ("- {apiVersion: example.com/v1, kind: Widget, current: \"status.replicas + 'x' == 1\"}",
     "health rule for example.com/Widget (test, rule 1): current `status.replicas + 'x' == 1`: No such overload"),
    ("- {apiVersion: example.com/v1, kind: Widget, current: \"nosuchfunction(status)\"}",
     "health rule for example.com/Widget (test, rule 1): current `nosuchfunction(status)`: "
     "Undefined variable or function: 'nosuchfunction'"),
    ("- {apiVersion: example.com/v1, kind: Widget, failed: \"false\"}",
     "health rule for example.com/Widget (test, rule 1): current is required"),
    ("- {apiVersion: example.com/v1, kind: Widget, current: \"true\", curent: \"x\"}",
     "health rule for example.com/Widget (test, rule 1): unknown field 'curent'; the fields are apiVersion (or group), "
     "kind, inProgress, failed, current"),
])
def test_a_broken_rule_makes_its_objects_unknown_with_the_error(text: str, message: str) -> None:
    result = assess(load("widget-ready"), with_rule(text))
    assert result.status == U
    assert result.message.startswith(message), result.message


def test_problems_no_kind_can_be_blamed_for_are_listed() -> None:
    rules = parse_rules({"a": "- {current: 'true'}", "b": "{not: [valid", "c": "just a string", "d": "",
                         "e": "healthCheckExprs:\n- {apiVersion: x.io/v1, kind: X, current: 'true'}"})
    assert [r.label for r in rules.rules] == ["x.io/X"]
    assert rules.problems[0] == "a, rule 1: a rule needs a kind (and apiVersion or group)"
    assert rules.problems[1].startswith("b: not valid YAML: ")
    assert rules.problems[2] == "c: expected a list of rules (apiVersion, kind, inProgress, failed, current)"
    assert len(rules.problems) == 3


def test_the_expressions_see_the_whole_object() -> None:
    context = with_rule("- apiVersion: example.com/v1\n  kind: Widget\n"
                        "  current: \"metadata.name == 'w' && kind == 'Widget' && spec.size == 3\"")
    assert assess(load("widget-new"), context) == HealthResult(H, "")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_source_rereads_after_its_ttl_and_parses_only_changes() -> None:
    texts = {"rules.yaml": "- {apiVersion: example.com/v1, kind: Widget, current: 'true'}"}
    reads: list[int] = []

    def read() -> dict[str, str]:
        reads.append(1)
        return dict(texts)

    clock = Clock()
    source = RuleSource([("ConfigMap gantry/gantry-health-rules", read)], ttl=10, clock=clock)
    first = source.current()
    assert [r.where for r in first.rules] == ["ConfigMap gantry/gantry-health-rules, key rules.yaml, rule 1"]
    clock.now = 5
    assert source.current() is first and len(reads) == 1  # within the TTL: not read again
    clock.now = 10
    assert source.current() is first and len(reads) == 2  # read again, unchanged: not parsed again
    texts["rules.yaml"] = "- {apiVersion: example.com/v1, kind: Widget, current: 'false'}"
    clock.now = 20
    assert assess(load("widget-ready"), HealthContext(rules=source.current())).status == P


def test_a_failing_reader_keeps_its_last_rules_and_is_reported_once() -> None:
    state = {"fail": False}
    reported: list[str] = []

    def read() -> dict[str, str]:
        if state["fail"]:
            raise ConnectionError("apiserver unavailable\nmore")
        return {"k": "- {apiVersion: example.com/v1, kind: Widget, current: 'true'}"}

    clock = Clock()
    source = RuleSource([("ConfigMap gantry/rules", read)], ttl=1, clock=clock, report=reported.append)
    assert len(source.current().rules) == 1
    state["fail"] = True
    for now in (1, 2, 3):
        clock.now = now
        assert len(source.current().rules) == 1
    assert reported == ["cannot read health rules from ConfigMap gantry/rules: apiserver unavailable"]


def test_an_absent_source_has_no_rules_and_broken_entries_are_reported() -> None:
    reported: list[str] = []
    source = RuleSource([("file /etc/gantry/rules.yaml", lambda: None),
                         ("ConfigMap gantry/r", lambda: {"x": "- {kind: W, current: 'a +'}"})], report=reported.append)
    rules = source.current()
    assert rules.find("", "W") is not None and rules.find("", "W").error
    assert reported == [f"ConfigMap gantry/r, key x, rule 1: {rules.find('', 'W').error}"]


def test_every_fixture_is_used() -> None:
    used = {"widget-ready", "widget-building", "widget-broken", "widget-new", "widget-stale", "rules"}
    assert {p.stem for p in TESTDATA.glob("*.yaml")} == used
