"""Typed values passed between the stages of the flow (source → render → diff → sync → health → status).

Nothing here does I/O: these are the nouns every stage shares, and the one error tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from enum import StrEnum
from typing import Any, NamedTuple

# A Kubernetes object as the API and kustomize give it: plain dicts, never client model classes, so
# stages compare and hash them without conversion.
Manifest = dict[str, Any]

API_GROUP = "gantry.dev"
API_VERSION = "v1alpha1"
FIELD_MANAGER = "gantry"
FINALIZER = "gantry.dev/resources-finalizer"
ARGOCD_FINALIZER = "resources-finalizer.argocd.argoproj.io"
# Argo CD also writes its finalizer with the propagation policy of the cascade as a suffix; a
# ported Application carrying either must still cascade and be deletable.
RESOURCE_FINALIZERS = (FINALIZER, ARGOCD_FINALIZER, f"{ARGOCD_FINALIZER}/background", f"{ARGOCD_FINALIZER}/foreground")
REFRESH_ANNOTATION = "gantry.dev/refresh"
# Set on every object Gantry applies: the label lets watches select only managed objects, the
# annotation says which Application owns it, so prune never touches what another app or a human made.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "gantry"
TRACKING_ANNOTATION = "gantry.dev/tracking-id"


class SyncStatus(StrEnum):
    SYNCED = "Synced"
    OUT_OF_SYNC = "OutOfSync"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


class HealthStatus(StrEnum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    MISSING = "Missing"
    UNKNOWN = "Unknown"


class Action(StrEnum):
    """What sync did (or, in a dry run, would do) to one object."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    FAILED = "failed"


class ObjectRef(NamedTuple):
    """Identity of one object: group, kind, namespace (\"\" for cluster-scoped) and name.

    A named tuple rather than a frozen dataclass: a pass makes several per managed object, and
    tuples are built, hashed and compared in C (a fifth of a 1,000-object no-op pass went here)."""

    group: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Manifest) -> "ObjectRef":
        api_version = manifest.get("apiVersion", "")
        metadata = manifest.get("metadata") or {}
        return cls(api_version.rpartition("/")[0], manifest.get("kind", ""), metadata.get("namespace") or "",
                   metadata.get("name", ""))

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind} {self.namespace}/{self.name}" if self.namespace else f"{kind} {self.name}"


@dataclass(frozen=True)
class HealthResult:
    status: HealthStatus
    message: str = ""


# ---------------------------------------------------------------------------------------------
# Errors: one tree, each carrying what it is about, each message saying what to do.


class GantryError(Exception):
    """Base of every error a stage raises on purpose; its message is shown to users as it is."""


class SpecError(GantryError):
    """The Application itself is invalid; retrying cannot help until it is edited."""


class SourceError(GantryError):
    """Git could not give the requested revision (unreachable repo, unknown revision, bad auth)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RenderError(GantryError):
    """The manifests could not be rendered; names the file (relative to the repo root) and line."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = path if path else ""
        if path and line:
            where = f"{path}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line


@dataclass(frozen=True)
class ApplyFailure:
    """One object the API server refused (in a dry run or an apply), with the server's reason."""

    ref: ObjectRef
    message: str


