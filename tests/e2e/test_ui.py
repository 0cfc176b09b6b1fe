"""The web UI's server on the real controller (issue 12), spoken to as a browser does: sign in
with a ServiceAccount token, read the list, the app and its resource tree, follow the live
stream, ask for a refresh. RBAC decides: a reader sees no actions and gets 403 from them."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import yaml
from browser import assert_accessible, assert_keyboard_usable
from harness import APP_NAMESPACE, ROOT, controller_instead, token_kubeconfig, web_app_files
from localcluster import free_port


class Browser:
    """A cookie-keeping HTTP client of the UI."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def call(self, method: str, path: str, body: dict | None = None, *, csrf: bool = True) -> tuple[int, dict, dict]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if csrf and self.csrf:
            headers["X-Gantry-CSRF"] = self.csrf
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read() or b"{}")

    def sign_in(self, token: str) -> str:
        status, _, body = self.call("POST", "/api/v1/login", {"token": token})
        assert status == 200, body
        self.csrf = self.call("GET", "/api/v1/session")[2]["csrf"]
        return body["user"]

    def events(self) -> Iterator[tuple[str, dict]]:
        """The live stream's events, as they come."""
        response = self.opener.open(urllib.request.Request(self.base + "/api/v1/stream"), timeout=60)
        kind = None
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                yield kind, json.loads(line[6:])
                kind = None


@pytest.fixture(scope="module")
def accounts(cluster):
    """ServiceAccounts: one may read Applications and what they deploy, one may also patch
    Applications, one reads as the first except Events; their user names and tokens (as a user
    would paste them)."""
    suffix = uuid.uuid4().hex[:6]
    names = {"reader": f"ui-reader-{suffix}", "operator": f"ui-operator-{suffix}"}
    rules = {
        "reader": [{"apiGroups": ["gantry.dev"], "resources": ["applications"], "verbs": ["get", "list", "watch"]},
                   {"apiGroups": ["", "apps"], "resources": ["pods", "pods/log", "replicasets", "deployments",
                                                             "statefulsets", "persistentvolumeclaims", "events",
                                                             "services", "configmaps"], "verbs": ["get", "list"]}],
    }
    rules["operator"] = [*rules["reader"], {"apiGroups": ["gantry.dev"], "resources": ["applications"],
                                            "verbs": ["patch", "delete"]},
                         {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    # Reads what the reader reads, except Events.
    names["eventless"] = f"ui-eventless-{suffix}"
    rules["eventless"] = [{**rule, "resources": [r for r in rule["resources"] if r != "events"]}
                          for rule in rules["reader"]]
    documents = []
    for role, name in names.items():
        documents += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": APP_NAMESPACE}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
             "rules": rules[role]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": APP_NAMESPACE}]},
        ]
    cluster.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in documents))
    yield {role: (f"system:serviceaccount:{APP_NAMESPACE}:{name}",
                  cluster.kubectl("create", "token", name, "-n", APP_NAMESPACE).stdout.strip())
           for role, name in names.items()}
    for name in names.values():
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", name, check=False)
        cluster.kubectl("delete", "serviceaccount", name, "-n", APP_NAMESPACE, check=False)


def test_nothing_is_shown_before_signing_in_and_pages_allow_only_their_own_scripts(controller):
    browser = Browser(controller.ui_url)
    status, headers, body = browser.call("GET", "/api/v1/applications")
    assert status == 401 and "sign in" in body["error"]
    with urllib.request.urlopen(controller.ui_url + "/", timeout=10) as response:
        page = response.read().decode()
        csp = response.headers["Content-Security-Policy"]
    assert '<script type="module" src="/static/ui.js">' in page
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert browser.call("POST", "/api/v1/login", {"token": "not-a-token"})[0] == 401


