"""The render stage's Helm (source → render → diff): `helm template` of a chart folder as Argo CD runs
it, and the helm commands around it (dependency build for render.py, pull for charts.py).

helm runs as kustomize does (process.py): bounded in time, output and memory, with an environment
of its own (HOME, XDG and HELM_* directories in a temporary folder: no plugins, no kubeconfig, no
repositories but those written for the one command, credentials only in a file of that folder)
and never against the cluster. Nothing here reads the API server or git.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .model import HelmSource, RenderError, SourceError
from .process import Run, limit_hit, run_bounded, with_memory_limit
from .source import RepoCredentials, redact_url

__all__ = ["CHART_FILE", "Capabilities", "ChartRender", "helm_binary", "OciPull", "local_dependencies", "oci_pull_command", "pull",
           "pull_oci", "template", "template_command"]

CHART_FILE = "Chart.yaml"
MiB = 1 << 20
# What helm prints when a repository refused its credentials (or wanted some it did not get: an
# OCI registry asking for basic auth says `basic credential not found`).
_AUTH_FAILED = re.compile(r"\b(401|403)\b|unauthorized|forbidden|authentication required|credential not found", re.I)


def helm_binary(flag: str | None, kustomize: str) -> str | None:
    """--helm (or $GANTRY_HELM), else the helm beside kustomize (the build cache and the image put
    them together), else helm on PATH; None when there is none."""
    if flag:
        return shutil.which(flag)
    beside = Path(kustomize).parent / "helm"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("helm")


@dataclass(frozen=True)
class Capabilities:
    """What the cluster serves, for the chart's .Capabilities: Argo CD passes the cluster's version
    and every group/version and group/version/kind it serves to helm template."""

    kube_version: str = ""
    api_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChartRender:
    """How an app's chart is rendered: its helm settings, the helm binary, the cluster's
    capabilities, and the credentials of the Helm repositories its dependencies come from."""

    options: HelmSource
    binary: str = "helm"
    capabilities: Capabilities = Capabilities()
    # The Application has a helm block or a chart: render with helm even beside a kustomization,
    # and a folder without Chart.yaml is an error rather than plain manifests.
    declared: bool = False
    # repository URL → the credentials of its Secret (type: helm) the app may use, or None
    credentials: Callable[[str], RepoCredentials | None] | None = field(default=None, compare=False)


def template_command(binary: str, chart_dir: Path, options: HelmSource, capabilities: Capabilities,
                     value_files: list[Path], inline_values: Path | None, file_parameters: list[tuple[str, Path]]
                     ) -> list[str]:
    """`helm template` as Argo CD builds it: value files in order, then the inline values (which
    win over them), then --set, --set-string and --set-file (which win over all)."""
    command = [binary, "template", options.release_name, str(chart_dir), "--namespace", options.namespace]
    command.append("--skip-crds" if options.skip_crds else "--include-crds")
    if options.skip_tests:
        command.append("--skip-tests")
    if options.skip_schema_validation:
        command.append("--skip-schema-validation")
    kube_version = options.kube_version or capabilities.kube_version
    if kube_version:
        command += ["--kube-version", kube_version]
    for api_version in options.api_versions or capabilities.api_versions:
        command += ["--api-versions", api_version]
    for file in value_files:
        command += ["--values", str(file)]
    if inline_values is not None:
        command += ["--values", str(inline_values)]
    for parameter in options.parameters:
        command += ["--set-string" if parameter.force_string else "--set",
                    f"{parameter.name}={_escaped(parameter.value)}"]
    for name, path in file_parameters:
        command += ["--set-file", f"{name}={path}"]
    return command


def _escaped(value: str) -> str:
    """A value --set takes as one string, as Argo CD passes it: commas escaped (else they split
    the value into several settings) unless it is a list in braces, `{a,b}`."""
    if value.startswith("{") and value.endswith("}"):
        return value
    return re.sub(r"(?<!\\),", r"\\,", value)


def template(root: Path, chart_dir: Path, chart: ChartRender, *, max_file: int, max_output: int, memory: int,
             timeout: float) -> tuple[str, str]:
    """(helm template's output, the chart's name) for the chart at `chart_dir` inside `root`.
    Raises RenderError naming the file (relative to `root`) and line when helm gives them."""
    name, dependencies = _chart_metadata(root, chart_dir)
    options = chart.options
    value_files = [file for entry in options.value_files
                   if (file := _value_file(root, chart_dir, entry, options.ignore_missing_value_files, max_file))]
    file_parameters = [(name_, _inside_file(root, chart_dir, path, f"spec.source.helm.fileParameters {name_}"))
                       for name_, path in options.file_parameters]
    with tempfile.TemporaryDirectory(prefix="gantry-helm-") as scratch:
        home = _home(Path(scratch))
        base = root  # where chart_dir is: the checkout, or a copy of it with the dependencies built
        if _missing_dependencies(chart_dir, dependencies):
            base, chart_dir = _build_dependencies(root, chart_dir, dependencies, Path(scratch), home, chart,
                                                  memory=memory, timeout=timeout)
        inline = None
        if options.values:
            inline = Path(scratch) / "inline-values.yaml"
            inline.write_text(options.values)
        command = template_command(chart.binary, chart_dir, options, chart.capabilities, value_files, inline,
                                   file_parameters)
        run = run_bounded(with_memory_limit(memory, command), cwd=chart_dir, env=_env(home, memory),
                          timeout=timeout, max_output=max_output)
        _raise_for(run, "helm template", base, chart_dir, name, scratch, timeout=timeout, memory=memory,
                   max_output=max_output)
    return run.stdout.decode("utf-8", "replace"), name


def pull(binary: str, repo_url: str, entry: dict, scratch: Path, *, credentials: RepoCredentials | None,
         pass_credentials: bool, timeout: float) -> Path:
    """The .tgz of the index entry `entry`, pulled by helm from the repository at `repo_url` with
    its credentials (in a repositories.yaml of the one command, never on the command line).
    Raises SourceError (`authentication failed for <repo>` when the repository says so)."""
    home = _home(scratch)
    shown = redact_url(repo_url)
    # An index of this one entry where helm looks for the repository's: helm resolves the URL and
    # the credentials from it, exactly as after `helm repo add` and `helm repo update`.
    index = {"apiVersion": "v1", "entries": {entry["name"]: [entry]}}
    (home / "cache" / "repository" / "chart-source-index.yaml").write_text(yaml.safe_dump(index))
    _write_repositories(home, [("chart-source", repo_url, credentials, pass_credentials)])
    destination = scratch / "pulled"
    destination.mkdir()
    command = [binary, "pull", f"chart-source/{entry['name']}", "--version", str(entry["version"]),
               "--destination", str(destination)]
    try:
        run = run_bounded(command, cwd=scratch, env=_env(home, 256 * MiB), timeout=timeout, max_output=1 * MiB)
    except FileNotFoundError:
        raise SourceError(f"cannot pull {entry['name']} from {shown}: the controller has no helm binary (pass "
                          f"--helm PATH or set GANTRY_HELM)") from None
    stderr = _scrubbed(run.stderr.decode("utf-8", "replace"), str(scratch), credentials)
    if run.timed_out:
        raise SourceError(f"helm pull of {entry['name']} {entry['version']} from {shown} did not finish within "
                          f"{timeout:g}s", transient=True)
    if run.returncode != 0:
        if _AUTH_FAILED.search(stderr):
            raise SourceError(f"authentication failed for {shown}", transient=True)
        raise SourceError(f"helm pull of {entry['name']} {entry['version']} from {shown} failed: "
                          f"{_one_line(stderr)}", transient=True)
    archives = sorted(destination.glob("*.tgz"))
    if not archives:
        raise SourceError(f"helm pull of {entry['name']} {entry['version']} from {shown} gave no chart archive")
    return archives[0]


@dataclass(frozen=True)
class OciPull:
    """`helm pull` of `chart` from the OCI registry repository `repo_url` (oci://HOST/PATH, or
    HOST/PATH as an Argo CD Secret with enableOCI declares it) at `version`: a version, or a
    semver range (helm then lists the tags and picks the newest the range allows)."""

    repo_url: str
    chart: str
    version: str
    plain_http: bool = False  # the repository Secret's insecureOCIForceHttp: "true"
    skip_tls_verify: bool = False  # its insecure: "true"

    @property
    def reference(self) -> str:
        return f"oci://{self.repo_url.strip().removeprefix('oci://').rstrip('/')}/{self.chart}"


def oci_pull_command(binary: str, request: OciPull, destination: Path) -> list[str]:
    """The command line, without credentials: those go to the registry config of the command's
    folder (a command line is readable by every process of the machine)."""
    command = [binary, "pull", request.reference, "--version", request.version, "--destination", str(destination)]
    if request.plain_http:
        command.append("--plain-http")
    if request.skip_tls_verify:
        command.append("--insecure-skip-tls-verify")
    return command


def pull_oci(binary: str, request: OciPull, scratch: Path, *, credentials: RepoCredentials | None,
             timeout: float) -> Path:
    """The .tgz helm pulled from the registry. Raises SourceError: `authentication failed for
    <repo>` when the registry says so, `chart … version … not found` when no tag is that version
    or matches that range."""
    home = _home(scratch)
    chart, shown = request.chart, redact_url(request.repo_url)
    _write_registry_config(home, request.reference, credentials)
    destination = scratch / "pulled"
    destination.mkdir()
    try:
        run = run_bounded(oci_pull_command(binary, request, destination), cwd=scratch, env=_env(home, 256 * MiB),
                          timeout=timeout, max_output=1 * MiB)
    except FileNotFoundError:
        raise SourceError(f"cannot pull {chart} from {shown}: the controller has no helm binary (pass --helm PATH "
                          f"or set GANTRY_HELM)") from None
    stderr = _scrubbed(run.stderr.decode("utf-8", "replace"), str(scratch), credentials)
    if run.timed_out:
        raise SourceError(f"helm pull of {chart} {request.version} from {shown} did not finish within {timeout:g}s",
                          transient=True)
    if run.returncode != 0:
        if _AUTH_FAILED.search(stderr):
            raise SourceError(f"authentication failed for {shown}", transient=True)
        if _OCI_NOT_FOUND.search(stderr):
            raise SourceError(f"chart {chart} version {request.version!r} not found in {shown}")
        if "server gave HTTP response to HTTPS client" in stderr:
            raise SourceError(f"{shown} answers plain HTTP: set insecureOCIForceHttp: \"true\" in its repository "
                              f"Secret (type: helm) to pull over HTTP", transient=True)
        raise SourceError(f"helm pull of {chart} {request.version} from {shown} failed: {_one_line(stderr)}",
                          transient=True)
    archives = sorted(destination.glob("*.tgz"))
    if not archives:
        raise SourceError(f"helm pull of {chart} {request.version} from {shown} gave no chart archive")
    return archives[0]


# A tag that is not there (`…/shop:2.0.0: not found`), a range no tag matches, a repository the
# registry does not know (`name unknown`, or a tag list of none).
_OCI_NOT_FOUND = re.compile(r": not found\b|could not locate a version matching|name unknown|"
                            r"unable to locate any tags", re.I)


def _write_registry_config(home: Path, reference: str, credentials: RepoCredentials | None) -> None:
    """The registry config (Docker's config.json format, which helm reads for OCI registries) with
    the one registry's credentials, readable by the controller's user only; none without them."""
    auths = {}
    if credentials is not None and credentials.username and credentials.password:
        host = reference.removeprefix("oci://").split("/", 1)[0]
        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        auths[host] = {"auth": token}
    descriptor = os.open(home / "config" / "registry.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({"auths": auths}, file)


# ---------------------------------------------------------------------------------------------
# The chart's files


def _chart_metadata(root: Path, chart_dir: Path) -> tuple[str, list[dict]]:
    """The chart's name and its dependencies (Chart.yaml's, or requirements.yaml's for apiVersion v1)."""
    where = _relative(root, chart_dir / CHART_FILE)
    try:
        metadata = yaml.safe_load((chart_dir / CHART_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise RenderError(f"cannot read the chart's metadata: {error}", path=where) from None
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        raise RenderError(f"invalid YAML: {getattr(error, 'problem', None) or error}", path=where,
                          line=line + 1 if line is not None else None) from None
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise RenderError("a chart's Chart.yaml needs at least apiVersion, name and version", path=where)
    dependencies = metadata.get("dependencies")
    requirements = chart_dir / "requirements.yaml"
    if dependencies is None and metadata.get("apiVersion") == "v1" and requirements.is_file():
        try:
            dependencies = (yaml.safe_load(requirements.read_text(encoding="utf-8")) or {}).get("dependencies")
        except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError):
            dependencies = None  # helm says what is wrong with it
    return str(metadata["name"]), [d for d in dependencies or () if isinstance(d, dict) and d.get("name")]


def local_dependencies(root: Path, chart_dir: Path) -> list[Path]:
    """The folders of the chart's file:// dependencies (render checks them as it checks the chart)."""
    _, dependencies = _chart_metadata(root, chart_dir)
    return [(chart_dir / str(d["repository"]).removeprefix("file://")).resolve() for d in dependencies
            if str(d.get("repository") or "").startswith("file://")]


def _value_file(root: Path, chart_dir: Path, entry: str, ignore_missing: bool, max_file: int) -> Path | None:
    """The values file `entry` (relative to the chart's folder) inside the repository; None for a
    missing one that may be skipped."""
    file = (chart_dir / entry).resolve()
    where = _relative(root, chart_dir / entry)
    if not file.is_relative_to(root):
        raise RenderError(f"spec.source.helm.valueFiles {entry!r} leads outside the repository: values files "
                          f"must be files of the app's source")
    if not file.is_file():
        if ignore_missing:
            return None
        raise RenderError(f"values file {where} (spec.source.helm.valueFiles {entry!r}) does not exist at this "
                          f"revision: add it, fix the path (relative to the chart's folder), or set "
                          f"ignoreMissingValueFiles: true", path=where)
    if file.stat().st_size > max_file:
        raise RenderError(f"is over the {max_file // MiB} MiB limit for one file the controller renders", path=where)
    return file


def _inside_file(root: Path, chart_dir: Path, entry: str, field_name: str) -> Path:
    file = (chart_dir / entry).resolve()
    if not file.is_relative_to(root):
        raise RenderError(f"{field_name}: {entry!r} leads outside the repository")
    if not file.is_file():
        raise RenderError(f"{field_name}: {_relative(root, chart_dir / entry)} does not exist at this revision")
    return file


def _missing_dependencies(chart_dir: Path, dependencies: list[dict]) -> list[dict]:
    """The dependencies not vendored in charts/ (as a folder or a .tgz), which helm would refuse."""
    charts = chart_dir / "charts"
    present = set()
    if charts.is_dir():
        for entry in charts.iterdir():
            if entry.is_dir() and (entry / CHART_FILE).is_file():
                present.add(entry.name)
            elif entry.name.endswith(".tgz"):
                present.add(entry.name[:-4].rsplit("-", 1)[0])
                present.add(re.sub(r"-v?\d+\.\d+\.\d+.*$", "", entry.name[:-4]))
    return [d for d in dependencies if str(d["name"]) not in present]


# ---------------------------------------------------------------------------------------------
# Dependencies


def _build_dependencies(root: Path, chart_dir: Path, dependencies: list[dict], scratch: Path, home: Path,
                        chart: ChartRender, *, memory: int, timeout: float) -> tuple[Path, Path]:
    """`helm dependency build` in a copy of the source (the checkout is shared and read-only): the
    dependencies from Chart.lock (or Chart.yaml's ranges) fetched from their repositories, each
    with the credentials of its own repository Secret only. Returns the copy and its chart folder."""
    where = _relative(root, chart_dir / CHART_FILE)
    repositories: dict[str, str] = {}
    for dependency in dependencies:
        repository = str(dependency.get("repository") or "").strip()
        if not repository:
            continue  # vendored by hand: helm says it is missing
        if repository.startswith("file://"):
            target = (chart_dir / repository.removeprefix("file://")).resolve()
            if not target.is_relative_to(root):
                raise RenderError(f"dependency {dependency['name']}: {repository} leads outside the repository: a "
                                  f"chart may only use charts of the same source", path=where)
        elif repository.startswith(("http://", "https://")):
            repositories.setdefault(repository.rstrip("/"), f"dependency-{len(repositories)}")
        else:
            raise RenderError(f"dependency {dependency['name']}: repository {redact_url(repository)!r} is not "
                              f"supported: give the URL of a Helm repository (https://…), a file://../path of this "
                              f"source, or vendor the chart in charts/", path=where)
    copy = scratch / "source"
    shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    copied = copy / chart_dir.relative_to(root)
    credentials = chart.credentials or (lambda url: None)
    _write_repositories(home, [(name, url, credentials(url), chart.options.pass_credentials)
                               for url, name in repositories.items()])
    command = [chart.binary, "dependency", "build", str(copied), "--skip-refresh"] if not repositories else \
        [chart.binary, "dependency", "build", str(copied)]
    run = run_bounded(with_memory_limit(memory, command), cwd=copied, env=_env(home, memory), timeout=timeout,
                      max_output=1 * MiB)
    stderr = run.stderr.decode("utf-8", "replace") + "\n" + run.stdout.decode("utf-8", "replace")
    if run.returncode != 0 or "Unable to get an update" in stderr:
        failed = next((url for url in repositories if url in stderr), None)
        if _AUTH_FAILED.search(stderr) and failed is not None:
            raise RenderError(f"authentication failed for {redact_url(failed)} (a dependency's Helm repository)",
                              path=where)
        if run.returncode != 0:
            _raise_for(run, "helm dependency build", copy, copied, "", str(scratch), timeout=timeout, memory=memory,
                       max_output=1 * MiB)
    return copy, copied


def _write_repositories(home: Path, entries: list[tuple[str, str, RepoCredentials | None, bool]]) -> None:
    """repositories.yaml with these (name, URL, credentials, pass credentials) entries, readable
    by the controller's user only, gone with the command's folder."""
    repositories = []
    for name, url, credentials, pass_credentials in entries:
        entry = {"name": name, "url": url, "pass_credentials_all": pass_credentials}
        if credentials is not None and credentials.username and credentials.password:
            entry.update(username=credentials.username, password=credentials.password)
        repositories.append(entry)
    path = home / "config" / "repositories.yaml"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        yaml.safe_dump({"apiVersion": "", "generated": "0001-01-01T00:00:00Z", "repositories": repositories}, file)


# ---------------------------------------------------------------------------------------------
# helm's environment and errors


def _home(scratch: Path) -> Path:
    home = scratch / "helm-home"
    for sub in ("cache/repository", "config", "data/plugins", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


def _env(home: Path, memory: int) -> dict[str, str]:
    """Not the controller's environment (it may hold tokens, a kubeconfig, HELM_* settings)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "HELM_PLUGINS": str(home / "data" / "plugins"),  # empty: no plugin, no plugin getter
        "HELM_REPOSITORY_CONFIG": str(home / "config" / "repositories.yaml"),
        "HELM_REPOSITORY_CACHE": str(home / "cache" / "repository"),
        "HELM_REGISTRY_CONFIG": str(home / "config" / "registry.json"),
        "HELM_CONTENT_CACHE": str(home / "cache" / "content"),
        # helm falls back to Docker's credentials for a registry: those of the folder, none.
        "DOCKER_CONFIG": str(home / "config" / "docker"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
        "GOMEMLIMIT": str(memory * 3 // 4),
    }


# `shop/templates/x.yaml:12:20 executing …` (helm 4), `template: shop/templates/x.yaml:12:20: …`,
# `parse error at (shop/templates/x.yaml:5): …`,
# `execution error at (shop/templates/x.yaml:3:4): …`, `YAML parse error on shop/templates/x.yaml: …`
_TEMPLATE_AT = re.compile(r"(?:^|template: |\(|error on |in \")([\w.-]+/[^\s:()\"]+?)(?::(\d+))?(?::\d+)?(?=[):\"\s]|$)")


def _raise_for(run: Run, what: str, base: Path, chart_dir: Path, chart_name: str, scratch: str, *, timeout: float,
               memory: int, max_output: int) -> None:
    """The RenderError for a failed helm run (nothing when it succeeded). `base` is the root of the
    source chart_dir is in (the checkout or its copy): files are named relative to it."""
    where = _relative(base, chart_dir / CHART_FILE)
    if hit := limit_hit(run, what, timeout=timeout, max_output=f"{max_output // MiB} MiB",
                        memory=f"{memory // MiB} MiB (--kustomize-memory-limit bounds helm too)"):
        raise RenderError(hit, path=where)
    stderr = run.stderr.decode("utf-8", "replace")
    if run.returncode == 0:
        return
    if run.returncode == 127 and "not found" in stderr:  # the shell that sets the memory limit says so
        raise RenderError(f"{what}: the controller has no helm binary (pass --helm PATH or set GANTRY_HELM)",
                          path=where)
    text = _scrubbed(stderr.replace(str(base) + "/", ""), scratch, None)
    message = _helm_message(text) or f"exit status {run.returncode}"
    match = _TEMPLATE_AT.search(message)
    if match and chart_name and match[1].split("/", 1)[0] == chart_name:
        chart_rel = _relative(base, chart_dir)
        template_path = match[1].split("/", 1)[1]
        path = template_path if chart_rel == "." else f"{chart_rel}/{template_path}"
        raise RenderError(f"{what} failed: {message}", path=path, line=int(match[2]) if match[2] else None)
    raise RenderError(f"{what} failed: {message}", path=where)


def _scrubbed(text: str, scratch: str, credentials: RepoCredentials | None) -> str:
    """helm's words without the temporary folder's name or a credential (helm prints neither as
    far as we know: this makes sure)."""
    text = text.replace(scratch + "/", "").replace(scratch, "")
    for secret in (credentials.password, credentials.username) if credentials else ():
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return redact_url(text)


def _helm_message(text: str) -> str:
    """helm's error as one line: its `Error:` line and the indented lines that go on with it
    (helm 4 breaks a template error over several), else its last line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Error:")), None)
    if start is None:
        kept = [line for line in lines if line.strip()][-1:]
    else:
        kept = [lines[start].removeprefix("Error:")]
        for line in lines[start + 1:]:
            if not line.strip() or not line[:1].isspace():
                break
            kept.append(line)
    return " ".join(" ".join(kept).split())[:2000]


def _one_line(text: str) -> str:
    return _helm_message(text)[:500]


def _relative(root: Path, path: Path) -> str:
    return os.path.relpath(os.path.abspath(path), root)
