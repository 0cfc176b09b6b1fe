"""controller/health/_generic.py: kinds without a rule of their own, read by Kubernetes' status
conventions (kstatus): fixtures in testdata/health/generic/, and objects in odd shapes that must
give an answer, never an exception."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from controller.health import STUCK_AFTER_SECONDS, HealthContext, assess
from controller.model import HealthResult, HealthStatus

TESTDATA = Path(__file__).parent / "testdata" / "health" / "generic"
H, S, P, D, U = (HealthStatus.HEALTHY, HealthStatus.SUSPENDED, HealthStatus.PROGRESSING, HealthStatus.DEGRADED,
                 HealthStatus.UNKNOWN)
CHANGED = datetime(2025, 1, 14, 9, 12, 4, tzinfo=timezone.utc)  # the fixtures' lastTransitionTime
SOON = HealthContext(now=CHANGED + timedelta(seconds=30))
LATE = HealthContext(now=CHANGED + timedelta(seconds=STUCK_AFTER_SECONDS + 1))

CASES = [
    ("helmrelease-ready", SOON, H, "Helm install succeeded"),
    ("helmrelease-install-failed", SOON, D, "InstallFailed: Helm install failed"),
    ("helmrelease-stalled", SOON, D, "RetriesExceeded: Failed to install after 1 attempt(s)"),
    ("helmrelease-reconciling", SOON, P, "Progressing: Running 'upgrade' action"),
    ("helmrelease-suspended", SOON, S, "suspended (spec.suspend)"),
    ("gitrepository-dependency-waiting", SOON, P, "DependencyNotReady: dependency 'flux-system/infra' is not ready"),
    ("gitrepository-dependency-waiting", LATE, D, "DependencyNotReady: dependency 'flux-system/infra' is not ready "
                                                  "(not ready for 10m1s)"),
    ("sealedsecret-boolean-status", SOON, H, ""),
    ("thing-boolean-false", SOON, D, "ConfigError: spec.size must be positive"),
    ("database-phase-failed", SOON, D, "Failed: backup volume not found"),
    ("database-phase-running", SOON, P, "Running"),
    ("database-phase-succeeded", SOON, H, "Succeeded"),
    ("database-phase-odd", SOON, None, None),
]


def load(name: str) -> dict:
    return yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())


@pytest.mark.parametrize(("fixture", "context", "status", "message"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_assess(fixture: str, context: HealthContext, status: HealthStatus | None, message: str | None) -> None:
    result = assess(load(fixture), context)
    if status is None:
        assert result is None
        return
    assert result is not None and result.status == status, result
    assert message in result.message, result.message


def test_every_fixture_is_in_the_table() -> None:
    assert {p.stem for p in TESTDATA.glob("*.yaml")} == {case[0] for case in CASES}


def thing(status: object, generation: object = 1, **metadata: object) -> dict:
    return {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t", "generation": generation, **metadata},
            "status": status}


def ready(status: object, **extra: object) -> dict:
    return {"type": "Ready", "status": status, **extra}


@pytest.mark.parametrize(("obj", "expected"), [
    # kstatus: status about an older generation says nothing about this one
    (thing({"observedGeneration": 1, "conditions": [ready("True")]}, generation=2),
     HealthResult(P, "waiting for the latest generation to be observed (2; status is about 1)")),
    (thing({"conditions": [ready("True", observedGeneration=1)]}, generation=2),
     HealthResult(P, "waiting for the latest generation to be observed")),
    # generations that are not numbers (a hash, a float, a bool) are not compared, and do not crash
    (thing({"observedGeneration": "7d8f9c6b5", "conditions": [ready("True")]}), HealthResult(H, "")),
    (thing({"observedGeneration": 1.0, "conditions": [ready("True")]}, generation="2"),
     HealthResult(P, "waiting for the latest generation to be observed (2; status is about 1)")),
    (thing({"observedGeneration": True, "conditions": [ready("True")]}, generation={"x": 1}), HealthResult(H, "")),
    # statuses in any case, or as booleans
    (thing({"conditions": [ready("true")]}), HealthResult(H, "")),
    (thing({"conditions": [ready(False, reason="Creating")]}), HealthResult(P, "Creating")),
    (thing({"conditions": [ready(None)]}), HealthResult(P, "Ready is Unknown")),
    # Stalled and Reconciling decide before Ready
    (thing({"conditions": [{"type": "Stalled", "status": "True", "reason": "InvalidSpec"}, ready("True")]}),
     HealthResult(D, "InvalidSpec")),
    (thing({"conditions": [{"type": "Reconciling", "status": True, "message": "applying"}, ready("True")]}),
     HealthResult(P, "applying")),
    # Available, when there is no Ready
    (thing({"conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]}),
     HealthResult(P, "MinimumReplicasUnavailable")),
    # Crossplane's Synced in a group of its users' choosing
    (thing({"conditions": [{"type": "Synced", "status": "False", "reason": "ReconcileError", "message": "boom"},
                           ready("True")]}), HealthResult(D, "Synced: ReconcileError: boom")),
    # shapes that are not what the API conventions say: an answer, never an exception
    (thing("garbage"), None),
    (thing({"conditions": "Ready"}), None),
    (thing({"conditions": ["Ready", None, 3, ready("True")]}), HealthResult(H, "")),
    (thing({"phase": 3}), None),
    (thing({"conditions": [{"type": "Synced", "status": "True"}]}), None),
])
def test_conventions_and_odd_shapes(obj: dict, expected: HealthResult | None) -> None:
    assert assess(obj, SOON) == expected


def test_the_timeout_counts_from_the_conditions_last_transition() -> None:
    obj = thing({"conditions": [ready("False", reason="Provisioning", lastTransitionTime="2025-01-14T09:12:04Z")]})
    just = HealthContext(now=CHANGED + timedelta(seconds=STUCK_AFTER_SECONDS))
    assert assess(obj, just) == HealthResult(P, "Provisioning")
    assert assess(obj, LATE) == HealthResult(D, "Provisioning (not ready for 10m1s)")
    no_time = thing({"conditions": [ready("False", reason="Provisioning")]})
    assert assess(no_time, LATE) == HealthResult(P, "Provisioning")  # how long is unknown: not held against it


@pytest.mark.parametrize("reason", ["ReconciliationFailed", "InstallFailed", "ReconcileError", "ErrInitIssuer",
                                    "InvalidSpec", "AccessDenied", "ProgressDeadlineExceeded", "RolloutAborted",
                                    "ImagePullBackOff", "Unauthorized"])
def test_a_reason_that_says_it_failed_is_degraded_at_once(reason: str) -> None:
    assert assess(thing({"conditions": [ready("False", reason=reason)]}), SOON).status == D


@pytest.mark.parametrize("reason", ["Progressing", "Creating", "DependencyNotReady", "Pending", "WaitingForInfrastructure",
                                    "MinimumReplicasUnavailable", ""])
def test_a_reason_that_does_not_is_progressing(reason: str) -> None:
    assert assess(thing({"conditions": [ready("False", reason=reason)]}), SOON).status == P


def test_ignore_healthcheck_annotation_leaves_the_object_out() -> None:
    broken = thing({"conditions": [ready("False", reason="InstallFailed")]},
                   annotations={"argocd.argoproj.io/ignore-healthcheck": "true"})
    assert assess(broken, SOON) is None
    deployment = yaml.safe_load((TESTDATA.parent / "deployment-deadline-exceeded.yaml").read_text())
    deployment["metadata"].setdefault("annotations", {})["argocd.argoproj.io/ignore-healthcheck"] = "true"
    assert assess(deployment) is None
    deployment["metadata"]["annotations"]["argocd.argoproj.io/ignore-healthcheck"] = "false"
    assert assess(deployment).status == D
