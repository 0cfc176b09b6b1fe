"""controller/cli.py without a cluster: tables, the summary, the resource tree, durations, the
wait and sync verdicts, exit codes and the argparse layer."""

from __future__ import annotations

import argparse
import base64
import io
import re

import pytest

from controller import cli
from controller.cli import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    MASKED_ONLY,
    CliError,
    DeletePlan,
    DiffEntry,
    app_row,
    automated_enabled,
    build_tree,
    degraded_resources,
    delete_message,
    delete_plan,
    describe_kube_error,
    diff_exit_code,
    diff_header,
    format_app_list,
    format_diff,
    format_duration,
    format_history,
    format_operation,
    format_summary,
    format_table,
    format_tree,
    history_entry,
    kustomize_binary,
    object_diff_text,
    parse_timeout,
    pod_info,
    rollback_request,
    sync_outcome,
    sync_request,
    use_colour,
    wait_verdict,
)
from controller.kube import KubeApiError
from controller.model import ApplyFailure, ObjectRef

ANSI = re.compile(r"\033\[[0-9;]*m")
SHA_A = "a" * 40
SHA_B = "b" * 40


def application(name: str = "web", *, sync: str = "Synced", health: str = "Healthy", **status) -> dict:
    return {
        "apiVersion": "gantry.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": name, "namespace": "gantry", "resourceVersion": "1"},
        "spec": {"source": {"repoURL": "https://git.example.com/team/web.git", "path": "k8s", "targetRevision": "HEAD"},
                 "destination": {"server": "https://kubernetes.default.svc", "namespace": "shop"},
                 "syncPolicy": {"automated": {"prune": True, "selfHeal": True}}},
        "status": {"sync": {"status": sync, "revision": SHA_A, "shortRevision": SHA_A[:7]},
                   "health": {"status": health}, "message": f"synced to {SHA_A[:7]}", **status},
    }


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("90", 90),
                                           ("1.5m", 90), ("500ms", 0.5)])
