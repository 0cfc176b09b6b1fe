"""The local control plane is a real cluster: workloads schedule and become Ready, volumes bind,
unserved APIs are refused, RBAC is enforced and server-side apply reports conflicts."""

from __future__ import annotations

import json
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
