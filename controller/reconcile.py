"""One reconcile of one Application: source → render → diff → sync → health → status.

Guards come in a fixed order, as in Flux's kustomize-controller: invalid spec (stalled until edited),
source, render, dry-run; any of them failing marks the app Failed and returns before anything is
applied or pruned, so a broken commit never touches what runs. The result is a status value and
the events to post; operator.py writes them. No kopf here.
"""

from __future__ import annotations

import logging
import threading
import time
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
from .operation import Operation, OperationRunner, Work, hook_target
from .charts import ChartCache
from .helm import CHART_FILE, Capabilities, ChartRender
from .render import RenderLimits, load_yaml, render
from .source import GitCache, RepoCredentials, redact_url
from .status import Event, Reason, Report
from .sync import InventoryEntry, ResourceResult, Syncer, inventory_of, stage

logger = logging.getLogger(__name__)
# Rendered and prepared objects kept for the next pass, in all: a few KiB each.
CACHED_OBJECTS = 50_000
DEFAULT_RETRY = RetryPolicy(limit=-1, backoff_seconds=10, factor=2, max_backoff_seconds=300)


def now() -> str:
    return status_stage.timestamp()


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
    report: Report | None = None  # the writer of `status` and `events` (status.Report)
    # A pass over an app being deleted (Reconciler.finalize): what it deleted, and whether all of
    # it is gone, so that the resources finalizer may go.
    deleted: list[ResourceResult] = field(default_factory=list)
    finalized: bool = False


