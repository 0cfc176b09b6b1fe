"""Second stage of the flow (source → render → diff): a checked-out tree becomes the objects git asks for.

`kustomize build` where there is a kustomization, else the plain YAML/JSON files; no API server, no git.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from controller import helm as helm_stage
from controller.helm import CHART_FILE, ChartRender
from controller.model import KustomizeOverrides, Manifest, ObjectRef, RenderError
from controller.process import limit_hit, run_bounded, with_memory_limit

__all__ = ["KUSTOMIZATION_FILES", "RenderLimits", "load_yaml", "render"]

# The names kustomize looks for, in its order.
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Kustomization fields whose entries may be directories kustomize builds as roots of their own, or
# remote bases: its load restrictor confines neither, so render checks where they lead.
_ROOT_FIELDS = ("resources", "bases", "components", "generators", "transformers", "validators")
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MiB = 1 << 20
# A YAML document's aliases may make it at most this many nodes, or twice its own, whichever is
# more: real manifests use a few (`<<: *defaults`); a "billion laughs" nests them to explode.
ALIAS_NODES = 100_000


@dataclass(frozen=True)
class RenderLimits:
    """What one render may cost: a commit must not be able to take the controller (and so every
    other app) down. Sizes in bytes."""

    file_bytes: int = 8 * MiB  # one file of the repo that the render reads
    total_bytes: int = 16 * MiB  # all manifests read from a plain directory, or kustomize's output
    kustomize_memory: int = 256 * MiB  # kustomize's data segment (RLIMIT_DATA)
    remote_bases: bool = True  # kustomize may fetch remote bases over the network (as in Argo CD)


def render(checkout: Path, path: str, *, kustomize: str | Path = "kustomize", timeout: float = 120.0,
           recurse: bool = False, overrides: KustomizeOverrides | None = None,
           limits: RenderLimits = RenderLimits(), chart: ChartRender | None = None) -> list[Manifest]:
    """The objects at `path` (relative to the repo root) in the checked-out tree `checkout`.

    A directory with a kustomization is built with `kustomize build` (default load restrictor);
    with `chart` given, a directory with a Chart.yaml and no kustomization (or any, when the app
    declares a Helm source) is rendered with `helm template` (helm.py); any other directory gives
    every *.yaml, *.yml and *.json file directly in it, by name, and with `recurse` (Argo CD's
    source.directory.recurse) those of its subdirectories too, as Argo CD tells them apart.
    `overrides` (Argo CD's source.kustomize) are laid over a kustomization, from a kustomization of
    their own outside the checkout. `limits` bound what the render may read, hold and spend. Every
    error is a RenderError naming the file relative to the repository root, and the line if known.
    """
    root = Path(checkout).resolve()
    directory = _directory(root, path)
    kustomization = _kustomization_file(directory)
    if chart is not None and (chart.declared or kustomization is None) and (directory / CHART_FILE).is_file():
        if overrides:
            raise RenderError(f"path {path!r} is a Helm chart, so spec.source.kustomize cannot apply: use "
                              f"spec.source.helm (values, parameters) instead")
        objects = _helm_template(root, directory, chart, timeout, limits)
    elif chart is not None and chart.declared:
        raise RenderError(f"path {path!r} has no {CHART_FILE}, so spec.source.helm cannot apply: point path at the "
                          f"chart's folder, or remove the helm block from the Application")
    elif kustomization is not None:
        objects = _kustomize_build(root, directory, kustomization, Path(kustomize), timeout, overrides, limits)
    elif overrides:
        raise RenderError(f"path {path!r} has no kustomization.yaml, so spec.source.kustomize cannot apply: add one "
                          f"that lists the manifests, or remove the kustomize block from the Application")
    else:
        objects = _read_directory(root, directory, _Budget(limits), recurse=recurse)
    _check(objects)
    return [located.manifest for located in objects]


def load_yaml(text: str, path: str) -> list[Any]:
    """Every non-empty document of a YAML stream, parsed as Kubernetes tools do; `path` names the
    file in errors. Timestamps stay strings and a key given twice in one mapping is an error."""
    return [document for document, _, _ in _documents(text, path)]


# ---------------------------------------------------------------------------------------------
# Where to read


@dataclass(frozen=True)
class _Located:
    """An object and where it came from, for errors."""

    manifest: Any
    path: str
    line: int | None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


def _directory(root: Path, path: str) -> Path:
    text = (path or ".").strip() or "."
    if text.startswith("/") or ".." in PurePosixPath(text).parts:
        raise RenderError(f"path {path!r} must be relative to the repository root and may not use '..'")
    target = root / text
    resolved = target.resolve()
    if not resolved.is_relative_to(root):
        raise RenderError(f"path {path!r} is a symlink that leads outside the repository")
    if not resolved.exists():
        raise RenderError(f"path {path!r} does not exist in the repository at this revision")
    if not resolved.is_dir():
        raise RenderError(
            f"path {path!r} is a file, not a directory: point path at the directory holding the manifests"
        )
    return resolved


def _kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _relative(root: Path, path: Path | str) -> str:
    """`path` relative to the repository root, as a user writes it (never the checkout's location)."""
    return posixpath.relpath(os.path.abspath(path), root) if os.path.isabs(path) else str(path)


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _check_symlinks(root: Path, directory: Path) -> None:
    """Every symlink under `directory` must resolve inside the repository (as Argo CD requires)."""
    for current, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            entry = Path(current) / name
            if entry.is_symlink() and not _inside(root, entry):
                raise RenderError("is a symlink that leads outside the repository", path=_relative(root, entry))


# ---------------------------------------------------------------------------------------------
# Plain directories


class _Budget:
    """The bytes a render has left to read; a file over the one-file limit is refused before it is
    read, so what a commit holds never decides how much memory the controller takes."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.read = 0

    def read_text(self, file: Path, where: str) -> str:
        size = file.stat().st_size
        if size > self.limits.file_bytes:
            raise RenderError(f"is {_size(size)}, over the {_size(self.limits.file_bytes)} limit for one file the "
                              f"controller renders: split it into smaller files", path=where)
        self.read += size
        if self.read > self.limits.total_bytes:
            raise RenderError(f"the manifests read up to this file are {_size(self.read)}, over the "
                              f"{_size(self.limits.total_bytes)} limit for one app's manifests: split the app",
                              path=where)
        try:
            return file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise RenderError(f"is not UTF-8 text ({error.reason} at byte {error.start})", path=where) from None


def _size(size: int) -> str:
    return f"{size / MiB:.1f} MiB".replace(".0 MiB", " MiB")


def _read_directory(root: Path, directory: Path, budget: _Budget, *, recurse: bool = False) -> list[_Located]:
    objects: list[_Located] = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if recurse and entry.is_dir():
            if entry.is_symlink() and not _inside(root, entry):
                raise RenderError("is a symlink that leads outside the repository", path=_relative(root, entry))
            if not entry.is_symlink():  # a link to a folder inside the repo would read it twice
                objects.extend(_read_directory(root, entry, budget, recurse=True))
            continue
        if not entry.name.endswith(MANIFEST_SUFFIXES):
            continue
        where = _relative(root, entry)
        if entry.is_symlink():
            if not _inside(root, entry):
                raise RenderError("is a symlink that leads outside the repository", path=where)
            if not entry.exists():
                raise RenderError("is a symlink to a file that does not exist", path=where)
        if not entry.is_file():
            continue
        text = budget.read_text(entry, where)
        if entry.name.endswith(".json"):
            objects.extend(_json_objects(text, where))
        else:
            objects.extend(_yaml_objects(text, where))
    return objects


def _json_objects(text: str, where: str) -> list[_Located]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RenderError(f"invalid JSON: {error.msg}", path=where, line=error.lineno) from None
    except RecursionError:
        raise RenderError("JSON nested too deeply to read", path=where) from None
    documents = data if isinstance(data, list) else [data]
    return [item for document in documents for item in _expand(document, where, None, [])]


def _yaml_objects(text: str, where: str) -> list[_Located]:
    objects: list[_Located] = []
    for document, line, item_lines in _documents(text, where):
        objects.extend(_expand(document, where, line, item_lines))
    return objects


def _expand(document: Any, where: str, line: int | None, item_lines: list[int]) -> list[_Located]:
    """A `kind: List` (or any `*List`) document becomes its items, as kubectl reads it."""
    items = document.get("items") if isinstance(document, dict) else None
    if isinstance(items, list) and str(document.get("kind", "")).endswith("List"):
        lines = item_lines if len(item_lines) == len(items) else [line] * len(items)
        return [_Located(item, where, item_line) for item, item_line in zip(items, lines)]
    return [_Located(document, where, line)]


# ---------------------------------------------------------------------------------------------
# YAML, parsed once, one way


class _Loader(_BASE_LOADER):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader (libyaml when present: its messages are kustomize's, which is a port of
    it) made to agree with the Go YAML that kubectl and the API server use."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeConstructor reports it below
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"mapping key {key!r} already defined at line {first.start_mark.line + 1}",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# `date: 2024-01-01` is the string "2024-01-01" to Kubernetes, not a date.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BASE_LOADER.yaml_implicit_resolvers.items()
}

# Scanner errors whose context marks where the mistake is (the key missing its colon, the quote
# never closed); for all others the problem mark is the line to look at.
_CONTEXT_IS_THE_PLACE = ("while scanning a simple key", "while scanning a quoted scalar")


def _documents(text: str, where: str) -> list[tuple[Any, int, list[int]]]:
    """Each non-empty document with the line it starts at and those of its `items` (for a List).
    A document's nodes are dropped once it is built: kept, they cost several times the objects."""
    if "*" in text:  # no alias without one
        _check_aliases(text, where)
    loader = _Loader(text)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            document = loader.construct_document(node)
            if document is not None:
                documents.append((document, node.start_mark.line + 1, _item_lines(node)))
    except yaml.MarkedYAMLError as error:
        raise _yaml_error(error, where) from None
    except yaml.YAMLError as error:
        raise RenderError(f"invalid YAML: {error}", path=where) from None
    finally:
        loader.dispose()
    return documents


def _check_aliases(text: str, where: str) -> None:
    """Refuse a document whose aliases expand it out of proportion (see ALIAS_NODES), before any
    of it is built. PyYAML builds an alias as a second reference to one object, so the expansion
    costs nothing until something walks it: a copy, a diff, the JSON of an apply. Counted from
    the parser's events, so the check holds no tree; an error in the YAML is left to the loader,
    which says it better."""
    anchored: dict[str, int] = {}  # anchor → nodes its value expands to
    open_nodes: list[list] = []  # per collection being read: [nodes so far, its anchor]
    own = expanded = 0  # nodes of the current document: as written, and with aliases expanded
    start: int | None = None  # the line of its first node

    def close(nodes: int, anchor: str | None) -> None:
        nonlocal expanded
        if anchor:
            anchored[anchor] = nodes
        if open_nodes:
            open_nodes[-1][0] += nodes
        else:
            expanded += nodes

    try:
        for event in yaml.parse(text, Loader=_BASE_LOADER):
            if isinstance(event, yaml.NodeEvent) and start is None:
                start = event.start_mark.line + 1
            if isinstance(event, yaml.ScalarEvent):
                own += 1
                close(1, event.anchor)
            elif isinstance(event, yaml.AliasEvent):
                close(anchored.get(event.anchor, 1), None)
            elif isinstance(event, yaml.CollectionStartEvent):
                own += 1
                open_nodes.append([1, event.anchor])
            elif isinstance(event, yaml.CollectionEndEvent):
                close(*open_nodes.pop())
            elif isinstance(event, yaml.DocumentStartEvent):
                start = None
            elif isinstance(event, yaml.DocumentEndEvent):
                limit = max(ALIAS_NODES, 2 * own)
                if expanded > limit:
                    raise RenderError(
                        f"YAML aliases expand the document that starts here to {expanded:,} nodes from the {own:,} "
                        f"written (the limit is {limit:,}, against \"billion laughs\" files): write the repeated "
                        f"parts out instead of aliasing them", path=where, line=start)
                anchored.clear()  # anchors do not cross documents
                own = expanded = 0
    except yaml.YAMLError:
        return


def _item_lines(node: yaml.Node) -> list[int]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "items" and isinstance(value, yaml.SequenceNode):
                return [item.start_mark.line + 1 for item in value.value]
    return []


def _yaml_error(error: yaml.MarkedYAMLError, where: str) -> RenderError:
    problem = error.problem or error.context or "invalid YAML"
    context_line = error.context_mark.line + 1 if error.context_mark else None
    problem_line = error.problem_mark.line + 1 if error.problem_mark else context_line
    if context_line and error.context in _CONTEXT_IS_THE_PLACE:
        return RenderError(problem, path=where, line=context_line)
    message = problem
    if error.context and context_line and context_line != problem_line:
        message = f"{problem} ({error.context} that starts at line {context_line})"
    return RenderError(message, path=where, line=problem_line)


# ---------------------------------------------------------------------------------------------
# Kustomize


def _kustomize_build(root: Path, directory: Path, kustomization: Path, binary: Path, timeout: float,
                     overrides: KustomizeOverrides | None, limits: RenderLimits) -> list[_Located]:
    _check_kustomization_tree(root, directory, limits)
    where = _relative(root, kustomization)
    with tempfile.TemporaryDirectory(prefix="gantry-kustomize-") as scratch:
        target = directory
        if overrides:
            # The checkout is shared and read-only to us: the overrides go in a kustomization of
            # their own that takes the app's directory as its one resource.
            target = Path(scratch) / "overrides"
            target.mkdir()
            # kustomize takes a new root only by a relative path.
            resource = os.path.relpath(directory, target.resolve())
            (target / "kustomization.yaml").write_text(yaml.safe_dump(overrides.kustomization(resource)))
        home = Path(scratch) / "home"
        home.mkdir()
        run = run_bounded(with_memory_limit(limits.kustomize_memory, [str(binary), "build", str(target)]),
                           cwd=target, env=_kustomize_env(home, limits), timeout=timeout,
                           max_output=limits.total_bytes)
    if hit := limit_hit(run, "kustomize build", timeout=timeout, max_output=_size(limits.total_bytes),
                        memory=f"{_size(limits.kustomize_memory)} (--kustomize-memory-limit); a very large input "
                               f"or YAML aliases nested deep is the usual cause"):
        raise RenderError(hit, path=where)
    stderr = run.stderr.decode("utf-8", "replace")
    if run.returncode != 0:
        raise _KustomizeError(root, directory, stderr).mapped()
    # Lines in kustomize's output are not lines of any file in the repo: name the kustomization only.
    return [_Located(item.manifest, where, None) for item in _yaml_objects(run.stdout.decode("utf-8", "replace"), where)]


def _kustomize_env(home: Path, limits: RenderLimits) -> dict[str, str]:
    """kustomize's environment: not the controller's (which may hold tokens), and a git for remote
    bases that can reach nothing the controller holds: no config, credential helper, askpass,
    SSH key or agent, and no local transport (a file:// submodule of a remote base included)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home),  # kustomize clones remote bases there: gone with the render
        "GOMEMLIMIT": str(limits.kustomize_memory * 3 // 4),  # collect hard before the hard limit
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_ALLOW_PROTOCOL": "https:http:ssh:git",
        "GIT_SSH_COMMAND": "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null "
                           "-o IdentityAgent=none",
    }


def _check_kustomization_tree(root: Path, directory: Path, limits: RenderLimits) -> None:
    """What kustomize would read must stay in the repository and within the limits: no symlink
    out; no resources/bases/components/generators/transformers/validators entry naming a directory
    outside it, a path on the controller's filesystem, or (with remote bases off) a remote base;
    no file it names over the one-file limit or with aliases out of proportion."""
    pending, seen = [directory], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        _check_symlinks(root, current)
        kustomization = _kustomization_file(current)
        if kustomization is None:
            continue
        where = _relative(root, kustomization)
        text = _Budget(limits).read_text(kustomization, where)
        # Its aliases too: the walk below would expand them (a 1 KB file, half an hour of CPU).
        _check_aliases(text, where)
        try:
            data = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            continue  # kustomize reports it, with its own words
        if not isinstance(data, dict):
            continue
        for field in _ROOT_FIELDS:
            entries = data.get(field)
            for entry in entries if isinstance(entries, list) else ():
                if not isinstance(entry, str) or "\n" in entry:
                    continue  # an inline generator or transformer configuration
                refusal = _entry_refusal(root, current, field, entry, limits)
                if refusal:
                    raise RenderError(refusal, path=where,
                                      line=_line_matching(kustomization, _entry_pattern(entry)))
                if (current / entry).is_dir():
                    pending.append((current / entry).resolve())
        for file in sorted(_named_files(root, current, data)):
            text = _Budget(limits).read_text(file, _relative(root, file))
            if "*" in text:
                _check_aliases(text, _relative(root, file))


# kustomize takes an entry it cannot find on disk for a remote base: a URL (git::, a scheme, or
# git@host:) or a host name with a path, as in github.com/org/repo//dir?ref=v1.
_REMOTE = re.compile(r"^(?:git::|[a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:|[\w-]+(?:\.[\w-]+)+/)", re.I)
_CONTROLLER_FILESYSTEM = "kustomize remote bases on the controller's filesystem are not allowed"


def _entry_refusal(root: Path, current: Path, field: str, entry: str, limits: RenderLimits) -> str | None:
    """Why kustomize may not follow `entry` of `field` in the kustomization in `current`, or None."""
    text = entry.strip()
    lowered = text.lower()
    if (text.startswith("/") or lowered.startswith("file:")
            or (lowered.startswith("git::") and not re.match(r"git::(?:https?://|ssh://|git@)", lowered))):
        # Another app's cached clone is a file:// URL or a path away, and reading it needs none of
        # that app's credentials.
        return (f"{field} entry {entry!r}: {_CONTROLLER_FILESYSTEM}; use a path relative to the kustomization, "
                f"inside this repository, or a remote base over https or ssh")
    if os.path.lexists(current / text):
        if not _inside(root, current / text):
            return (f"{field} entry {entry!r} leads outside the repository: a kustomization may only use files and "
                    f"directories of the same repository")
        return None
    if _REMOTE.match(text) and not limits.remote_bases:
        return (f"{field} entry {entry!r} is a remote base, and this controller fetches none (it runs with "
                f"--no-remote-bases): copy the base into this repository")
    return None  # missing: kustomize says so


def _entry_pattern(entry: str) -> str:
    return rf"^\s*-\s*['\"]?{re.escape(entry)}['\"]?\s*(#.*)?$"


def _named_files(root: Path, current: Path, data: Any) -> set[Path]:
    """Every file inside the repository that a string of the kustomization `data` names (relative
    to its directory `current`): whatever field it is in, kustomize may read it."""
    found: set[Path] = set()
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and "\n" not in value and 0 < len(value) < 4096:
            for candidate in {value, value.partition("=")[2]} - {""}:  # generator files: key=path
                path = current / candidate
                try:
                    if path.is_file() and _inside(root, path):
                        found.add(path.resolve())
                except (OSError, ValueError):
                    continue
    return found


class _KustomizeError:
    """Turns what `kustomize build` printed on failure into a RenderError naming the repo file.

    kustomize nests its reasons (`accumulating resources from 'x': recursed accumulation of path
    '/abs/base': …`); the innermost absolute directory it names is the kustomization at fault, and
    file names after it are relative to that directory.
    """

    _ROOT_CHANGES = re.compile(r"(?:recursed accumulation of path|couldn't make target for path) '([^']+)'")
    _MALFORMED = re.compile(r"MalformedYAMLError: yaml: line (\d+): (.+?) in File: (\S+)")
    _INVALID = re.compile(r"invalid Kustomization: (.+)", re.S)
    _YAML_LINE = re.compile(r"yaml: line (\d+): (.+)", re.S)
    _UNKNOWN_FIELD = re.compile(r'json: unknown field "([^"]+)"')
    _WRONG_TYPE = re.compile(r"Go struct field Kustomization\.(\w+)")
    _MISSING = re.compile(r"evalsymlink failure on '([^']+)' : lstat [^:]+: no such file or directory")
    _OUTSIDE = re.compile(r"security; file '([^']+)' is not in or below '([^']+)'")
    _FROM = re.compile(r"accumulating resources from '([^']+)': ")
    _EMPTY = re.compile(r"(\S+) is empty")
    _DUPLICATE = re.compile(r"may not add resource with an already registered id: (\S+?)'?(?::|$)")
    _NO_NAME = re.compile(r"accumulating resources from '([^']+)': missing metadata\.name")

    def __init__(self, root: Path, directory: Path, stderr: str) -> None:
        self.root = root
        self.text = re.sub(r"^Error:\s*", "", stderr.strip())
        self.directory = directory
        for match in self._ROOT_CHANGES.finditer(self.text):
            candidate = Path(match[1])
            if candidate.is_dir() and candidate.resolve().is_relative_to(root):
                self.directory = candidate.resolve()

    def rel(self, path: Path | str) -> str:
        return _relative(self.root, path)

    @property
    def kustomization(self) -> str:
        found = _kustomization_file(self.directory)
        return self.rel(found if found else self.directory / KUSTOMIZATION_FILES[0])

    def relativized(self, text: str) -> str:
        root = str(self.root)
        return re.sub(re.escape(root) + r"(/|\b)", lambda m: "" if m[1] == "/" else ".", text).strip()

    def mapped(self) -> RenderError:
        text = self.text
        if match := self._MALFORMED.search(text):
            file = self.directory / match[3]
            return self._reparse(file) or RenderError(match[2], path=self.rel(file), line=int(match[1]))
        if match := self._INVALID.search(text):
            return self._invalid_kustomization(match[1].strip())
        if match := self._MISSING.search(text):
            return self._missing(match[1])
        if match := self._OUTSIDE.search(text):
            return RenderError(
                f"{self.rel(match[1])} is not in or below {self.rel(match[2]) or '.'}: kustomize loads files only "
                f"from the kustomization's own directory and below (refer to a directory with its own "
                f"kustomization instead)",
                path=self.kustomization,
            )
        if match := self._NO_NAME.search(text):
            file = self.directory / match[1]
            generated = file.is_file() and _inside(self.root, file) and "generateName" in file.read_text(errors="replace")
            return RenderError(
                "object has no metadata.name; every object needs apiVersion, kind and metadata.name" + (
                    " (kustomize refuses metadata.generateName: name the hook and give it "
                    "argocd.argoproj.io/hook-delete-policy: BeforeHookCreation instead)" if generated else ""),
                path=self.rel(file),
            )
        if match := self._DUPLICATE.search(text):
            return RenderError(
                f"two resources have the same id {match[1]} (kind, name and namespace): remove one of them",
                path=self.kustomization,
            )
        if (match := self._EMPTY.search(text)) and match[1] in KUSTOMIZATION_FILES:
            return RenderError(
                "the kustomization is empty: list the manifests under `resources:`", path=self.kustomization
            )
        reason = " ".join(self.relativized(text).split())
        return RenderError(f"kustomize build failed: {reason}", path=self.kustomization)

    def _reparse(self, file: Path) -> RenderError | None:
        """Our own parse of a file kustomize called malformed: the same message, and line numbers
        that agree with plain directories (the Go parser's are off by one for some errors)."""
        if not file.is_file() or not _inside(self.root, file):
            return None
        try:
            _documents(file.read_text(encoding="utf-8"), self.rel(file))
        except RenderError as error:
            return error
        except UnicodeDecodeError:
            return None
        return None

    def _invalid_kustomization(self, reason: str) -> RenderError:
        kustomization = self.root / self.kustomization
        if self._YAML_LINE.match(reason):
            found = self._reparse(kustomization)
            if found:
                return found
            line, message = self._YAML_LINE.match(reason).groups()
            return RenderError(message.strip(), path=self.kustomization, line=int(line))
        if match := self._UNKNOWN_FIELD.search(reason):
            line = _line_matching(kustomization, _key_pattern(match[1]))
            return RenderError(
                f"unknown field {match[1]!r}: not a kustomization field (check its spelling and indentation)",
                path=self.kustomization,
                line=line,
            )
        field = self._WRONG_TYPE.search(reason)
        return RenderError(
            self.relativized(re.sub(r"^json:\s*", "", reason)),
            path=self.kustomization,
            line=_line_matching(kustomization, _key_pattern(field[1])) if field else None,
        )

    def _missing(self, absolute: str) -> RenderError:
        missing = self.rel(absolute)
        text = self.text
        if "accumulating components" in text:
            what, field, kind, entry = "component", "components", "directory", None
        elif match := re.search(r"patch file from path\(([^)]+)\)", text):
            what, field, kind, entry = "patch", "patches", "file", match[1]
        elif match := re.search(r"(?:file|env) sources?: \[([^\]\s]+)", text):
            what, field, kind, entry = "generator file", "files:` or `envs", "file", match[1]
        elif froms := self._FROM.findall(text):
            what, field, kind, entry = "resource", "resources", "file", froms[-1]
        else:
            return RenderError(f"{missing} does not exist", path=self.kustomization)
        line = None
        if entry:
            # The entry as written in the kustomization: `- missing.yaml` or `path: patch.yaml`.
            line = _line_matching(self.root / self.kustomization, rf"[\s:-]['\"]?{re.escape(entry)}['\"]?\s*(#.*)?$")
        return RenderError(
            f"{what} {missing} does not exist: add the {kind} or remove it from `{field}:`",
            path=self.kustomization,
            line=line,
        )


def _key_pattern(key: str) -> str:
    return rf"^['\"]?{re.escape(key)}['\"]?\s*:"


def _line_matching(path: Path, pattern: str) -> int | None:
    """The first line of `path` matching `pattern`, for errors whose tool gave no line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    regex = re.compile(pattern)
    return next((number for number, line in enumerate(lines, 1) if regex.search(line)), None)


# ---------------------------------------------------------------------------------------------
# Helm charts

# helm template prints each object as its own document after a `# Source: <chart>/<template>` line.
_HELM_DOCUMENT = re.compile(r"^---[ \t]*$", re.M)
_HELM_SOURCE = re.compile(r"^# Source: (\S.*?)\s*$", re.M)


def _helm_template(root: Path, directory: Path, chart: ChartRender, timeout: float,
                   limits: RenderLimits) -> list[_Located]:
    """The chart's objects, each named by the template that made it (as a repository path)."""
    for folder in (directory, *helm_stage.local_dependencies(root, directory)):
        if not _inside(root, folder):
            raise RenderError("a file:// dependency of the chart leads outside the repository",
                              path=_relative(root, directory / CHART_FILE))
        _check_symlinks(root, folder)  # helm follows links: .Files.Get would read what they lead to
    text, name = helm_stage.template(root, directory, chart, max_file=limits.file_bytes,
                                     max_output=limits.total_bytes, memory=limits.kustomize_memory, timeout=timeout)
    chart_where = _relative(root, directory)
    objects: list[_Located] = []
    for document in _HELM_DOCUMENT.split(text):
        source = _HELM_SOURCE.search(document)
        where = _relative(root, directory / CHART_FILE)
        if source and source[1].split("/", 1)[0] == name and "/" in source[1]:
            template = source[1].split("/", 1)[1]
            where = template if chart_where == "." else f"{chart_where}/{template}"
        # Lines of helm's output are not lines of the template: name the template only.
        objects.extend(_Located(item.manifest, where, None) for item in _yaml_objects(document, where))
    return objects


# ---------------------------------------------------------------------------------------------
# What every object must be


# A hook (see plan.py) may leave its name to the API server with metadata.generateName, as
# Argo CD and Helm allow; any other object needs a name to be tracked, diffed and pruned by.
_HOOK_ANNOTATIONS = ("argocd.argoproj.io/hook", "helm.sh/hook")


def _name_or_hook_prefix(metadata: Any) -> Any:
    if not isinstance(metadata, dict):
        return None
    annotations = metadata.get("annotations")
    if not metadata.get("name") and isinstance(annotations, dict) and any(a in annotations for a in _HOOK_ANNOTATIONS):
        return metadata.get("generateName")
    return metadata.get("name")


def _check(objects: list[_Located]) -> None:
    seen: dict[ObjectRef, _Located] = {}
    for located in objects:
        manifest = located.manifest
        if not isinstance(manifest, dict):
            raise RenderError(
                f"a document is a {type(manifest).__name__}, not a Kubernetes object "
                f"(a mapping with apiVersion, kind and metadata.name)",
                path=located.path,
                line=located.line,
            )
        metadata = manifest.get("metadata")
        required = {
            "apiVersion": manifest.get("apiVersion"),
            "kind": manifest.get("kind"),
            "metadata.name": _name_or_hook_prefix(metadata),
        }
        missing = [name for name, value in required.items() if not isinstance(value, str) or not value]
        if missing:
            raise RenderError(
                f"object has no {' and no '.join(missing)}; every object needs apiVersion, kind and metadata.name",
                path=located.path,
                line=located.line,
            )
        ref = ObjectRef.of(manifest)
        if not ref.name:  # a generateName hook: two with one prefix are two runs, not one object twice
            ref = ObjectRef(ref.group, ref.kind, ref.namespace, f"{metadata['generateName']}<{len(seen)}>")
        first = seen.get(ref)
        if first is not None:
            raise RenderError(
                f"{ref} is defined twice, at {first.where} and at {located.where}: remove one of them",
                path=located.path,
                line=located.line,
            )
        seen[ref] = located
