"""The `gantry` command end to end: run as users run it (`python -m controller app …` with
--kubeconfig) against Applications the real controller syncs on the local control plane."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from harness import web_app_files

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECRET_VALUE = "hunter2-do-not-print-7f3a"
SECRET_VALUE_2 = "rotated-also-secret-91c0"


@pytest.fixture
def gantry(cluster, tmp_path):
    """gantry(*args) → CompletedProcess of `python -m controller *args --kubeconfig …`."""
    env = {**os.environ, "PATH": f"{cluster.bin_dir}:{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("NO_COLOR", None)
    env.pop("KUBECONFIG", None)

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "controller", *args, "--kubeconfig", str(cluster.kubeconfig)],
                                capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        # Whatever happened, it is said on one line, never with a traceback or colour codes (not a TTY).
        assert "Traceback" not in result.stderr, result.stderr
        assert "\033[" not in result.stdout + result.stderr
        return result

    return run


def ok(result: subprocess.CompletedProcess, code: int = 0) -> str:
    assert result.returncode == code, f"exit {result.returncode} (wanted {code})\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def image_of(app) -> str:
    return app.object("deployment", "web")["spec"]["template"]["spec"]["containers"][0]["image"]


def files_with_secret(value: str, **kwargs) -> dict[str, str]:
    files = web_app_files(**kwargs)
    files["k8s/secret.yaml"] = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "type": "Opaque",
        "stringData": {"password": value},
        "data": {"token": base64.b64encode(f"tok-{value}".encode()).decode()},
    })
    resources = yaml.safe_load(files["k8s/kustomization.yaml"])["resources"]
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": [*resources, "secret.yaml"]})
    return files


def assert_no_secret(text: str, *values: str) -> None:
    for value in values:
        for form in (value, base64.b64encode(value.encode()).decode(), base64.b64encode(f"tok-{value}".encode()).decode(),
                     f"tok-{value}"):
            assert form not in text, f"Secret data {form!r} was printed"


def test_list_get_history_and_outputs_of_a_synced_app(make_app, gantry):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)

    listing = ok(gantry("app", "list"))
    header, *rows = listing.splitlines()
    assert header.split() == ["NAME", "SYNC", "HEALTH", "REVISION", "REPO", "PATH", "DEST", "MESSAGE"]
    row = next(r for r in rows if r.startswith(app.name + " "))
    assert row.split()[:7] == [app.name, "Synced", "Healthy", app.repo.head[:7], app.repo_url, "k8s", app.destination]
    listed = json.loads(ok(gantry("app", "list", "-o", "json")))
    assert app.name in {item["metadata"]["name"] for item in listed["items"]}
    assert any(item["metadata"]["name"] == app.name for item in yaml.safe_load(ok(gantry("app", "list", "-o", "yaml")))["items"])

    shown = ok(gantry("app", "get", app.name))
    for fragment in (app.repo_url, "k8s", app.repo.head, "http://shop.example.test", "nginx:1.27", "Succeeded",
                     "Automated (Prune, SelfHeal)", f"Application/{app.name}", "Deployment/web", "Service/web",
                     "ConfigMap/web-config", "Ingress/web", "ReplicaSet/web-", "Pod/web-", "Running, 1/1 ready"):
        assert fragment in shown, f"{fragment!r} not in:\n{shown}"
    lines = shown.splitlines()
    # The tree: a ReplicaSet under the Deployment, a Pod under the ReplicaSet.
    deployment = next(i for i, line in enumerate(lines) if "Deployment/web" in line)
    assert "ReplicaSet/web-" in lines[deployment + 1] and lines[deployment + 1].index("ReplicaSet") > lines[deployment].index("Deployment")
    assert "Pod/web-" in lines[deployment + 2] and lines[deployment + 2].index("Pod") > lines[deployment + 1].index("ReplicaSet")
    got = yaml.safe_load(ok(gantry("app", "get", app.name, "-o", "yaml")))
    assert got["status"]["sync"]["revision"] == app.repo.head
    assert "managedFields" not in got["metadata"]
    assert json.loads(ok(gantry("app", "get", app.name, "-o", "json")))["metadata"]["name"] == app.name

    history = ok(gantry("app", "history", app.name))
    assert history.splitlines()[0].split() == ["ID", "DATE", "REVISION"]
    assert history.splitlines()[1].split()[0] == "0" and history.splitlines()[1].split()[2] == app.repo.head
    assert json.loads(ok(gantry("app", "history", app.name, "-o", "json")))[0]["revision"] == app.repo.head

    # Rollback is refused while automated sync would undo it.
    refused = gantry("app", "rollback", app.name, "0")
    assert refused.returncode == 1
    assert refused.stderr.startswith("gantry: automated sync is enabled; disable it first (as in Argo CD)")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "operation" not in app.get()


def test_secret_values_never_appear_in_diff_get_or_sync(make_app, gantry):
    app = make_app(files_with_secret(SECRET_VALUE))
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")

    diff = gantry("app", "diff", app.name, "--local")
    out = ok(diff, 1)
    assert f"===== /Secret {app.destination}/db =====" in out
    assert f"===== apps/Deployment {app.destination}/web =====" in out
    assert "password: ++++++++" in out and "token: ++++++++" in out
    assert_no_secret(out + diff.stderr, SECRET_VALUE)
    structured = json.loads(ok(gantry("app", "diff", app.name, "--local", "-o", "json"), 1))
    assert {(r["kind"], r["action"]) for r in structured["resources"]} >= {("Secret", "create"), ("Deployment", "create")}
    assert_no_secret(json.dumps(structured), SECRET_VALUE)

    dry = gantry("app", "sync", app.name, "--dry-run")
    assert_no_secret(ok(dry, 1) + dry.stderr, SECRET_VALUE)
    assert app.object("secret", "db") is None, "--dry-run wrote something"
    assert "operation" not in app.get()

    synced = gantry("app", "sync", app.name)
    out = ok(synced)
    assert "Succeeded" in out and "Secret" in out
    assert_no_secret(out + synced.stderr, SECRET_VALUE)
    assert app.object("secret", "db") is not None
    app.wait_synced(app.repo.head)

    in_sync = gantry("app", "diff", app.name, "--local")
    assert ok(in_sync, 0) == ""

    # A rotated value is a difference, shown without either value.
    app.push(files_with_secret(SECRET_VALUE_2), message="rotate")
    rotated = gantry("app", "diff", app.name, "--local")
    out = ok(rotated, 1)
    assert f"===== /Secret {app.destination}/db =====" in out
    assert "only Secret values differ" in out
    assert_no_secret(out + rotated.stderr, SECRET_VALUE, SECRET_VALUE_2)

    shown = gantry("app", "get", app.name)
    assert "Secret/db" in ok(shown)
    assert_no_secret(shown.stdout + gantry("app", "get", app.name, "-o", "yaml").stdout, SECRET_VALUE, SECRET_VALUE_2)


def cli_plan(gantry, app) -> set[tuple[str, str, str]]:
    """What `gantry app diff --local` says a sync would do: (kind, name, create | update | prune)."""
    result = gantry("app", "diff", app.name, "--local", "-o", "json")
    assert result.returncode in (0, 1), result.stderr
    answer = json.loads(result.stdout)
    assert not answer["failures"], answer["failures"]
    return {(r["kind"], r["name"], r["action"]) for r in answer["resources"]}


def controller_plan(status: dict) -> set[tuple[str, str, str]]:
    """The same, as the controller's own comparison left it in the status: what is not Synced,
    to create (Missing) or update, and what requires pruning."""
    def action(entry: dict) -> str:
        if entry.get("requiresPruning"):
            return "prune"
        return "create" if (entry.get("health") or {}).get("status") == "Missing" else "update"

    return {(r["kind"], r["name"], action(r)) for r in status["resources"] if r["status"] != "Synced"}


def compared_at(app, revision: str, *, generation: int | None = None) -> dict:
    """The status once the controller compared `revision` (and the Application's `generation`)."""
    return app.wait(lambda s: (s.get("sync") or {}).get("revision") == revision and (s.get("sync") or {}).get("status")
                    and (generation is None or s.get("observedGeneration") == generation),
                    f"a comparison at {revision[:8]}")


def test_cli_diff_and_the_controller_agree_on_recurse_kustomize_overrides_hooks_and_prune(make_app, gantry):
    # A kustomization with Argo CD's overrides laid over it, and a PreSync hook (run, never diffed).
    files = web_app_files()
    files["k8s/migrate.yaml"] = yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "migrate", "annotations": {"argocd.argoproj.io/hook": "PreSync"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "m", "image": "busybox:1.36"}]}}}})
    resources = yaml.safe_load(files["k8s/kustomization.yaml"])["resources"]
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": [*resources, "migrate.yaml"]})
    app = make_app(files)

    def apply(image: str) -> None:
        app.apply(automated=False, source={"repoURL": app.repo_url, "targetRevision": "HEAD", "path": "k8s", "kustomize": {
            "namePrefix": "shop-", "images": [f"nginx={image}"], "commonLabels": {"team": "shop"}}})

    apply("registry.example/nginx:1.28")
    status = compared_at(app, app.repo.head)
    wanted = {(kind, "shop-" + name, "create") for kind, name in
              (("Deployment", "web"), ("Service", "web"), ("ConfigMap", "web-config"), ("Ingress", "web"))}
    assert controller_plan(status) == wanted
    assert cli_plan(gantry, app) == wanted  # the overrides' names, and no hook

    ok(gantry("app", "sync", app.name))
    app.wait_synced(app.repo.head)
    assert cli_plan(gantry, app) == set(), "the CLI rendered without the overrides"

    # A new override in the Application: the same commit rendered again, by both.
    apply("registry.example/nginx:1.29")
    status = compared_at(app, app.repo.head, generation=app.get()["metadata"]["generation"])
    assert controller_plan(status) == cli_plan(gantry, app) == {("Deployment", "shop-web", "update")}
    diff = ok(gantry("app", "diff", app.name, "--local"), 1)
    assert "registry.example/nginx:1.29" in diff and "registry.example/nginx:1.28" in diff

    # A file removed from git: stale by the same rule as the prune's.
    del files["k8s/config.yaml"]
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": [r for r in [*resources, "migrate.yaml"]
                                                                    if r != "config.yaml"]})
    removed = app.push(files, delete=("k8s/config.yaml",), message="drop the ConfigMap")
    app.refresh()
    status = compared_at(app, removed)
    assert controller_plan(status) == cli_plan(gantry, app) == {
        ("Deployment", "shop-web", "update"), ("ConfigMap", "shop-web-config", "prune")}


