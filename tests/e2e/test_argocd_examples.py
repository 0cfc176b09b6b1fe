"""Argo CD's own example apps that use sync waves and hooks, registered with the Applications Argo
CD registers them with, sync in the order Argo CD documents.

The apps and their Applications are vendored unmodified (vendor/argocd-example-apps, README.md
there says from where). The order is asserted from the operation's per-resource results, which are
recorded as they happen, and from what the API server recorded (creation times, a Job's completion,
a pod's readiness, the Job controller's Events), never from sleeps. Pods are KWOK's: every pod runs,
whatever its image, and a Job's pod succeeds at once (hack/kwok/stages).

Argo CD's documented order (docs/user-guide/sync-waves.md, resource_hooks.md, helm.md): phase
(PreSync, Sync, PostSync), then wave (lowest first), then kind, then name; a wave starts when the
ones before it are Healthy and their hooks completed; PreSync/PostSync hold only hooks; Helm's
pre-install hooks are PreSync, post-install ones PostSync, and `helm.sh/hook-weight` is the wave.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from gitserver import WorkRepo
from harness import APP_NAMESPACE, App

VENDOR = Path(__file__).resolve().parent / "vendor" / "argocd-example-apps"
GENERATED_PREFIXES = {"upgrade-sql-schema"}  # the examples' generateName prefixes (no trailing dash)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------------------------
# The Applications, as Argo CD's own instance registers the examples


def argocd_application(app: str) -> dict:
    """What apps/templates/applications.yaml renders for `app` with apps/values.yaml (the chart
    that registers the examples in Argo CD's instance), read from the vendored files. Only the
    template's own expressions are known, so a changed template fails here rather than silently."""
    values = yaml.safe_load((VENDOR / "apps" / "values.yaml").read_text())
    entry = next(a for a in values["applications"] if a["name"] == app)
    assert "tool" not in entry, f"{app} needs a config management tool (Helm or a plugin)"
    config = values["config"]["spec"]
    expressions = {
        'printf "example.%s" .name | quote': json.dumps(f"example.{app}"),
        ".namespace | default .name | quote": json.dumps(entry.get("namespace", app)),
        "$config.spec.destination.server | quote": json.dumps(config["destination"]["server"]),
        ".path | default .name | quote": json.dumps(entry.get("path", app)),
        "$config.spec.source.repoURL": config["source"]["repoURL"],
        "$config.spec.source.targetRevision": config["source"]["targetRevision"],
    }
    lines = []
    for line in (VENDOR / "apps" / "templates" / "applications.yaml").read_text().splitlines():
        if re.fullmatch(r"\s*\{\{-?[^}]*-?\}\}\s*", line):
            continue  # range / with / end, and the empty `with .tool` block of a plain app
        lines.append(re.sub(r"\{\{\s*(.*?)\s*\}\}", lambda m: expressions[m.group(1)], line))
    [application] = [doc for doc in yaml.safe_load_all("\n".join(lines)) if doc]
    return application


def for_gantry(application: dict, *, repo_url: str, destination: str) -> dict:
    """Argo CD's Application with the only edits it needs here: apiVersion; the namespace of the
    Application itself (Argo CD's is `argocd`, the controller under test serves APP_NAMESPACE); the
    repository (the test's loopback copy instead of GitHub); the destination namespace (one of the
    test's own instead of the app's name). Everything else (name, finalizer, syncPolicy with
    automated prune/selfHeal and CreateNamespace, targetRevision master, path) is Argo CD's."""
    edited = json.loads(json.dumps(application))
    edited["apiVersion"] = "gantry.dev/v1alpha1"
    edited["metadata"]["namespace"] = APP_NAMESPACE
    edited["spec"]["source"]["repoURL"] = repo_url
    edited["spec"]["destination"]["namespace"] = destination
    return edited


def test_the_applications_are_argo_cds_with_only_the_named_edits():
    original = argocd_application("sync-waves")
    assert original["apiVersion"] == "argoproj.io/v1alpha1" and original["metadata"]["name"] == "example.sync-waves"
    assert original["metadata"]["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]
    edited = for_gantry(original, repo_url="http://127.0.0.1:1/x.git", destination="d")

    def flat(obj: object, path: str = "") -> dict[str, object]:
        if isinstance(obj, dict):
            return {k: v for key, value in obj.items() for k, v in flat(value, f"{path}/{key}").items()}
        return {path: obj}

    changed = {p for p in flat(original).keys() | flat(edited).keys() if flat(original).get(p) != flat(edited).get(p)}
    assert changed == {"/apiVersion", "/metadata/namespace", "/spec/source/repoURL", "/spec/destination/namespace"}


@pytest.fixture
def example_repo(git_server, tmp_path) -> tuple[WorkRepo, str]:
    """The vendored examples as a repository on loopback, on branch master as Argo CD's is."""
    name = f"argocd-example-apps-{uuid.uuid4().hex[:6]}"
    remote = git_server.create_repo(name, default_branch="master")
    files = {str(p.relative_to(VENDOR)): p.read_text() for p in VENDOR.rglob("*") if p.is_file()}
    repo = WorkRepo.create(tmp_path / name, files, remote=remote, branch="master")
    repo.commit("argocd-example-apps at 0d521c6 (vendored)")
    repo.push()
    return repo, git_server.url(name)


@pytest.fixture
def register(cluster, controller, example_repo) -> Iterator:
    """register(app) → an App handle for Argo CD's Application of that example, applied."""
    registered: list[App] = []
    repo, url = example_repo

    def apply(example: str) -> App:
        application = argocd_application(example)
        name = application["metadata"]["name"]
        # A run that was stopped half-way may have left it; its finalizer takes its resources along.
        cluster.kubectl("delete", "applications.gantry.dev", name, "-n", APP_NAMESPACE, "--ignore-not-found",
                        "--timeout=60s")
        destination = f"argocd-{example}-{uuid.uuid4().hex[:6]}"
        app = App(cluster, name, destination=destination, repo=repo, repo_url=url)
        registered.append(app)
        cluster.kubectl("apply", "-f", "-",
                        stdin=yaml.safe_dump(for_gantry(application, repo_url=url, destination=destination)))
        return app

    yield apply
    for app in registered:
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--timeout=60s",
                        check=False)
        cluster.kubectl("delete", "namespace", app.destination, "--wait=false", check=False)


# ------------------------------------------------------------------------------------------------
# What the operation and the API server say


def finished(app: App, initiated_by: dict | None = None, timeout: float = 120.0) -> dict:
    """The app's status once an operation (the one `initiated_by` names, if given) Succeeded and
    the app is Synced and Healthy."""
    def done(status: dict) -> bool:
        state = status.get("operationState") or {}
        return (state.get("phase") == "Succeeded"
                and (initiated_by is None or (state.get("operation") or {}).get("initiatedBy") == initiated_by)
                and (status.get("sync") or {}).get("status") == "Synced"
                and (status.get("health") or {}).get("status") == "Healthy")

    return app.wait(done, "the sync operation to succeed, Synced and Healthy", timeout)


def sync_again(app: App) -> dict:
    """A sync of the same revision, asked as `argocd app sync` asks (the operation field); hooks run
    at every sync operation. Returns the initiatedBy to wait for."""
    initiated_by = {"username": f"second-sync-{uuid.uuid4().hex[:6]}"}
    app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--type", "merge", "-p",
                        json.dumps({"operation": {"initiatedBy": initiated_by, "sync": {"prune": True}}}))
    return initiated_by


