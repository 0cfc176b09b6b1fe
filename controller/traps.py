"""Apply traps: the changes Kubernetes refuses or half-applies, known before diff and sync send them.

Pure functions over (target, live) objects and API error messages; `diff.Differ` asks them before
its dry run and `sync.Syncer` before its apply, with the same inputs, so the two always agree.

- **Heals** (safe, done in the same sync): server-side apply keeps fields nobody owns, such as the
  `rollingUpdate` block the API server defaulted, and the API then refuses them next to the new
  `type` (`spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy type is
  'Recreate'`); an explicit null in the apply does not remove them. A JSON merge patch of exactly
  that field, with the live object's resourceVersion as precondition, goes first. (A Service
  switched from NodePort/LoadBalancer to ClusterIP is not one: the API server drops the allocated
  nodePorts, healthCheckNodePort and externalTrafficPolicy itself, since Kubernetes 1.20.)
- **Immutable fields** (not safe): refused before anything is applied, naming the field, why and
  the fix; with `Replace=true` or `Force=true` (the object's sync-options annotation or the app's
  syncOptions) the object is deleted (a StatefulSet with orphan propagation, so its Pods and
  PersistentVolumeClaims stay and are adopted again) and created again.
- **Conflicts** with other field managers: what a forced apply took over, said from the API's own
  conflict report.
- **Namespaces being deleted**: nothing can be created in them until they are gone; transient.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .model import Manifest

SYNC_OPTIONS_ANNOTATIONS = ("argocd.argoproj.io/sync-options", "gantry.dev/sync-options")
RECREATE_HINT = (f"add the annotation {SYNC_OPTIONS_ANNOTATIONS[0]}: Replace=true (or Force=true) to the object "
                 f"in git, or Replace=true to the Application's syncPolicy.syncOptions")


# ---------------------------------------------------------------------------------------------
# Per-object sync options


@dataclass(frozen=True)
class ObjectSyncOptions:
    """Argo CD's per-resource `argocd.argoproj.io/sync-options` (also `gantry.dev/sync-options`):
    a comma list of `Name=value`. Options Gantry does not know are kept in `unknown`, as Argo CD
    ignores them too."""

    replace: bool = False  # PUT instead of apply; with an immutable change: delete and create again
    force: bool = False  # with an immutable change: delete and create again
    prune: bool = True  # Prune=false: never pruned
    prune_confirm: bool = False  # Prune=confirm: pruned only when a person confirms
    delete: bool = True  # Delete=false: kept when the Application is deleted
    prune_last: bool = False
    server_side_apply: bool | None = None
    validate: bool = True
    skip_dry_run_on_missing_resource: bool = False
    unknown: tuple[str, ...] = ()

    @property
    def recreate(self) -> bool:
        """Whether an immutable change may be made by deleting the object and creating it again."""
        return self.replace or self.force


_BOOLEAN_OPTIONS = {"Replace": "replace", "Force": "force", "Delete": "delete", "PruneLast": "prune_last",
                    "ServerSideApply": "server_side_apply", "Validate": "validate",
                    "SkipDryRunOnMissingResource": "skip_dry_run_on_missing_resource"}


def parse_sync_options(text: str) -> ObjectSyncOptions:
    """`Replace=true,Prune=false` → ObjectSyncOptions; a later entry wins over an earlier one."""
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, value = entry.partition("=")
        name, value = name.strip(), value.strip().lower()
        if name == "Prune" and value in ("true", "false", "confirm"):
            values["prune"] = value != "false"
            values["prune_confirm"] = value == "confirm"
        elif name in _BOOLEAN_OPTIONS and value in ("true", "false"):
            values[_BOOLEAN_OPTIONS[name]] = value == "true"
        else:
            unknown.append(entry)
    return ObjectSyncOptions(**values, unknown=tuple(unknown))


def object_sync_options(manifest: Manifest) -> ObjectSyncOptions:
    """The sync options an object's annotations carry (Argo CD's, then Gantry's, which win)."""
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    texts = [str(annotations[a]) for a in SYNC_OPTIONS_ANNOTATIONS if annotations.get(a)]
    return parse_sync_options(",".join(texts)) if texts else ObjectSyncOptions()


# ---------------------------------------------------------------------------------------------
# Value comparison: what the target says against what the server keeps (with defaults added)


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == [] or value == "" or value is False or value == 0


