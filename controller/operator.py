"""The kopf wiring: Application events in, one worker loop per Application, status and events out.

Handlers stay thin; the reconcile itself is controller.reconcile. We use `@kopf.on.event` rather
than kopf daemons on purpose: daemons make kopf put its own finalizer on every Application, so an
Application could not be deleted while the controller is down, and Argo CD users expect that only
when they asked for cascade (`resources-finalizer`).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from .allocator import limit_malloc_arenas, release_free_memory
from .cache import LiveCache
from .charts import ChartCache
from .helm import helm_binary
from .credentials import CredentialStore
from .kube import KubeApiError, KubeClient
from . import health, webhook
from .metrics import HttpServer, Metrics, Route, metrics_server
from .model import (API_GROUP, API_VERSION, REFRESH_ANNOTATION, RESOURCE_FINALIZERS, Manifest, NamespacePolicy,
                    SourceError, SpecError)
from .reconcile import Fetched, Outcome, Reconciler, now
from .render import MiB, RenderLimits
from .ui import UiServer
from .webhook import PushEvent
from .source import GitCache, redact_url
from .startup import APPLICATIONS, EXIT_CODE, StartupError, check_cluster, listen, load_client
from .status import Event, Reason, merge_patch, one_line, reconcile_error, slimmed

logger = logging.getLogger("gantry")
PLURAL = APPLICATIONS  # the CRD the startup checks found served
WEBHOOK_PATH = "/api/webhook"


@dataclass(frozen=True)
class Options:
    namespace: str = "gantry"
    app_namespaces: tuple[str, ...] = ()  # extra namespaces whose Applications are served
    policy: NamespacePolicy | None = None  # namespaced mode: which apps may deploy into which namespaces
    all_namespaces: bool = False
    poll_interval: float = 180.0
    workers: int = 8
    kubeconfig: str | None = None
    kustomize: str = "kustomize"
    helm: str = "helm"  # renders Helm charts (found next to kustomize, else on PATH)
    metrics_address: str = ":8080"  # /metrics, /healthz, /readyz
    # The webhook is what gets exposed beyond the cluster: a port of its own, so a flood of it cannot
    # starve the probes, and a shorter deadline and fewer connections than they have.
    webhook_address: str = ":8081"
    webhook_timeout: float = 5.0
    webhook_connections: int = 16
    cache_dir: Path = Path(os.environ.get("GANTRY_CACHE_DIR", "/tmp/gantry-cache"))
    render_limits: RenderLimits = RenderLimits()
    ui_address: str = ":8082"  # the web UI; its streams live long, so not beside the probes either
    ui_anonymous_read: bool = False
    # The users' health rules: a ConfigMap NAMESPACE/NAME (None: HEALTH_RULES_CONFIGMAP in
    # `namespace`; "": none) and files or directories, read again every `health_rules_interval` s.
    health_rules_configmap: str | None = None
    health_rules_files: tuple[Path, ...] = ()
    health_rules_interval: float = 10.0


@dataclass
class AppWorker:
    body: Manifest
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    seen_generation: int | None = None
    attempt: int = 0
    progress_checks: int = 0  # passes in a row that only came back to look at a progressing app
    refresh: bool = False  # read git on the next pass (a webhook said the repo changed)
    # Woken by the Application itself (spec, refresh, operation) or a webhook, not by a managed
    # object: someone waits for this pass, so it starts without the coalescing pause.
    urgent: bool = False
    # resourceVersions of our own status writes that a second write (the refresh annotation's or
    # the operation's removal) superseded at once: their watch events still carry the request we
    # have just served, and must not start it again. Only the last few: kopf may batch an event
    # away, and then its entry is never matched.
    superseded: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    # The status this controller last wrote: we are its only writer, and the watch event carrying
    # it may not have arrived when the next pass starts, so this, not the event, is the truth.
    status: dict | None = None
    finalized: bool = False  # the app is being deleted and its resources finalizer is gone


class Scheduler:
    """One asyncio task per Application; reconciles run in a bounded thread pool. Git is read
    before a reconcile, in a pool of its own, one fetch per repo at a time: apps waiting for a slow
    or unreachable repo wait in the event loop, holding no thread, so the other apps' reconciles
    and fetches go on."""

    release_after = 2.0  # seconds without any pass before free memory goes back to the system
    release_every = 60.0  # and at most this often: git polls spread passes over the interval
    # /healthz fails once the event loop has not run a beat for this long: every watch, wake and
    # webhook goes through it, so a blocked loop is a controller that no longer works.
    beat_every = 5.0
    stalled_after = 30.0

    def __init__(self, reconciler: Reconciler, client: KubeClient, options: Options, metrics: Metrics) -> None:
        self.reconciler = reconciler
        self.client = client
        self.options = options
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="reconcile")
        # Each thread here serves one repo at a time, so only as many slow repos as threads can
        # delay the fetches of the others; a thread blocked on git costs little.
        self.git_pool = ThreadPoolExecutor(max_workers=max(16, 2 * options.workers), thread_name_prefix="git")
        self._repo_locks: dict[str, asyncio.Lock] = {}
        self._refresh_started: dict[str, float] = {}
        self.loop = asyncio.get_running_loop()
        self.workers: dict[str, AppWorker] = {}
        self._passes_running = 0
        self._release: asyncio.TimerHandle | None = None
        self._released_at = float("-inf")
        self._last_beat = time.monotonic()
        self._beat_handle = self.loop.call_later(self.beat_every, self._beat)
        self._rules_task: asyncio.Task | None = None

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        self._beat_handle = self.loop.call_later(self.beat_every, self._beat)

    def responsive(self) -> bool:
        """Whether the event loop ran lately (called from the HTTP server's threads)."""
        return time.monotonic() - self._last_beat < self.stalled_after

    def stop(self) -> None:
        self._beat_handle.cancel()
        if self._rules_task is not None:
            self._rules_task.cancel()
        for worker in self.workers.values():
            if worker.task:
                worker.task.cancel()
        self.reconciler.live.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.git_pool.shutdown(wait=False, cancel_futures=True)

    def observe(self, event_type: str | None, body: Manifest) -> None:
        metadata = body["metadata"]
        key = f"{metadata['namespace']}/{metadata['name']}"
        if event_type == "DELETED":
            worker = self.workers.pop(key, None)
            if worker and worker.task:
                worker.task.cancel()
            self.metrics.forget_app(metadata["namespace"], metadata["name"])
            return
        worker = self.workers.get(key)
        if worker is None:
            worker = self.workers[key] = AppWorker(body=dict(body))
            worker.task = self.loop.create_task(self._run(key, worker), name=f"app-{key}")
            return
        if metadata.get("resourceVersion") in worker.superseded:
            worker.superseded.remove(metadata["resourceVersion"])
            return
        worker.body = dict(body)
        if terminating(body, worker.status):
            # `gantry app terminate-op` (or Argo CD's way) wrote it into the status we otherwise own.
            operation_state = (worker.status or {}).get("operationState") or {}
            worker.status = {**(worker.status or {}), "operationState": {**operation_state, "phase": "Terminating"}}
            worker.urgent = True
            worker.wake.set()
            return
        annotations = metadata.get("annotations") or {}
        if (metadata.get("generation") != worker.seen_generation or REFRESH_ANNOTATION in annotations
                or body.get("operation") or metadata.get("deletionTimestamp")):
            worker.urgent = True
            worker.wake.set()

    def refresh_matching(self, event: PushEvent) -> list[str]:
        """Wake, with a git refresh, every app whose repo and revision the push concerns. Runs in
        the event loop; returns their keys."""
        keys = []
        for key, worker in self.workers.items():
            source = (worker.body.get("spec") or {}).get("source") or {}
            if webhook.matches(event, str(source.get("repoURL", "")), str(source.get("targetRevision") or "HEAD")):
                worker.refresh = True
                worker.urgent = True
                worker.wake.set()
                keys.append(key)
        return keys

    def webhook_route(self, handler, body: bytes) -> tuple[int, str, bytes]:
        """POST /api/webhook, called in an HTTP thread: verify, parse, refresh the matching apps."""
        try:
            event = webhook.parse(handler.headers, body, self._webhook_secrets())
        except webhook.WebhookError as error:
            if error.status >= 400:
                logger.warning("webhook refused (%d): %s", error.status, error)
            return error.status, "text/plain; charset=utf-8", f"{error}\n".encode()

        async def refresh() -> list[str]:
            return self.refresh_matching(event)

        keys = asyncio.run_coroutine_threadsafe(refresh(), self.loop).result(timeout=10)
        logger.info("webhook: %s; refreshing %s", event, ", ".join(keys) or "no application")
        return 200, "application/json", json.dumps({"refreshed": keys}).encode()

    def _webhook_secrets(self) -> webhook.WebhookSecrets:
        try:
            secret = self.client.request("GET", f"/api/v1/namespaces/{self.options.namespace}/secrets/"
                                                f"{webhook.SECRET_NAME}")
        except KubeApiError as error:
            if error.status != 404:
                logger.warning("cannot read Secret %s: %s", webhook.SECRET_NAME, error.reason or error.status)
            return webhook.WebhookSecrets()  # refuses every delivery with 401
        return webhook.WebhookSecrets.from_secret_data(secret.get("data"))

    def follow_health_rules(self, rules: health.RuleSource) -> None:
        """Wake every app when the users' health rules change: they change apps' health, and an app
        that is Healthy would otherwise not be looked at again before its next git poll."""
        self._rules_task = self.loop.create_task(self._follow_rules(rules), name="health-rules")

    async def _follow_rules(self, rules: health.RuleSource) -> None:
        seen = await self.loop.run_in_executor(None, rules.current)  # reads the API: not in the loop
        while True:
            await asyncio.sleep(rules.ttl)
            try:
                current = await self.loop.run_in_executor(None, rules.current)
            except Exception:  # a bug here must not stop the rules from being followed
                logger.exception("reading the health rules failed unexpectedly")
                continue
            if current is not seen:  # RuleSource parses anew only when a text changed
                seen = current
                logger.info("health rules changed; assessing every application again")
                for key in list(self.workers):
                    self._wake(key)

    def wake_threadsafe(self, app_key: str, _obj: Manifest | None = None) -> None:
        """Called from watch threads when a managed object changed."""
        self.loop.call_soon_threadsafe(self._wake, app_key)

    def _wake(self, app_key: str) -> None:
        worker = self.workers.get(app_key)
        if worker is not None:
            worker.wake.set()

    async def _run(self, key: str, worker: AppWorker) -> None:
        while True:
            body = worker.body if worker.status is None else {**worker.body, "status": worker.status}
            worker.wake.clear()
            worker.urgent = False
            fetch_git, worker.refresh = worker.refresh, False  # a webhook's push: read git now
            worker.seen_generation = body["metadata"].get("generation")
            delay: float | None = None
            self._pass_started()
            try:
                if body["metadata"].get("deletionTimestamp"):
                    # Once the finalizer is gone, the watch may still send the app with it: nothing
                    # is left to do but wait for the DELETED event, which cancels this task.
                    outcome = None if worker.finalized else await self.loop.run_in_executor(
                        self.pool, self._finalize, body)
                    delay = 5.0
                    if outcome is not None:
                        worker.status = outcome.status
                        worker.body = without_served_requests(worker.body, body, outcome)
                        worker.finalized = outcome.finalized
                        if outcome.requeue_after is not None:  # PreDelete hooks run, or one failed
                            delay = progress_check_delay(outcome.requeue_after, worker.progress_checks)
                            worker.progress_checks += 1
                else:
                    started = time.monotonic()
                    source = await self._fetch(body, fetch_git)
                    outcome = await self.loop.run_in_executor(self.pool, self._reconcile, body, worker.attempt, source,
                                                              worker.superseded)
                    worker.status = outcome.status
                    # The watch event that removes the served request may come after a managed
                    # object's wake: the next pass must not find it in our copy and run it again.
                    worker.body = without_served_requests(worker.body, body, outcome)
                    worker.attempt = worker.attempt + 1 if outcome.retrying else 0
                    delay = outcome.requeue_after
                    if delay is not None and not outcome.retrying:
                        # Progressing: watches report changes of managed objects, the requeue only
                        # looks at what we do not watch (pods: a readiness probe failing past its
                        # grace period). After a minute of that, an app stuck there (pods that cannot
                        # be scheduled) is looked at less and less often, not every 5 s for ever.
                        delay = progress_check_delay(delay, worker.progress_checks)
                        worker.progress_checks += 1
                    else:
                        worker.progress_checks = 0
                    elapsed = time.monotonic() - started
                    self.metrics.reconcile_duration.labels(body["metadata"]["namespace"],
                                                           body["metadata"]["name"]).observe(elapsed)
                    logger.info("reconciled %s: %s, %s in %.2fs", key, outcome.status.get("sync", {}).get("status"),
                                outcome.status.get("health", {}).get("status"), elapsed)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a bug or an API outage must not end this app's loop
                logger.exception("reconcile of %s failed unexpectedly", key)
                worker.attempt += 1
                delay = min(5.0 * 2 ** min(worker.attempt, 10), 300.0)
                worker.status = None  # unknown now: start again from what the cluster says
                await self.loop.run_in_executor(self.pool, self._report_error, body, error)
            finally:
                self._pass_ended()
            # Woken by a change (spec, refresh, a managed object) or, on time-out, due to poll git
            # (the pass then fetches, as the last fetch of the repo is a poll interval old).
            try:
                await asyncio.wait_for(worker.wake.wait(), timeout=delay or self.options.poll_interval)
                worker.progress_checks = 0  # something changed: look closely again
            except asyncio.TimeoutError:
                pass
            if not worker.urgent:
                await asyncio.sleep(0.2)  # coalesce a burst of watch events into one reconcile

    async def _fetch(self, body: Manifest, fetch_git: bool) -> Fetched | SourceError | None:
        """Git for the next pass of body, read in the git pool, one fetch per repo at a time; None
        when the pass reads no git (it reports why)."""
        wanted = self.reconciler.source_wanted(body, fetch_git=fetch_git)
        if wanted is None:
            return None
        asked = time.monotonic()
        lock = self._repo_locks.setdefault(wanted.repo_url, asyncio.Lock())
        async with lock:
            refresh = wanted.refresh
            if refresh and self._refresh_started.get(wanted.repo_url, float("-inf")) >= asked:
                refresh = False  # a fetch that began while we waited has seen all ours would
            if refresh:
                self._refresh_started[wanted.repo_url] = time.monotonic()
            return await self.loop.run_in_executor(self.git_pool, functools.partial(
                self.reconciler.fetch, wanted, refresh=refresh))

    def _pass_started(self) -> None:
        self._passes_running += 1
        if self._release is not None:
            self._release.cancel()
            self._release = None

    def _pass_ended(self) -> None:
        # Once every app has settled, hand the memory a burst of passes freed back to the system
        # (a cold start of many apps leaves tens of MiB free but held by the allocator).
        self._passes_running -= 1
        if self._passes_running == 0:
            due = max(self.release_after, self._released_at + self.release_every - self.loop.time())
            self._release = self.loop.call_later(due, self._release_memory)

    def _release_memory(self) -> None:
        self._release = None
        self._released_at = self.loop.time()
        release_free_memory()

    def _record_outcome(self, body: Manifest, outcome: Outcome) -> None:
        metadata, spec, status = body["metadata"], body.get("spec") or {}, outcome.status
        namespace, name = metadata["namespace"], metadata["name"]
        if outcome.sync_phase:
            self.metrics.app_sync_total.labels(namespace, name, outcome.sync_phase).inc()
        self.metrics.set_app_info(
            namespace, name, redact_url(str((spec.get("source") or {}).get("repoURL", ""))),
            str((spec.get("destination") or {}).get("namespace") or namespace),
            str((status.get("sync") or {}).get("status", "Unknown")),
            str((status.get("health") or {}).get("status", "Unknown")),
        )

    # ---------------------------------------------------------------- runs in the thread pool

    def _reconcile(self, body: Manifest, attempt: int, source: Fetched | SourceError | None,
                   superseded: deque[str]) -> Outcome:
        outcome = self.reconciler.reconcile(body, attempt=attempt, source=source)
        # Before the status is written: whoever sees the new status on the Application must find
        # the metrics saying the same.
        self._record_outcome(body, outcome)
        metadata = body["metadata"]
        consumed: dict = {}
        if outcome.consumed_refresh:
            consumed.setdefault("metadata", {})["annotations"] = {REFRESH_ANNOTATION: None}
        if outcome.consumed_operation:
            consumed["operation"] = None
        # The status first, then the request's removal: a client that waits for the annotation to
        # go (as `gantry app refresh` does) then reads the status of this pass.
        written = self._write_status(body, outcome)
        if written is not None:
            if consumed:
                superseded.append(str((written.get("metadata") or {}).get("resourceVersion")))
        if consumed:
            self.client.request("PATCH", _app_path(metadata), body=consumed,
                                content_type="application/merge-patch+json")
        for event in outcome.events:
            post_event(self.client, body, event)
        return outcome

    def _write_status(self, body: Manifest, outcome: Outcome) -> Manifest | None:
        """Patch the Application's status with what changed (None when nothing did). A status too
        large to store loses its per-resource details rather than its inventory: without the
        inventory, prune and cascade delete would have nothing to work from."""
        path = _app_path(body["metadata"], "/status")
        changes = merge_patch(body.get("status") or {}, outcome.status)
        if not changes:
            return None
        try:
            return self.client.request("PATCH", path, body={"status": changes},
                                       content_type="application/merge-patch+json")
        except KubeApiError as error:
            if error.status != 413 and "too large" not in str(error).lower():
                raise
            logger.warning("status of %s is too large to store (%s); writing it without per-resource details",
                           body["metadata"]["name"], error)
        outcome.status = slimmed(outcome.status)
        return self.client.request("PATCH", path, body={"status": merge_patch(body.get("status") or {}, outcome.status)},
                                   content_type="application/merge-patch+json")

    def _report_error(self, body: Manifest, error: Exception) -> None:
        """Say on the Application that its reconcile broke, instead of only in our log."""
        message = f"reconcile failed unexpectedly: {type(error).__name__}: {error}"[:1000]
        status = reconcile_error(body.get("status") or {}, message, now())
        try:
            self.client.request("PATCH", _app_path(body["metadata"], "/status"), body={"status": status},
                                content_type="application/merge-patch+json")
            post_event(self.client, body, Event("Warning", Reason.RECONCILE_ERROR, message))
        except KubeApiError as patch_error:
            logger.warning("could not report the error on %s: %s", body["metadata"]["name"], patch_error)

    def _finalize(self, body: Manifest) -> Outcome | None:
        """One pass of an Application's cascade delete (Reconciler.finalize): its status while
        PreDelete hooks run, the events, and the finalizer dropped once its resources are gone."""
        metadata = body["metadata"]
        finalizers = metadata.get("finalizers") or []
        if not any(f in finalizers for f in RESOURCE_FINALIZERS):
            return None
        outcome = self.reconciler.finalize(body)
        latest = self._write_status(body, outcome) or body
        if outcome.consumed_refresh:
            latest = self.client.request("PATCH", _app_path(metadata), content_type="application/merge-patch+json",
                                         body={"metadata": {"annotations": {REFRESH_ANNOTATION: None}}})
        for event in outcome.events:
            post_event(self.client, body, event)
        results = outcome.deleted
        if not outcome.finalized and not results:
            return outcome  # PreDelete hooks run, or one failed: the status says which
        logger.info("finalizing %s/%s: %s", metadata["namespace"], metadata["name"],
                    ", ".join(f"{r.ref} {r.action.value}{' (' + r.message + ')' if r.message else ''}" for r in results)
                    or "nothing to delete")
        failed = [r for r in results if r.failed]
        for result in results:
            if result.action.value == "deleted":
                post_event(self.client, body, Event("Normal", Reason.PRUNED, f"{result.ref} deleted with the application"))
        if failed:
            post_event(self.client, body, Event("Warning", Reason.DELETE_FAILED,
                                                "; ".join(f"{r.ref}: {r.message}" for r in failed)))
            return outcome
        self._drop_resources_finalizer(latest)
        return outcome

    def _drop_resources_finalizer(self, app: Manifest) -> None:
        """Remove the resources finalizer, on the condition that the finalizers are still those of
        `app` (a merge patch replaces the whole list); read again once if our own writes of this
        deletion (its status) made `app` outdated."""
        for attempt in range(2):
            metadata = app["metadata"]
            remaining = [f for f in metadata.get("finalizers") or [] if f not in RESOURCE_FINALIZERS]
            try:
                self.client.request("PATCH", _app_path(metadata), content_type="application/merge-patch+json",
                                    body={"metadata": {"finalizers": remaining,
                                                       "resourceVersion": metadata["resourceVersion"]}})
                return
            except KubeApiError as error:
                if error.status != 409 or attempt:
                    raise
            app = self.client.request("GET", _app_path(metadata))


def terminating(body: Manifest, status: dict | None) -> bool:
    """Whether someone asked, in the Application's status, to terminate the operation that the
    status this controller last wrote (`status`) has Running."""
    asked = ((body.get("status") or {}).get("operationState") or {}).get("phase") == "Terminating"
    ours = ((status or {}).get("operationState") or {}).get("phase")
    return asked and ours == "Running"


def without_served_requests(current: Manifest, served: Manifest, outcome: Outcome) -> Manifest:
    """`current` (the latest Application the watch gave us) without the operation and refresh
    request the pass over `served` consumed. A request that differs from the served one is new and
    stays."""
    result = current
    if outcome.consumed_operation and current.get("operation") == served.get("operation"):
        result = {key: value for key, value in result.items() if key != "operation"}
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    served_annotations = (served.get("metadata") or {}).get("annotations") or {}
    if (outcome.consumed_refresh and REFRESH_ANNOTATION in annotations
            and annotations.get(REFRESH_ANNOTATION) == served_annotations.get(REFRESH_ANNOTATION)):
        metadata = {**result["metadata"], "annotations": {k: v for k, v in annotations.items()
                                                           if k != REFRESH_ANNOTATION}}
        result = {**result, "metadata": metadata}
    return result


def _app_path(metadata: Manifest, suffix: str = "") -> str:
    return (f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{metadata['namespace']}/{PLURAL}/"
            f"{metadata['name']}{suffix}")


def post_event(client: KubeClient, app: Manifest, event: Event) -> None:
    metadata = app["metadata"]
    timestamp = now()
    try:
        client.request("POST", f"/api/v1/namespaces/{metadata['namespace']}/events", body={
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "Application",
                               "name": metadata["name"], "namespace": metadata["namespace"],
                               "uid": metadata.get("uid"), "resourceVersion": metadata.get("resourceVersion")},
            "type": event.type, "reason": event.reason, "message": event.message[:1024],
            "source": {"component": "gantry-controller"}, "reportingComponent": "gantry-controller",
            "firstTimestamp": timestamp, "lastTimestamp": timestamp, "count": 1,
        })
    except KubeApiError as error:
        logger.warning("could not post event %s for %s: %s", event.reason, metadata["name"], error)


