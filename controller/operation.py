"""Runs the steps of a plan (plan.py) against the cluster, as far as one pass may go.

A pass applies the next step, and the ones after it as long as what it applied is done (Healthy,
hooks completed); when it must wait, the operation stays Running in the Application's status with
the step it applied, and a later pass (woken by the watches of what it applied) goes on from
there, so a restarted controller resumes the same way. An app of one step (no waves, no hooks)
is applied, pruned and finished in one pass, with no health check and no extra request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import health as health_stage
from .cache import LiveCache
from .diff import ObjectDiff, owner_of
from .kube import KubeApiError, KubeClient, UnservedApiError
from .model import FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Action, HealthStatus, Manifest, ObjectRef
from .plan import DeletePolicy, Phase, Plan, Step, StepOutcome, Task, hook_name_taken, next_step, prune_after
from .status import timestamp
from .sync import InventoryEntry, ResourceResult, Syncer

logger = logging.getLogger(__name__)

RUNNING, TERMINATING, SUCCEEDED, FAILED = "Running", "Terminating", "Succeeded", "Failed"


@dataclass
class Operation:
    """One sync operation as its status records it: what was asked, how far it got, and every
    object's result so far (Argo CD's operationState, with the step applied last)."""

    revision: str
    prune: bool
    initiated_by: dict
    started_at: str
    source: dict | None = None  # operation.sync.source of a rollback: kept until it ends
    phase: str = RUNNING
    step: str | None = None  # key of the step applied last (plan.Step.key)
    waiting_since: str | None = None
    message: str = ""
    results: list[dict] = field(default_factory=list)  # syncResult.resources

    @classmethod
    def resumed(cls, state: dict) -> "Operation":
        sync = (state.get("operation") or {}).get("sync") or {}
        return cls(revision=sync.get("revision") or (state.get("syncResult") or {}).get("revision") or "",
                   prune=bool(sync.get("prune")), initiated_by=(state.get("operation") or {}).get("initiatedBy") or {},
                   started_at=state.get("startedAt") or timestamp(), source=sync.get("source"),
                   phase=state.get("phase") or RUNNING, step=state.get("step"),
                   waiting_since=state.get("waitingSince"), message=state.get("message") or "",
                   # Copies: a hook's entry is updated in place as it completes, and the status
                   # writer compares against the previous status these came from.
                   results=[dict(r) for r in (state.get("syncResult") or {}).get("resources") or []])

    def state(self) -> dict:
        """operationState as the status holds it."""
        sync = {"revision": self.revision, "prune": self.prune, **({"source": self.source} if self.source else {})}
        state = {"phase": self.phase, "message": self.message, "startedAt": self.started_at,
                 "operation": {"sync": sync, "initiatedBy": self.initiated_by},
                 "syncResult": {"revision": self.revision, "resources": self.results}}
        if self.phase in (RUNNING, TERMINATING):
            state.update({k: v for k, v in (("step", self.step), ("waitingSince", self.waiting_since)) if v})
        else:
            state["finishedAt"] = timestamp()
        return state


@dataclass(frozen=True)
class Work:
    """What the pass hands the runner: the plan, each resource's diff, what is stale."""

    plan: Plan
    diffs: dict[ObjectRef, ObjectDiff]
    stale: Sequence[InventoryEntry]
    app_key: str
    replace: bool = False
    propagation: str = "foreground"
    applied: Sequence[ResourceResult] = ()  # applied earlier in this pass (Namespaces, CRDs)


@dataclass
class Ran:
    """What this pass did: its own applies and prunes (for the resource list and events)."""

    applied: list[ResourceResult] = field(default_factory=list)
    pruned: list[ResourceResult] = field(default_factory=list)


