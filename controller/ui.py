"""The web UI's server: the browser's view of what the flow did (Applications, their resources and
pods) and the actions it may ask for (refresh, sync), each done as the signed-in user.

aiohttp, on a port of its own (--ui-address), in a thread with its own event loop: its long-lived
streams must neither block kopf's loop nor hold the connections of the probes. One watch of
Applications feeds every browser tab (Server-Sent Events); everything else a page shows is read
with the user's own credentials, so Kubernetes RBAC decides what each user sees and may do.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from . import health as health_stage
from .application import TOKEN_HEADER, app_summary, automated_enabled, refresh_request, rollback_request, sync_request
from .kube import KubeApiError, KubeClient, Resource, list_and_watch
from .model import API_GROUP, API_VERSION, Manifest, ObjectRef

__all__ = ["TOKEN_HEADER", "AppFeed", "DryRunRecorder", "UiServer", "build_tree", "diff_answer", "timeline"]

logger = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("ui_static")
SESSION_COOKIE = "gantry_session"
CSRF_HEADER = "X-Gantry-CSRF"
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 10_000
PERMISSION_SECONDS = 30.0  # how long an answer of RBAC is trusted before it is asked again
FEED_READY_TIMEOUT = 20.0  # how long a request waits for the first list of Applications
# Nothing but our own files: no inline script or style, no other host, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


# --------------------------------------------------------------------------------------------
# One watch of Applications for every tab


class AppFeed:
    """The Applications of the served namespaces (every namespace: None), kept by a list+watch in
    threads of their own; each change goes to every subscriber's queue as ("app", Application) or
    ("delete", Application)."""

    def __init__(self, client: KubeClient, namespaces: tuple[str, ...] | None) -> None:
        self.client = client
        self.namespaces = namespaces
        self._apps: dict[tuple[str, str], Manifest] = {}
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._stopped = threading.Event()
        self.ready = threading.Event()

    def start(self) -> "AppFeed":
        resource = self.client.resource(f"{API_GROUP}/{API_VERSION}", "Application")
        scopes: tuple[str | None, ...] = self.namespaces if self.namespaces is not None else (None,)
        listed = {scope: threading.Event() for scope in scopes}
        for scope in scopes:
            threading.Thread(target=list_and_watch, daemon=True, name=f"ui-watch-{scope or 'all'}", args=(
                self.client, resource, scope), kwargs={
                "on_list": lambda items, scope=scope: self._listed(scope, items, listed),
                "on_event": self._changed, "stopped": self._stopped}).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def snapshot(self) -> list[Manifest]:
        with self._lock:
            return list(self._apps.values())

    def get(self, namespace: str, name: str) -> Manifest | None:
        with self._lock:
            return self._apps.get((namespace, name))

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        with self._lock:
            self._subscribers.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers = [(loop, q) for loop, q in self._subscribers if q is not queue]

    def _listed(self, scope: str | None, items: list[Manifest], listed: dict[str | None, threading.Event]) -> None:
        keys = {_key(item) for item in items}
        with self._lock:
            gone = [app for key, app in self._apps.items()
                    if key not in keys and (scope is None or key[0] == scope)]
        for app in gone:
            self._changed("DELETED", app)
        for item in items:
            self._changed("ADDED", item)
        listed[scope].set()
        if all(event.is_set() for event in listed.values()):
            self.ready.set()

    def _changed(self, event_type: str, app: Manifest) -> None:
        key = _key(app)
        with self._lock:
            if event_type == "DELETED":
                self._apps.pop(key, None)
            else:
                self._apps[key] = app
            subscribers = list(self._subscribers)
        message = ("delete" if event_type == "DELETED" else "app", app)
        for loop, queue in subscribers:
            loop.call_soon_threadsafe(_offer, queue, message)


def _offer(queue: asyncio.Queue, message: tuple[str, Manifest]) -> None:
    try:
        queue.put_nowait(message)
    except asyncio.QueueFull:  # a tab that stopped reading: it reloads when its stream ends
        pass


def _namespaces_of(app: Manifest) -> set[str]:
    """The namespaces the app's resources live in (its status's inventory): where the tree, the
    resource view and the logs may look, and nowhere else."""
    return {entry["namespace"] for entry in (app.get("status") or {}).get("resources") or [] if entry.get("namespace")}


def _key(app: Manifest) -> tuple[str, str]:
    metadata = app.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


# --------------------------------------------------------------------------------------------
# Who is asking


@dataclass
class Session:
    """A signed-in user: their token (never logged, never sent back), their name, the CSRF token
    their page must send with every action, and what RBAC last answered for them."""

    client: KubeClient
    user: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    read_only: bool = False
    by_header: bool = False  # one request's, signed in by TOKEN_HEADER: kept nowhere, needs no CSRF token
    expires: float = field(default_factory=lambda: time.monotonic() + SESSION_SECONDS)
    answers: dict[tuple[str, str, str, str], tuple[float, bool]] = field(default_factory=dict)

    def can(self, verb: str, namespace: str, resource: str = "applications", group: str = API_GROUP) -> bool:
        """Whether RBAC lets this user `verb` `resource` in `namespace` (a SelfSubjectAccessReview
        sent with the user's own credentials, remembered for PERMISSION_SECONDS)."""
        if self.read_only and verb not in ("get", "list", "watch"):
            return False
        key = (verb, namespace, resource, group)
        cached = self.answers.get(key)
        if cached and time.monotonic() - cached[0] < PERMISSION_SECONDS:
            return cached[1]
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": verb,
                                                  "namespace": namespace}}}
        try:
            answer = self.client.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                         body=review)
            allowed = bool((answer.get("status") or {}).get("allowed"))
        except KubeApiError:
            allowed = False
        self.answers[key] = (time.monotonic(), allowed)
        return allowed


