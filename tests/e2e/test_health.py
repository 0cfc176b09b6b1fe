"""controller/health on the real control plane: pods made faulty by our KWOK stages
(hack/kwok/stages/, selected by the label gantry.dev/test-fault) reach the states a kubelet would
give them, and health.assess on the live objects, with the live pods listed through kubectl, names
the pod and what fails in it. The controller is not involved; the objects are applied directly."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import yaml

from controller.health import READINESS_GRACE_SECONDS, HealthContext, assess
from controller.model import HealthResult, HealthStatus

pytestmark = pytest.mark.e2e

FAULT = "gantry.dev/test-fault"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _kwok_faults_only(cluster) -> None:
    if not cluster.local:
        pytest.skip("the faults come from the local control plane's KWOK stages; a real kubelet ignores the label")


def apply(cluster, namespace: str, *documents: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(documents))


def get(cluster, namespace: str, kind: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)


def list_pods(cluster, namespace: str, selector: str | None = None) -> list[dict]:
    args = ["get", "pods", "-n", namespace, "-o", "json", *(["-l", selector] if selector else [])]
    return json.loads(cluster.kubectl(*args).stdout)["items"]


def live_context(cluster) -> HealthContext:
    """What the reconciler will pass: the namespace's real pods, and the real clock."""
    return HealthContext(pods_in=lambda namespace: list_pods(cluster, namespace))


def eventually(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def health_becomes(cluster, namespace: str, kind: str, name: str, status: HealthStatus, *,
                   message: str | None = None, timeout: float = 60.0) -> HealthResult:
    """Assess the live object until its health has `status` (and a message matching the regular
    expression `message`); the last result is in the error when it never does."""
    last: list[HealthResult | None] = [None]

    def check() -> HealthResult | None:
        result = last[0] = assess(get(cluster, namespace, kind, name), live_context(cluster))
        done = result is not None and result.status == status and (
            message is None or re.fullmatch(message, result.message))
        return result if done else None

    try:
        return eventually(check, f"{kind}/{name} to be {status}", timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}; last health: {last[0]}") from None


def running_pods(cluster, namespace: str, selector: str, count: int) -> list[dict]:
    def check() -> list[dict] | None:
        pods = list_pods(cluster, namespace, selector)
        return pods if len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods) else None

    return eventually(check, f"{count} running pod(s) {selector}")


def pod_template(app: str, fault: str | None, probe: dict | None = None, *, restart: str = "Always") -> dict:
    labels = {"app": app, **({FAULT: fault} if fault else {})}
    container = {"name": "web", "image": "ghcr.io/example/web:1.0", "ports": [{"name": "http", "containerPort": 8080}]}
    if probe:
        container["readinessProbe"] = probe
    return {"metadata": {"labels": labels}, "spec": {"restartPolicy": restart, "containers": [container]}}


def deployment(name: str, fault: str | None, probe: dict | None = None, replicas: int = 1) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": pod_template(name, fault, probe)}}


HTTP_PROBE = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5}


def test_healthy_pods_become_ready_and_deleted_pods_go_away_faulty_or_not(cluster, namespace):
    apply(cluster, namespace, deployment("web", None, HTTP_PROBE, replicas=2),
          deployment("stuck", "readiness", HTTP_PROBE, replicas=2))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=60s")
    assert assess(get(cluster, namespace, "deployment", "web"), live_context(cluster)) == HealthResult(HealthStatus.HEALTHY)

    for pod in running_pods(cluster, namespace, "app=stuck", 2):
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady")
        [container] = pod["status"]["containerStatuses"]
        assert container["ready"] is False and "running" in container["state"]
    time.sleep(2)  # the Deployment controller has had every chance to count them
    status = get(cluster, namespace, "deployment", "stuck")["status"]
    assert status.get("readyReplicas", 0) == 0 and status.get("availableReplicas", 0) == 0
    assert status["replicas"] == 2

    names = [p["metadata"]["name"] for p in list_pods(cluster, namespace)]
    assert len(names) == 4
    cluster.kubectl("delete", "pods", "-n", namespace, *names, "--wait=true", "--timeout=60s")
    left = {p["metadata"]["name"] for p in list_pods(cluster, namespace)}
    assert not left & set(names)