class OperationRunner:
    def __init__(self, client: KubeClient, syncer: Syncer, live: LiveCache,
                 health_context: Callable[[], health_stage.HealthContext]) -> None:
        self.client = client
        self.syncer = syncer
        self.live = live
        self.health_context = health_context

    def run(self, operation: Operation, work: Work) -> Ran:
        """Advance the operation as far as this pass may; its phase says where it ended."""
        ran = Ran()
        if operation.phase == TERMINATING:
            return self._finish(operation, work, ran, FAILED, "Operation terminated: what was applied stays",
                                sync_fail=False)
        index = next_step(work.plan, operation.step)
        if operation.step is not None and index > 0:
            outcome = self._outcome(work.plan.steps[index - 1], operation,
                                    hooks_only=index == len(work.plan.steps))
            if outcome.failed:
                return self._finish(operation, work, ran, FAILED, outcome.failed)
            if not outcome.done:
                return self._wait(operation, work.plan, index - 1, outcome)
        if not work.plan.steps:  # an empty app, allowed to be (allowEmpty): only its prune is left
            self._prune(operation, work, ran, 0)
        while index < len(work.plan.steps):
            step = work.plan.steps[index]
            if failure := self._apply_step(step, operation, work, ran):
                return self._finish(operation, work, ran, FAILED, failure)
            operation.step, operation.waiting_since = step.key, None
            if index == prune_after(work.plan):
                self._prune(operation, work, ran, step.wave)
            last = index == len(work.plan.steps) - 1
            # Rule 5: of the last step only the hooks are waited for, so an app without hooks
            # ends here with no health check and no request more.
            outcome = self._outcome(step, operation, hooks_only=last)
            if outcome.failed:
                return self._finish(operation, work, ran, FAILED, outcome.failed)
            if not outcome.done:
                return self._wait(operation, work.plan, index, outcome)
            if last:
                break
            index += 1
        failed = [r for r in [*ran.applied, *ran.pruned] if r.failed]
        return self._finish(operation, work, ran, FAILED if failed else SUCCEEDED, "")

    def _prune(self, operation: Operation, work: Work, ran: Ran, wave: int) -> None:
        if not (operation.prune and work.stale):
            return
        ran.pruned = self.syncer.prune(work.stale, work.app_key, propagation=work.propagation)
        operation.results += [_entry(r, Phase.SYNC, wave) for r in ran.pruned]
        for result in ran.pruned:
            if result.action is Action.DELETED:
                self.live.forget(result.ref)

    # ---------------------------------------------------------------- one step

    def _apply_step(self, step: Step, operation: Operation, work: Work, ran: Ran) -> str:
        """Apply the step's resources and create its hooks; the first failure's message, or ""."""
        done = {r.ref for r in work.applied}
        diffs = [work.diffs[ObjectRef.of(m)] for m in step.resources if ObjectRef.of(m) in work.diffs]
        results = [*[r for r in work.applied if r.ref in {d.ref for d in diffs}],
                   *self.syncer.apply([d for d in diffs if d.ref not in done], replace=work.replace)]
        for result in results:
            if result.live is not None:
                self.live.record(result.live)
        ran.applied += results
        operation.results += [_entry(r, step.phase, step.wave) for r in results
                              if r.action is not Action.UNCHANGED or r.message]
        for task in step.hooks:
            entry = self.create_hook(task, work.app_key)
            operation.results.append(entry)
            if entry["status"] == "SyncFailed":
                return f"{entry['kind']} {entry['name']} ({step.phase.value} hook, wave {step.wave}): {entry['message']}"
        if failed := [r for r in results if r.failed]:
            return "; ".join(f"{r.ref} (wave {step.wave}): {r.message}" for r in failed)
        return ""

    def _outcome(self, step: Step, operation: Operation, *, hooks_only: bool = False) -> StepOutcome:
        """Whether what the step applied is done: resources Healthy (unless `hooks_only`), hooks
        completed."""
        waiting = ""
        resources = () if hooks_only else step.resources
        context = self.health_context() if resources else None
        for manifest in resources:
            live = self.live.get(manifest)
            result = health_stage.assess(live, context) if live is not None else None
            status = result.status if result is not None else HealthStatus.HEALTHY
            if live is None:
                status, result = HealthStatus.MISSING, None
            ref = ObjectRef.of(manifest)
            if status is HealthStatus.DEGRADED:
                return StepOutcome(False, failed=f"{ref} (wave {step.wave}) is Degraded: {result.message if result else ''}")
            if status not in (HealthStatus.HEALTHY, HealthStatus.SUSPENDED) and not waiting:
                detail = (result.message if result else "") or status.value.lower()
                waiting = f"{ref.kind} {ref.name} ({detail})"
        for entry in self._hook_entries(step, operation):
            phase, message = self.hook_progress(entry)
            if phase == FAILED:
                return StepOutcome(False, failed=f"{entry['kind']} {entry['name']} ({step.phase.value} hook, "
                                                 f"wave {step.wave}) failed: {message}")
            if phase == RUNNING and not waiting:
                waiting = f"{step.phase.value} hook {entry['kind']} {entry['name']} ({message or 'running'})"
        return StepOutcome(not waiting, waiting=waiting)

    @staticmethod
    def _hook_entries(step: Step, operation: Operation) -> list[dict]:
        return [e for e in operation.results if e.get("hookType") == step.phase.value
                and e.get("syncPhase") == step.phase.value and e.get("wave") == step.wave]

    def _wait(self, operation: Operation, plan_: Plan, index: int, outcome: StepOutcome) -> Ran:
        operation.waiting_since = operation.waiting_since or timestamp()
        later = (plan_.describe(index + 1) if index + 1 < len(plan_.steps)
                 else f"finishing {plan_.describe(index)}")  # the last step, waiting for its hooks
        operation.message = (f"syncing: {later}, waiting for {outcome.waiting} since {operation.waiting_since}")
        operation.phase = RUNNING
        return Ran()

    def _finish(self, operation: Operation, work: Work, ran: Ran, phase: str, failure: str, *,
                sync_fail: bool = True) -> Ran:
        operation.phase = phase
        if phase == FAILED:
            operation.message = failure or "; ".join(
                f"{r.ref}: {r.message}" for r in [*ran.applied, *ran.pruned] if r.failed)
            if sync_fail:
                for task in work.plan.sync_fail:
                    operation.results.append(self.create_hook(task, work.app_key))
        else:
            changed = [r for r in ran.applied if r.action in (Action.CREATED, Action.CONFIGURED)]
            everything = [e for e in operation.results if e.get("action") in ("created", "configured")
                          and not e.get("hookType")]
            count = len(everything) if work.plan.staged else len(changed)
            operation.message = (f"successfully synced (applied {count}, pruned "
                                 f"{sum(r.action is Action.DELETED for r in ran.pruned)})")
        return ran

    # ---------------------------------------------------------------- hooks

    def create_hook(self, task: Task, app_key: str) -> dict:
        """Create one hook (after deleting its earlier instances, BeforeHookCreation); its result
        entry, with the name the API server gave a `generateName` hook."""
        manifest = task.manifest
        ref = ObjectRef.of(manifest)
        entry = {"group": ref.group, "version": manifest.get("apiVersion", "").rpartition("/")[2],
                 "kind": ref.kind, "namespace": ref.namespace, "name": task.name,
                 "hookType": task.phase.value, "syncPhase": task.phase.value, "wave": task.wave,
                 "deletePolicies": sorted(p.value for p in task.delete_policies)}
        try:
            resource = self.client.resource_of(manifest)
            namespace = ref.namespace or None
            if DeletePolicy.BEFORE_HOOK_CREATION in task.delete_policies:
                self._delete_earlier(task, resource, namespace, app_key)
            if (manifest.get("metadata") or {}).get("name"):
                live = self.client.request("PATCH", resource.object_path(manifest["metadata"]["name"], namespace),
                                           query={"fieldManager": FIELD_MANAGER, "force": "true"}, body=manifest,
                                           content_type="application/apply-patch+yaml")
            else:
                live = self.client.request("POST", resource.collection_path(namespace), body=manifest,
                                           query={"fieldManager": FIELD_MANAGER})
        except (KubeApiError, UnservedApiError) as error:
            message = getattr(error, "message", "") or str(error)
            return {**entry, "status": "SyncFailed", "hookPhase": FAILED, "message": message}
        self.live.record(live)
        return {**entry, "name": live["metadata"]["name"], "status": "Synced", "hookPhase": RUNNING,
                "action": "created", "message": f"{task.phase.value} hook created"}

    def _delete_earlier(self, task: Task, resource, namespace: str | None, app_key: str) -> None:
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        items = self.client.list(resource, namespace, label_selector=selector)["items"]
        names = [i["metadata"]["name"] for i in items if owner_of(i) == app_key
                 and not (i["metadata"].get("deletionTimestamp"))]
        gone = []
        for name in hook_name_taken(task, names):
            try:
                self.client.request("DELETE", resource.object_path(name, namespace),
                                    body={"propagationPolicy": "Background"})
                gone.append(InventoryEntry(resource.api_version, resource.kind, namespace or "", name))
            except KubeApiError as error:
                if error.status != 404:
                    raise
        if gone and (task.manifest.get("metadata") or {}).get("name"):
            self.syncer.wait_deleted(gone, timeout=30.0)  # the same name cannot be created until then

    def hook_progress(self, entry: dict) -> tuple[str, str]:
        """(Running | Succeeded | Failed, message) of a hook created earlier, read now; a finished
        hook's delete policy is carried out and its entry updated."""
        if entry.get("hookPhase") in (SUCCEEDED, FAILED):
            return entry["hookPhase"], entry.get("message", "")
        target = hook_target(entry)
        try:
            live = self.live.get(target)
        except (KubeApiError, UnservedApiError) as error:
            return FAILED, str(error)
        phase, message = hook_phase(live, self.health_context())
        if phase != RUNNING:
            entry.update(hookPhase=phase, message=message)
            policy = DeletePolicy.HOOK_SUCCEEDED if phase == SUCCEEDED else DeletePolicy.HOOK_FAILED
            if policy.value in entry.get("deletePolicies", ()) and live is not None:
                self.delete_hook(target)
        return phase, message

    def delete_hook(self, target: Manifest) -> None:
        """Delete a hook (its Pods in the background); a failure is logged, not raised."""
        try:
            resource = self.client.resource_of(target)
            self.client.request("DELETE", resource.object_path(target["metadata"]["name"],
                                                                target["metadata"].get("namespace")),
                                body={"propagationPolicy": "Background"})
        except (KubeApiError, UnservedApiError) as error:
            logger.warning("could not delete hook %s %s: %s", target["kind"], target["metadata"]["name"], error)