def test_cli_diff_and_the_controller_agree_on_a_plain_directory_with_recurse(make_app, gantry):
    config = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}
    app = make_app({
        "k8s/top.yaml": yaml.safe_dump({**config, "metadata": {"name": "top"}}),
        "k8s/nested/inner.yaml": yaml.safe_dump({**config, "metadata": {"name": "inner"}}),
        "k8s/nested/deeper/innermost.yaml": yaml.safe_dump({**config, "metadata": {"name": "innermost"}}),
    })
    source = {"repoURL": app.repo_url, "targetRevision": "HEAD", "path": "k8s"}
    app.apply(automated=False, source={**source, "directory": {"recurse": True}})
    status = compared_at(app, app.repo.head)
    wanted = {("ConfigMap", name, "create") for name in ("top", "inner", "innermost")}
    assert controller_plan(status) == cli_plan(gantry, app) == wanted
    ok(gantry("app", "sync", app.name))
    app.wait_synced(app.repo.head)
    assert cli_plan(gantry, app) == set()

    # Without recurse the nested files are not the app's any more: both would prune them.
    app.apply(automated=False, source=source)
    status = compared_at(app, app.repo.head, generation=app.get()["metadata"]["generation"])
    assert controller_plan(status) == cli_plan(gantry, app) == {
        ("ConfigMap", "inner", "prune"), ("ConfigMap", "innermost", "prune")}


