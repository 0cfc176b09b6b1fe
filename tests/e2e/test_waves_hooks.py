"""Phases, waves and hooks on the local control plane, with the real controller.

Order is asserted from what the API server recorded (creation timestamps, a Job's completion time,
a Deployment's Available condition) and from the operation's per-resource results, never from
sleeps. Pods are KWOK's: a Job's pod succeeds at once unless labelled with a test fault
(hack/kwok/stages); a `crashloop` Job with backoffLimit 0 fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

WAVE = "argocd.argoproj.io/sync-wave"
HOOK = "argocd.argoproj.io/hook"
DELETE_POLICY = "argocd.argoproj.io/hook-delete-policy"
FAULT = "gantry.dev/test-fault"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def deployment(name: str, *, wave: int | None = None, fault: str | None = None, image: str = "nginx:1.27") -> dict:
    labels = {"app": name}
    pod_labels = {**labels, **({FAULT: fault} if fault else {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, **({"annotations": {WAVE: str(wave)}} if wave is not None else {})},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": pod_labels},
                                  "spec": {"containers": [{"name": name, "image": image}]}}}}


def config_map(name: str, *, wave: int | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, **({"annotations": {WAVE: str(wave)}} if wave is not None else {})},
            "data": {"key": name}}


def job(name: str, hook: str, *, fault: str | None = None, policy: str | None = None, generate: bool = False,
        wave: int | None = None) -> dict:
    annotations = {HOOK: hook, **({DELETE_POLICY: policy} if policy else {}),
                   **({WAVE: str(wave)} if wave is not None else {})}
    metadata = {"generateName": f"{name}-"} if generate else {"name": name}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {**metadata, "annotations": annotations},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": {FAULT: fault} if fault else {}},
                "spec": {"restartPolicy": "OnFailure" if fault else "Never",
                         "containers": [{"name": "run", "image": "busybox:1.36", "command": ["true"]}]}}}}


def files_of(*manifests: dict, kustomize: bool = True) -> dict[str, str]:
    """The app's files; kustomize=False gives a plain directory (kustomize refuses generateName)."""
    names = [f"{m['kind'].lower()}-{m['metadata'].get('name') or m['metadata']['generateName'].rstrip('-')}.yaml"
             for m in manifests]
    return {**({"k8s/kustomization.yaml": yaml.safe_dump({"resources": names})} if kustomize else {}),
            **{f"k8s/{name}": yaml.safe_dump(m) for name, m in zip(names, manifests)},
            "Dockerfile": "FROM nginx:1.27\n"}


def operation(app) -> dict:
    return app.status().get("operationState") or {}


def wait_operation(app, phase: str, timeout: float = 90.0) -> dict:
    return app.wait(lambda s: (s.get("operationState") or {}).get("phase") == phase, f"operation {phase}",
                    timeout)["operationState"]


def jobs(app) -> list[dict]:
    return [j for j in json.loads(app.kubectl("get", "jobs", "-o", "json").stdout)["items"]
            if not j["metadata"].get("deletionTimestamp")]


def test_waves_go_in_order_each_after_the_one_before_is_healthy(make_app):
    app = make_app(files_of(config_map("settings", wave=-1), deployment("db", wave=0),
                            deployment("backend", wave=1), config_map("after", wave=2)))
    app.apply()
    app.wait_synced(app.repo.head)
    state = operation(app)
    assert state["phase"] == "Succeeded"
    waves = {(r["kind"], r["name"]): r["wave"] for r in state["syncResult"]["resources"]}
    assert waves == {("ConfigMap", "settings"): -1, ("Deployment", "db"): 0, ("Deployment", "backend"): 1,
                     ("ConfigMap", "after"): 2}, waves
    db, backend = app.object("deployment", "db"), app.object("deployment", "backend")
    available = next(c for c in db["status"]["conditions"] if c["type"] == "Available")
    # backend (wave 1) was created only once db (wave 0) was available, and `after` once backend was.
    assert _time(backend["metadata"]["creationTimestamp"]) >= _time(available["lastTransitionTime"])
    backend_available = next(c for c in backend["status"]["conditions"] if c["type"] == "Available")
    assert _time(app.object("configmap", "after")["metadata"]["creationTimestamp"]) >= _time(
        backend_available["lastTransitionTime"])
    history = app.status()["history"]
    assert len(history) == 1 and history[0]["revision"] == app.repo.head


