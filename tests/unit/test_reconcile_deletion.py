"""Reconciler.finalize without a cluster: the passes of an Application's cascade delete, its
PreDelete hooks first, against a fake of what it asks of the cluster and of git (the shape of
gitops-engine's sync_context_test with a fake kubectl). The same on the real control plane is in
tests/e2e/test_waves_hooks.py."""

from __future__ import annotations

from pathlib import Path

from controller.model import FINALIZER, REFRESH_ANNOTATION, Action, SourceError
from controller.plan import HOOK_ANNOTATION, HOOK_DELETE_POLICY_ANNOTATION
from controller.reconcile import Fetched, Reconciler
from controller.status import DELETION, PRE_DELETE_HOOKS, Reason
from controller.sync import ResourceResult

INVENTORY = [{"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "shop", "name": "web",
              "status": "Synced"}]


def hook(name: str, *, policy: str | None = None) -> dict:
    annotations = {HOOK_ANNOTATION: "PreDelete", **({HOOK_DELETE_POLICY_ANNOTATION: policy} if policy else {})}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "shop",
                                                                  "annotations": annotations}}


class Cluster:
    """Hooks by name and how they do (Running | Succeeded | Failed), git by revision, and what the
    deletion asked for."""

    def __init__(self, commits: dict[str, list[dict]]) -> None:
        self.commits = commits  # revision → the hooks it renders
        self.hooks: dict[str, str] = {}
        self.fetched: list[tuple[str, bool]] = []
        self.created: list[str] = []
        self.deleted_hooks: list[str] = []
        self.pruned: list[str] = []
        self.git_error: str | None = None


class FakeRunner:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def create_hook(self, task, app_key: str) -> dict:
        self.cluster.hooks[task.name] = "Running"
        self.cluster.created.append(task.name)
        return {"group": "batch", "version": "v1", "kind": "Job", "namespace": "shop", "name": task.name,
                "hookType": "PreDelete", "syncPhase": "PreDelete", "wave": 0, "status": "Synced",
                "hookPhase": "Running", "action": "created", "message": "PreDelete hook created",
                "deletePolicies": sorted(p.value for p in task.delete_policies)}

    def hook_progress(self, entry: dict) -> tuple[str, str]:
        phase = self.cluster.hooks.get(entry["name"], "Failed")
        message = {"Running": "1 active, 0 failed", "Succeeded": "completed", "Failed": "BackoffLimitExceeded"}[phase]
        entry.update(hookPhase=phase, message=message)
        return phase, message

    def delete_hook(self, target: dict) -> None:
        self.cluster.hooks.pop(target["metadata"]["name"], None)
        self.cluster.deleted_hooks.append(target["metadata"]["name"])


class FakeLive:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def get(self, target: dict) -> dict | None:
        return target if target["metadata"]["name"] in self.cluster.hooks else None


class FakeSyncer:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def prune(self, inventory, key: str, *, propagation: str) -> list[ResourceResult]:
        self.cluster.pruned += [entry.name for entry in inventory]
        return [ResourceResult(entry.ref, Action.DELETED, "pruned") for entry in inventory]

    def wait_deleted(self, entries, timeout: float = 60.0) -> list:
        return []


def reconciler(cluster: Cluster) -> Reconciler:
    reconciler = Reconciler.__new__(Reconciler)
    reconciler.policy = None
    reconciler.runner, reconciler.live, reconciler.syncer = FakeRunner(cluster), FakeLive(cluster), FakeSyncer(cluster)

    def fetch(wanted, *, refresh=None):
        cluster.fetched.append((wanted.revision, wanted.refresh))
        if cluster.git_error:
            return SourceError(cluster.git_error)
        return Fetched(wanted.revision, Path("/nonexistent"))

    reconciler.fetch = fetch
    reconciler.rendered = lambda spec, fetched, hard=False: ([], list(cluster.commits[fetched.commit]))
    return reconciler


def application(status: dict) -> dict:
    return {"metadata": {"name": "shop", "namespace": "gantry", "generation": 3, "resourceVersion": "7",
                         "finalizers": [FINALIZER], "deletionTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"project": "default", "destination": {"server": "https://kubernetes.default.svc", "namespace": "shop"},
                     "source": {"repoURL": "https://git.example/shop.git", "targetRevision": "main", "path": "k8s"}},
            "status": status}


def deleting(reconciler: Reconciler, body: dict, *, refresh: bool = False):
    """One pass, its status written back as the operator does."""
    if refresh:
        body["metadata"]["annotations"] = {REFRESH_ANNOTATION: "normal"}
    outcome = reconciler.finalize(body)
    body["status"] = outcome.status
    if outcome.consumed_refresh:
        body["metadata"].pop("annotations", None)
    return outcome


def synced_with_hooks(revision: str = "c1", source: dict | None = None) -> dict:
    return {"resources": INVENTORY, "message": "synced to c1",
            PRE_DELETE_HOOKS: {"revision": revision, "hooks": ["Job/cleanup"], **({"source": source} if source else {})}}


def test_an_app_without_predelete_hooks_is_deleted_at_once_without_git_and_without_a_status_write():
    cluster = Cluster({})
    status = {"resources": INVENTORY, "message": "synced to c1"}
    body = application(status)
    outcome = reconciler(cluster).finalize(body)
    assert outcome.finalized and cluster.pruned == ["web"]
    assert cluster.fetched == [] and outcome.status is status and outcome.events == []
    assert outcome.requeue_after is None