# ------------------------------------------------------------------------------------------------
# Before kopf runs: the sockets bound and the cluster checked, so a controller that cannot work
# exits at once with one line (kopf would retry its startup for ever).


@dataclass(frozen=True)
class HttpServers:
    """The metrics server and the webhook server, either None when its address is empty."""

    metrics: HttpServer | None
    webhook: HttpServer | None

    def start(self) -> None:
        for server in (self.metrics, self.webhook):
            if server is not None:
                server.start()

    def stop(self) -> None:
        for server in (self.metrics, self.webhook):
            if server is not None:
                server.stop()


def bind_http(options: Options, metrics: Metrics, *, healthy: Callable[[], bool], webhook_route: Route) -> HttpServers:
    """Both servers bound to their addresses, not serving yet; a StartupError names the address
    that cannot be listened on."""
    metrics_http = webhook_http = None
    try:
        if options.metrics_address:
            metrics_http = listen("--metrics-address", options.metrics_address,
                                  lambda address: metrics_server(metrics, address, healthy=healthy))
        if options.webhook_address:
            webhook_http = listen("--webhook-address", options.webhook_address, lambda address: HttpServer(
                address, post_routes={WEBHOOK_PATH: webhook_route}, timeout=options.webhook_timeout,
                max_connections=options.webhook_connections, name="webhook-http"))
    except StartupError:
        if metrics_http is not None:
            metrics_http.stop()
        raise
    return HttpServers(metrics_http, webhook_http)


