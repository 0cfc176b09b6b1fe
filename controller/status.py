"""Status: an Application's status built from values the other stages return (last in the flow).

`Report` is the one writer of a pass's status and events: the reconcile hands it what each stage
found (a refusal, the operation, the resources' sync and health) and nothing else assembles
status. Reasons are `Reason`, one StrEnum for condition types and event reasons alike, named as
Argo CD names them so its tooling reads ours. Pure, no API calls: operator.py writes the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from controller.health import worst as worst_health
from controller.model import HealthResult, HealthStatus, Manifest, ObjectRef, SyncStatus

__all__ = [
    "DELETION",
    "Event",
    "PRE_DELETE_HOOKS",
    "Reason",
    "Report",
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



class Reason(StrEnum):
    """Why the status says what it says: the type of each condition and the reason of each event."""

    INVALID_SPEC = "InvalidSpecError"  # the Application is invalid: stalled until someone edits it
    COMPARISON_ERROR = "ComparisonError"  # git, the render or a dry run failed: nothing was applied
    SYNC_ERROR = "SyncError"  # a sync failed while applying, or a failed one is not tried again
    UNSUPPORTED_FIELD = "UnsupportedFieldWarning"  # Argo CD fields Gantry ignores: said, not dropped
    RECONCILE_ERROR = "ReconcileError"  # the reconcile itself broke (a bug in Gantry)
    SYNCED = "Synced"  # event: objects were created or changed
    PRUNED = "Pruned"  # event: an object no longer in git was deleted
    SYNC_FAILED = "SyncFailed"  # event: a sync operation ended Failed
    OUT_OF_SYNC = "OutOfSync"  # event: the app went out of sync
    DELETE_FAILED = "DeleteFailed"  # event: the cascade delete of an Application failed
    DELETION_ERROR = "DeletionError"  # an Application's deletion is stuck (a PreDelete hook failed)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the Application."""

    type: str  # Normal | Warning
    reason: str  # a Reason
    message: str


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


def out_of_sync_message(resources: Sequence[Mapping]) -> str:
    """`2 resources differ from git: Deployment/web, Service/web`: what is not Synced, first five named."""
    out_of_sync = [r for r in resources if r["status"] != SyncStatus.SYNCED.value]
    names = ", ".join(f"{r['kind']}/{r['name']}" for r in out_of_sync[:5])
    more = f" and {len(out_of_sync) - 5} more" if len(out_of_sync) > 5 else ""
    count = f"{len(out_of_sync)} resource{'s' if len(out_of_sync) > 1 else ''}"
    if all(r.get("requiresPruning") for r in out_of_sync):
        why = "requires pruning"
    else:
        why = "differ from git" if len(out_of_sync) > 1 else "differs from git"
    return f"{count} {why}: {names}{more}"


def reconcile_error(previous: Mapping, message: str, now: str) -> dict:
    """The status patch that says a reconcile broke (a bug, not the app's fault): sync Unknown,
    as nothing can be said about it, and the rest of the status left as it was."""
    return {"sync": {**(previous.get("sync") or {}), "status": "Unknown"},
            "conditions": [{"type": Reason.RECONCILE_ERROR.value, "message": message, "lastTransitionTime": now}],
            "message": one_line(message), "reconciledAt": now}


# status keys of an Application's deletion: the PreDelete hooks the revision last synced has (what
# a deletion must run first), and how the deletion is doing (plan.deletion_step reads both).
PRE_DELETE_HOOKS = "preDeleteHooks"
DELETION = "deletion"