def test_hooks_run_first_from_the_revision_last_synced_then_the_resources_and_the_hooks_go():
    cluster = Cluster({"c1": [hook("cleanup")], "main-tip": []})
    gantry, body = reconciler(cluster), application(synced_with_hooks())
    first = deleting(gantry, body)
    assert cluster.fetched == [("c1", False)] and cluster.created == ["cleanup"]
    assert not first.finalized and cluster.pruned == [] and first.requeue_after
    assert body["status"][DELETION]["phase"] == "Running" and body["status"][DELETION]["revision"] == "c1"
    assert body["status"]["message"].startswith("deleting: waiting for PreDelete hook Job/cleanup")
    assert body["status"]["resources"] == INVENTORY
    # A pass while it runs only looks at it: no render, no second hook, nothing deleted.
    waiting = deleting(gantry, body)
    assert body["status"]["message"] == "deleting: waiting for PreDelete hook Job/cleanup (1 active, 0 failed)"
    assert not waiting.finalized and cluster.fetched == [("c1", False)] and cluster.created == ["cleanup"]
    assert cluster.pruned == []
    cluster.hooks["cleanup"] = "Succeeded"
    done = deleting(gantry, body)
    # The default policy (BeforeHookCreation) would keep it: the app goes, and nothing else would delete it.
    assert done.finalized and cluster.pruned == ["web"] and cluster.deleted_hooks == ["cleanup"]
    assert body["status"][DELETION]["phase"] == "Succeeded"


def test_a_rolled_back_app_runs_the_hooks_of_the_source_it_was_synced_from():
    cluster = Cluster({"old": [hook("cleanup")]})
    gantry = reconciler(cluster)
    seen = []
    rendered = gantry.rendered
    gantry.rendered = lambda spec, fetched, hard=False: seen.append(spec.path) or rendered(spec, fetched)
    deleting(gantry, application(synced_with_hooks("old", {"path": "k8s-v1"})))
    assert seen == ["k8s-v1"] and cluster.fetched == [("old", False)]


def test_a_failed_hook_keeps_the_app_and_its_resources_and_says_so_once():
    cluster = Cluster({"c1": [hook("cleanup")]})
    gantry, body = reconciler(cluster), application(synced_with_hooks())
    deleting(gantry, body)
    cluster.hooks["cleanup"] = "Failed"
    failed = deleting(gantry, body)
    assert not failed.finalized and cluster.pruned == [] and cluster.deleted_hooks == []  # kept for its logs
    condition = body["status"]["conditions"][0]
    assert condition["type"] == Reason.DELETION_ERROR
    assert condition["message"].startswith("PreDelete hook Job/cleanup failed: BackoffLimitExceeded; the app and its "
                                           "resources stay")
    assert "removing the finalizer by hand" in condition["message"]
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", Reason.DELETION_ERROR)]
    again = deleting(gantry, body)
    assert again.events == [] and again.status == body["status"] and cluster.created == ["cleanup"]


def test_a_failed_hook_deleted_by_someone_runs_again_from_the_same_revision():
    cluster = Cluster({"c1": [hook("cleanup")]})
    gantry, body = reconciler(cluster), application(synced_with_hooks())
    deleting(gantry, body)
    cluster.hooks["cleanup"] = "Failed"
    deleting(gantry, body)
    del cluster.hooks["cleanup"]  # kubectl delete job cleanup
    deleting(gantry, body)
    assert cluster.created == ["cleanup", "cleanup"] and cluster.fetched == [("c1", False), ("c1", False)]
    assert body["status"][DELETION]["phase"] == "Running" and cluster.pruned == []
    assert all(c["type"] != Reason.DELETION_ERROR for c in body["status"].get("conditions") or ())


def test_a_refresh_reads_git_again_and_a_hook_removed_from_git_lets_the_app_go():
    cluster = Cluster({"c1": [hook("cleanup", policy="HookFailed")], "main": []})
    gantry, body = reconciler(cluster), application(synced_with_hooks())
    deleting(gantry, body)
    cluster.hooks["cleanup"] = "Failed"
    deleting(gantry, body)
    cluster.hooks.pop("cleanup")  # its own HookFailed policy deleted it: not a reason to run it again
    blocked = deleting(gantry, body)
    assert not blocked.finalized and cluster.created == ["cleanup"]
    refreshed = deleting(gantry, body, refresh=True)
    assert refreshed.consumed_refresh and cluster.fetched[-1] == ("main", True)
    assert refreshed.finalized and cluster.pruned == ["web"]


def test_a_refresh_deletes_the_failed_instance_before_the_fixed_hook_is_created():
    cluster = Cluster({"c1": [hook("cleanup", policy="HookSucceeded")], "main": [hook("cleanup", policy="HookSucceeded")]})
    gantry, body = reconciler(cluster), application(synced_with_hooks())
    deleting(gantry, body)
    cluster.hooks["cleanup"] = "Failed"
    deleting(gantry, body)
    deleting(gantry, body, refresh=True)
    assert cluster.deleted_hooks == ["cleanup"] and cluster.created == ["cleanup", "cleanup"]
    assert cluster.hooks == {"cleanup": "Running"} and body["status"][DELETION]["revision"] == "main"


def test_when_git_cannot_be_read_nothing_is_deleted_and_it_is_tried_again():
    cluster = Cluster({"c1": [hook("cleanup")]})
    cluster.git_error = "git.example: connection refused"
    gantry, body = reconciler(cluster), application(synced_with_hooks())
    first = deleting(gantry, body)
    assert not first.finalized and cluster.pruned == [] and cluster.created == []
    message = body["status"]["conditions"][0]["message"]
    assert message.startswith("cannot run the PreDelete hooks of c1: git.example: connection refused")
    assert "tried again" in message and first.requeue_after
    cluster.git_error = None
    deleting(gantry, body)
    assert cluster.fetched == [("c1", False), ("c1", False)] and cluster.created == ["cleanup"]