HEADER_SESSION = web.RequestKey("gantry_header_session", Session)  # a request's own (TOKEN_HEADER)


def who_is(client: KubeClient) -> str:
    """The user name the API server sees for `client` (a SelfSubjectReview); raises KubeApiError
    (401) for a token it does not accept."""
    review = client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(((review.get("status") or {}).get("userInfo") or {}).get("username") or "unknown")


# --------------------------------------------------------------------------------------------
# The resource tree


# Kinds whose objects the tree shows below the app's own: what controllers make from them.
CHILD_KINDS = (("apps/v1", "ReplicaSet"), ("v1", "Pod"), ("v1", "PersistentVolumeClaim"), ("batch/v1", "Job"))
PARENT_KINDS = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("apps/v1", "DaemonSet"),
                ("batch/v1", "CronJob"))


def build_tree(app: Manifest, lives: list[Manifest]) -> list[dict[str, Any]]:
    """The app's resources (from its status) and, below them, the live objects made from them
    (ReplicaSets, Pods, Jobs by ownerReferences; PVCs under the Pods that mount them), each a
    node {id, parent, group, kind, namespace, name, sync, health, message}. `lives`: the live
    objects of the app's namespaces, of the kinds above. Pure: the server lists, this links."""
    owned: dict[str, list[Manifest]] = {}
    for obj in lives:
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
            owned.setdefault(ref.get("uid"), []).append(obj)
    by_ref = {(obj.get("kind"), (obj.get("metadata") or {}).get("namespace") or "",
               (obj.get("metadata") or {}).get("name")): obj for obj in lives}
    nodes: list[dict[str, Any]] = []
    placed: set[str] = set()
    for entry in (app.get("status") or {}).get("resources") or []:
        node_id = _node_id(entry.get("group") or "", entry.get("kind") or "", entry.get("namespace") or "",
                           entry.get("name") or "")
        health = entry.get("health") or {}
        nodes.append({"id": node_id, "parent": None, "group": entry.get("group") or "", "kind": entry.get("kind"),
                      "namespace": entry.get("namespace") or "", "name": entry.get("name"),
                      "sync": entry.get("status") or "", "health": health.get("status") or "",
                      "message": health.get("message") or ""})
        live = by_ref.get((entry.get("kind"), entry.get("namespace") or "", entry.get("name")))
        if live is not None:
            placed.add(node_id)
            _children(live, node_id, owned, by_ref, nodes, placed)
    return nodes


def _children(parent: Manifest, parent_id: str, owned: dict[str, list[Manifest]], by_ref: dict, nodes: list[dict],
              placed: set[str]) -> None:
    for obj in owned.get((parent.get("metadata") or {}).get("uid"), ()):
        metadata = obj.get("metadata") or {}
        node_id = _node_id(_group(obj), obj.get("kind", ""), metadata.get("namespace") or "", metadata.get("name", ""))
        if node_id in placed:
            continue
        placed.add(node_id)
        nodes.append(_live_node(obj, node_id, parent_id))
        _children(obj, node_id, owned, by_ref, nodes, placed)
        if obj.get("kind") == "Pod":
            for volume in (obj.get("spec") or {}).get("volumes") or []:
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                pvc = by_ref.get(("PersistentVolumeClaim", metadata.get("namespace") or "", claim))
                if pvc is not None:
                    pvc_id = _node_id("", "PersistentVolumeClaim", metadata.get("namespace") or "", claim)
                    if pvc_id not in placed:
                        placed.add(pvc_id)
                        nodes.append(_live_node(pvc, pvc_id, node_id))


