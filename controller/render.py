"""Second stage of the flow (source → render → diff): a checked-out tree becomes the objects git asks for.

`kustomize build` where there is a kustomization, else the plain YAML/JSON files; no API server, no git.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from controller.model import KustomizeOverrides, Manifest, ObjectRef, RenderError

__all__ = ["KUSTOMIZATION_FILES", "load_yaml", "render"]

# The names kustomize looks for, in its order.
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Kustomization fields whose entries may be directories kustomize builds as roots of their own:
# its load restrictor does not confine those, so render checks they stay in the repository.
_ROOT_FIELDS = ("resources", "bases", "components")
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def render(checkout: Path, path: str, *, kustomize: str | Path = "kustomize", timeout: float = 120.0,
           recurse: bool = False, overrides: KustomizeOverrides | None = None) -> list[Manifest]:
    """The objects at `path` (relative to the repo root) in the checked-out tree `checkout`.

    A directory with a kustomization is built with `kustomize build` (default load restrictor);
    any other directory gives every *.yaml, *.yml and *.json file directly in it, by name, and with
    `recurse` (Argo CD's source.directory.recurse) those of its subdirectories too. `overrides`
    (Argo CD's source.kustomize) are laid over a kustomization, from a kustomization of their own
    outside the checkout. Every error is a RenderError naming the file relative to the repository
    root, and the line if known.
    """
    root = Path(checkout).resolve()
    directory = _directory(root, path)
    kustomization = _kustomization_file(directory)
    if kustomization is not None:
        objects = _kustomize_build(root, directory, kustomization, Path(kustomize), timeout, overrides)
    elif overrides:
        raise RenderError(f"path {path!r} has no kustomization.yaml, so spec.source.kustomize cannot apply: add one "
                          f"that lists the manifests, or remove the kustomize block from the Application")
    else:
        objects = _read_directory(root, directory, recurse=recurse)
    _check(objects)
    return [located.manifest for located in objects]


def load_yaml(text: str, path: str) -> list[Any]:
    """Every non-empty document of a YAML stream, parsed as Kubernetes tools do; `path` names the
    file in errors. Timestamps stay strings and a key given twice in one mapping is an error."""
    return [document for document, _ in _documents(text, path)]


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


def _read_directory(root: Path, directory: Path, *, recurse: bool = False) -> list[_Located]:
    objects: list[_Located] = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if recurse and entry.is_dir():
            if entry.is_symlink() and not _inside(root, entry):
                raise RenderError("is a symlink that leads outside the repository", path=_relative(root, entry))
            if not entry.is_symlink():  # a link to a folder inside the repo would read it twice
                objects.extend(_read_directory(root, entry, recurse=True))
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
        try:
            text = entry.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise RenderError(f"is not UTF-8 text ({error.reason} at byte {error.start})", path=where) from None
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
    documents = data if isinstance(data, list) else [data]
    return [item for document in documents for item in _expand(document, where, None, [])]


def _yaml_objects(text: str, where: str) -> list[_Located]:
    objects: list[_Located] = []
    for document, node in _documents(text, where):
        item_lines = []
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == "items" and isinstance(value, yaml.SequenceNode):
                    item_lines = [item.start_mark.line + 1 for item in value.value]
        objects.extend(_expand(document, where, node.start_mark.line + 1, item_lines))
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


def _documents(text: str, where: str) -> list[tuple[Any, yaml.Node]]:
    loader = _Loader(text)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            document = loader.construct_document(node)
            if document is not None:
                documents.append((document, node))
    except yaml.MarkedYAMLError as error:
        raise _yaml_error(error, where) from None
    except yaml.YAMLError as error:
        raise RenderError(f"invalid YAML: {error}", path=where) from None
    finally:
        loader.dispose()
    return documents


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
                     overrides: KustomizeOverrides | None = None) -> list[_Located]:
    _check_kustomization_tree(root, directory)
    where = _relative(root, kustomization)
    with tempfile.TemporaryDirectory(prefix="gantry-kustomize-") as scratch:
        target = directory
        if overrides:
            # The checkout is shared and read-only to us: the overrides go in a kustomization of
            # their own that takes the app's directory as its one resource.
            target = Path(scratch)
            # kustomize takes a new root only by a relative path.
            resource = os.path.relpath(directory, target.resolve())
            (target / "kustomization.yaml").write_text(yaml.safe_dump(overrides.kustomization(resource)))
        try:
            result = subprocess.run(
                [str(binary), "build", str(target)],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=timeout,
                # A remote base is fetched by git: never let it wait for a password.
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
        except subprocess.TimeoutExpired:
            raise RenderError(f"kustomize build did not finish within {timeout:g}s", path=where) from None
    if result.returncode != 0:
        raise _KustomizeError(root, directory, result.stderr).mapped()
    # Lines in kustomize's output are not lines of any file in the repo: name the kustomization only.
    return [_Located(item.manifest, where, None) for item in _yaml_objects(result.stdout, where)]


def _check_kustomization_tree(root: Path, directory: Path) -> None:
    """What kustomize would read must stay in the repository: no symlink out, and no resources,
    bases or components entry naming a directory outside it (those are new roots to kustomize)."""
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
        try:
            data = yaml.load(kustomization.read_text(encoding="utf-8"), Loader=_Loader)
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # kustomize reports it, with its own words
        if not isinstance(data, dict):
            continue
        for field in _ROOT_FIELDS:
            entries = data.get(field)
            for entry in entries if isinstance(entries, list) else ():
                if not isinstance(entry, str) or not os.path.lexists(current / entry):
                    continue  # missing (kustomize says so) or a remote URL
                if not _inside(root, current / entry):
                    raise RenderError(
                        f"{field} entry {entry!r} leads outside the repository: a kustomization may only use "
                        f"files and directories of the same repository",
                        path=_relative(root, kustomization),
                        line=_line_matching(kustomization, rf"^\s*-\s*['\"]?{re.escape(entry)}['\"]?\s*(#.*)?$"),
                    )
                if (current / entry).is_dir():
                    pending.append((current / entry).resolve())


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
            return RenderError(
                "object has no metadata.name; every object needs apiVersion, kind and metadata.name",
                path=self.rel(self.directory / match[1]),
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
# What every object must be


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
            "metadata.name": metadata.get("name") if isinstance(metadata, dict) else None,
        }
        missing = [name for name, value in required.items() if not isinstance(value, str) or not value]
        if missing:
            raise RenderError(
                f"object has no {' and no '.join(missing)}; every object needs apiVersion, kind and metadata.name",
                path=located.path,
                line=located.line,
            )
        ref = ObjectRef.of(manifest)
        first = seen.get(ref)
        if first is not None:
            raise RenderError(
                f"{ref} is defined twice, at {first.where} and at {located.where}: remove one of them",
                path=located.path,
                line=located.line,
            )
        seen[ref] = located
