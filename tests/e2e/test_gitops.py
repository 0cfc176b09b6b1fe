"""The GitOps loop end to end: a real git server on loopback, the real kustomize, the controller
process and the local control plane. Each test owns its Application, repo and destination."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
import uuid

import pytest
import yaml
from harness import APP_NAMESPACE, web_app_files
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e


def deployment(app, name="web") -> dict:
    obj = app.object("deployment", name)
    assert obj is not None, f"deployment {name} is missing"
    return obj


def test_first_sync_is_synced_and_healthy_with_revision_and_url(make_app):
    app = make_app()
    app.apply()
    status = app.wait_synced(app.repo.head)
    assert status["sync"]["revision"] == app.repo.head
    assert status["sync"]["shortRevision"] == app.repo.head[:7]
    assert status["summary"]["externalURLs"] == ["http://shop.example.test"]
    assert "nginx:1.27" in status["summary"]["images"]
    kinds = {(r["kind"], r["name"]): r for r in status["resources"]}
    assert set(kinds) == {("Deployment", "web"), ("Service", "web"), ("ConfigMap", "web-config"), ("Ingress", "web")}
    assert all(r["status"] == "Synced" for r in kinds.values())
    assert kinds[("Deployment", "web")]["health"]["status"] == "Healthy"
    assert "ingress controller" in kinds[("Ingress", "web")]["health"]["message"]
    live = json.loads(app.kubectl("get", "deployment", "web", "-o", "json", "--show-managed-fields").stdout)
    assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gantry"
    managers = {m["manager"] for m in live["metadata"]["managedFields"] if m["operation"] == "Apply"}
    assert managers == {"gantry"}
    assert status["operationState"]["phase"] == "Succeeded"
    assert status["history"][-1]["revision"] == app.repo.head
    assert any(e["reason"] == "Synced" for e in app.events())
    printed = app.cluster.kubectl("get", "apps", "-n", APP_NAMESPACE, app.name, "-o", "wide").stdout
    assert "Synced" in printed and "Healthy" in printed and app.repo.head[:7] in printed
    assert "http://shop.example.test" in printed


def test_commit_propagates_after_refresh_and_removed_file_is_pruned(make_app):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)

    files = web_app_files(replicas=3, image="nginx:1.28")
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": ["deployment.yaml", "service.yaml", "ingress.yaml"]})
    sha = app.push(files, delete=("k8s/config.yaml",), message="scale up, new image, drop config")
    app.refresh()
    status = app.wait_synced(sha, timeout=120)
    live = deployment(app)
    assert live["spec"]["replicas"] == 3
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert app.object("configmap", "web-config") is None, "the ConfigMap removed from git was not pruned"
    assert "gantry.dev/refresh" not in (app.get()["metadata"].get("annotations") or {})
    assert {(r["kind"], r["name"]) for r in status["resources"]} == {("Deployment", "web"), ("Service", "web"), ("Ingress", "web")}
    assert any(e["reason"] == "Pruned" and "web-config" in e["message"] for e in app.events())


def test_prune_leaves_objects_gantry_did_not_create(make_app):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    app.kubectl("create", "configmap", "hand-made", "--from-literal=a=b")
    sha = app.push(delete=("k8s/config.yaml",), files={"k8s/kustomization.yaml": yaml.safe_dump(
        {"resources": ["deployment.yaml", "service.yaml", "ingress.yaml"]})})
    app.refresh()
    app.wait_synced(sha, timeout=120)
    assert app.object("configmap", "hand-made") is not None


def test_manual_scale_and_delete_are_undone_within_seconds(make_app):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)

    app.kubectl("scale", "deployment/web", "--replicas=4")
    deadline = time.monotonic() + 15
    while deployment(app)["spec"]["replicas"] != 1:
        assert time.monotonic() < deadline, "manual scale was not undone within 15s"
        time.sleep(0.2)

    app.kubectl("delete", "service", "web")
    deadline = time.monotonic() + 15
    while app.object("service", "web") is None:
        assert time.monotonic() < deadline, "deleted Service was not recreated within 15s"
        time.sleep(0.2)
    app.wait_synced(app.repo.head)


def test_drift_without_self_heal_is_marked_out_of_sync_at_once(make_app):
    app = make_app()
    app.apply(self_heal=False)
    app.wait_synced(app.repo.head)
    app.kubectl("scale", "deployment/web", "--replicas=2")
    status = app.wait_sync_status("OutOfSync", timeout=15)
    drifted = [r for r in status["resources"] if r["status"] == "OutOfSync"]
    assert [(r["kind"], r["name"]) for r in drifted] == [("Deployment", "web")]
    time.sleep(3)
    assert deployment(app)["spec"]["replicas"] == 2, "self-heal is off: the drift must stay"


BROKEN_COMMITS = {
    "invalid yaml": (
        {"k8s/deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: [1\n"},
        ("k8s/deployment.yaml:7:", "line 6"),
    ),
    "missing file in kustomization": (
        {"k8s/kustomization.yaml": yaml.safe_dump({"resources": ["deployment.yaml", "service.yaml", "missing.yaml"]})},
        ("k8s/kustomization.yaml", "missing.yaml"),
    ),
    "unserved api": (
        {"k8s/ingress.yaml": yaml.safe_dump({
            "apiVersion": "networking.k8s.io/v1beta1", "kind": "Ingress", "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "shop.example.test", "http": {"paths": [
                {"path": "/", "backend": {"serviceName": "web", "servicePort": 80}}]}}]}})},
        ("k8s/ingress.yaml", "not served", "networking.k8s.io/v1", "service.name"),
    ),
    "rejected by the api server": (
        {"k8s/deployment.yaml": yaml.safe_dump({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "other"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.29"}]}}}})},
        ("k8s/deployment.yaml", "Deployment", "web", "selector"),
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_COMMITS))
def test_broken_commit_fails_with_named_cause_and_leaves_app_running(make_app, case):
    app = make_app()
    app.apply()
    good = app.wait_synced(app.repo.head)
    before = deployment(app)

    change, expected = BROKEN_COMMITS[case]
    bad = app.push(change, message=f"break: {case}")
    app.refresh()
    status = app.wait_sync_status("Failed", timeout=60)
    message = status["conditions"][0]["message"]
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert status["message"]
    assert status["health"] == good["health"]
    after = deployment(app)
    assert after["spec"] == before["spec"], "a broken commit changed the running Deployment"
    assert app.object("configmap", "web-config") is not None, "a broken commit pruned something"
    assert any(e["type"] == "Warning" for e in app.events())

    fixed = app.push(web_app_files(), message="fix")
    app.refresh()
    app.wait_synced(fixed, timeout=90)
    assert bad != fixed


def test_unreachable_repo_and_unknown_revision_fail_without_touching_resources(make_app, git_server):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    app.apply(revision="no-such-branch")
    status = app.wait_sync_status("Failed")
    assert "no-such-branch" in status["conditions"][0]["message"]
    app.apply(repo_url="http://127.0.0.1:9/nowhere.git")
    status = app.wait(lambda s: "nowhere.git" in ((s.get("conditions") or [{}])[0].get("message", "")), "unreachable")
    assert status["sync"]["status"] == "Failed"
    assert status["sync"]["revision"] == app.repo.head, "REVISION must still say what runs"
    assert app.object("deployment", "web") is not None
    assert app.object("configmap", "web-config") is not None
    app.apply()  # the right URL again
    app.wait_synced(app.repo.head)


def test_manual_sync_only_when_operation_is_set(make_app):
    app = make_app()
    app.apply(automated=False)
    status = app.wait_sync_status("OutOfSync")
    assert all(r["status"] == "OutOfSync" for r in status["resources"])
    time.sleep(2)
    assert app.object("deployment", "web") is None, "an app without automated policy was synced"

    app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", "gantry", "--type=merge",
                        "-p", '{"operation": {"sync": {"prune": true}}}')
    app.wait_synced(app.repo.head)
    assert "operation" not in app.get()


def test_delete_cascades_only_with_finalizer(make_app):
    kept = make_app()
    kept.apply()
    kept.wait_synced(kept.repo.head)
    kept.cluster.kubectl("delete", "applications.gantry.dev", kept.name, "-n", "gantry", "--timeout=30s")
    time.sleep(2)
    assert kept.object("deployment", "web") is not None, "without the finalizer resources must stay"

    cascaded = make_app()
    cascaded.apply(finalizer=True)
    cascaded.wait_synced(cascaded.repo.head)
    cascaded.cluster.kubectl("delete", "applications.gantry.dev", cascaded.name, "-n", "gantry", "--timeout=60s")
    deadline = time.monotonic() + 30
    while cascaded.object("deployment", "web") is not None or cascaded.object("configmap", "web-config") is not None:
        assert time.monotonic() < deadline, "resources of an app deleted with the finalizer were not deleted"
        time.sleep(0.3)


@pytest.mark.parametrize("finalizer", ["resources-finalizer.argocd.argoproj.io",
                                       "resources-finalizer.argocd.argoproj.io/background"])
def test_argocd_finalizer_is_honoured(make_app, finalizer):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", "gantry", "--type=merge",
                        "-p", json.dumps({"metadata": {"finalizers": [finalizer]}}))
    app.cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", "gantry", "--timeout=60s")
    deadline = time.monotonic() + 30
    while app.object("deployment", "web") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_invalid_specs_are_refused_or_reported(make_app):
    app = make_app()
    refused = app.cluster.kubectl("apply", "-f", "-", check=False, stdin=yaml.safe_dump({
        "apiVersion": "gantry.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": app.name, "namespace": APP_NAMESPACE},
        "spec": {"destination": {"namespace": "x"}, "source": {"path": "k8s"}},
    }))
    assert refused.returncode != 0 and "repoURL" in refused.stderr

    app.apply(destination={"server": "https://elsewhere.example:6443", "namespace": app.destination})
    status = app.wait(lambda s: bool(s.get("conditions")), "a condition")
    assert status["conditions"][0]["type"] == "InvalidSpecError"
    assert "elsewhere.example" in status["conditions"][0]["message"]
    assert any(e["reason"] == "InvalidSpecError" for e in app.events())


def apply_requests(controller) -> float:
    """Server-side applies (and replaces) the controller process has sent since it started."""
    text = urllib.request.urlopen(controller.metrics_url + "/metrics", timeout=5).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "gantry_kubectl_exec_total" and sample.labels.get("command") in ("apply", "replace"))


def test_controller_restart_converges_without_reapplying(make_app, controller):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    time.sleep(1)
    versions = {kind: app.object(kind, name)["metadata"]["resourceVersion"]
                for kind, name in (("deployment", "web"), ("service", "web"), ("configmap", "web-config"))}
    reconciled = app.status()["reconciledAt"]
    controller.restart()
    app.wait(lambda s: s.get("reconciledAt", "") > reconciled, "a reconcile after the restart", timeout=60)
    status = app.wait_synced(app.repo.head)
    assert status["sync"]["status"] == "Synced"
    for kind, name in (("deployment", "web"), ("service", "web"), ("configmap", "web-config")):
        assert app.object(kind, name)["metadata"]["resourceVersion"] == versions[kind], f"{kind} was re-applied"
    # A server-side apply that changes nothing leaves the resourceVersion alone: count the requests.
    assert apply_requests(controller) == 0, "the restarted controller re-applied objects already in sync"


def test_changes_made_while_the_controller_is_down_converge_when_it_is_back(make_app, controller):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    controller.stop()
    try:
        sha = app.push(web_app_files(replicas=2, image="nginx:1.28"), message="while the controller was down")
        app.kubectl("delete", "configmap", "web-config")
    finally:
        controller.start()
        controller.wait_ready()
    # No refresh: the first pass of a restarted controller reads git, as a new Application's does.
    app.wait_synced(sha, timeout=90)
    live = deployment(app)
    assert live["spec"]["replicas"] == 2
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert app.object("configmap", "web-config") is not None, "the ConfigMap deleted meanwhile was not restored"


def test_ignored_differences_are_not_drift_and_respected_on_sync(make_app):
    app = make_app()
    app.apply(ignoreDifferences=[{"group": "apps", "kind": "Deployment", "jsonPointers": ["/spec/replicas"]}],
              syncPolicy={"automated": {"prune": True, "selfHeal": True},
                          "syncOptions": ["CreateNamespace=true", "RespectIgnoreDifferences=true"]})
    app.wait_synced(app.repo.head)
    app.kubectl("scale", "deployment/web", "--replicas=3")  # as an autoscaler would
    time.sleep(3)
    assert deployment(app)["spec"]["replicas"] == 3, "an ignored field was reverted"
    assert app.status()["sync"]["status"] == "Synced"

    # A real change elsewhere in the Deployment is synced without undoing the ignored field.
    sha = app.push(web_app_files(image="nginx:1.28"), message="new image")
    app.refresh()
    app.wait_synced(sha)
    live = deployment(app)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert live["spec"]["replicas"] == 3


def crd_app_files(group: str) -> dict[str, str]:
    """A CRD and a custom resource of it in one kustomization, as operators' apps ship them."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {
                         "size": {"type": "integer"}}}}}}}]},
    }
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "gear"}, "spec": {"size": 3}}
    return {
        "k8s/kustomization.yaml": yaml.safe_dump({"resources": ["crd.yaml", "widget.yaml"]}),
        "k8s/crd.yaml": yaml.safe_dump(crd),
        "k8s/widget.yaml": yaml.safe_dump(widget),
    }