def test_a_reader_sees_the_app_and_its_tree_but_no_actions(controller, make_app, accounts):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    browser = Browser(controller.ui_url)
    user, token = accounts["reader"]
    assert browser.sign_in(token) == user

    items = {(i["namespace"], i["name"]): i for i in browser.call("GET", "/api/v1/applications")[2]["items"]}
    row = items[(APP_NAMESPACE, app.name)]
    assert (row["sync"], row["health"], row["revision"]) == ("Synced", "Healthy", app.repo.head)
    assert (row["commitMessage"], row["commitAuthor"]) == ("initial", "Gantry Tests")
    assert row["urls"] == ["http://shop.example.test"] and row["destination"] == app.destination

    status, _, detail = browser.call("GET", f"/api/v1/applications/{APP_NAMESPACE}/{app.name}")
    assert status == 200 and detail["can"] == {"refresh": False, "sync": False, "delete": False}
    nodes = browser.call("GET", f"/api/v1/applications/{APP_NAMESPACE}/{app.name}/tree")[2]["nodes"]
    by_id = {node["id"]: node for node in nodes}
    pods = [node for node in nodes if node["kind"] == "Pod"]
    assert pods, nodes
    chain = [pods[0]["kind"], by_id[pods[0]["parent"]]["kind"], by_id[by_id[pods[0]["parent"]]["parent"]]["kind"]]
    assert chain == ["Pod", "ReplicaSet", "Deployment"]
    assert {node["kind"] for node in nodes if node["parent"] is None} >= {"Deployment", "Service", "ConfigMap", "Ingress"}

    status, _, body = browser.call("POST", f"/api/v1/applications/{APP_NAMESPACE}/{app.name}/refresh", {})
    assert status == 403 and "may not patch" in body["error"]


def test_an_operator_refreshes_and_the_stream_shows_the_new_revision(controller, make_app, accounts):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    browser = Browser(controller.ui_url)
    browser.sign_in(accounts["operator"][1])
    path = f"/api/v1/applications/{APP_NAMESPACE}/{app.name}"
    assert browser.call("GET", path)[2]["can"]["sync"] is True

    # An action without the page's CSRF token is refused, whoever's cookie comes with it.
    assert browser.call("POST", path + "/refresh", {}, csrf=False)[0] == 403

    seen: list[dict] = []
    ready = threading.Event()
    new_head: dict[str, str] = {}

    def follow() -> None:
        for kind, data in browser.events():
            if kind == "ready":
                ready.set()
            if kind == "app" and data["name"] == app.name:
                seen.append(data)
                if new_head and data["revision"] == new_head["sha"] and data["sync"] == "Synced":
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert ready.wait(30)
    new_head["sha"] = app.push(web_app_files(replicas=2), message="two replicas")
    status, _, body = browser.call("POST", path + "/refresh", {})
    assert status == 200, body
    reader.join(60)
    assert not reader.is_alive(), f"the stream never showed {new_head['sha'][:7]} Synced: {seen[-3:]}"


# ---------------------------------------------------------------------------------------------
# In Chromium, clicking as a user does


# Browser tests ask for `page` after `make_app`: fixtures end in reverse order, so the page closes
# before the test's Applications are deleted, rather than watch them go and log the 404s.


def signed_in(page, controller, token: str) -> None:
    page.goto(controller.ui_url + "/")
    page.get_by_label("Bearer token").wait_for()
    assert_accessible(page)
    page.get_by_label("Bearer token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Applications").wait_for()


def synced_app_row(page, controller, make_app, token: str):
    """A new app, Synced, and its row in the list of a page signed in with `token`."""
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    signed_in(page, controller, token)
    row = page.locator(f'tr[data-app="{APP_NAMESPACE}/{app.name}"]')
    expect_text(row, "Synced")
    return app, row


def test_in_the_browser_a_commit_and_a_refresh_click_show_the_new_revision(controller, make_app, accounts, page):
    app, row = synced_app_row(page, controller, make_app, accounts["operator"][1])
    expect_text(row, "Healthy")
    expect_text(row, app.repo.head[:7])
    assert row.get_by_role("link", name="http://shop.example.test").count() == 1
    assert_accessible(page)
    assert_keyboard_usable(page)

    row.get_by_role("link", name=app.name).click()
    page.get_by_role("heading", name=app.name).wait_for()
    tree = page.locator("ul.tree")
    expect_text(tree.locator('[data-kind="Pod"]').first, "Healthy")
    assert tree.locator('[data-kind="ReplicaSet"]').count() >= 1
    assert_accessible(page)
    assert_keyboard_usable(page)

    # The same resources as a list, sorted by a column.
    page.get_by_role("button", name="List", exact=True).click()
    table = page.locator("#resource-table")
    kinds = table.locator("tbody tr td:first-child").all_text_contents()
    assert kinds == sorted(kinds) and {"Deployment", "ReplicaSet", "Pod", "Service"} <= set(kinds)
    table.get_by_role("button", name="Kind").click()
    kinds = table.locator("tbody tr td:first-child").all_text_contents()
    assert kinds == sorted(kinds, reverse=True)
    assert table.locator("th[aria-sort=descending]").count() == 1
    assert_accessible(page)
    page.get_by_role("button", name="Tree", exact=True).click()

    pushed = app.push(web_app_files(replicas=2), message="two replicas")
    page.get_by_role("button", name="Refresh", exact=True).click()
    expect_text(page.locator("#app-sync"), pushed[:7], timeout=60)
    expect_text(page.locator("#app-sync"), "Synced")
    expect_text(page.locator("#app-commit"), "two replicas (Gantry Tests)")