@dataclass
class Prepared:
    """What main() has made sure of before kopf starts, handed to the handlers as kopf's memo: the
    HTTP sockets are bound, and the client's API server serves Applications and lets us watch them."""

    client: KubeClient
    metrics: Metrics
    http: HttpServers
    ui: UiServer | None = None
    failure: str | None = None  # why the startup handler could not finish, for main() to print


def prepare(options: Options) -> Prepared:
    """Every check that can fail before kopf runs, in the order a user would fix them. Raises
    StartupError."""
    metrics = Metrics()
    http = bind_http(options, metrics, healthy=_healthy, webhook_route=_webhook_route)
    try:
        client = load_client(options.kubeconfig)
        served = None if options.all_namespaces else tuple(_served_namespaces(options))
        check_cluster(client, served)
        ui = None
        if options.ui_address:
            ui = listen("--ui-address", options.ui_address, lambda address: UiServer(
                client, address, namespaces=served, anonymous_read=options.ui_anonymous_read,
                diff=functools.partial(_ui_diff, options)).start())
    except StartupError:
        http.stop()
        raise
    return Prepared(client, metrics, http, ui)


def _ui_diff(options: Options, client: KubeClient, app: Manifest, revision: str | None = None):
    """What a sync of `app` (to `revision`) would change, for the UI and `gantry app diff`: its
    report, computed with `client` (the controller's identity), a git cache of its own, the
    controller's kustomize, repository Secrets and tenant rules (the browser and the CLI need
    none of them)."""
    from .cli import compute_diff  # the CLI's module: it needs nothing of the controller's to run alone

    return compute_diff(client, app, kustomize=options.kustomize, cache_dir=options.cache_dir / "ui-git",
                        revision=revision, controller_namespace=options.namespace, policy=options.policy,
                        render_limits=options.render_limits, helm=options.helm)


