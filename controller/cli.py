"""The `gantry` command: look at and drive Applications from a terminal, as `argocd app` does.

It stands beside the flow, not in it: it reads the status the controller writes and asks for a sync
or a refresh through the Application (`operation`, an annotation), leaving the work to the
controller; only `diff` runs the stages itself (source → render → diff) to show what a sync would do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar
from urllib.parse import quote, urlencode

import yaml

from . import health as health_stage
from .charts import ChartCache
from .helm import helm_binary
from .credentials import CredentialStore
from . import plan as plan_stage
from .cache import LiveCache
from .diff import unified_diff
from .kube import KubeApiError, KubeClient, KubeconfigError, Resource, UnservedApiError, describe_kube_error
from .model import (
    API_GROUP,
    API_VERSION,
    FINALIZER,
    REFRESH_ANNOTATION,
    RESOURCE_FINALIZERS,
    AppSpec,
    ApplyFailure,
    GantryError,
    HealthResult,
    HealthStatus,
    Manifest,
    NamespacePolicy,
    ObjectRef,
    SourceError,
    SpecError,
    parse_duration,
)
from .reconcile import Reconciler, Refused, Request, SourceWanted
from .render import RenderLimits
from .source import GitCache
from .application import TOKEN_HEADER, automated_enabled, destination_namespace, health_status, refresh_request, repo_url
from .application import name_of as _name
from .application import rollback_request
from .application import spec_of as _spec
from .application import status_of as _status
from .application import sync_request, sync_status
from .status import short_revision, timestamp
from .sync import InventoryEntry, inventory_of, prunable

__all__ = ["CliError", "main"]

EXIT_OK = 0
EXIT_FAILED = 1  # it ran and the answer is "no": differences, a failed sync, a timeout, a refusal
EXIT_ERROR = 2  # it could not run: bad arguments, unknown app, unreachable cluster

APPLICATION = Resource(f"{API_GROUP}/{API_VERSION}", "Application", "applications", True)
FIELD_MANAGER = "gantry-cli"  # not the controller's "gantry": what we write is told apart in managedFields
DEFAULT_NAMESPACE = "gantry"
DEFAULT_TIMEOUT = "5m"
POLL_SECONDS = 0.5
# A reconcile that began in the same second as our request may have begun just before it; after
# this long without a later one it is taken as the answer (the controller reacts within a second).
SAME_SECOND_GRACE = 3.0
OUTPUTS = ("json", "yaml")
DIFF_TIMEOUT = 300.0  # seconds for the controller's diff: a clone and a render of a large app

T = TypeVar("T")


class CliError(GantryError):
    """Shown as one line, `gantry: <message>`, and turned into the exit code it carries."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# =============================================================================================
# Pure helpers: from dicts the API returns to text. Unit-tested without a cluster.

# ---------------------------------------------------------------------------------- colour

_RESET = "\033[0m"
_CODES = {"green": "\033[32m", "yellow": "\033[33m", "red": "\033[31m", "blue": "\033[34m",
          "grey": "\033[90m", "bold": "\033[1m"}
# The colours Argo CD's UI gives each state.
STATE_COLOURS = {
    "Synced": "green", "Healthy": "green", "Succeeded": "green", "Running": "green",
    "OutOfSync": "yellow", "Missing": "yellow", "Pending": "yellow", "Suspended": "grey",
    "Progressing": "blue", "Terminating": "blue",
    "Failed": "red", "Degraded": "red", "Error": "red",
    "Unknown": "grey",
}


