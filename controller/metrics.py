"""Metrics and the controller's HTTP endpoints: /metrics (Prometheus) and the probes on one server,
the webhook on another (operator.py wires it). Names follow Argo CD's, with `gantry_` for `argocd_`.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger(__name__)
# Oversized request bodies up to this many times the limit are read and dropped before the 400.
DRAIN_FACTOR = 8


class Metrics:
    """Every collector Gantry exports, in a registry of its own (so tests can make fresh ones)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.app_info = Gauge(
            "gantry_app_info", "One series per Application, its labels saying its state.",
            ["namespace", "name", "repo", "dest_namespace", "sync_status", "health_status"], registry=self.registry)
        self.app_sync_total = Counter(
            "gantry_app_sync_total", "Sync operations, by outcome.", ["namespace", "name", "phase"],
            registry=self.registry)
        self.reconcile_duration = Histogram(
            "gantry_app_reconcile_duration_seconds", "Time of one reconcile of one Application.",
            ["namespace", "name"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
        self.git_request_duration = Histogram(
            "gantry_git_request_duration_seconds", "Time of git requests to a repository.",
            ["repo", "request_type"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
        self.kubectl_exec_total = Counter(
            "gantry_kubectl_exec_total", "Requests that change or dry-run objects, by command.",
            ["command"], registry=self.registry)
        self.cluster_objects = Gauge(
            "gantry_cluster_api_resource_objects", "Managed objects held in the live-object cache.",
            ["server"], registry=self.registry)
        self._info_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def set_app_info(self, namespace: str, name: str, repo: str, dest_namespace: str,
                     sync_status: str, health_status: str) -> None:
        """Replace the app's series, so its old sync/health labels do not linger as a second series."""
        labels = (namespace, name, repo, dest_namespace, sync_status, health_status)
        with self._lock:
            old = self._info_labels.get((namespace, name))
            if old is not None and old != labels:
                self.app_info.remove(*old)
            self._info_labels[(namespace, name)] = labels
        self.app_info.labels(*labels).set(1)

    def forget_app(self, namespace: str, name: str) -> None:
        with self._lock:
            old = self._info_labels.pop((namespace, name), None)
        if old is not None:
            self.app_info.remove(*old)

    def render(self) -> bytes:
        return generate_latest(self.registry)


Answer = tuple[int, str, bytes]  # status, content type, body
GetRoute = Callable[[], Answer]
Route = Callable[[BaseHTTPRequestHandler, bytes], Answer]  # a POST route: the handler (headers) and the body


class RequestTimeout(TimeoutError):
    """The request (headers and body) did not arrive before its deadline."""


class _DeadlineReader(io.RawIOBase):
    """The socket as the handler reads it: every recv waits only for what is left of one deadline
    per request, so a client trickling a byte now and then cannot hold a thread past it (a timeout
    per recv would let it, for ever)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = float("inf")
        self.received = 0  # bytes of the current request
        self.expired = False

    def start(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self.received = 0
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            raise RequestTimeout("request not received in time")
        self._sock.settimeout(remaining)
        try:
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise RequestTimeout("request not received in time") from None
        self.received += count
        return count


class _Server(ThreadingHTTPServer):
    """A thread per connection, as many as `max_connections` at once; beyond that a connection is
    answered 503 by the accepting thread and closed, so slow clients cannot exhaust threads and a
    probe or a scrape still gets a quick (if unhappy) answer."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        try:
            # Non-blocking: the accepting thread must not wait on this client. The answer is far
            # smaller than an empty socket buffer, so it goes out whole.
            request.setblocking(False)
            request.send(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        # The default prints a traceback to stderr. A client that hung up mid-answer is routine.
        if isinstance(sys.exc_info()[1], OSError):
            logger.debug("http: connection from %s failed", client_address[0], exc_info=True)
        else:
            logger.exception("http: connection from %s failed", client_address[0])


def _plain(status: int, text: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for when no request was parsed."""
    body = text.encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_BUSY = _plain(503, "too many connections; try again\n")


class HttpServer:
    """One small threaded HTTP server with fixed GET and POST routes. The controller runs two, each
    with a port and a connection limit of its own: `metrics_server()` for /metrics and the probes,
    and one for the webhook, so a client flooding the webhook cannot starve the liveness probe.

    `timeout` is the time a client has to send a whole request, headers and body, from the moment
    its connection is accepted (408 after it), and to take each write of our answer; a connection
    carries one request, so this bounds how long it holds one of the `max_connections` slots (503
    beyond them). A route that raises is answered 500, with a message that tells nothing of the
    error. The constructor binds the socket, so a port in use is an error before `start()`.
    """

    def __init__(self, address: str, *, get_routes: Mapping[str, GetRoute] | None = None,
                 post_routes: Mapping[str, Route] | None = None, max_body: int = 1 << 20, timeout: float = 10.0,
                 max_connections: int = 32, name: str = "http") -> None:
        host, _, port = address.rpartition(":")
        self.max_body = max_body
        self.get_routes: dict[str, GetRoute] = dict(get_routes or {})
        self.post_routes: dict[str, Route] = dict(post_routes or {})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "gantry"
            # One request per connection (HTTP/1.0 closes after the answer): no keep-alive lets a
            # client hold a slot beyond one request's deadline.
            protocol_version = "HTTP/1.0"
            # Headers and body are two writes: with Nagle's algorithm the body would wait for the
            # client's delayed ACK (40 ms on Linux) before leaving.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # the socket's own reader: it holds the socket open until closed
                self.reader = _DeadlineReader(self.connection)
                self.rfile = io.BufferedReader(self.reader)
                self.answered = False

            def handle_one_request(self) -> None:
                self.reader.start(timeout)
                self.answered = False
                super().handle_one_request()  # closes the connection on a TimeoutError
                if self.reader.expired and self.reader.received and not self.answered:
                    # Part of a request came, not all of it in time. (Nothing at all: a client
                    # that connected and said nothing, closed without a word.)
                    try:
                        self.connection.settimeout(timeout)
                        self.wfile.write(_plain(408, f"request not received within {timeout:g} s\n"))
                    except OSError:
                        pass

            def send_response(self, code: int, message: str | None = None) -> None:
                self.answered = True
                self.connection.settimeout(timeout)  # the reader left it at what remained of its deadline
                super().send_response(code, message)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                logger.debug("http: " + format, *args)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _answer(self, route: GetRoute) -> None:
                try:
                    status, content_type, payload = route()
                except Exception:
                    # The client learns only that it was our fault; the log has the rest. (A route's
                    # error could hold anything, a secret included.)
                    logger.exception("http: %s %s failed", self.command, self.path.split("?", 1)[0])
                    status, content_type = 500, "text/plain; charset=utf-8"
                    payload = b"internal error; see the controller's log\n"
                    self.close_connection = True
                self._send(status, content_type, payload)

            def _discard(self, length: int) -> None:
                try:
                    while length > 0:
                        chunk = self.rfile.read(min(length, 1 << 16))
                        if not chunk:
                            return
                        length -= len(chunk)
                except OSError:  # the request's deadline bounds how long a slow sender can keep us
                    return

            def do_GET(self) -> None:
                route = outer.get_routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
                    return
                self._answer(route)

            def do_POST(self) -> None:
                route = outer.post_routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    length = -1
                if length < 0 or length > outer.max_body:
                    # 400 for both, as the webhook contract says. A body up to a few times the limit is
                    # read and dropped first: a client still sending when we close would see a broken
                    # pipe, not our answer. Beyond that we answer at once and hang up.
                    if 0 < length <= outer.max_body * DRAIN_FACTOR:
                        self._discard(length)
                    self._send(400, "text/plain; charset=utf-8",
                               f"body missing, malformed or over {outer.max_body} bytes\n".encode())
                    self.close_connection = True
                    return
                body = self.rfile.read(length)  # a RequestTimeout here is answered 408 in handle_one_request
                if len(body) < length:
                    self._send(400, "text/plain; charset=utf-8",
                               f"body ended after {len(body)} of its {length} bytes\n".encode())
                    self.close_connection = True
                    return
                self._answer(lambda: route(self, body))

        self._server = _Server((host or "0.0.0.0", int(port)), Handler, max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever() that never began
            self._server.shutdown()
        self._server.server_close()


def metrics_server(metrics: Metrics, address: str, *, healthy: Callable[[], bool] = lambda: True,
                   timeout: float = 10.0, max_connections: int = 32) -> HttpServer:
    """/metrics, and /healthz and /readyz (200 while `healthy()`, else 503); no POST routes."""
    def health() -> Answer:
        if healthy():
            return 200, "text/plain; charset=utf-8", b"ok\n"
        return 503, "text/plain; charset=utf-8", b"not ready\n"

    return HttpServer(address, get_routes={
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.render()),
        "/healthz": health,
        "/readyz": health,
    }, timeout=timeout, max_connections=max_connections, name="metrics-http")
