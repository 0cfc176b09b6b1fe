"""`python -m bench.probe ARGS`: the Gantry controller exactly as `python -m controller.operator ARGS`
runs it, plus one metric the benchmarks need and the controller does not export (yet):

    gantry_bench_api_requests_total{method, target}   target: object | dry-run | application | event

counting every request of the controller's own API client (KubeClient.request and watches); kopf's
watch of Applications goes through kopf's client and is not counted. Nothing else changes: the
patch only wraps the client's methods and adds a collector to the controller's registry.
"""

from __future__ import annotations

import sys
import threading

from prometheus_client import Counter

from controller import kube, metrics, operator

_counters: list[Counter] = []
_lock = threading.Lock()


def _target(path: str, query: object) -> str:
    if "dryRun" in str(query):
        return "dry-run"
    if "/apis/gantry.dev/" in path:
        return "application"
    if path.endswith("/events"):
        return "event"
    return "object"


def _count(method: str, target: str) -> None:
    with _lock:
        counters = list(_counters)
    for counter in counters:
        counter.labels(method, target).inc()


def install() -> None:
    original_init = metrics.Metrics.__init__
    original_request = kube.KubeClient.request
    original_stream = kube.KubeClient.stream

    def init(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        counter = Counter("gantry_bench_api_requests_total", "API requests of the controller's own client.",
                          ["method", "target"], registry=self.registry)
        with _lock:
            _counters.append(counter)

    # *args/**kwargs: the wrappers pass through whatever the client's signatures grow.
    def request(self, method: str, path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        _count(method, _target(path, kwargs.get("query")))
        return original_request(self, method, path, *args, **kwargs)

    def stream(self, path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        _count("WATCH", _target(path, args[0] if args else kwargs.get("query")))
        return original_stream(self, path, *args, **kwargs)

    metrics.Metrics.__init__ = init
    kube.KubeClient.request = request
    kube.KubeClient.stream = stream


if __name__ == "__main__":
    install()
    sys.exit(operator.main(sys.argv[1:]))
