"""Health: how far each live object is from doing its job, one rule per kind (after sync, before status).

Pure functions over object dicts as the API server returns them, in the shape of gitops-engine's
pkg/health: `assess` takes the user's rule for the kind if there is one (CEL, `_cel`), else the
built-in rule (Kubernetes' kinds in `_core`, popular custom resources in `_crds`), else the
generic one that reads Kubernetes' status conventions (`_generic`). A rule that raises is
reported as Unknown with the error, never raised: one odd object must not stop the others' health.
"""

from __future__ import annotations

from controller.health import _core, _crds  # noqa: F401 (they register their rules)
from controller.health._base import (
    STUCK_AFTER_SECONDS, HealthContext, _metadata, check_for, group_of, is_worse, worst,
)
from controller.health._cel import Rule, RuleSource, UserRules, evaluate, parse_rules
from controller.health._core import READINESS_GRACE_SECONDS
from controller.health._generic import generic
from controller.model import HealthResult, HealthStatus, Manifest

__all__ = ["READINESS_GRACE_SECONDS", "STUCK_AFTER_SECONDS", "IGNORE_ANNOTATION", "HealthContext", "Rule",
           "RuleSource", "UserRules", "assess", "is_worse", "parse_rules", "worst"]

# Argo CD's annotation: the object's health is not assessed and does not count towards its app's.
IGNORE_ANNOTATION = "argocd.argoproj.io/ignore-healthcheck"


def assess(obj: Manifest, context: HealthContext | None = None) -> HealthResult | None:
    """Health of one live object, or None for kinds that have no health (ConfigMap, Secret …)
    and objects annotated `argocd.argoproj.io/ignore-healthcheck: "true"`.

    `context=None` means "cluster unknown": checks that need it assume the cluster can do its part.
    """
    try:
        metadata = _metadata(obj)
        if str((metadata.get("annotations") or {}).get(IGNORE_ANNOTATION, "")).lower() == "true":
            return None
        if metadata.get("deletionTimestamp"):
            return HealthResult(HealthStatus.PROGRESSING, "pending deletion")
        group, kind = group_of(obj), str(obj.get("kind") or "")
        user_rule = context.rules.find(group, kind) if context is not None and context.rules else None
        if user_rule is not None:
            return evaluate(user_rule, obj)
        check = check_for(group, kind) or generic
        return check(obj, context)
    except Exception as exc:  # noqa: BLE001 (deliberate: any bug in a rule becomes Unknown)
        return HealthResult(HealthStatus.UNKNOWN, f"health check failed: {type(exc).__name__}: {exc}")