def test_a_degraded_wave_stops_the_sync_names_the_cause_and_runs_syncfail(make_app):
    app = make_app(files_of(deployment("db", wave=0, fault="crashloop"), config_map("later", wave=1),
                            job("cleanup", "SyncFail")))
    app.apply()
    state = wait_operation(app, "Failed")
    assert "Deployment" in state["message"] and "db" in state["message"] and "wave 0" in state["message"], state
    assert "Degraded" in state["message"], state
    assert app.object("configmap", "later") is None, "a wave after the failed one is not applied"
    assert app.object("job", "cleanup") is not None, "the SyncFail hook ran"
    status = app.status()
    assert status["sync"]["status"] == "Failed" and "db" in status["message"], status["message"]
    hooks = [r for r in state["syncResult"]["resources"] if r.get("hookType") == "SyncFail"]
    assert [h["name"] for h in hooks] == ["cleanup"]


def test_a_presync_migration_runs_to_completion_before_the_app(make_app):
    app = make_app(files_of(job("migrate", "PreSync"), deployment("backend")))
    app.apply()
    app.wait_synced(app.repo.head)
    migrate = app.object("job", "migrate")
    complete = next(c for c in migrate["status"]["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True"
    backend = app.object("deployment", "backend")
    assert _time(backend["metadata"]["creationTimestamp"]) >= _time(complete["lastTransitionTime"])
    status = app.status()
    # A hook is not desired state: not in the inventory, never OutOfSync.
    assert ("Job", "migrate") not in {(r["kind"], r["name"]) for r in status["resources"]}
    entry = next(r for r in status["operationState"]["syncResult"]["resources"] if r["name"] == "migrate")
    assert entry["hookType"] == "PreSync" and entry["hookPhase"] == "Succeeded", entry


def test_a_failing_presync_hook_leaves_the_app_untouched_and_runs_syncfail(make_app):
    app = make_app(files_of(deployment("backend")))
    app.apply()
    app.wait_synced(app.repo.head)
    app.push(files_of(job("migrate", "PreSync", fault="crashloop"), deployment("backend", image="nginx:1.28"),
                      job("alert", "SyncFail")), message="a migration that fails")
    app.refresh()
    state = app.wait(lambda s: (s.get("operationState") or {}).get("phase") == "Failed"
                     and (s["operationState"].get("syncResult") or {}).get("revision") == app.repo.head,
                     "the sync of the new commit to fail")["operationState"]
    assert "migrate" in state["message"] and "PreSync" in state["message"], state["message"]
    image = app.object("deployment", "backend")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "nginx:1.27", "the app is untouched when its PreSync hook fails"
    assert app.object("job", "alert") is not None


def test_hook_delete_policies(make_app):
    app = make_app(files_of(job("gone-on-success", "PreSync", policy="HookSucceeded"),
                            job("kept-on-success", "PreSync", policy="HookFailed"),
                            job("recreated", "PostSync", policy="BeforeHookCreation"),
                            job("numbered", "PostSync", generate=True),
                            deployment("backend"), kustomize=False))
    app.apply()
    app.wait_synced(app.repo.head)
    wait_operation(app, "Succeeded")
    names = {j["metadata"]["name"] for j in jobs(app)}
    assert "gone-on-success" not in names and "kept-on-success" in names, names
    first_uid = app.object("job", "recreated")["metadata"]["uid"]
    numbered = [n for n in names if n.startswith("numbered-")]
    assert len(numbered) == 1, names
    # A second sync: BeforeHookCreation replaces the named hook and the generateName one.
    app.push({"k8s/configmap-extra.yaml": yaml.safe_dump(config_map("extra"))}, message="another sync")
    app.refresh()
    app.wait(lambda s: (s.get("operationState") or {}).get("phase") == "Succeeded"
             and s["operationState"]["syncResult"]["revision"] == app.repo.head, "the second sync")
    assert app.object("job", "recreated")["metadata"]["uid"] != first_uid
    numbered_now = [j["metadata"]["name"] for j in jobs(app) if j["metadata"]["name"].startswith("numbered-")]
    assert len(numbered_now) == 1 and numbered_now != numbered, numbered_now


def _gantry(cluster, app, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("KUBECONFIG", "NO_COLOR")}
    return subprocess.run([sys.executable, "-m", "controller", *args, "--kubeconfig", str(cluster.kubeconfig),
                           "-n", app.namespace], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


def test_terminate_op_stops_a_waiting_sync_and_keeps_what_was_applied(cluster, make_app):
    app = make_app(files_of(deployment("db", wave=0, fault="readiness"), config_map("later", wave=1)))
    app.apply()
    state = app.wait(lambda s: (s.get("operationState") or {}).get("phase") == "Running"
                     and "waiting for Deployment db" in (s["operationState"].get("message") or ""),
                     "the sync to wait for db")["operationState"]
    assert "wave" in state["message"] and "since" in state["message"], state["message"]
    assert "waiting for Deployment db" in app.status()["message"]
    result = _gantry(cluster, app, "app", "terminate-op", app.name)
    assert result.returncode == 0, result.stderr
    state = operation(app)
    assert state["phase"] == "Failed" and "terminated" in state["message"].lower(), state
    assert app.object("deployment", "db") is not None and app.object("configmap", "later") is None
    refused = _gantry(cluster, app, "app", "terminate-op", app.name)
    assert refused.returncode != 0 and "no operation is running" in refused.stderr


def test_a_restarted_controller_resumes_the_running_wave(controller, make_app):
    app = make_app(files_of(deployment("db", wave=0, fault="readiness"), config_map("later", wave=1)))
    app.apply(self_heal=False)  # the test heals db by hand below; self-heal would undo that afterwards
    app.wait(lambda s: (s.get("operationState") or {}).get("phase") == "Running"
             and (s["operationState"].get("step") == "Sync/0"), "the sync to wait in wave 0")
    controller.restart()
    controller.wait_ready()
    # The wave's object becomes healthy while (or after) the controller restarts: the operation goes on.
    app.kubectl("patch", "deployment", "db", "--type", "json", "-p",
                '[{"op": "remove", "path": "/spec/template/metadata/labels/gantry.dev~1test-fault"}]')
    state = wait_operation(app, "Succeeded", timeout=120)
    assert app.object("configmap", "later") is not None
    assert {r["name"] for r in state["syncResult"]["resources"]} >= {"db", "later"}


class Watch:
    """`kubectl get KIND --watch` in a namespace, every event kept: what happened to the objects
    between two moments, in the API server's order, without polling."""

    def __init__(self, cluster, namespace: str, kind: str, out: Path) -> None:
        self.out = out
        self.file = out.open("w")
        self.process = subprocess.Popen(
            [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n", namespace, "get", kind,
             "--watch", "--output-watch-events", "-o", "json"], stdout=self.file, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL)

    def stop(self) -> list[dict]:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.file.close()
        text, decoder, events, index = self.out.read_text(), json.JSONDecoder(), [], 0
        while (index := _skip_space(text, index)) < len(text):
            event, index = decoder.raw_decode(text, index)
            events.append(event)
        return events


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _delete_app(cluster, app) -> None:
    cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", app.namespace, "--wait=false")


def _wait_app_gone(cluster, app, timeout: int = 120) -> None:
    cluster.kubectl("wait", "--for=delete", f"applications.gantry.dev/{app.name}", "-n", app.namespace,
                    f"--timeout={timeout}s")


def test_predelete_hooks_run_on_app_deletion_before_its_resources_go(cluster, make_app, tmp_path):
    app = make_app(files_of(deployment("backend"), job("drain", "PreDelete")))
    app.apply(finalizer=True)
    app.wait_synced(app.repo.head)
    assert app.object("job", "drain") is None, "a PreDelete hook does not run at a sync"
    assert app.status()["preDeleteHooks"] == {"revision": app.repo.head, "hooks": ["Job/drain"]}
    jobs_seen = Watch(cluster, app.destination, "jobs", tmp_path / "jobs.json")
    deployments_seen = Watch(cluster, app.destination, "deployments", tmp_path / "deployments.json")
    try:
        _delete_app(cluster, app)
        _wait_app_gone(cluster, app)
    finally:
        job_events, deployment_events = jobs_seen.stop(), deployments_seen.stop()
    drains = [e["object"] for e in job_events if e["object"]["metadata"]["name"] == "drain"]
    assert drains, "the PreDelete hook ran"
    completed = next(c["lastTransitionTime"] for job_ in drains for c in (job_.get("status") or {}).get("conditions") or ()
                     if c["type"] == "Complete" and c["status"] == "True")
    backend_deleted = next(e["object"]["metadata"].get("deletionTimestamp") for e in deployment_events
                           if e["object"]["metadata"].get("deletionTimestamp"))
    # The hook was created, and completed, before the app's Deployment was asked to go.
    assert _time(drains[0]["metadata"]["creationTimestamp"]) <= _time(completed) <= _time(backend_deleted)
    assert [e["object"]["metadata"].get("deletionTimestamp") for e in deployment_events
            if e["type"] == "ADDED"] == [None], "the Deployment ran until then"
    assert app.object("deployment", "backend") is None
    # Once they all completed the hooks go with the app, whatever their delete policy.
    assert app.object("job", "drain") is None or app.object("job", "drain")["metadata"].get("deletionTimestamp")


def test_a_failing_predelete_hook_keeps_the_app_and_its_resources_until_git_fixes_it(cluster, make_app):
    app = make_app(files_of(deployment("backend"), job("drain", "PreDelete", fault="crashloop")))
    app.apply(finalizer=True)
    app.wait_synced(app.repo.head)
    backend_uid = app.object("deployment", "backend")["metadata"]["uid"]
    _delete_app(cluster, app)
    try:
        status = app.wait(lambda s: any(c["type"] == "DeletionError" for c in s.get("conditions") or ()),
                          "the deletion to be stuck on its hook", timeout=90)
        condition = next(c for c in status["conditions"] if c["type"] == "DeletionError")
        assert condition["message"].startswith("PreDelete hook Job/drain failed: "), condition
        assert "removing the finalizer by hand" in condition["message"], condition
        assert status["message"].startswith("PreDelete hook Job/drain failed"), status["message"]
        assert status["deletion"]["phase"] == "Failed"
        backend = app.object("deployment", "backend")
        assert backend["metadata"]["uid"] == backend_uid and not backend["metadata"].get("deletionTimestamp")
        assert app.get()["metadata"]["finalizers"] == ["gantry.dev/resources-finalizer"]
        assert app.object("job", "drain") is not None, "the failed hook stays for its logs"
        assert any(e["reason"] == "DeletionError" and "drain" in e["message"] for e in app.events())
        # Fixing the hook in git and refreshing lets the deletion go on.
        app.push(files_of(deployment("backend"), job("drain", "PreDelete")), message="a drain that works")
        app.refresh()
        _wait_app_gone(cluster, app)
    finally:
        # The way out the message names, so that a failure here leaves no app behind.
        cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", app.namespace, "--type", "merge",
                        "-p", '{"metadata": {"finalizers": null}}', check=False)
    assert app.object("deployment", "backend") is None