def hook_target(entry: dict) -> Manifest:
    """The identity of the hook a result entry (create_hook's) names, as a manifest to look it up by."""
    api_version = f"{entry['group']}/{entry['version']}" if entry.get("group") else entry.get("version", "v1")
    namespace = entry.get("namespace")
    return {"apiVersion": api_version, "kind": entry["kind"],
            "metadata": {"name": entry["name"], **({"namespace": namespace} if namespace else {})}}


def hook_phase(live: Manifest | None, context: health_stage.HealthContext | None = None) -> tuple[str, str]:
    """Whether a hook is done: a Job by its Complete/Failed condition, a Pod by its phase, anything
    with a `status.phase` (Argo Workflows) by it, any other kind by its health."""
    if live is None:
        return FAILED, "deleted before it completed"
    status = live.get("status") or {}
    kind = live.get("kind")
    if kind == "Job":
        for condition in status.get("conditions") or []:
            if str(condition.get("status")) == "True" and condition.get("type") in ("Complete", "Failed"):
                return ((SUCCEEDED, "completed") if condition["type"] == "Complete"
                        else (FAILED, condition.get("message") or condition.get("reason") or "the Job failed"))
        return RUNNING, f"{status.get('active', 0)} active, {status.get('failed', 0)} failed"
    phase = str(status.get("phase") or "")
    if kind == "Pod" or phase in ("Succeeded", "Failed", "Error"):
        if phase == "Succeeded":
            return SUCCEEDED, "completed"
        if phase in ("Failed", "Error"):
            return FAILED, status.get("message") or status.get("reason") or f"phase {phase}"
        return RUNNING, phase.lower() or "pending"
    result = health_stage.assess(live, context)
    if result is None or result.status is HealthStatus.HEALTHY:
        return SUCCEEDED, "healthy"
    if result.status is HealthStatus.DEGRADED:
        return FAILED, result.message
    return RUNNING, result.message or result.status.value.lower()


def _entry(result: ResourceResult, phase: Phase, wave: int) -> dict:
    status = {Action.CREATED: "Synced", Action.CONFIGURED: "Synced", Action.UNCHANGED: "Synced",
              Action.DELETED: "Pruned", Action.FAILED: "SyncFailed"}[result.action]
    entry = {"group": result.ref.group, "kind": result.ref.kind, "namespace": result.ref.namespace,
             "name": result.ref.name, "status": status, "action": result.action.value,
             "syncPhase": phase.value, "wave": wave}
    if result.message:
        entry["message"] = result.message
    return entry