def synced_by_hand(app, gantry) -> str:
    """Apply app without automated sync, sync it with `gantry app sync`; the commit it synced."""
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    first = app.repo.head
    ok(gantry("app", "sync", app.name))
    app.wait_synced(first)
    return first


def test_manual_sync_then_rollback_restores_the_previous_revision(make_app, gantry):
    app = make_app()
    first = synced_by_hand(app, gantry)
    assert image_of(app) == "nginx:1.27"

    second = app.push(web_app_files(image="nginx:1.28"), message="bad image")
    diff = ok(gantry("app", "diff", app.name, "--local"), 1)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and "image:" in line]
    assert [line[0] + line[1:].strip() for line in changed] == ["-- image: nginx:1.27", "+- image: nginx:1.28"], diff
    out = ok(gantry("app", "sync", app.name))
    assert second in out and "Succeeded" in out
    assert image_of(app) == "nginx:1.28"

    history = {entry["revision"]: entry["id"] for entry in json.loads(ok(gantry("app", "history", app.name, "-o", "json")))}
    assert set(history) == {first, second}

    unknown = gantry("app", "rollback", app.name, "99")
    assert unknown.returncode == 2 and "no history entry 99" in unknown.stderr

    out = ok(gantry("app", "rollback", app.name, str(history[first])))
    assert first in out and "Succeeded" in out
    assert image_of(app) == "nginx:1.27"
    status = app.status()
    assert status["operationState"]["syncResult"]["revision"] == first
    assert status["history"][-1]["revision"] == first
    # git's HEAD still has the bad image: compared with it, the rolled-back app is OutOfSync, as in Argo CD.
    assert app.wait_sync_status("OutOfSync")["sync"]["revision"] == second
    assert "operation" not in app.get()