def test_readiness_fault_is_progressing_then_degraded_naming_pod_and_probe(cluster, namespace):
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "replicas": 1, "selector": {"matchLabels": {"app": "db"}},
                 "template": pod_template("db", "readiness", {"tcpSocket": {"port": 5432}})},
    }
    daemonset = {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": pod_template("agent", "readiness", {"exec": {"command": ["agent", "--check"]}})},
    }
    apply(cluster, namespace, deployment("api", "readiness", HTTP_PROBE), statefulset, daemonset)
    [pod] = running_pods(cluster, namespace, "app=api", 1)
    name = pod["metadata"]["name"]

    # Seconds after it started: it may still be warming up.
    early = assess(get(cluster, namespace, "deployment", "api"), live_context(cluster))
    assert early is not None and early.status == HealthStatus.PROGRESSING, early
    assert f"pod {name}: readiness probe failing for " in early.message
    assert early.message.endswith("(HTTP GET :8080/healthz)")

    failing = r"readiness probe failing for (\d+)s"
    result = health_becomes(cluster, namespace, "deployment", "api", HealthStatus.DEGRADED,
                            message=rf"pod {re.escape(name)}: {failing} \(HTTP GET :8080/healthz\)",
                            timeout=READINESS_GRACE_SECONDS + 30)
    assert int(re.search(failing, result.message).group(1)) > READINESS_GRACE_SECONDS
    assert get(cluster, namespace, "deployment", "api")["status"].get("readyReplicas", 0) == 0

    health_becomes(cluster, namespace, "statefulset", "db", HealthStatus.DEGRADED,
                   message=rf"pod db-0: {failing} \(TCP :5432\)")
    agents = sorted(p["metadata"]["name"] for p in running_pods(cluster, namespace, "app=agent", 2))  # one per node
    health_becomes(cluster, namespace, "daemonset", "agent", HealthStatus.DEGRADED,
                   message=rf"pod {agents[0]}: {failing} \(exec agent --check\) \(and 1 more pod\)")


def test_crashloop_fault_is_degraded_naming_pod_and_container(cluster, namespace):
    def job(name: str, backoff_limit: int) -> dict:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"backoffLimit": backoff_limit,
                         "template": pod_template(name, "crashloop", restart="OnFailure")}}

    # The Job controller counts an OnFailure pod's restarts (3 here) against backoffLimit.
    apply(cluster, namespace, deployment("api", "crashloop"), job("migrate", 6), job("gives-up", 2))

    def crashing(selector: str) -> dict | None:
        for pod in list_pods(cluster, namespace, selector):
            statuses = pod["status"].get("containerStatuses") or []
            if statuses and (statuses[0]["state"].get("waiting") or {}).get("reason") == "CrashLoopBackOff":
                return pod
        return None

    pod = eventually(lambda: crashing("app=api"), "the api pod to crash-loop")
    [container] = pod["status"]["containerStatuses"]
    assert container["restartCount"] > 0 and container["ready"] is False
    assert pod["status"]["phase"] == "Running"

    result = health_becomes(cluster, namespace, "deployment", "api", HealthStatus.DEGRADED)
    assert result.message == (f"pod {pod['metadata']['name']}: container web CrashLoopBackOff "
                              f"(restarted {container['restartCount']} times): last exit code 1 (Error)")
    assert assess(pod) == HealthResult(HealthStatus.DEGRADED, result.message.split(": ", 1)[1])

    job_pod = eventually(lambda: crashing("app=migrate"), "the job's pod to crash-loop")
    job_health = health_becomes(cluster, namespace, "job", "migrate", HealthStatus.DEGRADED)
    assert job_health.message.startswith(f"pod {job_pod['metadata']['name']}: container web CrashLoopBackOff")
    health_becomes(cluster, namespace, "job", "gives-up", HealthStatus.DEGRADED,
                   message="job failed: BackoffLimitExceeded: Job has reached the specified backoff limit")


def test_imagepull_fault_is_degraded_naming_pod_and_image(cluster, namespace):
    apply(cluster, namespace, deployment("api", "imagepull", HTTP_PROBE))

    def pulling() -> dict | None:
        for pod in list_pods(cluster, namespace, "app=api"):
            statuses = pod["status"].get("containerStatuses") or []
            if statuses and (statuses[0]["state"].get("waiting") or {}).get("reason") == "ImagePullBackOff":
                return pod
        return None

    pod = eventually(pulling, "the api pod to be in ImagePullBackOff")
    assert pod["status"]["phase"] == "Pending"
    result = health_becomes(cluster, namespace, "deployment", "api", HealthStatus.DEGRADED)
    assert result.message == (f"pod {pod['metadata']['name']}: container web ImagePullBackOff: "
                              'Back-off pulling image "ghcr.io/example/web:1.0"')


def test_claim_of_a_class_that_never_provisions_is_progressing(cluster, namespace):
    storage_class = f"never-{namespace}"[:63]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": storage_class},
        "provisioner": "example.com/none", "volumeBindingMode": "Immediate",
    }))
    try:
        apply(cluster, namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "uploads"},
            "spec": {"storageClassName": storage_class, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        # The PV controller hands the claim to the class's provisioner, which nothing runs.
        eventually(lambda: (get(cluster, namespace, "pvc", "uploads")["metadata"].get("annotations") or {}).get(
            "volume.kubernetes.io/storage-provisioner"), "the claim to be handed to its provisioner")
        time.sleep(3)  # time enough for our local provisioner to (wrongly) act, were it to
        claim = get(cluster, namespace, "pvc", "uploads")
        assert claim["status"]["phase"] == "Pending" and not claim["spec"].get("volumeName")
        assert assess(claim, live_context(cluster)) == HealthResult(
            HealthStatus.PROGRESSING, "waiting for a volume to be bound (from provisioner example.com/none)")
    finally:
        cluster.kubectl("delete", "storageclass", storage_class, "--wait=false", check=False)
