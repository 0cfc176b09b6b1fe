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

from .diff import ObjectDiff, tracking_id
from .kube import KubeApiError, KubeClient, UnservedApiError
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
        """Custom resources can be applied only once their CRD is Established (Flux waits too)."""
        resource = self.client.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        deadline = time.monotonic() + timeout
        for crd in crds:
            while time.monotonic() < deadline:
                live = self.client.get(resource, crd["metadata"]["name"]) or {}
                conditions = (live.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
                time.sleep(0.2)

    def _apply_one(self, diff: ObjectDiff, replace: bool) -> ResourceResult:
        target = diff.target
        metadata = target["metadata"]
        self.applies += 1
        self.count("replace" if replace and diff.live is not None else "apply")
        try:
            resource = self.client.resource_of(target)
            path = resource.object_path(metadata["name"], metadata.get("namespace"))
            if replace and diff.live is not None:
                # Replace=true: a PUT of exactly the target, as `kubectl replace` (fields others set are dropped).
                body = {**target, "metadata": {**metadata, "resourceVersion": diff.live["metadata"]["resourceVersion"]}}
                live = self.client.request("PUT", path, body=body, query={"fieldManager": FIELD_MANAGER})
            else:
                live = self.client.request(
                    "PATCH", path, query={"fieldManager": FIELD_MANAGER, "force": "true"},
                    body=target, content_type="application/apply-patch+yaml",
                )
        except UnservedApiError as error:
            return ResourceResult(diff.ref, Action.FAILED, str(error))
        except KubeApiError as error:
            return ResourceResult(diff.ref, Action.FAILED, error.message or error.reason)
        action = Action.CREATED if diff.missing else Action.CONFIGURED
        return ResourceResult(diff.ref, action, "", live)

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
                owner = ((live.get("metadata") or {}).get("annotations") or {}).get(TRACKING_ANNOTATION)
                if owner != tracking_id(app_key, ref):
                    # Not ours (any more): someone else created or adopted it. Never delete that.
                    results.append(ResourceResult(ref, Action.UNCHANGED, "not pruned: not created by this application"))
                    continue
                self.count("delete")
                self.client.request("DELETE", resource.object_path(entry.name, entry.namespace or None),
                                    body={"propagationPolicy": propagation.capitalize()})
                results.append(ResourceResult(ref, Action.DELETED, "pruned"))
            except UnservedApiError:
                results.append(ResourceResult(ref, Action.DELETED, "its API is no longer served"))
            except KubeApiError as error:
                if error.status == 404:
                    results.append(ResourceResult(ref, Action.DELETED, "already gone"))
                else:
                    results.append(ResourceResult(ref, Action.FAILED, f"prune failed: {error.message or error.reason}"))
        return results
