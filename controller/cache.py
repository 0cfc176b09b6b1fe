"""Live-object cache fed by watches (the gitops-engine `pkg/cache` idea, small).

One list+watch per resource type that some Application manages, filtered by Gantry's managed-by
label. Diff reads live objects from here instead of asking the API server per object, and every
change to a managed object calls `on_change` with the owning Application's key, which is how drift
is noticed within seconds instead of at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .diff import owner_of
from .kube import KubeClient, Resource, list_and_watch
from .model import MANAGED_BY_LABEL, MANAGED_BY_VALUE, Manifest, ObjectRef

logger = logging.getLogger(__name__)
_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"


def _slim(obj: Manifest) -> Manifest:
    """The object without managedFields and kubectl's last-applied copy: nothing here reads them
    (diff drops them too), and they are often half an object's size, times every managed object."""
    metadata = obj.get("metadata") or {}
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return obj


def _newer(candidate: Manifest, current: Manifest | None) -> bool:
    if current is None:
        return True
    try:
        return int(candidate["metadata"]["resourceVersion"]) >= int(current["metadata"]["resourceVersion"])
    except (KeyError, ValueError):  # resourceVersions are opaque in principle; trust the newest event
        return True


class LiveCache:
    def __init__(self, client: KubeClient, on_change: Callable[[str, Manifest], None] | None = None,
                 *, watch_timeout: int = 300, namespaces: tuple[str, ...] | None = None,
                 watch: bool = True) -> None:
        """namespaces: watch only these (namespaced mode, where cluster-wide watches are forbidden).
        watch=False: no watches, every lookup reads the server (one look, as `gantry app diff` takes)."""
        self.client = client
        self.watch = watch
        self.namespaces = namespaces
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self._objects: dict[ObjectRef, Manifest] = {}
        self._watched: dict[tuple[str, str, str | None], threading.Event] = {}  # (apiVersion, kind, ns) -> synced
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    # ------------------------------------------------------------------ reads

    def get(self, target: Manifest) -> Manifest | None:
        """The live object for a target: from the cache when its type is watched and synced and
        the object is there; otherwise one GET (objects not yet labelled, or just deleted)."""
        _, resource, cached = self._cached(target)
        if cached is not None:
            return cached
        metadata = target.get("metadata") or {}
        live = self.client.get(resource, metadata["name"], metadata.get("namespace"))
        if live is not None:
            self.record(live)
        return live

    def lookup(self, targets: list[Manifest], *, list_above: int = 3) -> dict[ObjectRef, Manifest | None]:
        """The live objects of many targets at once. Misses (objects not labelled yet, or absent)
        are fetched by one LIST per type and namespace when there are more than `list_above` of
        them, so a first sync of a thousand objects costs a few requests, not a thousand GETs."""
        found: dict[ObjectRef, Manifest | None] = {}
        misses: dict[tuple[Resource, str | None], list[Manifest]] = {}
        resources: dict[tuple[str, str], Resource] = {}  # each type looked up and watched once a call
        for target in targets:
            type_key = (target.get("apiVersion", ""), target.get("kind", ""))
            resource = resources.get(type_key)
            if resource is None:
                resource = resources[type_key] = self.client.resource_of(target)
                self.ensure_watched(resource)
            ref = ObjectRef.of(target)
            with self._lock:
                cached = self._objects.get(ref)
            if cached is not None:
                found[ref] = cached
            else:
                namespace = (target.get("metadata") or {}).get("namespace") if resource.namespaced else None
                misses.setdefault((resource, namespace), []).append(target)
        for (resource, namespace), group in misses.items():
            if len(group) > list_above:
                items = self.client.list(resource, namespace)["items"]
                by_name = {item["metadata"]["name"]: item for item in items}
                for target in group:
                    live = by_name.get(target["metadata"]["name"])
                    if live is not None:
                        live.setdefault("apiVersion", resource.api_version)
                        live.setdefault("kind", resource.kind)
                        self.record(live)
                    found[ObjectRef.of(target)] = live
            else:
                for target in group:
                    found[ObjectRef.of(target)] = self.get(target)
        return found

    def _cached(self, target: Manifest) -> tuple[ObjectRef, Resource, Manifest | None]:
        """The target's identity, its REST resource (now watched) and the cached live object."""
        ref = ObjectRef.of(target)
        resource = self.client.resource_of(target)
        self.ensure_watched(resource)
        with self._lock:
            return ref, resource, self._objects.get(ref)

    def record(self, live: Manifest) -> None:
        """Remember an object the caller just got from the server (an apply's answer)."""
        ref = ObjectRef.of(live)
        labels = (live.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
            return
        with self._lock:
            if _newer(live, self._objects.get(ref)):
                self._objects[ref] = _slim(live)

    def forget(self, ref: ObjectRef) -> None:
        with self._lock:
            self._objects.pop(ref, None)

    def size(self) -> int:
        with self._lock:
            return len(self._objects)

    def objects_of(self, app_key: str) -> list[Manifest]:
        with self._lock:
            return [obj for obj in self._objects.values() if owner_of(obj) == app_key]

    # ------------------------------------------------------------------ watches

    def ensure_watched(self, resource: Resource, wait: float = 30.0) -> bool:
        """Start watches on resource's type if none run; True once their initial lists are in."""
        if not self.watch:
            return False
        if self.namespaces is None:
            scopes: tuple[str | None, ...] = (None,)
        elif resource.namespaced:
            scopes = self.namespaces
        else:
            return False  # namespaced mode: cluster-scoped objects are not ours to watch
        events = []
        with self._lock:
            for namespace in scopes:
                key = (resource.api_version, resource.kind, namespace)
                synced = self._watched.get(key)
                if synced is None:
                    synced = self._watched[key] = threading.Event()
                    thread = threading.Thread(target=self._run, args=(resource, namespace, synced), daemon=True,
                                              name=f"watch-{resource.plural}.{resource.group or 'core'}")
                    thread.start()
                events.append(synced)
        return all(event.wait(wait) for event in events)

    def _run(self, resource: Resource, namespace: str | None, synced: threading.Event) -> None:
        def listed(items: list[Manifest]) -> None:
            for item in items:
                self._store("ADDED", item, notify=synced.is_set())
            self._drop_missing(resource, namespace, {ObjectRef.of(item) for item in items})
            synced.set()

        list_and_watch(self.client, resource, namespace, label_selector=_SELECTOR, timeout=self.watch_timeout,
                       stopped=self._stopped, on_list=listed,
                       on_event=lambda kind, obj: self._store(kind, obj, notify=True))

    def _store(self, event_type: str, obj: Manifest, *, notify: bool) -> None:
        ref = ObjectRef.of(obj)
        with self._lock:
            before = self._objects.get(ref)
            if event_type == "DELETED":
                self._objects.pop(ref, None)
            elif _newer(obj, before):
                self._objects[ref] = _slim(obj)
            else:
                return
        if not notify or self.on_change is None:
            return
        # The owner before the change too: an object whose tracking id someone rewrote is still the
        # old owner's, whose self-heal must hear of it to take it back.
        for owner in dict.fromkeys((owner_of(obj), owner_of(before) if before is not None else None)):
            if owner:
                self.on_change(owner, obj)

    def _drop_missing(self, resource: Resource, namespace: str | None, seen: set[ObjectRef]) -> None:
        """After a relist, objects deleted while no watch ran must go too (and count as changes)."""
        with self._lock:
            gone = [
                (ref, obj) for ref, obj in self._objects.items()
                if obj.get("apiVersion") == resource.api_version and ref.kind == resource.kind and ref not in seen
                and (namespace is None or ref.namespace == namespace)
            ]
            for ref, _ in gone:
                del self._objects[ref]
        for _, obj in gone:
            owner = owner_of(obj)
            if owner and self.on_change:
                self.on_change(owner, obj)