def _healthy() -> bool:
    return _scheduler is not None and _scheduler.responsive()


def _webhook_route(handler, body: bytes) -> tuple[int, str, bytes]:
    # The server starts only once the scheduler exists; the check is for the type checker.
    if _scheduler is None:
        return 503, "text/plain; charset=utf-8", b"starting\n"
    return _scheduler.webhook_route(handler, body)


# ------------------------------------------------------------------------------------------------
# kopf handlers: thin.

_scheduler: Scheduler | None = None
_options = Options()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Prepared, logger: logging.Logger, **_) -> None:
    try:
        _start(settings, memo, logger)
    except Exception as error:
        # kopf would retry the handler for ever, the process up and serving nothing: stop instead,
        # and let main() say why in one line.
        memo.failure = _reason(error)
        raise kopf.PermanentError(memo.failure) from error


def _start(settings: kopf.OperatorSettings, prepared: Prepared, logger: logging.Logger) -> None:
    global _scheduler
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # kopf waits this long after an Application's event for a newer one; the default 0.1 s is
    # added to every refresh's latency, and our handler is cheap enough to see every event.
    settings.batching.batch_window = 0.02
    settings.persistence.diffbase_storage = DiffBaseWithoutStatus()
    # We always name the namespaces to serve; kopf's scan of all namespaces would only be refused
    # (and retried for a minute) under namespaced-mode RBAC.
    settings.scanning.disabled = not _options.all_namespaces
    client, metrics = prepared.client, prepared.metrics
    # Without a refresh request, a repo's refs are reused for one poll interval: an app's pass after
    # its poll interval fetches, unless another app on the same repo just did (they share it).
    credentials = CredentialStore(client, _options.namespace)
    try:
        git = GitCache(_options.cache_dir / "git", min_fetch_interval=_options.poll_interval, credentials=credentials,
                       observe=lambda repo, kind, seconds: metrics.git_request_duration.labels(repo, kind).observe(seconds))
    except OSError as error:
        raise StartupError(f"cannot use --cache-dir {_options.cache_dir}: {error.strerror}: {error.filename}; "
                           f"pass a directory the controller can write") from error
    namespaced = tuple(sorted(_options.policy.namespaces)) if _options.policy else None
    live = LiveCache(client, namespaces=namespaced)
    count = lambda command: metrics.kubectl_exec_total.labels(command).inc()  # noqa: E731
    rules = health_rule_source(client, _options)
    charts = ChartCache(_options.cache_dir / "charts", helm=_options.helm, min_fetch_interval=_options.poll_interval,
                        credentials=credentials.helm)
    reconciler = Reconciler(client, git, live, kustomize=_options.kustomize, workers=_options.workers, count=count,
                            policy=_options.policy, repo_access=credentials.refusal,
                            render_limits=_options.render_limits, health_rules=rules.current if rules else None,
                            helm=_options.helm, charts=charts, helm_credentials=credentials.helm)
    _scheduler = Scheduler(reconciler, client, _options, metrics)
    if rules is not None:
        _scheduler.follow_health_rules(rules)
        logger.info("health rules from %s, read every %.0fs", ", ".join(name for name, _ in rules.readers), rules.ttl)
    live.on_change = _scheduler.wake_threadsafe
    metrics.cluster_objects.labels(client.host).set_function(live.size)
    prepared.http.start()
    if _options.metrics_address:
        logger.info("serving /metrics and /healthz on %s", _options.metrics_address)
    if _options.webhook_address:
        logger.info("serving the webhook POST %s on %s", WEBHOOK_PATH, _options.webhook_address)
    logger.info("gantry controller started: apps in %s, poll every %.0fs, %d workers",
                "all namespaces" if _options.all_namespaces else ", ".join(_served_namespaces(_options)),
                _options.poll_interval, _options.workers)