def test_rollback_re_applies_the_source_of_the_history_entry_after_the_path_moved(make_app, gantry):
    app = make_app()
    first = synced_by_hand(app, gantry)
    entry = app.status()["history"][-1]
    assert entry["source"]["path"] == "k8s"

    # The manifests move to deploy/ (with a new image) and the Application follows them.
    moved = {name.replace("k8s/", "deploy/", 1): text for name, text in web_app_files(image="nginx:1.28").items()}
    second = app.push(moved, delete=("k8s",), message="move the manifests to deploy/")
    app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", "gantry", "--type", "merge",
                        "-p", json.dumps({"spec": {"source": {"path": "deploy"}}}))
    out = ok(gantry("app", "sync", app.name))
    assert second in out
    assert image_of(app) == "nginx:1.28"

    # At `first` there is no deploy/: only the history entry's own path (k8s) renders it.
    out = ok(gantry("app", "rollback", app.name, str(entry["id"])))
    assert first in out and "Succeeded" in out
    assert image_of(app) == "nginx:1.27"
    state = app.status()["operationState"]
    assert state["syncResult"]["revision"] == first
    assert "operation" not in app.get()


def test_sync_to_a_revision_that_does_not_exist_fails_and_withdraws_the_request(make_app, gantry):
    app = make_app()
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    failed = gantry("app", "sync", app.name, "--revision", "no-such-branch", "--timeout", "60s")
    assert failed.returncode == 1, failed.stderr
    assert "no-such-branch" in failed.stderr and "failed before anything was applied" in failed.stderr
    assert "operation" not in app.get(), "the failed request was left for the controller to retry for ever"

    requested = gantry("app", "sync", app.name, "--async")
    assert "requested sync" in ok(requested)
    ok(gantry("app", "wait", app.name, "--timeout", "90s"))
    assert app.object("deployment", "web") is not None


def test_sync_to_an_older_commit_and_to_a_branch_then_back_to_the_target(make_app, gantry):
    app = make_app()
    first = app.repo.head
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    second = app.push(web_app_files(image="nginx:1.28"), message="new image")

    out = ok(gantry("app", "sync", app.name, "--revision", first))
    assert first in out and "Succeeded" in out
    assert image_of(app) == "nginx:1.27", "the older commit was not the one applied"
    status = app.status()
    assert status["operationState"]["syncResult"]["revision"] == first
    assert status["history"][-1]["revision"] == first
    # Compared with the targetRevision (HEAD), the app deployed from an older commit is OutOfSync.
    assert app.wait_sync_status("OutOfSync")["sync"]["revision"] == second

    app.repo.branch("release", start=first)
    hotfix = app.push(web_app_files(image="nginx:1.26"), message="hotfix on the release branch")
    app.repo.switch("main")
    out = ok(gantry("app", "sync", app.name, "--revision", "release"))
    assert hotfix in out and "Succeeded" in out
    assert image_of(app) == "nginx:1.26"
    assert app.status()["operationState"]["syncResult"]["revision"] == hotfix

    ok(gantry("app", "sync", app.name))
    assert image_of(app) == "nginx:1.28"
    app.wait_synced(second)
    assert [entry["revision"] for entry in app.status()["history"]] == [first, hotfix, second]
    assert "operation" not in app.get()