def test_in_the_browser_a_broken_commit_shows_failed_with_the_file_and_line(controller, make_app, accounts, page):
    app, row = synced_app_row(page, controller, make_app, accounts["reader"][1])
    app.push({"k8s/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata\n  a: b\n"},
             message="broken")
    app.refresh()
    expect_text(row, "Failed", timeout=60)  # live: no reload
    expect_text(row, "k8s/config.yaml:5")
    row.get_by_role("link", name=app.name).click()
    expect_text(page.locator("#app-error"), "k8s/config.yaml:5")
    # A reader: no action on the page, and the objects still run.
    assert page.get_by_role("button", name="Sync", exact=True).count() == 0
    assert page.get_by_role("button", name="Refresh", exact=True).count() == 0
    expect_text(page.locator("main"), "You may look at this app, not act on it.")


def expect_text(locator, text: str, *, timeout: float = 20) -> None:
    """Until the element holds `text` (the page updates itself: no reload)."""
    deadline = time.monotonic() + timeout
    while True:
        content = locator.text_content(timeout=timeout * 1000) or ""
        if text in content:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {content!r} after {timeout:.0f}s")
        time.sleep(0.2)


SECRET_VALUE = "ui-never-shows-this-5e1d"


def with_secret(value: str) -> dict[str, str]:
    files = web_app_files()
    files["k8s/secret.yaml"] = yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                                               "type": "Opaque", "stringData": {"password": value}})
    files["k8s/kustomization.yaml"] = yaml.safe_dump(
        {"resources": [*yaml.safe_load(files["k8s/kustomization.yaml"])["resources"], "secret.yaml"]})
    return files


def test_resource_view_and_diff_come_from_the_server_with_secret_values_masked(controller, make_app, accounts):
    app = make_app(with_secret(SECRET_VALUE))
    app.apply(automated=False)
    browser = Browser(controller.ui_url)
    browser.sign_in(accounts["operator"][1])
    path = f"/api/v1/applications/{APP_NAMESPACE}/{app.name}"
    status, _, diff = browser.call("GET", path + "/diff")
    assert status == 200 and diff["revision"] == app.repo.head, diff
    actions = {(r["kind"], r["name"]): r["action"] for r in diff["resources"]}
    assert actions[("Secret", "db")] == "create" and actions[("Deployment", "web")] == "create"
    assert SECRET_VALUE not in json.dumps(diff)

    status, _, one = browser.call("GET", path + f"/diff?kind=Secret&namespace={app.destination}&name=db")
    assert status == 200 and [r["action"] for r in one["resources"]] == ["create"], one
    assert one["desired"]["stringData"] == {"password": "++++++++"}
    assert one["desired"]["metadata"]["namespace"] == app.destination
    assert SECRET_VALUE not in json.dumps(one)

    assert browser.call("POST", path + "/sync", {})[0] == 200
    app.wait_synced(app.repo.head)
    status, _, resource = browser.call("GET", path + f"/resource?kind=Secret&namespace={app.destination}&name=db")
    assert status == 200, resource
    assert resource["live"]["data"] == {"password": "++++++++"}
    assert SECRET_VALUE not in json.dumps(resource)
    status, _, resource = browser.call("GET", path + f"/resource?group=apps&kind=Deployment&namespace={app.destination}"
                                               f"&name=web")
    assert status == 200 and resource["live"]["spec"]["replicas"] == 1 and "managedFields" not in resource["live"]["metadata"]
    # Only the app's own objects: not any the user could name.
    assert browser.call("GET", path + "/resource?kind=Secret&namespace=kube-system&name=x")[0] == 404