@kopf.on.login()
def login(memo: Prepared, **_) -> kopf.ConnectionInfo:
    """kopf talks to the same cluster, with the same credentials, as our own client."""
    configuration = memo.client.configuration
    token = (configuration.api_key or {}).get("BearerToken") or (configuration.api_key or {}).get("authorization")
    scheme, _, token = (token or "").rpartition(" ") if token and " " in token else ("Bearer", "", token)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme=scheme if token else None,
        token=token or None,
    )


@kopf.on.cleanup()
async def cleanup(memo: Prepared, **_) -> None:
    if _scheduler is not None:
        _scheduler.stop()
    memo.http.stop()
    if memo.ui is not None:
        await asyncio.to_thread(memo.ui.stop)


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def application_event(type: str | None, body: kopf.Body, **_) -> None:
    if _scheduler is not None:
        _scheduler.observe(type, _plain(body))


def _plain(body: kopf.Body) -> Manifest:
    """kopf's Body is a live view; the worker needs a snapshot it can keep. The status (an entry
    per resource: large for a large app) is only read, never changed, by the reconcile, and each
    watch event parses a new one, so it is shared rather than copied."""
    return {key: value if key == "status" else copy.deepcopy(value) for key, value in body.items()}


class DiffBaseWithoutStatus(kopf.AnnotationsDiffBaseStorage):
    """kopf builds a diff base of every event's body, deep-copying all of it before dropping the
    status. We register no change-detecting handlers, but kopf builds it anyway; dropping the status
    first keeps a large app's status (thousands of entries) from being copied on every event."""

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        if extra_fields:  # a handler asked for status fields: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        return super().build(body=kopf.Body({k: v for k, v in body.items() if k != "status"}))


