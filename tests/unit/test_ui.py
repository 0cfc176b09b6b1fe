"""The web UI's pieces that need no cluster: the resource tree, the app summary, permissions."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from controller.application import app_summary
from controller.ui import DryRunRecorder, Session, UiServer, build_tree, diff_answer, timeline


def obj(api_version: str, kind: str, name: str, uid: str, *, owner: str | None = None, **extra) -> dict:
    metadata = {"name": name, "namespace": "shop", "uid": uid}
    if owner:
        metadata["ownerReferences"] = [{"uid": owner, "controller": True}]
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **extra}


APP = {
    "metadata": {"namespace": "gantry", "name": "shop"},
    "spec": {"source": {"repoURL": "https://deployer:s3cret@git.example/shop.git", "path": "k8s"},
             "destination": {"namespace": "shop"}, "syncPolicy": {"automated": {}}},
    "status": {
        "sync": {"status": "Synced", "revision": "0123456789abcdef0123456789abcdef01234567"},
        "health": {"status": "Degraded", "message": "Deployment web: 0/1 ready"},
        "summary": {"externalURLs": ["http://shop.example.test/"]},
        "operationState": {"phase": "Succeeded", "finishedAt": "2026-12-03T06:00:00Z"},
        "message": "synced",
        "resources": [
            {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "web", "status": "Synced",
             "health": {"status": "Degraded", "message": "0/1 ready"}},
            {"group": "apps", "kind": "StatefulSet", "namespace": "shop", "name": "db", "status": "Synced",
             "health": {"status": "Healthy"}},
            {"group": "", "kind": "Service", "namespace": "shop", "name": "web", "status": "OutOfSync"},
        ],
    },
}

NOT_READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
             "containerStatuses": [{"name": "web", "ready": False, "started": True, "state": {"running": {}}}]}


def test_the_tree_hangs_what_controllers_made_below_the_apps_resources():
    lives = [
        obj("apps/v1", "Deployment", "web", "d1"),
        obj("apps/v1", "ReplicaSet", "web-7d9", "r1", owner="d1"),
        obj("v1", "Pod", "web-7d9-abc", "p1", owner="r1", spec={"containers": [{"name": "web"}]}, status=NOT_READY),
        obj("apps/v1", "StatefulSet", "db", "s1"),
        obj("v1", "Pod", "db-0", "p2", owner="s1",
            spec={"containers": [{"name": "db"}], "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]},
            status={"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
        obj("v1", "PersistentVolumeClaim", "data-db-0", "c1", status={"phase": "Bound"}),
        obj("v1", "Pod", "someone-elses", "p3", owner="other"),
    ]
    nodes = {node["id"]: node for node in build_tree(APP, lives)}
    parents = {node["name"]: nodes[node["parent"]]["name"] if node["parent"] else None for node in nodes.values()}
    assert parents == {"web": None, "db": "db", "web-7d9": "web", "web-7d9-abc": "web-7d9", "db-0": "db",
                       "data-db-0": "db-0"} | {"db": None}
    assert [n["kind"] for n in nodes.values() if n["name"] == "web"] == ["Deployment", "Service"]
    pod = nodes["/Pod/shop/web-7d9-abc"]
    assert pod["health"] == "Progressing" and pod["message"], pod
    assert nodes["/PersistentVolumeClaim/shop/data-db-0"]["health"] == "Healthy"
    assert nodes["apps/Deployment/shop/web"]["message"] == "0/1 ready", "the status's health message is on the node"
    assert "someone-elses" not in parents


def test_the_summary_says_what_the_list_shows_and_no_credentials():
    summary = app_summary(APP)
    assert summary["repo"] == "https://git.example/shop.git"
    assert (summary["sync"], summary["health"], summary["shortRevision"]) == ("Synced", "Degraded", "0123456")
    assert summary["urls"] == ["http://shop.example.test/"] and summary["automated"] is True
    assert summary["lastSync"] == "2026-12-03T06:00:00Z" and summary["destination"] == "shop"
    assert "s3cret" not in repr(summary)
    assert summary["chart"] == ""
    chart_app = {**APP, "spec": {**APP["spec"], "source": {"repoURL": "https://charts.example", "chart": "shop"}}}
    assert app_summary(chart_app)["chart"] == "shop"


class Reviews:
    """Answers SelfSubjectAccessReviews as an API server would for a user allowed `allowed`."""

    def __init__(self, allowed: set[tuple[str, str]]):
        self.allowed, self.asked = allowed, []

    def request(self, method, path, body=None, **_):
        attributes = body["spec"]["resourceAttributes"]
        self.asked.append((attributes["verb"], attributes["namespace"]))
        return {"status": {"allowed": (attributes["verb"], attributes["namespace"]) in self.allowed}}


def test_permissions_are_asked_as_the_user_and_remembered():
    client = Reviews({("list", "team-a"), ("patch", "team-a")})
    session = Session(client, "alice")
    assert session.can("patch", "team-a") and session.can("patch", "team-a")
    assert not session.can("patch", "team-b")
    assert client.asked == [("patch", "team-a"), ("patch", "team-b")]


def test_a_read_only_session_may_only_read():
    client = Reviews({("list", "team-a"), ("patch", "team-a")})
    session = Session(client, "anonymous", read_only=True)
    assert session.can("list", "team-a") and not session.can("patch", "team-a")
    assert client.asked == [("list", "team-a")]


def test_the_local_ui_answers_only_to_loopback_names():
    """DNS rebinding: another site's name pointed at 127.0.0.1 must not reach `gantry ui`."""
    class Client:
        def request(self, *args, **kwargs):
            raise AssertionError("no API request expected")

        def as_user(self, token):
            raise AssertionError("no sign-in expected")

    server = UiServer(Client(), "127.0.0.1:0", local=True)

    async def ok(_request):
        return web.Response(text="ok")

    async def answer(host: str) -> int:
        request = make_mocked_request("GET", "/api/v1/session", headers={"Host": host})
        return (await server._headers(request, ok)).status

    assert asyncio.run(answer("127.0.0.1:8090")) == 200
    assert asyncio.run(answer("localhost:8090")) == 200
    assert asyncio.run(answer("evil.example:8090")) == 403