def test_crd_and_its_custom_resource_sync_in_one_pass(make_app, cluster):
    group = f"g{uuid.uuid4().hex[:8]}.example.test"
    app = make_app(crd_app_files(group))
    try:
        app.apply(automated=False)
        status = app.wait_sync_status("OutOfSync")
        assert {r["kind"]: r["status"] for r in status["resources"]} == {
            "CustomResourceDefinition": "OutOfSync", "Widget": "OutOfSync"}
        app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", "gantry", "--type=merge",
                            "-p", '{"operation": {"sync": {}}}')
        app.wait_synced(app.repo.head)
        widget = app.object(f"widgets.{group}", "gear")
        assert widget is not None and widget["spec"]["size"] == 3
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_requested_sync_that_cannot_start_is_finished_as_failed(make_app):
    app = make_app()
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", "gantry", "--type=merge",
                        "-p", '{"operation": {"sync": {"revision": "no-such-tag"}}}')
    status = app.wait(lambda s: (s.get("operationState") or {}).get("phase") == "Failed", "a Failed operation")
    assert "no-such-tag" in status["operationState"]["message"]
    assert "operation" not in app.get(), "a failed operation was left pending (it would be retried for ever)"
    assert app.object("deployment", "web") is None


def test_manifest_moving_to_another_api_version_is_not_pruned(make_app):
    hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "minReplicas": 1, "maxReplicas": 3}}
    files = web_app_files()
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": [
        "deployment.yaml", "service.yaml", "config.yaml", "ingress.yaml", "hpa.yaml"]})
    files["k8s/hpa.yaml"] = yaml.safe_dump({"apiVersion": "autoscaling/v1", **hpa,
                                            "spec": {**hpa["spec"], "targetCPUUtilizationPercentage": 80}})
    app = make_app(files)
    app.apply()
    app.wait_synced(app.repo.head, healthy=False)
    uid = app.object("hpa", "web")["metadata"]["uid"]
    sha = app.push({"k8s/hpa.yaml": yaml.safe_dump({"apiVersion": "autoscaling/v2", **hpa, "spec": {
        **hpa["spec"], "metrics": [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}})})
    app.refresh()
    app.wait_synced(sha, healthy=False)
    live = app.object("hpa", "web")
    assert live is not None and live["metadata"]["uid"] == uid, "the HPA was pruned after its own apply"


def test_a_commit_that_renders_nothing_is_refused_and_prunes_nothing(make_app):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    # A plain folder left with no manifest (the kustomization and files deleted by mistake).
    emptied = app.push({"k8s/README.md": "moved elsewhere\n"}, delete=tuple(
        f"k8s/{name}" for name in ("kustomization.yaml", "deployment.yaml", "service.yaml", "config.yaml", "ingress.yaml")))
    app.refresh()
    status = app.wait_sync_status("Failed")
    message = status["conditions"][0]["message"]
    assert "renders no objects" in message and "allowEmpty" in message, message
    assert status["sync"]["revision"] == emptied
    assert app.object("deployment", "web") is not None and app.object("configmap", "web-config") is not None

    # Said on purpose, an empty app is synced: everything is pruned.
    app.apply(syncPolicy={"automated": {"prune": True, "selfHeal": True, "allowEmpty": True},
                          "syncOptions": ["CreateNamespace=true"]})
    app.wait_synced(emptied)
    assert app.object("deployment", "web") is None and app.object("configmap", "web-config") is None


def test_a_broken_commit_does_not_change_its_namespaces_either(make_app):
    files = web_app_files()
    app = make_app(files)
    extra = f"{app.destination[:56]}-x"

    def with_namespace(tier: str, manifests: dict[str, str]) -> dict[str, str]:
        return {**manifests,
                "k8s/namespace.yaml": yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": extra, "labels": {"tier": tier}}}),
                "k8s/kustomization.yaml": yaml.safe_dump({"resources": [
                    "namespace.yaml", "deployment.yaml", "service.yaml", "config.yaml", "ingress.yaml"]})}

    try:
        good = app.push(with_namespace("gold", files), message="add a namespace")
        app.apply()
        app.wait_synced(good)
        bad_deployment = BROKEN_COMMITS["rejected by the api server"][0]
        app.push(with_namespace("silver", {**files, **bad_deployment}), message="relabel, and break the Deployment")
        app.refresh()
        status = app.wait_sync_status("Failed")
        assert "k8s/deployment.yaml" in status["conditions"][0]["message"]
        live = json.loads(app.cluster.kubectl("get", "namespace", extra, "-o", "json").stdout)
        assert live["metadata"]["labels"]["tier"] == "gold", "a refused commit changed its Namespace"
    finally:
        app.cluster.kubectl("delete", "namespace", extra, "--wait=false", check=False)


def test_a_first_sync_the_api_server_refuses_names_the_file_and_is_not_retried_in_a_loop(make_app):
    files = web_app_files()
    files.update(BROKEN_COMMITS["rejected by the api server"][0])
    app = make_app(files)
    # A first sync applies new objects without a dry run, so the refusal comes from the apply;
    # the retry after a second dry-runs it and stops there, until git or the Application changes.
    app.apply(syncPolicy={"automated": {"prune": True, "selfHeal": True}, "syncOptions": ["CreateNamespace=true"],
                          "retry": {"limit": 1, "backoff": {"duration": "1s", "factor": 1}}})
    status = app.wait_sync_status("Failed")
    message = status["conditions"][0]["message"]
    assert "k8s/deployment.yaml" in message and "selector" in message, message
    assert "k8s/deployment.yaml" in status["operationState"]["message"]
    time.sleep(4)  # past the retry
    started = app.status()["operationState"]["startedAt"]
    failures = sum(e.get("count", 1) for e in app.events() if e["type"] == "Warning")
    time.sleep(5)
    assert app.status()["operationState"]["startedAt"] == started, "a failing sync was retried again and again"
    assert sum(e.get("count", 1) for e in app.events() if e["type"] == "Warning") == failures

    fixed = app.push(web_app_files(), message="fix the selector")
    app.refresh()
    app.wait_synced(fixed)


def test_plain_folder_with_recurse_and_argo_cd_fields_gantry_does_not_act_on(make_app):
    config = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}
    app = make_app({
        "k8s/top.yaml": yaml.safe_dump({**config, "metadata": {"name": "top"}}),
        "k8s/nested/inner.yaml": yaml.safe_dump({**config, "metadata": {"name": "inner"}}),
    })
    app.apply(source={"repoURL": app.repo_url, "targetRevision": "HEAD", "path": "k8s", "directory": {"recurse": True}},
              ignoreDifferences=[{"group": "apps", "kind": "Deployment", "managedFieldsManagers": ["kube-controller-manager"]}])
    status = app.wait_synced(app.repo.head)
    assert app.object("configmap", "top") is not None and app.object("configmap", "inner") is not None
    warnings = [c for c in status["conditions"] if c["type"] == "UnsupportedFieldWarning"]
    assert len(warnings) == 1 and "spec.ignoreDifferences[0].managedFieldsManagers" in warnings[0]["message"]
    assert any(e["reason"] == "UnsupportedFieldWarning" for e in app.events())