def test_sync_prunes_what_git_no_longer_has_only_with_prune(make_app, gantry):
    app = make_app()
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    ok(gantry("app", "sync", app.name))
    app.wait_synced(app.repo.head)
    assert app.object("configmap", "web-config") is not None

    files = web_app_files(replicas=2)
    resources = yaml.safe_load(files.pop("k8s/kustomization.yaml"))["resources"]
    files["k8s/kustomization.yaml"] = yaml.safe_dump({"resources": [r for r in resources if r != "config.yaml"]})
    del files["k8s/config.yaml"]
    removed = app.push(files, delete=("k8s/config.yaml",), message="drop the ConfigMap")

    out = ok(gantry("app", "sync", app.name))
    assert removed in out and "Succeeded" in out
    assert app.object("deployment", "web")["spec"]["replicas"] == 2, "the new commit was not applied"
    kept = app.object("configmap", "web-config")
    assert kept is not None and "deletionTimestamp" not in kept["metadata"], "pruned without --prune"
    status = app.wait_sync_status("OutOfSync")
    entry = next(r for r in status["resources"] if r["kind"] == "ConfigMap" and r["name"] == "web-config")
    assert entry.get("requiresPruning") is True
    dry = ok(gantry("app", "sync", app.name, "--dry-run", "--prune"), 1)
    assert f"===== /ConfigMap {app.destination}/web-config ===== (would be pruned)" in dry

    assert "Succeeded" in ok(gantry("app", "sync", app.name, "--prune"))
    gone = app.object("configmap", "web-config")
    assert gone is None or "deletionTimestamp" in gone["metadata"], "--prune did not delete it"
    assert app.object("deployment", "web") is not None
    app.wait_synced(removed)


def test_refresh_and_wait_pick_up_a_new_commit(make_app, gantry):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    sha = app.push(web_app_files(replicas=2), message="two replicas")
    out = ok(gantry("app", "refresh", app.name))
    assert out.startswith(f"{app.name}: ")
    assert "gantry.dev/refresh" not in (app.get()["metadata"].get("annotations") or {})
    ok(gantry("app", "refresh", app.name, "--hard"))
    waited = ok(gantry("app", "wait", app.name, "--timeout", "90s"))
    assert "Synced, Healthy" in waited
    assert app.status()["sync"]["revision"] == sha
    assert app.object("deployment", "web")["spec"]["replicas"] == 2
    assert "Synced" in ok(gantry("app", "wait", app.name, "--sync", "--timeout", "10s"))
    assert "Healthy" in ok(gantry("app", "wait", app.name, "--health", "--timeout", "10s"))


def test_wait_fails_on_timeout_and_on_degraded_naming_the_resource(make_app, gantry):
    app = make_app()
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    started = time.monotonic()
    timed_out = gantry("app", "wait", app.name, "--sync", "--timeout", "3s")
    assert timed_out.returncode == 1
    assert timed_out.stderr.startswith("gantry: timed out after 3s") and "OutOfSync" in timed_out.stderr
    assert time.monotonic() - started < 30

    # Pods that can never be scheduled: the Deployment exceeds its progress deadline → Degraded.
    files = web_app_files()
    deployment = yaml.safe_load(files["k8s/deployment.yaml"])
    deployment["spec"]["progressDeadlineSeconds"] = 2
    deployment["spec"]["template"]["spec"]["nodeSelector"] = {"gantry.dev/no-such-node": "true"}
    files["k8s/deployment.yaml"] = yaml.safe_dump(deployment)
    app.push(files, message="unschedulable")
    app.apply()
    degraded = gantry("app", "wait", app.name, "--health", "--timeout", "90s")
    assert degraded.returncode == 1, degraded.stdout + degraded.stderr
    assert "health is Degraded" in degraded.stderr
    assert f"Deployment {app.destination}/web" in degraded.stderr and "progress deadline" in degraded.stderr
    assert len(degraded.stderr.strip().splitlines()) == 1
    tree = ok(gantry("app", "get", app.name))
    assert "Degraded" in tree and "Pending" in tree