_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX = {None: 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity's value (`500m`, `1Gi`, `0.5`), so that `1000Mi` and the server's
    canonical form of it compare equal; None for anything else."""
    match = _QUANTITY.match(str(value)) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


def differs(want: Any, have: Any) -> bool:
    """Whether applying `want` over `have` changes something: every value `want` sets must be in
    `have`; what `have` adds (server defaults) is not a difference, nor is an empty value the server
    leaves out. Lists must be as long and alike item by item."""
    if want is None:
        return False
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return not _empty(want) or have is not None and not _empty(have)
        return any(differs(value, have.get(key)) for key, value in want.items())
    if isinstance(want, list):
        if not isinstance(have, list):
            return bool(want) or have is not None and not _empty(have)
        return len(want) != len(have) or any(differs(w, h) for w, h in zip(want, have))
    if have is None:
        return not _empty(want)
    if want == have or str(want) == str(have):
        return False
    quantities = _quantity(want), _quantity(have)
    return None in quantities or quantities[0] != quantities[1]


def _same(a: Any, b: Any) -> bool:
    return not differs(a, b) and not differs(b, a)


def _get(obj: Mapping, *path: str) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _has(obj: Mapping, *path: str) -> bool:
    parent = _get(obj, *path[:-1])
    return isinstance(parent, Mapping) and parent.get(path[-1]) is not None


# ---------------------------------------------------------------------------------------------
# Heals


@dataclass(frozen=True)
class Heal:
    """A field the API server defaulted that the target's new `discriminator` value forbids, and
    the merge patch that removes it together with setting that value."""

    field: str  # the field removed, as the API names it: spec.strategy.rollingUpdate
    discriminator: tuple[str, ...]  # the path whose change forbids it: ("spec", "strategy", "type")
    why: str
    patch: Manifest  # JSON merge patch (RFC 7386)


# (kind, group, the discriminator's path, the forbidden field, the values that forbid it, label)
_DEFAULTED = (
    ("Deployment", "apps", ("spec", "strategy"), "rollingUpdate", ("Recreate",), "strategy type"),
    ("StatefulSet", "apps", ("spec", "updateStrategy"), "rollingUpdate", ("OnDelete",), "updateStrategy type"),
)


def heals(target: Manifest, live: Manifest | None) -> tuple[Heal, ...]:
    """The heals applying target over live needs; () for nearly every change."""
    if live is None:
        return ()
    group, kind = target.get("apiVersion", "").rpartition("/")[0], target.get("kind")
    found = []
    for rule_kind, rule_group, block, field, values, label in _DEFAULTED:
        if (kind, group) != (rule_kind, rule_group):
            continue
        wanted = _get(target, *block, "type")
        if wanted in values and _get(live, *block, "type") != wanted and _has(live, *block, field) \
                and not _has(target, *block, field):
            path = ".".join((*block, field))
            patch: dict = {block[-1]: {"type": wanted, field: None}}
            for key in reversed(block[:-1]):
                patch = {key: patch}
            found.append(Heal(path, (*block, "type"), (
                f"the API server defaulted it for {label} {_get(live, *block, 'type')} and refuses it for "
                f"{wanted}; server-side apply keeps a field nobody set, so Gantry removed it"), patch))
    return tuple(found)


def merge_patch(obj: Any, patch: Any) -> Any:
    """RFC 7386: obj with patch laid over it (null removes a key); obj is not changed."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(obj) if isinstance(obj, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def heal_patch(found: tuple[Heal, ...], resource_version: str) -> Manifest:
    """One merge patch for all of `found`, valid only while the object is at resource_version."""
    patch: Manifest = {"metadata": {"resourceVersion": resource_version}}
    for heal in found:
        patch = _combined(patch, heal.patch)
    return patch


def _combined(a: Mapping, b: Mapping) -> dict:
    """Two merge patches as one (their nulls kept: they are the removals)."""
    result = dict(a)
    for key, value in b.items():
        both = isinstance(result.get(key), Mapping) and isinstance(value, Mapping)
        result[key] = _combined(result[key], value) if both else value
    return result


def neutral(target: Manifest, live: Manifest, found: tuple[Heal, ...]) -> Manifest:
    """target with each heal's discriminator at its live value: what the dry run can send, as
    server-side apply alone cannot drop the field (see `heals`)."""
    result = copy.deepcopy(target)
    for heal in found:
        node = result
        for key in heal.discriminator[:-1]:
            node = node.setdefault(key, {})
        node[heal.discriminator[-1]] = _get(live, *heal.discriminator)
    return result


def healed(answer: Manifest, found: tuple[Heal, ...]) -> Manifest:
    """The dry run's answer for `neutral(…)` with the heals made: what the sync leaves."""
    for heal in found:
        answer = merge_patch(answer, heal.patch)
    return answer


# ---------------------------------------------------------------------------------------------
# Immutable fields


@dataclass(frozen=True)
class ImmutableChange:
    """A change the API server refuses on an existing object: only a new object can have it."""

    field: str  # spec.selector
    why: str


_SELECTOR_WHY = "it is how the {kind} finds its {children}, so it is fixed when the {kind} is created"
_STATEFULSET_WHY = ("the API server lets a StatefulSet change only replicas, ordinals, template, updateStrategy, "
                    "revisionHistoryLimit, persistentVolumeClaimRetentionPolicy and minReadySeconds")
_FROZEN_WHY = "the live {kind} has immutable: true, so neither its data nor that flag can change"

# (group, kind) → (path, default when unset, exact comparison?, why); paths the API server freezes.
_IMMUTABLE: dict[tuple[str, str], tuple[tuple[tuple[str, ...], Any, bool, str], ...]] = {
    ("apps", "Deployment"): ((("spec", "selector"), None, True,
                              _SELECTOR_WHY.format(kind="Deployment", children="ReplicaSets and Pods")),),
    ("apps", "ReplicaSet"): ((("spec", "selector"), None, True,
                              _SELECTOR_WHY.format(kind="ReplicaSet", children="Pods")),),
    ("apps", "DaemonSet"): ((("spec", "selector"), None, True, _SELECTOR_WHY.format(kind="DaemonSet", children="Pods")),),
    ("apps", "StatefulSet"): (
        (("spec", "selector"), None, True, _SELECTOR_WHY.format(kind="StatefulSet", children="Pods")),
        (("spec", "serviceName"), "", True, _STATEFULSET_WHY),
        (("spec", "podManagementPolicy"), "OrderedReady", True, _STATEFULSET_WHY),
        (("spec", "volumeClaimTemplates"), [], False, _STATEFULSET_WHY),
    ),
    ("batch", "Job"): (
        (("spec", "selector"), None, False, "a Job's selector is fixed when the Job is created"),
        (("spec", "template"), None, False, "a Job's pod template is fixed when the Job is created (a Job runs once; "
                                            "to run a new one it must be a new Job)"),
    ),
    ("", "PersistentVolumeClaim"): ((("spec", "storageClassName"), None, True,
                                     "a claim's storage class is fixed when it is created (its volume comes from it)"),),
}


def _encoded(secret: Manifest) -> dict:
    """A Secret's data with its stringData encoded as the API server stores it."""
    data = dict(secret.get("data") or {})
    for key, value in (secret.get("stringData") or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    return data


def _frozen_changes(target: Manifest, live: Manifest) -> list[ImmutableChange]:
    kind = target.get("kind")
    why = _FROZEN_WHY.format(kind=kind)
    if target.get("immutable") is not True:
        return [ImmutableChange("immutable", why)]
    if kind == "Secret":
        return [ImmutableChange("data", why)] if _encoded(target) != (live.get("data") or {}) else []
    return [ImmutableChange(field, why) for field in ("data", "binaryData")
            if (target.get(field) or {}) != (live.get(field) or {})]


def immutable_changes(target: Manifest, live: Manifest | None) -> tuple[ImmutableChange, ...]:
    """The frozen fields applying target over live would change (nothing for a new object)."""
    if live is None:
        return ()
    group, kind = target.get("apiVersion", "").rpartition("/")[0], target.get("kind", "")
    changes = []
    for path, default, exact, why in _IMMUTABLE.get((group, kind), ()):
        want = _get(target, *path)
        if want is None and default is None:
            continue  # the target leaves it to the server: nothing changes
        want = default if want is None else want
        have = _get(live, *path)
        have = default if have is None else have
        if (not _same(want, have)) if exact else differs(want, have):
            changes.append(ImmutableChange(".".join(path), why))
    if group == "" and kind == "Service":
        want, have = _get(target, "spec", "clusterIP"), _get(live, "spec", "clusterIP")
        if want and have and want != have and _get(target, "spec", "type") != "ExternalName":
            changes.append(ImmutableChange("spec.clusterIP", "a Service's cluster IP is fixed once it is allocated "
                                                             "(\"None\" makes a headless Service, which also cannot change)"))
    if group == "" and kind in ("ConfigMap", "Secret") and live.get("immutable") is True:
        changes.extend(_frozen_changes(target, live))
    if group == "" and kind == "Secret" and (target.get("type") or "Opaque") != (live.get("type") or "Opaque"):
        changes.append(ImmutableChange("type", "a Secret's type is fixed when it is created"))
    return tuple(changes)


# What the API server says when it refuses a frozen field: `<field>: Invalid value: <value>: field
# is immutable`, `<field>: Forbidden: …`. The value is never repeated (it may be long, or secret).
_IMMUTABLE_ERROR = re.compile(
    r"(?P<field>[A-Za-z][\w.\[\]\"=-]*): (?:Invalid value: .*?: (?P<reason>field is immutable|may not change once set)"
    r"|Forbidden: (?P<forbidden>field is immutable when `immutable` is set|updates to statefulset spec for fields "
    r"other than [^\]]*? are forbidden|spec is immutable after creation[^,\]]*))", re.DOTALL)


def immutable_from_error(status: int, message: str) -> ImmutableChange | None:
    """The frozen field a refused apply names (422 from the API server), or None for other errors."""
    if status != 422:
        return None
    match = _IMMUTABLE_ERROR.search(message or "")
    if match is None:
        return None
    reason = match.group("reason") or match.group("forbidden")
    return ImmutableChange(re.sub(r"\[\d+\]$", "", match.group("field")), f"the API server says: {reason}")


def refusal(kind: str, changes: tuple[ImmutableChange, ...]) -> str:
    """Why the commit is refused and what to do: `spec.selector is immutable: …; to recreate it, …`."""
    by_why: dict[str, list[str]] = {}
    for change in changes:
        by_why.setdefault(change.why, []).append(change.field)
    said = "; ".join(f"{' and '.join(fields)} {'are' if len(fields) > 1 else 'is'} immutable: {why}"
                     for why, fields in by_why.items())
    orphan = (" (Gantry then deletes it with propagationPolicy Orphan, so its Pods and PersistentVolumeClaims "
              "stay and are adopted by the new StatefulSet)" if kind == "StatefulSet" else "")
    fields = "these fields as they are" if len(changes) > 1 else f"{changes[0].field} as it is"
    return f"{said}; to recreate the {kind}, {RECREATE_HINT}{orphan}; or leave {fields} in the cluster"


def recreate_propagation(kind: str) -> str:
    """How dependents fare when an object is deleted to be created again: a StatefulSet's Pods
    (and the claims they use) are kept for the new StatefulSet to adopt; others go with it."""
    return "Orphan" if kind == "StatefulSet" else "Background"


def recreated_message(kind: str, fields: tuple[str, ...]) -> str:
    kept = ", its Pods and PersistentVolumeClaims kept" if kind == "StatefulSet" else ""
    return f"recreated (deleted and created again{kept}): {', '.join(fields)} cannot change in place"


# ---------------------------------------------------------------------------------------------
# Conflicts with other field managers


@dataclass(frozen=True)
class Takeover:
    """Fields another field manager owned with other values, which a forced apply took over."""

    manager: str
    fields: tuple[str, ...]  # as the API server names them: .spec.replicas
    subresource: str = ""


_CONFLICTS = re.compile(r'conflicts? with "(?P<manager>[^"]*)"(?: with subresource "(?P<sub>[^"]*)")?'
                        r'(?: using [^:\s]*)?:(?P<fields>(?:\s*\n- [^\n]*)+|[^\n]*)')


def conflicts_from_error(status: int, message: str) -> tuple[Takeover, ...]:
    """The owners and fields of a 409 from a server-side apply without force; () for other errors."""
    if status != 409 or not (message or "").startswith("Apply failed with"):
        return ()
    takeovers = []
    for match in _CONFLICTS.finditer(message):
        raw = match.group("fields")
        fields = [f.strip() for f in (raw.split("\n- ") if "\n- " in raw else [raw]) if f.strip()]
        takeovers.append(Takeover(match.group("manager"), tuple(fields), match.group("sub") or ""))
    return tuple(takeovers) or (Takeover("another field manager", ()),)


def takeover_message(takeovers: tuple[Takeover, ...], *, most: int = 5) -> str:
    """`took over .spec.replicas from kubectl (scale subresource); …` for the sync result."""
    parts = []
    for takeover in takeovers:
        fields = ", ".join(takeover.fields[:most]) or "fields"
        if len(takeover.fields) > most:
            fields += f" and {len(takeover.fields) - most} more"
        via = f" ({takeover.subresource} subresource)" if takeover.subresource else ""
        parts.append(f"{fields} from {takeover.manager}{via}")
    return ("took over " + "; ".join(parts) + ": git's values win; to leave a field to another manager, list it "
            "in ignoreDifferences with RespectIgnoreDifferences=true")


# ---------------------------------------------------------------------------------------------
# Namespaces being deleted


_TERMINATING = re.compile(r"unable to create new content in namespace (?P<namespace>\S+) because it is being terminated")


def terminating_namespace(status: int, message: str) -> str | None:
    """The namespace a refused create names as being deleted (403), or None for other errors."""
    match = _TERMINATING.search(message or "") if status == 403 else None
    return match.group("namespace") if match else None


def terminating_message(namespace: str) -> str:
    return (f"namespace {namespace} is being deleted, and nothing can be created in it until it is gone; Gantry "
            f"retries, and creates the object once the namespace is gone (and created again: CreateNamespace=true, "
            f"or a Namespace in git)")