@dataclass(frozen=True)
class NamespacePolicy:
    """Namespaced mode (--namespaces): where Applications may deploy, and which of them may deploy where.

    A destination namespace admits the Applications that live in it (whoever may write an
    Application there may already write in it) and those `grants` name for it by `namespace/name`
    pattern (shell globs: `gantry/shop-*`); nobody else, so one team's Application cannot aim at
    another team's namespace, nor can a commit to its repo put an object there. Cluster-scoped
    objects are refused to every Application.
    """

    namespaces: frozenset[str]
    grants: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (destination namespace, app patterns)

    @classmethod
    def parse(cls, namespaces: str, grants: Sequence[str] = ()) -> "NamespacePolicy | None":
        """From `--namespaces a,b` and each `--destination-apps NS=PATTERN[,PATTERN…]`; None (cluster
        mode) without namespaces. Raises SpecError for a grant that does not fit."""
        listed = frozenset(n.strip() for n in namespaces.split(",") if n.strip())
        if not listed:
            if grants:
                raise SpecError("--destination-apps needs namespaced mode: list the namespaces with --namespaces")
            return None
        parsed: dict[str, tuple[str, ...]] = {}
        for grant in grants:
            namespace, sep, patterns = grant.partition("=")
            names = tuple(p.strip() for p in patterns.split(",") if p.strip())
            if not sep or not names or namespace.strip() not in listed or any("/" not in p for p in names):
                raise SpecError(f"--destination-apps {grant!r}: write NAMESPACE=APP_NAMESPACE/APP_NAME[,…] (globs "
                                f"allowed) for a namespace listed in --namespaces ({', '.join(sorted(listed))})")
            parsed[namespace.strip()] = parsed.get(namespace.strip(), ()) + names
        return cls(listed, tuple(sorted(parsed.items())))

    def admitted(self, namespace: str) -> tuple[str, ...]:
        """The `namespace/name` patterns of the Applications `namespace` admits."""
        return (f"{namespace}/*", *dict(self.grants).get(namespace, ()))

    def allows(self, app_key: str, namespace: str) -> bool:
        """Whether the Application `app_key` (`namespace/name`) may deploy into `namespace`."""
        return namespace in self.namespaces and any(fnmatchcase(app_key, p) for p in self.admitted(namespace))

    def refusal(self, app_key: str, namespace: str) -> str:
        """Why `app_key` may not deploy into `namespace`, and what would allow it."""
        listed = ", ".join(sorted(self.namespaces))
        if namespace not in self.namespaces:
            return (f"namespace {namespace!r} is not allowed: the controller runs in namespaced mode and manages "
                    f"only {listed} (its --namespaces); use one of them or add the namespace there")
        return (f"namespace {namespace!r} is not allowed for Application {app_key}: it admits only "
                f"{', '.join(self.admitted(namespace))}; an administrator can grant it with "
                f"--destination-apps {namespace}={app_key}")


# ---------------------------------------------------------------------------------------------
# The Application spec, parsed once at the edge into values the stages take.

IN_CLUSTER_SERVERS = ("https://kubernetes.default.svc", "https://kubernetes.default.svc/")
IN_CLUSTER_NAME = "in-cluster"


@dataclass(frozen=True)
class IgnoreDifference:
    """Fields to leave out of the diff for the objects it matches (Argo CD's ignoreDifferences)."""

    group: str
    kind: str
    json_pointers: tuple[str, ...]
    name: str = ""
    namespace: str = ""

    def matches(self, ref: ObjectRef) -> bool:
        return (
            self.kind == ref.kind
            and self.group == ref.group
            and (not self.name or self.name == ref.name)
            and (not self.namespace or self.namespace == ref.namespace)
        )


@dataclass(frozen=True)
class SyncOptions:
    """Argo CD's `syncPolicy.syncOptions` entries (`Name=true|false`) that Gantry honours."""

    create_namespace: bool = False
    prune_last: bool = False
    replace: bool = False
    force: bool = False  # with Replace: an object whose immutable fields change is deleted and created again
    server_side_apply: bool = True  # always SSA; accepted so Argo CD manifests port unchanged
    respect_ignore_differences: bool = False
    prune_propagation_policy: str = "foreground"  # Argo CD's default for pruned objects

    @classmethod
    def parse(cls, entries: list[str]) -> "SyncOptions":
        known = {
            "CreateNamespace": "create_namespace",
            "PruneLast": "prune_last",
            "Replace": "replace",
            "Force": "force",
            "ServerSideApply": "server_side_apply",
            "RespectIgnoreDifferences": "respect_ignore_differences",
        }
        values: dict[str, bool | str] = {}
        for entry in entries:
            name, sep, value = entry.partition("=")
            if not sep or not name:
                raise SpecError(f"syncPolicy.syncOptions: {entry!r} is not of the form Name=value, such as CreateNamespace=true")
            if name == "PrunePropagationPolicy":
                if value.lower() not in ("foreground", "background", "orphan"):
                    raise SpecError(f"syncPolicy.syncOptions: {entry!r}: use foreground, background or orphan")
                values["prune_propagation_policy"] = value.lower()
            elif name in known:
                if value.lower() not in ("true", "false"):
                    raise SpecError(f"syncPolicy.syncOptions: {entry!r} is not of the form {name}=true|false")
                values[known[name]] = value.lower() == "true"
            # Other Argo CD options (Validate=false, ApplyOutOfSyncOnly=true, …) are accepted and
            # have no effect here, so an Argo CD Application still ports by changing apiVersion.
        return cls(**values)


