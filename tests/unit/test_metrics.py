"""The metrics collectors and the controller's small HTTP server, on loopback (no cluster)."""

import socket
import urllib.error
import urllib.request

import pytest

from controller.metrics import HttpServer, Metrics


@pytest.fixture
def server():
    received: list[bytes] = []

    def echo(_handler, body: bytes) -> tuple[int, str, bytes]:
        received.append(body)
        return 202, "text/plain", b"got %d\n" % len(body)

    http = HttpServer(Metrics(), "127.0.0.1:0", max_body=1024, timeout=30.0)
    http.post_routes["/hook"] = echo
    http.received = received
    http.start()
    yield http
    http.stop()


def request(server: HttpServer, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=body,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_lists_an_apps_current_state_only():
    metrics = Metrics()
    metrics.set_app_info("gantry", "shop", "https://git/shop", "shop", "OutOfSync", "Progressing")
    metrics.set_app_info("gantry", "shop", "https://git/shop", "shop", "Synced", "Healthy")
    text = metrics.render().decode()
    assert 'sync_status="Synced"' in text
    assert 'sync_status="OutOfSync"' not in text
    metrics.forget_app("gantry", "shop")
    assert 'name="shop"' not in metrics.render().decode()


def test_get_routes(server):
    status, body = request(server, "/metrics")
    assert status == 200 and b"gantry_app_sync_total" in body
    assert request(server, "/healthz") == (200, b"ok\n")
    assert request(server, "/nowhere")[0] == 404


def test_healthz_reports_not_ready():
    http = HttpServer(Metrics(), "127.0.0.1:0", healthy=lambda: False).start()
    try:
        assert request(http, "/healthz") == (503, b"not ready\n")
    finally:
        http.stop()


def test_a_post_route_receives_the_body(server):
    assert request(server, "/hook", b"x" * 1024) == (202, b"got 1024\n")
    assert server.received == [b"x" * 1024]
    assert request(server, "/other", b"{}")[0] == 404


def test_an_oversized_body_is_answered_400_not_cut_off():
    # The client is still sending when the server decides: it must read our answer, not a broken
    # pipe. The body is larger than loopback's socket buffers, so an early close would be seen.
    http = HttpServer(Metrics(), "127.0.0.1:0", max_body=1 << 20, timeout=30.0)
    http.post_routes["/hook"] = lambda _handler, _body: pytest.fail("an oversized body reached the route")
    http.start()
    try:
        status, body = request(http, "/hook", b" " * (6 << 20))
    finally:
        http.stop()
    assert status == 400 and b"over 1048576 bytes" in body


def test_a_huge_declared_length_is_refused_without_waiting_for_the_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\nabc")
        answer = conn.recv(4096)  # times out (5 s, the server's is 30 s) if the server waits for the body
    assert answer.split(b" ")[1] == b"400"
    assert server.received == []


@pytest.mark.parametrize("length", ["-5", "lots"])
def test_a_malformed_length_is_400(server, length):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(f"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        assert conn.recv(4096).split(b" ")[1] == b"400"