class Report:
    """The status and events of one pass over an Application, built from `previous` (the status
    the pass read) and what the stages found. Each method records one finding; `status` and
    `events` are what operator.py writes and posts."""

    def __init__(self, previous: Mapping, generation: Any, reconciled_at: str) -> None:
        self.previous = previous
        self.now = reconciled_at
        self.status: dict = {"observedGeneration": generation, "reconciledAt": reconciled_at,
                             "history": previous.get("history") or []}
        if PRE_DELETE_HOOKS in previous:  # what a sync recorded for the deletion stays until the next one
            self.status[PRE_DELETE_HOOKS] = previous[PRE_DELETE_HOOKS]
        self.events: list[Event] = []

    def event(self, type_: str, reason: Reason, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def _condition(self, reason: Reason, message: str) -> dict:
        return condition(reason.value, message, self.now, self.previous.get("conditions"))

    def _message(self, message: str) -> None:
        self.status["message"] = one_line(message)

    # ------------------------------------------------------------------ what was compared

    def revision(self, commit: str, metadata: Mapping | None = None) -> None:
        """The commit this pass compares with, and who made it."""
        self.status["sync"] = {"revision": commit, "shortRevision": short_revision(commit),
                               **({"revisionMetadata": dict(metadata)} if metadata else {})}

    def failed(self, reason: Reason, message: str, *, revision: str | None = None,
               health: HealthStatus | None = None) -> None:
        """A guard refused the pass before anything was applied: the app is Failed with `message`,
        and what the status said of the running resources stays, as they were not touched."""
        previous, status = self.previous, self.status
        sync: dict = {"status": SyncStatus.FAILED.value}
        # Git could not be read: what runs is still the previous revision, so the column keeps it.
        revision = revision or (previous.get("sync") or {}).get("revision")
        if revision:
            sync.update(revision=revision, shortRevision=short_revision(revision))
            # Who made the commit, from this pass's read of git, else as the status said before.
            known = next((s.get("revisionMetadata") for s in (status.get("sync") or {}, previous.get("sync") or {})
                          if s.get("revision") == revision and s.get("revisionMetadata")), None)
            if known:
                sync["revisionMetadata"] = known
        status["sync"] = sync
        status["health"] = previous.get("health") or {"status": (health or HealthStatus.UNKNOWN).value}
        status["resources"] = previous.get("resources") or []
        status["summary"] = previous.get("summary") or {}
        status["operationState"] = previous.get("operationState")
        status["conditions"] = [self._condition(reason, message)]
        self._message(message)
        if one_line(message) != previous.get("message"):
            self.event("Warning", reason, message)

    def compared(self, commit: str, resources: list[dict], healths: Sequence[HealthResult],
                 lives: Iterable[Manifest], *, failure: str | None, unsupported: Sequence[str] = ()) -> None:
        """The resources' sync and health after this pass; `failure`: why applying some failed."""
        status, previous = self.status, self.previous
        status["resources"] = resources
        app_health = worst_health(healths)  # Healthy for an app of none, as in Argo CD
        worst_message = next((h.message for h in healths if h.status == app_health and h.message), "")
        status["health"] = {"status": app_health.value, **({"message": worst_message} if worst_message else {})}
        status["summary"] = summary(lives)
        if failure is not None:
            sync_status = SyncStatus.FAILED
            message = failure
            status["conditions"] = [self._condition(Reason.SYNC_ERROR, message)]
        else:
            in_sync = all(r["status"] == SyncStatus.SYNCED.value for r in resources)
            sync_status = SyncStatus.SYNCED if in_sync else SyncStatus.OUT_OF_SYNC
            status["conditions"] = []
            message = f"synced to {short_revision(commit)}" if in_sync else out_of_sync_message(resources)
            if in_sync and app_health is not HealthStatus.HEALTHY and worst_message:
                message += f"; {app_health.value.lower()}: {worst_message}"
        status["sync"] = {**(status.get("sync") or {}), "status": sync_status.value, "revision": commit,
                          "shortRevision": short_revision(commit)}
        if unsupported:
            warning = (f"{', '.join(unsupported)}: not supported by Gantry and ignored; the objects are "
                       f"rendered and compared without {'it' if len(unsupported) == 1 else 'them'}")
            status["conditions"].append(self._condition(Reason.UNSUPPORTED_FIELD, warning))
            if not any(c.get("type") == Reason.UNSUPPORTED_FIELD for c in previous.get("conditions") or ()):
                self.event("Warning", Reason.UNSUPPORTED_FIELD, warning)
        self._message(message)
        if (previous.get("sync") or {}).get("status") != sync_status.value and sync_status is SyncStatus.OUT_OF_SYNC:
            self.event("Normal", Reason.OUT_OF_SYNC, message)

    def not_retried(self, commit: str, why: str) -> None:
        """Still the revision whose sync failed and is not tried again: said, not a plain OutOfSync."""
        message = (f"sync to {short_revision(commit)} failed and is not retried: {why}; refresh the app, push a "
                   f"new commit or edit the Application to try again")
        self.status["sync"]["status"] = SyncStatus.FAILED.value
        self.status["conditions"] = [self._condition(Reason.SYNC_ERROR, message), *self.status["conditions"]]
        self._message(message)
        self.events[:] = [e for e in self.events if e.reason != Reason.OUT_OF_SYNC]

    # ------------------------------------------------------------------ the operation

    def operation_kept(self) -> None:
        """No sync this pass: the last operation's state stays as it was."""
        self.status["operationState"] = self.previous.get("operationState")

    def operation(self, state: dict, *, revision: str, changed: Sequence[str], pruned: Sequence[ObjectRef]) -> None:
        """The operation's state after this pass, and its events: `changed`, what this pass
        created or configured (`Kind ns/name created`), `pruned`, what it deleted."""
        self.status["operationState"] = state
        if changed:
            self.event("Normal", Reason.SYNCED, f"synced {short_revision(revision)}: " + ", ".join(changed[:20])
                       + (" …" if len(changed) > 20 else ""))
        for ref in pruned:
            self.event("Normal", Reason.PRUNED, f"{ref} pruned: no longer in git")
        if state.get("phase") == "Failed":
            self.event("Warning", Reason.SYNC_FAILED, f"sync to {short_revision(revision)} failed: "
                                                      f"{state.get('message') or ''}")

    def deployed(self, revision: str, source: dict, deployed_at: str, *, changed: bool, limit: int,
                 details: dict) -> None:
        """A sync that succeeded: its entry in status.history."""
        self.status["history"] = history_after_sync(self.previous.get("history") or [], revision, source,
                                                    deployed_at, changed=changed, limit=limit, details=details)

    def operation_running(self, message: str) -> None:
        """A staged sync that goes on in the next pass: what it waits for is the app's message."""
        self._message(message)

    def operation_failed(self, message: str) -> None:
        """A hook or an unhealthy wave stopped the sync: that is what a user must know first."""
        self.status["sync"] = {**self.status["sync"], "status": SyncStatus.FAILED.value}
        self.status["conditions"] = [self._condition(Reason.SYNC_ERROR, message),
                                     *[c for c in self.status.get("conditions") or []
                                       if c.get("type") != Reason.SYNC_ERROR]]
        self._message(message)

    def request_failed(self, message: str, *, started: str, finished: str, sync: dict) -> None:
        """A requested sync that failed before applying anything is finished, Failed, as Argo CD
        finishes it; left pending it would be tried for ever."""
        self.status["operationState"] = {"phase": "Failed", "message": message, "startedAt": started,
                                         "finishedAt": finished, "operation": {"sync": sync}}
        self.event("Warning", Reason.SYNC_FAILED, f"sync failed: {message}")

    # ------------------------------------------------------------------ deletion

    def pre_delete_hooks(self, revision: str, hooks: Sequence[str], source: Mapping | None = None) -> None:
        """What a sync of `revision` (from `source`, a rollback's, when not spec's) leaves for the
        app's deletion: its PreDelete hooks, `Kind/name`. None: the record goes, and the app will be
        deleted at once, without a render."""
        if hooks:
            self.status[PRE_DELETE_HOOKS] = {"revision": revision, "hooks": list(hooks),
                                             **({"source": dict(source)} if source else {})}
        elif self.previous.get(PRE_DELETE_HOOKS):
            self.status[PRE_DELETE_HOOKS] = None

    def deletion(self, state: Mapping, *, failure: str | None = None, message: str = "") -> None:
        """A pass over an Application being deleted that runs PreDelete hooks: `state` is how the
        deletion is doing (status.deletion), `failure` why it is stuck (a DeletionError condition and a
        Warning event, as Argo CD says it), else `message` what it waits for. The rest of the status
        stays as the last sync left it, and so does reconciledAt while nothing changes: each of our
        writes wakes the app again."""
        previous = self.previous
        status = {**previous, DELETION: dict(state)}
        others = [c for c in previous.get("conditions") or () if c.get("type") != Reason.DELETION_ERROR]
        status["conditions"] = [self._condition(Reason.DELETION_ERROR, failure), *others] if failure else others
        status["message"] = one_line(failure or message)
        if status != previous:
            status["reconciledAt"] = self.now
        self.status.clear()
        self.status.update(status)
        if failure and one_line(failure) != previous.get("message"):
            self.event("Warning", Reason.DELETION_ERROR, failure)