class Refused(Exception):
    """A guard said no before anything was applied: the pass marks the app Failed with `reason`
    and `message` and returns (kustomize-controller's shape: mark the reason, return)."""

    def __init__(self, reason: Reason, message: str, *, revision: str | None = None,
                 health: HealthStatus | None = None, failures: Sequence[ApplyFailure] = (),
                 retry: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.revision, self.health = reason, message, revision, health
        self.failures = tuple(failures)  # the objects refused and why, when it was objects
        self.retry = retry  # a failure that may pass (git unreachable): retried as the policy says


@dataclass
class Desired:
    """The desired state of one pass, checked and prepared for the differ, with the live objects
    it maps to (Reconciler.desired)."""

    commit: str
    checkout: Path
    prerequisites: list[Manifest]  # Namespaces and CRDs, prepared: applied before the rest is dry-run
    rest: list[Manifest]  # every other object as rendered
    rest_targets: list[Manifest]  # the same, prepared
    pending: list[Manifest]  # custom resources of a CRD in this render, not served yet: to create
    defined: dict  # (group, kind) → Resource, for the kinds this render's CRDs define
    hooks: list[Manifest]  # prepared
    pre_lives: dict[ObjectRef, Manifest | None]
    lives: dict[ObjectRef, Manifest | None]
    previous_entries: set[InventoryEntry]

    @property
    def targets(self) -> list[Manifest]:
        """Every object of the desired state (hooks are not: they are run, not kept in sync)."""
        return [*self.prerequisites, *self.rest_targets, *self.pending]


@dataclass(frozen=True)
class Compared:
    """The desired state diffed against live: each object's diff (those to create among them),
    and the prerequisites applied on the way."""

    diffs: list[ObjectDiff]
    applied: list[ResourceResult]


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
    chart: str = ""  # a chart of the Helm repository at repo_url, revision its version or range
    pass_credentials: bool = False  # spec.source.helm.passCredentials, for the chart's download


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
                 health_rules: Callable[[], health_stage.UserRules] | None = None,
                 keep_predicted: bool = False, helm: str = "helm", charts: ChartCache | None = None,
                 helm_credentials: Callable[[str, str], RepoCredentials | None] | None = None) -> None:
        """count(command) is called for every apply, dry-run and delete request (metrics).
        policy: namespaced mode (--namespaces): which Applications may deploy into which namespaces;
        cluster-scoped objects are refused. None: cluster mode.
        repo_access(repo URL, app namespace): why Applications there may not read that repository
        (another team's private one), or None (credentials.CredentialStore.refusal).
        render_limits: what one render may read and spend (render.RenderLimits).
        health_rules: the users' health rules as they are now (health.RuleSource.current).
        keep_predicted: keep each dry run's answer, for a diff people read (cli.compute_diff).
        helm: the helm binary charts are rendered with; charts: where charts from Helm repositories
        are pulled to (None: such apps fail); helm_credentials(repository URL, app namespace): the
        credentials of a Helm repository Secret (type: helm) Applications there may use."""
        self.client = client
        self.policy = policy
        self.repo_access = repo_access
        self.git = git
        self.live = live
        self.kustomize = kustomize
        self.render_limits = render_limits
        self.health_rules = health_rules
        self.differ = Differ(client, workers=workers, count=count, keep_predicted=keep_predicted)
        self.syncer = Syncer(client, workers=workers, count=count)
        self.runner = OperationRunner(client, self.syncer, live, self._health_context)
        self._renders: OrderedDict[tuple, list[Manifest] | RenderError] = OrderedDict()
        self._prepared: OrderedDict[tuple, list[Manifest]] = OrderedDict()
        self._render_lock = threading.Lock()
        self.helm = helm
        self.charts = charts
        self.helm_credentials = helm_credentials
        self._capabilities: tuple[float, Capabilities] | None = None  # (monotonic time read, value)
        self._chart_renders: dict[str, ChartRender | None] = {}  # app key → its last render's, for _prepare

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
            sync = {k: v for k, v in (("revision", request.sync_revision), ("prune", request.sync_prune)) if v}
            outcome.report.request_failed(outcome.status.get("message") or "sync failed", started=started,
                                          finished=now(), sync=sync)
            outcome.consumed_operation = True
            outcome.sync_phase = "Failed"
        return outcome

    def _reconcile(self, body: Manifest, *, attempt: int, source: Fetched | SourceError | None) -> Outcome:
        """The guards in their fixed order (spec, destination, git, render, plan, what may be
        written), each refusal one Refused; then the sync pass."""
        previous = body.get("status") or {}
        request = Request.of(body)
        report = Report(previous, body["metadata"].get("generation"), now())
        outcome = Outcome(report.status, report.events, consumed_refresh=request.refresh is not None, report=report)
        spec: AppSpec | None = None
        try:
            spec = self.checked_spec(body, request)
            fetched = self._fetched(body, request, spec, source)
            report.revision(fetched.commit, fetched.metadata)
            desired = self.desired(spec, fetched, inventory_of(previous), hard=request.refresh == "hard",
                                   auto_sync=spec.automated and request.sync_requested is False)
        except Refused as refused:
            return self._refused(outcome, spec, refused, attempt)
        return self._sync_pass(outcome, body, request, spec, desired, attempt)

    def checked_spec(self, body: Manifest, request: Request) -> AppSpec:
        """The Application's spec, and whether its destination is allowed; raises Refused."""
        try:
            spec = self._spec(body, request)
        except SpecError as error:
            # Stalled: retrying cannot help until someone edits the Application.
            raise Refused(Reason.INVALID_SPEC, str(error), health=HealthStatus.UNKNOWN) from None
        if not self._destination_allowed(spec):
            raise Refused(Reason.INVALID_SPEC, "destination " + self.policy.refusal(spec.key, spec.destination_namespace),
                          health=HealthStatus.UNKNOWN)
        return spec

    def _fetched(self, body: Manifest, request: Request, spec: AppSpec,
                 source: Fetched | SourceError | None) -> Fetched:
        if source is None:
            source = self.fetch(self._source_wanted(body, request, spec, fetch_git=False))
        if isinstance(source, SourceError):
            raise Refused(Reason.COMPARISON_ERROR, str(source), retry=source.transient)
        return source

    def _refused(self, outcome: Outcome, spec: AppSpec | None, refused: Refused, attempt: int) -> Outcome:
        outcome.report.failed(refused.reason, refused.message, revision=refused.revision, health=refused.health)
        if refused.retry and spec is not None:
            outcome.requeue_after = self._retry_delay(spec, attempt)
            outcome.retrying = outcome.requeue_after is not None
        return outcome

    # ------------------------------------------------------------------ the desired state

    def desired(self, spec: AppSpec, fetched: Fetched, previous_entries: Sequence[InventoryEntry], *,
                hard: bool = False, auto_sync: bool = False) -> Desired:
        """What git wants of the cluster at `fetched`, checked by every guard that needs no dry
        run and prepared for the differ; raises Refused. The controller, `gantry app diff` and
        the web UI's diff all start here."""
        objects, hooks = self.rendered(spec, fetched, hard=hard)
        self._check_size(spec, fetched.commit, objects, previous_entries, auto_sync=auto_sync)
        desired = self._targets(spec, fetched, objects, previous_entries)
        desired.hooks = hooks
        return desired

    def rendered(self, spec: AppSpec, fetched: Fetched, *, hard: bool = False) -> tuple[list[Manifest], list[Manifest]]:
        """The render at `fetched` split into desired state (as rendered) and hooks (prepared),
        checked by the guards of the whole commit (annotations, namespaced mode, served hook
        kinds); raises Refused. desired() and the deletion of an app (its PreDelete hooks) start here."""
        commit, checkout = fetched.commit, fetched.checkout
        try:
            objects = self._render(checkout, commit, spec.path, hard=hard, recurse=spec.directory_recurse,
                                   overrides=spec.kustomize, chart=self._chart_render(spec, checkout))
            split = plan_stage.plan(objects)
        except RenderError as error:
            raise Refused(Reason.COMPARISON_ERROR, str(error), revision=commit) from None
        except plan_stage.PlanError as error:
            raise self._refusal(checkout, spec, commit, [ApplyFailure(error.ref, error.message)]) from None
        objects = list(split.resources)
        hooks = list({id(t.manifest): t.manifest for t in split.hooks}.values())
        # Namespaced mode refuses the whole commit before anything is applied, like any broken commit.
        for failures in (self._not_permitted([*objects, *hooks], spec), self._unserved(hooks)):
            if failures:
                raise self._refusal(checkout, spec, commit, failures)
        return objects, self._prepare(hooks, spec, (checkout, commit, "hooks")) if hooks else []

    def _check_size(self, spec: AppSpec, commit: str, objects: Sequence[Manifest],
                    previous_entries: Sequence[InventoryEntry], *, auto_sync: bool) -> None:
        if not objects and previous_entries and auto_sync and not spec.allow_empty:
            # Most likely a mistake (a kustomization emptied, the wrong path): syncing it would
            # prune the whole app. Argo CD refuses this too unless allowEmpty is set.
            raise Refused(Reason.SYNC_ERROR, (
                f"{spec.path} renders no objects at {status_stage.short_revision(commit)}: an automated sync would "
                f"delete all {len(previous_entries)} resources of this app, so it is not done; restore the manifests, "
                f"sync by hand, or set syncPolicy.automated.allowEmpty: true to allow an empty app"), revision=commit)
        refs = [ObjectRef.of(o) for o in objects]
        if (size := status_stage.inventory_bytes(refs, spec.destination_namespace)) > status_stage.STATUS_BUDGET:
            # The status write would be refused after the apply, leaving no inventory to prune or
            # cascade-delete from: refused before anything is written instead.
            raise Refused(Reason.COMPARISON_ERROR, f"{spec.path}: {status_stage.inventory_refusal(len(refs), size)}",
                          revision=commit)

    def _targets(self, spec: AppSpec, fetched: Fetched, objects: Sequence[Manifest],
                 previous_entries: Sequence[InventoryEntry]) -> Desired:
        """Namespaces and CRDs first (without them the rest cannot even be dry-run), the rest, and
        the custom resources whose CRD this render brings and the cluster does not serve yet."""
        commit, checkout = fetched.commit, fetched.checkout
        prerequisites = [o for o in objects if stage(o) == 0]
        rest = [o for o in objects if stage(o) != 0]
        if unserved := self._unserved(prerequisites):
            raise self._refusal(checkout, spec, commit, unserved)
        targets = self._prepare(prerequisites, spec, (checkout, commit, "prerequisites"))
        # Until its CRD is applied the cluster may not serve them (an app not synced yet): they
        # count as missing, not broken.
        defined = crd_kinds(prerequisites)
        awaiting = [o for o in rest if (ObjectRef.of(o).group, o.get("kind")) in defined
                    and not self._served(o)] if defined else []
        if awaiting:
            rest = [o for o in rest if not any(o is a for a in awaiting)]
        # Checked before anything is applied, so that a broken commit does not get as far as
        # changing its Namespaces and CRDs.
        if unserved := self._unserved(rest):
            raise self._refusal(checkout, spec, commit, unserved)
        # Every object this pass may write, looked up once before anything is written: one that
        # another Application owns stops the commit, so it is neither taken over now nor pruned later.
        rest_targets = self._prepare(rest, spec, (checkout, commit, "rest", len(awaiting)))
        pre_lives, lives = self.live.lookup(targets), self.live.lookup(rest_targets)
        if conflicts := owned_elsewhere(spec.key, [*pre_lives.values(), *lives.values()],
                                        ours={e.ref for e in previous_entries}):
            raise self._refusal(checkout, spec, commit, conflicts)
        pending = prepare(awaiting, lambda o: defined[(ObjectRef.of(o).group, o["kind"])],
                          destination_namespace=spec.destination_namespace, app_key=spec.key) if awaiting else []
        return Desired(commit, checkout, targets, rest, rest_targets, pending, defined, [], pre_lives, lives,
                       set(previous_entries))

    def compare(self, spec: AppSpec, desired: Desired, *, apply_prerequisites: bool,
                first_sync: bool = False) -> Compared:
        """Dry-run diffs of the desired state against live; with `apply_prerequisites`, the
        Namespaces and CRDs that differ are applied between the two dry runs (the rest cannot
        be dry-run before them). `first_sync`: nothing of the app runs yet, so what does not
        exist is not dry-run (its errors surface when it is applied). Raises Refused for what
        the API server refuses."""
        dry_run_missing = not first_sync
        respect = spec.sync_options.respect_ignore_differences
        # Replace=true / Force=true: immutable changes are recreated instead of refused (traps.py)
        recreate = spec.sync_options.replace or spec.sync_options.force

        def diff(targets: list[Manifest], lives: dict, missing: bool) -> DiffResult:
            return self.differ.diff(targets, lambda t: lives[ObjectRef.of(t)], spec.ignore_differences,
                                    respect_ignores=respect, dry_run_missing=missing, recreate=recreate)

        pre_diff = diff(desired.prerequisites, desired.pre_lives, dry_run_missing)
        applied: list[ResourceResult] = []
        if apply_prerequisites and not pre_diff.failures and not pre_diff.in_sync:
            if not first_sync:
                # Dry-run what already exists before changing Namespaces or CRDs: a commit the
                # API server refuses must not change them either. Kinds this render defines are
                # left to the dry run after the CRDs are applied, as their schema may be changing.
                early = [o for o in desired.rest if (ObjectRef.of(o).group, o.get("kind")) not in desired.defined]
                early_targets = self._prepare(early, spec, (desired.checkout, desired.commit, "early"))
                if failures := diff(early_targets, desired.lives, False).failures:
                    raise self._refusal(desired.checkout, spec, desired.commit, failures)
            self._ensure_destination(spec)
            applied += self.syncer.apply(pre_diff.diffs, replace=spec.sync_options.replace)
            self._remember(applied)
        elif apply_prerequisites:
            self._ensure_destination(spec)
        rest = diff(desired.rest_targets, desired.lives, dry_run_missing)
        pending = tuple(ObjectDiff(ObjectRef.of(t), t, None, None, False) for t in desired.pending)
        if failures := [*pre_diff.failures, *rest.failures]:
            raise self._refusal(desired.checkout, spec, desired.commit, failures)
        return Compared([*pre_diff.diffs, *rest.diffs, *pending], applied)

    # ------------------------------------------------------------------ the sync

    def _sync_pass(self, outcome: Outcome, body: Manifest, request: Request, spec: AppSpec, desired: Desired,
                   attempt: int) -> Outcome:
        """Whether to sync (the planner decides), the dry runs, the operation's next step, and the
        status of what the cluster now has."""
        previous = body.get("status") or {}
        operation_state = previous.get("operationState") or {}
        auto_sync = spec.automated and request.sync_requested is False
        decision = plan_stage.decide(plan_stage.Situation(
            automated=auto_sync, self_heal=spec.self_heal, requested=request.sync_requested, commit=desired.commit,
            attempt=attempt, refreshed=request.refresh is not None,
            generation_changed=previous.get("observedGeneration") != body["metadata"].get("generation"),
            operation_state=operation_state))
        # Nothing of this app runs yet on a first sync: there is nothing a bad object could damage,
        # so objects that do not exist are applied without a dry run first (half the requests).
        try:
            compared = self.compare(spec, desired, apply_prerequisites=decision.may_sync,
                                    first_sync=not desired.previous_entries)
        except Refused as refused:
            return self._refused(outcome, spec, refused, attempt)
        stale = plan_stage.stale(desired.previous_entries, desired.targets)
        out_of_sync = not all(d.in_sync for d in compared.diffs) or bool(stale)
        may_auto_sync = decision.may_sync and not request.sync_requested
        applied, pruned, operation = compared.applied, [], None
        if decision.resume or request.sync_requested or (may_auto_sync and out_of_sync):
            operation, applied, pruned = self._run_operation(outcome, request, spec, desired, compared, stale,
                                                             decision.resume, operation_state)
        else:
            outcome.report.operation_kept()
        # What is still stale after this pass stays listed (requiresPruning) until it is pruned.
        deleted = {r.ref for r in pruned if r.action is Action.DELETED}
        self._summarise(outcome, desired.checkout, spec, desired.commit, compared.diffs, applied,
                        [e for e in stale if e.ref not in deleted], attempt)
        if operation is not None and operation.phase != "Succeeded" and not any(r.failed for r in applied):
            self._operation_progress(outcome, spec, operation, attempt)
        if decision.failed_before and out_of_sync and auto_sync:
            outcome.report.not_retried(desired.commit, operation_state.get("message") or "see operationState")
        return outcome

    def _run_operation(self, outcome: Outcome, request: Request, spec: AppSpec, desired: Desired,
                       compared: Compared, stale: Sequence[InventoryEntry], resume: bool,
                       operation_state: dict) -> tuple[Operation, list[ResourceResult], list[ResourceResult]]:
        """This pass's step of the sync operation (a new one, or the one still running)."""
        operation = (Operation.resumed(operation_state) if resume else Operation(
            desired.commit, request.sync_prune if request.sync_requested else spec.prune,
            request.initiated_by or {"automated": True}, now(), source=request.sync_source))
        planned = plan_stage.plan([*desired.targets, *desired.hooks])
        # What this revision's deletion must run first; an app without PreDelete hooks has no record.
        outcome.report.pre_delete_hooks(operation.revision, [f"{t.ref.kind}/{t.name}" for t in planned.pre_delete],
                                        operation.source)
        ran = self.runner.run(operation, Work(
            planned, {d.ref: d for d in compared.diffs},
            stale, spec.key, replace=spec.sync_options.replace,
            propagation=spec.sync_options.prune_propagation_policy, applied=list(compared.applied)))
        ran_refs = {r.ref for r in ran.applied}
        applied = [*(r for r in compared.applied if r.ref not in ran_refs), *ran.applied]
        # A sync asked for while a staged one runs waits for it to end (Argo CD refuses it).
        outcome.consumed_operation = request.sync_requested and not resume
        self._record_operation(outcome, desired.checkout, spec, operation, applied, ran.pruned)
        return operation, applied, ran.pruned

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
            if wanted.chart:
                return self._fetch_chart(wanted, wanted.refresh if refresh is None else refresh)
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
                return SourceWanted(spec.repo_url, revision, False, spec.namespace, spec.chart,
                                    spec.helm_options.pass_credentials)
        return SourceWanted(spec.repo_url, request.sync_revision or spec.target_revision, refresh, spec.namespace,
                            spec.chart, spec.helm_options.pass_credentials)

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

    def finalize(self, body: Manifest) -> Outcome:
        """One pass of the cascade delete of an Application carrying Gantry's (or Argo CD's)
        resources finalizer: the PreDelete hooks of the revision last synced first, when it has
        some (plan.deletion_step decides; a running hook is looked at again in a later pass, never
        waited for here), then its resources. `finalized`: all of them are gone, the finalizer may
        go. An app without PreDelete hooks is deleted at once and its status left as it is."""
        previous = body.get("status") or {}
        if not any(f in RESOURCE_FINALIZERS for f in (body.get("metadata") or {}).get("finalizers") or ()):
            return Outcome(previous)
        report = Report(previous, body["metadata"].get("generation"), now())
        outcome = Outcome(previous, report.events, report=report)
        refreshed = Request.of(body).refresh is not None
        recorded = previous.get(status_stage.PRE_DELETE_HOOKS)
        state = self._deletion_read(previous.get(status_stage.DELETION))
        gone = self._failed_hooks_gone(state) if state and not refreshed else set()
        step = plan_stage.deletion_step(recorded, state, refreshed=refreshed, gone=gone)
        outcome.consumed_refresh = refreshed and bool(recorded or state)
        if step.action is plan_stage.DeletionAction.RUN:
            state = self._run_pre_delete(body, step, state)
            step = (plan_stage.DeletionStep(plan_stage.DeletionAction.BLOCKED, message=state["message"])
                    if state["phase"] == "Failed" else plan_stage.deletion_step(None, state))
        if step.action is plan_stage.DeletionAction.DELETE:
            if state is not None:
                report.deletion({**state, "phase": "Succeeded"},
                                message="deleting: PreDelete hooks completed, deleting the resources")
                self._delete_hooks(state)
            outcome.deleted = self._delete_resources(body)
            outcome.finalized = not any(r.failed for r in outcome.deleted)
        elif step.action is plan_stage.DeletionAction.WAIT:
            report.deletion({**state, "phase": "Running"}, message=step.message)
            outcome.requeue_after = 2.0  # the watch of each hook wakes the app sooner
        else:
            failure = step.message + (_UNBLOCK_HOOK if state.get("hooks") else _UNBLOCK_GIT)
            report.deletion({**state, "phase": "Failed"}, failure=failure)
            outcome.requeue_after = 5.0
        if state is not None:
            outcome.status = report.status
        return outcome

    def _deletion_read(self, state: dict | None) -> dict | None:
        """status.deletion with each running hook read now (a finished one's delete policy done)."""
        if not state:
            return None
        hooks = [dict(entry) for entry in state.get("hooks") or ()]
        if state.get("phase") == "Running":
            for entry in hooks:
                self.runner.hook_progress(entry)
        return {**state, "hooks": hooks}

    def _failed_hooks_gone(self, state: dict) -> set[str]:
        """`Kind/name` of the failed hooks that no longer exist."""
        gone = set()
        for entry in state.get("hooks") or ():
            if entry.get("hookPhase") == "Failed" and entry.get("action") == "created":
                try:
                    if self.live.get(hook_target(entry)) is None:
                        gone.add(f"{entry['kind']}/{entry['name']}")
                except (KubeApiError, UnservedApiError):
                    pass
        return gone

    def _run_pre_delete(self, body: Manifest, step: plan_stage.DeletionStep, earlier: dict | None) -> dict:
        """Render step's revision and create its PreDelete hooks, all at once, after deleting what
        is left of an earlier try; the new status.deletion (Failed with the reason when git, the
        spec or the render says no: nothing is created then)."""
        metadata, raw = body["metadata"], body.get("spec") or {}
        if step.source:  # synced from a rollback's source: its hooks are that source's
            raw = {**raw, "source": {**(raw.get("source") or {}), **step.source}}
        state = {"revision": step.revision, **({"source": dict(step.source)} if step.source else {}),
                 "startedAt": (earlier or {}).get("startedAt") or now(), "hooks": []}
        revision = step.revision
        try:
            spec = AppSpec.parse(metadata["name"], metadata["namespace"], raw)
            revision = revision or spec.target_revision
            if not self._destination_allowed(spec):
                raise SpecError("destination " + self.policy.refusal(spec.key, spec.destination_namespace))
            fetched = self.fetch(SourceWanted(spec.repo_url, revision, step.refresh, spec.namespace))
            if isinstance(fetched, SourceError):
                raise Refused(Reason.COMPARISON_ERROR, str(fetched))
            _, hooks = self.rendered(spec, fetched)
        except (SpecError, Refused) as error:
            message = error.message if isinstance(error, Refused) else str(error)
            return {**state, "phase": "Failed", "message": f"cannot run the PreDelete hooks of "
                                                           f"{status_stage.short_revision(revision)}: {message}"}
        self._delete_hooks(earlier)  # a failed instance would stay failed, or keep a new one from its name
        tasks = plan_stage.plan(hooks).pre_delete
        return {**state, "phase": "Running", "revision": fetched.commit,
                "hooks": [self.runner.create_hook(task, spec.key) for task in tasks]}

    def _delete_hooks(self, state: dict | None) -> None:
        """Delete the hooks a deletion created that still exist, and wait until those with a name
        of their own are gone (it cannot be taken again before)."""
        named = []
        for entry in (state or {}).get("hooks") or ():
            if entry.get("action") != "created":
                continue
            target = hook_target(entry)
            try:
                if self.live.get(target) is None:
                    continue
            except (KubeApiError, UnservedApiError):
                continue
            self.runner.delete_hook(target)
            named.append(InventoryEntry(target["apiVersion"], entry["kind"], entry.get("namespace") or "", entry["name"]))
        if named:
            self.syncer.wait_deleted(named, timeout=30.0)

    def _delete_resources(self, body: Manifest) -> list[ResourceResult]:
        """Delete every object of the inventory, and wait until they are gone."""
        finalizers = (body.get("metadata") or {}).get("finalizers") or []
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
                overrides: KustomizeOverrides, chart: ChartRender | None = None) -> list[Manifest]:
        key = (str(checkout), commit, path, recurse, overrides, chart)
        with self._render_lock:
            if hard:
                self._renders.pop(key, None)
            cached = self._renders.get(key)
        if cached is None:
            try:
                cached = render(checkout, path, kustomize=self.kustomize, recurse=recurse, overrides=overrides,
                                limits=self.render_limits, chart=chart)
            except RenderError as error:
                cached = error
            with self._render_lock:
                self._renders[key] = cached
                _trim(self._renders, entries=64)
        if isinstance(cached, RenderError):
            raise cached
        return cached

    def _fetch_chart(self, wanted: SourceWanted, refresh: bool) -> Fetched:
        """The chart version wanted.revision names, pulled and unpacked (charts.py); its version is
        the revision, as in Argo CD. Raises SourceError."""
        if self.charts is None:
            raise SourceError(f"chart {wanted.chart}: this controller was started without a chart cache")
        version = self.charts.resolve(wanted.repo_url, wanted.chart, wanted.revision, refresh=refresh)
        checkout = self.charts.checkout(wanted.repo_url, version, pass_credentials=wanted.pass_credentials)
        return Fetched(version.version, checkout, version.metadata)

    def _chart_render(self, spec: AppSpec, checkout: Path) -> ChartRender | None:
        """How helm renders the app's chart, or None when it is no chart (no helm block, no chart,
        no Chart.yaml at its path: the cluster's capabilities are then not even read)."""
        declared = spec.helm is not None or bool(spec.chart)
        if not declared and not (checkout / spec.path / CHART_FILE).is_file():
            chart = None
        else:
            app_namespace = spec.namespace
            credentials = (None if self.helm_credentials is None else
                           lambda url: self.helm_credentials(url, app_namespace))
            chart = ChartRender(spec.helm_options, self.helm, self._cluster_capabilities(), declared, credentials)
        self._chart_renders[spec.key] = chart  # this pass's _prepare keys by the same
        return chart

    def _cluster_capabilities(self, ttl: float = 60.0) -> Capabilities:
        """The cluster's version and served API versions for charts' .Capabilities, read at most
        once a `ttl`; what was last read (or helm's defaults) while the API server cannot say."""
        known = self._capabilities
        if known is not None and time.monotonic() - known[0] < ttl:
            return known[1]
        try:
            capabilities = Capabilities(self.client.server_version(), self.client.served_api_versions())
        except KubeApiError as error:
            logger.warning("cannot read the cluster's version and APIs for helm: %s", error)
            capabilities = known[1] if known is not None else Capabilities()
        self._capabilities = (time.monotonic(), capabilities)
        return capabilities

    def _prepare(self, objects: list[Manifest], spec: AppSpec, key: tuple) -> list[Manifest]:
        """diff.prepare, remembered per commit, destination and app: a steady app then hands the
        differ the very same target objects every pass, whose content hashes it keeps."""
        # Everything the objects depend on besides the commit: how they were rendered, and where to.
        full_key = (*key, spec.path, spec.directory_recurse, spec.kustomize, spec.destination_namespace, spec.key,
                    self._chart_renders.get(spec.key))
        with self._render_lock:
            cached = self._prepared.get(full_key)
        if cached is None:
            cached = prepare(objects, self.client.resource_of, destination_namespace=spec.destination_namespace,
                             app_key=spec.key)
            with self._render_lock:
                self._prepared[full_key] = cached
                _trim(self._prepared, entries=256)
        return cached

    def _ensure_destination(self, spec: AppSpec) -> None:
        """CreateNamespace=true: the destination namespace exists before anything goes into it
        (namespaced mode creates none: its namespaces are the administrator's)."""
        if spec.sync_options.create_namespace and self.policy is None:
            self._ensure_namespace(spec.destination_namespace)

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

    def _refusal(self, checkout: Path, spec: AppSpec, commit: str, failures: Sequence[ApplyFailure]) -> Refused:
        """Failed before anything was applied; each cause named as `k8s/file.yaml: Kind ns/name: reason`."""
        return Refused(Reason.COMPARISON_ERROR,
                       describe_failures(checkout, spec.path, [(f.ref, f.message) for f in failures]),
                       revision=commit, failures=failures)

    def _record_operation(self, outcome: Outcome, checkout: Path, spec: AppSpec, operation: Operation,
                          applied: Sequence[ResourceResult], pruned: Sequence[ResourceResult]) -> None:
        """The operation's state, its events and, once it succeeded, its history entry."""
        report, commit = outcome.report, operation.revision
        if operation.phase == "Failed" and any(r.failed for r in [*applied, *pruned]):
            operation.message = describe_failures(checkout, spec.path, [(r.ref, r.message) for r in [*applied, *pruned]
                                                                         if r.failed])
        changed = [r for r in applied if r.action in (Action.CREATED, Action.CONFIGURED)]
        report.operation(operation.state(), revision=commit, changed=[f"{r.ref} {r.action.value}" for r in changed],
                         pruned=[r.ref for r in pruned if r.action is Action.DELETED])
        if operation.phase in ("Running", "Terminating"):
            return
        outcome.sync_phase = operation.phase
        if operation.phase == "Succeeded":
            # A staged sync that ran over several passes changed things in each of them.
            revision_metadata = (outcome.status.get("sync") or {}).get("revisionMetadata")
            report.deployed(
                commit, {**spec.source_record(), "repoURL": redact_url(spec.repo_url)},
                now(), changed=bool(changed) or any(e.get("action") in ("created", "configured")
                                                    for e in operation.results),
                limit=spec.history_limit, details={"initiatedBy": operation.initiated_by,
                                                   **({"revisionMetadata": revision_metadata} if revision_metadata else {})})

    def _operation_progress(self, outcome: Outcome, spec: AppSpec, operation: Operation, attempt: int) -> None:
        """A staged sync still running, or one a hook or an unhealthy object stopped."""
        if operation.phase in ("Running", "Terminating"):
            outcome.report.operation_running(operation.message)
            outcome.requeue_after = 2.0  # the watches of what it applied wake it sooner
            return
        outcome.report.operation_failed(f"sync failed: {operation.message}")
        # Retried only as the Application's retry policy says: a hook that failed is not re-run
        # for ever on its own, as in Argo CD.
        if spec.retry is not None:
            outcome.requeue_after = self._retry_delay(spec, attempt)
            outcome.retrying = outcome.requeue_after is not None

    def _summarise(self, outcome: Outcome, checkout: Path, spec: AppSpec, commit: str, diffs: Sequence[ObjectDiff],
                   applied: Sequence[ResourceResult], stale: Sequence[InventoryEntry], attempt: int) -> None:
        """Each resource's sync and health after this pass, and whether a failure is retried."""
        applied_ok = {r.ref for r in applied if r.action in (Action.CREATED, Action.CONFIGURED)}
        failed = {r.ref: r.message for r in applied if r.failed}
        context = self._health_context()
        resources, healths, lives = [], [], []
        for d in diffs:
            live = self.live.get(d.target) if d.ref in applied_ok else d.live
            result = (health_stage.assess(live, context) if live is not None
                      else HealthResult(HealthStatus.MISSING, "not created yet"))
            entry = status_stage.resource_entry(d.ref, d.target["apiVersion"].rpartition("/")[2],
                                                SyncStatus.SYNCED if d.in_sync or d.ref in applied_ok
                                                else SyncStatus.OUT_OF_SYNC, result)
            if result is not None:
                healths.append(result)
            if d.ref in failed:
                entry["message"] = failed[d.ref]
            resources.append(entry)
            if live is not None:
                lives.append(live)
        resources += [status_stage.resource_entry(e.ref, e.api_version.rpartition("/")[2], SyncStatus.OUT_OF_SYNC,
                                                  None, requires_pruning=True) for e in stale]
        failure = None
        if failed:
            failure = "sync failed: " + describe_failures(checkout, spec.path, list(failed.items()))
            failure += self._retry_failed(outcome, spec, attempt, [r for r in applied if r.failed])
        outcome.report.compared(commit, resources, healths, lives, failure=failure, unsupported=spec.unsupported)
        if not failed and outcome.status["health"]["status"] == HealthStatus.PROGRESSING.value:
            outcome.requeue_after = 5.0  # watches also wake us; this covers objects we do not watch

    def _retry_failed(self, outcome: Outcome, spec: AppSpec, attempt: int, failed: Sequence[ResourceResult]) -> str:
        """Requeue a sync that failed to apply as the retry policy says; what to add to its message."""
        # A failure that passes by itself (a namespace still being deleted) does not spend the
        # retry limit: it is retried with the default backoff until it is gone.
        transient_only = all(r.transient for r in failed)
        outcome.requeue_after = (DEFAULT_RETRY.delay(attempt + 1) if transient_only
                                 else self._retry_delay(spec, attempt))
        outcome.retrying = outcome.requeue_after is not None
        if transient_only:
            return " (retried until it passes)"
        if not outcome.retrying and spec.automated:
            return (f" (retried {attempt} time{'' if attempt == 1 else 's'}, the retry limit; not retried "
                    f"again until a refresh, a new commit or an edit of the Application)")
        return ""

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


# What a stuck deletion says a user can do (Argo CD's docs: remove the finalizer by hand).
_UNBLOCK_HOOK = ("; the app and its resources stay: fix the hook in git and refresh the app, or delete the hook "
                 "to run it again (removing the finalizer by hand deletes the app and keeps its resources)")
_UNBLOCK_GIT = ("; the app and its resources stay, and this is tried again: fix git and refresh the app "
                "(removing the finalizer by hand deletes the app and keeps its resources)")


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
