"""Kubernetes' apply traps end to end (controller/traps.py): each change either ends Synced in the
sync that brings it, or is refused before anything is applied with the field and the fix and then
recreated once the object says Replace=true or Force=true. Real controller, real API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SYNC_OPTIONS = "argocd.argoproj.io/sync-options"


def files_of(*objects: dict) -> dict[str, str]:
    """An app repo holding `objects`, one file each, named by kind and name."""
    names = [f"{o['kind'].lower()}-{o['metadata']['name']}.yaml" for o in objects]
    files = {f"k8s/{name}": yaml.safe_dump(o) for name, o in zip(names, objects)}
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": names})
    files["Dockerfile"] = "FROM nginx:1.27\n"
    return files


def deployment(*, strategy: dict | None = None, image: str = "nginx:1.27", labels: dict | None = None,
               annotations: dict | None = None) -> dict:
    labels = labels or {"app": "web"}
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels},
                                 "spec": {"containers": [{"name": "web", "image": image}]}}}}
    if strategy:
        obj["spec"]["strategy"] = strategy
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


def statefulset(*, service: str = "db", policy: str | None = None, storage: str = "1Gi",
                update: dict | None = None, annotations: dict | None = None) -> dict:
    spec = {"replicas": 2, "serviceName": service, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                         "spec": {"containers": [{"name": "db", "image": "mariadb:11"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}}]}
    if policy:
        spec["podManagementPolicy"] = policy
    if update:
        spec["updateStrategy"] = update
    obj = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"}, "spec": spec}
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


def with_annotations(obj: dict, annotations: dict) -> dict:
    return {**obj, "metadata": {**obj["metadata"], "annotations": {**(obj["metadata"].get("annotations") or {}),
                                                                     **annotations}}}


def operation_entry(status: dict, kind: str, name: str) -> dict:
    entries = status["operationState"]["syncResult"]["resources"]
    return next(e for e in entries if e["kind"] == kind and e["name"] == name)


def failures(app) -> dict[tuple[str, int], str]:
    """The app's Warning events so far, by (uid, count): a repeated one counts again."""
    return {(e["metadata"]["uid"], e.get("count") or 1): e["message"] for e in app.events() if e["type"] == "Warning"}


def synced_in_one_sync(app, sha: str, *, healthy: bool = True, before: dict | None = None) -> dict:
    """Synced at sha by an operation that Succeeded at once: no failure since `before`."""
    status = app.wait_synced(sha, healthy=healthy, timeout=120)
    assert status["operationState"]["phase"] == "Succeeded", status["operationState"]
    assert status["operationState"]["syncResult"]["revision"] == sha
    new = [message for key, message in failures(app).items() if key not in (before or {})]
    assert not new, new
    return status


def ref_text(obj: dict, namespace: str) -> str:
    """How messages name an object: `Deployment.apps ns/name`, `Secret ns/name`."""
    group = obj["apiVersion"].rpartition("/")[0]
    return f"{obj['kind']}{'.' + group if group else ''} {namespace}/{obj['metadata']['name']}"


def refused(app, sha: str) -> str:
    """The message of a commit refused before anything was applied."""
    status = app.wait(lambda s: (s.get("sync") or {}).get("status") == "Failed"
                      and (s.get("sync") or {}).get("revision") == sha, f"Failed at {sha[:7]}", 60)
    return status["conditions"][0]["message"]


def uids(app, kind: str, selector: str) -> dict[str, str]:
    listing = json.loads(app.kubectl("get", kind, "-l", selector, "-o", "json").stdout)["items"]
    return {item["metadata"]["name"]: item["metadata"]["uid"] for item in listing}


# ------------------------------------------------------------------ healed in the same sync


