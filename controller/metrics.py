"""Metrics and the controller's HTTP endpoint: /metrics (Prometheus), /healthz, and room for more
routes (the webhook). Names follow Argo CD's where one exists, with `gantry_` for `argocd_`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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


Route = Callable[[BaseHTTPRequestHandler, bytes], tuple[int, str, bytes]]


class HttpServer:
    """One small threaded HTTP server for /metrics, /healthz and POST routes added by others."""

    def __init__(self, metrics: Metrics, address: str = ":8080", *, healthy: Callable[[], bool] = lambda: True,
                 max_body: int = 1 << 20, timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self.metrics = metrics
        self.healthy = healthy
        self.max_body = max_body
        self.post_routes: dict[str, Route] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "gantry"
            # Headers and body are two writes: with Nagle's algorithm the body would wait for the
            # client's delayed ACK (40 ms on Linux) before leaving.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                self.connection.settimeout(timeout)  # a slow client cannot hold a thread for ever

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                logger.debug("http: " + format, *args)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _discard(self, length: int) -> None:
                try:
                    while length > 0:
                        chunk = self.rfile.read(min(length, 1 << 16))
                        if not chunk:
                            return
                        length -= len(chunk)
                except OSError:  # the socket timeout bounds how long a slow sender can keep us
                    return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, outer.metrics.render())
                elif path in ("/healthz", "/readyz"):
                    ok = outer.healthy()
                    self._send(200 if ok else 503, "text/plain; charset=utf-8", b"ok\n" if ok else b"not ready\n")
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

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
                body = self.rfile.read(length)
                status, content_type, payload = route(self, body)
                self._send(status, content_type, payload)

        self._server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