def test_sessions_past_their_time_or_beyond_the_cap_are_forgotten(monkeypatch):
    class Client:
        def as_user(self, token):
            raise AssertionError("no sign-in expected")

    server = UiServer(Client(), "127.0.0.1:0")
    server.sessions = {"old": Session(Client(), "a", expires=0.0), "live": Session(Client(), "b")}
    server._forget_expired()
    assert list(server.sessions) == ["live"]
    monkeypatch.setattr("controller.ui.MAX_SESSIONS", 2)
    server.sessions["newer"] = Session(Client(), "c")
    server._forget_expired()
    assert list(server.sessions) == ["newer"], "the oldest go first, leaving room for one more"


def test_the_list_waits_for_the_first_list_of_applications(monkeypatch):
    """Right after start the feed holds nothing yet: the answer waits for its first list instead
    of saying there are no apps, and says why when that list does not come."""
    class Client:
        def as_user(self, token):
            raise AssertionError("no sign-in expected")

    server = UiServer(Client(), "127.0.0.1:0")
    app = {"metadata": {"namespace": "shop", "name": "web"}}

    async def listed_later() -> list:
        asyncio.get_running_loop().call_later(0.05, lambda: server.feed._listed(None, [app], {None: server.feed.ready}))
        return await server._listed()

    assert asyncio.run(listed_later()) == [app]
    server.feed.ready.clear()
    monkeypatch.setattr("controller.ui.FEED_READY_TIMEOUT", 0.01)
    try:
        asyncio.run(server._listed())
    except web.HTTPException as error:
        assert error.status == 503 and "not been read" in error.text
    else:
        raise AssertionError("an unlisted feed must not answer")


def event(kind: str, name: str, reason: str, when: str, *, namespace: str = "shop", type_: str = "Normal",
          field: str = "lastTimestamp") -> dict:
    return {"involvedObject": {"kind": kind, "namespace": namespace, "name": name}, "reason": reason,
            "type": type_, "message": f"{reason} of {name}", field: when}