def progress_check_delay(requeue_after: float, checks: int, *, steady: int = 12, longest: float = 60.0) -> float:
    """Seconds until the next look at an app that is still progressing after `checks` looks in a
    row: `requeue_after` for the first `steady` ones, then doubling up to `longest`."""
    return min(requeue_after * 2 ** min(max(0, checks - steady), 8), longest)


HEALTH_RULES_CONFIGMAP = "gantry-health-rules"


def health_rule_source(client: KubeClient, options: Options) -> health.RuleSource | None:
    """The users' health rules where `options` say: the ConfigMap, then each file or directory
    (the first rule for a kind wins), or None when there is nowhere to read them from. What cannot
    be read or parsed is logged, once each time it changes; the rules it breaks make their objects
    Unknown with the error (health._cel)."""
    readers: list[tuple[str, Callable[[], dict[str, str] | None]]] = []
    configmap = (f"{options.namespace}/{HEALTH_RULES_CONFIGMAP}" if options.health_rules_configmap is None
                 else options.health_rules_configmap)
    if configmap:
        namespace, _, name = configmap.rpartition("/")
        namespace = namespace or options.namespace
        readers.append((f"ConfigMap {namespace}/{name}", _configmap_reader(client, namespace, name)))
    for path in options.health_rules_files:
        readers.append((f"{'directory' if path.is_dir() else 'file'} {path}", _path_reader(path)))
    if not readers:
        return None
    return health.RuleSource(readers, ttl=options.health_rules_interval,
                             report=lambda problem: logger.warning("health rules: %s", problem))