def use_colour(stream: TextIO, environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """ANSI colours only on a terminal that can show them: never when NO_COLOR is set
    (https://no-color.org) or TERM=dumb (Emacs shells, some CI logs print the codes as text)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def paint(text: str, colour: str | None, enabled: bool) -> str:
    if not enabled or not colour or not text:
        return text
    return f"{_CODES[colour]}{text}{_RESET}"


def paint_state(text: str, enabled: bool) -> str:
    """A sync/health/phase word in its colour."""
    return paint(text, STATE_COLOURS.get(text), enabled)


# ---------------------------------------------------------------------------------- durations


def parse_timeout(text: str) -> float:
    """Seconds in a duration such as 30s, 5m, 1h or 1h30m (a bare number is seconds); argparse type."""
    try:
        seconds = parse_duration(text)
    except SpecError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use one like 30s, 5m or 1h") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; the timeout must be more than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse for messages: 90 → 1m30s, 300 → 5m, 0.5 → 0.5s."""
    if seconds < 1:
        return f"{seconds:g}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value) or "0s"


# ---------------------------------------------------------------------------------- tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, colour: bool = False,
                 state_columns: Sequence[int] = ()) -> str:
    """Columns as `kubectl get` prints them: left-aligned, three spaces apart, no trailing blanks.
    Widths come from the plain text, so colouring the state columns does not shift them."""
    table = [list(headers), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for number, row in enumerate(table):
        cells = []
        for index, cell in enumerate(row):
            padding = " " * (widths[index] - len(cell)) if index < len(row) - 1 else ""
            shown = paint_state(cell, colour) if number and index in state_columns else cell
            cells.append(shown + padding)
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def dump(data: Any, output: str) -> str:
    """`-o json` or `-o yaml`."""
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


LIST_HEADERS = ("NAME", "SYNC", "HEALTH", "REVISION", "REPO", "PATH", "DEST", "MESSAGE")


def app_row(app: Manifest) -> list[str]:
    status, source = _status(app), _spec(app).get("source") or {}
    sync = status.get("sync") or {}
    return [
        _name(app), sync_status(app), health_status(app),
        sync.get("shortRevision") or short_revision(sync.get("revision")) or "-",
        repo_url(app), source.get("path") or "k8s", destination_namespace(app),
        status.get("message") or "",
    ]


def format_app_list(apps: Sequence[Manifest], *, colour: bool = False) -> str:
    rows = [app_row(app) for app in sorted(apps, key=_name)]
    return format_table(LIST_HEADERS, rows, colour=colour, state_columns=(1, 2))


def sync_policy_text(app: Manifest) -> str:
    if not automated_enabled(app):
        return "Manual"
    automated = (_spec(app).get("syncPolicy") or {}).get("automated") or {}
    extras = [name for key, name in (("prune", "Prune"), ("selfHeal", "SelfHeal")) if automated.get(key)]
    return "Automated" + (f" ({', '.join(extras)})" if extras else "")


def format_summary(app: Manifest, *, colour: bool = False) -> str:
    """The `app get` header: where the app comes from, where it goes, and how it is doing."""
    status, spec = _status(app), _spec(app)
    source = spec.get("source") or {}
    sync, health = status.get("sync") or {}, status.get("health") or {}
    summary = status.get("summary") or {}
    state = status.get("operationState") or {}
    target = source.get("targetRevision") or "HEAD"
    compared = sync.get("revision")
    # As `argocd app get`: "Synced to HEAD (1a2b3c4)", "OutOfSync from HEAD (1a2b3c4)".
    preposition = "to" if sync_status(app) == "Synced" else "from"
    sync_text = paint_state(sync_status(app), colour) + (
        f" {preposition} {target} ({short_revision(compared)})" if compared else "")
    health_text = paint_state(health_status(app), colour) + (f" ({health['message']})" if health.get("message") else "")
    history = status.get("history") or []
    rows: list[tuple[str, str]] = [
        ("Name", f"{(app.get('metadata') or {}).get('namespace', '')}/{_name(app)}"),
        ("Repo", repo_url(app)),
        # A chart of a Helm repository has no path: its name, and the version this pass compared.
        ("Chart", f"{source['chart']} {compared}" if compared else source["chart"]) if source.get("chart") else
        ("Path", source.get("path") or "k8s"),
        ("Target Revision", target),
        ("Synced Revision", (history[-1].get("revision") or "-") if history else "- (never synced)"),
        ("Destination", destination_namespace(app)),
        ("Sync Policy", sync_policy_text(app)),
        ("Sync Status", sync_text),
        ("Health", health_text),
    ]
    urls = summary.get("externalURLs") or []
    rows.append(("URLs", ", ".join(urls) if urls else "-"))
    images = summary.get("images") or []
    rows.append(("Images", ", ".join(images) if images else "-"))
    if state:
        revision = ((state.get("syncResult") or {}).get("revision") or
                    ((state.get("operation") or {}).get("sync") or {}).get("revision") or "")
        details = [f"to {short_revision(revision)}" if revision else "",
                   f"at {state.get('finishedAt') or state.get('startedAt')}" if state.get("finishedAt") or state.get("startedAt") else ""]
        detail = " ".join(part for part in details if part)
        text = paint_state(state.get("phase") or "Unknown", colour) + (f" ({detail})" if detail else "")
        rows.append(("Last Sync", text + (f": {state['message']}" if state.get("message") else "")))
    if app.get("operation"):
        rows.append(("Operation", "sync requested, waiting for the controller"))
    if status.get("message"):
        rows.append(("Message", status["message"]))
    conditions = status.get("conditions") or []
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{label + ':':<{width}}{value}" for label, value in rows]
    if conditions:
        lines.append("Conditions:")
        for condition in conditions:
            since = f" (since {condition['lastTransitionTime']})" if condition.get("lastTransitionTime") else ""
            lines.append(f"  {paint(condition.get('type', ''), 'red', colour)}: {condition.get('message', '')}{since}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- history

HISTORY_HEADERS = ("ID", "DATE", "REVISION")


def history_rows(app: Manifest) -> list[list[str]]:
    return [[str(entry.get("id", "")), entry.get("deployedAt") or "", entry.get("revision") or ""]
            for entry in _status(app).get("history") or []]


def format_history(app: Manifest) -> str:
    return format_table(HISTORY_HEADERS, history_rows(app))


def history_entry(app: Manifest, entry_id: int) -> dict:
    """The history entry with that ID, or a CliError listing the IDs there are."""
    history = _status(app).get("history") or []
    for entry in history:
        if entry.get("id") == entry_id:
            return entry
    known = ", ".join(str(e.get("id")) for e in history) or "none yet"
    raise CliError(f'application "{_name(app)}" has no history entry {entry_id} (IDs: {known}; '
                   f"see `gantry app history {_name(app)}`)")


# ---------------------------------------------------------------------------------- delete

@dataclass(frozen=True)
class DeletePlan:
    """What `app delete` writes before its DELETE, and what then becomes of the app's resources."""

    finalizers: list[str] | None  # the finalizers to write first; None: leave them as they are
    conditional: bool  # that patch carries the resourceVersion read, so it fails if the app changed
    resources: str  # "deleted" | "kept" | "maybe" (the controller had begun deleting them)


def delete_plan(app: Manifest, *, cascade: bool) -> DeletePlan:
    """How to delete `app` with or without its resources; a CliError when the cascade asked for cannot happen."""
    metadata = app.get("metadata") or {}
    finalizers = list(metadata.get("finalizers") or [])
    # Any of these makes the controller delete the resources first (Argo CD's with /background too).
    ours = [f for f in finalizers if f in RESOURCE_FINALIZERS]
    terminating = bool(metadata.get("deletionTimestamp"))
    if cascade:
        if ours:
            return DeletePlan(None, False, "deleted")
        if terminating:
            # The API server refuses new finalizers on an object being deleted.
            name = _name(app)
            raise CliError(f'application "{name}" is already being deleted without a resources finalizer (none can '
                           f"be added now), so its resources will stay; list them with `gantry app get {name}`, "
                           "or run with --no-cascade", EXIT_FAILED)
        return DeletePlan([*finalizers, FINALIZER], True, "deleted")
    if not ours:
        return DeletePlan(None, False, "kept")
    remaining = [f for f in finalizers if f not in ours]
    if terminating:
        # Not conditional: the controller may be gone, or busy finalizing and writing the app.
        return DeletePlan(remaining, False, "maybe")
    return DeletePlan(remaining, True, "kept")


def delete_message(name: str, plan: DeletePlan, *, waited: bool) -> str:
    """The line `app delete` ends with, claiming no more about the resources than the plan knows."""
    if not waited:
        what = {"deleted": "; the controller deletes its resources first", "kept": "; its resources stay"}
        return f'application "{name}" deletion requested{what.get(plan.resources, "")}\n'
    what = {"deleted": " with its resources", "kept": "; its resources stay",
            "maybe": "; it was already being deleted with its resources, so some of them may be gone"}
    return f'application "{name}" deleted{what[plan.resources]}\n'


# ---------------------------------------------------------------------------------- the resource tree

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass
class TreeNode:
    kind: str
    name: str
    namespace: str = ""
    sync: str = ""
    health: str = ""
    info: str = ""
    children: list["TreeNode"] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    def to_dict(self) -> dict:
        data: dict[str, Any] = {"kind": self.kind, "name": self.name}
        for key in ("namespace", "sync", "health", "info"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        if self.children:
            data["children"] = [child.to_dict() for child in self.children]
        return data


def _uid(obj: Manifest) -> str:
    return (obj.get("metadata") or {}).get("uid") or ""


def _owned_by(objects: Sequence[Manifest]) -> dict[str, list[Manifest]]:
    owned: dict[str, list[Manifest]] = {}
    for obj in objects:
        for owner in (obj.get("metadata") or {}).get("ownerReferences") or ():
            if owner.get("uid"):
                owned.setdefault(owner["uid"], []).append(obj)
    return owned


def pod_info(pod: Manifest) -> str:
    """`Running, 1/1 ready, 3 restarts`, as `kubectl get pods` shows a pod."""
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    total = len(containers) or len((pod.get("spec") or {}).get("containers") or [])
    ready = sum(1 for c in containers if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    phase = "Terminating" if (pod.get("metadata") or {}).get("deletionTimestamp") else status.get("phase") or "Unknown"
    parts = [phase, f"{ready}/{total} ready"]
    if restarts:
        parts.append(f"{restarts} restart{'s' if restarts != 1 else ''}")
    return ", ".join(parts)


def _assess(obj: Manifest, api_version: str, kind: str) -> HealthResult | None:
    # List items come without apiVersion and kind, which the health stage looks its rule up by.
    return health_stage.assess({**obj, "apiVersion": api_version, "kind": kind})


def _pod_nodes(pods: Sequence[Manifest]) -> list[TreeNode]:
    nodes = []
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        result = _assess(pod, "v1", "Pod")
        info = pod_info(pod)
        if result is not None and result.message:
            info += f": {result.message}"
        metadata = pod.get("metadata") or {}
        nodes.append(TreeNode("Pod", metadata.get("name", ""), metadata.get("namespace", ""),
                              health=result.status.value if result else "", info=info))
    return nodes


def _revision(obj: Manifest) -> int:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get("deployment.kubernetes.io/revision")
    return int(value) if value and str(value).isdigit() else 0


def _replicaset_nodes(replicasets: Sequence[Manifest], owned: dict[str, list[Manifest]]) -> tuple[list[TreeNode], int]:
    """ReplicaSets newest first; old ones scaled to zero with no pods left are counted, not shown."""
    nodes, hidden = [], 0
    for rs in sorted(replicasets, key=_revision, reverse=True):
        metadata, spec, status = rs.get("metadata") or {}, rs.get("spec") or {}, rs.get("status") or {}
        pods = [p for p in owned.get(_uid(rs), []) if p.get("kind", "Pod") == "Pod"]
        desired = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
        ready = int(status.get("readyReplicas") or 0)
        if desired == 0 and not pods:
            hidden += 1
            continue
        revision = _revision(rs)
        result = _assess(rs, "apps/v1", "ReplicaSet")
        info = ", ".join(part for part in (f"rev {revision}" if revision else "", f"{ready}/{desired} ready") if part)
        if result is not None and result.status is HealthStatus.DEGRADED and result.message:
            info += f": {result.message}"  # cannot create pods: a quota, an admission policy
        node = TreeNode("ReplicaSet", metadata.get("name", ""), metadata.get("namespace", ""),
                        health=result.status.value if result else "", info=info)
        node.children = _pod_nodes(pods)
        nodes.append(node)
    return nodes, hidden


def build_tree(app: Manifest, workloads: Sequence[Manifest] = (), replicasets: Sequence[Manifest] = (),
               pods: Sequence[Manifest] = ()) -> TreeNode:
    """Application → each resource of status.resources → (Deployment → ReplicaSets →) Pods.

    `workloads` are the live Deployments/StatefulSets/DaemonSets of the app (for their uid);
    `replicasets` and `pods` are those of the destination namespaces: children are found by
    their ownerReferences, as the garbage collector finds them.
    """
    status = _status(app)
    sync = status.get("sync") or {}
    root = TreeNode("Application", _name(app), (app.get("metadata") or {}).get("namespace", ""),
                    sync=sync_status(app), health=health_status(app),
                    info=sync.get("shortRevision") or short_revision(sync.get("revision")))
    live = {(w.get("kind"), (w.get("metadata") or {}).get("namespace", ""), (w.get("metadata") or {}).get("name")): w
            for w in workloads}
    owned = _owned_by([*replicasets, *[{**p, "kind": "Pod"} for p in pods]])
    for entry in status.get("resources") or []:
        health = entry.get("health") or {}
        info = [health.get("message") or "", entry.get("message") or ""]
        if entry.get("requiresPruning"):
            info.insert(0, "requires pruning")
        node = TreeNode(entry.get("kind", ""), entry.get("name", ""), entry.get("namespace", ""),
                        sync=entry.get("status", ""), health=health.get("status", ""))
        workload = live.get((entry.get("kind"), entry.get("namespace", ""), entry.get("name")))
        if workload is not None and entry.get("kind") in WORKLOAD_KINDS:
            children = owned.get(_uid(workload), [])
            if entry.get("kind") == "Deployment":
                node.children, hidden = _replicaset_nodes([c for c in children if c.get("kind") == "ReplicaSet"], owned)
                if hidden:
                    info.append(f"{hidden} old ReplicaSet{'s' if hidden != 1 else ''} scaled to zero")
            else:
                node.children = _pod_nodes([c for c in children if c.get("kind") == "Pod"])
        node.info = "; ".join(part for part in info if part)
        root.children.append(node)
    return root


def format_tree(root: TreeNode, *, colour: bool = False, destination: str = "") -> str:
    """The tree with box-drawing branches and aligned SYNC, HEALTH and INFO columns."""
    rows: list[tuple[str, TreeNode]] = []

    def walk(node: TreeNode, prefix: str, branch: str) -> None:
        label = node.label
        if node.namespace and destination and node.kind != "Application" and node.namespace != destination:
            label += f" ({node.namespace})"
        rows.append((prefix + branch + label, node))
        for index, child in enumerate(node.children):
            last = index == len(node.children) - 1
            extension = "" if not branch else ("    " if branch.startswith("└") else "│   ")
            walk(child, prefix + extension, "└── " if last else "├── ")

    walk(root, "", "")
    width = max(len(text) for text, _ in rows)
    sync_width = max(len(node.sync) for _, node in rows)
    health_width = max(len(node.health) for _, node in rows)
    lines = []
    for text, node in rows:
        line = (f"{text}{' ' * (width - len(text))}   "
                f"{paint_state(node.sync, colour)}{' ' * (sync_width - len(node.sync))}   "
                f"{paint_state(node.health, colour)}{' ' * (health_width - len(node.health))}   "
                f"{node.info}")
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- diff output


@dataclass(frozen=True)
class DiffEntry:
    """What sync would do to one object: create it, change it, or (stale in git) prune it."""

    ref: ObjectRef
    action: str  # "create" | "update" | "prune"
    text: str  # a unified diff, Secret values masked

    def to_dict(self) -> dict:
        return {"group": self.ref.group, "kind": self.ref.kind, "namespace": self.ref.namespace,
                "name": self.ref.name, "action": self.action, "diff": self.text}


MASKED_ONLY = "(only Secret values differ; they are never shown)\n"


def diff_header(ref: ObjectRef) -> str:
    """`===== group/Kind namespace/name =====`, as `argocd app diff` heads each object."""
    return f"===== {ref.group}/{ref.kind} {ref.namespace}/{ref.name} ====="


def format_diff(entries: Sequence[DiffEntry]) -> str:
    blocks = []
    for entry in entries:
        text = entry.text if entry.text.endswith("\n") or not entry.text else entry.text + "\n"
        note = {"create": " (would be created)", "prune": " (would be pruned)"}.get(entry.action, "")
        blocks.append(f"{diff_header(entry.ref)}{note}\n{text}")
    return "".join(blocks)


def diff_exit_code(entries: Sequence[DiffEntry], failures: Sequence[ApplyFailure] = ()) -> int:
    """As diff(1) and `argocd app diff`: 0 in sync, 1 differences, 2 could not compare everything."""
    if failures:
        return EXIT_ERROR
    return EXIT_FAILED if entries else EXIT_OK


def object_diff_text(live: Manifest | None, predicted: Manifest | None, ignores=()) -> str:
    text = unified_diff(live, predicted, ignores)
    # Equal after masking: only Secret values changed. Say so rather than print an empty diff.
    return text or MASKED_ONLY


# ---------------------------------------------------------------------------------- the controller's diff

# Where `gantry app diff` asks the controller, through the API server's service proxy: deploy/'s
# Service and its port of the web UI.
CONTROLLER_NAMESPACE = "gantry"
CONTROLLER_SERVICE = "gantry-controller:ui"


def controller_diff_path(controller_namespace: str, service: str, namespace: str, name: str) -> str:
    """The API server's path to the controller's diff of one app: its service proxy to `service`
    (`name:port`, or `name` for deploy/'s port `ui`) in `controller_namespace`."""
    service = service if ":" in service else f"{service}:ui"
    return (f"/api/v1/namespaces/{quote(controller_namespace, safe='')}/services/{quote(service, safe=':')}/proxy"
            f"{ui_diff_path(namespace, name)}")


def ui_diff_path(namespace: str, name: str) -> str:
    return f"/api/v1/applications/{quote(namespace, safe='')}/{quote(name, safe='')}/diff"


def report_of(answer: dict) -> DiffReport:
    """The report the controller's answer (its web UI's diff of an app) carries: what
    compute_diff returns there, so it prints as a diff computed here does."""
    def ref(item: dict) -> ObjectRef:
        return ObjectRef(item.get("group") or "", item.get("kind") or "", item.get("namespace") or "", item.get("name") or "")

    return DiffReport(str(answer.get("revision") or ""),
                      [DiffEntry(ref(r), r.get("action") or "update", r.get("diff") or "") for r in answer.get("resources") or []],
                      [ApplyFailure(ref(f), f.get("message") or "") for f in answer.get("failures") or []])


def kubeconfig_token(client: KubeClient) -> str | None:
    """The bearer token the kubeconfig's user authenticates with (a token, or an exec plugin's),
    or None for client certificates."""
    configuration = client.configuration
    value = configuration.get_api_key_with_prefix("authorization") or configuration.get_api_key_with_prefix("BearerToken")
    scheme, _, token = (value or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def controller_refusal(status: int, reason: str, message: str, *, where: str, proxied: bool) -> CliError:
    """One line for a diff the controller did not give. `reason`: the API server's own Status
    reason (its proxy refused, or found no controller), empty when the controller answered."""
    fallback = "pass --server URL (the web UI's address), or --local to render here with kustomize"
    if proxied and reason:
        if status == 403:
            return CliError(f"forbidden: {message}; asking the controller through the API server needs get on "
                            f"services/proxy {where} (see the README), or {fallback}")
        if status == 401:
            return CliError("the API server did not accept the credentials of the kubeconfig (401 Unauthorized)")
        return CliError(f"cannot reach the controller through the API server's proxy to {where}: {message}; "
                        f"name its Service with --controller-namespace and --controller-service, or {fallback}")
    if status == 401:
        return CliError(f"the controller at {where} did not accept the token ({message}): pass one the API server "
                        "accepts with GANTRY_TOKEN or --token (kubectl create token NAME)")
    if status == 403:
        return CliError(f"forbidden: {message}")
    if status == 422:  # the controller could not render or compare: a broken commit, an unknown revision
        return CliError(message)
    return CliError(f"the controller at {where} answered {status}: {message}")




@dataclass(frozen=True)
class Verdict:
    """Where a wait stands: done, failed for good (with why), or still waiting (with what for)."""

    state: str  # "done" | "failed" | "waiting"
    message: str = ""


def degraded_resources(app: Manifest) -> list[str]:
    """`Kind namespace/name: why` for each resource whose health is Degraded."""
    found = []
    for entry in _status(app).get("resources") or []:
        health = entry.get("health") or {}
        if health.get("status") == "Degraded":
            where = f"{entry.get('namespace')}/{entry.get('name')}" if entry.get("namespace") else entry.get("name")
            found.append(f"{entry.get('kind')} {where}: {health.get('message') or 'degraded'}")
    return found


def wait_verdict(app: Manifest, *, want_sync: bool, want_health: bool) -> Verdict:
    """Whether `app wait` is done: Synced and/or Healthy; failed when Degraded or when sync Failed.

    A pending sync request or refresh is waited out first, so the state judged is not the one the
    controller is about to replace (an old Degraded before a fix is rolled out).
    """
    annotations = (app.get("metadata") or {}).get("annotations") or {}
    if app.get("operation"):
        return Verdict("waiting", "a sync operation is in progress")
    if REFRESH_ANNOTATION in annotations:
        return Verdict("waiting", "a refresh is in progress")
    if not _status(app):
        return Verdict("waiting", "the controller has not reconciled the application yet")
    sync, health = sync_status(app), health_status(app)
    if want_health and health == "Degraded":
        causes = degraded_resources(app) or [(_status(app).get("health") or {}).get("message") or "no reason given"]
        return Verdict("failed", "health is Degraded: " + "; ".join(causes))
    if want_sync and sync == "Failed":
        return Verdict("failed", f"sync Failed: {_status(app).get('message') or 'no reason given'}")
    missing = []
    if want_sync and sync != "Synced":
        missing.append(f"sync is {sync}")
    if want_health and health != "Healthy":
        message = (_status(app).get("health") or {}).get("message")
        missing.append(f"health is {health}" + (f" ({message})" if message else ""))
    if missing:
        return Verdict("waiting", ", ".join(missing))
    return Verdict("done", f"{sync}, {health}")


@dataclass(frozen=True)
class SyncOutcome:
    phase: str  # Succeeded | Failed | Unknown
    message: str
    state: dict | None  # status.operationState when the controller ran the sync
    ran: bool = True  # False: it failed before anything was applied (source, render, dry run)


def sync_outcome(app: Manifest, *, requested_at: str, previous_state: dict | None, waited: float) -> SyncOutcome | None:
    """The result of the sync we asked for at `requested_at` (RFC 3339, server time), or None while
    it is pending.

    The controller removes `operation` only after running the sync and writing operationState, so
    its absence is the signal. A sync that cannot start (the revision does not resolve, the
    manifests do not render, the dry run is refused) ends Failed with an operationState that has
    no syncResult; a controller that leaves `operation` in place and the app Failed counts too,
    once a reconcile that began after our request says so.
    """
    status = _status(app)
    state = status.get("operationState") or None
    if state and state.get("phase") in ("Running", "Terminating"):
        return None  # a staged sync goes on over several passes: its end is the result
    if not app.get("operation"):
        if state and (state != previous_state or (state.get("finishedAt") or "") >= requested_at):
            return SyncOutcome(state.get("phase") or "Unknown", state.get("message") or "", state,
                               ran=bool(state.get("syncResult")))
        return SyncOutcome("Unknown", "the sync request was removed before the controller ran it", state, ran=False)
    reconciled = status.get("reconciledAt") or ""
    if sync_status(app) == "Failed" and reconciled and (
            reconciled > requested_at or (reconciled == requested_at and waited >= SAME_SECOND_GRACE)):
        conditions = status.get("conditions") or []
        message = (conditions[0].get("message") if conditions else "") or status.get("message") or "no reason given"
        return SyncOutcome("Failed", message, None, ran=False)
    return None


def format_operation(state: dict, *, colour: bool = False) -> str:
    """What a finished sync did: phase, message, revision, then each resource it touched."""
    result = state.get("syncResult") or {}
    lines = [
        f"Phase:     {paint_state(state.get('phase') or 'Unknown', colour)}",
        f"Revision:  {result.get('revision') or ((state.get('operation') or {}).get('sync') or {}).get('revision', '')}",
        f"Message:   {state.get('message') or ''}",
        f"Started:   {state.get('startedAt') or ''}",
        f"Finished:  {state.get('finishedAt') or ''}",
    ]
    text = "\n".join(line.rstrip() for line in lines) + "\n"
    resources = result.get("resources") or []
    if resources:
        rows = [[r.get("group") or "", r.get("kind") or "", r.get("namespace") or "", r.get("name") or "",
                 r.get("status") or "", r.get("action") or "", r.get("message") or ""] for r in resources]
        text += "\n" + format_table(("GROUP", "KIND", "NAMESPACE", "NAME", "STATUS", "ACTION", "MESSAGE"), rows,
                                    colour=colour, state_columns=(4,))
    return text


# =============================================================================================
# The edge: the API server, git, kustomize.


class Apps:
    """Applications of one namespace through our JSON client."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def _missing_crd(self) -> CliError | None:
        try:
            self.client.resource(APPLICATION.api_version, APPLICATION.kind)
        except UnservedApiError:
            return CliError(f"the cluster has no Application CRD (applications.{API_GROUP}): "
                            f"install it with `kubectl apply -f crds/`")
        return None

    def get(self, name: str) -> Manifest:
        app = self.client.get(APPLICATION, name, self.namespace)
        if app is None:
            raise self._missing_crd() or CliError(f'application "{name}" not found in namespace "{self.namespace}"')
        return app

    def list(self, *, all_namespaces: bool = False) -> list[Manifest]:
        try:
            return self.client.list(APPLICATION, None if all_namespaces else self.namespace)["items"]
        except KubeApiError as error:
            if error.status == 404:
                raise self._missing_crd() or error
            raise

    def patch(self, name: str, body: dict) -> Manifest:
        try:
            return self.client.request("PATCH", APPLICATION.object_path(name, self.namespace), body=body,
                                       query={"fieldManager": FIELD_MANAGER},
                                       content_type="application/merge-patch+json")
        except KubeApiError as error:
            if error.status == 404:
                raise CliError(f'application "{name}" not found in namespace "{self.namespace}"') from None
            raise

    def delete(self, name: str) -> None:
        try:
            self.client.request("DELETE", APPLICATION.object_path(name, self.namespace))
        except KubeApiError as error:
            if error.status != 404:
                raise

    def wait(self, name: str, check: Callable[[Manifest | None, float], T | None], *, timeout: float,
             describe: Callable[[Manifest | None], str]) -> T:
        """Poll the app until check(app, seconds waited) returns a value; CliError(exit 1) on timeout.
        check receives None once the app is gone."""
        started = time.monotonic()
        while True:
            app = self.client.get(APPLICATION, name, self.namespace)
            waited = time.monotonic() - started
            result = check(app, waited)
            if result is not None:
                return result
            if waited >= timeout:
                raise CliError(f"timed out after {format_duration(timeout)}: {describe(app)}", EXIT_FAILED)
            time.sleep(POLL_SECONDS)


def _server_time(app: Manifest, manager: str) -> str | None:
    """When `manager` last changed the app, by the API server's clock (from managedFields)."""
    times = [entry.get("time") for entry in (app.get("metadata") or {}).get("managedFields") or []
             if entry.get("manager") == manager and entry.get("time")]
    return max(times) if times else None


def kustomize_binary(flag: str | None, environ: dict[str, str] | os._Environ = os.environ) -> str:
    """--kustomize, else $GANTRY_KUSTOMIZE, else kustomize on PATH."""
    return flag or environ.get("GANTRY_KUSTOMIZE") or shutil.which("kustomize") or "kustomize"


def default_cache_dir(environ: dict[str, str] | os._Environ = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gantry" / "cli-git"


@dataclass
class DiffReport:
    revision: str
    entries: list[DiffEntry]
    failures: list[ApplyFailure]


def compute_diff(client: KubeClient, app: Manifest, *, kustomize: str, cache_dir: Path,
                 revision: str | None = None, include_prune: bool = True, controller_namespace: str | None = None,
                 policy: NamespacePolicy | None = None, render_limits: RenderLimits = RenderLimits(),
                 helm: str | None = None) -> DiffReport:
    """What a sync of `app` (to `revision`, else its targetRevision) would change, found as the
    controller finds it: Reconciler.desired (the render with the app's recurse and kustomize
    overrides, the planner's split of hooks from desired state, every guard) and
    Reconciler.compare (the dry runs), applying nothing; stale objects are those prune would delete.

    controller_namespace: the diff is the controller's (its web UI, which gantry app diff asks):
    repository Secrets are read there and its tenant rules (`policy`, which repositories an app's
    namespace may read, `render_limits`) apply as in its own passes. Else the user's diff: the
    Secrets of the app's namespace, as far as the user may read them."""
    metadata = app["metadata"]
    credentials = CredentialStore(client, controller_namespace or metadata["namespace"])
    cache = _usable_cache_dir(cache_dir)
    git = GitCache(cache, min_fetch_interval=0, credentials=credentials)
    # helm: the controller's own (its UI), else found as the controller finds it.
    helm = helm or helm_binary(os.environ.get("GANTRY_HELM"), kustomize) or "helm"
    charts = ChartCache(cache / "charts", helm=helm, min_fetch_interval=0, credentials=credentials.helm)
    # One look at the cluster: no watches, and the dry runs' answers kept for the diff's text.
    reconciler = Reconciler(client, git, LiveCache(client, watch=False), kustomize=kustomize, policy=policy,
                            repo_access=credentials.refusal if controller_namespace else None,
                            render_limits=render_limits, keep_predicted=True, helm=helm, charts=charts,
                            helm_credentials=credentials.helm)
    commit = None
    try:
        spec = reconciler.checked_spec(app, Request())
        fetched = reconciler.fetch(SourceWanted(spec.repo_url, revision or spec.target_revision, True, spec.namespace,
                                                spec.chart, spec.helm_options.pass_credentials))
        if isinstance(fetched, SourceError):
            raise fetched
        commit = fetched.commit
        desired = reconciler.desired(spec, fetched, inventory_of(_status(app)))
        compared = reconciler.compare(spec, desired, apply_prerequisites=False)
    except Refused as refused:
        if refused.failures and commit is not None:  # objects the controller would refuse: named, one by one
            return DiffReport(commit, [], list(refused.failures))
        raise CliError(refused.message) from None
    except FileNotFoundError:
        raise CliError(f"kustomize not found ({kustomize}): put it on PATH, pass --kustomize or set GANTRY_KUSTOMIZE") from None
    entries = [
        DiffEntry(d.ref, "create" if d.live is None else "update",
                  object_diff_text(d.live, d.predicted if d.predicted is not None else d.target, spec.ignore_differences))
        for d in compared.diffs if not d.in_sync
    ]
    if include_prune:
        entries += _prune_entries(client, spec, plan_stage.stale(desired.previous_entries, desired.targets))
    return DiffReport(commit, sorted(entries, key=lambda e: e.ref), [])


def _prune_entries(client: KubeClient, spec: AppSpec, stale: Sequence[InventoryEntry]) -> list[DiffEntry]:
    """The stale inventory entries (plan.stale) whose objects a prune would delete (sync.prunable)."""
    entries = []
    for entry in stale:
        try:
            live = client.get(client.resource(entry.api_version, entry.kind), entry.name, entry.namespace or None)
        except UnservedApiError:
            continue
        if live is not None and prunable(live, spec.key, entry.ref):
            entries.append(DiffEntry(entry.ref, "prune", object_diff_text(live, None, spec.ignore_differences)))
    return entries


def _usable_cache_dir(path: Path) -> Path:
    """The cache dir, or a temporary one when it cannot be written (a read-only home)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="gantry-cli-git-"))


def resource_tree(client: KubeClient, app: Manifest) -> TreeNode:
    """build_tree with the live workloads, ReplicaSets and Pods it needs, read from the cluster."""
    entries = [e for e in _status(app).get("resources") or [] if e.get("kind") in WORKLOAD_KINDS
               and e.get("group") == "apps"]
    workloads, namespaces = [], set()
    for entry in entries:
        live = client.get(client.resource(f"apps/{entry.get('version') or 'v1'}", entry["kind"]),
                          entry["name"], entry.get("namespace"))
        if live is not None:
            workloads.append({**live, "kind": entry["kind"]})
            namespaces.add(entry.get("namespace") or "")
    replicasets, pods = [], []
    for namespace in sorted(namespaces):
        if any(w["kind"] == "Deployment" and (w["metadata"].get("namespace") or "") == namespace for w in workloads):
            replicasets += [{**rs, "kind": "ReplicaSet"} for rs in
                            client.list(client.resource("apps/v1", "ReplicaSet"), namespace or None)["items"]]
        pods += [{**p, "kind": "Pod"} for p in client.list(client.resource("v1", "Pod"), namespace or None)["items"]]
    return build_tree(app, workloads, replicasets, pods)


# =============================================================================================
# Commands: each reads its arguments, calls the pieces above, writes, and returns the exit code.


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    _client: KubeClient | None = None

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            kubeconfig = self.args.kubeconfig or os.environ.get("KUBECONFIG") or None
            try:
                self._client = KubeClient.from_kubeconfig(kubeconfig, context=self.args.context)
            except KubeconfigError as error:
                raise CliError(f"{error} (use --kubeconfig or set KUBECONFIG)") from None
        return self._client

    @property
    def apps(self) -> Apps:
        return Apps(self.client, self.args.namespace)

    @property
    def colour(self) -> bool:
        return use_colour(self.out)

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    apps = ctx.apps.list(all_namespaces=args.all_namespaces)
    if args.output:
        ctx.write(dump({"apiVersion": "v1", "kind": "List", "items": [_without_managed_fields(a) for a in apps]},
                       args.output))
    elif not apps:
        where = "any namespace" if args.all_namespaces else f'namespace "{args.namespace}"'
        print(f"No applications found in {where}.", file=sys.stderr)
    else:
        ctx.write(format_app_list(apps, colour=ctx.colour))
    return EXIT_OK


def _without_managed_fields(app: Manifest) -> Manifest:
    metadata = {k: v for k, v in (app.get("metadata") or {}).items() if k != "managedFields"}
    return {**app, "metadata": metadata}


def cmd_get(ctx: Context, args: argparse.Namespace) -> int:
    app = ctx.apps.get(args.name)
    if args.output:
        ctx.write(dump(_without_managed_fields(app), args.output))
        return EXIT_OK
    tree = resource_tree(ctx.client, app)
    ctx.write(format_summary(app, colour=ctx.colour) + "\n"
              + format_tree(tree, colour=ctx.colour, destination=destination_namespace(app)))
    return EXIT_OK


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    app = ctx.apps.get(args.name)
    if args.output:
        ctx.write(dump(_status(app).get("history") or [], args.output))
    elif not _status(app).get("history"):
        print(f'application "{args.name}" has not been synced yet: no history', file=sys.stderr)
    else:
        ctx.write(format_history(app))
    return EXIT_OK


def _report_diff(ctx: Context, report: DiffReport, output: str | None) -> int:
    if output:
        ctx.write(dump({"revision": report.revision, "inSync": not report.entries and not report.failures,
                        "resources": [e.to_dict() for e in report.entries],
                        "failures": [{"object": str(f.ref), "message": f.message} for f in report.failures]}, output))
    else:
        ctx.write(format_diff(report.entries))
    for failure in report.failures:
        print(f"gantry: cannot compare {failure.ref}: {failure.message}", file=sys.stderr)
    return diff_exit_code(report.entries, report.failures)


def cmd_diff(ctx: Context, args: argparse.Namespace) -> int:
    if args.local:
        app = ctx.apps.get(args.name)
        report = compute_diff(ctx.client, app, kustomize=kustomize_binary(args.kustomize),
                              cache_dir=Path(args.cache_dir), revision=args.revision)
    else:
        report = report_of(_controller_diff(ctx, args))
    return _report_diff(ctx, report, args.output)


def _controller_diff(ctx: Context, args: argparse.Namespace) -> dict:
    """The controller's diff of the app (its web UI's API), through the API server's service proxy
    or, with --server, from the UI's address; the user proves who they are with a bearer token in
    a header of ours, which the UI checks as a sign-in (the proxy keeps Authorization for itself)."""
    query = {"revision": args.revision} if args.revision else None
    token = args.token or os.environ.get("GANTRY_TOKEN") or None
    if args.server:
        if token is None:
            try:
                token = kubeconfig_token(ctx.client)
            except CliError:  # no kubeconfig: a UI that needs no sign-in (gantry ui) may still answer
                token = None
        url = args.server.rstrip("/") + ui_diff_path(args.namespace, args.name) + (f"?{urlencode(query)}" if query else "")
        return _get_from_ui(url, token, args.server)
    token = token or kubeconfig_token(ctx.client)
    if token is None:
        raise CliError("the kubeconfig's user has no bearer token (client certificates), and the controller can check "
                       "only a token: pass one with GANTRY_TOKEN or --token (kubectl create token NAME), or --local to "
                       "render here with kustomize")
    where = f"{args.controller_namespace}/{args.controller_service}"
    try:
        return ctx.client.request("GET", controller_diff_path(args.controller_namespace, args.controller_service,
                                                              args.namespace, args.name),
                                  query=query, headers={TOKEN_HEADER: f"Bearer {token}"}, timeout=DIFF_TIMEOUT)
    except KubeApiError as error:
        if error.status == 0:
            raise
        raise controller_refusal(error.status, error.reason, error.message, where=where, proxied=True) from None


def _get_from_ui(url: str, token: str | None, server: str) -> dict:
    headers = {"Accept": "application/json", **({TOKEN_HEADER: f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=DIFF_TIMEOUT) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = str(json.loads(body).get("error") or "")
        except (ValueError, AttributeError):
            message = " ".join(body.decode(errors="replace").split())[:200]
        raise controller_refusal(error.code, "", message or str(error.reason), where=server, proxied=False) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise CliError(f"cannot reach the controller's web UI at {server}: {reason}; check --server, or pass --local "
                       "to render here with kustomize") from None


def _request_sync(ctx: Context, name: str, *, revision: str | None, prune: bool, wait: bool,
                  timeout: float, request: dict | None = None) -> int:
    """Ask for a sync (`request`, else one to `revision`) and, with `wait`, report its result."""
    apps = ctx.apps
    app = apps.get(name)
    if app.get("operation"):
        raise CliError(f'another operation is already in progress on "{name}": wait for it, or withdraw it with '
                       f"kubectl -n {apps.namespace} patch app {name} --type merge -p '{{\"operation\":null}}'",
                       EXIT_FAILED)
    previous_state = _status(app).get("operationState") or None
    if (previous_state or {}).get("phase") in ("Running", "Terminating"):
        raise CliError(f'a sync of "{name}" is running ({previous_state.get("message") or "no message yet"}): wait for '
                       f"it, or stop it with gantry app terminate-op {name}", EXIT_FAILED)
    request = request or sync_request(revision, prune)
    # resourceVersion makes the patch conditional: it fails rather than overwrite an operation
    # someone requested since we looked.
    body = {**request, "metadata": {"resourceVersion": app["metadata"]["resourceVersion"]}}
    try:
        patched = apps.patch(name, body)
    except KubeApiError as error:
        if error.status == 409:
            raise CliError(f'"{name}" changed while the sync was being requested; run the command again') from None
        raise
    requested_at = _server_time(patched, FIELD_MANAGER) or timestamp()
    what = f"sync of {name}" + (f" to {revision}" if revision else "") + (" with prune" if prune else "")
    if not wait:
        ctx.write(f"requested {what}\n")
        return EXIT_OK
    print(f"requested {what}; waiting for the controller …", file=sys.stderr)

    def check(current: Manifest | None, waited: float) -> SyncOutcome | None:
        if current is None:
            raise CliError(f'application "{name}" was deleted while syncing')
        return sync_outcome(current, requested_at=requested_at, previous_state=previous_state, waited=waited)

    outcome = apps.wait(name, check, timeout=timeout,
                        describe=lambda current: f"the controller has not finished the {what} (is it running?)")
    if not outcome.ran:
        current = apps.get(name)
        if current.get("operation") == request["operation"]:
            # Left pending, the controller would retry this request on every reconcile; a failed
            # sync ends it, as in Argo CD.
            apps.patch(name, {"operation": None, "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}})
        raise CliError(f"{what} failed before anything was applied: {outcome.message}", EXIT_FAILED)
    ctx.write(format_operation(outcome.state or {}, colour=ctx.colour))
    final = apps.get(name)
    ctx.write(f"\n{name}: {paint_state(sync_status(final), ctx.colour)}, {paint_state(health_status(final), ctx.colour)}\n")
    return EXIT_OK if outcome.phase == "Succeeded" else EXIT_FAILED


def cmd_sync(ctx: Context, args: argparse.Namespace) -> int:
    if args.dry_run:
        app = ctx.apps.get(args.name)
        report = compute_diff(ctx.client, app, kustomize=kustomize_binary(args.kustomize),
                              cache_dir=Path(args.cache_dir), revision=args.revision, include_prune=args.prune)
        if not report.entries and not report.failures:
            print(f"{args.name}: nothing to sync at {short_revision(report.revision)}", file=sys.stderr)
        return _report_diff(ctx, report, None)
    return _request_sync(ctx, args.name, revision=args.revision, prune=args.prune, wait=not args.async_,
                         timeout=args.timeout)


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    app = ctx.apps.get(args.name)
    if automated_enabled(app):
        raise CliError(
            "automated sync is enabled; disable it first (as in Argo CD): "
            f"kubectl -n {args.namespace} patch app {args.name} --type merge "
            "-p '{\"spec\":{\"syncPolicy\":{\"automated\":{\"enabled\":false}}}}'", EXIT_FAILED)
    entry = history_entry(app, args.id)
    return _request_sync(ctx, args.name, revision=entry["revision"], prune=args.prune, wait=not args.async_,
                         timeout=args.timeout, request=rollback_request(entry, args.prune))


def cmd_terminate_op(ctx: Context, args: argparse.Namespace) -> int:
    """Stop the running sync, as `argocd app terminate-op` does: ask in the status (the field Argo
    CD's API server sets), then wait for the controller to end it."""
    apps = ctx.apps
    app = apps.get(args.name)
    state = _status(app).get("operationState") or {}
    if state.get("phase") not in ("Running", "Terminating"):
        raise CliError(f'no operation is running on "{args.name}"'
                       + (f" (the last one {state['phase']})" if state.get("phase") else ""), EXIT_FAILED)
    try:
        apps.client.request("PATCH", APPLICATION.object_path(args.name, apps.namespace) + "/status",
                            body={"metadata": {"resourceVersion": app["metadata"]["resourceVersion"]},
                                  "status": {"operationState": {"phase": "Terminating"}}},
                            query={"fieldManager": FIELD_MANAGER}, content_type="application/merge-patch+json")
    except KubeApiError as error:
        if error.status == 409:
            raise CliError(f'"{args.name}" changed meanwhile; run the command again') from None
        raise
    print(f"asked to terminate the operation of {args.name}; waiting for the controller …", file=sys.stderr)

    def ended(current: Manifest | None, _waited: float) -> dict | None:
        if current is None:
            raise CliError(f'application "{args.name}" was deleted')
        now_state = _status(current).get("operationState") or {}
        return None if now_state.get("phase") in ("Running", "Terminating") else now_state

    final = apps.wait(args.name, ended, timeout=args.timeout,
                      describe=lambda _current: "the controller has not ended the operation (is it running?)")
    ctx.write(format_operation(final, colour=ctx.colour))
    return EXIT_OK


def cmd_refresh(ctx: Context, args: argparse.Namespace) -> int:
    apps = ctx.apps
    before = _status(apps.get(args.name)).get("reconciledAt") or ""
    apps.patch(args.name, refresh_request(hard=args.hard))

    def check(current: Manifest | None, _waited: float) -> Manifest | None:
        if current is None:
            raise CliError(f'application "{args.name}" was deleted during the refresh')
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        done = REFRESH_ANNOTATION not in annotations and (_status(current).get("reconciledAt") or "") >= before
        return current if done else None

    app = apps.wait(args.name, check, timeout=args.timeout,
                    describe=lambda _app: "the controller has not taken up the refresh (is it running?)")
    message = _status(app).get("message")
    ctx.write(f"{args.name}: {paint_state(sync_status(app), ctx.colour)}, {paint_state(health_status(app), ctx.colour)}"
              + (f" ({message})" if message else "") + "\n")
    return EXIT_OK


def cmd_wait(ctx: Context, args: argparse.Namespace) -> int:
    want_sync = args.sync or not (args.sync or args.health)
    want_health = args.health or not (args.sync or args.health)
    last: list[Verdict] = []

    def check(current: Manifest | None, _waited: float) -> Verdict | None:
        if current is None:
            raise CliError(f'application "{args.name}" not found in namespace "{args.namespace}"')
        verdict = wait_verdict(current, want_sync=want_sync, want_health=want_health)
        last[:] = [verdict]
        return verdict if verdict.state != "waiting" else None

    verdict = ctx.apps.wait(args.name, check, timeout=args.timeout,
                            describe=lambda _app: f"{args.name}: {last[0].message if last else 'no status'}")
    if verdict.state == "failed":
        raise CliError(f"{args.name}: {verdict.message}", EXIT_FAILED)
    ctx.write(f"{args.name}: {verdict.message}\n")
    return EXIT_OK


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    apps = ctx.apps
    app = apps.get(args.name)
    plan = delete_plan(app, cascade=args.cascade)
    if not args.yes and sys.stdin.isatty():
        what = {"deleted": "and every resource it deployed ", "kept": "(its resources stay) ",
                "maybe": "(it is being deleted with its resources; what is left stays) "}[plan.resources]
        answer = input(f'Delete application "{args.name}" {what}? [y/N] ')
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted", file=sys.stderr)
            return EXIT_FAILED
    if plan.finalizers is not None:
        metadata = {"finalizers": plan.finalizers}
        if plan.conditional:
            metadata["resourceVersion"] = app["metadata"]["resourceVersion"]
        try:
            apps.patch(args.name, {"metadata": metadata})
        except KubeApiError as error:
            if error.status == 409:
                raise CliError(f'"{args.name}" changed while its deletion was being prepared; run the command again') from None
            raise
    apps.delete(args.name)
    if not args.wait:
        ctx.write(delete_message(args.name, plan, waited=False))
        return EXIT_OK
    hint = ("the controller deletes the app's resources first, then the app; is it running?" if args.cascade
            else "something else holds a finalizer on it")
    apps.wait(args.name, lambda current, _w: True if current is None else None, timeout=args.timeout,
              describe=lambda _app: f'application "{args.name}" is still there: {hint}')
    ctx.write(delete_message(args.name, plan, waited=True))
    return EXIT_OK


# =============================================================================================
# argparse: thin.


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, as every other error of the command is: the usage
    block argparse prints first buries the reason, and `--help` shows it to whoever wants it.
    Subparsers are made of the same class (add_subparsers uses the parent's type)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {' '.join(message.split())} (try '{self.prog} --help')\n")

    def commands(self) -> list[str]:
        """The names its subcommands can be given by."""
        return [name for action in self._actions if isinstance(action, argparse._SubParsersAction)
                for name in action.choices]


def build_parser() -> argparse.ArgumentParser:
    # Global options work before and after the command (`gantry -n x app list`, `gantry app list -n x`):
    # the copy on each command defaults to SUPPRESS so it never overwrites the top-level value.
    def connection(parser: argparse.ArgumentParser, top: bool) -> None:
        default = (lambda value: value) if top else (lambda _value: argparse.SUPPRESS)
        parser.add_argument("--kubeconfig", default=default(None),
                            help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
        parser.add_argument("--context", default=default(None), help="kubeconfig context (default: its current one)")
        parser.add_argument("-n", "--namespace", default=default(os.environ.get("GANTRY_NAMESPACE") or DEFAULT_NAMESPACE),
                            help="namespace of the Applications (default: gantry)")

    parser = _Parser(prog="gantry", description="Look at and drive Gantry Applications, as `argocd app` does.")
    connection(parser, True)
    # `parser`: the (sub)parser the words given ended in, which speaks for the errors found after parsing.
    parser.set_defaults(handler=None, parser=parser, missing="a command")
    commands = parser.add_subparsers(dest="group", metavar="COMMAND")
    app = commands.add_parser("app", help="manage Applications", description="Manage Gantry Applications.")
    verbs = app.add_subparsers(dest="verb", metavar="VERB")
    app.set_defaults(handler=None, parser=app, missing="a verb")

    def verb(name: str, handler: Callable, help_: str, description: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_, description=description)
        connection(sub, False)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    def output(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-o", "--output", choices=OUTPUTS, help="print json or yaml instead of text")

    def timeout(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--timeout", type=parse_timeout, default=parse_timeout(DEFAULT_TIMEOUT),
                         help="how long to wait: 30s, 5m, 1h (default 5m)")

    def diff_options(sub: argparse.ArgumentParser, where: str = "") -> None:
        sub.add_argument("--kustomize", help=f"kustomize binary{where} (default: $GANTRY_KUSTOMIZE, else kustomize on PATH)")
        sub.add_argument("--cache-dir", default=str(default_cache_dir()),
                         help=f"where git clones are cached{where} (default: ~/.cache/gantry/cli-git)")

    sub = verb("list", cmd_list, "list Applications",
               "List Applications: name, sync, health, revision, repo, path, destination and message.")
    sub.add_argument("-A", "--all-namespaces", action="store_true", help="Applications of every namespace")
    output(sub)

    sub = verb("get", cmd_get, "show one Application and its resource tree",
               "Show an Application: source, sync and health, URLs, images, last sync and conditions, then its "
               "resources with their ReplicaSets and Pods.")
    sub.add_argument("name")
    output(sub)

    sub = verb("diff", cmd_diff, "show what a sync would change",
               "Diff git (rendered with kustomize, dry-run applied on the server) against the live objects, as the "
               "controller computes it: it is asked through the API server's proxy to its Service (or at --server), "
               "as you, with your bearer token. --local renders here instead (kustomize and git access needed). "
               "Secret values are masked. Exit code: 0 in sync, 1 differences, 2 error.")
    sub.add_argument("name")
    sub.add_argument("--revision", help="compare this branch, tag or commit instead of the targetRevision")
    where = sub.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true",
                       help="render and compare here, with kustomize and git, instead of asking the controller")
    where.add_argument("--server", default=os.environ.get("GANTRY_SERVER") or None, metavar="URL",
                       help="the controller's web UI at URL (a port-forward, an Ingress) instead of the API server's "
                            "proxy (default: $GANTRY_SERVER)")
    sub.add_argument("--token", help="bearer token the controller checks with the API server (default: $GANTRY_TOKEN, "
                                     "else the kubeconfig's; prefer the variable: arguments show in ps)")
    sub.add_argument("--controller-namespace", default=os.environ.get("GANTRY_CONTROLLER_NAMESPACE") or CONTROLLER_NAMESPACE,
                     help=f"namespace of the controller's Service (default: $GANTRY_CONTROLLER_NAMESPACE, else "
                          f"{CONTROLLER_NAMESPACE})")
    sub.add_argument("--controller-service", default=os.environ.get("GANTRY_CONTROLLER_SERVICE") or CONTROLLER_SERVICE,
                     metavar="NAME[:PORT]", help=f"the controller's Service and its web UI port (default: "
                                                 f"$GANTRY_CONTROLLER_SERVICE, else {CONTROLLER_SERVICE})")
    diff_options(sub, " for --local")
    output(sub)

    sub = verb("sync", cmd_sync, "sync an Application",
               "Ask the controller to sync (Argo CD's operation.sync) and wait for the result. "
               "Exit code: 0 succeeded, 1 failed or timed out.")
    sub.add_argument("name")
    sub.add_argument("--revision", help="sync this branch, tag or commit instead of the targetRevision")
    sub.add_argument("--prune", action="store_true", help="delete resources that are no longer in git")
    sub.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    sub.add_argument("--async", dest="async_", action="store_true", help="do not wait for the sync to finish")
    timeout(sub)
    diff_options(sub)

    sub = verb("refresh", cmd_refresh, "re-read git now",
               "Ask the controller to re-read git now (gantry.dev/refresh) and print sync and health.")
    sub.add_argument("name")
    sub.add_argument("--hard", action="store_true", help="also render the manifests again")
    timeout(sub)

    sub = verb("history", cmd_history, "list the revisions deployed",
               "List the successful syncs kept in status.history: ID, date, revision.")
    sub.add_argument("name")
    output(sub)

    sub = verb("rollback", cmd_rollback, "sync back to a revision of the history",
               "Sync back to a history entry: the source it recorded (repository, path) at its revision, as "
               "Argo CD rolls back. Refused while automated sync is enabled (it would undo the rollback).")
    sub.add_argument("name")
    sub.add_argument("id", type=int, help="history ID (see `gantry app history`)")
    sub.add_argument("--prune", action="store_true", help="delete resources the old revision does not have")
    sub.add_argument("--async", dest="async_", action="store_true", help="do not wait for the sync to finish")
    timeout(sub)

    sub = verb("terminate-op", cmd_terminate_op, "stop the running sync",
               "Stop the sync operation that is running (waves, hooks): what it applied stays, later waves are "
               "not applied, nothing is pruned; the operation ends Failed with \"Operation terminated\".")
    sub.add_argument("name")
    timeout(sub)

    sub = verb("wait", cmd_wait, "wait until Synced and/or Healthy",
               "Wait until the Application is Synced and/or Healthy (both when neither flag is given). "
               "Exit code: 0 done, 1 on timeout, when health is Degraded or when the sync Failed.")
    sub.add_argument("name")
    sub.add_argument("--sync", action="store_true", help="wait for Synced")
    sub.add_argument("--health", action="store_true", help="wait for Healthy")
    timeout(sub)

    sub = verb("delete", cmd_delete, "delete an Application",
               "Delete an Application. --cascade (default) deletes the resources it deployed too; "
               "--no-cascade leaves them running.")
    sub.add_argument("name")
    sub.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=True,
                     help="delete the app's resources with it (default: yes)")
    sub.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                     help="wait until the Application is gone (default: yes)")
    sub.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation on a terminal")
    timeout(sub)

    ui = commands.add_parser("ui", help="serve the web UI on loopback, as your kubeconfig's user",
                             description="Serve Gantry's web UI on 127.0.0.1 with your kubeconfig's identity (as "
                                         "`argocd admin dashboard` does) and print its URL; Ctrl-C stops it.")
    connection(ui, False)
    ui.set_defaults(handler=cmd_ui, parser=ui)
    ui.add_argument("--port", type=int, default=8090, help="port on 127.0.0.1 (default 8090; 0: any free one)")
    ui.add_argument("-A", "--all-namespaces", action="store_true", help="Applications of every namespace")
    return parser


def cmd_ui(ctx: Context, args: argparse.Namespace) -> int:
    from .ui import UiServer  # aiohttp is only needed here

    namespaces = None if args.all_namespaces else (args.namespace,)
    try:
        server = UiServer(ctx.client, f"127.0.0.1:{args.port}", namespaces=namespaces, local=True,
                          diff=lambda client, app, revision: compute_diff(
                              client, app, kustomize=kustomize_binary(None), cache_dir=default_cache_dir(),
                              revision=revision)).start()
    except OSError as error:
        raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {error.strerror or error}; pass another --port") from None
    except KubeApiError as error:
        raise CliError(describe_kube_error(error, ctx.client.host)) from None
    ctx.write(f"Gantry UI: {server.url}  (Ctrl-C stops it)\n")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    # Each error exits 2 with one line, from the parser of the words it is about:
    # `gantry app list --bogus` is an error of `gantry app list`, not of `gantry`.
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    handler = args.handler
    if handler is None:
        args.parser.error(f"{args.missing} is required: one of {', '.join(args.parser.commands())}")
    ctx = Context(args)
    try:
        return handler(ctx, args)
    except CliError as error:
        _error(str(error))
        return error.exit_code
    except KubeApiError as error:
        _error(describe_kube_error(error, ctx._client.host if ctx._client else "?"))
        return EXIT_ERROR
    except GantryError as error:  # SourceError, RenderError …: their messages are written for users
        _error(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # `gantry app list | head`: the reader left; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 (a bug: one line, the traceback only on request)
        if os.environ.get("GANTRY_DEBUG"):
            raise
        _error(f"unexpected error: {type(error).__name__}: {' '.join(str(error).split())} "
               f"(set GANTRY_DEBUG=1 for the traceback)")
        return EXIT_ERROR


def _error(message: str) -> None:
    print(f"gantry: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