def test_deployment_switched_to_recreate_and_back_is_synced_in_one_sync_each_way(make_app):
    app = make_app(files_of(deployment()))
    app.apply()
    app.wait_synced(app.repo.head)
    assert "rollingUpdate" in app.object("deployment", "web")["spec"]["strategy"]  # defaulted, owned by nobody

    # The strategy alone: a new image would start a rollout, whose status writes may make the
    # next pass apply once more (unchanged), replacing the operation's message this test reads.
    sha = app.push(files_of(deployment(strategy={"type": "Recreate"})), message="Recreate")
    app.refresh()
    status = synced_in_one_sync(app, sha)
    assert app.object("deployment", "web")["spec"]["strategy"] == {"type": "Recreate"}
    assert "spec.strategy.rollingUpdate removed" in operation_entry(status, "Deployment", "web")["message"]
    managers = {(m["manager"], m["operation"]) for m in json.loads(app.kubectl(
        "get", "deployment", "web", "-o", "json", "--show-managed-fields").stdout)["metadata"]["managedFields"]}
    assert ("gantry-heal", "Update") not in managers, "the heal patch must not keep owning strategy.type"

    back = app.push(files_of(deployment(image="nginx:1.28")), message="RollingUpdate again, and a new image")
    app.refresh()
    synced_in_one_sync(app, back)
    assert app.object("deployment", "web")["spec"]["strategy"]["type"] == "RollingUpdate"


def test_statefulset_switched_to_on_delete_is_synced_in_one_sync(make_app):
    app = make_app(files_of(statefulset()))
    app.apply()
    app.wait_synced(app.repo.head)
    sha = app.push(files_of(statefulset(update={"type": "OnDelete"})), message="OnDelete")
    app.refresh()
    status = synced_in_one_sync(app, sha)
    assert app.object("statefulset", "db")["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert "spec.updateStrategy.rollingUpdate removed" in operation_entry(status, "StatefulSet", "db")["message"]


@pytest.mark.parametrize("kind", ["NodePort", "LoadBalancer"])
def test_service_leaving_node_ports_for_cluster_ip_is_synced_in_one_sync(make_app, kind):
    def service(type_: str, **extra) -> dict:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"type": type_, "selector": {"app": "web"}, "ports": [{"port": 80, "name": "http"}], **extra}}

    extra = {"externalTrafficPolicy": "Local"} if kind == "LoadBalancer" else {}
    app = make_app(files_of(service(kind, **extra)))
    app.apply()
    app.wait_synced(app.repo.head, healthy=False)  # a LoadBalancer nobody serves waits for an address
    live = app.object("service", "web")["spec"]
    assert live["ports"][0]["nodePort"] and (kind != "LoadBalancer" or live["healthCheckNodePort"])

    sha = app.push(files_of(service("ClusterIP")), message="ClusterIP")
    app.refresh()
    synced_in_one_sync(app, sha)
    live = app.object("service", "web")["spec"]
    assert live["type"] == "ClusterIP"
    assert "nodePort" not in live["ports"][0] and "healthCheckNodePort" not in live
    assert "externalTrafficPolicy" not in live


# ------------------------------------------------------------------ immutable: refused, then recreated


def job(image: str, annotations: dict | None = None) -> dict:
    obj = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "migrate", "image": image}]}}}}
    return with_annotations(obj, annotations) if annotations else obj


def service(cluster_ip: str | None) -> dict:
    spec = {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec}


def config(value: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "frozen"}, "immutable": True,
            "data": {"greeting": value}}


def secret(type_: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "type": type_, "stringData": data}


def claim(storage_class: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"storageClassName": storage_class, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}}


