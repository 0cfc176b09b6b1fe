"""An app too large for its Application's status is refused before anything is applied (the
security issue's part 4): otherwise its objects would go out and no inventory be recorded, leaving
prune and cascade delete nothing to work from."""

from __future__ import annotations

import yaml
from harness import web_app_files


def test_an_app_whose_inventory_cannot_fit_is_refused_before_anything_is_applied(make_app):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    before = {kind: app.object(kind, name)["metadata"]["resourceVersion"]
              for kind, name in (("deployment", "web"), ("configmap", "web-config"))}

    many = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"settings-{i:05d}"}, "data": {"n": str(i)}}
        for i in range(6000)]}
    files = web_app_files()
    files["k8s/many.yaml"] = yaml.safe_dump(many)
    kustomization = yaml.safe_load(files["k8s/kustomization.yaml"])
    kustomization["resources"].append("many.yaml")
    files["k8s/kustomization.yaml"] = yaml.safe_dump(kustomization)
    app.push(files, message="6,004 objects")
    app.refresh()
    status = app.wait_sync_status("Failed", timeout=120)
    message = status["conditions"][0]["message"]
    assert message.startswith("k8s: the app renders 6004 objects, and the Application's status would need about")
    assert "MiB it may use" in message and "split the app into several Applications" in message
    assert app.object("configmap", "settings-00000") is None
    assert {kind: app.object(kind, name)["metadata"]["resourceVersion"]
            for kind, name in (("deployment", "web"), ("configmap", "web-config"))} == before
    assert len(status["resources"]) == 4, "the inventory of what runs is kept"