# Argo CD's source.kustomize fields Gantry applies, by the kustomization field each becomes.
_KUSTOMIZE_OVERRIDES = ("namePrefix", "nameSuffix", "images", "commonLabels", "commonAnnotations", "namespace",
                        "replicas")


@dataclass(frozen=True)
class KustomizeOverrides:
    """Argo CD's `source.kustomize` block: changes laid over the app's kustomization at build
    time, as Argo CD makes them (a kustomization of its own around the app's, never in the repo)."""

    name_prefix: str = ""
    name_suffix: str = ""
    images: tuple[tuple[tuple[str, str], ...], ...] = ()  # kustomize `images:` entries, as sorted items
    common_labels: tuple[tuple[str, str], ...] = ()
    common_annotations: tuple[tuple[str, str], ...] = ()
    namespace: str = ""
    replicas: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, block: dict[str, Any]) -> "KustomizeOverrides":
        def pairs(field: str) -> tuple[tuple[str, str], ...]:
            value = block.get(field) or {}
            if not isinstance(value, dict):
                raise SpecError(f"spec.source.kustomize.{field} must be a map of names to values")
            return tuple(sorted((str(k), str(v)) for k, v in value.items()))

        replicas = []
        for entry in block.get("replicas") or ():
            if not isinstance(entry, dict) or not entry.get("name"):
                raise SpecError("spec.source.kustomize.replicas entries need a name and a count")
            replicas.append((str(entry["name"]), _number(int, entry.get("count"), "spec.source.kustomize.replicas[].count")))
        return cls(
            name_prefix=str(block.get("namePrefix") or ""),
            name_suffix=str(block.get("nameSuffix") or ""),
            images=tuple(tuple(sorted(kustomize_image(str(image)).items())) for image in block.get("images") or ()),
            common_labels=pairs("commonLabels"),
            common_annotations=pairs("commonAnnotations"),
            namespace=str(block.get("namespace") or ""),
            replicas=tuple(replicas),
        )

    def kustomization(self, resource: str) -> dict[str, Any]:
        """A kustomization that builds `resource` (the app's directory) with these changes."""
        fields: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                  "resources": [resource]}
        if self.name_prefix:
            fields["namePrefix"] = self.name_prefix
        if self.name_suffix:
            fields["nameSuffix"] = self.name_suffix
        if self.images:
            fields["images"] = [dict(image) for image in self.images]
        if self.common_labels:
            # Argo CD's commonLabels, selectors included, in the form kustomize no longer deprecates.
            fields["labels"] = [{"pairs": dict(self.common_labels), "includeSelectors": True}]
        if self.common_annotations:
            fields["commonAnnotations"] = dict(self.common_annotations)
        if self.namespace:
            fields["namespace"] = self.namespace
        if self.replicas:
            fields["replicas"] = [{"name": name, "count": count} for name, count in self.replicas]
        return fields

    def __bool__(self) -> bool:
        return self != KustomizeOverrides()


def kustomize_image(text: str) -> dict[str, str]:
    """An Argo CD `kustomize.images` entry (`kustomize edit set image`'s syntax: `name=new:tag`,
    `name:tag`, `name@digest`, `name=new@digest`) as a kustomization `images:` entry."""
    name, sep, new = text.strip().partition("=")
    if not name:
        raise SpecError(f"spec.source.kustomize.images: {text!r} is not of the form name=newName:tag, name:tag "
                        f"or name@digest")
    repository, tag, digest = _split_image(new if sep else name)
    image: dict[str, str] = {"name": name if sep else repository}
    if sep and repository:
        image["newName"] = repository
    if tag:
        image["newTag"] = tag
    if digest:
        image["digest"] = digest
    if len(image) == 1:
        raise SpecError(f"spec.source.kustomize.images: {text!r} changes nothing: give a new name, tag or digest")
    return image


