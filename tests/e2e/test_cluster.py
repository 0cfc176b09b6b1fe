"""The local control plane is a real cluster: workloads schedule and become Ready, volumes bind,
pods have logs, unserved APIs are refused, RBAC is enforced and server-side apply reports conflicts."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import localcluster
import pytest
import yaml
from harness import token_kubeconfig

pytestmark = pytest.mark.e2e


def apply(cluster, namespace: str, *documents: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(documents))


def get(cluster, namespace: str, kind: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)


def test_server_reports_the_pinned_release(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.")
    assert int(version["minor"].rstrip("+")) >= 34
    assert "master" not in version["gitVersion"]


def test_fake_nodes_are_ready(cluster):
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])]
    assert len(ready) >= (len(localcluster.FAKE_NODES) if cluster.local else 1)


def test_deployment_with_readiness_probe_becomes_available(cluster, namespace):
    labels = {"app": "web"}
    apply(cluster, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                "name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
            }]}},
        },
    })
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=120s")
    status = get(cluster, namespace, "deployment", "web")["status"]
    assert status["readyReplicas"] == 2 and status["availableReplicas"] == 2
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout)["items"]
    assert len(pods) == 2
    assert all(p["spec"].get("nodeName") and p["status"]["phase"] == "Running" for p in pods)


def test_statefulset_claim_is_bound_and_replica_ready(cluster, namespace):
    labels = {"app": "db"}
    apply(cluster, namespace, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db", "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                "name": "db", "image": "mariadb:11", "volumeMounts": [{"name": "data", "mountPath": "/var/lib/mysql"}],
            }]}},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        },
    })
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.phase}=Bound", "pvc/data-db-0",
                    "--timeout=120s")
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.readyReplicas}=1", "statefulset/db",
                    "--timeout=120s")
    claim = get(cluster, namespace, "pvc", "data-db-0")
    assert claim["spec"]["storageClassName"]  # the default StorageClass was applied
    volume = json.loads(cluster.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout)
    assert volume["spec"]["claimRef"]["name"] == "data-db-0"


# Annotations that hack/localcluster.py's pod log writer reads: lines for the log of every
# container, or of the one named.
TEST_LOG, TEST_LOG_CONTAINER = "gantry.dev/test-log", "gantry.dev/test-log-container"


def pod_names(cluster, namespace: str, selector: str) -> list[str]:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]
    return sorted(pod["metadata"]["name"] for pod in pods)


def test_deployment_pods_have_logs_through_the_api(cluster, namespace):
    if not cluster.local:
        pytest.skip("the log lines checked are those the local control plane writes for its fake nodes")
    labels = {"app": "talker"}
    apply(cluster, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "talker"},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    TEST_LOG: f"listening on :8080 in {namespace}\nready to serve", TEST_LOG_CONTAINER: "app"}},
                "spec": {"containers": [{"name": "app", "image": "talker:1.0"},
                                        {"name": "proxy", "image": "envoy:1.31"}]},
            },
        },
    })
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/talker", "--timeout=120s")
    pods = pod_names(cluster, namespace, "app=talker")
    assert len(pods) == 2

    first: dict[str, list[str]] = {}
    for pod in pods:
        app = first[pod] = cluster.kubectl("logs", "-n", namespace, pod, "-c", "app").stdout.splitlines()
        assert app[0].endswith(f'pod={namespace}/{pod} container=app msg="started" image=talker:1.0 restart=0'), app
        assert app[1:3] == [f"listening on :8080 in {namespace}", "ready to serve"]
        proxy = cluster.kubectl("logs", "-n", namespace, pod, "-c", "proxy").stdout.splitlines()
        assert proxy[0].endswith(f'pod={namespace}/{pod} container=proxy msg="started" image=envoy:1.31 restart=0')
        assert not any("listening" in line for line in proxy), "the test's lines were only for container app"
        # Without -c: the first container, as kubectl says on stderr.
        default = cluster.kubectl("logs", "-n", namespace, pod)
        assert default.stdout.splitlines()[:3] == app[:3] and 'Defaulted container "app"' in default.stderr

    pod = pods[0]
    # The heartbeat lines (one every few seconds while a container runs) make a tail of the latest.
    time.sleep(localcluster.HEARTBEAT_SECONDS + 0.5)
    tail = cluster.kubectl("logs", "-n", namespace, pod, "-c", "app", "--tail=1").stdout.splitlines()
    assert len(tail) == 1 and f'pod={namespace}/{pod} container=app msg="running" heartbeat=' in tail[0]
    raw = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/log?container=app&tailLines=2")
    assert len(raw.stdout.splitlines()) == 2 and 'container=app msg="running"' in raw.stdout.splitlines()[-1]
    whole = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/log?container=app").stdout
    assert whole.splitlines()[1] == f"listening on :8080 in {namespace}"

    stamped = cluster.kubectl("logs", "-n", namespace, pod, "-c", "app", "--timestamps").stdout.splitlines()
    stamp, line = stamped[0].split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp) and line == first[pod][0]

    # Never restarted: no previous log, a 400 as from a kubelet.
    previous = cluster.kubectl("logs", "-n", namespace, pod, "-c", "app", "--previous", check=False)
    assert previous.returncode != 0 and "BadRequest" in previous.stderr


def test_following_a_log_sees_new_lines(cluster, namespace):
    if not cluster.local:
        pytest.skip("the heartbeat lines are those the local control plane writes for its fake nodes")
    apply(cluster, namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "beat"},
                               "spec": {"containers": [{"name": "main", "image": "beat:1"}]}})
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/beat", "--timeout=120s")
    follow = subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "logs", "-n", namespace,
         "beat", "-f", "--tail=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = threading.Timer(localcluster.HEARTBEAT_SECONDS * 4, follow.kill)  # then readline gives ""
    deadline.start()
    try:
        seen = [follow.stdout.readline() for _ in range(2)]  # the last line, then one written later
    finally:
        deadline.cancel()
        follow.kill()
        follow.wait()
    assert all(f'pod={namespace}/beat container=main msg=' in line for line in seen), seen
    assert 'msg="running" heartbeat=' in seen[1] and seen[1] != seen[0]


def test_a_crash_looping_containers_log_and_previous_log(cluster, namespace):
    if not cluster.local:
        pytest.skip("the crash loop is a fault of the local control plane's fake nodes")
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crasher", "labels": {"gantry.dev/test-fault": "crashloop"},
                     "annotations": {TEST_LOG: "panic: no config"}},
        "spec": {"containers": [{"name": "main", "image": "crasher:1"}]},
    })
    cluster.kubectl("wait", "-n", namespace, "--for=jsonpath={.status.containerStatuses[0].restartCount}=3",
                    "pod/crasher", "--timeout=120s")
    current = cluster.kubectl("logs", "-n", namespace, "crasher").stdout.splitlines()
    previous = cluster.kubectl("logs", "-n", namespace, "crasher", "--previous").stdout.splitlines()
    for log, restart in ((current, 3), (previous, 2)):
        assert log[0].endswith(f'container=main msg="started" image=crasher:1 restart={restart}'), log
        assert log[1] == "panic: no config"
        assert log[2].endswith('container=main msg="exited" code=1 reason=Error')


def test_service_gets_cluster_ip_and_only_served_ingress_api_is_accepted(cluster, namespace):
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })
    cluster_ip = get(cluster, namespace, "service", "web")["spec"]["clusterIP"]
    assert cluster_ip.startswith("10.96.")

    apply(cluster, namespace, {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
        "spec": {"rules": [{"host": "web.example.test", "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}},
        }]}}]},
    })
    assert get(cluster, namespace, "ingress", "web")["spec"]["rules"][0]["host"] == "web.example.test"

    old = {
        "apiVersion": "networking.k8s.io/v1beta1", "kind": "Ingress", "metadata": {"name": "old"},
        "spec": {"backend": {"serviceName": "web", "servicePort": 80}},
    }
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(old), check=False)
    assert refused.returncode != 0
    assert 'no matches for kind "Ingress" in version "networking.k8s.io/v1beta1"' in refused.stderr


def test_rbac_forbids_an_unprivileged_service_account(cluster, namespace, tmp_path: Path):
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    kubeconfig = token_kubeconfig(cluster, namespace, "nobody", tmp_path / "nobody.kubeconfig")
    who = cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json", check=False)
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:nobody"
    listed = cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-n", namespace, check=False)
    assert listed.returncode != 0
    assert "Forbidden" in listed.stderr and "cannot list resource \"secrets\"" in listed.stderr


def test_server_side_apply_reports_a_second_managers_conflict(cluster, namespace):
    def config_map(colour: str) -> str:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                               "data": {"colour": colour}})

    cluster.kubectl("apply", "--server-side", "--field-manager=first", "-n", namespace, "-f", "-",
                    stdin=config_map("blue"))
    conflict = cluster.kubectl("apply", "--server-side", "--field-manager=second", "-n", namespace, "-f", "-",
                               stdin=config_map("red"), check=False)
    assert conflict.returncode != 0
    assert "conflict" in conflict.stderr.lower() and "first" in conflict.stderr
    assert get(cluster, namespace, "configmap", "settings")["data"]["colour"] == "blue"
