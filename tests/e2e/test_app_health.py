"""An Application's health through the controller: the worst of its resources', naming the pod
and probe when a readiness probe keeps failing, and Progressing while a volume is not provisioned."""

from __future__ import annotations

import pytest
import yaml
from harness import web_app_files

pytestmark = pytest.mark.e2e


def test_failing_readiness_probe_makes_the_app_degraded_naming_pod_and_probe(make_app, cluster):
    if not cluster.local:
        pytest.skip("needs the local control plane's fault stages (kwok)")
    files = web_app_files()
    deployment = yaml.safe_load(files["k8s/deployment.yaml"])
    deployment["spec"]["template"]["metadata"]["labels"]["gantry.dev/test-fault"] = "readiness"
    files["k8s/deployment.yaml"] = yaml.safe_dump(deployment)
    app = make_app(files)
    app.apply()
    app.wait(lambda s: (s.get("health") or {}).get("status") == "Progressing", "Progressing first")
    status = app.wait(lambda s: (s.get("health") or {}).get("status") == "Degraded", "Degraded", timeout=90)
    assert status["sync"]["status"] == "Synced"  # it is what git says; it just does not work
    message = status["health"]["message"]
    pod = app.kubectl("get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}").stdout
    assert pod and f"pod {pod}" in message and "readiness probe failing" in message and "HTTP GET :80/" in message
    [web] = [r for r in status["resources"] if r["kind"] == "Deployment"]
    assert web["health"]["status"] == "Degraded"
    assert "degraded" in status["message"].lower()


def test_pending_claim_keeps_the_app_progressing(make_app):
    never = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "never"},
             "provisioner": "example.com/none", "volumeBindingMode": "Immediate"}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"storageClassName": "never", "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}}
    app = make_app({"k8s/kustomization.yaml": yaml.safe_dump({"resources": ["storage.yaml", "claim.yaml"]}),
                    "k8s/storage.yaml": yaml.safe_dump(never), "k8s/claim.yaml": yaml.safe_dump(claim)})
    try:
        app.apply()
        status = app.wait(lambda s: (s.get("sync") or {}).get("status") == "Synced", "Synced")
        assert status["health"]["status"] == "Progressing"
        [pvc] = [r for r in status["resources"] if r["kind"] == "PersistentVolumeClaim"]
        assert pvc["health"]["status"] == "Progressing"
    finally:
        app.cluster.kubectl("delete", "storageclass", "never", check=False)