def test_rollback_and_delete_as_an_operator_confirmed_by_the_apps_name(controller, make_app, accounts):
    app = make_app()
    app.apply(automated=False)
    browser = Browser(controller.ui_url)
    browser.sign_in(accounts["operator"][1])
    path = f"/api/v1/applications/{APP_NAMESPACE}/{app.name}"
    first = app.repo.head
    assert browser.call("POST", path + "/sync", {})[0] == 200
    app.wait_synced(first)
    second = app.push(web_app_files(replicas=2), message="two replicas")
    assert browser.call("POST", path + "/sync", {"revision": second})[0] == 200
    app.wait(lambda s: (s.get("sync") or {}).get("revision") == second and len(s.get("history") or []) == 2,
             "synced at the second commit")
    history = browser.call("GET", path)[2]["history"]
    first_id = next(entry["id"] for entry in history if entry["revision"] == first)
    operator = accounts["operator"][0]
    assert [(e["initiatedBy"], e["revisionMetadata"]["message"]) for e in history] == [
        ({"username": operator}, "initial"), ({"username": operator}, "two replicas")]
    status, _, body = browser.call("POST", path + "/rollback", {"id": first_id})
    assert status == 200, body
    app.wait(lambda s: ((s.get("operationState") or {}).get("syncResult") or {}).get("revision") == first,
             "rolled back to the first commit")
    assert app.object("deployment", "web")["spec"]["replicas"] == 1

    assert browser.call("POST", path + "/delete", {"confirm": "not-its-name"})[0] == 400
    assert app.get()["metadata"]["name"] == app.name
    status, _, body = browser.call("POST", path + "/delete", {"confirm": app.name, "cascade": True})
    assert status == 200 and body == {"deleted": app.name, "cascade": True}
    deadline = time.monotonic() + 60
    while app.object("deployment", "web") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert app.object("deployment", "web") is None, "cascade: the app's resources go with it"


def test_in_the_browser_sync_a_manual_app_look_at_its_secret_and_delete_it(controller, make_app, accounts, page):
    app = make_app(with_secret(SECRET_VALUE))
    app.apply(automated=False)
    app.wait_sync_status("OutOfSync")
    signed_in(page, controller, accounts["operator"][1])
    page.goto(f"{controller.ui_url}/apps/{APP_NAMESPACE}/{app.name}")
    expect_text(page.locator("#app-sync"), "OutOfSync")
    page.get_by_role("button", name="Diff (dry run)").click()
    expect_text(page.locator("#plan-list"), "create Secret")
    expect_text(page.locator("#plan-list"), "create Deployment")
    assert SECRET_VALUE not in page.content()
    assert app.object("secret", "db") is None, "a dry run writes nothing"
    # Not deployed yet: the desired manifest is what the controller would apply, beside no live one.
    page.locator('button.node[data-kind="Deployment"]').click()
    desired = page.locator("#resource-desired")
    expect_text(desired, '"image": "nginx:1.27"')
    expect_text(desired, f'"namespace": "{app.destination}"')  # prepared: the destination filled in
    expect_text(desired, f'"gantry.dev/tracking-id": "{APP_NAMESPACE}/{app.name}:apps/Deployment:')
    expect_text(page.locator("#resource-diff"), "+      - image: nginx:1.27")
    expect_text(page.locator("#resource-live"), "(not in the cluster)")
    page.get_by_role("button", name="Sync", exact=True).click()
    expect_text(page.locator("#app-sync"), "Synced", timeout=60)

    page.locator('button.node[data-kind="Secret"]').click()
    expect_text(page.locator("#resource-live"), '"password": "++++++++"')
    expect_text(page.locator("#resource-desired"), '"password": "++++++++"')
    expect_text(page.locator("#resource-diff"), "In sync with git.")
    assert SECRET_VALUE not in page.content()
    assert_accessible(page)
    assert_keyboard_usable(page)
    page.locator('button.node[data-kind="Pod"]').first.click()
    expect_text(page.locator("#resource-desired"), "Not from git: made by a controller.")

    page.get_by_role("button", name="Delete…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Application name").fill("not-its-name")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect_text(dialog, f"Type {app.name} to confirm.")
    assert app.get()["metadata"]["name"] == app.name
    dialog.get_by_label("Application name").fill(app.name)
    dialog.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("heading", name="Applications").wait_for()
    deadline = time.monotonic() + 60
    while app.object("deployment", "web") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert app.object("deployment", "web") is None, "cascade: its resources went with it"


