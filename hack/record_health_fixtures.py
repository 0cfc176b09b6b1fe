"""Record tests/unit/testdata/health/recorded-*.yaml: live objects read back from the local control
plane in known health states, so controller/health is unit-tested on what the API server writes.

    GANTRY_CLUSTER_DIR=/tmp/rec-cluster .venv/bin/python hack/record_health_fixtures.py

It uses the local control plane at $GANTRY_CLUSTER_DIR (default .cluster) if one runs there, else
starts one and stops it at the end. Its objects live in a namespace of their own (and one
StorageClass that nothing provisions), deleted afterwards. Pods reach their states through the KWOK
stages of hack/kwok/stages/ (the label gantry.dev/test-fault), so a control plane started before
those stages changed must be restarted first. Each object is waited for until it is in its state,
then read with `kubectl get -o yaml` and written with only metadata.managedFields removed; uids,
resourceVersions, names and times are as recorded, so tests must derive pod names and clocks from
the fixtures rather than spell them. Files are written only when every state was reached, and
recorded-*.yaml files this run did not produce are removed, so a re-run replaces the whole set.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import localcluster  # noqa: E402 (reads GANTRY_CLUSTER_DIR at import; it sits beside this script)

OUTPUT = HERE.parent / "tests" / "unit" / "testdata" / "health"
NAMESPACE = "health-fixtures"
NEVER_CLASS = "health-fixtures-never"  # a StorageClass whose provisioner nobody runs
FAULT = "gantry.dev/test-fault"
IMAGE = "ghcr.io/example/web:1.0"
HTTP_PROBE = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5}


class RecordError(RuntimeError):
    """An object never reached its state, or kubectl failed; the message says which and why."""


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(
        [str(localcluster.BIN / "kubectl"), "--kubeconfig", str(localcluster.KUBECONFIG), *args],
        input=stdin, capture_output=True, text=True,
    )
    if check and result.returncode != 0:
        raise RecordError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


# ---------------------------------------------------------------------------------------------
# What to create


def container(*, probe: dict | None = HTTP_PROBE, image: str = IMAGE) -> dict:
    spec = {"name": "web", "image": image, "ports": [{"name": "http", "containerPort": 8080}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
    if probe:
        spec["readinessProbe"] = probe
    return spec


def template(app: str, fault: str | None = None, *, probe: dict | None = HTTP_PROBE,
             restart: str = "Always") -> dict:
    labels = {"app": app, **({FAULT: fault} if fault else {})}
    return {"metadata": {"labels": labels},
            "spec": {"restartPolicy": restart, "containers": [container(probe=probe)]}}


def pod(name: str, fault: str | None = None) -> dict:
    body = template(name, fault)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **body["metadata"]}, "spec": body["spec"]}


def deployment(name: str, fault: str | None = None, *, replicas: int = 1, **spec: object) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": template(name, fault), **spec}}


OBJECTS = [
    deployment("web", replicas=2),
    deployment("api", "readiness"),
    deployment("slow", "readiness", progressDeadlineSeconds=10),
    deployment("rollout", replicas=3),
    pod("ready"),
    pod("crashloop", "crashloop"),
    pod("imagepull", "imagepull"),
    {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
     "spec": {"serviceName": "db", "replicas": 1, "selector": {"matchLabels": {"app": "db"}},
              "template": template("db", probe={"tcpSocket": {"port": "http"}, "periodSeconds": 5}),
              "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                  "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}},
    {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "uploads"},
     "spec": {"storageClassName": NEVER_CLASS, "accessModes": ["ReadWriteOnce"],
              "resources": {"requests": {"storage": "1Gi"}}}},
    {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
     "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent")}},
    {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
     "spec": {"backoffLimit": 2, "template": template("migrate", probe=None, restart="Never")}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
     "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
     "spec": {"ingressClassName": "nginx", "rules": [{"host": "web.example.test", "http": {"paths": [
         {"path": "/", "pathType": "Prefix",
          "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}},
    # min = the Deployment's replicas: out of bounds the HPA would rescale without any metric.
    {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
     "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
              "minReplicas": 2, "maxReplicas": 4,
              "metrics": [{"type": "Resource", "resource": {
                  "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}},
]


# ---------------------------------------------------------------------------------------------
# The states to record. `state` is checked on the very object that is written.


def _condition(obj: dict, type_: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions") or () if c.get("type") == type_), {})


def _observed(obj: dict) -> bool:
    return obj.get("status", {}).get("observedGeneration") == obj["metadata"].get("generation")


def _waiting(obj: dict) -> str:
    statuses = obj.get("status", {}).get("containerStatuses") or [{}]
    return ((statuses[0].get("state") or {}).get("waiting") or {}).get("reason", "")


def _deployment_rolled_out(obj: dict) -> bool:
    s, wanted = obj.get("status", {}), obj["spec"]["replicas"]
    return (_observed(obj) and s.get("replicas") == s.get("updatedReplicas") == s.get("availableReplicas") == wanted
            and _condition(obj, "Progressing").get("reason") == "NewReplicaSetAvailable")


def _deployment_unavailable(obj: dict) -> bool:
    s = obj.get("status", {})
    return (_observed(obj) and s.get("updatedReplicas") == s.get("unavailableReplicas") == 1
            and _condition(obj, "Progressing").get("reason") == "ReplicaSetUpdated")


def _deployment_updating(obj: dict) -> bool:
    # Old 3 replicas still available, one surge pod of the new template that is not ready yet.
    s = obj.get("status", {})
    return (_observed(obj) and s.get("replicas") == 4 and s.get("updatedReplicas") == 1
            and s.get("availableReplicas") == 3)


def _pod_ready(obj: dict) -> bool:
    return obj.get("status", {}).get("phase") == "Running" and _condition(obj, "Ready").get("status") == "True"


def _pod_not_ready(obj: dict) -> bool:
    return (obj.get("status", {}).get("phase") == "Running" and _condition(obj, "Ready").get("status") == "False"
            and all("running" in (c.get("state") or {}) for c in obj["status"].get("containerStatuses") or [{}]))


def _statefulset_ready(obj: dict) -> bool:
    s = obj.get("status", {})
    return (_observed(obj) and s.get("readyReplicas") == s.get("availableReplicas") == s.get("updatedReplicas")
            == obj["spec"]["replicas"] and s.get("currentRevision") == s.get("updateRevision"))


def _daemonset_ready(obj: dict) -> bool:
    s = obj.get("status", {})
    return (_observed(obj) and s.get("desiredNumberScheduled", 0) > 0
            and s.get("desiredNumberScheduled") == s.get("updatedNumberScheduled") == s.get("numberAvailable"))


def _replicaset_ready(obj: dict) -> bool:
    s = obj.get("status", {})
    return _observed(obj) and s.get("replicas") == s.get("readyReplicas") == s.get("availableReplicas") == obj[
        "spec"]["replicas"]


def _pvc_handed_to_provisioner(obj: dict) -> bool:
    annotations = obj["metadata"].get("annotations") or {}
    return obj.get("status", {}).get("phase") == "Pending" and "volume.kubernetes.io/storage-provisioner" in annotations


@dataclass(frozen=True)
class Recording:
    fixture: str  # recorded-<kind>-<state>
    kind: str
    name: str  # a name, or `-l SELECTOR` for the one object a selector picks (a Deployment's pod)
    state: Callable[[dict], bool]
    note: str  # how the state was reached, the fixture's second comment line
    timeout: float = 90.0


RECORDINGS = [
    Recording("recorded-pod-ready", "pod", "ready", _pod_ready, "a bare pod with an HTTP readiness probe, Ready"),
    Recording("recorded-pod-crashloop", "pod", "crashloop", lambda o: _waiting(o) == "CrashLoopBackOff",
              f"a bare pod labelled {FAULT}: crashloop (hack/kwok/stages/pod-fault-crashloop.yaml)"),
    Recording("recorded-pod-imagepull", "pod", "imagepull", lambda o: _waiting(o) == "ImagePullBackOff",
              f"a bare pod labelled {FAULT}: imagepull (hack/kwok/stages/pod-fault-imagepull.yaml)"),
    Recording("recorded-deployment-healthy", "deployment", "web", _deployment_rolled_out,
              "2 replicas, all updated and available"),
    Recording("recorded-replicaset-healthy", "replicaset", "-l app=web", _replicaset_ready,
              "the ReplicaSet of recorded-deployment-healthy, all replicas ready"),
    Recording("recorded-pod-readiness-failing", "pod", "-l app=api", _pod_not_ready,
              f"the pod of recorded-deployment-readiness-failing, labelled {FAULT}: readiness: running, never Ready"),
    Recording("recorded-deployment-readiness-failing", "deployment", "api", _deployment_unavailable,
              "1 replica whose pod fails its readiness probe, within progressDeadlineSeconds (600)"),
    Recording("recorded-statefulset-healthy", "statefulset", "db", _statefulset_ready,
              "1 replica with a volumeClaimTemplate of the default StorageClass, ready"),
    Recording("recorded-persistentvolumeclaim-bound", "pvc", "data-db-0", lambda o: o["status"].get("phase") == "Bound",
              "the claim of recorded-statefulset-healthy, provisioned by hack/localcluster.py's provisioner"),
    Recording("recorded-persistentvolumeclaim-pending", "pvc", "uploads", _pvc_handed_to_provisioner,
              f"a claim of StorageClass {NEVER_CLASS}, whose provisioner example.com/none nothing runs"),
    Recording("recorded-daemonset-healthy", "daemonset", "agent", _daemonset_ready,
              f"one pod on each of the {len(localcluster.FAKE_NODES)} fake nodes, all available"),
    Recording("recorded-job-complete", "job", "migrate", lambda o: _condition(o, "Complete").get("status") == "True",
              "a Job of one pod, which hack/kwok/stages/pod-complete.yaml makes succeed"),
    Recording("recorded-service-clusterip", "service", "web", lambda o: bool(o["spec"].get("clusterIP")),
              "a ClusterIP Service in front of recorded-deployment-healthy"),
    Recording("recorded-ingress-no-address", "ingress", "web", lambda o: "status" in o,
              "ingressClassName nginx in a cluster without IngressClasses (recorded-ingressclass-none): "
              "no controller will ever assign an address"),
    Recording("recorded-deployment-deadline-exceeded", "deployment", "slow",
              lambda o: _condition(o, "Progressing").get("reason") == "ProgressDeadlineExceeded",
              f"progressDeadlineSeconds 10, its pod labelled {FAULT}: readiness never Ready"),
    Recording("recorded-hpa-metrics-unavailable", "hpa", "web",
              lambda o: _condition(o, "ScalingActive").get("status") == "False",
              "CPU target on recorded-deployment-healthy; the cluster serves no metrics API (no metrics-server)",
              timeout=120.0),
]


def read(kind: str, name: str) -> dict | None:
    if name.startswith("-l "):
        items = yaml.safe_load(kubectl("get", kind, "-n", NAMESPACE, "-l", name[3:], "-o", "yaml"))["items"]
        return items[0] if len(items) == 1 else None
    text = kubectl("get", kind, name, "-n", NAMESPACE, "-o", "yaml", check=False)
    return yaml.safe_load(text) if text else None


def wait_for(recording: Recording) -> dict:
    deadline = time.monotonic() + recording.timeout
    last: dict | None = None
    while time.monotonic() < deadline:
        last = read(recording.kind, recording.name)
        if last is not None and recording.state(last):
            return last
        time.sleep(0.5)
    raise RecordError(f"{recording.kind} {recording.name} did not reach its state for {recording.fixture} "
                      f"in {recording.timeout:.0f}s; last status: {(last or {}).get('status')}")


def strip_noise(obj: dict) -> dict:
    """Only what no health rule may read and every read changes: the field managers."""
    obj.get("metadata", {}).pop("managedFields", None)
    for item in obj.get("items") or ():
        strip_noise(item)
    return obj


def render(obj: dict, header: str, note: str) -> str:
    body = yaml.safe_dump(strip_noise(obj), sort_keys=False, width=1000)
    return f"{header}\n# {note}\n{body}"


# ---------------------------------------------------------------------------------------------


def record() -> dict[str, str]:
    """Create everything, wait for each state in turn, return {file name: text}."""
    version = yaml.safe_load(kubectl("version", "-o", "yaml"))["serverVersion"]["gitVersion"]
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    header = f"# Recorded from Kubernetes {version} by hack/record_health_fixtures.py on {today}; re-run it to change."

    if kubectl("get", "namespace", NAMESPACE, "-o", "name", check=False):
        print(f"deleting namespace {NAMESPACE} left by an earlier run")
        kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s")
    kubectl("delete", "storageclass", NEVER_CLASS, "--ignore-not-found")
    kubectl("create", "namespace", NAMESPACE)
    kubectl("create", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": NEVER_CLASS},
        "provisioner": "example.com/none", "volumeBindingMode": "Immediate"}))
    # Pods are admitted only once the namespace's default ServiceAccount exists.
    wait_for(Recording("", "serviceaccount", "default", lambda o: True, "", timeout=30))
    # `create`, not `apply`: no last-applied-configuration annotation in the recordings.
    kubectl("create", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump_all(OBJECTS))

    files: dict[str, str] = {}
    # Read before anything else exists, as the health context reads it: which classes there are.
    classes = yaml.safe_load(kubectl("get", "ingressclasses", "-o", "yaml"))
    files["recorded-ingressclass-none.yaml"] = render(
        classes, header, "the cluster's IngressClasses (kubectl get ingressclasses): none, no ingress controller runs")
    if classes["items"]:
        raise RecordError("this cluster has IngressClasses; recorded-ingressclass-none needs a cluster without any")

    # A rollout caught in the middle: rolled out, then a new template whose pods never get ready,
    # so it holds at one surge pod (maxSurge 25% of 3 = 1, maxUnavailable 0).
    wait_for(Recording("", "deployment", "rollout", _deployment_rolled_out, ""))
    kubectl("patch", "deployment", "rollout", "-n", NAMESPACE, "--type=strategic", "-p", yaml.safe_dump(
        {"spec": {"template": {"metadata": {"labels": {FAULT: "readiness"}},
                               "spec": {"containers": [{"name": "web", "image": "ghcr.io/example/web:1.1"}]}}}}))
    recordings = [*RECORDINGS, Recording(
        "recorded-deployment-updating", "deployment", "rollout", _deployment_updating,
        f"3 replicas rolled out, then image web:1.1 with pods labelled {FAULT}: readiness: one surge pod not ready")]

    for recording in recordings:
        obj = wait_for(recording)
        files[f"{recording.fixture}.yaml"] = render(obj, header, recording.note)
        print(f"recorded {recording.fixture}")
    return files


def write(files: dict[str, str], output: Path) -> None:
    for stale in output.glob("recorded-*.yaml"):
        if stale.name not in files:
            stale.unlink()
            print(f"removed {stale.name}, not recorded any more")
    for name, text in files.items():
        (output / name).write_text(text)


def clean_up() -> None:
    kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found", check=False)
    kubectl("delete", "storageclass", NEVER_CLASS, "--ignore-not-found", check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"directory of the fixtures (default {OUTPUT})")
    args = parser.parse_args(argv)
    started = not localcluster.is_up()
    try:
        localcluster.up()
        try:
            files = record()
        finally:
            clean_up()
    except (RecordError, localcluster.ClusterError, subprocess.CalledProcessError) as error:
        print(f"record_health_fixtures: {error}", file=sys.stderr)
        return 1
    finally:
        if started:
            localcluster.down()
    write(files, args.output)
    print(f"wrote {len(files)} fixtures to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