def test_parse_timeout_reads_go_durations(text, seconds):
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["5x", "m", "", "0s", "1h-", "five minutes"])
def test_parse_timeout_refuses_what_is_not_a_positive_duration(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_timeout(text)


@pytest.mark.parametrize("seconds, text", [(3, "3s"), (90, "1m30s"), (300, "5m"), (3600, "1h"), (3725, "1h2m5s"),
                                           (0.5, "0.5s")])
def test_format_duration_is_the_inverse_for_messages(seconds, text):
    assert format_duration(seconds) == text
    assert parse_timeout(text) == seconds


# -- colour and tables ------------------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_that_shows_it():
    assert use_colour(Tty(), {}) is True
    assert use_colour(Tty(), {"TERM": "xterm-256color"}) is True
    assert use_colour(Tty(), {"NO_COLOR": "1"}) is False
    assert use_colour(Tty(), {"TERM": "dumb"}) is False
    assert use_colour(io.StringIO(), {}) is False


def test_table_aligns_columns_and_colour_does_not_shift_them():
    rows = [["web", "Synced", "Healthy", "x"], ["a-much-longer-name", "OutOfSync", "Degraded", "y"]]
    plain = format_table(("NAME", "SYNC", "HEALTH", "MESSAGE"), rows)
    coloured = format_table(("NAME", "SYNC", "HEALTH", "MESSAGE"), rows, colour=True, state_columns=(1, 2))
    assert plain == ("NAME                 SYNC        HEALTH     MESSAGE\n"
                     "web                  Synced      Healthy    x\n"
                     "a-much-longer-name   OutOfSync   Degraded   y\n")
    assert "\033[32mSynced\033[0m" in coloured and "\033[31mDegraded\033[0m" in coloured
    assert ANSI.sub("", coloured) == plain
    assert all(line == line.rstrip() for line in plain.splitlines())


def test_list_row_has_every_column_and_never_the_repo_credentials():
    app = application(message="ok")
    app["spec"]["source"]["repoURL"] = "https://deploy:s3cret-token@git.example.com/team/web.git"
    assert app_row(app) == ["web", "Synced", "Healthy", SHA_A[:7], "https://git.example.com/team/web.git", "k8s",
                            "shop", "ok"]
    listing = format_app_list([application("zeta"), app])
    assert "s3cret-token" not in listing
    assert [line.split()[0] for line in listing.splitlines()] == ["NAME", "web", "zeta"]


def test_list_row_of_an_app_not_reconciled_yet():
    app = application()
    del app["status"]
    assert app_row(app)[1:4] == ["Unknown", "Unknown", "-"]


# -- get -----------------------------------------------------------------------------------------


def test_summary_says_where_from_where_to_and_how_it_is_doing():
    app = application(
        summary={"externalURLs": ["http://shop.example.test"], "images": ["nginx:1.27", "redis:7"]},
        history=[{"id": 0, "revision": SHA_B, "deployedAt": "2025-01-01T00:00:00Z"}],
        operationState={"phase": "Succeeded", "message": "successfully synced (applied 4, pruned 0)",
                        "finishedAt": "2025-01-01T00:00:01Z", "syncResult": {"revision": SHA_B}},
        conditions=[{"type": "SyncError", "message": "boom", "lastTransitionTime": "2025-01-01T00:00:02Z"}],
    )
    app["status"]["health"]["message"] = "2 of 3 replicas updated"
    text = format_summary(app)
    expected = {
        "Repo": "https://git.example.com/team/web.git", "Path": "k8s", "Target Revision": "HEAD",
        "Synced Revision": SHA_B, "Destination": "shop", "Sync Policy": "Automated (Prune, SelfHeal)",
        "Sync Status": f"Synced to HEAD ({SHA_A[:7]})", "Health": "Healthy (2 of 3 replicas updated)",
        "URLs": "http://shop.example.test", "Images": "nginx:1.27, redis:7",
        "Last Sync": f"Succeeded (to {SHA_B[:7]} at 2025-01-01T00:00:01Z): successfully synced (applied 4, pruned 0)",
    }
    fields = dict(line.split(":", 1) for line in text.splitlines() if line and not line.startswith(" ") and ":" in line)
    for label, value in expected.items():
        assert fields[label].strip() == value, label
    assert "  SyncError: boom (since 2025-01-01T00:00:02Z)" in text
    assert "\033[" not in text


def test_summary_of_an_out_of_sync_app_never_synced():
    app = application(sync="OutOfSync", health="Missing")
    app["spec"]["syncPolicy"] = {}
    text = format_summary(app)
    assert f"OutOfSync from HEAD ({SHA_A[:7]})" in text
    assert "Synced Revision: - (never synced)" in text
    assert "Sync Policy:     Manual" in text


def test_summary_of_a_chart_from_a_helm_repository_names_the_chart_and_version():
    app = application()
    app["spec"]["source"] = {"repoURL": "https://charts.example.com", "chart": "shop", "targetRevision": "^1.2",
                             "path": "k8s"}
    app["status"]["sync"].update(revision="1.2.4", shortRevision="1.2.4")
    lines = format_summary(app).splitlines()
    assert [line.split() for line in lines if line.startswith(("Chart", "Path", "Target"))] == [
        ["Chart:", "shop", "1.2.4"], ["Target", "Revision:", "^1.2"]]
    assert "Synced to ^1.2 (1.2.4)" in format_summary(app)


@pytest.mark.parametrize("automated, enabled", [(None, False), ({}, True), ({"prune": True}, True),
                                                ({"enabled": False, "prune": True}, False), ({"enabled": True}, True)])
def test_automated_enabled_as_the_controller_reads_it(automated, enabled):
    app = application()
    app["spec"]["syncPolicy"] = {} if automated is None else {"automated": automated}
    assert automated_enabled(app) is enabled


# -- the resource tree ----------------------------------------------------------------------------


def owned(kind: str, name: str, owner_uid: str, **extra) -> dict:
    return {"kind": kind, "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}",
                                       "ownerReferences": [{"uid": owner_uid}], **extra.pop("metadata", {})}, **extra}


def pod(name: str, owner_uid: str, *, phase: str = "Running", ready: bool = True, waiting: str | None = None,
        restarts: int = 0) -> dict:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return owned("Pod", name, owner_uid, spec={"containers": [{"name": "web", "image": "nginx:1.27"}]},
                 status={"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}],
                         "containerStatuses": [{"name": "web", "ready": ready, "restartCount": restarts,
                                                "state": state}]})


