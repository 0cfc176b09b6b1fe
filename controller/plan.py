"""The planner: what one sync of an Application does, decided without a cluster.

Rendered objects + the previous inventory + the previous operation → the steps of this sync, what
is stale, what is refused, and whether to sync at all. The reconcile executes the steps; `gantry
app diff` and the UI ask the same planner, so what they show is what the controller does.

Ordering rules (written here once; Argo CD's, unless said otherwise):
1. Phases go PreSync → Sync → PostSync. SyncFail runs only when one of them failed; PreDelete
   only when an Application with the resources finalizer is deleted, before its resources go.
2. Within a phase, objects go in waves: `argocd.argoproj.io/sync-wave` or `gantry.dev/sync-wave`
   (an integer, default 0, negative allowed); Helm hooks' `helm.sh/hook-weight` is their wave.
3. Within a wave, by kind (sync.KIND_ORDER: config and RBAC before the workloads that use them,
   Ingresses last), then namespace and name. Objects of one wave go in parallel.
4. Namespaces and CRDs of the Sync phase go before everything, whatever their wave: the commit is
   dry-run whole before anything is applied, and nothing can be dry-run in a namespace or of a
   kind that does not exist yet. (Argo CD orders them by wave; Gantry's guard needs them first.)
5. A step (one wave of one phase) starts only when every object of the earlier steps is applied
   and Healthy, and every hook of them completed. The last step is not waited for: the operation
   ends when it is applied, and health is reported as it comes, as Argo CD does.
6. Stale objects (in the previous inventory, not in the render) are pruned after the last Sync
   wave, before PostSync, and only when nothing failed.
7. A failure (an apply refused, a hook failed, an object Degraded while a later wave waits)
   ends the operation there: later steps are not run, nothing is pruned, SyncFail hooks run.
8. Hooks are not desired state: they are not in the inventory, never pruned as drift and never
   OutOfSync. `Skip` objects are neither applied nor tracked.
An app without hooks or waves has one step: it syncs in one pass, as before waves existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


def wave_of(obj: Manifest) -> int:
    annotations = _annotations(obj)
    for name in (*WAVE_ANNOTATIONS, *((HELM_WEIGHT_ANNOTATION,) if HELM_HOOK_ANNOTATION in annotations else ())):
        if name in annotations:
            text = str(annotations[name]).strip()
            try:
                return int(text)
            except ValueError:
                raise PlanError(ObjectRef.of(obj), f"annotation {name}: {text!r} is not an integer wave "
                                                   f"(use e.g. \"-1\", \"0\" or \"5\")") from None
    return 0


def hook_phases(obj: Manifest) -> tuple[Phase, ...] | None:
    """The phases a hook runs in; () for `Skip`; None for an object that is not a hook."""
    annotations = _annotations(obj)
    ref = ObjectRef.of(obj)
    if HOOK_ANNOTATION in annotations:
        phases: list[Phase] = []
        for word in (w.strip() for w in str(annotations[HOOK_ANNOTATION]).split(",")):
            if word == SKIP:
                return ()
            try:
                phases.append(Phase(word))
            except ValueError:
                known = ", ".join([*(p.value for p in Phase), SKIP])
                raise PlanError(ref, f"annotation {HOOK_ANNOTATION}: unknown hook {word!r} (one of {known})") from None
        return tuple(dict.fromkeys(phases))
    if HELM_HOOK_ANNOTATION in annotations:
        words = [w.strip() for w in str(annotations[HELM_HOOK_ANNOTATION]).split(",") if w.strip()]
        if "crd-install" in words:
            return None  # Helm 2's way of shipping CRDs: an ordinary resource, CRDs go first anyway
        return tuple(dict.fromkeys(HELM_HOOKS[w] for w in words if w in HELM_HOOKS))
    return None


def delete_policies(obj: Manifest) -> frozenset[DeletePolicy]:
    """A hook's delete policies; BeforeHookCreation when it names none, as in Argo CD."""
    annotations = _annotations(obj)
    policies: set[DeletePolicy] = set()
    if HOOK_DELETE_POLICY_ANNOTATION in annotations:
        for word in (w.strip() for w in str(annotations[HOOK_DELETE_POLICY_ANNOTATION]).split(",") if w.strip()):
            try:
                policies.add(DeletePolicy(word))
            except ValueError:
                known = ", ".join(p.value for p in DeletePolicy)
                raise PlanError(ObjectRef.of(obj), f"annotation {HOOK_DELETE_POLICY_ANNOTATION}: unknown policy "
                                                   f"{word!r} (one of {known})") from None
    elif HELM_DELETE_POLICY_ANNOTATION in annotations:
        words = str(annotations[HELM_DELETE_POLICY_ANNOTATION]).split(",")
        policies = {HELM_DELETE_POLICIES[w.strip()] for w in words if w.strip() in HELM_DELETE_POLICIES}
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
        if not phases:
            skipped.append(ObjectRef.of(obj))
            continue
        policies = delete_policies(obj)
        for phase in phases:
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
    result[sync[0]] = Step(head.phase, head.wave, tuple(sorted([*head.tasks, *moved], key=_task_order)))
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
    """The index of the step after which stale objects are pruned (rule 6): the last Sync step."""
    sync = [i for i, s in enumerate(plan_.steps) if s.phase is Phase.SYNC]
    return sync[-1] if sync else len(plan_.steps) - 1


def hook_name_taken(task: Task, names: Sequence[str]) -> list[str]:
    """Names of earlier instances of a hook that BeforeHookCreation deletes: its own name, or for a
    `generateName` hook every name made from its prefix (so they do not pile up)."""
    metadata = task.manifest.get("metadata") or {}
    if metadata.get("name"):
        return [n for n in names if n == metadata["name"]]
    prefix = metadata.get("generateName") or ""
    return [n for n in names if prefix and n.startswith(prefix) and len(n) == len(prefix) + 5]