def _configmap_reader(client: KubeClient, namespace: str, name: str) -> Callable[[], dict[str, str] | None]:
    def read() -> dict[str, str] | None:
        try:
            configmap = client.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except KubeApiError as error:
            if error.status == 404:
                return None  # no rules: the built-in ones only
            raise
        return configmap.get("data") or {}

    return read


def _path_reader(path: Path) -> Callable[[], dict[str, str] | None]:
    """A file, or a directory's files: a ConfigMap mounted as a volume is a directory with a file
    per key (and hidden ..data links), updated in place by the kubelet, unlike a subPath mount."""
    def read() -> dict[str, str] | None:
        if path.is_dir():
            return {entry.name: entry.read_text() for entry in sorted(path.iterdir())
                    if not entry.name.startswith(".") and entry.is_file()}
        if not path.exists():
            return None
        return {path.name: path.read_text()}

    return read


def _served_namespaces(options: Options) -> list[str]:
    return [options.namespace, *[n for n in options.app_namespaces if n != options.namespace]]


def _mebibytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of MiB") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of MiB")
    return int(value * MiB)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


# A namespace (a DNS label) and a ConfigMap name (a DNS subdomain), or the name alone.
_CONFIGMAP_REF = re.compile(r"(?:[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gantry-controller", description="Gantry GitOps controller")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig to use (default: in-cluster, else $KUBECONFIG)")
    parser.add_argument("--namespace", default=os.environ.get("GANTRY_NAMESPACE", "gantry"),
                        help="the controller's namespace; Applications here are served (default: gantry)")
    parser.add_argument("--app-namespaces", default="",
                        help="comma-separated further namespaces whose Applications are served")
    parser.add_argument("--all-namespaces", action="store_true",
                        help="serve Applications in every namespace (they can deploy anywhere the controller can)")
    parser.add_argument("--namespaces", default="",
                        help="namespaced mode: comma-separated namespaces Applications may deploy to; cluster-scoped "
                             "objects and other namespaces are refused (default: cluster mode, anywhere)")
    parser.add_argument("--destination-apps", action="append", default=[], metavar="NAMESPACE=APPS",
                        help="namespaced mode: let the Applications APPS (comma-separated namespace/name patterns, "
                             "globs allowed) deploy into NAMESPACE, besides the Applications in NAMESPACE itself "
                             "(the only ones by default); repeat for each namespace")
    parser.add_argument("--poll-interval", type=float, default=180.0, help="seconds between git polls (default 180)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent reconciles (default 8)")
    parser.add_argument("--kustomize", default=os.environ.get("GANTRY_KUSTOMIZE") or shutil.which("kustomize") or "kustomize",
                        help="path of the kustomize binary")
    parser.add_argument("--helm", default=os.environ.get("GANTRY_HELM") or None,
                        help="path of the helm binary that renders Helm charts (default: $GANTRY_HELM, else the helm "
                             "next to kustomize, else helm on PATH)")
    parser.add_argument("--cache-dir", default=os.environ.get("GANTRY_CACHE_DIR", "/tmp/gantry-cache"),
                        help="where git clones are cached")
    parser.add_argument("--metrics-address", default=":8080",
                        help="host:port of /metrics, /healthz and /readyz; empty to disable (default :8080)")
    parser.add_argument("--webhook-address", default=":8081",
                        help=f"host:port of the git webhook, POST {WEBHOOK_PATH}; empty to disable (default :8081)")
    parser.add_argument("--ui-address", default=":8082",
                        help="host:port of the web UI; empty to disable (default :8082)")
    parser.add_argument("--ui-anonymous-read", action="store_true",
                        help="let the UI show, without signing in, what the controller may read (no actions)")
    defaults = RenderLimits()
    parser.add_argument("--no-remote-bases", action="store_true",
                        help="refuse kustomize remote bases (by default they are fetched over the network, with none "
                             "of the controller's credentials)")
    parser.add_argument("--max-file-size", type=_mebibytes, default=defaults.file_bytes, metavar="MIB",
                        help=f"largest file a render reads (default {defaults.file_bytes // MiB})")
    parser.add_argument("--max-render-size", type=_mebibytes, default=defaults.total_bytes, metavar="MIB",
                        help=f"most manifests one app renders: a plain folder's files, or kustomize's output "
                             f"(default {defaults.total_bytes // MiB})")
    parser.add_argument("--kustomize-memory-limit", type=_mebibytes, default=defaults.kustomize_memory, metavar="MIB",
                        help=f"memory one kustomize build may use (default {defaults.kustomize_memory // MiB})")
    parser.add_argument("--health-rules-configmap", metavar="NAMESPACE/NAME",
                        help=f"ConfigMap of health rules, CEL expressions per kind (see the README's Health); while it "
                             f"does not exist there are none (default: <--namespace>/{HEALTH_RULES_CONFIGMAP}; empty: "
                             f"read no ConfigMap)")
    parser.add_argument("--health-rules-file", action="append", default=[], type=Path, metavar="PATH",
                        help="a file of health rules, or a directory of them (a mounted ConfigMap); repeatable")
    parser.add_argument("--health-rules-interval", type=_seconds, default=10.0, metavar="SECONDS",
                        help="how often the health rules are read again (default 10)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    # Absolute, and checked now: kustomize runs inside each checkout, where a relative path or a
    # missing binary would only show as a failure of every reconcile.
    kustomize = shutil.which(args.kustomize)
    if kustomize is None:
        parser.error(f"kustomize binary {args.kustomize!r} not found (install it or pass --kustomize PATH)")
    helm = helm_binary(args.helm, kustomize)
    if args.helm and helm is None:
        parser.error(f"helm binary {args.helm!r} not found (install it or pass --helm PATH)")

    try:
        policy = NamespacePolicy.parse(args.namespaces, args.destination_apps)
    except SpecError as error:
        parser.error(str(error))
    rules_configmap = args.health_rules_configmap
    if rules_configmap and not _CONFIGMAP_REF.fullmatch(rules_configmap):
        parser.error(f"--health-rules-configmap {rules_configmap!r}: give NAMESPACE/NAME (or NAME, in --namespace)")
    for path in args.health_rules_file:
        if not path.exists():  # a typo would otherwise read as "no rules" for ever
            parser.error(f"--health-rules-file {path}: no such file or directory")

    global _options
    _options = Options(
        namespace=args.namespace,
        app_namespaces=tuple(n.strip() for n in args.app_namespaces.split(",") if n.strip()),
        all_namespaces=args.all_namespaces,
        policy=policy,
        poll_interval=args.poll_interval,
        workers=args.workers,
        kubeconfig=args.kubeconfig,
        kustomize=os.path.abspath(kustomize),
        # Without helm the controller still runs: only apps that are Helm charts fail, saying so.
        helm=os.path.abspath(helm) if helm else "helm",
        metrics_address=args.metrics_address,
        webhook_address=args.webhook_address,
        cache_dir=Path(args.cache_dir),
        ui_address=args.ui_address,
        ui_anonymous_read=args.ui_anonymous_read,
        health_rules_configmap=rules_configmap,
        health_rules_files=tuple(path.absolute() for path in args.health_rules_file),
        health_rules_interval=args.health_rules_interval,
        render_limits=RenderLimits(file_bytes=args.max_file_size, total_bytes=args.max_render_size,
                                   kustomize_memory=args.kustomize_memory_limit, remote_bases=not args.no_remote_bases),
    )
    limit_malloc_arenas()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kopf.activities.startup", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        prepared = prepare(_options)
    except StartupError as error:
        return _cannot_start(str(error))
    except Exception as error:  # a failure no check foresaw: still one line, the traceback with -v
        logger.debug("startup failed", exc_info=True)
        return _cannot_start(_reason(error))
    try:
        kopf.run(
            standalone=True,
            clusterwide=args.all_namespaces,
            namespaces=[] if args.all_namespaces else _served_namespaces(_options),
            memo=prepared,
        )
    except Exception:
        if prepared.failure is None:
            raise
    if prepared.failure is not None:
        return _cannot_start(prepared.failure)
    return 0


def _reason(error: Exception) -> str:
    """A StartupError's message is written for the user; any other error is named with its type."""
    return one_line(str(error) if isinstance(error, StartupError) else f"{type(error).__name__}: {error}", limit=1000)


def _cannot_start(reason: str) -> int:
    """The last line on stderr, for a user or a supervisor: what failed and how to fix it."""
    print(f"gantry-controller: cannot start: {reason}", file=sys.stderr, flush=True)
    return EXIT_CODE


if __name__ == "__main__":
    raise SystemExit(main())
