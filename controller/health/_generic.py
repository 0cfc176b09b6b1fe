"""The rule for kinds without one of their own: Kubernetes' status conventions, as kstatus
implements them for `kubectl wait` and Flux, and the `status.phase` many older controllers write.

In this order: status about an older generation → Progressing; `Stalled=True` → Degraded;
`Reconciling=True` → Progressing; `spec.suspend: true` → Suspended; `Synced=False` (Crossplane's
claims and composites, in groups of their users' choosing) → Degraded; then `Ready`, else
`Available`: True → Healthy, False → Progressing unless its reason says it failed or it has been
False beyond STUCK_AFTER_SECONDS (then Degraded), Unknown → Progressing; then the phase. An object
with none of these has no health (a ConfigMap-like kind), as in Argo CD.
"""

from __future__ import annotations

from controller.health._base import (
    D, H, P, S, HealthContext, _conditions, _false_ready, _find_condition, _generation, _is_false, _is_true,
    _metadata, _spec, _stale, _status, _text, _truth,
)
from controller.model import HealthResult, Manifest

# Phases as controllers spell them, compared without case. A phase not listed says nothing we can
# rank, so the object is left without health rather than guessed at.
_PHASES = {
    H: ("Succeeded", "Completed", "Complete", "Success", "Successful", "Ready", "Active", "Available", "Healthy",
        "Bound", "Established", "Provisioned", "Deployed", "Synced", "Done", "Finished"),
    # Running is a workflow's or a job's progress, not its result (Argo Workflows, Tekton, Spark).
    P: ("Pending", "Running", "Progressing", "Provisioning", "Creating", "Initializing", "Waiting", "Deploying", "Updating",
        "Upgrading", "Installing", "Scaling", "ScalingUp", "ScalingDown", "Starting", "Reconciling", "InProgress",
        "Processing", "Queued", "Deleting", "Terminating", "New", "Unknown", "Restarting", "Rolling"),
    D: ("Failed", "Error", "Errored", "Failure", "Degraded", "Unhealthy", "Aborted", "Lost", "Invalid",
        "CrashLoopBackOff"),
    S: ("Paused", "Suspended", "Stopped"),
}
_PHASE_STATUS = {phase.lower(): status for status, phases in _PHASES.items() for phase in phases}


def generic(obj: Manifest, context: HealthContext | None) -> HealthResult | None:
    conditions = _conditions(obj)
    if _stale(obj):
        observed = _generation(_status(obj).get("observedGeneration"))
        generation = _generation(_metadata(obj).get("generation"))
        return HealthResult(P, f"waiting for the latest generation to be observed ({generation}; status is "
                               f"about {observed})")
    stalled = _find_condition(conditions, "Stalled")
    if _is_true(stalled):
        return HealthResult(D, _text(stalled, "stalled"))
    reconciling = _find_condition(conditions, "Reconciling")
    if _is_true(reconciling):
        return HealthResult(P, _text(reconciling, "reconciling"))
    if _spec(obj).get("suspend") is True:
        return HealthResult(S, "suspended (spec.suspend)")
    synced = _find_condition(conditions, "Synced")
    if _is_false(synced):
        if synced.get("reason") == "ReconcilePaused":
            return HealthResult(S, _text(synced))
        return HealthResult(D, f"Synced: {_text(synced, 'not synced')}")
    ready = _find_condition(conditions, "Ready") or _find_condition(conditions, "Available")
    if ready is not None:
        return ready_condition(obj, ready, context)
    return phase(obj)


def ready_condition(obj: Manifest, ready: dict, context: HealthContext | None, *, what: str = "") -> HealthResult:
    """A Ready-like condition by the conventions: `what` prefixes the message."""
    if _stale(obj, ready):
        return HealthResult(P, f"{what}waiting for the latest generation to be observed")
    truth = _truth(ready)
    if truth == "True":
        return HealthResult(H, f"{what}{ready.get('message') or ''}".rstrip(": "))
    if truth == "False":
        return _false_ready(ready, context, what)
    return HealthResult(P, f"{what}{_text(ready, str(ready.get('type')) + ' is ' + truth)}")


def phase(obj: Manifest) -> HealthResult | None:
    status = _status(obj)
    value = status.get("phase")
    if not isinstance(value, str) or not value:
        return None
    found = _PHASE_STATUS.get(value.lower())
    if found is None:
        return None
    message = status.get("message") or status.get("reason")
    return HealthResult(found, f"{value}: {message}" if message else value)
