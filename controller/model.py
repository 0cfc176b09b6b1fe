"""Typed values passed between the stages of the flow (source → render → diff → sync → health → status).

Nothing here does I/O: these are the nouns every stage shares, and the one error tree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import yaml

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


# Argo CD's source.helm fields Gantry applies; `version` (Helm 2 or 3) is accepted and means
# nothing here: charts are rendered by Helm 4, which renders Helm 3's charts.
_HELM_FIELDS = ("releaseName", "valueFiles", "ignoreMissingValueFiles", "values", "valuesObject", "parameters",
                "fileParameters", "skipCrds", "skipSchemaValidation", "skipTests", "namespace", "kubeVersion",
                "apiVersions", "passCredentials", "version")
# Helm's rule for release names (a DNS subdomain of at most 53 characters: it names Secrets).
_RELEASE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_KUBE_VERSION = re.compile(r"v?\d+\.\d+(\.\d+)?([-+][0-9A-Za-z.+-]*)?")
_CHART_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# An OCI registry's repository without its oci://: HOST[:PORT]/PATH (Argo CD's Secrets with
# enableOCI name it so; whether it is one, the Secret says when the chart is fetched).
_OCI_REPOSITORY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d+)?(/[A-Za-z0-9._/-]+)?")


@dataclass(frozen=True)
class HelmParameter:
    """One `--set name=value` (`--set-string` with force_string), as Argo CD's helm.parameters."""

    name: str
    value: str
    force_string: bool = False


@dataclass(frozen=True)
class HelmSource:
    """Argo CD's `source.helm` block with its defaults filled in: how `helm template` renders the
    chart (render.py builds the command line from it). Paths are relative to the chart's folder."""

    release_name: str
    namespace: str  # .Release.Namespace: the destination namespace unless the block says
    value_files: tuple[str, ...] = ()
    ignore_missing_value_files: bool = False
    values: str = ""  # YAML: valuesObject if given (it wins, as in Argo CD), else values
    parameters: tuple[HelmParameter, ...] = ()
    file_parameters: tuple[tuple[str, str], ...] = ()  # (name, path) for --set-file
    skip_crds: bool = False
    skip_schema_validation: bool = False
    skip_tests: bool = False
    kube_version: str = ""  # "": the cluster's own
    api_versions: tuple[str, ...] = ()  # (): what the cluster serves
    pass_credentials: bool = False  # send the repository's credentials to other hosts its index names

    @classmethod
    def parse(cls, block: dict[str, Any], *, app_name: str, destination_namespace: str) -> "HelmSource":
        """`spec.source.helm` (may be empty); raises SpecError naming the field."""
        if not isinstance(block, dict):
            raise SpecError("spec.source.helm must be a map of Helm settings")
        release = _text(block.get("releaseName"), "spec.source.helm.releaseName") or app_name
        if len(release) > 53 or not _RELEASE_NAME.fullmatch(release):
            raise SpecError(f"spec.source.helm.releaseName {release!r}: Helm release names are lower-case letters, "
                            f"digits, '-' and '.', at most 53 characters (it defaults to the Application's name)")
        kube_version = _text(block.get("kubeVersion"), "spec.source.helm.kubeVersion")
        if kube_version and not _KUBE_VERSION.fullmatch(kube_version):
            raise SpecError(f"spec.source.helm.kubeVersion {kube_version!r} is not a Kubernetes version such as 1.31 "
                            f"or v1.31.2")
        return cls(
            release_name=release,
            namespace=_text(block.get("namespace"), "spec.source.helm.namespace") or destination_namespace,
            value_files=tuple(_value_file(entry, index) for index, entry in enumerate(
                _list(block.get("valueFiles"), "spec.source.helm.valueFiles"))),
            ignore_missing_value_files=_flag(block.get("ignoreMissingValueFiles"), "spec.source.helm.ignoreMissingValueFiles"),
            values=_helm_values(block),
            parameters=tuple(_helm_parameter(entry, index) for index, entry in enumerate(
                _list(block.get("parameters"), "spec.source.helm.parameters"))),
            file_parameters=tuple(_helm_file_parameter(entry, index) for index, entry in enumerate(
                _list(block.get("fileParameters"), "spec.source.helm.fileParameters"))),
            skip_crds=_flag(block.get("skipCrds"), "spec.source.helm.skipCrds"),
            skip_schema_validation=_flag(block.get("skipSchemaValidation"), "spec.source.helm.skipSchemaValidation"),
            skip_tests=_flag(block.get("skipTests"), "spec.source.helm.skipTests"),
            kube_version=kube_version,
            api_versions=tuple(_text(v, "spec.source.helm.apiVersions[]") for v in
                               _list(block.get("apiVersions"), "spec.source.helm.apiVersions") if v),
            pass_credentials=_flag(block.get("passCredentials"), "spec.source.helm.passCredentials"),
        )

    def block(self) -> dict[str, Any]:
        """This as Argo CD's `source.helm` block (what status.history records, so a rollback
        renders with the values of then); defaults left out."""
        block: dict[str, Any] = {"releaseName": self.release_name, "namespace": self.namespace}
        if self.value_files:
            block["valueFiles"] = list(self.value_files)
        if self.values:
            block["values"] = self.values
        if self.parameters:
            block["parameters"] = [{"name": p.name, "value": p.value, **({"forceString": True} if p.force_string else {})}
                                   for p in self.parameters]
        if self.file_parameters:
            block["fileParameters"] = [{"name": name, "path": path} for name, path in self.file_parameters]
        if self.kube_version:
            block["kubeVersion"] = self.kube_version
        if self.api_versions:
            block["apiVersions"] = list(self.api_versions)
        for key, value in (("ignoreMissingValueFiles", self.ignore_missing_value_files), ("skipCrds", self.skip_crds),
                           ("skipSchemaValidation", self.skip_schema_validation), ("skipTests", self.skip_tests),
                           ("passCredentials", self.pass_credentials)):
            if value:
                block[key] = True
        return block


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise SpecError(f"{field} must be a string")
    return str(value).strip()