def test_anonymous_read_shows_the_list_without_signing_in_and_allows_no_action(cluster, controller, make_app, tmp_path):
    app = make_app()
    with controller_instead(cluster, controller, tmp_path, "--ui-anonymous-read") as instead:
        app.apply()
        app.wait_synced(app.repo.head)
        browser = Browser(instead.ui_url)
        session = browser.call("GET", "/api/v1/session")[2]
        assert session["user"] == "anonymous" and session["readOnly"] is True
        browser.csrf = session["csrf"]
        names = [item["name"] for item in browser.call("GET", "/api/v1/applications")[2]["items"]]
        assert app.name in names
        path = f"/api/v1/applications/{APP_NAMESPACE}/{app.name}"
        assert browser.call("GET", path)[2]["can"] == {"refresh": False, "sync": False, "delete": False}
        assert browser.call("POST", path + "/refresh", {})[0] == 403
        assert "gantry.dev/refresh" not in (app.get()["metadata"].get("annotations") or {})


def test_in_the_browser_a_large_app_folds_its_resources_by_kind(controller, make_app, accounts, page):
    files = web_app_files()
    files["k8s/many.yaml"] = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"setting-{i:03d}"}, "data": {"n": str(i)}}
        for i in range(150)]})
    files["k8s/kustomization.yaml"] = yaml.safe_dump(
        {"resources": [*yaml.safe_load(files["k8s/kustomization.yaml"])["resources"], "many.yaml"]})
    app = make_app(files)
    app.apply()
    app.wait_synced(app.repo.head, timeout=120)
    signed_in(page, controller, accounts["reader"][1])
    page.goto(f"{controller.ui_url}/apps/{APP_NAMESPACE}/{app.name}")
    group = page.locator('details[data-group="ConfigMap"]')
    expect_text(group.locator("summary"), "ConfigMap (151)")
    assert group.locator("button.node").count() == 0, "a folded group is not built"
    group.locator("summary").click()
    group.locator('button.node[data-name="setting-149"]').wait_for()
    assert group.locator("button.node").count() == 151
    assert page.locator('details[data-group="Deployment"] button.node[data-kind="Pod"]').count() == 1, "small groups start open"
    assert_accessible(page)


