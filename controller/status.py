"""Status: the pieces of an Application's status built from values the other stages return (last in the flow).

Pure functions, no API calls: operator.py writes what these build through kopf's `patch.status`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from controller.model import HealthResult, Manifest, ObjectRef, SyncStatus

__all__ = [
    "condition",
    "external_urls",
    "images",
    "inventory_bytes",
    "inventory_refusal",
    "merge_conditions",
    "one_line",
    "resource_entry",
    "short_revision",
    "slimmed",
    "summary",
    "timestamp",
]

SHORT_REVISION_LENGTH = 7  # what `git log --oneline` and Argo CD's UI show
MESSAGE_LIMIT = 200
# The status lists every object of an app (the inventory prune and cascade delete work from) and,
# after a sync, every object it changed. etcd stores at most 1.5 MiB per object (its default
# --max-request-bytes); this much of it is for those two lists, the rest for spec and history.
STATUS_BUDGET = 1_250_000
# Bytes of one object's two entries besides its names: keys, punctuation, version, sync and
# health status, and room for a health message of average length (measured: tests/unit/test_status.py).
_ENTRY_BYTES = 300

# Where each workload kind keeps its pod template.
_POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


def _dig(obj: Any, path: Iterable[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def images(objects: Iterable[Manifest]) -> list[str]:
    """Sorted unique images of the containers and init containers of Pods and pod templates."""
    found: set[str] = set()
    for obj in objects:
        path = _POD_TEMPLATE_PATHS.get(obj.get("kind") or "")
        pod_spec = _dig(obj, path) if path else None
        if not isinstance(pod_spec, dict):
            continue
        for key in ("initContainers", "containers"):
            for container in pod_spec.get(key) or ():
                image = (container or {}).get("image")
                if image:
                    found.add(image)
    return sorted(found)


def _url_path(path: str | None) -> str:
    """An Ingress path as a browser would open it: `/`, `/*` and regexes cut to their literal prefix.

    `/api(/|$)(.*)` (ingress-nginx rewrite) → `/api`, `/static/*` (GCE) → `/static/`, `/` → ``.
    """
    path = path or ""
    for index, char in enumerate(path):
        if char in "*([{$^?|\\+":
            path = path[:index]
            break
    return "" if path in ("", "/") else path


def _lb_addresses(obj: Manifest) -> list[str]:
    addresses = []
    for entry in _dig(obj, ("status", "loadBalancer", "ingress")) or ():
        address = (entry or {}).get("hostname") or (entry or {}).get("ip")
        if address:
            addresses.append(address)
    return addresses


def _ingress_urls(obj: Manifest) -> set[str]:
    spec = obj.get("spec") or {}
    tls_hosts = {host for tls in spec.get("tls") or () for host in (tls or {}).get("hosts") or ()}
    addresses = _lb_addresses(obj)
    urls: set[str] = set()
    rules = spec.get("rules") or ()
    if not rules and spec.get("defaultBackend"):
        rules = [{}]  # the default backend answers any host: the load balancer's address
    for rule in rules:
        host = (rule or {}).get("host")
        if host and host.startswith("*"):
            continue  # a wildcard host is not an address anyone can open
        hosts = [host] if host else addresses
        paths = [p.get("path") for p in ((rule or {}).get("http") or {}).get("paths") or () if p] or [None]
        for name in hosts:
            scheme = "https" if name in tls_hosts else "http"
            urls.update(f"{scheme}://{name}{_url_path(path)}" for path in paths)
    return urls


def _service_urls(obj: Manifest) -> set[str]:
    if (obj.get("spec") or {}).get("type") != "LoadBalancer":
        return set()
    ports = [p.get("port") for p in (obj.get("spec") or {}).get("ports") or () if p and p.get("port")] or [80]
    urls: set[str] = set()
    for address in _lb_addresses(obj):
        for port in ports:
            if port == 443:
                urls.add(f"https://{address}")
            elif port == 80:
                urls.add(f"http://{address}")
            else:
                urls.add(f"http://{address}:{port}")
    return urls


def external_urls(objects: Iterable[Manifest]) -> list[str]:
    """Sorted unique URLs users reach the app at: Ingress hosts, LoadBalancer Service addresses."""
    urls: set[str] = set()
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Ingress":
            urls |= _ingress_urls(obj)
        elif kind == "Service":
            urls |= _service_urls(obj)
    return sorted(urls)


def summary(objects: Iterable[Manifest]) -> dict:
    """`status.summary`: images, externalURLs, and primaryURL (the first URL, for the printer column).

    primaryURL is None when there is no URL, so a merge patch removes a stale one.
    """
    objects = list(objects)
    urls = external_urls(objects)
    return {"images": images(objects), "externalURLs": urls, "primaryURL": urls[0] if urls else None}


def short_revision(revision: str | None) -> str:
    """A commit SHA cut to 7 characters (the REVISION printer column); other strings as they are."""
    if not revision:
        return ""
    is_sha = len(revision) >= 40 and all(c in "0123456789abcdef" for c in revision.lower())
    return revision[:SHORT_REVISION_LENGTH] if is_sha else revision


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` on one line and at most `limit` characters, for `status.message` and events."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 UTC time with second precision, as Kubernetes writes it (`2025-01-14T09:12:03Z`)."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, message: str, now: str, previous: list[dict] | None) -> dict:
    """An Application condition (Argo CD's shape: type, message, lastTransitionTime).

    The time is kept from `previous` when the same type and message were already there, so it says
    when the problem started, not when the controller last looked.
    """
    for old in previous or ():
        if old.get("type") == type_ and old.get("message") == message and old.get("lastTransitionTime"):
            now = old["lastTransitionTime"]
            break
    return {"type": type_, "message": message, "lastTransitionTime": now}


def merge_conditions(current: Iterable[tuple[str, str]], now: str, previous: list[dict] | None) -> list[dict]:
    """The full `status.conditions` list for the (type, message) pairs true now, sorted by type.

    Conditions no longer in `current` are dropped: Argo CD conditions are problems, and a problem
    that went away is not reported as False, it is gone.
    """
    return sorted((condition(t, m, now, previous) for t, m in current), key=lambda c: (c["type"], c["message"]))


def resource_entry(
    ref: ObjectRef, version: str, sync: SyncStatus, health: HealthResult | None, *, requires_pruning: bool = False
) -> dict:
    """One item of `status.resources`, in Argo CD's shape, so `argocd`-style tooling can read it."""
    entry: dict = {"group": ref.group, "version": version, "kind": ref.kind, "name": ref.name, "status": str(sync)}
    if ref.namespace:
        entry["namespace"] = ref.namespace
    if health is not None:
        entry["health"] = {"status": str(health.status)}
        if health.message:
            entry["health"]["message"] = health.message
    if requires_pruning:
        entry["requiresPruning"] = True
    return entry


def inventory_bytes(refs: Iterable[ObjectRef], destination_namespace: str = "") -> int:
    """About how many bytes an app of these objects takes in its status: its entry in
    `status.resources` and its entry in the sync result (`resource_entry`, reconcile's sync-result
    entry). An estimate on the large side, made before anything is applied."""
    return sum(_ENTRY_BYTES + 2 * (len(ref.group) + len(ref.kind) + len(ref.name)
                                   + len(ref.namespace or destination_namespace)) for ref in refs)


def inventory_refusal(count: int, size: int) -> str:
    """Why an app whose status would take `size` bytes for its `count` objects is not synced."""
    return (f"the app renders {count} objects, and the Application's status would need about "
            f"{size / 2**20:.1f} MiB to list them, more than the {STATUS_BUDGET / 2**20:.1f} MiB it may use (Kubernetes "
            f"stores at most 1.5 MiB per object): nothing was applied; split the app into several Applications, "
            f"e.g. one per folder")


def slimmed(status: dict) -> dict:
    """The status without what the next pass rebuilds (each resource's health message, the sync
    result's list of objects), for a status too large to store: the inventory is what must be
    recorded, whatever else is lost."""
    resources = [{k: v for k, v in entry.items() if k != "health"}
                 | ({"health": {"status": entry["health"]["status"]}} if "health" in entry else {})
                 for entry in status.get("resources") or ()]
    slim = {**status, "resources": resources}
    operation = status.get("operationState")
    if operation and (operation.get("syncResult") or {}).get("resources"):
        result = operation["syncResult"]
        slim["operationState"] = {**operation, "syncResult": {**result, "resources": []}}
    return slim


def history_after_sync(history: list[dict], revision: str, source: dict, deployed_at: str, *, changed: bool,
                       limit: int, details: dict | None = None) -> list[dict]:
    """status.history after a successful sync of revision: a new entry (ids count up from the
    last) when the sync changed something or deployed another revision than the last entry, and
    only the newest `limit` entries kept (spec.revisionHistoryLimit; 0 keeps none). `details`
    (who started the sync, the commit's author and subject) go into the new entry."""
    history = list(history)
    if changed or not history or history[-1].get("revision") != revision:
        next_id = history[-1]["id"] + 1 if history else 0
        history.append({"id": next_id, "revision": revision, "deployedAt": deployed_at, "source": source,
                        **(details or {})})
    return history[-limit:] if limit > 0 else []


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns old into new: only what changed, with null for
    keys that went away. A steady app's status update is then a few bytes, not its whole status,
    and a key dropped from a nested value (a health message that no longer applies) is removed."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value) if isinstance(value, dict) else value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