def _live_node(obj: Manifest, node_id: str, parent_id: str) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    assessed = health_stage.assess(obj)
    return {"id": node_id, "parent": parent_id, "group": _group(obj), "kind": obj.get("kind"),
            "namespace": metadata.get("namespace") or "", "name": metadata.get("name"), "sync": "",
            "health": assessed.status.value if assessed else "", "message": assessed.message if assessed else ""}


def _group(obj: Manifest) -> str:
    api_version = obj.get("apiVersion") or ""
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def _node_id(group: str, kind: str, namespace: str, name: str) -> str:
    return f"{group}/{kind}/{namespace}/{name}"


# --------------------------------------------------------------------------------------------
# The events timeline


EVENTS_LIMIT = 200  # the newest events a timeline shows unless asked for fewer (at most EVENTS_MAX)
EVENTS_MAX = 1000


def event_time(event: Manifest) -> str:
    """When an Event last happened: core/v1 Events from kubelets and kopf set lastTimestamp,
    those of events.k8s.io clients eventTime and a series."""
    return (event.get("lastTimestamp") or ((event.get("series") or {}).get("lastObservedTime"))
            or event.get("eventTime") or event.get("firstTimestamp")
            or (event.get("metadata") or {}).get("creationTimestamp") or "")


def _moment(timestamp: str) -> datetime:
    # lastTimestamp has seconds, eventTime microseconds: compared as strings, 06:00:00Z would sort
    # after 06:00:00.5Z.
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def timeline(app: Manifest, nodes: list[dict[str, Any]], events: list[Manifest], limit: int = EVENTS_LIMIT) -> dict:
    """The Events of the app (the Application's own and those of every object of its tree),
    newest first, at most `limit`: {items: [{time, type, reason, kind, namespace, name, message,
    count}], total}. `events`: core/v1 Events of the app's namespaces, of any object; those of
    objects outside the tree are left out. Pure."""
    namespace, name = _key(app)
    wanted = {("Application", namespace, name)}
    wanted.update((node.get("kind"), node.get("namespace") or "", node.get("name")) for node in nodes)
    mine = [event for event in events
            if ((event.get("involvedObject") or {}).get("kind"), (event.get("involvedObject") or {}).get("namespace") or "",
                (event.get("involvedObject") or {}).get("name")) in wanted]
    mine.sort(key=lambda event: _moment(event_time(event)), reverse=True)
    items = []
    for event in mine[:limit]:
        involved = event.get("involvedObject") or {}
        items.append({"time": event_time(event), "type": event.get("type") or "Normal", "reason": event.get("reason") or "",
                      "kind": involved.get("kind") or "", "namespace": involved.get("namespace") or "",
                      "name": involved.get("name") or "", "message": event.get("message") or "",
                      "count": event.get("count") or (event.get("series") or {}).get("count") or 1})
    return {"items": items, "total": len(mine)}


# --------------------------------------------------------------------------------------------
# The server