def test_gantry_ui_serves_as_the_kubeconfigs_user_or_says_why_it_cannot(cluster, controller, make_app, tmp_path):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    port = free_port()
    ui = gantry_ui(cluster, port)
    try:
        browser = Browser(f"http://127.0.0.1:{port}")
        session = browser.call("GET", "/api/v1/session")[2]
        assert session["local"] is True and session["user"] and not session["readOnly"]
        assert app.name in [item["name"] for item in browser.call("GET", "/api/v1/applications")[2]["items"]]
        # Another site's name pointed at 127.0.0.1 gets nothing.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/session", headers={"Host": f"evil.test:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    finally:
        ui.terminate()
        ui.wait(10)

    broken = tmp_path / "kubeconfig"
    broken.write_text(re.sub(r'"server": "https://127\.0\.0\.1:\d+"', '"server": "https://127.0.0.1:1"',
                             cluster.kubeconfig.read_text()))
    failed = subprocess.run([sys.executable, "-m", "controller.cli", "--kubeconfig", str(broken), "ui", "--port", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2
    assert failed.stderr.strip() == "gantry: cannot reach the API server at https://127.0.0.1:1: Connection refused"


def test_in_the_browser_a_pods_log_is_shown(controller, make_app, accounts, page):
    files = web_app_files()
    deployment = yaml.safe_load(files["k8s/deployment.yaml"])
    deployment["spec"]["template"]["metadata"]["annotations"] = {"gantry.dev/test-log": "listening on :80\nready"}
    files["k8s/deployment.yaml"] = yaml.safe_dump(deployment)
    app = make_app(files)
    app.apply()
    app.wait_synced(app.repo.head)
    signed_in(page, controller, accounts["reader"][1])
    page.goto(f"{controller.ui_url}/apps/{APP_NAMESPACE}/{app.name}")
    page.locator('button.node[data-kind="Pod"]').first.click()
    log = page.locator("#log-output")
    expect_text(log, "listening on :80")
    expect_text(log, "container=web")
    assert page.locator("#log-container").input_value() == "web"
    assert "null" not in page.locator("main").inner_text().split(), "an absent part of the page shows as null"
    page.locator("#log-tail").fill("1")
    page.get_by_role("button", name="Show log").click()
    deadline = time.monotonic() + 20
    while len((log.text_content() or "").strip().splitlines()) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len((log.text_content() or "").strip().splitlines()) == 1, "only the last line"
    assert "listening on :80" not in (log.text_content() or "")
    assert_accessible(page)


def gantry_ui(cluster, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "controller.cli", "--kubeconfig", str(cluster.kubeconfig), "-n",
                                APP_NAMESPACE, "ui", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith(f"Gantry UI: http://127.0.0.1:{port}/")
    return process


def test_in_the_browser_the_list_forgets_an_app_deleted_while_its_stream_was_down(cluster, make_app, page, page_errors):
    """The stream reconnects by itself (a proxy's timeout, a restart of `gantry ui`): what it sends
    again is the whole list, and an app it no longer sends is gone."""
    app = make_app()
    app.apply()
    port = free_port()
    ui = gantry_ui(cluster, port)
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        row = page.locator(f'tr[data-app="{APP_NAMESPACE}/{app.name}"]')
        row.wait_for()
        page_errors.allow(r"api/v1/stream|ERR_CONNECTION_REFUSED")  # the cut stream, as the browser reports it
        ui.terminate()
        ui.wait(10)
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--wait=true")
        ui = gantry_ui(cluster, port)
        deadline = time.monotonic() + 30
        while row.count() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert row.count() == 0, "an app deleted while the stream was down stayed in the list"
    finally:
        ui.terminate()
        ui.wait(10)


def warning_event(namespace: str, kind: str, api_version: str, name: str, reason: str, message: str) -> str:
    """A Warning Event about an object, as a controller would post one, happening now."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "involvedObject": {"apiVersion": api_version, "kind": kind, "name": name, "namespace": namespace},
        "reason": reason, "message": message, "type": "Warning", "count": 1, "firstTimestamp": now,
        "lastTimestamp": now, "source": {"component": "gantry-e2e"}})


def test_in_the_browser_the_events_timeline_shows_the_app_and_its_resources_newest_first(cluster, controller, make_app,
                                                                                        accounts, page):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    signed_in(page, controller, accounts["reader"][1])
    page.goto(f"{controller.ui_url}/apps/{APP_NAMESPACE}/{app.name}")
    table = page.locator("#events-table")
    # What the cluster's own controllers said about the app's Deployment, its ReplicaSet and Pod.
    table.locator('tr[data-object="Deployment/web"]', has_text="ScalingReplicaSet").first.wait_for()
    table.locator('tr[data-object^="ReplicaSet/web-"]', has_text="SuccessfulCreate").first.wait_for()
    table.locator('tr[data-object^="Pod/web-"]').first.wait_for()
    expect_text(table.locator(f'tr[data-object="Application/{app.name}"]').first, "Normal")
    times = [time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S") for t in table.locator("time").evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('datetime'))")]
    assert times == sorted(times, reverse=True), "newest first"
    assert_accessible(page)
    assert_keyboard_usable(page)

    # A Warning about the Deployment and one about an object of no app: the first shows at the
    # top, with its type as a word, on a click of Refresh events (the page is not reloaded).
    page.evaluate("() => { window.notReloaded = true; }")
    cluster.kubectl("apply", "-f", "-", stdin=warning_event(app.destination, "Deployment", "apps/v1", "web",
                                                            "ProbeWarning", "readiness probe failed: HTTP 503"))
    cluster.kubectl("apply", "-f", "-", stdin=warning_event(app.destination, "ConfigMap", "v1", "not-of-this-app",
                                                            "NotMine", "an object of no app"))
    page.get_by_role("button", name="Refresh events").click()
    first = table.locator("tbody tr").first
    expect_text(first, "ProbeWarning")
    assert first.get_attribute("data-object") == "Deployment/web"
    expect_text(first.locator("td").nth(1), "Warning")
    expect_text(first, "readiness probe failed: HTTP 503")
    assert table.locator("tr", has_text="NotMine").count() == 0
    assert page.evaluate("() => window.notReloaded === true")


def test_the_events_timeline_leaves_out_what_the_user_may_not_list(controller, make_app, accounts):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    path = f"/api/v1/applications/{APP_NAMESPACE}/{app.name}/events"
    reader = Browser(controller.ui_url)
    reader.sign_in(accounts["reader"][1])
    status, _, shown = reader.call("GET", path)
    assert status == 200 and shown["items"] and not shown["hidden"], shown
    assert {e["kind"] for e in shown["items"]} >= {"Deployment", "ReplicaSet"}
    assert reader.call("GET", path + "?limit=1")[2]["items"] == shown["items"][:1]

    eventless = Browser(controller.ui_url)
    eventless.sign_in(accounts["eventless"][1])
    status, _, hidden = eventless.call("GET", path)
    assert status == 200 and hidden["items"] == [] and hidden["total"] == 0, hidden
    assert sorted(hidden["hidden"]) == sorted([f"Events in {app.destination}", f"Events in {APP_NAMESPACE}"])


# ---------------------------------------------------------------------------------------------
# gantry app diff asks the controller


def gantry_cli(cluster, tmp_path, *args: str, kubeconfig=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m controller *args --kubeconfig …` as a user runs it; whatever happens is said
    without a traceback."""
    environ = {**os.environ, "PATH": f"{cluster.bin_dir}:{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path / "xdg"),
               **(env or {})}
    for name in ("KUBECONFIG", "GANTRY_TOKEN", "GANTRY_SERVER"):
        if name not in (env or {}):
            environ.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "controller", *args, "--kubeconfig", str(kubeconfig or cluster.kubeconfig)],
                            capture_output=True, text=True, cwd=ROOT, env=environ, timeout=300, stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def reachable_address() -> str:
    """This machine's address on its network, which the API server can dial (never loopback: the
    API server proxies only to the IP of a Pod, and no Endpoints may name 127.0.0.0/8)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("198.51.100.1", 9))  # a documentation address: nothing is sent, a route is chosen
        address = probe.getsockname()[0]
    except OSError as error:
        pytest.fail(f"the service-proxy test needs a network address besides loopback: {error}")
    finally:
        probe.close()
    assert not address.startswith("127."), address
    return address


def serve_through_a_service(cluster, namespace: str, service: str, address: str, port: int) -> None:
    """A Service whose one endpoint is the controller's UI at address:port, outside the cluster,
    as deploy/'s Service leads to the controller's pod. The API server proxies only to Pods' IPs:
    a Pod on a fake node (kwok leaves its test-fault 'proxy-target' alone) is given the address."""
    pod = f"{service}-0"
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": namespace, "labels": {"gantry.dev/test-fault": "proxy-target"}},
        "spec": {"nodeName": "kwok-node-0", "containers": [{"name": "ui", "image": "gantry:latest"}]}}))
    cluster.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}}))
    documents = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": namespace},
         "spec": {"ports": [{"name": "ui", "port": 8082, "targetPort": port}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": service, "namespace": namespace},
         "subsets": [{"addresses": [{"ip": address, "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}}],
                      "ports": [{"name": "ui", "port": port}]}]},
    ]
    cluster.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in documents))


def may_proxy(cluster, namespace: str, service: str, account: str, role: str) -> None:
    """What deploy/ui-proxy grants: GETs through the API server's proxy to the Service's port ui."""
    cluster.kubectl("create", "role", role, "-n", namespace, "--verb=get", "--resource=services/proxy",
                    f"--resource-name={service}:ui")
    cluster.kubectl("create", "rolebinding", role, "-n", namespace, f"--role={role}",
                    f"--serviceaccount={account}")


def test_gantry_app_diff_asks_the_controller_through_the_api_servers_service_proxy(cluster, controller, make_app,
                                                                                  accounts, tmp_path):
    app = make_app(with_secret(SECRET_VALUE))
    namespace = f"gantry-proxy-{uuid.uuid4().hex[:6]}"
    service = "gantry-ui"
    address, port = reachable_address(), free_port()
    cluster.kubectl("create", "namespace", namespace)
    try:
        with controller_instead(cluster, controller, tmp_path, "--ui-address", f"{address}:{port}"):
            app.apply(automated=False)
            app.wait_sync_status("OutOfSync")
            serve_through_a_service(cluster, namespace, service, address, port)
            reader = accounts["reader"][0].rpartition(":")[2]
            reader_config = token_kubeconfig(cluster, APP_NAMESPACE, reader, tmp_path / "reader.kubeconfig")
            proxy = ("--controller-namespace", namespace, "--controller-service", service)

            # The API server's own refusal first: the reader may not use its proxy yet.
            refused = gantry_cli(cluster, tmp_path, "app", "diff", app.name, *proxy, kubeconfig=reader_config)
            assert refused.returncode == 2 and refused.stdout == "" and refused.stderr.count("\n") == 1, refused
            assert refused.stderr.startswith("gantry: forbidden: ") and "services/proxy" in refused.stderr

            may_proxy(cluster, namespace, service, f"{APP_NAMESPACE}:{reader}", "reader-proxy")
            asked = gantry_cli(cluster, tmp_path, "app", "diff", app.name, *proxy, kubeconfig=reader_config)
            assert asked.returncode == 1, asked  # differences, as diff(1) says
            assert f"===== /Secret {app.destination}/db ===== (would be created)" in asked.stdout
            assert "password: ++++++++" in asked.stdout and SECRET_VALUE not in asked.stdout + asked.stderr
            # The same text as a diff computed here, with kustomize, as the admin.
            local = gantry_cli(cluster, tmp_path, "app", "diff", app.name, "--local")
            assert (local.returncode, local.stdout) == (1, asked.stdout)
            structured = json.loads(gantry_cli(cluster, tmp_path, "app", "diff", app.name, *proxy, "-o", "json",
                                               kubeconfig=reader_config).stdout)
            assert structured["revision"] == app.repo.head and structured["inSync"] is False
            assert ("create", "Deployment", "web") in {(r["action"], r["kind"], r["name"]) for r in structured["resources"]}

            # Who may use the proxy but not read the app gets the controller's refusal, as themselves.
            stranger = f"stranger-{uuid.uuid4().hex[:6]}"
            cluster.kubectl("create", "serviceaccount", stranger, "-n", namespace)
            may_proxy(cluster, namespace, service, f"{namespace}:{stranger}", "stranger-proxy")
            stranger_config = token_kubeconfig(cluster, namespace, stranger, tmp_path / "stranger.kubeconfig")
            forbidden = gantry_cli(cluster, tmp_path, "app", "diff", app.name, *proxy, kubeconfig=stranger_config)
            assert forbidden.returncode == 2 and forbidden.stdout == "", forbidden
            assert forbidden.stderr.strip() == (
                f'gantry: forbidden: applications.gantry.dev "{app.name}" is forbidden: User '
                f'"system:serviceaccount:{namespace}:{stranger}" cannot get resource "applications" in API group '
                f'"gantry.dev" in the namespace "{APP_NAMESPACE}"')

            # The admin's kubeconfig has client certificates, no token: said in one line, nothing rendered.
            certificates = gantry_cli(cluster, tmp_path, "app", "diff", app.name, *proxy)
            assert certificates.returncode == 2 and certificates.stderr.count("\n") == 1
            assert "no bearer token" in certificates.stderr and "--local" in certificates.stderr
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_gantry_app_diff_at_the_uis_address_with_a_token(cluster, controller, make_app, accounts, tmp_path):
    app = make_app(with_secret(SECRET_VALUE))
    app.apply()
    app.wait_synced(app.repo.head)
    server = ("--server", controller.ui_url)
    in_sync = gantry_cli(cluster, tmp_path, "app", "diff", app.name, *server, env={"GANTRY_TOKEN": accounts["reader"][1]})
    assert (in_sync.returncode, in_sync.stdout, in_sync.stderr) == (0, "", ""), in_sync

    pushed = app.push(with_secret("rotated-" + SECRET_VALUE), message="rotate")
    changed = gantry_cli(cluster, tmp_path, "app", "diff", app.name, *server, "--revision", pushed,
                         env={"GANTRY_TOKEN": accounts["reader"][1]})
    assert changed.returncode == 1, changed
    assert "(only Secret values differ; they are never shown)" in changed.stdout
    assert SECRET_VALUE not in changed.stdout + changed.stderr

    wrong = gantry_cli(cluster, tmp_path, "app", "diff", app.name, *server, "--token", "not-a-token")
    assert wrong.returncode == 2 and wrong.stderr.startswith(f"gantry: the controller at {controller.ui_url} did not "
                                                             "accept the token"), wrong
    nobody = gantry_cli(cluster, tmp_path, "app", "diff", app.name, "--server", "http://127.0.0.1:9",
                        env={"GANTRY_TOKEN": accounts["reader"][1]})
    assert nobody.returncode == 2 and nobody.stderr.count("\n") == 1
    assert nobody.stderr.startswith("gantry: cannot reach the controller's web UI at http://127.0.0.1:9: ")
