"""Diff stage: target objects vs live ones, the way `kubectl diff --server-side` does it.

Each target is sent as a server-side-apply dry run; the server's answer is what the object would
be after sync, with defaults and other managers' fields in place, so only real drift differs from
live. Results are cached by (target content, live content without status), so a steady app costs
no API call at all; the comparison itself (`normalise`, `compare`) is pure.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import yaml

from . import traps
from .kube import KubeApiError, KubeClient, Resource, UnservedApiError
from .model import (
    FIELD_MANAGER,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    TRACKING_ANNOTATION,
    ApplyFailure,
    IgnoreDifference,
    Manifest,
    ObjectRef,
)

# Fields the server owns; they change without anyone changing the object's intent.
_SERVER_METADATA = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid", "selfLink")
_SECRET_MASK = "++++++++"

# Hints for APIs users still write from old tutorials; the API server only says "not served".
_REMOVED_API_HINTS = {
    ("networking.k8s.io/v1beta1", "Ingress"): "use networking.k8s.io/v1 (spec.rules[].http.paths[].backend.service.name/service.port, and pathType)",
    ("extensions/v1beta1", "Ingress"): "use networking.k8s.io/v1 (spec.rules[].http.paths[].backend.service.name/service.port, and pathType)",
    ("extensions/v1beta1", "Deployment"): "use apps/v1 (spec.selector is required)",
    ("apps/v1beta1", "Deployment"): "use apps/v1 (spec.selector is required)",
    ("apps/v1beta2", "Deployment"): "use apps/v1",
    ("policy/v1beta1", "PodDisruptionBudget"): "use policy/v1",
    ("batch/v1beta1", "CronJob"): "use batch/v1",
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler"): "use autoscaling/v2",
}


def tracking_id(app_key: str, ref: ObjectRef) -> str:
    """The annotation value that marks an object as created by one Application."""
    return f"{app_key}:{ref.group}/{ref.kind}:{ref.namespace}/{ref.name}"


def owner_of(obj: Manifest) -> str | None:
    """The `namespace/name` of the Application that applied obj, from its tracking annotation."""
    tracking = ((obj.get("metadata") or {}).get("annotations") or {}).get(TRACKING_ANNOTATION, "")
    app_key, sep, _ = str(tracking).partition(":")
    return app_key if sep else None


def owned_elsewhere(app_key: str, lives: Iterable[Manifest | None], *,
                    ours: Collection[ObjectRef] = ()) -> list[ApplyFailure]:
    """The live objects another Application's tracking id claims (Argo CD's shared-resource
    conflict): applying them would take them over, and a later prune of ours would delete them.
    Objects no Application claims (created by hand, or by a tool) are adopted as before, and so are
    those in our own inventory (`ours`): we applied them first, so a tracking id rewritten since
    (by hand, or by an app before this check existed) is drift for our self-heal to undo."""
    conflicts = []
    for live in lives:
        owner = owner_of(live) if live is not None else None
        if owner and owner != app_key and ObjectRef.of(live) not in ours:
            conflicts.append(ApplyFailure(ObjectRef.of(live), (
                f"already managed by Application {owner} (its {TRACKING_ANNOTATION} annotation); an object "
                f"belongs to one application: rename it here, or remove it from {owner} first")))
    return conflicts


def unserved_message(error: UnservedApiError) -> str:
    hint = _REMOVED_API_HINTS.get((error.api_version, error.kind))
    message = f"{error.api_version} {error.kind} is not served by this cluster"
    if error.api_version.endswith(("v1beta1", "v1beta2", "v2beta2")) and hint:
        message += " (the API was removed from Kubernetes)"
    return f"{message}; {hint}" if hint else f"{message}; check apiVersion and kind, or install the CRD first"


def crd_kinds(objects: Sequence[Manifest]) -> dict[tuple[str, str], Resource]:
    """(group, kind) → Resource for every custom resource type the given CRDs define."""
    kinds = {}
    for crd in objects:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            kinds[(spec.get("group", ""), names.get("kind", ""))] = Resource(
                f"{spec.get('group')}/{version.get('name')}", names.get("kind", ""), names.get("plural", ""),
                spec.get("scope") == "Namespaced")
    return kinds


def prepare(objects: Iterable[Manifest], resource_of: Callable[[Manifest], Resource], *,
            destination_namespace: str, app_key: str) -> list[Manifest]:
    """What sync applies: namespaced objects defaulted to the destination namespace, cluster-scoped
    ones without one, each marked with the tracking label and annotation. Raises UnservedApiError."""
    prepared = []
    for source in objects:
        target = copy.deepcopy(source)
        metadata = target.setdefault("metadata", {})
        if resource_of(target).namespaced:
            metadata["namespace"] = metadata.get("namespace") or destination_namespace
        else:
            metadata.pop("namespace", None)
        # An empty `labels:` in YAML is null, not a map.
        metadata["labels"] = {**(metadata.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY_VALUE}
        metadata["annotations"] = {**(metadata.get("annotations") or {}),
                                   TRACKING_ANNOTATION: tracking_id(app_key, ObjectRef.of(target))}
        prepared.append(target)
    return prepared


def normalise(obj: Manifest, ignores: Sequence[IgnoreDifference] = ()) -> Manifest:
    """The object without what the server owns (status, resourceVersion, managedFields …) and
    without the fields `ignoreDifferences` names for it."""
    result = copy.deepcopy(obj)
    result.pop("status", None)
    metadata = result.get("metadata") or {}
    for key in _SERVER_METADATA:
        metadata.pop(key, None)
    annotations = metadata.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if "annotations" in metadata and not annotations:
        metadata.pop("annotations")
    ref = ObjectRef.of(obj)
    for ignore in ignores:
        if ignore.matches(ref):
            for pointer in ignore.json_pointers:
                _remove_pointer(result, pointer)
    return result


def _remove_pointer(obj: Manifest, pointer: str) -> None:
    parts = _pointer_parts(pointer)
    node = obj
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return
        if node is None:
            return
    if not parts:
        return
    last = parts[-1]
    if isinstance(node, dict):
        node.pop(last, None)
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node.pop(int(last))


def keep_live_values(target: Manifest, live: Manifest, ignores: Sequence[IgnoreDifference]) -> Manifest:
    """target with every ignored field set to its live value (or left out when live has none)."""
    if not ignores:
        return target
    result = copy.deepcopy(target)
    for ignore in ignores:
        for pointer in ignore.json_pointers:
            found, value = _get_pointer(live, pointer)
            if found:
                _set_pointer(result, pointer, copy.deepcopy(value))
            else:
                _remove_pointer(result, pointer)
    return result


def _pointer_parts(pointer: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")] if pointer else []


def _get_pointer(obj, pointer: str) -> tuple[bool, object]:
    node = obj
    for part in _pointer_parts(pointer):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _set_pointer(obj, pointer: str, value: object) -> None:
    parts = _pointer_parts(pointer)
    node = obj
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return
    if parts and isinstance(node, dict):
        node[parts[-1]] = value
    elif parts and isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value


def compare(predicted: Manifest, live: Manifest, ignores: Sequence[IgnoreDifference] = ()) -> bool:
    """True when applying would change nothing that matters."""
    return normalise(predicted, ignores) == normalise(live, ignores)


def content_hash(obj: Manifest) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def mask_secret(obj: Manifest | None) -> Manifest | None:
    """A copy of a Secret with every value replaced, so no diff, log or status ever shows it."""
    if obj is None or obj.get("kind") != "Secret" or obj.get("apiVersion") != "v1":
        return obj
    masked = copy.deepcopy(obj)
    for key in ("data", "stringData"):
        if isinstance(masked.get(key), dict):
            masked[key] = {name: _SECRET_MASK for name in masked[key]}
    annotations = (masked.get("metadata") or {}).get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return masked


def unified_diff(live: Manifest | None, predicted: Manifest | None, ignores: Sequence[IgnoreDifference] = ()) -> str:
    """A `diff -u` of live vs predicted YAML, Secret values masked."""
    def text(obj: Manifest | None) -> list[str]:
        if obj is None:
            return []
        return yaml.safe_dump(mask_secret(normalise(obj, ignores)), sort_keys=True).splitlines(keepends=True)

    return "".join(difflib.unified_diff(text(live), text(predicted), "live", "target"))


@dataclass(frozen=True)
class ObjectDiff:
    ref: ObjectRef
    target: Manifest  # prepared: what sync applies
    live: Manifest | None
    predicted: Manifest | None  # the server's dry-run answer; None when the namespace is not there yet
    in_sync: bool
    # Immutable fields that change (controller/traps.py), when the object may be recreated for
    # them (Replace=true or Force=true): sync deletes it and creates it again.
    recreate: tuple[str, ...] = ()

    @property
    def missing(self) -> bool:
        return self.live is None


@dataclass(frozen=True)
class DiffResult:
    diffs: tuple[ObjectDiff, ...]
    failures: tuple[ApplyFailure, ...]  # dry runs the server refused: the commit is broken

    @property
    def in_sync(self) -> bool:
        return not self.failures and all(d.in_sync for d in self.diffs)


class Differ:
    """Dry-runs targets against the cluster, remembering answers for unchanged (target, live) pairs."""

    def __init__(self, client: KubeClient, *, workers: int = 8, cache_size: int = 50_000,
                 count: Callable[[str], None] | None = None, keep_predicted: bool = True) -> None:
        """keep_predicted=False: remember only whether each pair was in sync, not the server's
        dry-run answer (the controller never shows it; a diff for people does)."""
        self.client = client
        self.keep_predicted = keep_predicted
        self.count = count or (lambda command: None)  # metrics: one call per request, by command
        self.workers = workers
        self._cache: dict[tuple[ObjectRef, str, str], tuple[bool, Manifest]] = {}
        # Content hashes, computed once per target object (kept alive here, so ids stay unique)
        # and once per live resourceVersion: a steady app's pass then hashes nothing.
        self._target_hashes: dict[int, tuple[Manifest, str]] = {}
        self._live_hashes: dict[tuple[ObjectRef, str], str] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.dry_runs = 0  # read by tests and benchmarks

    def diff(self, targets: Sequence[Manifest], live_of: Callable[[Manifest], Manifest | None],
             ignores: Sequence[IgnoreDifference] = (), *, respect_ignores: bool = False,
             dry_run_missing: bool = True, recreate: bool = False) -> DiffResult:
        """respect_ignores (Argo CD's RespectIgnoreDifferences=true): ignored fields keep their live
        values in what is applied, so a sync does not undo, say, an autoscaler's replicas.
        dry_run_missing=False: objects that do not exist are reported missing without asking the
        server (their errors then surface when they are applied).
        recreate (the app's Replace=true or Force=true): an object whose immutable fields change is
        to be recreated rather than refused, as its own sync-options annotation can also say."""
        outcomes: list[ObjectDiff | ApplyFailure | None] = [
            self._cached_diff(target, live_of, respect_ignores) for target in targets]
        misses = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if misses:  # only these need the server (dry runs), in parallel
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                answers = pool.map(lambda i: self._diff_one(targets[i], live_of, ignores, respect_ignores,
                                                            dry_run_missing, recreate), misses)
                for i, answer in zip(misses, answers):
                    outcomes[i] = answer
        return DiffResult(
            diffs=tuple(o for o in outcomes if isinstance(o, ObjectDiff)),
            failures=tuple(o for o in outcomes if isinstance(o, ApplyFailure)),
        )

    def _target_hash(self, target: Manifest) -> str:
        with self._lock:
            known = self._target_hashes.get(id(target))
        if known is not None and known[0] is target:
            return known[1]
        digest = content_hash(target)
        with self._lock:
            if len(self._target_hashes) >= self._cache_size:
                self._target_hashes.clear()
            self._target_hashes[id(target)] = (target, digest)
        return digest

    def _live_hash(self, ref: ObjectRef, live: Manifest | None) -> str:
        if live is None:
            return ""
        version = (live.get("metadata") or {}).get("resourceVersion")
        if not version:
            return content_hash(normalise(live))
        with self._lock:
            known = self._live_hashes.get((ref, version))
        if known is None:
            known = content_hash(normalise(live))
            with self._lock:
                if len(self._live_hashes) >= self._cache_size:
                    self._live_hashes.clear()
                self._live_hashes[(ref, version)] = known
        return known

    def _cached_diff(self, target: Manifest, live_of, respect_ignores: bool) -> ObjectDiff | None:
        """The remembered answer for an unchanged (target, live) pair, without a request; None
        when the server must be asked."""
        if respect_ignores:
            return None  # the target depends on live values: go the full way
        ref = ObjectRef.of(target)
        live = live_of(target)
        if live is None:
            return None
        key = (ref, self._target_hash(target), self._live_hash(ref, live))
        with self._lock:
            cached = self._cache.get(key)
        return ObjectDiff(ref, target, live, cached[1], cached[0]) if cached is not None else None

    def _diff_one(self, target: Manifest, live_of, ignores, respect_ignores: bool,
                  dry_run_missing: bool, recreate: bool) -> ObjectDiff | ApplyFailure:
        ref = ObjectRef.of(target)
        try:
            live = live_of(target)
            if live is None and not dry_run_missing:
                return ObjectDiff(ref, target, None, None, False)
            if respect_ignores and live is not None:
                target = keep_live_values(target, live, [i for i in ignores if i.matches(ref)])
            target_hash = self._target_hash(target) if not respect_ignores else content_hash(target)
            live_hash = self._live_hash(ref, live)
            key = (ref, target_hash, live_hash)
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None:
                return ObjectDiff(ref, target, live, cached[1], cached[0])
            predicted = self._predict(target, live, recreate)
            if isinstance(predicted, ApplyFailure):
                return predicted
            if isinstance(predicted, ObjectDiff):  # to be recreated: not remembered, it is about to change
                return predicted
            if predicted is None:  # its namespace does not exist yet (or is going): it will be created
                return ObjectDiff(ref, target, live, None, False)
            in_sync = live is not None and compare(predicted, live, ignores)
            with self._lock:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
                self._cache[key] = (in_sync, predicted if self.keep_predicted else None)
            return ObjectDiff(ref, target, live, predicted, in_sync)
        except UnservedApiError as error:
            return ApplyFailure(ref, unserved_message(error))
        except KubeApiError as error:
            return ApplyFailure(ref, error.message or error.reason)

    def _predict(self, target: Manifest, live: Manifest | None,
                 recreate: bool) -> Manifest | ObjectDiff | ApplyFailure | None:
        """The dry run, with the apply traps of controller/traps.py handled as sync handles them: a
        defaulted field the change forbids is healed, an immutable change refused (the field, why and
        the fix) or, when allowed, dry-run as the new object the sync will create instead."""
        ref = ObjectRef.of(target)
        changes = traps.immutable_changes(target, live)
        if not changes:
            found = traps.heals(target, live)
            try:
                return self._dry_run_healed(target, live, found) if found else self.dry_run(target)
            except KubeApiError as error:
                change = traps.immutable_from_error(error.status, error.message)
                if change is None:
                    raise
                changes = (change,)
        if not (recreate or traps.object_sync_options(target).recreate):
            return ApplyFailure(ref, traps.refusal(ref.kind, changes))
        return ObjectDiff(ref, target, live, self._dry_run_create(target), False,
                          tuple(dict.fromkeys(c.field for c in changes)))

    def _dry_run_healed(self, target: Manifest, live: Manifest, found: tuple[traps.Heal, ...]) -> Manifest | None:
        """What the heal patch and then the apply leave: the apply dry-run with the discriminator at
        its live value, the heal laid over the answer, and that whole object dry-run as an update,
        so the server validates exactly what the sync will make."""
        answer = self.dry_run(traps.neutral(target, live, found))
        if answer is None:
            return None
        predicted = traps.healed(answer, found)
        # Unconditional (a dry run changes nothing): status writes by controllers move the
        # resourceVersion on between the two requests.
        for key in ("managedFields", "resourceVersion"):
            predicted["metadata"].pop(key, None)
        resource = self.client.resource_of(target)
        self.dry_runs += 1
        self.count("dry-run")
        return self.client.request("PUT", resource.object_path(target["metadata"]["name"],
                                                               target["metadata"].get("namespace")),
                                   query={"fieldManager": FIELD_MANAGER, "dryRun": "All"}, body=predicted)

    def _dry_run_create(self, target: Manifest) -> Manifest | None:
        """The server's answer for creating target anew, checked before sync deletes the old one: a
        dry-run create under a generated name (the real one is taken until then), named back."""
        resource = self.client.resource_of(target)
        metadata = target["metadata"]
        body = {**target, "metadata": {**{k: v for k, v in metadata.items() if k != "name"},
                                       "generateName": metadata["name"][:40] + "-"}}
        self.dry_runs += 1
        self.count("dry-run")
        answer = self.client.request("POST", resource.collection_path(metadata.get("namespace")),
                                     query={"fieldManager": FIELD_MANAGER, "dryRun": "All"}, body=body)
        answer["metadata"]["name"] = metadata["name"]
        answer["metadata"].pop("generateName", None)
        return answer

    def dry_run(self, target: Manifest) -> Manifest | None:
        resource = self.client.resource_of(target)
        metadata = target["metadata"]
        self.dry_runs += 1
        self.count("dry-run")
        try:
            return self.client.request(
                "PATCH", resource.object_path(metadata["name"], metadata.get("namespace")),
                query={"fieldManager": FIELD_MANAGER, "force": "true", "dryRun": "All"},
                body=target, content_type="application/apply-patch+yaml",
            )
        except KubeApiError as error:
            if error.status == 404 and resource.namespaced and "namespaces" in error.message:
                return None
            if traps.terminating_namespace(error.status, error.message):
                return None  # sync's create then fails, saying so, and is retried until it is gone
            raise