class UiServer:
    """The UI on `address`. `client`: the controller's (or, with `local`, the kubeconfig's)
    identity, used for the Application watch; with `local` every request acts as that identity
    (`gantry ui` on loopback), otherwise each user signs in with a bearer token the API server
    accepts and acts as themselves. `anonymous_read`: without signing in, a user may read what
    the controller may read, and do nothing. `diff(client, app, revision)`: what a sync (to
    `revision`, else the app's) would change, `gantry app diff`'s report, computed with `client`
    (the server's identity) for users who may read the app."""

    def __init__(self, client: KubeClient, address: str, *, namespaces: tuple[str, ...] | None = None,
                 local: bool = False, anonymous_read: bool = False,
                 client_for_token: Callable[[str], KubeClient] | None = None,
                 diff: Callable[[KubeClient, Manifest, str | None], Any] | None = None) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "0.0.0.0", int(port)
        self.client = client
        self.local = local
        self.anonymous_read = anonymous_read
        self.client_for_token = client_for_token or client.as_user
        self.compute_diff = diff
        self.feed = AppFeed(client, namespaces)
        self.sessions: dict[str, Session] = {}
        self.local_session = Session(client, "kubeconfig") if local else None
        # One for every visitor who has not signed in: RBAC's answers for it are the controller's.
        self.anonymous_session = Session(client, "anonymous", read_only=True, expires=float("inf"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "UiServer":
        """Bind and serve in a thread of its own; raises OSError when the address cannot be bound."""
        if self.local_session is not None:
            self.local_session.user = who_is(self.client)  # and a KubeApiError when it cannot be reached
        self.feed.start()
        self._thread = threading.Thread(target=self._serve, name="ui", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self.application(), access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, backlog=64)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # the real one when 0 was asked
        except BaseException as error:  # noqa: BLE001: handed to start(), which raises it
            self._error = error
            self._started.set()
            return
        self._started.set()
        loop.run_forever()

    def stop(self) -> None:
        self.feed.stop()
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=64 * 1024)
        app.add_routes([
            web.get("/", self._page), web.get("/apps/{namespace}/{name}", self._page), web.get("/login", self._page),
            web.get("/static/{file}", self._static),
            web.post("/api/v1/login", self._login), web.post("/api/v1/logout", self._logout),
            web.get("/api/v1/session", self._session_info),
            web.get("/api/v1/applications", self._list),
            web.get("/api/v1/stream", self._stream),
            web.get("/api/v1/applications/{namespace}/{name}", self._detail),
            web.get("/api/v1/applications/{namespace}/{name}/tree", self._tree),
            web.get("/api/v1/applications/{namespace}/{name}/resource", self._resource),
            web.get("/api/v1/applications/{namespace}/{name}/diff", self._diff),
            web.get("/api/v1/applications/{namespace}/{name}/events", self._events),
            web.get("/api/v1/applications/{namespace}/{name}/logs", self._logs),
            web.post("/api/v1/applications/{namespace}/{name}/refresh", self._refresh),
            web.post("/api/v1/applications/{namespace}/{name}/sync", self._sync),
            web.post("/api/v1/applications/{namespace}/{name}/rollback", self._rollback),
            web.post("/api/v1/applications/{namespace}/{name}/delete", self._delete),
        ])
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            if self.local and request.host.rpartition(":")[0] not in ("127.0.0.1", "localhost"):
                # A page of another site whose name was rebound to 127.0.0.1 would otherwise be
                # "same origin" with us, and act as the kubeconfig's user.
                raise _error(403, f"gantry ui answers only to 127.0.0.1 and localhost, not {request.host!r}")
            if TOKEN_HEADER in request.headers and not self.local:
                request[HEADER_SESSION] = await self._header_session(request.headers[TOKEN_HEADER])
            response = await handler(request)
        except web.HTTPException as error:
            response = error
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # ---------------------------------------------------------------- sessions

    def _session(self, request: web.Request) -> Session | None:
        if self.local_session is not None:
            return self.local_session
        if request.get(HEADER_SESSION) is not None:
            return request[HEADER_SESSION]
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is not None and session.expires < time.monotonic():
            self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
            session = None
        if session is None and self.anonymous_read:
            return self.anonymous_session
        return session

    def _require(self, request: web.Request) -> Session:
        session = self._session(request)
        if session is None:
            raise _error(401, "sign in first: POST a bearer token to /api/v1/login")
        return session

    def _require_action(self, request: web.Request) -> Session:
        """A session whose page sent its CSRF token, from our own origin."""
        session = self._require(request)
        origin = request.headers.get("Origin")
        if origin and origin.split("://", 1)[-1] != request.host:
            raise _error(403, "cross-origin request refused")
        # A browser sends a header of a page's own choosing to another site only after a CORS
        # preflight, which this server never grants: a token in TOKEN_HEADER is no ambient
        # credential another site could ride on, as a cookie is.
        if not session.by_header and not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), session.csrf):
            raise _error(403, f"missing or wrong {CSRF_HEADER} header (reload the page)")
        return session

    async def _login(self, request: web.Request) -> web.Response:
        if self.local:
            raise _error(400, "this UI acts with the kubeconfig's identity; there is nothing to sign in to")
        try:
            token = str((await request.json()).get("token") or "").strip()
        except (json.JSONDecodeError, AttributeError):
            token = ""
        if not token:
            raise _error(400, 'give {"token": "…"}: a ServiceAccount token (kubectl create token NAME) or an '
                              "OIDC id token the cluster accepts")
        session = await self._authenticate(token, "this token")
        session_id = secrets.token_urlsafe(32)
        self._forget_expired()
        self.sessions[session_id] = session
        logger.info("ui: %s signed in", session.user)
        response = web.json_response({"user": session.user})
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", max_age=SESSION_SECONDS,
                            secure=request.secure, path="/")
        return response

    async def _authenticate(self, token: str, what: str, **session: Any) -> Session:
        """A session acting with `token`, once the API server says whose it is (a SelfSubjectReview
        sent with it): a sign-in's, or one request's."""
        client = self.client_for_token(token)
        try:
            user = await asyncio.to_thread(who_is, client)
        except KubeApiError as error:
            raise _error(401 if error.status == 401 else 502, f"the API server did not accept {what}"
                         if error.status == 401 else f"cannot ask the API server who this is: {error.reason}")
        return Session(client, user, **session)

    async def _header_session(self, value: str) -> Session:
        """The session of a request that brings its own token (`gantry app diff`): treated as a
        sign-in, checked with the API server each time, stored nowhere."""
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _error(401, f"{TOKEN_HEADER} must be 'Bearer <token>'")
        return await self._authenticate(token.strip(), f"the token in {TOKEN_HEADER}", by_header=True)

    def _forget_expired(self) -> None:
        """Sessions live in memory: those past their time go at each sign-in, and beyond
        MAX_SESSIONS the oldest too (a loop of sign-ins must not grow the controller)."""
        moment = time.monotonic()
        for key in [key for key, session in self.sessions.items() if session.expires < moment]:
            del self.sessions[key]
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]

    async def _logout(self, request: web.Request) -> web.Response:
        self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = web.json_response({})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _session_info(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if session is None:
            return web.json_response({"user": None, "local": self.local})
        return web.json_response({"user": session.user, "csrf": session.csrf, "readOnly": session.read_only,
                                  "local": self.local})

    # ---------------------------------------------------------------- reads

    async def _visible(self, session: Session, apps: list[Manifest]) -> list[Manifest]:
        namespaces = {_key(app)[0] for app in apps}
        allowed = {ns for ns in namespaces if await asyncio.to_thread(session.can, "list", ns)}
        return [app for app in apps if _key(app)[0] in allowed]

    async def _listed(self) -> list[Manifest]:
        """Every app the feed holds, once its first list is in: a request that comes right after
        the server started must not be answered with an empty list it would take for the truth."""
        if not await asyncio.to_thread(self.feed.ready.wait, FEED_READY_TIMEOUT):
            raise _error(503, "the list of Applications has not been read from the API server yet: try again")
        return self.feed.snapshot()

    async def _list(self, request: web.Request) -> web.Response:
        session = self._require(request)
        apps = await self._visible(session, await self._listed())
        return web.json_response({"items": [app_summary(app) for app in sorted(apps, key=_key)]})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every visible app once (`app`), then each change as it comes
        (`app`, `delete`); a comment every 15 s keeps proxies from closing the stream. With
        `namespace` and `name`, that one app only (an app's page)."""
        session = self._require(request)
        only = (request.query.get("namespace"), request.query.get("name"))

        def wanted(app: Manifest) -> bool:
            return only == (None, None) or _key(app) == only

        queue = self.feed.subscribe()  # before the snapshot: no change falls between the two
        try:
            first = await self._visible(session, [app for app in await self._listed() if wanted(app)])
        except BaseException:
            self.feed.unsubscribe(queue)
            raise
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            for app in first:
                await response.write(_event("app", app_summary(app)))
            await response.write(_event("ready", {}))
            while True:
                try:
                    kind, app = await asyncio.wait_for(queue.get(), timeout=15)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if not wanted(app) or not await asyncio.to_thread(session.can, "list", _key(app)[0]):
                    continue
                await response.write(_event(kind, app_summary(app) if kind == "app"
                                            else {"namespace": _key(app)[0], "name": _key(app)[1]}))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.feed.unsubscribe(queue)
        return response

    async def _application(self, session: Session, request: web.Request) -> Manifest:
        """The Application read with the user's own credentials (so RBAC applies to it)."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/applications/{name}"
        try:
            return await asyncio.to_thread(session.client.request, "GET", path)
        except KubeApiError as error:
            raise _error(error.status if error.status in (401, 403, 404) else 502,
                         error.message or error.reason) from None

    async def _detail(self, request: web.Request) -> web.Response:
        session = self._require(request)
        app = await self._application(session, request)
        namespace = _key(app)[0]
        status = app.get("status") or {}
        can = {verb: await asyncio.to_thread(session.can, verb, namespace) for verb in ("patch", "delete")}
        return web.json_response({
            "summary": app_summary(app),
            "conditions": status.get("conditions") or [],
            "operationState": status.get("operationState"),
            "history": status.get("history") or [],
            "operation": app.get("operation"),
            "can": {"refresh": can["patch"], "sync": can["patch"], "delete": can["delete"]},
        })

    async def _tree(self, request: web.Request) -> web.Response:
        session = self._require(request)
        app = await self._application(session, request)
        namespaces = sorted(_namespaces_of(app))
        lives, hidden = await asyncio.to_thread(self._list_children, session.client, namespaces)
        return web.json_response({"nodes": build_tree(app, lives), "hidden": hidden})

    def _list_children(self, client: KubeClient, namespaces: list[str]) -> tuple[list[Manifest], list[str]]:
        """The live objects the tree links, read as the user; the kinds they may not list, named."""
        lives: list[Manifest] = []
        hidden: list[str] = []
        for api_version, kind in PARENT_KINDS + CHILD_KINDS:
            try:
                resource: Resource = client.resource(api_version, kind)
            except KubeApiError:
                continue
            for namespace in namespaces:
                try:
                    items = client.list(resource, namespace)["items"]
                except KubeApiError as error:
                    if error.status in (401, 403):
                        if (api_version, kind) in CHILD_KINDS[:3]:  # what the tree would show, not link by
                            hidden.append(f"{kind} in {namespace}")
                        continue
                    raise
                for item in items:
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind)
                lives.extend(items)
        return lives, hidden

    async def _events(self, request: web.Request) -> web.Response:
        """The app's events timeline, read as the user: the Application's Events and those of
        every object its tree holds, newest first (`limit`, default EVENTS_LIMIT). One list of
        Events per namespace, filtered here, not one request per resource; namespaces whose
        Events the user may not list are named in `hidden`, their Events left out."""
        session = self._require(request)
        app = await self._application(session, request)
        try:
            limit = max(1, min(int(request.query.get("limit") or EVENTS_LIMIT), EVENTS_MAX))
        except ValueError:
            raise _error(400, "limit must be a number of events") from None

        def read() -> dict:
            app_namespace, name = _key(app)
            namespaces = sorted(_namespaces_of(app))
            lives, hidden = self._list_children(session.client, namespaces)
            events: list[Manifest] = []
            for namespace in sorted({*namespaces, app_namespace}):
                # Where only the Application lives, its own Events are all the timeline wants.
                only_app = None if namespace in namespaces else f"involvedObject.kind=Application,involvedObject.name={name}"
                try:
                    events += _list_events(session.client, namespace, only_app)
                except KubeApiError as error:
                    if error.status not in (401, 403):
                        raise
                    hidden.append(f"Events in {namespace}")
            return {**timeline(app, build_tree(app, lives), events, limit), "hidden": hidden}

        try:
            return web.json_response(await asyncio.to_thread(read))
        except KubeApiError as error:
            raise _error(error.status if error.status in (401, 403, 404) else 502, error.message or error.reason) from None

    def _member(self, app: Manifest, request: web.Request) -> tuple[str, str, str, str]:
        """The (group, kind, namespace, name) the query names, refused unless the app's tree holds
        it: these endpoints show the app's objects, not anything the user could name."""
        query = request.query
        wanted = (query.get("group", ""), query.get("kind", ""), query.get("namespace", ""), query.get("name", ""))
        if not wanted[1] or not wanted[3] or (wanted[2] and wanted[2] not in _namespaces_of(app)):
            raise _error(404, f"{wanted[1] or '?'} {wanted[2]}/{wanted[3]} is not one of this app's resources")
        return wanted

    async def _resource(self, request: web.Request) -> web.Response:
        """One object of the app as the user may read it: its live manifest (Secret values
        masked) and its events."""
        session = self._require(request)
        app = await self._application(session, request)
        group, kind, namespace, name = self._member(app, request)

        def read() -> dict:
            entry = next((e for e in (app.get("status") or {}).get("resources") or []
                          if (e.get("group") or "", e.get("kind"), e.get("namespace") or "", e.get("name"))
                          == (group, kind, namespace, name)), {})
            version = entry.get("version")
            resource = _resource_for(session.client, group, kind,
                                     (f"{group}/{version}" if group else version) if version else None)
            live = session.client.get(resource, name, namespace or None)
            events = []
            if namespace:
                try:
                    events = [{"type": e.get("type"), "reason": e.get("reason"), "message": e.get("message"),
                               "count": e.get("count"), "last": event_time(e)}
                              for e in _list_events(session.client, namespace,
                                                    f"involvedObject.kind={kind},involvedObject.name={name}")]
                except KubeApiError:
                    events = []
            return {"live": masked(live) if live else None, "events": events}

        try:
            return web.json_response(await asyncio.to_thread(read))
        except KubeApiError as error:
            raise _error(error.status if error.status in (401, 403, 404) else 502, error.message or error.reason) from None

    async def _diff(self, request: web.Request) -> web.Response:
        """What a sync would change (`revision`: to that revision): each object's diff, the
        objects that could not be compared, and with `kind` and `name` (`group`, `namespace`)
        only that object's, with its desired manifest. Secret values masked."""
        session = self._require(request)
        app = await self._application(session, request)
        if self.compute_diff is None:
            raise _error(404, "this server computes no diffs")
        query = request.query
        revision = query.get("revision", "").strip() or None
        wanted = (ObjectRef(query.get("group", ""), query["kind"], query.get("namespace", ""), query["name"])
                  if query.get("kind") and query.get("name") else None)
        recorder = DryRunRecorder(self.client)
        try:
            report = await asyncio.to_thread(self.compute_diff, recorder, app, revision)
        except Exception as error:  # noqa: BLE001: a render or git failure is the answer, in one line
            raise _error(422, str(error)) from None
        return web.json_response(diff_answer(report, recorder.sent, wanted))

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        """A pod's log, streamed from the API's pods/log as the user: `container`, `tailLines`
        (default 500), `previous` (the container before its last restart), `follow`."""
        session = self._require(request)
        app = await self._application(session, request)
        namespace, pod = request.query.get("namespace", ""), request.query.get("pod", "")
        if not pod or namespace not in _namespaces_of(app):
            raise _error(404, f"pod {namespace}/{pod} is not in this app's namespaces")
        query: dict[str, Any] = {"tailLines": max(1, min(int(request.query.get("tailLines") or 500), 10_000))}
        if request.query.get("container"):
            query["container"] = request.query["container"]
        for flag in ("previous", "follow", "timestamps"):
            if request.query.get(flag) in ("1", "true"):
                query[flag] = "true"
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        chunks = session.client.read_stream(path, query, timeout=3600 if "follow" in query else 60)
        loop = asyncio.get_running_loop()
        try:
            first = await loop.run_in_executor(None, next, chunks, b"")
        except KubeApiError as error:
            raise _error(error.status if error.status in (400, 401, 403, 404) else 502,
                         error.message or error.reason) from None
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            chunk = first
            while chunk:
                await response.write(chunk)
                chunk = await loop.run_in_executor(None, next, chunks, b"")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            chunks.close()
        return response

    # ---------------------------------------------------------------- actions

    async def _patch_application(self, request: web.Request, patch: dict, what: str, *,
                                 session: Session | None = None) -> web.Response:
        session = session or self._require_action(request)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if not await asyncio.to_thread(session.can, "patch", namespace):
            raise _error(403, f"{session.user} may not patch applications in namespace {namespace!r}")
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/applications/{name}"
        try:
            await asyncio.to_thread(session.client.request, "PATCH", path, body=patch,
                                    content_type="application/merge-patch+json")
        except KubeApiError as error:
            raise _error(error.status if 400 <= error.status < 500 else 502, error.message or error.reason) from None
        logger.info("ui: %s asked for %s of %s/%s", session.user, what, namespace, name)
        return web.json_response({"requested": what})

    async def _refresh(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        hard = bool(body.get("hard"))
        return await self._patch_application(request, refresh_request(hard=hard), "hard refresh" if hard else "refresh")

    async def _request_operation(self, request: web.Request, session: Session, app: Manifest, patch: dict,
                                 what: str) -> web.Response:
        """Ask the controller for an operation unless one is pending, conditional on the Application
        as read (its resourceVersion), as `gantry app sync` asks: a request someone made since is
        not replaced."""
        if app.get("operation"):
            raise _error(409, "another operation is already in progress on this app: wait for it")
        patch = {**patch, "metadata": {"resourceVersion": app["metadata"]["resourceVersion"]}}
        return await self._patch_application(request, patch, what, session=session)

    async def _sync(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        session = self._require_action(request)
        app = await self._application(session, request)
        revision = str(body.get("revision") or "").strip() or None
        return await self._request_operation(request, session, app, sync_request(
            revision, bool(body.get("prune")), username=session.user), "sync")

    async def _rollback(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        session = self._require_action(request)
        app = await self._application(session, request)
        if automated_enabled(app):
            raise _error(409, "automated sync is enabled, and would undo the rollback: disable it first "
                              "(as in Argo CD)")
        entry = next((e for e in (app.get("status") or {}).get("history") or [] if e.get("id") == body.get("id")), None)
        if entry is None:
            raise _error(404, f"no history entry {body.get('id')!r}")
        return await self._request_operation(request, session, app, rollback_request(
            entry, bool(body.get("prune")), session.user), f"rollback to {entry['revision'][:7]}")

    async def _delete(self, request: web.Request) -> web.Response:
        """Delete the app, cascading to its resources (the finalizer) or not; the body must name
        the app, as a user confirms by typing it (as in Argo CD)."""
        body = await _json_body(request)
        session = self._require_action(request)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if body.get("confirm") != name:
            raise _error(400, f"type the app's name ({name}) to confirm its deletion")
        if not await asyncio.to_thread(session.can, "delete", namespace):
            raise _error(403, f"{session.user} may not delete applications in namespace {namespace!r}")
        from .cli import CliError, delete_plan  # `gantry app delete`'s rule, until it leaves the CLI

        app = await self._application(session, request)
        cascade = bool(body.get("cascade", True))
        try:
            plan = delete_plan(app, cascade=cascade)
        except CliError as error:
            raise _error(409, str(error)) from None
        path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/applications/{name}"
        try:
            if plan.finalizers is not None:
                metadata: dict[str, Any] = {"finalizers": plan.finalizers}
                if plan.conditional:
                    metadata["resourceVersion"] = app["metadata"]["resourceVersion"]
                await asyncio.to_thread(session.client.request, "PATCH", path, body={"metadata": metadata},
                                        content_type="application/merge-patch+json")
            await asyncio.to_thread(session.client.request, "DELETE", path)
        except KubeApiError as error:
            raise _error(error.status if 400 <= error.status < 500 else 502, error.message or error.reason) from None
        logger.info("ui: %s deleted %s/%s (cascade: %s)", session.user, namespace, name, cascade)
        return web.json_response({"deleted": name, "cascade": cascade})

    # ---------------------------------------------------------------- files

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def _static(self, request: web.Request) -> web.FileResponse:
        name = request.match_info["file"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file() or name == "index.html":
            raise web.HTTPNotFound()
        return web.FileResponse(path)


MASK = "++++++++"


class DryRunRecorder:
    """A KubeClient (every call goes to `client`) that keeps each object sent to a server-side
    apply dry run, by ObjectRef: the desired manifest the diff compares with live, as the
    controller renders and prepares it (destination namespace, tracking labels, live values kept
    for RespectIgnoreDifferences). It lets the diff's one render show the desired manifests too."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self.sent: dict[ObjectRef, Manifest] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def request(self, method: str, path: str, **kwargs: Any) -> Manifest:
        query, body = kwargs.get("query"), kwargs.get("body")
        if method == "PATCH" and isinstance(query, dict) and query.get("dryRun") == "All" and isinstance(body, dict):
            self.sent[ObjectRef.of(body)] = body
        return self._client.request(method, path, **kwargs)


def diff_answer(report: Any, desired: dict[ObjectRef, Manifest], wanted: ObjectRef | None = None) -> dict:
    """The diff endpoint's answer from `gantry app diff`'s report: every object's (or, `wanted`,
    one object's with its desired manifest, Secret values masked as in the live view)."""
    entries = [e for e in report.entries if wanted is None or e.ref == wanted]
    failures = [f for f in report.failures if wanted is None or f.ref == wanted]
    answer: dict[str, Any] = {
        "revision": report.revision, "resources": [entry.to_dict() for entry in entries],
        "failures": [{**f.ref._asdict(), "message": f.message} for f in failures]}
    if wanted is not None:
        answer["desired"] = masked(desired[wanted]) if wanted in desired else None
    return answer


def masked(obj: Manifest) -> Manifest:
    """`obj` with managedFields dropped and, for a Secret, every value replaced by a mask: the
    browser never receives Secret data."""
    shown = {**obj, "metadata": {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}}
    if obj.get("kind") == "Secret":
        for field_name in ("data", "stringData"):
            if isinstance(obj.get(field_name), dict):
                shown[field_name] = {key: MASK for key in obj[field_name]}
        annotations = dict(shown["metadata"].get("annotations") or {})
        annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
        shown["metadata"]["annotations"] = annotations
    return shown


def _resource_for(client: KubeClient, group: str, kind: str, api_version: str | None) -> Resource:
    """The REST resource of group/kind: the version the app's status names, else the group's
    preferred one (discovery)."""
    if api_version:
        return client.resource(api_version, kind)
    if not group:
        return client.resource("v1", kind)
    groups = client.request("GET", "/apis").get("groups") or []
    preferred = next((g["preferredVersion"]["groupVersion"] for g in groups if g.get("name") == group), None)
    if preferred is None:
        raise KubeApiError(404, "NotFound", f"the API group {group!r} is not served")
    return client.resource(preferred, kind)


def _list_events(client: KubeClient, namespace: str, field_selector: str | None = None) -> list[Manifest]:
    """The core/v1 Events of `namespace` (those `field_selector` selects), every page of them."""
    items: list[Manifest] = []
    query: dict[str, Any] = {"limit": 500}
    if field_selector:
        query["fieldSelector"] = field_selector
    while True:
        page = client.request("GET", f"/api/v1/namespaces/{namespace}/events", query=query)
        items += page.get("items") or []
        query["continue"] = (page.get("metadata") or {}).get("continue")
        if not query["continue"]:
            return items


def _event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error(status: int, message: str) -> web.HTTPException:
    """An error answer the page shows as it is: {"error": message}."""
    return _STATUS.get(status, web.HTTPBadGateway)(text=json.dumps({"error": message}), content_type="application/json")


_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
    409: web.HTTPConflict, 422: web.HTTPUnprocessableEntity, 502: web.HTTPBadGateway,
    503: web.HTTPServiceUnavailable,
}


async def _json_body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise _error(400, "the body is not JSON") from None
    return body if isinstance(body, dict) else {}