# case → (before, after, kind for kubectl, name, the field named, a check of the recreated object, healthy after)
IMMUTABLE = {
    "deployment selector": (deployment(), deployment(labels={"app": "web", "track": "blue"}), "deployment", "web",
                            "spec.selector", lambda o: o["spec"]["selector"]["matchLabels"]["track"] == "blue", True),
    "job template": (job("busybox:1.36"), job("busybox:1.37"), "job", "migrate", "spec.template",
                     lambda o: o["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:1.37", False),
    "service clusterIP": (service(None), service("None"), "service", "web", "spec.clusterIP",
                          lambda o: o["spec"]["clusterIP"] == "None", True),
    "immutable configmap": (config("hello"), config("bonjour"), "configmap", "frozen", "data",
                            lambda o: o["data"]["greeting"] == "bonjour", True),
    "secret type": (secret("Opaque", {"username": "app", "password": "s3cr3t-not-shown"}),
                    secret("kubernetes.io/basic-auth", {"username": "app", "password": "s3cr3t-not-shown"}),
                    "secret", "db", "type", lambda o: o["type"] == "kubernetes.io/basic-auth", True),
    "pvc storageClassName": (claim("standard"), claim("gantry-test-unprovisioned"), "pvc", "data",
                             "spec.storageClassName",
                             lambda o: o["spec"]["storageClassName"] == "gantry-test-unprovisioned", False),
}


@pytest.mark.parametrize("case", list(IMMUTABLE))
def test_immutable_change_is_refused_with_the_fix_then_recreated_with_replace(make_app, case):
    before, after, kind, name, field, recreated, healthy = IMMUTABLE[case]
    app = make_app(files_of(before))
    app.apply()
    app.wait_synced(app.repo.head, healthy=kind not in ("job",))
    old = app.object(kind, name)

    bad = app.push(files_of(after), message=f"change {field}")
    app.refresh()
    message = refused(app, bad)
    assert f"{ref_text(after, app.destination)}: {field} is immutable: " in message, message
    assert f"{SYNC_OPTIONS}: Replace=true (or Force=true)" in message, message
    assert "s3cr3t" not in message
    assert app.object(kind, name)["metadata"]["uid"] == old["metadata"]["uid"], "a refused commit changed the object"

    option = "Force=true" if case == "job template" else "Replace=true"
    before = failures(app)
    fixed = app.push(files_of(with_annotations(after, {SYNC_OPTIONS: option})), message=f"{option}: recreate it")
    app.refresh()
    status = synced_in_one_sync(app, fixed, healthy=healthy, before=before)
    new = app.object(kind, name)
    assert new["metadata"]["uid"] != old["metadata"]["uid"] and recreated(new)
    entry = operation_entry(status, after["kind"], name)
    assert entry["action"] == "created" and f"recreated (deleted and created again): {field}" in entry["message"]


@pytest.mark.parametrize("change, field, option", [
    ({"policy": "Parallel"}, "spec.podManagementPolicy", "Replace=true"),
    ({"service": "db-headless"}, "spec.serviceName", "Force=true"),
    ({"storage": "2Gi"}, "spec.volumeClaimTemplates", "Replace=true"),
])
def test_statefulset_immutable_change_is_refused_then_recreated_keeping_its_pods_and_claims(make_app, change, field,
                                                                                            option):
    app = make_app(files_of(statefulset()))
    app.apply()
    app.wait_synced(app.repo.head)
    old = app.object("statefulset", "db")
    pods, claims = uids(app, "pods", "app=db"), uids(app, "pvc", "app=db")
    assert len(pods) == 2 and len(claims) == 2

    bad = app.push(files_of(statefulset(**change)), message=f"change {field}")
    app.refresh()
    message = refused(app, bad)
    assert f"StatefulSet.apps {app.destination}/db: {field} is immutable" in message, message
    assert "propagationPolicy Orphan" in message

    before = failures(app)
    fixed = app.push(files_of(statefulset(**change, annotations={"gantry.dev/sync-options": option})),
                     message=f"{option}: recreate it")
    app.refresh()
    status = synced_in_one_sync(app, fixed, before=before)
    new = app.object("statefulset", "db")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert "Pods and PersistentVolumeClaims kept" in operation_entry(status, "StatefulSet", "db")["message"]
    assert uids(app, "pods", "app=db") == pods, "the StatefulSet's pods were recreated"
    assert uids(app, "pvc", "app=db") == claims, "the StatefulSet's claims were recreated"
    for pod in pods:  # adopted by the new StatefulSet
        owners = app.object("pod", pod)["metadata"]["ownerReferences"]
        assert [o["uid"] for o in owners] == [new["metadata"]["uid"]]


def test_the_apps_replace_option_lets_the_controller_recreate_an_immutable_change(make_app):
    """syncPolicy.syncOptions Replace=true on the Application, not on the object, is enough."""
    app = make_app(files_of(deployment()))
    app.apply(syncPolicy={"automated": {"prune": True, "selfHeal": True},
                          "syncOptions": ["CreateNamespace=true", "Replace=true"]})
    app.wait_synced(app.repo.head)
    old = app.object("deployment", "web")
    before = failures(app)
    changed = app.push(files_of(deployment(labels={"app": "web", "track": "blue"})), message="new selector")
    app.refresh()
    status = synced_in_one_sync(app, changed, healthy=True, before=before)
    new = app.object("deployment", "web")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert new["spec"]["selector"]["matchLabels"] == {"app": "web", "track": "blue"}
    entry = operation_entry(status, "Deployment", "web")
    assert entry["action"] == "created" and "recreated (deleted and created again): spec.selector" in entry["message"]


# ------------------------------------------------------------------ conflicts with other field managers


def test_drift_by_another_field_manager_is_taken_over_and_said_whose_it_was(make_app):
    app = make_app(files_of(deployment()))
    app.apply()
    app.wait_synced(app.repo.head)
    app.kubectl("patch", "deployment", "web", "--field-manager=kubectl-edit", "--type=strategic", "-p",
                json.dumps({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.29"}]}}}}))
    app.kubectl("scale", "deployment/web", "--replicas=3")

    def healed(status: dict) -> bool:
        entries = ((status.get("operationState") or {}).get("syncResult") or {}).get("resources") or []
        return any("took over" in (e.get("message") or "") for e in entries)

    status = app.wait(healed, "a sync that took fields over", 60)
    message = operation_entry(status, "Deployment", "web")["message"]
    assert "from kubectl-edit" in message and 'containers[name="web"].image' in message, message
    assert ".spec.replicas" in message and "ignoreDifferences" in message, message
    app.wait_synced(app.repo.head)
    live = app.object("deployment", "web")
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"


# ------------------------------------------------------------------ a namespace being deleted


def test_a_namespace_being_deleted_is_retried_until_it_is_gone_then_created(make_app):
    app = make_app(files_of(deployment(), config("hello")))
    # No retries at all for failures that stay: a namespace being deleted is not one of them.
    app.apply(syncPolicy={"automated": {"prune": True, "selfHeal": True}, "syncOptions": ["CreateNamespace=true"],
                          "retry": {"limit": 0}})
    app.wait_synced(app.repo.head)
    # A ConfigMap Gantry does not manage holds the namespace in Terminating until its finalizer goes.
    app.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hold", "namespace": app.destination, "finalizers": ["gantry.dev/test-hold"]}}))
    app.cluster.kubectl("delete", "namespace", app.destination, "--wait=false")
    try:
        status = app.wait(lambda s: "is being deleted" in (s.get("message") or ""), "the reason in the message", 90)
        message = status["conditions"][0]["message"]  # status.message is its first line, shortened
        assert f"namespace {app.destination} is being deleted" in message and "Gantry retries" in message, message
    finally:
        app.kubectl("patch", "configmap", "hold", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    app.wait_synced(app.repo.head, timeout=180)
    namespace = json.loads(app.cluster.kubectl("get", "namespace", app.destination, "-o", "json").stdout)
    assert "deletionTimestamp" not in namespace["metadata"]
    assert app.object("deployment", "web") is not None and app.object("configmap", "frozen") is not None


# ------------------------------------------------------------------ rollback across a strategy change


@pytest.fixture
def gantry(cluster, tmp_path):
    env = {**os.environ, "PATH": f"{cluster.bin_dir}:{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("KUBECONFIG", None)

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "controller", *args, "--kubeconfig", str(cluster.kubeconfig)],
                                capture_output=True, text=True, cwd=ROOT, env=env, timeout=180, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"gantry {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    return run


def test_rollback_across_rolling_update_and_recreate_succeeds_both_ways(make_app, gantry):
    app = make_app(files_of(deployment()))
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    rolling = app.repo.head
    assert "Succeeded" in gantry("app", "sync", app.name)
    recreate = app.push(files_of(deployment(strategy={"type": "Recreate"}, image="nginx:1.28")), message="Recreate")
    app.refresh()
    app.wait(lambda s: (s.get("sync") or {}).get("revision") == recreate, "the new commit seen")
    assert "Succeeded" in gantry("app", "sync", app.name)
    assert app.object("deployment", "web")["spec"]["strategy"] == {"type": "Recreate"}
    history = {e["revision"]: e["id"] for e in json.loads(gantry("app", "history", app.name, "-o", "json"))}

    out = gantry("app", "rollback", app.name, str(history[rolling]))
    assert rolling in out and "Succeeded" in out
    live = app.object("deployment", "web")
    assert live["spec"]["strategy"]["type"] == "RollingUpdate"
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"

    out = gantry("app", "rollback", app.name, str(history[recreate]))  # the trap, now met by a rollback
    assert recreate in out and "Succeeded" in out
    assert app.object("deployment", "web")["spec"]["strategy"] == {"type": "Recreate"}
    status = app.wait_synced(recreate)
    assert status["operationState"]["phase"] == "Succeeded"
