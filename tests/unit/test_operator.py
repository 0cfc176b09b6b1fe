"""The kopf wiring's pieces that need no cluster."""

import asyncio
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import kopf
import pytest

from controller import operator
from controller.kube import KubeApiError
from controller.metrics import Metrics
from controller.operator import DiffBaseWithoutStatus, _plain
from controller.reconcile import Outcome
from controller.startup import StartupError
from slowloris import slowloris


def application(resources: int) -> dict:
    return {
        "apiVersion": "gantry.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "shop", "namespace": "gantry", "labels": {"team": "a"},
                     "annotations": {"gantry.dev/refresh": "normal",
                                     "kopf.zalando.org/last-handled-configuration": "{}"}},
        "spec": {"source": {"repoURL": "https://git/shop", "path": "k8s"}},
        "status": {"resources": [{"kind": "ConfigMap", "name": f"c{i}"} for i in range(resources)]},
    }


def test_the_diff_base_is_kopfs_own_without_reading_the_status():
    raw = application(3)
    ours = DiffBaseWithoutStatus().build(body=kopf.Body(raw))
    assert ours == kopf.AnnotationsDiffBaseStorage().build(body=kopf.Body(raw))
    assert "status" not in ours and ours["spec"] == raw["spec"]
    assert ours["metadata"]["labels"] == {"team": "a"}


def test_the_diff_base_still_honours_extra_status_fields():
    raw = application(2)
    essence = DiffBaseWithoutStatus().build(body=kopf.Body(raw), extra_fields=["status.resources"])
    assert essence["status"]["resources"] == raw["status"]["resources"]


def test_a_snapshot_keeps_its_spec_when_the_event_body_changes():
    raw = application(2)
    snapshot = _plain(kopf.Body(raw))
    raw["spec"]["source"]["path"] = "other"
    raw["metadata"]["labels"]["team"] = "b"
    assert snapshot["spec"]["source"]["path"] == "k8s"
    assert snapshot["metadata"]["labels"] == {"team": "a"}
    assert snapshot["status"] == raw["status"]


def test_free_memory_is_released_once_no_pass_runs(monkeypatch):
    released: list[bool] = []
    monkeypatch.setattr(operator, "release_free_memory", lambda: released.append(True))

    async def scenario() -> None:
        scheduler = operator.Scheduler(reconciler=None, client=None, options=operator.Options(), metrics=Metrics())
        scheduler.release_after, scheduler.release_every = 0.05, 0.0
        scheduler._pass_started()
        scheduler._pass_started()
        scheduler._pass_ended()
        await asyncio.sleep(0.2)
        assert released == []  # one pass still runs
        scheduler._pass_ended()
        scheduler._pass_started()  # a new pass before the release: it waits for that one
        await asyncio.sleep(0.2)
        assert released == []
        scheduler._pass_ended()
        await asyncio.sleep(0.2)
        assert released == [True]
        scheduler.release_every = 0.5  # then not again before this
        scheduler._pass_started()
        scheduler._pass_ended()
        await asyncio.sleep(0.2)
        assert released == [True]
        await asyncio.sleep(0.5)
        assert released == [True, True]
        scheduler.pool.shutdown()

    asyncio.run(scenario())


def test_health_fails_while_the_event_loop_is_blocked():
    import threading
    import time

    seen: list[bool] = []

    async def scenario() -> None:
        scheduler = operator.Scheduler(reconciler=None, client=None, options=operator.Options(), metrics=Metrics())
        scheduler.beat_every, scheduler.stalled_after = 0.02, 0.3
        scheduler._beat()  # pick up the short interval
        await asyncio.sleep(0.1)
        seen.append(scheduler.responsive())
        probe = threading.Timer(0.6, lambda: seen.append(scheduler.responsive()))
        probe.start()
        time.sleep(0.8)  # a handler that blocks the loop, as a synchronous call in it would
        probe.join()
        await asyncio.sleep(0.1)
        seen.append(scheduler.responsive())
        scheduler._beat_handle.cancel()
        scheduler.pool.shutdown()

    asyncio.run(scenario())
    assert seen == [True, False, True]


def test_a_progressing_app_is_looked_at_every_5s_for_a_minute_then_less_often():
    delays = [operator.progress_check_delay(5.0, checks) for checks in range(20)]
    assert delays[:13] == [5.0] * 13
    assert delays[13:17] == [10.0, 20.0, 40.0, 60.0]
    assert set(delays[17:]) == {60.0}


