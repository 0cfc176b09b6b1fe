"""Health: how far each live object is from doing its job, one rule per kind (after sync, before status).

Pure functions over object dicts as the API server returns them, in the shape of gitops-engine's
pkg/health: `assess` looks the kind up in a registry and falls back to Ready/Available conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from controller.model import HealthResult, HealthStatus, Manifest

__all__ = ["HealthContext", "assess", "is_worse", "worst"]

# Most to least healthy, as Argo CD ranks them; an Application's health is the worst of its objects'.
_ORDER = (
    HealthStatus.HEALTHY,
    HealthStatus.SUSPENDED,
    HealthStatus.PROGRESSING,
    HealthStatus.MISSING,
    HealthStatus.DEGRADED,
    HealthStatus.UNKNOWN,
)
_RANK = {status: rank for rank, status in enumerate(_ORDER)}

DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"


@dataclass(frozen=True)
class HealthContext:
    """What the cluster offers beyond the object itself, for kinds whose health depends on it.

    An Ingress gets an address only if some controller serves its class; without this an Ingress
    in a cluster with no ingress controller would stay Progressing forever (a known Argo CD complaint).
    """

    ingress_classes: frozenset[str] = frozenset()
    default_ingress_class: str | None = None

    @classmethod
    def from_ingress_classes(cls, objects: Iterable[Manifest]) -> "HealthContext":
        """Build the context from the cluster's IngressClass objects (networking.k8s.io/v1)."""
        names: set[str] = set()
        default: str | None = None
        for obj in objects:
            metadata = obj.get("metadata") or {}
            name = metadata.get("name")
            if not name:
                continue
            names.add(name)
            if (metadata.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                # Several defaults is a cluster misconfiguration; pick one deterministically.
                default = name if default is None else min(default, name)
        return cls(frozenset(names), default)


_Check = Callable[[Manifest, HealthContext | None], HealthResult | None]
_REGISTRY: dict[tuple[str, str], _Check] = {}


def _kind(group: str, kind: str) -> Callable[[_Check], _Check]:
    """Register the decorated function as the health check of (group, kind)."""

    def register(check: _Check) -> _Check:
        _REGISTRY[(group, kind)] = check
        return check

    return register


def assess(obj: Manifest, context: HealthContext | None = None) -> HealthResult | None:
    """Health of one live object, or None for kinds that have no health (ConfigMap, Secret …).

    `context=None` means "cluster unknown": checks that need it assume the cluster can do its part.
    A failing check is reported as Unknown with the error, never raised: one odd object must not
    stop the health of the others from being written.
    """
    try:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return HealthResult(HealthStatus.PROGRESSING, "pending deletion")
        api_version = obj.get("apiVersion") or ""
        group = api_version.rpartition("/")[0]
        check = _REGISTRY.get((group, obj.get("kind") or ""), _conditions)
        return check(obj, context)
    except Exception as exc:  # noqa: BLE001 (deliberate: any bug in a rule becomes Unknown)
        return HealthResult(HealthStatus.UNKNOWN, f"health check failed: {type(exc).__name__}: {exc}")


def is_worse(current: HealthStatus, new: HealthStatus) -> bool:
    return _RANK[HealthStatus(new)] > _RANK[HealthStatus(current)]


def worst(results: Iterable[HealthResult | HealthStatus | None]) -> HealthStatus:
    """The worst status among `results` (None entries, objects without health, are skipped).

    Nothing to assess is Healthy, as in Argo CD: an empty app is not broken.
    """
    current = HealthStatus.HEALTHY
    for result in results:
        if result is None:
            continue
        status = result.status if isinstance(result, HealthResult) else HealthStatus(result)
        if is_worse(current, status):
            current = status
    return current


# ---------------------------------------------------------------------------------------------
# Helpers. The API server omits zero and empty fields from status, so every read has a default.


def _status(obj: Manifest) -> dict:
    return obj.get("status") or {}


def _spec(obj: Manifest) -> dict:
    return obj.get("spec") or {}


def _name(obj: Manifest) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _int(value: object, default: int = 0) -> int:
    return default if value is None else int(value)  # type: ignore[arg-type]


def _condition(obj: Manifest, type_: str) -> dict | None:
    for cond in _status(obj).get("conditions") or ():
        if cond.get("type") == type_:
            return cond
    return None


def _generation_unobserved(obj: Manifest) -> bool:
    generation = (obj.get("metadata") or {}).get("generation")
    observed = _status(obj).get("observedGeneration")
    return generation is not None and _int(observed) < int(generation)


def _lb_addresses(obj: Manifest) -> list[dict]:
    return ((_status(obj).get("loadBalancer") or {}).get("ingress")) or []


# ---------------------------------------------------------------------------------------------
# One function per kind. Messages are short and say what the object is waiting for.


@_kind("apps", "Deployment")
def _deployment(obj: Manifest, _: HealthContext | None) -> HealthResult:
    # Same order as `kubectl rollout status`, which Argo CD borrows.
    spec, status = _spec(obj), _status(obj)
    if spec.get("paused"):
        return HealthResult(HealthStatus.SUSPENDED, "deployment is paused")
    if _generation_unobserved(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for rollout to be observed")
    progressing = _condition(obj, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return HealthResult(HealthStatus.DEGRADED, f'deployment "{_name(obj)}" exceeded its progress deadline')
    wanted = _int(spec.get("replicas"), 1)
    updated = _int(status.get("updatedReplicas"))
    available = _int(status.get("availableReplicas"))
    if updated < wanted:
        return HealthResult(HealthStatus.PROGRESSING, f"{updated} of {wanted} replicas updated")
    old = _int(status.get("replicas")) - updated
    if old > 0:
        return HealthResult(HealthStatus.PROGRESSING, f"{old} old replicas pending termination")
    if available < updated:
        return HealthResult(HealthStatus.PROGRESSING, f"{available} of {updated} updated replicas are available")
    return HealthResult(HealthStatus.HEALTHY)


@_kind("apps", "StatefulSet")
def _statefulset(obj: Manifest, _: HealthContext | None) -> HealthResult:
    spec, status = _spec(obj), _status(obj)
    # observedGeneration 0/absent: the controller has not looked at the object at all yet.
    if not status.get("observedGeneration") or _generation_unobserved(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for rollout to be observed")
    wanted = _int(spec.get("replicas"), 1)
    ready = _int(status.get("readyReplicas"))
    if ready < wanted:
        return HealthResult(HealthStatus.PROGRESSING, f"{ready} of {wanted} pods ready")
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") == "OnDelete":
        # Pods change revision only when someone deletes them: nothing to wait for.
        return HealthResult(HealthStatus.HEALTHY, f"{ready} pods ready (OnDelete updates)")
    updated = _int(status.get("updatedReplicas"))
    partition = _int((strategy.get("rollingUpdate") or {}).get("partition"))
    if partition > 0:
        # Pods below the partition stay at the old revision on purpose, so the revisions never
        # converge; done means every pod at or above the partition is updated.
        target = max(wanted - partition, 0)
        if updated < target:
            return HealthResult(HealthStatus.PROGRESSING, f"partitioned rollout: {updated} of {target} pods updated")
        return HealthResult(HealthStatus.HEALTHY, f"partitioned rollout complete: {updated} pods updated")
    update_revision = status.get("updateRevision")
    if updated < wanted or (update_revision and status.get("currentRevision") != update_revision):
        return HealthResult(
            HealthStatus.PROGRESSING, f"rolling update: {updated} of {wanted} pods at revision {update_revision}"
        )
    return HealthResult(HealthStatus.HEALTHY)


@_kind("", "PersistentVolumeClaim")
def _pvc(obj: Manifest, _: HealthContext | None) -> HealthResult:
    phase = _status(obj).get("phase")
    if phase == "Bound":
        return HealthResult(HealthStatus.HEALTHY)
    if phase == "Pending":
        return HealthResult(HealthStatus.PROGRESSING, "waiting for a volume to be bound")
    if phase == "Lost":
        return HealthResult(HealthStatus.DEGRADED, "bound volume is lost")
    return HealthResult(HealthStatus.UNKNOWN, f"unknown phase {phase!r}")


@_kind("", "Service")
def _service(obj: Manifest, _: HealthContext | None) -> HealthResult:
    if _spec(obj).get("type") == "LoadBalancer" and not _lb_addresses(obj):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for the load balancer to get an address")
    return HealthResult(HealthStatus.HEALTHY)


@_kind("networking.k8s.io", "Ingress")
def _ingress(obj: Manifest, context: HealthContext | None) -> HealthResult:
    if _lb_addresses(obj):
        return HealthResult(HealthStatus.HEALTHY)
    if context is None:
        return HealthResult(HealthStatus.PROGRESSING, "waiting for an address from the ingress controller")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    # The annotation predates spec.ingressClassName (1.18) and is still what many charts set.
    cls = _spec(obj).get("ingressClassName") or annotations.get(LEGACY_CLASS_ANNOTATION)
    cls = cls or context.default_ingress_class
    if cls and cls in context.ingress_classes:
        return HealthResult(HealthStatus.PROGRESSING, f"waiting for an address from ingress controller {cls}")
    # Nothing will ever write status.loadBalancer: waiting would leave the app Progressing forever.
    if not context.ingress_classes:
        why = "no IngressClass in the cluster"
    elif cls:
        why = f"no IngressClass {cls!r} in the cluster"
    else:
        why = "no ingressClassName and no default IngressClass"
    return HealthResult(HealthStatus.HEALTHY, f"{why}: no ingress controller will assign an address")


def _conditions(obj: Manifest, _: HealthContext | None) -> HealthResult | None:
    """Fallback for kinds without a rule: the Ready or Available condition most controllers write."""
    cond = _condition(obj, "Ready") or _condition(obj, "Available")
    if cond is None:
        return None
    # kstatus convention: a condition about an older generation says nothing about this one. Some
    # controllers (cert-manager) record the generation on the condition, not in status; some nowhere.
    observed = _status(obj).get("observedGeneration", cond.get("observedGeneration"))
    generation = (obj.get("metadata") or {}).get("generation")
    if observed is not None and generation is not None and int(observed) < int(generation):
        return HealthResult(HealthStatus.PROGRESSING, "waiting for the latest generation to be observed")
    value = cond.get("status")
    text = cond.get("message") or cond.get("reason") or ""
    if value == "True":
        return HealthResult(HealthStatus.HEALTHY, text)
    if value == "False":
        return HealthResult(HealthStatus.DEGRADED, text or f"{cond.get('type')} is False")
    return HealthResult(HealthStatus.PROGRESSING, text or f"{cond.get('type')} is {value or 'Unknown'}")
