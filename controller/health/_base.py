"""What every health rule shares: the ranking, the context, the registry, and readers of status
that take the shapes controllers really write (boolean condition statuses, string generations).

The API server omits zero and empty fields from status, so every read has a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from controller.model import HealthResult, HealthStatus, Manifest

if TYPE_CHECKING:
    from controller.health._cel import UserRules

H, S, P, D, U = (HealthStatus.HEALTHY, HealthStatus.SUSPENDED, HealthStatus.PROGRESSING,
                 HealthStatus.DEGRADED, HealthStatus.UNKNOWN)

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

# A Ready/Available condition that has been False this long (from its lastTransitionTime), with a
# reason that does not itself say it failed, is Degraded: a rollout that has not finished in ten
# minutes will not finish by waiting. Ten minutes is Kubernetes' own default progress deadline
# (a Deployment's progressDeadlineSeconds, and Argo Rollouts'), so a custom resource gets as long
# as a Deployment before `gantry app wait --health` gives up on it.
STUCK_AFTER_SECONDS = 600


@dataclass(frozen=True)
class HealthContext:
    """What the cluster offers beyond the object itself, for kinds whose health depends on it.

    - `ingress_classes`, `default_ingress_class`: the cluster's IngressClasses. An Ingress gets an
      address only if some controller serves its class; without this an Ingress in a cluster with
      no ingress controller would stay Progressing forever (a known Argo CD complaint). `None`
      means they could not be read, and Ingresses then wait for an address as with no context.
    - `pods_in`: namespace → the live pods in it. Workloads that are not fully ready use it to
      name the pod that fails and why; without it (or when it raises) they report replica counts
      only. It is called at most once per workload assessed, and only for workloads that are not
      ready, so a caller assessing many should pass a lazily cached lister.
    - `now`: the current time (timezone-aware), for rules that depend on how long something has
      lasted; `None` means the real clock. Tests pin it.
    - `rules`: health rules users wrote (CEL, per group/kind; controller.health.load_rules), which
      take precedence over the built-in ones for their kinds.
    """

    ingress_classes: frozenset[str] | None = frozenset()
    default_ingress_class: str | None = None
    pods_in: Callable[[str], Sequence[Manifest]] | None = None
    now: datetime | None = None
    rules: UserRules | None = None

    @classmethod
    def from_ingress_classes(
        cls,
        objects: Iterable[Manifest],
        *,
        pods_in: Callable[[str], Sequence[Manifest]] | None = None,
        now: datetime | None = None,
        rules: UserRules | None = None,
    ) -> "HealthContext":
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
        return cls(frozenset(names), default, pods_in, now, rules)


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
# The registry: one check per (group, kind); `group_rule` for a whole API group (Crossplane's
# providers each bring their own groups, Knative's duck types share one convention).

Check = Callable[[Manifest, "HealthContext | None"], "HealthResult | None"]
REGISTRY: dict[tuple[str, str], Check] = {}
GROUP_SUFFIXES: list[tuple[str, Check]] = []


def rule(group: str, *kinds: str) -> Callable[[Check], Check]:
    """Register the decorated function as the health check of (group, kind) for each kind."""

    def register(check: Check) -> Check:
        for kind in kinds:
            REGISTRY[(group, kind)] = check
        return check

    return register


def group_rule(suffix: str) -> Callable[[Check], Check]:
    """Register the decorated function for every kind of every group ending with `suffix`
    (`.crossplane.io`), for kinds without a rule of their own."""

    def register(check: Check) -> Check:
        GROUP_SUFFIXES.append((suffix, check))
        return check

    return register


def group_of(obj: Manifest) -> str:
    return str(obj.get("apiVersion") or "").rpartition("/")[0]


def check_for(group: str, kind: str) -> Check | None:
    check = REGISTRY.get((group, kind))
    if check is None:
        check = next((c for suffix, c in GROUP_SUFFIXES if group == suffix.lstrip(".") or group.endswith(suffix)),
                     None)
    return check


# ---------------------------------------------------------------------------------------------
# Readers.


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _status(obj: Manifest) -> dict:
    return _mapping(obj.get("status"))


def _spec(obj: Manifest) -> dict:
    return _mapping(obj.get("spec"))


def _metadata(obj: Manifest) -> dict:
    return _mapping(obj.get("metadata"))


def _name(obj: Manifest) -> str:
    return _metadata(obj).get("name", "")


def _int(value: object, default: int = 0) -> int:
    return default if value is None else int(value)  # type: ignore[arg-type]


def _generation(value: object) -> int | None:
    """A generation as an int, or None when it is not one: older Argo Rollouts write a pod-template
    hash in status.observedGeneration, newer ones the number as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _conditions(obj_or_status: Manifest | dict | None, *, in_status: bool = True) -> list[dict]:
    source = _status(obj_or_status) if in_status else _mapping(obj_or_status)
    conditions = source.get("conditions")
    return [c for c in conditions if isinstance(c, dict)] if isinstance(conditions, list) else []


