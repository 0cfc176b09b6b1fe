"""Sync stage: server-side apply of what differs, in a safe order, then prune from the inventory.

Order (as Argo CD and Flux do it): Namespaces and CRDs first, so the objects that live in them can
be applied; then the rest by a kind table (config and RBAC before the workloads that use them,
Ingresses last). Within one step objects go in parallel. Prune deletes only objects listed in the
previous inventory, absent from the target, and carrying this Application's tracking annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass
from itertools import groupby

from . import traps
from .diff import ObjectDiff, tracking_id
from .kube import KubeApiError, KubeClient, Resource, UnservedApiError
from .model import FIELD_MANAGER, TRACKING_ANNOTATION, Action, Manifest, ObjectRef

# Lower goes first. Unknown kinds (custom resources) go after the built-in workloads' inputs.
KIND_ORDER = {
    kind: index
    for index, kind in enumerate([
        "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy", "PodDisruptionBudget",
        "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
        "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
        "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList",
        "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
        "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    ])
}
_CUSTOM_KIND = len(KIND_ORDER)
# The field manager of heal patches (controller/traps.py), whose managedFields entry is removed
# again right after the apply: no field stays owned by an Update of ours.
HEAL_MANAGER = f"{FIELD_MANAGER}-heal"
RECREATE_WAIT = 60.0  # seconds an object deleted to be recreated may take to go (a StatefulSet orphaning its Pods)


def stage(manifest: Manifest) -> int:
    """0 for what others live in (Namespaces, CRDs), 1 for everything else."""
    return 0 if manifest.get("kind") in ("Namespace", "CustomResourceDefinition") else 1


def order_key(manifest: Manifest) -> tuple:
    ref = ObjectRef.of(manifest)
    return (stage(manifest), KIND_ORDER.get(ref.kind, _CUSTOM_KIND), ref.kind, ref.namespace, ref.name)


def ordered(manifests: Iterable[Manifest]) -> list[Manifest]:
    return sorted(manifests, key=order_key)


@dataclass(frozen=True)
class ResourceResult:
    ref: ObjectRef
    action: Action
    message: str = ""
    live: Manifest | None = None  # the object as the server returned it after the action
    # A failure that goes away by itself (a namespace being deleted, an object changed meanwhile,
    # a server error): worth retrying however often the retry policy allows.
    transient: bool = False

    @property
    def failed(self) -> bool:
        return self.action is Action.FAILED


@dataclass(frozen=True)
class InventoryEntry:
    """One object Gantry applied for an Application. The inventory is `status.resources`: it lists
    every object of the last render and every stale one not pruned yet, which is exactly what prune
    needs, so a second list of the same objects would only double the Application's size (and the
    cost of every watch event of it)."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Manifest) -> "InventoryEntry":
        metadata = manifest.get("metadata") or {}
        return cls(manifest["apiVersion"], manifest["kind"], metadata.get("namespace") or "", metadata["name"])

    @classmethod
    def of_resource(cls, entry: Mapping) -> "InventoryEntry":
        """From an item of `status.resources` (Argo CD's shape: group, version, kind, namespace, name)."""
        group, version = entry.get("group") or "", entry.get("version") or ""
        return cls(f"{group}/{version}" if group else version, entry["kind"], entry.get("namespace") or "",
                   entry["name"])

    @classmethod
    def parse(cls, entry: Mapping) -> "InventoryEntry":
        """From an item of `status.inventory`, which Gantry wrote before status.resources took its place."""
        return cls(entry["apiVersion"], entry["kind"], entry.get("namespace") or "", entry["name"])

    @property
    def ref(self) -> ObjectRef:
        group = self.api_version.rpartition("/")[0] if "/" in self.api_version else ""
        return ObjectRef(group, self.kind, self.namespace, self.name)


def inventory_of(status: Mapping) -> list[InventoryEntry]:
    """The objects an Application's status says it applied (see InventoryEntry)."""
    if legacy := status.get("inventory"):
        return [InventoryEntry.parse(e) for e in legacy]
    return [InventoryEntry.of_resource(e) for e in status.get("resources") or ()]