def replicaset(name: str, owner_uid: str, revision: int, replicas: int, ready: int) -> dict:
    return owned("ReplicaSet", name, owner_uid, metadata={"annotations": {"deployment.kubernetes.io/revision": str(revision)}},
                 spec={"replicas": replicas}, status={"replicas": replicas, "readyReplicas": ready,
                                                      "availableReplicas": ready})


def tree_app() -> dict:
    return application(resources=[
        {"group": "", "version": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "web-config", "status": "Synced"},
        {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "shop", "name": "web", "status": "Synced",
         "health": {"status": "Progressing", "message": "1 of 2 replicas updated"}},
        {"group": "apps", "version": "v1", "kind": "StatefulSet", "namespace": "shop", "name": "db", "status": "OutOfSync",
         "health": {"status": "Healthy"}},
        {"group": "", "version": "v1", "kind": "Secret", "namespace": "shop", "name": "old", "status": "OutOfSync",
         "requiresPruning": True},
    ])


def test_tree_follows_owner_references_from_deployment_to_pods():
    workloads = [{"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web"}},
                 {"kind": "StatefulSet", "metadata": {"name": "db", "namespace": "shop", "uid": "uid-db"}}]
    replicasets = [replicaset("web-old", "uid-web", 1, 0, 0), replicaset("web-new", "uid-web", 3, 2, 1),
                   replicaset("web-older", "uid-web", 2, 0, 0), replicaset("other", "uid-someone-else", 1, 1, 1)]
    pods = [pod("web-new-b", "uid-web-new", phase="Pending", ready=False, waiting="ContainerCreating"),
            pod("web-new-a", "uid-web-new"), pod("db-0", "uid-db", waiting="CrashLoopBackOff", ready=False, restarts=5),
            pod("stray", "uid-other")]
    root = build_tree(tree_app(), workloads, replicasets, pods)
    assert format_tree(root, destination="shop") == (
        f"Application/web              Synced      Healthy       {SHA_A[:7]}\n"
        "├── ConfigMap/web-config     Synced\n"
        "├── Deployment/web           Synced      Progressing   1 of 2 replicas updated; 2 old ReplicaSets scaled to zero\n"
        "│   └── ReplicaSet/web-new               Progressing   rev 3, 1/2 ready\n"
        "│       ├── Pod/web-new-a                Healthy       Running, 1/1 ready\n"
        "│       └── Pod/web-new-b                Progressing   Pending, 0/1 ready: container web ContainerCreating\n"
        "├── StatefulSet/db           OutOfSync   Healthy\n"
        "│   └── Pod/db-0                         Degraded      Running, 0/1 ready, 5 restarts: "
        "container web CrashLoopBackOff (restarted 5 times)\n"
        "└── Secret/old               OutOfSync                 requires pruning\n"
    )
    assert root.to_dict()["children"][1]["children"][0]["children"][0] == {
        "kind": "Pod", "name": "web-new-a", "namespace": "shop", "health": "Healthy", "info": "Running, 1/1 ready"}


def test_tree_without_live_workloads_has_no_children_and_colours_only_when_asked():
    root = build_tree(tree_app())
    assert all(not node.children for node in root.children)
    coloured = format_tree(root, colour=True)
    assert "\033[34mProgressing\033[0m" in coloured
    assert ANSI.sub("", coloured) == format_tree(root)


def test_tree_names_the_namespace_of_resources_outside_the_destination():
    app = application(resources=[{"group": "", "kind": "ConfigMap", "namespace": "elsewhere", "name": "c", "status": "Synced"},
                                 {"group": "", "kind": "Namespace", "name": "shop", "status": "Synced"}])
    text = format_tree(build_tree(app), destination="shop")
    assert "ConfigMap/c (elsewhere)" in text and "Namespace/shop " in text