class SilentGitServer:
    """Accepts connections on loopback and never answers: a git host that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(connection)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/{name}.git"

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_apps_on_a_hanging_repo_do_not_delay_the_others(make_app):
    silent = SilentGitServer()
    try:
        # More apps waiting on git than the controller has reconcile workers (8).
        stuck = [make_app() for _ in range(10)]
        for index, app in enumerate(stuck):
            app.apply(repo_url=silent.url(f"hangs-{index % 5}"))
        time.sleep(1)  # their fetches have started and hang (git gives up after 60 s)
        good = make_app()
        good.apply()
        good.wait_synced(good.repo.head)
        still_waiting = [app.name for app in stuck if not (app.status().get("sync") or {}).get("status")]
        assert len(still_waiting) == len(stuck), "the good app was synced only after hanging fetches gave up"
    finally:
        silent.close()


def test_argo_cd_kustomize_overrides_are_applied_and_follow_edits_of_the_application(make_app):
    app = make_app()

    def apply(image: str) -> None:
        app.apply(source={"repoURL": app.repo_url, "targetRevision": "HEAD", "path": "k8s",
                          "kustomize": {"images": [f"nginx={image}"], "commonLabels": {"team": "shop"}}})

    apply("registry.example/nginx:1.28")
    app.wait_synced(app.repo.head)
    live = deployment(app)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/nginx:1.28"
    assert live["metadata"]["labels"]["team"] == "shop"
    assert "UnsupportedFieldWarning" not in {c["type"] for c in app.status().get("conditions") or ()}

    apply("registry.example/nginx:1.29")  # same commit, new override: rendered again
    app.wait(lambda s: (s.get("summary") or {}).get("images") and "registry.example/nginx:1.29" in s["summary"]["images"],
             "the new image in the summary")
    assert deployment(app)["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/nginx:1.29"