def test_a_status_too_large_to_store_is_written_again_without_details_but_with_its_inventory():
    class Client:
        """Refuses the first status patch as the API server refuses a body over its limit."""

        def __init__(self):
            self.patches = []

        def request(self, method, path, body=None, content_type=None):
            self.patches.append(body)
            if len(self.patches) == 1:
                raise KubeApiError(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")
            return {"metadata": {"resourceVersion": "2"}}

    resources = [{"kind": "ConfigMap", "name": f"c{i}", "status": "Synced",
                  "health": {"status": "Progressing", "message": "waiting " * 20}} for i in range(3)]
    status = {"resources": resources, "operationState": {"phase": "Succeeded", "syncResult": {
        "revision": "abc", "resources": [{"kind": "ConfigMap", "name": "c0", "status": "Synced"}]}}}
    outcome = Outcome(status)
    client = Client()
    written = operator.Scheduler._write_status(SimpleNamespace(client=client), application(0), outcome)
    assert written == {"metadata": {"resourceVersion": "2"}}
    second = client.patches[1]["status"]
    assert [(r["name"], r["health"]) for r in second["resources"]] == [(f"c{i}", {"status": "Progressing"})
                                                                       for i in range(3)]
    assert second["operationState"]["syncResult"] == {"revision": "abc", "resources": []}
    assert outcome.status["resources"] == second["resources"], "the worker remembers what was written"


def test_other_status_write_errors_are_not_hidden():
    class Client:
        def request(self, *args, **kwargs):
            raise KubeApiError(422, "Invalid", "status.sync.status: Unsupported value")

    with pytest.raises(KubeApiError):
        operator.Scheduler._write_status(SimpleNamespace(client=Client()), application(0), Outcome({"sync": {}}))


def test_a_served_sync_or_refresh_is_not_served_again_from_a_stale_copy():
    served = {**application(0), "operation": {"sync": {"prune": False}}}
    outcome = Outcome({}, consumed_refresh=True, consumed_operation=True)
    # A managed object's wake may come before the watch event that removes the request.
    left = operator.without_served_requests(served, served, outcome)
    assert "operation" not in left
    assert "gantry.dev/refresh" not in left["metadata"]["annotations"]
    assert left["metadata"]["annotations"]["kopf.zalando.org/last-handled-configuration"] == "{}"
    assert served["operation"] == {"sync": {"prune": False}}, "the watch's copy is not changed in place"

    # A request made since the pass began is a new one and stays.
    newer = {**application(0), "operation": {"sync": {"prune": True}}}
    newer["metadata"]["annotations"]["gantry.dev/refresh"] = "hard"
    assert operator.without_served_requests(newer, served, outcome) == newer
    # Nothing consumed, nothing dropped.
    assert operator.without_served_requests(served, served, Outcome({})) == served


# ---------------------------------------------------------------------------------------------
# The HTTP servers: /metrics and the probes on one port, the webhook on another, each with its
# own connections, so a client flooding the webhook port cannot make the liveness probe fail.


def get(port: int, path: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def servers():
    options = operator.Options(metrics_address="127.0.0.1:0", webhook_address="127.0.0.1:0",
                               webhook_timeout=0.5, webhook_connections=4)
    http = operator.bind_http(options, Metrics(), healthy=lambda: True,
                              webhook_route=lambda _handler, _body: (200, "text/plain", b"refreshed\n"))
    http.start()
    yield http
    http.stop()


def test_metrics_and_webhook_are_served_on_their_own_ports(servers):
    metrics, webhook = servers.metrics.port, servers.webhook.port
    assert metrics != webhook
    assert get(metrics, "/healthz") == 200 and get(metrics, "/metrics") == 200
    assert get(metrics, operator.WEBHOOK_PATH, b"{}") == 404
    assert get(webhook, operator.WEBHOOK_PATH, b"{}") == 200
    assert get(webhook, "/healthz") == 404 and get(webhook, "/metrics") == 404


def test_a_flooded_webhook_port_leaves_healthz_answering_and_serves_again_after(servers):
    stop, answers = threading.Event(), []
    flood = [threading.Thread(target=slowloris, args=(("127.0.0.1", servers.webhook.port), stop, answers),
                              kwargs={"every": 0.05, "pause": 0.02}) for _ in range(12)]
    for thread in flood:
        thread.start()
    health = []
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            health.append(get(servers.metrics.port, "/healthz"))
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in flood:
            thread.join()
    assert health and set(health) == {200}, health
    # The flood did fill the webhook's connections (503), and its slow requests were cut at the
    # webhook's deadline (408), not held for as long as they trickled.
    assert b"HTTP/1.1 503" in answers and b"HTTP/1.1 408" in answers, set(answers)
    # The slow clients have hung up: a delivery is served again.
    deadline = time.monotonic() + 5
    while (status := get(servers.webhook.port, operator.WEBHOOK_PATH, b"{}")) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200


def test_an_address_in_use_is_a_startup_error_naming_its_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for options, flag in ((operator.Options(metrics_address=f"127.0.0.1:{port}", webhook_address="127.0.0.1:0"),
                               "--metrics-address"),
                              (operator.Options(metrics_address="127.0.0.1:0", webhook_address=f"127.0.0.1:{port}"),
                               "--webhook-address")):
            with pytest.raises(StartupError) as error:
                operator.bind_http(options, Metrics(), healthy=lambda: True, webhook_route=lambda _h, _b: (200, "", b""))
            assert str(error.value).startswith(f"cannot listen on {flag}=127.0.0.1:{port}: Address already in use")


def test_an_empty_address_serves_nothing():
    http = operator.bind_http(operator.Options(metrics_address="", webhook_address=""), Metrics(),
                              healthy=lambda: True, webhook_route=lambda _h, _b: (200, "", b""))
    assert http == operator.HttpServers(None, None)


def test_a_failing_startup_handler_stops_kopf_and_leaves_main_its_line(tmp_path, monkeypatch):
    cache = tmp_path / "a-file"
    cache.write_text("")
    monkeypatch.setattr(operator, "_options", operator.Options(cache_dir=cache))
    http = operator.bind_http(operator.Options(metrics_address="", webhook_address=""), Metrics(),
                              healthy=lambda: True, webhook_route=lambda _h, _b: (200, "", b""))
    prepared = operator.Prepared(client=SimpleNamespace(host="https://k"), metrics=Metrics(), http=http)
    settings = kopf.OperatorSettings()
    with pytest.raises(kopf.PermanentError):  # not retried by kopf, which ends the operator
        asyncio.run(operator.startup(settings=settings, memo=prepared, logger=logging.getLogger("test")))
    assert prepared.failure.startswith(f"cannot use --cache-dir {cache}: Not a directory")
