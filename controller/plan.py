"""The planner: what one sync of an Application does, decided without a cluster.

Rendered objects + the previous inventory + the previous operation → the steps of this sync, what
is stale, what is refused, and whether to sync at all. The reconcile executes the steps; `gantry
app diff` and the UI ask the same planner, so what they show is what the controller does.

Ordering rules (written here once; Argo CD's, unless said otherwise):
1. Phases go PreSync → Sync → PostSync. SyncFail runs only when one of them failed. PreDelete
   hooks (Plan.pre_delete) run when an Application with the resources finalizer is deleted,
   before its resources go (deletion_step below says how, pass by pass).
2. Within a phase, objects go in waves: `argocd.argoproj.io/sync-wave` or `gantry.dev/sync-wave`
   (an integer, default 0, negative allowed; Argo CD's wins when both are set), else
   `helm.sh/hook-weight`, which Argo CD reads as a sync wave on any object. A wave that is not an
   integer refuses the commit (Argo CD silently uses 0 instead).
3. Within a wave, by kind (sync.KIND_ORDER: config and RBAC before the workloads that use them,
   Ingresses last), then namespace and name. Objects of one wave go in parallel.
4. Namespaces and CRDs of the Sync phase go before everything, whatever their wave: the commit is
   dry-run whole before anything is applied, and nothing can be dry-run in a namespace or of a
   kind that does not exist yet. The reconcile applies them before the first step, PreSync hooks
   included; in the plan they join the first Sync step. (Argo CD orders them by phase and wave;
   its maintainers considered Namespaces before hooks in argoproj/argo-cd#3502.)
5. A step (one wave of one phase) starts only when every object of the earlier steps is applied
   and Healthy, and every hook of them completed. Of the last step only the hooks are waited for:
   the operation ends when its resources are applied and its hooks completed (a failed one fails
   the sync), and health is reported as it comes, as Argo CD does.
6. Stale objects (in the previous inventory, not in the render) are pruned after the last Sync
   wave, before PostSync, and only when nothing failed; all together, where Argo CD prunes them
   wave by wave, the highest first.
7. A failure (an apply refused, a hook failed, an object Degraded while a later wave waits)
   ends the operation there: later steps are not run, nothing is pruned, SyncFail hooks run.
8. Hooks are not desired state: they are not in the inventory, never pruned as drift and never
   OutOfSync. `Skip` objects are neither applied nor tracked (`Skip` among other hooks is ignored,
   as in Argo CD), nor are Helm hooks without a sync phase (`test`, `*-rollback`) and PostDelete
   hooks, which Gantry does not run: all three are listed in Plan.skipped. An unknown
   `argocd.argoproj.io/hook` or delete policy refuses the commit (Argo CD ignores it); unknown
   Helm hooks are skipped, as Argo CD does.
9. A hook's delete policies are those of both annotations, Argo CD's and Helm's; BeforeHookCreation
   when neither names one.
An app without hooks or waves has one step: it syncs in one pass, as before waves existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import groupby

from .model import Manifest, ObjectRef
from .sync import InventoryEntry, order_key

HOOK_ANNOTATION = "argocd.argoproj.io/hook"
HOOK_DELETE_POLICY_ANNOTATION = "argocd.argoproj.io/hook-delete-policy"
WAVE_ANNOTATIONS = ("argocd.argoproj.io/sync-wave", "gantry.dev/sync-wave")
HELM_HOOK_ANNOTATION = "helm.sh/hook"
HELM_WEIGHT_ANNOTATION = "helm.sh/hook-weight"
HELM_DELETE_POLICY_ANNOTATION = "helm.sh/hook-delete-policy"


class Phase(StrEnum):
    PRE_SYNC = "PreSync"
    SYNC = "Sync"
    POST_SYNC = "PostSync"
    SYNC_FAIL = "SyncFail"
    PRE_DELETE = "PreDelete"
    POST_DELETE = "PostDelete"


class DeletePolicy(StrEnum):
    BEFORE_HOOK_CREATION = "BeforeHookCreation"
    HOOK_SUCCEEDED = "HookSucceeded"
    HOOK_FAILED = "HookFailed"


# The phases of a sync, in their order; SyncFail and the deletion phases run apart.
SYNC_PHASES = (Phase.PRE_SYNC, Phase.SYNC, Phase.POST_SYNC)
SKIP = "Skip"
_INTEGER = re.compile(r"[+-]?[0-9]+")

# Helm's hooks as Argo CD maps them; the others (test, rollback) have no sync phase and are skipped.
HELM_HOOKS = {
    "pre-install": Phase.PRE_SYNC, "pre-upgrade": Phase.PRE_SYNC,
    "post-install": Phase.POST_SYNC, "post-upgrade": Phase.POST_SYNC,
    "pre-delete": Phase.PRE_DELETE, "post-delete": Phase.POST_DELETE,
}
HELM_DELETE_POLICIES = {
    "before-hook-creation": DeletePolicy.BEFORE_HOOK_CREATION,
    "hook-succeeded": DeletePolicy.HOOK_SUCCEEDED,
    "hook-failed": DeletePolicy.HOOK_FAILED,
}


class PlanError(ValueError):
    """An annotation the planner cannot read: the commit is refused, naming the object."""

    def __init__(self, ref: ObjectRef, message: str) -> None:
        super().__init__(f"{ref}: {message}")
        self.ref = ref
        self.message = message


@dataclass(frozen=True)
class Task:
    """One object to apply (a resource) or create (a hook) at a phase and wave."""

    manifest: Manifest
    phase: Phase
    wave: int
    hook: bool = False
    delete_policies: frozenset[DeletePolicy] = frozenset()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef.of(self.manifest)

    @property
    def name(self) -> str:
        """The name, or for a `generateName` hook its prefix (the name is the API server's)."""
        metadata = self.manifest.get("metadata") or {}
        return metadata.get("name") or metadata.get("generateName") or ""


@dataclass(frozen=True)
class Step:
    """The tasks of one wave of one phase: they go together, after the steps before them."""

    phase: Phase
    wave: int
    tasks: tuple[Task, ...]

    @property
    def key(self) -> str:
        return f"{self.phase.value}/{self.wave}"

    @property
    def resources(self) -> list[Manifest]:
        return [t.manifest for t in self.tasks if not t.hook]

    @property
    def hooks(self) -> list[Task]:
        return [t for t in self.tasks if t.hook]


@dataclass(frozen=True)
class Plan:
    """What the render asks of a sync, before the cluster is asked anything."""

    resources: tuple[Manifest, ...]  # desired state: what the inventory holds and prune compares
    steps: tuple[Step, ...]  # PreSync, Sync and PostSync steps, in order
    sync_fail: tuple[Task, ...] = ()
    pre_delete: tuple[Task, ...] = ()
    skipped: tuple[ObjectRef, ...] = ()

    @property
    def hooks(self) -> list[Task]:
        return [t for s in self.steps for t in s.hooks] + list(self.sync_fail) + list(self.pre_delete)

    @property
    def staged(self) -> bool:
        """Whether the sync has more than one step or any hook: then it may span several passes."""
        return len(self.steps) > 1 or any(s.hooks for s in self.steps)

    def step_index(self, key: str | None) -> int | None:
        return next((i for i, s in enumerate(self.steps) if s.key == key), None)

    def describe(self, index: int) -> str:
        """`wave 2 of 4` (the Sync phase), `PreSync wave 1 of 2` (another phase)."""
        step = self.steps[index]
        same = [s for s in self.steps if s.phase is step.phase]
        position = f"wave {step.wave}" if len(same) == 1 else f"wave {same.index(step) + 1} of {len(same)}"
        return position if step.phase is Phase.SYNC else f"{step.phase.value} {position}"


def _annotations(obj: Manifest) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _ref(obj: Manifest) -> ObjectRef:
    """The object's identity for a message: a `generateName` hook has no name yet, only its prefix."""
    ref = ObjectRef.of(obj)
    return ref if ref.name else ref._replace(name=(obj.get("metadata") or {}).get("generateName") or "")


def _words(annotations: Mapping[str, str], name: str) -> list[str]:
    """A comma list, blanks dropped: `PreSync,` is one hook, as Argo CD reads it."""
    return [w.strip() for w in str(annotations.get(name) or "").split(",") if w.strip()]


def wave_of(obj: Manifest) -> int:
    annotations = _annotations(obj)
    for name in (*WAVE_ANNOTATIONS, HELM_WEIGHT_ANNOTATION):
        if name in annotations:
            text = str(annotations[name]).strip()
            # ASCII digits only: Python's int() also takes "1_0" and other scripts' digits, Go's Atoi does not.
            if not _INTEGER.fullmatch(text):
                raise PlanError(_ref(obj), f"annotation {name}: {text!r} is not an integer wave "
                                           f"(use e.g. \"-1\", \"0\" or \"5\")")
            return int(text)
    return 0


def hook_phases(obj: Manifest) -> tuple[Phase, ...] | None:
    """The phases a hook runs in; () for one that never runs (`Skip`, a Helm hook without a sync
    phase); None for an object that is not a hook."""
    annotations = _annotations(obj)
    if HOOK_ANNOTATION in annotations:
        words = _words(annotations, HOOK_ANNOTATION)
        if words == [SKIP]:
            return ()
        phases: list[Phase] = []
        for word in words:
            if word == SKIP:
                continue  # with other hooks, Skip is ignored (Argo CD skips only a lone Skip)
            try:
                phases.append(Phase(word))
            except ValueError:
                known = ", ".join([*(p.value for p in Phase), SKIP])
                raise PlanError(_ref(obj), f"annotation {HOOK_ANNOTATION}: unknown hook {word!r} "
                                           f"(one of {known})") from None
        return tuple(dict.fromkeys(phases))
    if HELM_HOOK_ANNOTATION in annotations:
        if str(annotations[HELM_HOOK_ANNOTATION]).strip() == "crd-install":
            return None  # Helm 2's way of shipping CRDs: an ordinary resource, CRDs go first anyway
        words = _words(annotations, HELM_HOOK_ANNOTATION)
        return tuple(dict.fromkeys(HELM_HOOKS[w] for w in words if w in HELM_HOOKS))
    return None


def delete_policies(obj: Manifest) -> frozenset[DeletePolicy]:
    """A hook's delete policies, from Argo CD's and Helm's annotations together; BeforeHookCreation
    when neither names one, as in Argo CD."""
    annotations = _annotations(obj)
    policies: set[DeletePolicy] = set()
    for word in _words(annotations, HOOK_DELETE_POLICY_ANNOTATION):
        try:
            policies.add(DeletePolicy(word))
        except ValueError:
            known = ", ".join(p.value for p in DeletePolicy)
            raise PlanError(_ref(obj), f"annotation {HOOK_DELETE_POLICY_ANNOTATION}: unknown policy "
                                       f"{word!r} (one of {known})") from None
    policies |= {HELM_DELETE_POLICIES[w] for w in _words(annotations, HELM_DELETE_POLICY_ANNOTATION)
                 if w in HELM_DELETE_POLICIES}
    return frozenset(policies or {DeletePolicy.BEFORE_HOOK_CREATION})


def _task_order(task: Task) -> tuple:
    return (SYNC_PHASES.index(task.phase) if task.phase in SYNC_PHASES else len(SYNC_PHASES),
            task.wave, order_key(task.manifest)[1:], task.name)


def plan(objects: Iterable[Manifest]) -> Plan:
    """Split a render into desired state and hooks, and order both into steps. Raises PlanError
    for an annotation it cannot read (each names the object)."""
    resources: list[Manifest] = []
    tasks: list[Task] = []
    sync_fail: list[Task] = []
    pre_delete: list[Task] = []
    skipped: list[ObjectRef] = []
    for obj in objects:
        wave = wave_of(obj)
        phases = hook_phases(obj)
        if phases is None:
            resources.append(obj)
            tasks.append(Task(obj, Phase.SYNC, wave))
            continue
        if not phases or set(phases) == {Phase.POST_DELETE}:
            skipped.append(_ref(obj))  # never run: Skip, a Helm test hook, PostDelete (rule 8)
            continue
        policies = delete_policies(obj)
        for phase in (p for p in phases if p is not Phase.POST_DELETE):
            task = Task(obj, phase, wave, hook=True, delete_policies=policies)
            {Phase.SYNC_FAIL: sync_fail, Phase.PRE_DELETE: pre_delete}.get(phase, tasks).append(task)
    steps = tuple(Step(phase, wave, tuple(group))
                  for (phase, wave), group in groupby(sorted((t for t in tasks if t.phase in SYNC_PHASES), key=_task_order),
                                                      key=lambda t: (t.phase, t.wave)))
    return Plan(tuple(resources), _prerequisites_first(steps), tuple(sorted(sync_fail, key=_task_order)),
                tuple(sorted(pre_delete, key=_task_order)), tuple(skipped))


def _prerequisites_first(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """Rule 4: the Namespaces and CRDs of the Sync phase join its first step."""
    sync = [i for i, s in enumerate(steps) if s.phase is Phase.SYNC]
    if len(sync) < 2:
        return steps
    first = {"Namespace", "CustomResourceDefinition"}
    moved = [t for i in sync[1:] for t in steps[i].tasks if not t.hook and t.manifest.get("kind") in first]
    if not moved:
        return steps
    result = list(steps)
    head = steps[sync[0]]
    # They take the first step's wave, so that they sort into it by kind (Namespaces first) rather
    # than after its own objects by their old wave.
    joined = [replace(t, wave=head.wave) for t in moved]
    result[sync[0]] = Step(head.phase, head.wave, tuple(sorted([*head.tasks, *joined], key=_task_order)))
    for i in sync[1:]:
        result[i] = Step(steps[i].phase, steps[i].wave, tuple(t for t in steps[i].tasks if not any(t is m for m in moved)))
    return tuple(s for s in result if s.tasks)


def stale(previous: Iterable[InventoryEntry], targets: Iterable[Manifest]) -> list[InventoryEntry]:
    """Inventory entries no target is, by identity (group, kind, namespace, name): an object whose
    manifest moved to another version of its API (autoscaling/v1 → v2) is the same object, and must
    not be pruned right after its apply."""
    wanted = {ObjectRef.of(t) for t in targets}
    return sorted((e for e in previous if e.ref not in wanted), key=lambda e: (e.kind, e.namespace, e.name))


# --------------------------------------------------------------------------------------------
# Whether to sync


@dataclass(frozen=True)
class SyncDecision:
    """Whether this pass may sync (if anything differs), and whether the revision is one whose
    automated sync failed and is not retried."""

    may_sync: bool
    failed_before: bool = False
    resume: bool = False  # an operation of an earlier pass is Running: go on with it


@dataclass(frozen=True)
class Situation:
    """What the decision depends on, read off the Application and this pass."""

    automated: bool
    self_heal: bool
    requested: bool  # operation.sync was asked for
    commit: str
    attempt: int  # consecutive failed passes before this one
    refreshed: bool  # a refresh was asked for
    generation_changed: bool
    operation_state: Mapping = field(default_factory=dict)


def running(operation_state: Mapping | None) -> bool:
    return (operation_state or {}).get("phase") in ("Running", "Terminating")


def decide(situation: Situation) -> SyncDecision:
    """Always for a requested sync and an operation still running; automated: for a new commit or
    spec, and for drift only with selfHeal. A revision whose sync failed is not tried again once its
    retries are spent (attempt back at 0), until a refresh, a new commit or an edit of the
    Application: it would fail the same way, as Argo CD reasons too."""
    state = situation.operation_state or {}
    if running(state):
        return SyncDecision(may_sync=True, resume=True)
    if situation.requested:
        return SyncDecision(may_sync=True)
    if not situation.automated:
        return SyncDecision(may_sync=False)
    last_synced = (state.get("syncResult") or {}).get("revision") if state.get("phase") == "Succeeded" else None
    failed_before = (state.get("phase") == "Failed"
                     and ((state.get("operation") or {}).get("sync") or {}).get("revision") == situation.commit
                     and situation.attempt == 0 and not situation.refreshed and not situation.generation_changed)
    may_sync = not failed_before and (situation.self_heal or situation.commit != last_synced
                                      or situation.generation_changed)
    return SyncDecision(may_sync=may_sync, failed_before=failed_before)


# --------------------------------------------------------------------------------------------
# Progress of a running operation


@dataclass(frozen=True)
class StepOutcome:
    """How the objects of a step applied in an earlier pass are doing."""

    done: bool  # every resource Healthy, every hook completed
    failed: str = ""  # the first Degraded object or failed hook, as a message
    waiting: str = ""  # what is not done yet, e.g. `Deployment backend (1/2 ready)`


def next_step(plan_: Plan, applied_key: str | None) -> int:
    """The index of the step to run: 0 for a new operation, the one after the step an earlier pass
    applied (which the caller found done), len(steps) when every step has run."""
    index = plan_.step_index(applied_key)
    return 0 if index is None else index + 1


def prune_after(plan_: Plan) -> int:
    """The index of the step after which stale objects are pruned (rule 6): the last Sync step, or
    without one the last step before PostSync (a commit that keeps only hooks still prunes before
    its PostSync hooks run)."""
    before_post = [i for i, s in enumerate(plan_.steps) if s.phase is not Phase.POST_SYNC]
    sync = [i for i in before_post if plan_.steps[i].phase is Phase.SYNC]
    return (sync or before_post or [len(plan_.steps) - 1])[-1]


# What the API server appends to a generateName (k8s.io/apiserver storage/names): 5 characters of
# this alphabet, after the prefix cut to 58 so that the name fits in 63.
_GENERATED_SUFFIX = re.compile(r"[bcdfghjklmnpqrstvwxz2456789]{5}")
_GENERATED_PREFIX_MAX = 58


def hook_name_taken(task: Task, names: Sequence[str]) -> list[str]:
    """Names of earlier instances of a hook that BeforeHookCreation deletes: its own name, or for a
    `generateName` hook every name the API server can have made from its prefix (so they do not pile
    up, and a named hook that merely starts with the prefix is left alone)."""
    metadata = task.manifest.get("metadata") or {}
    if metadata.get("name"):
        return [n for n in names if n == metadata["name"]]
    prefix = (metadata.get("generateName") or "")[:_GENERATED_PREFIX_MAX]
    return [n for n in names if prefix and n.startswith(prefix)
            and _GENERATED_SUFFIX.fullmatch(n[len(prefix):])]


# --------------------------------------------------------------------------------------------
# Deleting an Application: its PreDelete hooks, then its resources
#
# A sync records in the status which PreDelete hooks its revision has (status.preDeleteHooks); an
# app without any is deleted at once, as before hooks existed, with no render. Otherwise the
# deletion renders that revision (what runs), creates every PreDelete hook at once (no waves, as in
# Argo CD) and comes back pass after pass until they all completed; only then are the resources
# deleted, and the hooks with them whatever their delete policy (nothing else would ever delete
# them: hooks are not in the inventory; Argo CD cleans them up too). A failed hook keeps the app
# and its resources, and keeps itself for its logs, until it is deleted (it then runs again, from
# the same revision) or the app is refreshed (git is read again: the hook fixed, or removed, in git).
# A failure to read git or render is tried again at every pass; removing the finalizer by hand
# deletes the app and leaves its resources, as Argo CD's docs say.


class DeletionAction(StrEnum):
    DELETE = "delete"  # no PreDelete hook to run (any more): delete the resources
    RUN = "run"  # render a revision and create its PreDelete hooks
    WAIT = "wait"  # hooks still running: look again at the next pass
    BLOCKED = "blocked"  # a hook failed: the app stays until it is deleted or the app refreshed


@dataclass(frozen=True)
class DeletionStep:
    """What one pass over an Application being deleted does."""

    action: DeletionAction
    revision: str | None = None  # RUN: the commit to render; None: spec.source.targetRevision
    source: Mapping | None = None  # RUN: the source that revision was synced from (a rollback's), if not spec's
    refresh: bool = False  # RUN: read git now
    message: str = ""  # WAIT, BLOCKED: what the app waits for, or why it is stuck


def _hook_name(entry: Mapping) -> str:
    return f"{entry.get('kind')}/{entry.get('name')}"


def deletion_step(recorded: Mapping | None, state: Mapping | None, *, refreshed: bool = False,
                  gone: Iterable[str] = ()) -> DeletionStep:
    """recorded: status.preDeleteHooks (None: the revision last synced has no PreDelete hooks);
    state: status.deletion, what earlier passes of this deletion did, its hooks' entries read now
    (operation.py's result entries, hookPhase Running | Succeeded | Failed); refreshed: the app was
    refreshed; gone: `Kind/name` of failed hooks that no longer exist."""
    if not state:
        if not recorded:
            return DeletionStep(DeletionAction.DELETE)
        return DeletionStep(DeletionAction.RUN, recorded.get("revision"), recorded.get("source"))
    if state.get("phase") == "Succeeded":
        return DeletionStep(DeletionAction.DELETE)  # its hooks completed; an earlier delete failed
    hooks = list(state.get("hooks") or ())
    failed = [h for h in hooks if h.get("hookPhase") == "Failed"]
    if refreshed and (failed or state.get("phase") == "Failed"):
        return DeletionStep(DeletionAction.RUN, refresh=True)
    if state.get("phase") == "Failed" and not failed:  # git or the render failed: try again
        return DeletionStep(DeletionAction.RUN, state.get("revision"), state.get("source"))
    if failed:
        gone = set(gone)
        # Created, failed and deleted by someone (not by its HookFailed policy): run it again.
        if any(_hook_name(h) in gone and h.get("action") == "created"
               and DeletePolicy.HOOK_FAILED.value not in (h.get("deletePolicies") or ()) for h in failed):
            return DeletionStep(DeletionAction.RUN, state.get("revision"), state.get("source"))
        return DeletionStep(DeletionAction.BLOCKED, message="; ".join(
            f"PreDelete hook {_hook_name(h)} failed: {h.get('message') or 'no message'}" for h in failed))
    running = [h for h in hooks if h.get("hookPhase") != "Succeeded"]
    if running:
        return DeletionStep(DeletionAction.WAIT, message=f"deleting: waiting for PreDelete hook {_hook_name(running[0])} "
                                                         f"({running[0].get('message') or 'running'})")
    return DeletionStep(DeletionAction.DELETE)
