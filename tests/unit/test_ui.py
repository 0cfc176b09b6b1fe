"""The web UI's pieces that need no cluster: the resource tree, the app summary, permissions."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from controller.application import app_summary
from controller.ui import Session, UiServer, build_tree


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