def test_delete_with_and_without_cascade(make_app, gantry):
    kept = make_app()
    kept.apply(finalizer=True)
    cascaded = make_app()
    cascaded.apply()
    kept.wait_synced(kept.repo.head)
    cascaded.wait_synced(cascaded.repo.head)

    assert "deleted" in ok(gantry("app", "delete", kept.name, "--no-cascade", "--timeout", "60s"))
    assert kept.cluster.kubectl("get", "applications.gantry.dev", kept.name, "-n", "gantry", check=False).returncode != 0
    assert kept.object("deployment", "web") is not None, "--no-cascade deleted the app's resources"

    assert "with its resources" in ok(gantry("app", "delete", cascaded.name, "--timeout", "90s"))
    assert cascaded.object("deployment", "web") is None
    assert cascaded.object("configmap", "web-config") is None


def test_cascade_is_refused_for_an_app_already_being_deleted_without_the_finalizer(make_app, gantry):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    hold = "e2e.gantry.dev/hold"  # stands for any other finalizer that keeps the app terminating
    app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", "gantry", "--type", "merge",
                        "-p", json.dumps({"metadata": {"finalizers": [hold]}}))
    app.cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", "gantry", "--wait=false")
    try:
        refused = gantry("app", "delete", app.name, "--cascade", "--timeout", "10s")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stdout == ""
        assert refused.stderr.startswith(f'gantry: application "{app.name}" is already being deleted without a '
                                         "resources finalizer") and "its resources will stay" in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert app.object("deployment", "web") is not None
    finally:
        app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", "gantry", "--type", "merge",
                            "-p", json.dumps({"metadata": {"finalizers": None}}), check=False)


def test_usage_errors_are_one_line(gantry):
    for args in (("app", "wait", "web", "--timeout", "abc"), ("app", "get"), ("app", "list", "-o", "table"),
                 ("app", "sync", "web", "--bogus"), ("app",)):
        result = gantry(*args)
        assert result.returncode == 2 and result.stdout == "", args
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("gantry"), result.stderr
        assert result.stderr.endswith(" --help')\n"), result.stderr


def test_errors_are_one_line_with_a_non_zero_exit(make_app, gantry, cluster, tmp_path):
    missing = gantry("app", "get", "no-such-app")
    assert missing.returncode == 2
    assert missing.stderr == 'gantry: application "no-such-app" not found in namespace "gantry"\n'
    for command in (("app", "sync", "no-such-app"), ("app", "diff", "no-such-app", "--local"), ("app", "wait", "no-such-app"),
                    ("app", "history", "no-such-app"), ("app", "delete", "no-such-app")):
        result = gantry(*command)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not found" in result.stderr, command

    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = "https://127.0.0.1:9"
    unreachable = tmp_path / "unreachable.kubeconfig"
    unreachable.write_text(yaml.safe_dump(config))
    down = subprocess.run([sys.executable, "-m", "controller", "app", "list", "--kubeconfig", str(unreachable)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert down.returncode == 2
    assert down.stderr.startswith("gantry: cannot reach the API server at https://127.0.0.1:9")
    assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr

    # A broken commit: diff names the file, exits 2.
    app = make_app()
    app.repo.write({"k8s/deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec: [1\n"})
    app.repo.commit("broken")
    app.repo.push()
    app.apply(automated=False)
    broken = gantry("app", "diff", app.name, "--local")
    assert broken.returncode == 2
    assert broken.stderr.startswith("gantry: k8s/deployment.yaml:") and broken.stderr.count("\n") == 1
