"""controller/health.py: a table of testdata/health/<kind>-<state>.yaml objects and the health expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.health import HealthContext, assess, is_worse, worst
from controller.model import HealthResult, HealthStatus

TESTDATA = Path(__file__).parent / "testdata" / "health"

H, S, P, M, D, U = (
    HealthStatus.HEALTHY,
    HealthStatus.SUSPENDED,
    HealthStatus.PROGRESSING,
    HealthStatus.MISSING,
    HealthStatus.DEGRADED,
    HealthStatus.UNKNOWN,
)

NO_CLASSES = HealthContext()
NGINX = HealthContext(ingress_classes=frozenset({"nginx"}))
NGINX_DEFAULT = HealthContext(ingress_classes=frozenset({"nginx"}), default_ingress_class="nginx")
TRAEFIK = HealthContext(ingress_classes=frozenset({"traefik"}))

# (fixture, context, expected status, substring of the message; "" when any message will do)
CASES = [
    ("deployment-healthy", None, H, ""),
    ("deployment-paused", None, S, "paused"),
    ("deployment-unobserved", None, P, "waiting for rollout to be observed"),
    ("deployment-updating", None, P, "1 of 3 replicas updated"),
    ("deployment-terminating-old", None, P, "1 old replicas pending termination"),
    ("deployment-unavailable", None, P, "2 of 3 updated replicas are available"),
    ("deployment-deadline-exceeded", None, D, 'deployment "backend" exceeded its progress deadline'),
    ("deployment-deleting", None, P, "pending deletion"),
    ("deployment-malformed", None, U, "three"),
    ("statefulset-healthy", None, H, ""),
    ("statefulset-unobserved", None, P, "waiting for rollout to be observed"),
    ("statefulset-not-ready", None, P, "1 of 3 pods ready"),
    ("statefulset-rolling", None, P, "1 of 3 pods at revision mariadb-7c9d8e6f4b"),
    ("statefulset-partition-rolling", None, P, "partitioned rollout: 1 of 2 pods updated"),
    ("statefulset-partition-done", None, H, "partitioned rollout complete"),
    ("statefulset-ondelete", None, H, "OnDelete"),
    ("persistentvolumeclaim-bound", None, H, ""),
    ("persistentvolumeclaim-pending", None, P, "waiting for a volume"),
    ("persistentvolumeclaim-lost", None, D, "lost"),
    ("service-clusterip", None, H, ""),
    ("service-loadbalancer-pending", None, P, "load balancer"),
    ("service-loadbalancer-ready", None, H, ""),
    ("ingress-ready", NO_CLASSES, H, ""),
    ("ingress-pending", NGINX, P, "waiting for an address from ingress controller nginx"),
    ("ingress-pending", None, P, "waiting for an address"),
    ("ingress-pending", NO_CLASSES, H, "no IngressClass in the cluster: no ingress controller will assign an address"),
    ("ingress-pending", TRAEFIK, H, "no IngressClass 'nginx' in the cluster"),
    ("ingress-pending-classless", NGINX_DEFAULT, P, "ingress controller nginx"),
    ("ingress-pending-classless", NGINX, H, "no ingressClassName and no default IngressClass"),
    ("ingress-pending-classless", NO_CLASSES, H, "no ingress controller will assign an address"),
    ("ingress-pending-annotation", TRAEFIK, P, "ingress controller traefik"),
    ("ingress-pending-annotation", NGINX_DEFAULT, H, "no IngressClass 'traefik'"),
    ("certificate-ready", None, H, "up to date"),
    ("certificate-failed", None, D, "Issuing certificate as Secret does not exist"),
    ("kustomization-reconciling", None, P, "Reconciliation in progress"),
    ("kustomization-stale", None, P, "latest generation"),
    ("apiservice-unavailable", None, D, "have no addresses"),
]


def load(name: str) -> dict:
    return yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())


@pytest.mark.parametrize(
    ("fixture", "context", "status", "message"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_assess(fixture: str, context: HealthContext | None, status: HealthStatus, message: str) -> None:
    result = assess(load(fixture), context)
    assert result is not None
    assert result.status == status, result
    assert message in result.message


def test_every_fixture_is_in_the_table() -> None:
    used = {case[0] for case in CASES} | {"configmap-any"}
    assert {p.stem for p in TESTDATA.glob("*.yaml")} == used


def test_kinds_without_health_have_none() -> None:
    assert assess(load("configmap-any")) is None
    assert assess({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque"}) is None
    # conditions, but none that says ready
    other = {"apiVersion": "x.io/v1", "kind": "Thing", "status": {"conditions": [{"type": "Synced", "status": "True"}]}}
    assert assess(other) is None


def test_error_in_a_rule_becomes_unknown_not_a_crash() -> None:
    broken = {"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": [], "status": "garbage"}
    result = assess(broken)
    assert result is not None and result.status == U
    assert "health check failed" in result.message


def test_worst_follows_argo_cd_order() -> None:
    order = [H, S, P, M, D, U]
    for better, worse in zip(order, order[1:]):
        assert is_worse(better, worse) and not is_worse(worse, better)
        assert worst([HealthResult(worse), HealthResult(better)]) == worse
    assert worst([]) == H
    assert worst([None, HealthResult(P, "x"), S, None]) == P


def test_context_from_ingress_classes() -> None:
    classes = [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "traefik"},
         "spec": {"controller": "traefik.io/ingress-controller"}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
         "metadata": {"name": "nginx", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
         "spec": {"controller": "k8s.io/ingress-nginx"}},
    ]
    assert HealthContext.from_ingress_classes(classes) == HealthContext(
        ingress_classes=frozenset({"nginx", "traefik"}), default_ingress_class="nginx"
    )
    assert HealthContext.from_ingress_classes([]) == NO_CLASSES
