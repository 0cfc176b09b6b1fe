"""One reconcile of one Application: source → render → diff → sync → health → status.

Guards come in a fixed order, as in Flux's kustomize-controller: invalid spec (stalled until edited),
source, render, dry-run; any of them failing marks the app Failed and returns before anything is
applied or pruned, so a broken commit never touches what runs. The result is a status value and
the events to post; operator.py writes them. No kopf here.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import health as health_stage
from . import plan as plan_stage
from . import status as status_stage
from .cache import LiveCache
from .diff import DiffResult, Differ, ObjectDiff, crd_kinds, owned_elsewhere, prepare, unserved_message
from .kube import KubeApiError, KubeClient, UnservedApiError
from .model import (
    ARGOCD_FINALIZER,
    REFRESH_ANNOTATION,
    RESOURCE_FINALIZERS,
    Action,
    AppSpec,
    ApplyFailure,
    HealthResult,
    HealthStatus,
    KustomizeOverrides,
    Manifest,
    NamespacePolicy,
    ObjectRef,
    RenderError,
    RetryPolicy,
    SourceError,
    SpecError,
    SyncOptions,
    SyncStatus,
)
from .operation import Operation, OperationRunner, Work
from .render import RenderLimits, load_yaml, render
from .source import GitCache, redact_url
from .sync import InventoryEntry, ResourceResult, Syncer, inventory_of, stage

logger = logging.getLogger(__name__)
# Rendered and prepared objects kept for the next pass, in all: a few KiB each.
CACHED_OBJECTS = 50_000
DEFAULT_RETRY = RetryPolicy(limit=-1, backoff_seconds=10, factor=2, max_backoff_seconds=300)


def now() -> str:
    return status_stage.timestamp()


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    """What one reconcile decided: the new status and what the operator must do about it."""

    status: dict
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds; None: wait for the next change or poll
    retrying: bool = False  # requeued because of a failure: the next pass counts as a retry
    consumed_refresh: bool = False
    consumed_operation: bool = False
    sync_phase: str | None = None  # Succeeded | Failed when this pass ran a sync


@dataclass(frozen=True)
class Fetched:
    """What git gave for one pass: the commit a revision names and the tree checked out at it."""

    commit: str
    checkout: Path
    metadata: dict = field(default_factory=dict)  # the commit's author, date and subject line


@dataclass(frozen=True)
class SourceWanted:
    """The git read the next pass of an Application needs (see Reconciler.source_wanted)."""

    repo_url: str
    revision: str
    refresh: bool  # fetch even if the repo was fetched less than a poll interval ago
    app_namespace: str  # whose credentials the fetch may use depends on it


@dataclass(frozen=True)
class Request:
    """Why this reconcile runs, read off the Application by the operator."""

    refresh: str | None = None  # "normal" | "hard" from the refresh annotation
    sync_revision: str | None = None  # operation.sync.revision
    sync_prune: bool = False  # operation.sync.prune
    sync_requested: bool = False  # operation.sync present
    # operation.sync.source: sync this source instead of spec.source, as Argo CD's rollback does
    # with the source a history entry recorded (its path may have changed since).
    sync_source: dict | None = None
    # operation.initiatedBy (Argo CD's shape): who asked, {username: …}; None for automated syncs
    initiated_by: dict | None = None

    @classmethod
    def of(cls, body: Manifest) -> "Request":
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        sync = ((body.get("operation") or {}).get("sync"))
        source = (sync or {}).get("source")
        return cls(
            refresh=annotations.get(REFRESH_ANNOTATION),
            sync_revision=(sync or {}).get("revision") or None,
            sync_prune=bool((sync or {}).get("prune", False)),
            sync_requested=sync is not None,
            sync_source=source if isinstance(source, dict) and source else None,
            initiated_by=_initiator((body.get("operation") or {}).get("initiatedBy")) if sync is not None else None,
        )


def _initiator(given: object) -> dict:
    """Who asked for a sync, as operationState and history record it: the user name the request
    gave (a short string), else only that it was asked for by hand."""
    username = given.get("username") if isinstance(given, dict) else None
    return {"username": username[:256]} if isinstance(username, str) and username else {"automated": False}


class Reconciler:
    """Holds what reconciles share: the API client, git cache, diff cache, live cache."""

    def __init__(self, client: KubeClient, git: GitCache, live: LiveCache, *, kustomize: str = "kustomize",
                 workers: int = 8, count: Callable[[str], None] | None = None,
                 policy: NamespacePolicy | None = None,
                 repo_access: Callable[[str, str], str | None] | None = None,
                 render_limits: RenderLimits = RenderLimits(),
                 health_rules: Callable[[], health_stage.UserRules] | None = None) -> None:
        """count(command) is called for every apply, dry-run and delete request (metrics).
        policy: namespaced mode (--namespaces): which Applications may deploy into which namespaces;
        cluster-scoped objects are refused. None: cluster mode.
        repo_access(repo URL, app namespace): why Applications there may not read that repository
        (another team's private one), or None (credentials.CredentialStore.refusal).
        render_limits: what one render may read and spend (render.RenderLimits).
        health_rules: the users' health rules as they are now (health.RuleSource.current)."""
        self.client = client
        self.policy = policy
        self.repo_access = repo_access
        self.git = git
        self.live = live
        self.kustomize = kustomize
        self.render_limits = render_limits
        self.health_rules = health_rules
        self.differ = Differ(client, workers=workers, count=count, keep_predicted=False)
        self.syncer = Syncer(client, workers=workers, count=count)
        self.runner = OperationRunner(client, self.syncer, live, self._health_context)
        self._renders: OrderedDict[tuple, list[Manifest] | RenderError] = OrderedDict()
        self._prepared: OrderedDict[tuple, list[Manifest]] = OrderedDict()
        self._render_lock = threading.Lock()

    # ------------------------------------------------------------------ the reconcile

    def reconcile(self, body: Manifest, *, attempt: int = 0, source: Fetched | SourceError | None = None) -> Outcome:
        """attempt: consecutive failed passes before this one (for retry backoff); source: what
        fetch() gave for source_wanted(body), when the caller read git already (the operator does,
        outside the reconcile workers, so that a slow repo holds none of them); without it the
        pass reads git itself."""
        started = now()
        outcome = self._reconcile(body, attempt=attempt, source=source)
        request = Request.of(body)
        if (request.sync_requested and not outcome.consumed_operation and not outcome.retrying
                and not plan_stage.running(outcome.status.get("operationState"))):
            # A requested sync that failed before applying anything (bad revision, broken commit)
            # is finished, Failed, as Argo CD finishes it; left pending it would be retried for ever.
            message = outcome.status.get("message") or "sync failed"
            outcome.status["operationState"] = {
                "phase": "Failed", "message": message, "startedAt": started, "finishedAt": now(),
                "operation": {"sync": {k: v for k, v in (("revision", request.sync_revision),
                                                         ("prune", request.sync_prune)) if v}},
            }
            outcome.consumed_operation = True
            outcome.sync_phase = "Failed"
            outcome.events.append(Event("Warning", "SyncFailed", f"sync failed: {message}"))
        return outcome

    def _reconcile(self, body: Manifest, *, attempt: int, source: Fetched | SourceError | None) -> Outcome:
        metadata = body["metadata"]
        previous = body.get("status") or {}
        request = Request.of(body)
        status: dict = {
            "observedGeneration": metadata.get("generation"),
            "reconciledAt": now(),
            "history": previous.get("history") or [],
        }
        outcome = Outcome(status, consumed_refresh=request.refresh is not None)

        try:
            spec = self._spec(body, request)
        except SpecError as error:
            # Stalled: retrying cannot help until someone edits the Application.
            return self._failed(outcome, previous, "InvalidSpecError", str(error), health=HealthStatus.UNKNOWN)

        if not self._destination_allowed(spec):
            return self._failed(outcome, previous, "InvalidSpecError",
                                "destination " + self.policy.refusal(spec.key, spec.destination_namespace),
                                health=HealthStatus.UNKNOWN)

        if source is None:
            wanted = self._source_wanted(body, request, spec, fetch_git=False)
            source = self.fetch(wanted)
        if isinstance(source, SourceError):
            outcome = self._failed(outcome, previous, "ComparisonError", str(source))
            if source.transient:
                outcome.requeue_after = self._retry_delay(spec, attempt)
                outcome.retrying = outcome.requeue_after is not None
            return outcome
        commit, checkout = source.commit, source.checkout
        status["sync"] = {"revision": commit, "shortRevision": status_stage.short_revision(commit),
                          **({"revisionMetadata": source.metadata} if source.metadata else {})}

        try:
            objects = self._render(checkout, commit, spec.path, hard=request.refresh == "hard",
                                   recurse=spec.directory_recurse, overrides=spec.kustomize)
        except RenderError as error:
            return self._failed(outcome, previous, "ComparisonError", str(error), revision=commit)

        try:
            split = plan_stage.plan(objects)
        except plan_stage.PlanError as error:
            return self._dry_run_failed(outcome, previous, checkout, spec, commit, [ApplyFailure(error.ref, error.message)])
        objects = list(split.resources)
        hooks = list({id(t.manifest): t.manifest for t in split.hooks}.values())

        previous_entries = set(inventory_of(previous))
        auto_sync = spec.automated and request.sync_requested is False
        if not objects and previous_entries and auto_sync and not spec.allow_empty:
            # Most likely a mistake (a kustomization emptied, the wrong path): syncing it would
            # prune the whole app. Argo CD refuses this too unless allowEmpty is set.
            return self._failed(
                outcome, previous, "SyncError",
                f"{spec.path} renders no objects at {status_stage.short_revision(commit)}: an automated sync would "
                f"delete all {len(previous_entries)} resources of this app, so it is not done; restore the manifests, "
                f"sync by hand, or set syncPolicy.automated.allowEmpty: true to allow an empty app",
                revision=commit)

        refs = [ObjectRef.of(o) for o in objects]
        if (size := status_stage.inventory_bytes(refs, spec.destination_namespace)) > status_stage.STATUS_BUDGET:
            # The status write would be refused after the apply, leaving no inventory to prune or
            # cascade-delete from: refused before anything is written instead.
            return self._failed(outcome, previous, "ComparisonError",
                                f"{spec.path}: {status_stage.inventory_refusal(len(refs), size)}", revision=commit)

        # Namespaces and CRDs come first: without them the rest cannot even be dry-run.
        # Namespaced mode refuses the whole commit before anything is applied, like any broken commit.
        if forbidden := self._not_permitted([*objects, *hooks], spec):
            return self._dry_run_failed(outcome, previous, checkout, spec, commit, forbidden)
        if unserved := self._unserved(hooks):
            return self._dry_run_failed(outcome, previous, checkout, spec, commit, unserved)
        hook_targets = self._prepare(hooks, spec, (checkout, commit, "hooks")) if hooks else []
        prerequisites = [o for o in objects if stage(o) == 0]
        rest = [o for o in objects if stage(o) != 0]
        if unserved := self._unserved(prerequisites):
            return self._dry_run_failed(outcome, previous, checkout, spec, commit, unserved)
        targets = self._prepare(prerequisites, spec, (checkout, commit, "prerequisites"))
        # Custom resources whose CRD this render brings: until it is applied the cluster may not
        # serve them (an app not synced yet), so they count as missing, not broken.
        defined = crd_kinds(prerequisites)
        awaiting = [o for o in rest if (ObjectRef.of(o).group, o.get("kind")) in defined
                    and not self._served(o)] if defined else []
        if awaiting:
            rest = [o for o in rest if not any(o is a for a in awaiting)]
        # Checked before anything is applied, so that a broken commit does not get as far as
        # changing its Namespaces and CRDs.
        if unserved := self._unserved(rest):
            return self._dry_run_failed(outcome, previous, checkout, spec, commit, unserved)
        # Every object this pass may write, looked up once before anything is written: one that
        # another Application owns stops the commit, so it is neither taken over now nor pruned later.
        rest_targets = self._prepare(rest, spec, (checkout, commit, "rest", len(awaiting)))
        pre_lives, lives = self.live.lookup(targets), self.live.lookup(rest_targets)
        if conflicts := owned_elsewhere(spec.key, [*pre_lives.values(), *lives.values()],
                                        ours={e.ref for e in previous_entries}):
            return self._dry_run_failed(outcome, previous, checkout, spec, commit, conflicts)

        operation_state = previous.get("operationState") or {}
        generation_changed = previous.get("observedGeneration") != metadata.get("generation")
        decision = plan_stage.decide(plan_stage.Situation(
            automated=auto_sync, self_heal=spec.self_heal, requested=request.sync_requested, commit=commit,
            attempt=attempt, refreshed=request.refresh is not None, generation_changed=generation_changed,
            operation_state=operation_state))
        failed_before, may_auto_sync = decision.failed_before, decision.may_sync and not request.sync_requested
        wants_sync = decision.may_sync
        respect = spec.sync_options.respect_ignore_differences
        # Replace=true / Force=true: immutable changes are recreated instead of refused (traps.py)
        recreate = spec.sync_options.replace or spec.sync_options.force
        # Nothing of this app runs yet on a first sync: there is nothing a bad object could damage,
        # so objects that do not exist are applied without a dry run first (half the requests).
        first_sync = not previous_entries
        pre_diff = self.differ.diff(targets, lambda t: pre_lives[ObjectRef.of(t)], spec.ignore_differences,
                                    respect_ignores=respect, dry_run_missing=not first_sync,
                                    recreate=recreate)
        applied: list[ResourceResult] = []
        if wants_sync and not pre_diff.failures and not pre_diff.in_sync:
            if not first_sync:
                # Dry-run what already exists before changing Namespaces or CRDs: a commit the
                # API server refuses must not change them either. Kinds this render defines are
                # left to the dry run after the CRDs are applied, as their schema may be changing.
                early = [o for o in rest if (ObjectRef.of(o).group, o.get("kind")) not in defined]
                early_targets = self._prepare(early, spec, (checkout, commit, "early"))
                early_diff = self.differ.diff(early_targets, lambda t: lives[ObjectRef.of(t)],
                                              spec.ignore_differences, respect_ignores=respect, dry_run_missing=False,
                                              recreate=recreate)
                if early_diff.failures:
                    return self._dry_run_failed(outcome, previous, checkout, spec, commit, early_diff.failures)
            if spec.sync_options.create_namespace and self.policy is None:
                self._ensure_namespace(spec.destination_namespace)
            applied += self.syncer.apply(pre_diff.diffs, replace=spec.sync_options.replace)
            self._remember(applied)
        elif wants_sync and spec.sync_options.create_namespace and self.policy is None:
            self._ensure_namespace(spec.destination_namespace)

        diff = self.differ.diff(rest_targets, lambda t: lives[ObjectRef.of(t)], spec.ignore_differences,
                                respect_ignores=respect, dry_run_missing=not first_sync,
                                recreate=recreate)
        if awaiting:
            pending = prepare(awaiting, lambda o: defined[(ObjectRef.of(o).group, o["kind"])],
                              destination_namespace=spec.destination_namespace, app_key=spec.key)
            diff = DiffResult(diff.diffs + tuple(ObjectDiff(ObjectRef.of(t), t, None, None, False) for t in pending),
                              diff.failures)
            rest_targets = [*rest_targets, *pending]
        if failures := [*pre_diff.failures, *diff.failures]:
            return self._dry_run_failed(outcome, previous, checkout, spec, commit, failures)

        all_targets = [*targets, *rest_targets]
        stale = plan_stage.stale(previous_entries, all_targets)
        out_of_sync = not diff.in_sync or not pre_diff.in_sync or bool(stale)
        do_sync = decision.resume or request.sync_requested or (may_auto_sync and out_of_sync)
        pruned: list[ResourceResult] = []
        operation: Operation | None = None
        if do_sync:
            operation = (Operation.resumed(operation_state) if decision.resume else Operation(
                commit, request.sync_prune if request.sync_requested else spec.prune,
                request.initiated_by or {"automated": True}, now(), source=request.sync_source))
            ran = self.runner.run(operation, Work(
                plan_stage.plan([*all_targets, *hook_targets]), {d.ref: d for d in [*pre_diff.diffs, *diff.diffs]},
                stale, spec.key, replace=spec.sync_options.replace,
                propagation=spec.sync_options.prune_propagation_policy, applied=applied))
            ran_refs = {r.ref for r in ran.applied}
            applied = [*(r for r in applied if r.ref not in ran_refs), *ran.applied]
            pruned = ran.pruned
            # A sync asked for while a staged one runs waits for it to end (Argo CD refuses it).
            outcome.consumed_operation = request.sync_requested and not decision.resume
            self._record_operation(status, previous, checkout, spec, operation, applied, pruned, outcome)
        else:
            status["operationState"] = previous.get("operationState")

        # What is still stale after this pass stays listed (requiresPruning) until it is pruned.
        deleted = {r.ref for r in pruned if r.action is Action.DELETED}
        remaining_stale = [e for e in stale if e.ref not in deleted]
        outcome = self._summarise(outcome, previous, checkout, spec, commit, [*pre_diff.diffs, *diff.diffs],
                                  applied, remaining_stale, attempt)
        if operation is not None and operation.phase != "Succeeded" and not any(r.failed for r in applied):
            self._operation_progress(outcome, previous, spec, operation, attempt)
        if failed_before and out_of_sync and auto_sync:
            # Still the revision whose sync failed: say so, rather than a plain OutOfSync.
            message = (f"sync to {status_stage.short_revision(commit)} failed and is not retried: "
                       f"{operation_state.get('message') or 'see operationState'}; refresh the app, push a new "
                       f"commit or edit the Application to try again")
            status["sync"]["status"] = SyncStatus.FAILED.value
            status["conditions"] = [status_stage.condition("SyncError", message, status["reconciledAt"],
                                                           previous.get("conditions")), *status["conditions"]]
            status["message"] = status_stage.one_line(message)
            outcome.events = [e for e in outcome.events if e.reason != "OutOfSync"]
        return outcome

    # ------------------------------------------------------------------ git, ahead of a pass

    def source_wanted(self, body: Manifest, *, fetch_git: bool = False) -> SourceWanted | None:
        """The git read the next pass of body needs, or None when it reads none (an invalid spec,
        a destination namespaced mode refuses: the pass reports those). No I/O."""
        request = Request.of(body)
        try:
            spec = self._spec(body, request)
        except SpecError:
            return None
        if not self._destination_allowed(spec):
            return None
        return self._source_wanted(body, request, spec, fetch_git=fetch_git)

    def fetch(self, wanted: SourceWanted, *, refresh: bool | None = None) -> Fetched | SourceError:
        """The commit wanted.revision names and its checked-out tree; the error as a value, for the
        pass. refresh overrides wanted.refresh (the operator's, when another fetch just did it)."""
        try:
            if self.repo_access is not None and (refused := self.repo_access(wanted.repo_url, wanted.app_namespace)):
                # Transient, as an authentication failure is: the Secret may change (an
                # administrator grants the namespace) without the Application changing.
                return SourceError(refused, transient=True)
            commit = self.git.resolve(wanted.repo_url, wanted.revision,
                                      refresh=wanted.refresh if refresh is None else refresh)
            return Fetched(commit, self.git.checkout(wanted.repo_url, commit),
                           self.git.revision_metadata(wanted.repo_url, commit))
        except SourceError as error:
            return error

    @staticmethod
    def _source_wanted(body: Manifest, request: Request, spec: AppSpec, *, fetch_git: bool) -> SourceWanted:
        # A poll is not a refresh: a fetch of the same repo younger than the poll interval (made for
        # another app using it) is reused, so apps sharing a repo share its fetches. A refresh
        # request, a webhook's push, or an Application new or edited since its last pass reads git now.
        previous = body.get("status") or {}
        refresh = (fetch_git or request.refresh is not None
                   or previous.get("observedGeneration") != body["metadata"].get("generation"))
        state = previous.get("operationState") or {}
        if plan_stage.running(state):  # a staged sync goes on at the commit it started with
            revision = ((state.get("operation") or {}).get("sync") or {}).get("revision")
            if revision:
                return SourceWanted(spec.repo_url, revision, False, spec.namespace)
        return SourceWanted(spec.repo_url, request.sync_revision or spec.target_revision, refresh, spec.namespace)

    @staticmethod
    def _spec(body: Manifest, request: Request) -> AppSpec:
        metadata = body["metadata"]
        raw = body.get("spec") or {}
        state = (body.get("status") or {}).get("operationState") or {}
        source = (((state.get("operation") or {}).get("sync") or {}).get("source") if plan_stage.running(state)
                  else request.sync_source)
        if source:  # a rollback to a history entry's source (Argo CD's operation.sync.source)
            raw = {**raw, "source": {**(raw.get("source") or {}), **source}}
        return AppSpec.parse(metadata["name"], metadata["namespace"], raw)

    def _destination_allowed(self, spec: AppSpec) -> bool:
        return self.policy is None or self.policy.allows(spec.key, spec.destination_namespace)

    # ------------------------------------------------------------------ deletion

    def finalize(self, body: Manifest) -> list[ResourceResult]:
        """Cascade delete for an Application carrying Gantry's (or Argo CD's) resources finalizer."""
        finalizers = (body.get("metadata") or {}).get("finalizers") or []
        if not any(f in RESOURCE_FINALIZERS for f in finalizers):
            return []
        metadata = body["metadata"]
        key = f"{metadata['namespace']}/{metadata['name']}"
        inventory = inventory_of(body.get("status") or {})
        spec = body.get("spec") or {}
        try:
            options = SyncOptions.parse(list((spec.get("syncPolicy") or {}).get("syncOptions") or ()))
        except SpecError:
            options = SyncOptions()
        propagation = options.prune_propagation_policy
        for suffix in ("background", "foreground"):
            if f"{ARGOCD_FINALIZER}/{suffix}" in finalizers:
                propagation = suffix  # Argo CD's finalizer names the cascade's propagation policy
        results = self.syncer.prune(inventory, key, propagation=propagation)
        # The Application goes only once its resources have: foreground deletion keeps a Deployment
        # until its Pods are gone, and users expect `kubectl delete app` to mean the app is gone.
        deleted = [r.ref for r in results if r.action is Action.DELETED]
        entries = {e.ref: e for e in inventory}
        self.syncer.wait_deleted([entries[ref] for ref in deleted if ref in entries])
        return results

    # ------------------------------------------------------------------ pieces

    def _render(self, checkout: Path, commit: str, path: str, *, hard: bool, recurse: bool,
                overrides: KustomizeOverrides) -> list[Manifest]:
        key = (str(checkout), commit, path, recurse, overrides)
        with self._render_lock:
            if hard:
                self._renders.pop(key, None)
            cached = self._renders.get(key)
        if cached is None:
            try:
                cached = render(checkout, path, kustomize=self.kustomize, recurse=recurse, overrides=overrides,
                                limits=self.render_limits)
            except RenderError as error:
                cached = error
            with self._render_lock:
                self._renders[key] = cached
                _trim(self._renders, entries=64)
        if isinstance(cached, RenderError):
            raise cached
        return cached

    def _prepare(self, objects: list[Manifest], spec: AppSpec, key: tuple) -> list[Manifest]:
        """diff.prepare, remembered per commit, destination and app: a steady app then hands the
        differ the very same target objects every pass, whose content hashes it keeps."""
        # Everything the objects depend on besides the commit: how they were rendered, and where to.
        full_key = (*key, spec.path, spec.directory_recurse, spec.kustomize, spec.destination_namespace, spec.key)
        with self._render_lock:
            cached = self._prepared.get(full_key)
        if cached is None:
            cached = prepare(objects, self.client.resource_of, destination_namespace=spec.destination_namespace,
                             app_key=spec.key)
            with self._render_lock:
                self._prepared[full_key] = cached
                _trim(self._prepared, entries=256)
        return cached

    def _ensure_namespace(self, name: str) -> None:
        resource = self.client.resource("v1", "Namespace")
        if self.client.get(resource, name) is None:
            try:
                self.client.request("POST", resource.collection_path(),
                                    body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            except KubeApiError as error:
                if error.status != 409:
                    raise

    def _remember(self, results: Sequence[ResourceResult]) -> None:
        for result in results:
            if result.live is not None:
                self.live.record(result.live)

    @staticmethod
    def _retry_delay(spec: AppSpec, attempt: int) -> float | None:
        """Seconds until the next try after a transient failure; None once spec.syncPolicy.retry's
        limit is spent (then the next change or poll tries again). Without a retry policy,
        transient failures are retried for ever with a capped backoff, as a flaky network needs."""
        if spec.retry is None:
            return DEFAULT_RETRY.delay(attempt + 1)
        if spec.retry.limit >= 0 and attempt >= spec.retry.limit:
            return None
        return spec.retry.delay(attempt + 1)

    def _not_permitted(self, objects: Sequence[Manifest], spec: AppSpec) -> list[ApplyFailure]:
        if self.policy is None:
            return []
        listed = ", ".join(sorted(self.policy.namespaces))
        failures = []
        for obj in objects:
            ref = ObjectRef.of(obj)
            try:
                namespaced = self.client.resource_of(obj).namespaced
            except UnservedApiError:
                namespaced = obj.get("kind") not in ("Namespace", "CustomResourceDefinition") and bool(ref.namespace)
                if not namespaced and obj.get("kind") not in ("Namespace", "CustomResourceDefinition"):
                    continue  # reported as not served, with its hint, further on
            if not namespaced:
                failures.append(ApplyFailure(ref, f"cluster-scoped {ref.kind} is not allowed: the controller runs "
                                                  f"in namespaced mode (--namespaces {listed})"))
            elif not self.policy.allows(spec.key, namespace := ref.namespace or spec.destination_namespace):
                failures.append(ApplyFailure(ref, self.policy.refusal(spec.key, namespace)))
        return failures

    def _served(self, obj: Manifest) -> bool:
        try:
            self.client.resource_of(obj)
            return True
        except UnservedApiError:
            return False

    def _unserved(self, objects: Sequence[Manifest]) -> list[ApplyFailure]:
        failures = []
        for obj in objects:
            try:
                self.client.resource_of(obj)
            except UnservedApiError as error:
                failures.append(ApplyFailure(ObjectRef.of(obj), unserved_message(error)))
        return failures

    def _dry_run_failed(self, outcome: Outcome, previous: dict, checkout: Path, spec: AppSpec, commit: str,
                        failures: Sequence[ApplyFailure]) -> Outcome:
        """Failed before anything was applied; each cause named as `k8s/file.yaml: Kind ns/name: reason`."""
        return self._failed(outcome, previous, "ComparisonError",
                            describe_failures(checkout, spec.path, [(f.ref, f.message) for f in failures]),
                            revision=commit)

    def _failed(self, outcome: Outcome, previous: dict, condition_type: str, message: str, *,
                revision: str | None = None, health: HealthStatus | None = None) -> Outcome:
        status = outcome.status
        sync = {"status": SyncStatus.FAILED.value}
        # Git could not be read: what runs is still the previous revision, so the column keeps it.
        revision = revision or (previous.get("sync") or {}).get("revision")
        if revision:
            sync.update(revision=revision, shortRevision=status_stage.short_revision(revision))
            # Who made the commit, from this pass's read of git, else as the status said before.
            known = next((s.get("revisionMetadata") for s in (status.get("sync") or {}, previous.get("sync") or {})
                          if s.get("revision") == revision and s.get("revisionMetadata")), None)
            if known:
                sync["revisionMetadata"] = known
        status["sync"] = sync
        # Health stays what it was: the running resources were not touched.
        status["health"] = previous.get("health") or {"status": (health or HealthStatus.UNKNOWN).value}
        status["resources"] = previous.get("resources") or []
        status["summary"] = previous.get("summary") or {}
        status["operationState"] = previous.get("operationState")
        status["conditions"] = [status_stage.condition(condition_type, message, status["reconciledAt"],
                                                       previous.get("conditions"))]
        status["message"] = status_stage.one_line(message)
        if status_stage.one_line(message) != previous.get("message"):
            outcome.events.append(Event("Warning", condition_type, message))
        return outcome

    def _record_operation(self, status: dict, previous: dict, checkout: Path, spec: AppSpec, operation: Operation,
                          applied: Sequence[ResourceResult], pruned: Sequence[ResourceResult], outcome: Outcome) -> None:
        """The operation's state, its events and, once it succeeded, its history entry."""
        commit = operation.revision
        if operation.phase == "Failed" and any(r.failed for r in [*applied, *pruned]):
            operation.message = describe_failures(checkout, spec.path, [(r.ref, r.message) for r in [*applied, *pruned]
                                                                         if r.failed])
        status["operationState"] = operation.state()
        changed = [r for r in applied if r.action in (Action.CREATED, Action.CONFIGURED)]
        if changed:
            outcome.events.append(Event("Normal", "Synced", f"synced {status_stage.short_revision(commit)}: " + ", ".join(
                f"{r.ref} {r.action.value}" for r in changed[:20]) + (" …" if len(changed) > 20 else "")))
        for result in pruned:
            if result.action is Action.DELETED:
                outcome.events.append(Event("Normal", "Pruned", f"{result.ref} pruned: no longer in git"))
        if operation.phase in ("Running", "Terminating"):
            return
        outcome.sync_phase = operation.phase
        if operation.phase == "Failed":
            outcome.events.append(Event("Warning", "SyncFailed", f"sync to {status_stage.short_revision(commit)} failed: "
                                                                 f"{operation.message}"))
            return
        # A staged sync that ran over several passes changed things in each of them.
        changed_any = bool(changed) or any(e.get("action") in ("created", "configured") for e in operation.results)
        status["history"] = status_stage.history_after_sync(
            previous.get("history") or [], commit,
            {"repoURL": redact_url(spec.repo_url), "path": spec.path, "targetRevision": spec.target_revision},
            now(), changed=changed_any, limit=spec.history_limit,
            details={"initiatedBy": operation.initiated_by,
                     **({"revisionMetadata": status["sync"]["revisionMetadata"]}
                        if (status.get("sync") or {}).get("revisionMetadata") else {})})

    def _operation_progress(self, outcome: Outcome, previous: dict, spec: AppSpec, operation: Operation,
                            attempt: int) -> None:
        """A staged sync still running, or one a hook or an unhealthy object stopped: its message is
        the app's, as that is what a user must know first."""
        status = outcome.status
        if operation.phase in ("Running", "Terminating"):
            status["message"] = status_stage.one_line(operation.message)
            outcome.requeue_after = 2.0  # the watches of what it applied wake it sooner
            return
        message = f"sync failed: {operation.message}"
        status["sync"] = {**status["sync"], "status": SyncStatus.FAILED.value}
        status["conditions"] = [status_stage.condition("SyncError", message, status["reconciledAt"],
                                                       previous.get("conditions")),
                                *[c for c in status.get("conditions") or [] if c.get("type") != "SyncError"]]
        status["message"] = status_stage.one_line(message)
        # Retried only as the Application's retry policy says: a hook that failed is not re-run
        # for ever on its own, as in Argo CD.
        if spec.retry is not None:
            outcome.requeue_after = self._retry_delay(spec, attempt)
            outcome.retrying = outcome.requeue_after is not None

    def _summarise(self, outcome: Outcome, previous: dict, checkout: Path, spec: AppSpec, commit: str,
                   diffs: Sequence[ObjectDiff], applied: Sequence[ResourceResult],
                   stale: Sequence[InventoryEntry], attempt: int) -> Outcome:
        status = outcome.status
        applied_ok = {r.ref for r in applied if r.action in (Action.CREATED, Action.CONFIGURED)}
        failed = {r.ref: r.message for r in applied if r.failed}
        transient_only = bool(failed) and all(r.transient for r in applied if r.failed)
        context = self._health_context()
        resources, healths, lives = [], [], []
        for d in diffs:
            live = self.live.get(d.target) if d.ref in applied_ok else d.live
            in_sync = d.in_sync or d.ref in applied_ok
            result = (health_stage.assess(live, context) if live is not None
                      else HealthResult(HealthStatus.MISSING, "not created yet"))
            entry = status_stage.resource_entry(d.ref, d.target["apiVersion"].rpartition("/")[2],
                                                SyncStatus.SYNCED if in_sync else SyncStatus.OUT_OF_SYNC, result)
            if result is not None:
                healths.append(result)
            if d.ref in failed:
                entry["message"] = failed[d.ref]
            resources.append(entry)
            if live is not None:
                lives.append(live)
        for entry in stale:
            resources.append(status_stage.resource_entry(entry.ref, entry.api_version.rpartition("/")[2],
                                                         SyncStatus.OUT_OF_SYNC, None, requires_pruning=True))
        status["resources"] = resources
        app_health = health_stage.worst(healths) if healths else HealthStatus.HEALTHY
        worst_message = next((h.message for h in healths if h.status == app_health and h.message), "")
        status["health"] = {"status": app_health.value, **({"message": worst_message} if worst_message else {})}
        status["summary"] = status_stage.summary(lives)
        out_of_sync = [r for r in resources if r["status"] != SyncStatus.SYNCED.value]
        if failed:
            sync_status = SyncStatus.FAILED
            message = "sync failed: " + describe_failures(checkout, spec.path, list(failed.items()))
            # A failure that passes by itself (a namespace still being deleted) does not spend the
            # retry limit: it is retried with the default backoff until it is gone.
            outcome.requeue_after = (DEFAULT_RETRY.delay(attempt + 1) if transient_only
                                     else self._retry_delay(spec, attempt))
            outcome.retrying = outcome.requeue_after is not None
            if transient_only:
                message += " (retried until it passes)"
            elif not outcome.retrying and spec.automated:
                message += (f" (retried {attempt} time{'' if attempt == 1 else 's'}, the retry limit; not retried "
                            f"again until a refresh, a new commit or an edit of the Application)")
            status["conditions"] = [status_stage.condition("SyncError", message, status["reconciledAt"],
                                                           previous.get("conditions"))]
        else:
            sync_status = SyncStatus.OUT_OF_SYNC if out_of_sync else SyncStatus.SYNCED
            status["conditions"] = []
            if out_of_sync:
                names = ", ".join(f"{r['kind']}/{r['name']}" for r in out_of_sync[:5])
                more = f" and {len(out_of_sync) - 5} more" if len(out_of_sync) > 5 else ""
                why = "requires pruning" if all(r.get("requiresPruning") for r in out_of_sync) else "differs from git"
                count = f"{len(out_of_sync)} resource{'s' if len(out_of_sync) > 1 else ''}"
                if why == "differs from git" and len(out_of_sync) > 1:
                    why = "differ from git"
                message = f"{count} {why}: {names}{more}"
            else:
                message = f"synced to {status_stage.short_revision(commit)}"
                if app_health is not HealthStatus.HEALTHY and worst_message:
                    message += f"; {app_health.value.lower()}: {worst_message}"
        status["sync"] = {**(status.get("sync") or {}), "status": sync_status.value, "revision": commit,
                          "shortRevision": status_stage.short_revision(commit)}
        if spec.unsupported:
            # Argo CD fields this Application uses that Gantry does not act on: said, not dropped.
            warning = (f"{', '.join(spec.unsupported)}: not supported by Gantry and ignored; the objects are "
                       f"rendered and compared without {'it' if len(spec.unsupported) == 1 else 'them'}")
            status["conditions"].append(status_stage.condition("UnsupportedFieldWarning", warning,
                                                               status["reconciledAt"], previous.get("conditions")))
            if not any(c.get("type") == "UnsupportedFieldWarning" for c in previous.get("conditions") or ()):
                outcome.events.append(Event("Warning", "UnsupportedFieldWarning", warning))
        status["message"] = status_stage.one_line(message)
        if previous.get("sync", {}).get("status") != sync_status.value and sync_status is SyncStatus.OUT_OF_SYNC:
            outcome.events.append(Event("Normal", "OutOfSync", message))
        if not failed and app_health is HealthStatus.PROGRESSING:
            outcome.requeue_after = 5.0  # watches also wake us; this covers objects we do not watch
        return outcome

    def _health_context(self) -> health_stage.HealthContext:
        """The cluster's IngressClasses (None when they cannot be read: Ingresses then wait for an
        address rather than being called Healthy on a guess), and a lister of pods, asked only for
        workloads that are not ready, so that their health can name the failing pod and probe."""
        pods: dict[str, list[Manifest]] = {}

        def pods_in(namespace: str) -> list[Manifest]:
            if namespace not in pods:
                pods[namespace] = self.client.list(self.client.resource("v1", "Pod"), namespace)["items"]
            return pods[namespace]

        rules = self.health_rules() if self.health_rules else None
        try:
            resource = self.client.resource("networking.k8s.io/v1", "IngressClass")
            return health_stage.HealthContext.from_ingress_classes(self.client.list(resource)["items"],
                                                                   pods_in=pods_in, rules=rules)
        except (KubeApiError, UnservedApiError):
            return health_stage.HealthContext(ingress_classes=None, pods_in=pods_in, rules=rules)


def _sync_result_entry(result: ResourceResult) -> dict:
    status = {Action.CREATED: "Synced", Action.CONFIGURED: "Synced", Action.UNCHANGED: "Synced",
              Action.DELETED: "Pruned", Action.FAILED: "SyncFailed"}[result.action]
    entry = {"group": result.ref.group, "kind": result.ref.kind, "namespace": result.ref.namespace,
             "name": result.ref.name, "status": status, "action": result.action.value}
    if result.message:
        entry["message"] = result.message
    return entry


def _trim(cache: OrderedDict[tuple, Any], *, entries: int, objects: int = CACHED_OBJECTS) -> None:
    """Drop the oldest of `cache` until it holds at most `entries` entries and `objects` objects in
    all (the newest always stays): by entries alone, a few apps near the render limits would keep
    hundreds of MiB."""
    held = sum(len(value) for value in cache.values() if isinstance(value, list))
    while len(cache) > 1 and (len(cache) > entries or held > objects):
        _, dropped = cache.popitem(last=False)
        held -= len(dropped) if isinstance(dropped, list) else 0


def describe_failures(checkout: Path, path: str, failures: Sequence[tuple[ObjectRef, str]]) -> str:
    """`k8s/file.yaml: Kind ns/name: reason; …`: each refused object with the file that declares it,
    so the message says where to fix it (without a file when none under the path declares it)."""
    files = source_files(checkout, path, {ref for ref, _ in failures})
    return "; ".join(f"{files[ref]}: {ref}: {message}" if ref in files else f"{ref}: {message}"
                     for ref, message in failures)


def source_files(checkout: Path, path: str, refs: set[ObjectRef]) -> dict[ObjectRef, str]:
    """The repo-relative file under the app's path that declares each of refs (by kind and name),
    for those some file declares; each file is read once, however many refs are asked for."""
    wanted = {(ref.kind, ref.name): ref for ref in refs}
    found: dict[ObjectRef, str] = {}
    root = checkout.resolve()
    for file in sorted((checkout / path).rglob("*")):
        if len(found) == len(wanted):
            break
        if file.suffix not in (".yaml", ".yml", ".json") or not file.is_file():
            continue
        # Read as render reads: within its limits, and nothing a symlink leads to outside the repo.
        try:
            if file.stat().st_size > RenderLimits().file_bytes or not file.resolve().is_relative_to(root):
                continue
            documents = load_yaml(file.read_text(encoding="utf-8"), str(file.relative_to(checkout)))
        except (RenderError, UnicodeDecodeError, OSError):
            continue
        for document in documents:
            if not isinstance(document, dict):
                continue
            ref = wanted.get((document.get("kind"), (document.get("metadata") or {}).get("name")))
            if ref is not None and ref not in found:
                found[ref] = str(file.relative_to(checkout))
    return found