def _split_image(reference: str) -> tuple[str, str, str]:
    """(repository, tag, digest) of `repo[:tag][@digest]`; a registry's port stays in the repository."""
    reference, _, digest = reference.partition("@")
    repository, tag = reference, ""
    if ":" in reference.rpartition("/")[2]:  # a tag, not a registry's port
        repository, _, tag = reference.rpartition(":")
    return repository, tag, digest


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 5
    backoff_seconds: float = 5.0
    factor: float = 2.0
    max_backoff_seconds: float = 180.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based), never above the cap."""
        # The exponent is bounded so that unlimited retries (limit -1) never overflow a float.
        return min(self.backoff_seconds * self.factor ** min(max(attempt - 1, 0), 64), self.max_backoff_seconds)


@dataclass(frozen=True)
class AppSpec:
    name: str
    namespace: str  # the Application's own namespace
    repo_url: str
    target_revision: str
    path: str
    destination_namespace: str
    automated: bool
    prune: bool
    self_heal: bool
    sync_options: SyncOptions
    retry: RetryPolicy | None
    ignore_differences: tuple[IgnoreDifference, ...]
    project: str = "default"
    history_limit: int = 10  # spec.revisionHistoryLimit: successful syncs kept in status.history
    # syncPolicy.automated.allowEmpty: without it an automated sync refuses a render with no
    # objects, which would prune the whole app (a kustomization emptied by mistake), as Argo CD does.
    allow_empty: bool = False
    directory_recurse: bool = False  # source.directory.recurse: a plain folder's subfolders too
    kustomize: KustomizeOverrides = KustomizeOverrides()  # source.kustomize
    # Argo CD fields accepted so an Application ports, that Gantry does not act on: said on the
    # Application (a warning condition), never silently dropped.
    unsupported: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str, namespace: str, spec: dict[str, Any]) -> "AppSpec":
        """Validate what the CRD schema cannot (server, URL scheme, path) and fill in defaults."""
        source = spec.get("source") or {}
        destination = spec.get("destination") or {}
        repo_url = _checked_repo_url(source)
        path = str(source.get("path") or "k8s").strip()
        if path.startswith("/") or ".." in path.split("/"):
            raise SpecError(f"spec.source.path {path!r} must be relative to the repository root and may not use '..'")
        _check_destination(destination)
        policy = spec.get("syncPolicy") or {}
        automated = policy.get("automated")
        if automated is not None and automated.get("enabled") is False:
            automated = None  # Argo CD's switch to turn auto-sync off while keeping the block
        retry = _retry_policy(policy["retry"]) if policy.get("retry") is not None else None
        unsupported = _unsupported_fields(source, spec.get("ignoreDifferences") or ())
        ignores = tuple(
            IgnoreDifference(
                group=entry.get("group", ""),
                kind=entry["kind"],
                name=entry.get("name", ""),
                namespace=entry.get("namespace", ""),
                json_pointers=tuple(entry.get("jsonPointers") or ()),
            )
            for entry in spec.get("ignoreDifferences") or ()
        )
        return cls(
            name=name,
            namespace=namespace,
            repo_url=repo_url,
            target_revision=str(source.get("targetRevision") or "HEAD"),
            path=path.strip("/") or ".",
            destination_namespace=destination.get("namespace") or namespace,
            automated=automated is not None,
            prune=bool((automated or {}).get("prune", False)),
            self_heal=bool((automated or {}).get("selfHeal", False)),
            sync_options=SyncOptions.parse(list(policy.get("syncOptions") or ())),
            retry=retry,
            ignore_differences=ignores,
            project=spec.get("project") or "default",
            history_limit=(_number(int, spec["revisionHistoryLimit"], "spec.revisionHistoryLimit")
                           if spec.get("revisionHistoryLimit") is not None else 10),
            allow_empty=bool((automated or {}).get("allowEmpty", False)),
            directory_recurse=bool((source.get("directory") or {}).get("recurse", False)),
            kustomize=KustomizeOverrides.parse(source.get("kustomize") or {}),
            unsupported=unsupported,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _checked_repo_url(source: dict[str, Any]) -> str:
    """spec.source.repoURL, of a scheme Gantry fetches, from a source it renders."""
    repo_url = str(source.get("repoURL") or "").strip()
    if not repo_url:
        raise SpecError("spec.source.repoURL is required")
    if not repo_url.startswith(("https://", "http://", "ssh://", "git://", "file://")) and not _is_scp_url(repo_url):
        raise SpecError(
            f"spec.source.repoURL {_without_userinfo(repo_url)!r}: use an https://, http://, ssh://, git:// "
            f"or file:// URL"
        )
    for tool in ("chart", "helm", "plugin"):
        if source.get(tool):
            raise SpecError(
                f"spec.source.{tool}: Gantry does not render Helm charts or config management plugins; "
                f"commit the rendered manifests (helm template), or a kustomization that lists them"
            )
    return repo_url


def _check_destination(destination: dict[str, Any]) -> None:
    """Only the cluster Gantry runs in, by server URL or by name."""
    server = destination.get("server")
    dest_name = destination.get("name")
    if server and server not in IN_CLUSTER_SERVERS:
        raise SpecError(
            f"spec.destination.server {server!r} is not supported: Gantry deploys only to the cluster it runs in "
            f"(use https://kubernetes.default.svc or destination.name: in-cluster)"
        )
    if dest_name and dest_name != IN_CLUSTER_NAME:
        raise SpecError(f"spec.destination.name {dest_name!r} is not supported: use {IN_CLUSTER_NAME!r}")


def _retry_policy(retry_spec: dict[str, Any]) -> RetryPolicy:
    """syncPolicy.retry, with Argo CD's defaults for what it leaves out."""
    backoff = retry_spec.get("backoff") or {}
    return RetryPolicy(
        limit=_number(int, retry_spec.get("limit", 5), "syncPolicy.retry.limit"),
        backoff_seconds=parse_duration(backoff.get("duration") or "5s"),
        factor=_number(float, backoff.get("factor") or 2, "syncPolicy.retry.backoff.factor"),
        max_backoff_seconds=parse_duration(backoff.get("maxDuration") or "3m"),
    )