def test_the_timeline_holds_the_apps_and_its_trees_events_newest_first_and_bounded():
    lives = [obj("apps/v1", "Deployment", "web", "d1"), obj("apps/v1", "ReplicaSet", "web-7d9", "r1", owner="d1"),
             obj("v1", "Pod", "web-7d9-abc", "p1", owner="r1", spec={"containers": [{"name": "web"}]})]
    nodes = build_tree(APP, lives)
    events = [
        event("Deployment", "web", "ScalingReplicaSet", "2026-12-03T06:00:01Z"),
        # eventTime has microseconds: as strings, ...:01Z would sort after ...:01.5Z
        event("Pod", "web-7d9-abc", "Unhealthy", "2026-12-03T06:00:01.500000Z", type_="Warning", field="eventTime"),
        event("Application", "shop", "Synced", "2026-12-03T06:00:00Z", namespace="gantry"),
        event("ReplicaSet", "web-7d9", "SuccessfulCreate", "2026-12-03T05:59:59Z"),
        event("Pod", "someone-elses", "Pulled", "2026-12-03T06:00:05Z"),  # not of this app
        event("Application", "other", "Synced", "2026-12-03T06:00:06Z", namespace="gantry"),
    ]
    shown = timeline(APP, nodes, events)
    assert [(e["kind"], e["reason"], e["type"]) for e in shown["items"]] == [
        ("Pod", "Unhealthy", "Warning"), ("Deployment", "ScalingReplicaSet", "Normal"),
        ("Application", "Synced", "Normal"), ("ReplicaSet", "SuccessfulCreate", "Normal")]
    assert shown["total"] == 4 and shown["items"][0]["time"] == "2026-12-03T06:00:01.500000Z"
    newest = timeline(APP, nodes, events, limit=2)
    assert [e["reason"] for e in newest["items"]] == ["Unhealthy", "ScalingReplicaSet"] and newest["total"] == 4


def test_the_diff_answer_of_one_object_carries_its_desired_manifest_with_secret_values_masked():
    from controller.cli import DiffEntry, DiffReport
    from controller.model import ApplyFailure, ObjectRef

    secret = ObjectRef("", "Secret", "shop", "db")
    deployment = ObjectRef("apps", "Deployment", "shop", "web")
    report = DiffReport("abc123", [DiffEntry(secret, "update", "-a\n+b\n")],
                        [ApplyFailure(deployment, "spec.replicas: Invalid value")])
    desired = {secret: {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"},
                        "stringData": {"password": "hunter2"}, "data": {"token": "aHVudGVyMg=="}},
               deployment: {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}}
    one = diff_answer(report, desired, secret)
    assert one["desired"]["stringData"] == {"password": "++++++++"} and one["desired"]["data"] == {"token": "++++++++"}
    assert "hunter2" not in repr(one) and "aHVudGVyMg" not in repr(one)
    assert [r["action"] for r in one["resources"]] == ["update"] and one["failures"] == []
    other = diff_answer(report, desired, deployment)
    assert other["resources"] == [] and other["failures"] == [
        {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "web",
         "message": "spec.replicas: Invalid value"}]
    assert diff_answer(report, desired, ObjectRef("", "Pod", "shop", "web-1"))["desired"] is None
    whole = diff_answer(report, desired)
    assert "desired" not in whole and len(whole["resources"]) == 1 and len(whole["failures"]) == 1


def test_the_recorder_keeps_what_was_sent_to_a_dry_run_and_passes_every_call_on():
    from controller.model import ObjectRef

    class Client:
        host = "https://api"

        def __init__(self):
            self.calls = []

        def request(self, method, path, **kwargs):
            self.calls.append((method, path))
            return {"answered": path}

    client = Client()
    recorder = DryRunRecorder(client)
    target = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "shop"}}
    assert recorder.request("PATCH", "/api/v1/namespaces/shop/configmaps/a", query={"dryRun": "All"}, body=target) \
        == {"answered": "/api/v1/namespaces/shop/configmaps/a"}
    recorder.request("PATCH", "/x", query={"fieldManager": "gantry"}, body={"kind": "ConfigMap", "metadata": {"name": "b"}})
    recorder.request("GET", "/y")
    assert recorder.sent == {ObjectRef("", "ConfigMap", "shop", "a"): target}
    assert recorder.host == "https://api" and len(client.calls) == 3


class Reviewer:
    """An API server's answers to one token's SelfSubjectReview."""

    def __init__(self, users: dict[str, str]):
        self.users, self.asked = users, []

    def as_user(self, token):
        reviewer = self

        class AsUser:
            def request(self, method, path, body=None, **_):
                from controller.kube import KubeApiError
                reviewer.asked.append(path)
                if token not in reviewer.users:
                    raise KubeApiError(401, "Unauthorized", "")
                return {"status": {"userInfo": {"username": reviewer.users[token]}}}

        return AsUser()