def _find_condition(conditions: Iterable[dict] | None, type_: str) -> dict | None:
    for cond in conditions or ():
        if isinstance(cond, dict) and cond.get("type") == type_:
            return cond
    return None


def _condition(obj: Manifest, type_: str) -> dict | None:
    return _find_condition(_conditions(obj), type_)


def _truth(cond: dict | None) -> str:
    """A condition's status as "True", "False" or "Unknown" (also for YAML booleans and odd case);
    another word (prometheus-operator writes "Degraded") is returned as written."""
    if cond is None:
        return "Unknown"
    value = cond.get("status")
    if value is True or value is False:
        return str(value)
    text = str(value or "").strip()
    return {"true": "True", "false": "False", "unknown": "Unknown", "": "Unknown"}.get(text.lower(), text)


def _is_true(cond: dict | None) -> bool:
    return cond is not None and _truth(cond) == "True"


def _is_false(cond: dict | None) -> bool:
    return cond is not None and _truth(cond) == "False"


def _generation_unobserved(obj: Manifest) -> bool:
    generation = _metadata(obj).get("generation")
    observed = _status(obj).get("observedGeneration")
    return generation is not None and _int(observed) < int(generation)


def _stale(obj: Manifest, cond: dict | None = None) -> bool:
    """kstatus' convention: status (or a condition) about an older generation says nothing about
    this one. Generations that are not numbers cannot be compared, so they are not held against it."""
    generation = _generation(_metadata(obj).get("generation"))
    if generation is None:
        return False
    for observed in (_status(obj).get("observedGeneration"), (cond or {}).get("observedGeneration")):
        value = _generation(observed)
        if value is not None and value < generation:
            return True
    return False


def _text(cond: dict | None, default: str = "") -> str:
    """`reason: message` of a condition, or whichever it has."""
    if not cond:
        return default
    parts = [str(p) for p in (cond.get("reason"), cond.get("message")) if p]
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    return _one_line(": ".join(parts)) or default


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _one_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of a (termination) message, cut to `limit` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _now(context: HealthContext | None) -> datetime:
    now = context.now if context is not None and context.now is not None else datetime.now(timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def _time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as the API server writes it (`2025-01-14T09:12:03Z`), or None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _duration(seconds: float) -> str:
    """45s, 2m30s, 1h5m: as kubectl prints ages, precise enough to tell a blip from an outage."""
    total = max(int(seconds), 0)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"


def _lasted(cond: dict | None, context: HealthContext | None) -> float | None:
    """Seconds since the condition last changed, or None when it does not say."""
    since = _time((cond or {}).get("lastTransitionTime"))
    return None if since is None else (_now(context) - since).total_seconds()


# Words in a condition's reason that say the attempt failed rather than that it is under way:
# ReconciliationFailed, InstallFailed, ReconcileError, ErrInitIssuer, InvalidSpec, AccessDenied,
# ProgressDeadlineExceeded, RolloutAborted, CrashLoopBackOff …
_FAILED_REASON = re.compile(
    r"Fail|Error|^Err[A-Z]|Invalid|Denied|Forbidden|Unauthori[sz]ed|Conflict|Exceeded|Rejected|Abort|BackOff|"
    r"Unsupported|NotAllowed|NotPermitted|Unhealthy|Terminal")


def _reason_failed(reason: object) -> bool:
    return bool(reason) and bool(_FAILED_REASON.search(str(reason)))


def _false_ready(cond: dict, context: HealthContext | None, what: str = "") -> HealthResult:
    """A False Ready-like condition: Degraded when its reason says it failed or it has lasted
    beyond STUCK_AFTER_SECONDS, else Progressing (kstatus: "not ready yet" is InProgress)."""
    text = _text(cond, f"{cond.get('type')} is False")
    text = f"{what}{text}"
    if _reason_failed(cond.get("reason")):
        return HealthResult(D, text)
    lasted = _lasted(cond, context)
    if lasted is not None and lasted > STUCK_AFTER_SECONDS:
        return HealthResult(D, f"{text} (not ready for {_duration(lasted)})")
    return HealthResult(P, text)