def _unsupported_fields(source: dict[str, Any], ignore_differences: Any) -> tuple[str, ...]:
    """The Argo CD fields in use that Gantry accepts but does not act on."""
    fields = [f"spec.source.kustomize.{key}" for key in sorted(source.get("kustomize") or {})
              if key not in _KUSTOMIZE_OVERRIDES]
    fields += [f"spec.source.directory.{key}" for key in sorted(source.get("directory") or {}) if key != "recurse"]
    for index, entry in enumerate(ignore_differences):
        fields += [f"spec.ignoreDifferences[{index}].{key}" for key in ("jqPathExpressions", "managedFieldsManagers")
                   if entry.get(key)]
    return tuple(fields)


def _number(kind: type, value: Any, field: str) -> Any:
    """value as an int or float, or a SpecError naming the field (the CRD schema checks types, but
    an Application written before a schema change, or through a lax client, may still hold text)."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise SpecError(f"{field} {value!r} is not a number") from None


def _without_userinfo(url: str) -> str:
    """url without `user:password@`, for messages about a URL Gantry could not even parse."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _is_scp_url(url: str) -> bool:
    """git's scp-like form, `git@host:org/repo.git`, which Argo CD accepts as ssh."""
    user_host, sep, _ = url.partition(":")
    return bool(sep) and "@" in user_host and "/" not in user_host


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Go-style duration (`5s`, `3m`, `1h30m`) as Argo CD writes them; a bare number
    is seconds, as Argo CD reads it."""
    if isinstance(text, (int, float)):
        return float(text)
    if text.strip().isdigit():
        return float(text.strip())
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    index = 0
    text = text.strip()
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if text.startswith("ms", index) else char
        if unit not in units or not number:
            raise SpecError(f"{text!r} is not a duration like 5s, 3m or 1h")
        try:
            total += float(number) * units[unit]
        except ValueError:
            raise SpecError(f"{text!r} is not a duration like 5s, 3m or 1h") from None
        number = ""
        index += len(unit)
    if number:
        raise SpecError(f"{text!r} is not a duration like 5s, 3m or 1h (missing unit)")
    return total