@pytest.mark.parametrize("pod_, expected", [
    (pod("a", "x"), "Running, 1/1 ready"),
    (pod("a", "x", phase="Pending", ready=False, waiting="ContainerCreating"), "Pending, 0/1 ready"),
    (pod("a", "x", ready=False, waiting="CrashLoopBackOff", restarts=1), "Running, 0/1 ready, 1 restart"),
    ({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Pending"}}, "Pending, 0/2 ready"),
    ({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}, "status": {"phase": "Running"}}, "Terminating, 0/0 ready"),
])
def test_pod_info_is_phase_readiness_and_restarts(pod_, expected):
    assert pod_info(pod_) == expected


# -- history, rollback, sync requests ---------------------------------------------------------------


def test_history_table_and_lookup():
    app = application(history=[{"id": 0, "revision": SHA_A, "deployedAt": "2025-01-01T00:00:00Z"},
                               {"id": 1, "revision": SHA_B, "deployedAt": "2025-01-02T00:00:00Z"}])
    assert format_history(app) == ("ID   DATE                   REVISION\n"
                                   f"0    2025-01-01T00:00:00Z   {SHA_A}\n"
                                   f"1    2025-01-02T00:00:00Z   {SHA_B}\n")
    assert history_entry(app, 1)["revision"] == SHA_B
    with pytest.raises(CliError, match=r'"web" has no history entry 7 \(IDs: 0, 1;'):
        history_entry(app, 7)


def test_sync_request_sets_only_what_was_asked():
    assert sync_request() == {"operation": {"sync": {}}}
    assert sync_request(SHA_A, prune=True) == {"operation": {"sync": {"revision": SHA_A, "prune": True}}}


def test_rollback_re_applies_the_source_of_the_history_entry_at_its_revision():
    source = {"repoURL": "https://git.example.com/team/old.git", "path": "deploy", "targetRevision": "release"}
    entry = {"id": 3, "revision": SHA_B, "deployedAt": "2025-01-02T00:00:00Z", "source": source}
    assert rollback_request(entry, prune=True) == {
        "operation": {"sync": {"revision": SHA_B, "source": source, "prune": True}}}
    request = rollback_request(entry)
    assert request == {"operation": {"sync": {"revision": SHA_B, "source": source}}}
    assert request["operation"]["sync"]["source"] is not source, "the request must not alias the app's status"
    # Entries written before sources were recorded: the revision alone.
    assert rollback_request({"id": 0, "revision": SHA_A}) == {"operation": {"sync": {"revision": SHA_A}}}


# -- delete -------------------------------------------------------------------------------------------


def deletable(finalizers: list[str] | None = None, terminating: bool = False) -> dict:
    app = application()
    if finalizers is not None:
        app["metadata"]["finalizers"] = finalizers
    if terminating:
        app["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return app


@pytest.mark.parametrize("finalizers, terminating, plan", [
    # --cascade: the controller's finalizer makes it delete the resources before the app.
    (None, False, DeletePlan(["gantry.dev/resources-finalizer"], True, "deleted")),
    (["other.example/keep"], False, DeletePlan(["other.example/keep", "gantry.dev/resources-finalizer"], True, "deleted")),
    (["gantry.dev/resources-finalizer"], False, DeletePlan(None, False, "deleted")),
    (["resources-finalizer.argocd.argoproj.io"], True, DeletePlan(None, False, "deleted")),
    (["resources-finalizer.argocd.argoproj.io/foreground"], False, DeletePlan(None, False, "deleted")),
])
def test_delete_with_cascade_has_the_controller_delete_the_resources(finalizers, terminating, plan):
    assert delete_plan(deletable(finalizers, terminating), cascade=True) == plan
    assert delete_message("web", plan, waited=True) == 'application "web" deleted with its resources\n'


@pytest.mark.parametrize("finalizers", [None, ["other.example/keep"]])
def test_delete_with_cascade_refuses_when_it_cannot_cascade(finalizers):
    # Already terminating without the finalizer: none can be added, so the resources would stay.
    with pytest.raises(CliError) as raised:
        delete_plan(deletable(finalizers, terminating=True), cascade=True)
    assert raised.value.exit_code == EXIT_FAILED
    assert str(raised.value).startswith('application "web" is already being deleted without a resources finalizer')
    assert "its resources will stay" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("finalizers, terminating, plan, message", [
    (None, False, DeletePlan(None, False, "kept"), "deleted; its resources stay"),
    (["gantry.dev/resources-finalizer", "other.example/keep"], False, DeletePlan(["other.example/keep"], True, "kept"),
     "deleted; its resources stay"),
    (["resources-finalizer.argocd.argoproj.io"], True, DeletePlan([], False, "maybe"),
     "deleted; it was already being deleted with its resources, so some of them may be gone"),
    # Argo CD's finalizer with a propagation suffix cascades too: --no-cascade must drop it.
    (["resources-finalizer.argocd.argoproj.io/background"], False, DeletePlan([], True, "kept"),
     "deleted; its resources stay"),
])
def test_delete_without_cascade_drops_the_finalizer_and_says_what_stays(finalizers, terminating, plan, message):
    assert delete_plan(deletable(finalizers, terminating), cascade=False) == plan
    assert delete_message("web", plan, waited=True) == f'application "web" {message}\n'


def test_delete_without_waiting_claims_only_what_was_requested():
    assert delete_message("web", DeletePlan(None, False, "deleted"), waited=False) == (
        'application "web" deletion requested; the controller deletes its resources first\n')
    assert delete_message("web", DeletePlan(None, False, "kept"), waited=False) == (
        'application "web" deletion requested; its resources stay\n')
    assert delete_message("web", DeletePlan([], False, "maybe"), waited=False) == 'application "web" deletion requested\n'


# -- diff -------------------------------------------------------------------------------------------


def secret(value: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"},
            "data": {"password": base64.b64encode(value.encode()).decode()}}


def test_diff_headers_exit_codes_and_masked_secrets():
    assert diff_header(ObjectRef("apps", "Deployment", "shop", "web")) == "===== apps/Deployment shop/web ====="
    assert diff_header(ObjectRef("", "Namespace", "", "shop")) == "===== /Namespace /shop ====="
    changed = object_diff_text(secret("old-value"), secret("new-value"))
    assert changed == MASKED_ONLY
    created = object_diff_text(None, secret("new-value"))
    assert "+  password: ++++++++" in created
    for text in (changed, created):
        assert "new-value" not in text and base64.b64encode(b"new-value").decode() not in text
    entries = [DiffEntry(ObjectRef("", "Secret", "shop", "db"), "create", created),
               DiffEntry(ObjectRef("", "ConfigMap", "shop", "gone"), "prune", "--- live\n+++ target\n")]
    text = format_diff(entries)
    assert text.startswith("===== /Secret shop/db ===== (would be created)\n--- live\n")
    assert "===== /ConfigMap shop/gone ===== (would be pruned)\n" in text
    assert diff_exit_code([]) == EXIT_OK
    assert diff_exit_code(entries) == EXIT_FAILED
    assert diff_exit_code([], [ApplyFailure(ObjectRef("", "ConfigMap", "shop", "x"), "refused")]) == EXIT_ERROR
    assert entries[0].to_dict()["kind"] == "Secret"


# -- waiting ------------------------------------------------------------------------------------------


def test_wait_is_done_when_synced_and_healthy():
    assert wait_verdict(application(), want_sync=True, want_health=True).state == "done"
    progressing = application(health="Progressing")
    assert wait_verdict(progressing, want_sync=True, want_health=False).state == "done"
    verdict = wait_verdict(progressing, want_sync=True, want_health=True)
    assert verdict.state == "waiting" and verdict.message == "health is Progressing"


def test_wait_fails_on_degraded_naming_the_resource_and_why():
    app = application(health="Degraded", resources=[
        {"kind": "Deployment", "namespace": "shop", "name": "web",
         "health": {"status": "Degraded", "message": 'deployment "web" exceeded its progress deadline'}},
        {"kind": "Service", "namespace": "shop", "name": "web", "health": {"status": "Healthy"}}])
    assert degraded_resources(app) == ['Deployment shop/web: deployment "web" exceeded its progress deadline']
    verdict = wait_verdict(app, want_sync=False, want_health=True)
    assert verdict.state == "failed"
    assert verdict.message == 'health is Degraded: Deployment shop/web: deployment "web" exceeded its progress deadline'
    assert wait_verdict(app, want_sync=True, want_health=False).state == "done"


def test_wait_fails_on_a_failed_sync_and_waits_out_pending_requests():
    failed = application(sync="Failed")
    failed["status"]["message"] = "k8s/deployment.yaml:3: bad"
    assert wait_verdict(failed, want_sync=True, want_health=False) == cli.Verdict("failed", "sync Failed: k8s/deployment.yaml:3: bad")
    pending = application(health="Degraded")
    pending["operation"] = {"sync": {}}
    assert wait_verdict(pending, want_sync=True, want_health=True).state == "waiting"
    refreshing = application(health="Degraded")
    refreshing["metadata"]["annotations"] = {"gantry.dev/refresh": "normal"}
    assert wait_verdict(refreshing, want_sync=True, want_health=True).state == "waiting"
    new = application()
    del new["status"]
    assert wait_verdict(new, want_sync=True, want_health=True).state == "waiting"


REQUESTED = "2025-01-01T00:00:10Z"


def test_sync_outcome_waits_while_the_operation_is_pending():
    app = application(operationState={"phase": "Succeeded", "finishedAt": "2025-01-01T00:00:00Z"},
                      reconciledAt="2025-01-01T00:00:05Z")
    app["operation"] = {"sync": {}}
    assert sync_outcome(app, requested_at=REQUESTED, previous_state=app["status"]["operationState"], waited=1) is None


def test_sync_outcome_is_the_new_operation_state_once_the_operation_is_gone():
    previous = {"phase": "Succeeded", "finishedAt": "2025-01-01T00:00:00Z"}
    new = {"phase": "Failed", "message": "Deployment shop/web: refused", "finishedAt": REQUESTED,
           "syncResult": {"revision": "abc", "resources": []}}
    outcome = sync_outcome(application(operationState=new), requested_at=REQUESTED, previous_state=previous, waited=2)
    assert (outcome.phase, outcome.message, outcome.ran) == ("Failed", "Deployment shop/web: refused", True)
    # A sync that could not start: the controller finished it without a syncResult.
    early = {"phase": "Failed", "message": "revision 'x' not found", "finishedAt": REQUESTED}
    outcome = sync_outcome(application(operationState=early), requested_at=REQUESTED, previous_state=previous, waited=2)
    assert (outcome.phase, outcome.ran) == ("Failed", False)
    # Same content as before but finished after the request (a sync of an app already in sync).
    same = sync_outcome(application(operationState=new), requested_at=REQUESTED, previous_state=new, waited=2)
    assert same.ran and same.phase == "Failed"
    gone = sync_outcome(application(operationState=previous), requested_at=REQUESTED, previous_state=previous, waited=2)
    assert gone.phase == "Unknown" and not gone.ran


def test_sync_outcome_reports_a_failure_before_apply_only_from_a_later_reconcile():
    def failing(reconciled_at: str) -> dict:
        app = application(sync="Failed", reconciledAt=reconciled_at,
                          conditions=[{"type": "ComparisonError", "message": "revision 'x' not found"}])
        app["operation"] = {"sync": {"revision": "x"}}
        return app

    assert sync_outcome(failing("2025-01-01T00:00:09Z"), requested_at=REQUESTED, previous_state=None, waited=5) is None
    outcome = sync_outcome(failing("2025-01-01T00:00:11Z"), requested_at=REQUESTED, previous_state=None, waited=0.5)
    assert (outcome.phase, outcome.message, outcome.ran) == ("Failed", "revision 'x' not found", False)
    # Began in the same second as the request: maybe before it; taken as the answer after a grace period.
    assert sync_outcome(failing(REQUESTED), requested_at=REQUESTED, previous_state=None, waited=1) is None
    assert sync_outcome(failing(REQUESTED), requested_at=REQUESTED, previous_state=None, waited=5).phase == "Failed"


def test_operation_result_lists_what_was_done():
    text = format_operation({
        "phase": "Succeeded", "message": "successfully synced (applied 1, pruned 1)", "startedAt": "t0", "finishedAt": "t1",
        "syncResult": {"revision": SHA_A, "resources": [
            {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "web", "status": "Synced", "action": "configured"},
            {"group": "", "kind": "ConfigMap", "namespace": "shop", "name": "old", "status": "Pruned", "action": "deleted"}]}})
    assert f"Revision:  {SHA_A}" in text and "Phase:     Succeeded" in text
    assert "apps    Deployment   shop        web    Synced   configured" in text
    assert "        ConfigMap    shop        old    Pruned   deleted" in text


# -- errors and the argparse layer ---------------------------------------------------------------------


def test_unreachable_api_server_is_one_short_line():
    error = KubeApiError(0, "ConnectionError", "cannot reach the API server: HTTPSConnectionPool(host='127.0.0.1', "
                         "port=9): Max retries exceeded (Caused by NewConnectionError('<urllib3.connection.HTTPSConnection "
                         "object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused'))")
    assert describe_kube_error(error, "https://127.0.0.1:9") == "cannot reach the API server at https://127.0.0.1:9: Connection refused"
    assert "401" in describe_kube_error(KubeApiError(401, "Unauthorized", "Unauthorized"), "https://h")


def test_kustomize_is_the_flag_then_the_environment_then_path():
    assert kustomize_binary("/opt/kustomize", {"GANTRY_KUSTOMIZE": "/env/kustomize"}) == "/opt/kustomize"
    assert kustomize_binary(None, {"GANTRY_KUSTOMIZE": "/env/kustomize"}) == "/env/kustomize"


VERBS = ("list", "get", "diff", "sync", "refresh", "history", "rollback", "wait", "delete")


@pytest.mark.parametrize("argv", [[], ["app"], *[["app", verb] for verb in VERBS]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: gantry" in capsys.readouterr().out


def test_global_options_work_before_and_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["-n", "team", "app", "list"]).namespace == "team"
    assert parser.parse_args(["app", "list", "-n", "team"]).namespace == "team"
    assert parser.parse_args(["app", "list"]).namespace == "gantry"
    args = parser.parse_args(["app", "wait", "web", "--timeout", "30s"])
    assert args.timeout == 30 and not args.sync and not args.health
    assert parser.parse_args(["app", "delete", "web", "--no-cascade"]).cascade is False
    assert parser.parse_args(["app", "delete", "web"]).cascade is True


@pytest.mark.parametrize("argv, line", [
    (["app", "wait", "web", "--timeout", "abc"], "gantry app wait: error: argument --timeout: invalid duration 'abc'; "
     "use one like 30s, 5m or 1h (try 'gantry app wait --help')"),
    (["app", "wait", "web", "--timeout", "0s"], "gantry app wait: error: argument --timeout: invalid duration '0s'; "
     "the timeout must be more than zero (try 'gantry app wait --help')"),
    (["app", "get"], "gantry app get: error: the following arguments are required: name (try 'gantry app get --help')"),
    (["app", "list", "-o", "table"], "gantry app list: error: argument -o/--output: invalid choice: 'table' "
     "(choose from 'json', 'yaml') (try 'gantry app list --help')"),
    (["app", "list", "--bogus"], "gantry app list: error: unrecognized arguments: --bogus (try 'gantry app list --help')"),
    (["app", "sync", "web", "extra"], "gantry app sync: error: unrecognized arguments: extra (try 'gantry app sync --help')"),
    (["app", "rollback", "web", "x"], "gantry app rollback: error: argument id: invalid int value: 'x' "
     "(try 'gantry app rollback --help')"),
    (["app", "bogus"], "gantry app: error: argument VERB: invalid choice: 'bogus' (choose from 'list', 'get', 'diff', "
     "'sync', 'refresh', 'history', 'rollback', 'terminate-op', 'wait', 'delete') (try 'gantry app --help')"),
    (["app"], "gantry app: error: a verb is required: one of list, get, diff, sync, refresh, history, rollback, terminate-op, wait, "
     "delete (try 'gantry app --help')"),
    ([], "gantry: error: a command is required: one of app, ui (try 'gantry --help')"),
    (["--bogus"], "gantry: error: unrecognized arguments: --bogus (try 'gantry --help')"),
])
def test_usage_errors_are_one_line_on_stderr_and_exit_2(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == "" and err == line + "\n"


def test_a_bad_kubeconfig_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere.kubeconfig"
    assert cli.main(["app", "list", "--kubeconfig", str(missing)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"gantry: cannot load the kubeconfig {missing}") and err.count("\n") == 1