def _list(value: Any, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{field} must be a list")
    return value


def _flag(value: Any, field: str) -> bool:
    """A boolean, or the words true/false (an Application written by hand may quote them)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if str(value).strip().lower() in ("true", "false"):
        return str(value).strip().lower() == "true"
    raise SpecError(f"{field} {value!r} must be true or false")


def _value_file(entry: Any, index: int) -> str:
    field = f"spec.source.helm.valueFiles[{index}]"
    path = _text(entry, field)
    if not path:
        raise SpecError(f"{field} is empty: give a values file's path relative to the chart's folder")
    if "://" in path or path.startswith("$"):
        raise SpecError(f"{field} {path!r}: Gantry reads values files from the app's own source only (no URLs, no "
                        f"$ref of other sources): commit the file next to the chart and name its path")
    if path.startswith("/"):
        raise SpecError(f"{field} {path!r} must be relative to the chart's folder")
    return path


def _helm_values(block: dict[str, Any]) -> str:
    """The inline values as YAML text: valuesObject wins over values, as in Argo CD."""
    given = block.get("valuesObject")
    field = "spec.source.helm.valuesObject"
    if given is None:
        given, field = block.get("values"), "spec.source.helm.values"
    if given is None or given == "":
        return ""
    if isinstance(given, str):
        try:
            parsed = yaml.safe_load(given)
        except yaml.YAMLError as error:
            raise SpecError(f"{field} is not YAML: {' '.join(str(error).split())}") from None
        given = parsed
    if given is None:
        return ""
    if not isinstance(given, dict):
        raise SpecError(f"{field} must be a map of values (YAML such as `replicaCount: 2`)")
    return yaml.safe_dump(given, sort_keys=True)


def _helm_parameter(entry: Any, index: int) -> HelmParameter:
    field = f"spec.source.helm.parameters[{index}]"
    if not isinstance(entry, dict) or not _text(entry.get("name"), f"{field}.name"):
        raise SpecError(f"{field} needs a name (and a value): {{name: image.tag, value: \"1.2\"}}")
    value = entry.get("value")
    if isinstance(value, bool):
        value = "true" if value else "false"
    return HelmParameter(_text(entry.get("name"), f"{field}.name"), "" if value is None else _text(value, f"{field}.value"),
                         _flag(entry.get("forceString"), f"{field}.forceString"))


def _helm_file_parameter(entry: Any, index: int) -> tuple[str, str]:
    field = f"spec.source.helm.fileParameters[{index}]"
    name = _text((entry or {}).get("name") if isinstance(entry, dict) else None, f"{field}.name")
    path = _text((entry or {}).get("path") if isinstance(entry, dict) else None, f"{field}.path")
    if not name or not path:
        raise SpecError(f"{field} needs a name and a path: {{name: config, path: files/config.json}}")
    if "://" in path or path.startswith("/"):
        raise SpecError(f"{field}.path {path!r} must be a file of the app's source, relative to the chart's folder")
    return name, path


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
    # source.chart: the chart of that name from the Helm repository at repo_url, at the version (or
    # the newest of the semver range) target_revision names; path is then the chart's name, its
    # folder in the unpacked chart. "" for a git source.
    chart: str = ""
    # source.helm, defaults filled in; None without a helm block (a folder with a Chart.yaml is
    # still rendered by helm then, with helm_options' defaults).
    helm: HelmSource | None = None
    # Argo CD fields accepted so an Application ports, that Gantry does not act on: said on the
    # Application (a warning condition), never silently dropped.
    unsupported: tuple[str, ...] = ()

    @classmethod
    def parse(cls, name: str, namespace: str, spec: dict[str, Any]) -> "AppSpec":
        """Validate what the CRD schema cannot (server, URL scheme, path) and fill in defaults."""
        source = spec.get("source") or {}
        destination = spec.get("destination") or {}
        chart = _checked_chart(source)
        repo_url = _checked_repo_url(source, chart)
        path = chart or str(source.get("path") or "k8s").strip()
        if path.startswith("/") or ".." in path.split("/"):
            raise SpecError(f"spec.source.path {path!r} must be relative to the repository root and may not use '..'")
        _check_destination(destination)
        destination_namespace = destination.get("namespace") or namespace
        helm = (HelmSource.parse(source.get("helm") or {}, app_name=name, destination_namespace=destination_namespace)
                if source.get("helm") is not None or chart else None)
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
            target_revision=str(source.get("targetRevision") or "HEAD").strip(),
            path=path.strip("/") or ".",
            destination_namespace=destination_namespace,
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
            chart=chart,
            helm=helm,
            unsupported=unsupported,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def source_record(self) -> dict[str, Any]:
        """The source as status.history records it (Argo CD's shape, without credentials): what a
        rollback to that entry syncs again."""
        record: dict[str, Any] = {"repoURL": _without_userinfo(self.repo_url), "path": self.path,
                                  "targetRevision": self.target_revision}
        if self.chart:
            record["chart"] = self.chart
        if self.helm is not None:
            record["helm"] = self.helm.block()
        return record

    @property
    def helm_options(self) -> HelmSource:
        """How a chart at path is rendered: the helm block, or its defaults without one."""
        return self.helm or HelmSource(release_name=self.name, namespace=self.destination_namespace)


def _checked_repo_url(source: dict[str, Any], chart: str = "") -> str:
    """spec.source.repoURL, of a scheme Gantry fetches, from a source it renders (a chart's was
    checked by _checked_chart)."""
    repo_url = str(source.get("repoURL") or "").strip()
    if not repo_url:
        raise SpecError("spec.source.repoURL is required")
    if not chart and repo_url.startswith("file:"):
        # The controller's own disk holds every app's cached clone: another team's private
        # repository would be a path away, read with no credentials at all.
        raise SpecError(
            f"spec.source.repoURL {_without_userinfo(repo_url)!r}: repositories on the controller's filesystem are "
            f"not allowed (other apps' cached clones are there); serve it over https://, ssh:// or git://"
        )
    if not chart and not repo_url.startswith(("https://", "http://", "ssh://", "git://")) \
            and not _is_scp_url(repo_url):
        raise SpecError(
            f"spec.source.repoURL {_without_userinfo(repo_url)!r}: use an https://, http://, ssh:// or git:// URL"
        )
    if source.get("plugin"):
        raise SpecError(
            "spec.source.plugin: Gantry does not run config management plugins; commit the rendered manifests, "
            "or a kustomization or Helm chart that makes them"
        )
    return repo_url


def _checked_chart(source: dict[str, Any]) -> str:
    """spec.source.chart, the name of a chart in the Helm repository repoURL, or "".
    Checked before the URL: a Helm repository's URL is not one of git's."""
    chart = _text(source.get("chart"), "spec.source.chart")
    repo_url = str(source.get("repoURL") or "").strip()
    if not chart or not repo_url:
        return chart
    if repo_url.startswith("oci://"):
        if not _OCI_REPOSITORY.fullmatch(repo_url.removeprefix("oci://")):
            raise SpecError(f"spec.source.repoURL {_without_userinfo(repo_url)!r}: an OCI registry's repository is "
                            f"oci://HOST[:PORT]/PATH, the chart's name in spec.source.chart")
    elif not repo_url.startswith(("https://", "http://")) and not _OCI_REPOSITORY.fullmatch(repo_url):
        raise SpecError(f"spec.source.repoURL {_without_userinfo(repo_url)!r}: a chart comes from a Helm repository, "
                        f"an https:// or http:// URL serving index.yaml, or an OCI registry, oci://HOST/PATH (for a "
                        f"chart in git, drop `chart` and set `path` to its folder)")
    if chart in (".", "..") or not _CHART_NAME.fullmatch(chart):
        raise SpecError(f"spec.source.chart {chart!r} is not a chart name (letters, digits, '.', '_' and '-'; for a "
                        f"chart in git, drop `chart` and set `path` to its folder)")
    return chart


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
    helm = source.get("helm")
    fields += [f"spec.source.helm.{key}" for key in sorted(helm if isinstance(helm, dict) else {})
               if key not in _HELM_FIELDS]
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
