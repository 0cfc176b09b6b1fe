"""The metrics collectors and the controller's small HTTP server, on loopback (no cluster)."""

import select
import socket
import time
import urllib.error
import urllib.request

import pytest

from controller.metrics import HttpServer, Metrics, metrics_server


@pytest.fixture
def server():
    received: list[bytes] = []

    def echo(_handler, body: bytes) -> tuple[int, str, bytes]:
        received.append(body)
        return 202, "text/plain", b"got %d\n" % len(body)

    http = HttpServer("127.0.0.1:0", post_routes={"/hook": echo}, max_body=1024, timeout=30.0)
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


def test_the_metrics_server_serves_metrics_and_probes_and_no_post():
    http = metrics_server(Metrics(), "127.0.0.1:0").start()
    try:
        status, body = request(http, "/metrics")
        assert status == 200 and b"gantry_app_sync_total" in body
        assert request(http, "/healthz") == (200, b"ok\n")
        assert request(http, "/readyz") == (200, b"ok\n")
        assert request(http, "/nowhere")[0] == 404
        assert request(http, "/healthz", b"{}")[0] == 404
    finally:
        http.stop()


def test_a_server_answers_only_its_own_routes(server):
    assert request(server, "/metrics")[0] == 404
    assert request(server, "/healthz")[0] == 404
    assert request(server, "/hook", b"{}")[0] == 202


def test_healthz_reports_not_ready():
    http = metrics_server(Metrics(), "127.0.0.1:0", healthy=lambda: False).start()
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
    http = HttpServer("127.0.0.1:0", max_body=1 << 20, timeout=30.0,
                      post_routes={"/hook": lambda _handler, _body: pytest.fail("an oversized body reached the route")})
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


# ---------------------------------------------------------------------------------------------
# Slow and many clients. The server's deadline is short; the clients wait as long as it takes, so
# a loaded machine makes these slower, never wrong.


def answer_of(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


def trickle(conn: socket.socket, data: bytes, pause: float = 0.2) -> bytes:
    """Send data a byte at a time, each well within any per-read timeout, until the server answers
    or hangs up; returns its answer (b"" for a hang-up without one)."""
    for byte in data:
        readable, _, _ = select.select([conn], [], [], pause)
        if readable:
            break
        try:
            conn.sendall(bytes([byte]))
        except OSError:  # it closed while we sent: what it said before is still to be read
            break
    else:
        pytest.fail("the server let the whole trickled request through")
    return answer_of(conn)


def test_a_short_body_is_400_not_passed_on(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcde")
        conn.shutdown(socket.SHUT_WR)
        assert answer_of(conn).split(b" ")[1] == b"400"
    assert server.received == []


@pytest.fixture
def quick():
    """A server that gives a request one second, headers and body together."""
    http = HttpServer("127.0.0.1:0", timeout=1.0,
                      post_routes={"/hook": lambda _handler, _body: pytest.fail("a timed-out request reached the route")})
    http.start()
    yield http
    http.stop()


def test_headers_trickled_past_the_deadline_are_answered_408(quick):
    request = b"POST /hook HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 1000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", quick.port), timeout=30) as conn:
        answer = trickle(conn, request)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert answer.endswith(b"\r\n\r\nrequest not received within 1 s\n")


def test_a_body_trickled_past_the_deadline_is_answered_408(quick):
    with socket.create_connection(("127.0.0.1", quick.port), timeout=30) as conn:
        conn.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        answer = trickle(conn, b"{" * 1000)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(quick):
    with socket.create_connection(("127.0.0.1", quick.port), timeout=30) as conn:
        assert answer_of(conn) == b""


def test_connections_beyond_the_limit_get_503_until_one_ends():
    http = metrics_server(Metrics(), "127.0.0.1:0", timeout=30.0, max_connections=2).start()
    slow = [socket.create_connection(("127.0.0.1", http.port), timeout=30) for _ in range(2)]
    try:
        for conn in slow:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")  # …and the rest of the request later
        # Connections are accepted in order, so the two above hold both threads by now.
        with socket.create_connection(("127.0.0.1", http.port), timeout=30) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = answer_of(conn)
        assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"too many connections; try again\n")

        slow[0].sendall(b"Host: x\r\n\r\n")
        assert answer_of(slow[0]).endswith(b"\r\n\r\nok\n")  # a held connection is still served
        # Its thread ends just after its answer, then a new connection is served again.
        deadline = time.monotonic() + 30
        while (status := request(http, "/healthz")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200
    finally:
        for conn in slow:
            conn.close()
        http.stop()


# ---------------------------------------------------------------------------------------------
# A route that fails


@pytest.mark.parametrize("error", [ValueError("token s3cr3t-value is wrong"), TimeoutError("s3cr3t-value")])
def test_a_route_that_raises_is_answered_500_without_its_message(error):
    def broken(_handler, _body):
        raise error

    http = HttpServer("127.0.0.1:0", post_routes={"/hook": broken}).start()
    try:
        status, body = request(http, "/hook", b"{}")
    finally:
        http.stop()
    assert status == 500
    assert body == b"internal error; see the controller's log\n"


def test_a_failing_health_check_is_answered_500():
    def healthy() -> bool:
        raise RuntimeError("scheduler gone")

    http = metrics_server(Metrics(), "127.0.0.1:0", healthy=healthy).start()
    try:
        assert request(http, "/healthz") == (500, b"internal error; see the controller's log\n")
    finally:
        http.stop()