def sequence(status: dict) -> list[tuple]:
    """(phase, wave, kind, name, hookType) of each object the operation applied or created, in the
    order it did; a generateName hook's name as its prefix."""
    result = []
    for entry in status["operationState"]["syncResult"]["resources"]:
        name = entry["name"]
        if entry.get("hookType") and re.fullmatch(r".*[bcdfghjklmnpqrstvwxz2456789]{5}", name) and \
                name[:-5] in GENERATED_PREFIXES:
            name = name[:-5]
        result.append((entry["syncPhase"], entry["wave"], entry["kind"], name, entry.get("hookType")))
    return result



def hook_entries(status: dict) -> list[dict]:
    return [e for e in status["operationState"]["syncResult"]["resources"] if e.get("hookType")]


def jobs(app: App) -> dict[str, dict]:
    listing = json.loads(app.kubectl("get", "jobs", "-o", "json").stdout)["items"]
    return {j["metadata"]["name"]: j for j in listing if not j["metadata"].get("deletionTimestamp")}


def completed_at(job: dict) -> datetime:
    complete = next(c for c in job["status"]["conditions"] if c["type"] == "Complete" and c["status"] == "True")
    return _time(complete["lastTransitionTime"])


def ready_at(app: App, selector: str) -> datetime:
    """When the last of the pods `selector` picks became Ready."""
    pods = json.loads(app.kubectl("get", "pods", "-l", selector, "-o", "json").stdout)["items"]
    assert pods, f"no pods for {selector}"
    return max(_time(next(c for c in p["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"])
               for p in pods)


def created_at(obj: dict) -> datetime:
    return _time(obj["metadata"]["creationTimestamp"])


def job_events(app: App, name: str) -> dict[str, datetime]:
    """The Job controller's Events about Job `name` by reason (SuccessfulCreate, Completed): they
    outlive a Job its delete policy removed."""
    listing = json.loads(app.kubectl("get", "events", "--field-selector",
                                     f"involvedObject.kind=Job,involvedObject.name={name}", "-o", "json").stdout)
    return {e["reason"]: _time(e.get("lastTimestamp") or e.get("eventTime") or e["metadata"]["creationTimestamp"])
            for e in listing["items"]}


# ------------------------------------------------------------------------------------------------
# sync-waves: a PreSync hook, then four waves of the Sync phase, two of them Sync hooks


def test_sync_waves_goes_phase_by_phase_and_wave_by_wave(register):
    app = register("sync-waves")
    status = finished(app)
    assert sequence(status) == [
        ("PreSync", 0, "Job", "upgrade-sql-schema", "PreSync"),
        ("Sync", 0, "Service", "backend", None),  # within a wave: by kind (Services first), then name
        ("Sync", 0, "ReplicaSet", "backend", None),
        ("Sync", 1, "Job", "maint-page-up", "Sync"),
        ("Sync", 2, "Service", "frontend", None),
        ("Sync", 2, "ReplicaSet", "frontend", None),
        ("Sync", 3, "Job", "maint-page-down", "Sync"),
    ], sequence(status)
    assert all(e["hookPhase"] == "Succeeded" for e in hook_entries(status)), hook_entries(status)
    # The API server's record of the same order: each wave created once the one before was done.
    first = jobs(app)
    [schema] = [j for n, j in first.items() if n.startswith("upgrade-sql-schema")]
    assert created_at(app.object("replicaset", "backend")) >= completed_at(schema)
    assert created_at(first["maint-page-up"]) >= ready_at(app, "tier=backend")
    assert created_at(app.object("replicaset", "frontend")) >= completed_at(first["maint-page-up"])
    assert created_at(first["maint-page-down"]) >= ready_at(app, "tier=frontend")
    # Hooks are not desired state: never in the inventory.
    assert {(r["kind"], r["name"]) for r in status["resources"]} == {
        ("Service", "backend"), ("ReplicaSet", "backend"), ("Service", "frontend"), ("ReplicaSet", "frontend")}

    status = finished(app, sync_again(app))
    assert [s for s in sequence(status) if s[4]] == [
        ("PreSync", 0, "Job", "upgrade-sql-schema", "PreSync"),
        ("Sync", 1, "Job", "maint-page-up", "Sync"),
        ("Sync", 3, "Job", "maint-page-down", "Sync"),
    ], sequence(status)
    # BeforeHookCreation (the default, and the named hooks' own): each hook once, a new instance.
    second = jobs(app)
    assert len(second) == 3, sorted(second)
    [schema_again] = [n for n in second if n.startswith("upgrade-sql-schema")]
    assert schema_again != schema["metadata"]["name"]
    for name in ("maint-page-up", "maint-page-down"):
        assert second[name]["metadata"]["uid"] != first[name]["metadata"]["uid"], name


# ------------------------------------------------------------------------------------------------
# pre-post-sync: the kustomize guestbook between a PreSync and a PostSync hook, both HookSucceeded


def test_pre_post_sync_runs_its_hooks_around_the_app_and_deletes_them_on_success(register):
    app = register("pre-post-sync")
    status = finished(app)
    assert sequence(status) == [
        ("PreSync", 0, "Job", "pre-post-sync-before", "PreSync"),
        ("Sync", 0, "Service", "pre-post-sync-kustomize-guestbook-ui", None),
        ("Sync", 0, "Deployment", "pre-post-sync-kustomize-guestbook-ui", None),
        ("PostSync", 0, "Job", "pre-post-sync-after", "PostSync"),
    ], sequence(status)
    assert all(e["hookPhase"] == "Succeeded" for e in hook_entries(status)), hook_entries(status)
    # HookSucceeded: both are gone once they succeeded, so the Job controller's Events tell when
    # they ran: `before` completed before the guestbook was created, `after` started once it was
    # available.
    assert jobs(app) == {}
    guestbook = app.object("deployment", "pre-post-sync-kustomize-guestbook-ui")
    available = next(c for c in guestbook["status"]["conditions"] if c["type"] == "Available")
    assert created_at(guestbook) >= job_events(app, "pre-post-sync-before")["Completed"]
    assert job_events(app, "pre-post-sync-after")["SuccessfulCreate"] >= _time(available["lastTransitionTime"])

    status = finished(app, sync_again(app))
    assert [s for s in sequence(status) if s[4]] == [
        ("PreSync", 0, "Job", "pre-post-sync-before", "PreSync"),
        ("PostSync", 0, "Job", "pre-post-sync-after", "PostSync"),
    ], sequence(status)
    assert all(e["hookPhase"] == "Succeeded" for e in hook_entries(status)), hook_entries(status)
    assert jobs(app) == {}, "HookSucceeded hooks are deleted at every sync"


# ------------------------------------------------------------------------------------------------
# helm-hooks: plain manifests with Helm's hook annotations, which Argo CD maps to its own


def test_helm_hooks_map_to_phases_and_weights_to_waves(register):
    app = register("helm-hooks")
    status = finished(app)
    assert sequence(status) == [
        ("PreSync", -2, "Job", "upgrade-sql-schema", "PreSync"),  # pre-install, weight -2
        ("PreSync", -1, "Job", "maint-page-up", "PreSync"),  # pre-install, weight -1
        ("Sync", 0, "ReplicaSet", "frontend", None),
        ("Sync", 2, "Service", "frontend", None),  # a hook-weight on a resource is its wave
        ("PostSync", 0, "Job", "maint-page-down", "PostSync"),  # post-install
    ], sequence(status)
    assert all(e["hookPhase"] == "Succeeded" for e in hook_entries(status)), hook_entries(status)
    first = jobs(app)
    [schema] = [j for n, j in first.items() if n.startswith("upgrade-sql-schema")]
    assert created_at(first["maint-page-up"]) >= completed_at(schema)
    assert created_at(app.object("replicaset", "frontend")) >= completed_at(first["maint-page-up"])
    assert created_at(app.object("service", "frontend")) >= ready_at(app, "tier=frontend")
    assert created_at(first["maint-page-down"]) >= created_at(app.object("service", "frontend"))

    finished(app, sync_again(app))
    # before-hook-creation (and BeforeHookCreation, the default for upgrade-sql-schema): one each.
    second = jobs(app)
    assert len(second) == 3, sorted(second)
    for name in ("maint-page-up", "maint-page-down"):
        assert second[name]["metadata"]["uid"] != first[name]["metadata"]["uid"], name