def _established(crd: Manifest) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def prunable(live: Manifest, app_key: str, ref: ObjectRef) -> bool:
    """Whether prune may delete `live`, the object of a stale inventory entry `ref`: only while it
    carries this app's tracking id for that very object (else someone created or adopted it since).
    The prune and every preview of it (gantry app diff, the UI) ask this."""
    owner = ((live.get("metadata") or {}).get("annotations") or {}).get(TRACKING_ANNOTATION)
    return owner == tracking_id(app_key, ref)


class Syncer:
    def __init__(self, client: KubeClient, *, workers: int = 8, count: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.count = count or (lambda command: None)  # metrics: one call per request, by command
        self.workers = workers
        self.applies = 0  # read by tests and benchmarks

    def apply(self, diffs: Sequence[ObjectDiff], *, replace: bool = False) -> list[ResourceResult]:
        """Apply every object that is not in sync, kind group by kind group; stop at the first
        group with a failure so later objects never run against half-applied prerequisites."""
        by_target = {id(d.target): d for d in diffs}
        results: list[ResourceResult] = [
            ResourceResult(d.ref, Action.UNCHANGED, "", d.live) for d in diffs if d.in_sync
        ]
        pending = ordered(d.target for d in diffs if not d.in_sync)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for _, group in groupby(pending, key=lambda m: order_key(m)[:2]):
                batch = [by_target[id(m)] for m in group]
                outcome = list(pool.map(lambda d: self._apply_one(d, replace), batch))
                results.extend(outcome)
                crds = [r.live for r in outcome if r.ref.kind == "CustomResourceDefinition" and r.live]
                if crds:
                    self._wait_established(crds)
                    self.client.invalidate_discovery()
                if any(r.failed for r in outcome):
                    break
        return results

    def _wait_established(self, crds: Sequence[Manifest], timeout: float = 30.0) -> None:
        """Custom resources can be applied only once their CRD is Established (Flux waits too).
        Each CRD not Established yet is watched (one stream, from the version just read) rather
        than polled; if the watch is refused, read again once a second."""
        resource = self.client.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        deadline = time.monotonic() + timeout
        for crd in crds:
            name = crd["metadata"]["name"]
            while (remaining := deadline - time.monotonic()) > 0:
                live = self.client.get(resource, name) or {}
                if _established(live) or not live:
                    break
                query = {"fieldSelector": f"metadata.name={name}", "timeoutSeconds": max(1, int(remaining)),
                         "resourceVersion": live["metadata"].get("resourceVersion", "")}
                try:
                    if any(_established(event.get("object") or {})
                           for event in self.client.stream(resource.collection_path(), query, timeout=remaining)):
                        break
                except Exception:  # noqa: BLE001 (a refused or broken watch: read again in a second)
                    time.sleep(min(1.0, max(remaining, 0)))

    def _apply_one(self, diff: ObjectDiff, replace: bool) -> ResourceResult:
        target = diff.target
        metadata = target["metadata"]
        replace = replace or traps.object_sync_options(target).replace
        self.applies += 1
        self.count("replace" if replace and diff.live is not None else "apply")
        try:
            resource = self.client.resource_of(target)
            path = resource.object_path(metadata["name"], metadata.get("namespace"))
            if diff.recreate and diff.live is not None:
                return self._recreate(diff, resource, path)
            if replace and diff.live is not None:
                # Replace=true: a PUT of exactly the target, as `kubectl replace` (fields others set are dropped).
                body = {**target, "metadata": {**metadata, "resourceVersion": diff.live["metadata"]["resourceVersion"]}}
                live = self.client.request("PUT", path, body=body, query={"fieldManager": FIELD_MANAGER})
                return ResourceResult(diff.ref, Action.CONFIGURED, "", live)
            return self._server_side_apply(diff, path)
        except UnservedApiError as error:
            return ResourceResult(diff.ref, Action.FAILED, str(error))
        except KubeApiError as error:
            namespace = traps.terminating_namespace(error.status, error.message)
            if namespace:
                return ResourceResult(diff.ref, Action.FAILED, traps.terminating_message(namespace), transient=True)
            return ResourceResult(diff.ref, Action.FAILED, error.message or error.reason, transient=error.transient)

    def _server_side_apply(self, diff: ObjectDiff, path: str) -> ResourceResult:
        """Heal what the change needs first (controller/traps.py), then apply; a field another
        manager owns is taken over with force, as for drift, and the result says whose it was."""
        healed = self._heal(diff, path) if diff.live is not None else ()
        said = [f"{heal.field} removed: {heal.why}" for heal in healed]
        try:
            live = self._ssa(diff.target, path, force=False)
        except KubeApiError as error:
            takeovers = traps.conflicts_from_error(error.status, error.message)
            if not takeovers:
                raise
            self.count("apply")
            live = self._ssa(diff.target, path, force=True)
            said.append(traps.takeover_message(takeovers))
        if healed:
            live = self._release_heal(path, live)
        return ResourceResult(diff.ref, Action.CREATED if diff.missing else Action.CONFIGURED, "; ".join(said), live)

    def _ssa(self, target: Manifest, path: str, *, force: bool) -> Manifest:
        query = {"fieldManager": FIELD_MANAGER, **({"force": "true"} if force else {})}
        return self.client.request("PATCH", path, query=query, body=target, content_type="application/apply-patch+yaml")

    def _heal(self, diff: ObjectDiff, path: str) -> tuple[traps.Heal, ...]:
        """The heal patch (traps.heals), made only while the object is as read: an object changed
        meanwhile (a controller writing its status) is read again and judged once more."""
        live = diff.live
        for attempt in range(2):
            found = traps.heals(diff.target, live)
            if not found:
                return ()
            self.count("apply")
            try:
                self.client.request("PATCH", path, query={"fieldManager": HEAL_MANAGER},
                                    body=traps.heal_patch(found, live["metadata"]["resourceVersion"]),
                                    content_type="application/merge-patch+json")
                return found
            except KubeApiError as error:
                if error.status != 409 or attempt:
                    raise
                live = self._get(path)
                if live is None:
                    return ()
        return ()

    def _release_heal(self, path: str, live: Manifest) -> Manifest:
        """Drop the heal patch's entry from managedFields once the apply co-owns what it set: left
        there, it would keep `strategy.type: Recreate` after git stops saying it."""
        for attempt in range(2):
            entries = (live.get("metadata") or {}).get("managedFields") or []
            index = next((i for i, e in enumerate(entries) if e.get("manager") == HEAL_MANAGER), None)
            if index is None:
                return live
            try:
                return self.client.request("PATCH", path, query={"fieldManager": HEAL_MANAGER}, body=[
                    {"op": "test", "path": f"/metadata/managedFields/{index}/manager", "value": HEAL_MANAGER},
                    {"op": "remove", "path": f"/metadata/managedFields/{index}"}],
                    content_type="application/json-patch+json")
            except KubeApiError:
                if attempt:
                    return live  # harmless until git drops the field the heal set; tried again then
                live = self._get(path) or live
        return live

    def _recreate(self, diff: ObjectDiff, resource: Resource, path: str) -> ResourceResult:
        """Delete the object (only that one: its uid is a precondition), wait until it is gone, and
        create it from the target; a StatefulSet's Pods and claims are orphaned, not deleted."""
        live = diff.live
        self.count("delete")
        try:
            self.client.request("DELETE", path, body={
                "propagationPolicy": traps.recreate_propagation(diff.ref.kind),
                "preconditions": {"uid": live["metadata"]["uid"]}})
        except KubeApiError as error:
            if error.status != 404:
                raise
        if not self._wait_gone(resource, path, live["metadata"]["uid"]):
            return ResourceResult(diff.ref, Action.FAILED, (
                f"deleted to be recreated ({', '.join(diff.recreate)} cannot change in place), but still there "
                f"after {RECREATE_WAIT:.0f}s (finalizers: {', '.join(self._finalizers(path)) or 'none'}); retried"),
                transient=True)
        created = self._ssa(diff.target, path, force=True)
        return ResourceResult(diff.ref, Action.CREATED, traps.recreated_message(diff.ref.kind, diff.recreate), created)

    def _wait_gone(self, resource: Resource, path: str, uid: str, timeout: float = RECREATE_WAIT) -> bool:
        """Whether the object of `uid` is gone within `timeout`, by a watch of that one name."""
        current = self._get(path)
        if current is None or current["metadata"].get("uid") != uid:
            return True
        metadata = current["metadata"]
        query = {"fieldSelector": f"metadata.name={metadata['name']}", "resourceVersion": metadata["resourceVersion"],
                 "timeoutSeconds": max(1, int(timeout))}
        try:
            for event in self.client.stream(resource.collection_path(metadata.get("namespace")), query,
                                            timeout=timeout):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "DELETED" and (obj.get("metadata") or {}).get("uid") == uid:
                    return True
                if kind == "ERROR":
                    break
        except KubeApiError:
            pass  # the watch could not start or resume: the GET below says how things stand
        current = self._get(path)
        return current is None or current["metadata"].get("uid") != uid

    def _get(self, path: str) -> Manifest | None:
        try:
            return self.client.request("GET", path)
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    def _finalizers(self, path: str) -> list[str]:
        current = self._get(path)
        return list((current or {}).get("metadata", {}).get("finalizers") or [])

    def wait_deleted(self, entries: Iterable[InventoryEntry], timeout: float = 60.0) -> list[InventoryEntry]:
        """Wait until the entries' objects are gone; returns those still there at the timeout."""
        remaining = list(entries)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            still = []
            for entry in remaining:
                try:
                    resource = self.client.resource(entry.api_version, entry.kind)
                    if self.client.get(resource, entry.name, entry.namespace or None) is not None:
                        still.append(entry)
                except (UnservedApiError, KubeApiError):
                    pass
            remaining = still
            if remaining:
                time.sleep(0.5)
        return remaining

    def prune(self, stale: Iterable[InventoryEntry], app_key: str, *,
              propagation: str = "foreground") -> list[ResourceResult]:
        """Delete stale inventory entries that still carry this app's tracking id, in reverse order.
        propagation: what happens to dependents (a Deployment's ReplicaSets and Pods), as kubectl's
        --cascade: foreground waits for them, background lets the garbage collector follow, orphan keeps them."""
        entries = sorted(stale, key=lambda e: order_key({"apiVersion": e.api_version, "kind": e.kind,
                                                         "metadata": {"name": e.name, "namespace": e.namespace}}),
                         reverse=True)
        results = []
        for entry in entries:
            ref = entry.ref
            try:
                resource = self.client.resource(entry.api_version, entry.kind)
                live = self.client.get(resource, entry.name, entry.namespace or None)
                if live is None:
                    results.append(ResourceResult(ref, Action.DELETED, "already gone"))
                    continue
                if not prunable(live, app_key, ref):
                    # Not ours (any more): someone else created or adopted it. Never delete that.
                    results.append(ResourceResult(ref, Action.UNCHANGED, "not pruned: not created by this application"))
                    continue
                self.count("delete")
                # On the version just read: another app that adopted it meanwhile keeps it (409).
                self.client.request("DELETE", resource.object_path(entry.name, entry.namespace or None),
                                    body={"propagationPolicy": propagation.capitalize(),
                                          "preconditions": {"resourceVersion": live["metadata"]["resourceVersion"]}})
                results.append(ResourceResult(ref, Action.DELETED, "pruned"))
            except UnservedApiError:
                results.append(ResourceResult(ref, Action.DELETED, "its API is no longer served"))
            except KubeApiError as error:
                if error.status == 404:
                    results.append(ResourceResult(ref, Action.DELETED, "already gone"))
                elif error.status == 409:
                    results.append(ResourceResult(ref, Action.FAILED, "not pruned: it changed while it was being "
                                                                      "pruned; looked at again when the sync is retried"))
                else:
                    results.append(ResourceResult(ref, Action.FAILED, f"prune failed: {error.message or error.reason}"))
        return results