def test_a_token_in_the_header_signs_in_that_one_request_and_needs_no_csrf_token():
    from controller.ui import TOKEN_HEADER

    reviewer = Reviewer({"good-token": "alice"})
    server = UiServer(reviewer, "127.0.0.1:0")

    async def who(request):
        session = server._require_action(request)
        return web.json_response({"user": session.user, "stored": len(server.sessions)})

    async def answer(headers: dict) -> tuple[int, str]:
        request = make_mocked_request("POST", "/api/v1/x", headers={"Host": "ui:8082", **headers})
        response = await server._headers(request, who)
        return response.status, getattr(response, "text", "")

    status, text = asyncio.run(answer({TOKEN_HEADER: "Bearer good-token"}))
    assert status == 200 and '"user": "alice"' in text and '"stored": 0' in text
    status, text = asyncio.run(answer({TOKEN_HEADER: "Bearer bad-token"}))
    assert status == 401 and "did not accept the token" in text
    assert asyncio.run(answer({TOKEN_HEADER: "good-token"}))[0] == 401, "not 'Bearer <token>'"
    assert asyncio.run(answer({}))[0] == 401, "no session, no header: sign in first"
    assert reviewer.asked == ["/apis/authentication.k8s.io/v1/selfsubjectreviews"] * 2


# gantry app diff: the UI's API as the CLI's transport


def test_gantry_app_diff_asks_deploys_service_port_ui_through_the_proxy_by_default():
    from controller.cli import CONTROLLER_NAMESPACE, CONTROLLER_SERVICE, controller_diff_path

    assert controller_diff_path(CONTROLLER_NAMESPACE, CONTROLLER_SERVICE, "gantry", "shop") == (
        "/api/v1/namespaces/gantry/services/gantry-controller:ui/proxy/api/v1/applications/gantry/shop/diff")
    assert controller_diff_path("ops", "gantry", "team-a", "web").startswith(
        "/api/v1/namespaces/ops/services/gantry:ui/proxy/"), "a name alone means its port ui"


def test_the_controllers_answer_prints_as_a_diff_computed_here():
    from controller.cli import DiffEntry, DiffReport, diff_exit_code, format_diff, report_of
    from controller.model import ApplyFailure, ObjectRef

    secret, web = ObjectRef("", "Secret", "shop", "db"), ObjectRef("apps", "Deployment", "shop", "web")
    here = DiffReport("abc", [DiffEntry(secret, "create", "+data:\n+  password: ++++++++\n")],
                      [ApplyFailure(web, "spec.replicas: Invalid value")])
    there = report_of(diff_answer(here, {}))  # through the endpoint's JSON, as the CLI gets it
    assert there == here
    assert format_diff(there.entries) == format_diff(here.entries) and diff_exit_code(there.entries, there.failures) == 2


def test_the_kubeconfigs_token_is_the_bearer_one_and_none_for_certificates():
    from kubernetes import client as k8s_client

    from controller.cli import kubeconfig_token
    from controller.kube import KubeClient

    def with_key(api_key: dict) -> KubeClient:
        configuration = k8s_client.Configuration()
        configuration.host, configuration.api_key = "https://api", api_key
        return KubeClient(configuration)

    assert kubeconfig_token(with_key({"authorization": "Bearer abc.def"})) == "abc.def"
    assert kubeconfig_token(with_key({})) is None
    assert kubeconfig_token(with_key({"authorization": "Basic dXNlcg=="})) is None


def test_refusals_say_whose_they_are_and_what_to_do():
    from controller.cli import controller_refusal

    by_proxy = controller_refusal(403, "Forbidden", 'services "gantry-controller:ui" is forbidden: …',
                                  where="gantry/gantry-controller:ui", proxied=True)
    assert str(by_proxy).startswith('forbidden: services "gantry-controller:ui" is forbidden')
    assert "services/proxy" in str(by_proxy) and "--server" in str(by_proxy) and "--local" in str(by_proxy)
    missing = controller_refusal(503, "ServiceUnavailable", 'no endpoints available for service "gantry-controller"',
                                 where="gantry/gantry-controller:ui", proxied=True)
    assert "--controller-namespace" in str(missing) and "no endpoints" in str(missing)
    by_controller = controller_refusal(403, "", 'applications.gantry.dev "shop" is forbidden: User "bob" cannot get …',
                                       where="gantry/gantry-controller:ui", proxied=True)
    assert str(by_controller) == 'forbidden: applications.gantry.dev "shop" is forbidden: User "bob" cannot get …'
    assert str(controller_refusal(422, "", "k8s/web.yaml:3: could not parse", where="x", proxied=False)) \
        == "k8s/web.yaml:3: could not parse"
    assert all(error.exit_code == 2 for error in (by_proxy, missing, by_controller))
