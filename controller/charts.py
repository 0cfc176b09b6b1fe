"""First stage of the flow for charts from a Helm repository (Application → source → render), beside
source.py's git: the repository's index.yaml, the version targetRevision names, the chart pulled
by helm (helm.py) and unpacked once per version and digest into a cache render reads.

Charts from an OCI registry (oci://HOST/PATH, or HOST/PATH with a Secret saying enableOCI) have
no index: helm pull resolves the version (a range from the registry's tags) and pulls in one go.
A version (a tag) is pulled once and kept, as Argo CD keeps it; a range is pulled again on a
refresh or after min_fetch_interval, and renders again only when helm picked another archive.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import urllib3
import yaml

from . import helm as helm_tool
from .model import SourceError
from .source import RepoCredentials, redact_url

__all__ = ["ChartCache", "ChartVersion", "pick_version"]

log = logging.getLogger(__name__)
MiB = 1 << 20
INDEX_BYTES = 64 * MiB  # the largest public indexes are a few tens of MiB
CHART_BYTES = 64 * MiB  # one chart, unpacked
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class ChartVersion:
    """One version of a chart as the repository's index lists it."""

    name: str
    version: str
    digest: str  # sha256 of the .tgz, as the index gives it ("" if it gives none)
    entry: dict = field(compare=False, repr=False)  # the index's entry, for helm pull

    @property
    def metadata(self) -> dict:
        """What status shows of the revision, as git's author/date/subject line."""
        entry = self.entry
        return {k: str(v)[:200] for k, v in (("date", entry.get("created")), ("message", entry.get("description")))
                if v}


@dataclass(frozen=True)
class _Resolved:
    """An OCI chart's version as the last pull found it, for the constraint it was asked with."""

    at: float  # monotonic time of that pull
    version: ChartVersion


@dataclass
class _Repo:
    lock: threading.Lock = field(default_factory=threading.Lock)
    fetched_at: float | None = None  # monotonic end of the last index fetch
    entries: dict[str, list[dict]] = field(default_factory=dict)  # chart name → its index entries


class ChartCache:
    """Indexes of Helm repositories (read again after `min_fetch_interval` s, or on refresh) and
    the charts pulled from them under `root`, one directory per (repository, chart, version,
    digest) that render reads and nothing writes. Thread-safe, one lock per repository."""

    def __init__(self, root: Path, *, helm: str = "helm", min_fetch_interval: float = 5.0, timeout: float = 60.0,
                 credentials: Callable[[str], RepoCredentials | None] | None = None) -> None:
        """credentials(repository URL): the repository Secret's (type: helm) for it, or None."""
        self.root = Path(root).resolve()
        self.helm = helm
        self.min_fetch_interval = min_fetch_interval
        self.timeout = timeout
        self.credentials = credentials
        self._repos: dict[str, _Repo] = {}
        self._oci_resolved: dict[tuple[str, str, str], _Resolved] = {}  # (repo, chart, constraint) → its pull
        self._lock = threading.Lock()
        self._http = urllib3.PoolManager(num_pools=8, maxsize=4)
        self.root.mkdir(parents=True, exist_ok=True)

    def resolve(self, repo_url: str, chart: str, constraint: str, *, refresh: bool = False) -> ChartVersion:
        """The newest version of `chart` that `constraint` (a version, or a semver range such as
        `^1.2`, `>=1.0 <2`, `1.4.x`; `HEAD`, `*` or "" for the newest release) allows."""
        if self._is_oci(repo_url):
            return self._resolve_oci(repo_url, chart, constraint, refresh=refresh)
        repo = self._repo(repo_url)
        with repo.lock:
            if refresh or repo.fetched_at is None or time.monotonic() - repo.fetched_at >= self.min_fetch_interval \
                    or chart not in repo.entries:
                repo.entries = self._index(repo_url, {chart, *repo.entries})
                repo.fetched_at = time.monotonic()
            entries = repo.entries.get(chart) or []
        shown = redact_url(repo_url)
        if not entries:
            raise SourceError(f"chart {chart!r} not found in the Helm repository {shown}")
        entry = pick_version(entries, constraint)
        if entry is None:
            versions = ", ".join(str(e.get("version")) for e in _newest_first(entries)[:5])
            raise SourceError(f"chart {chart} version {constraint!r} not found in {shown}: it has {versions}"
                              f"{', …' if len(entries) > 5 else ''}")
        return ChartVersion(chart, str(entry["version"]), str(entry.get("digest") or ""), entry)

    def checkout(self, repo_url: str, version: ChartVersion, *, pass_credentials: bool = False) -> Path:
        """A directory holding the chart unpacked in the folder of its name, pulled once per
        version and digest (a republished version is a new pull)."""
        target = self._target(repo_url, version)
        if (target / version.name / "Chart.yaml").is_file():
            return target
        shown = redact_url(repo_url)
        if version.entry.get("oci"):  # unpacked when resolved, and gone since: pulled again
            pulled = self._pull_oci(repo_url, version.name, version.version)
            if pulled.digest != version.digest:
                raise SourceError(f"chart {version.name} {version.version} from {shown} is not the archive it was "
                                  f"when resolved: the registry is serving another chart under that tag",
                                  transient=True)
            return target
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=self.root) as scratch:
            archive = helm_tool.pull(self.helm, repo_url, version.entry, Path(scratch),
                                     credentials=self._credentials(repo_url), pass_credentials=pass_credentials,
                                     timeout=self.timeout)
            if version.digest and _sha256(archive) != version.digest.lower().removeprefix("sha256:"):
                raise SourceError(f"chart {version.name} {version.version} from {shown} does not match the digest "
                                  f"its index gives: the repository is serving another file under that version")
            unpacked = Path(scratch) / "unpacked"
            _unpack(archive, unpacked, version.name, f"chart {version.name} {version.version} from {shown}")
            try:
                unpacked.rename(target)
            except OSError:
                if not target.is_dir():  # not another thread or process that got there first
                    raise
        return target

    def _target(self, repo_url: str, version: ChartVersion) -> Path:
        key = hashlib.sha256("\0".join((redact_url(repo_url), version.name, version.version,
                                        version.digest)).encode()).hexdigest()[:32]
        return self.root / key

    # ------------------------------------------------------------------ OCI registries

    def _is_oci(self, repo_url: str) -> bool:
        """oci://, or an URL without a scheme that its repository Secret declares an OCI registry."""
        url = repo_url.strip()
        if url.startswith("oci://"):
            return True
        if "://" in url:
            return False
        credentials = self._credentials(url)
        if credentials is None or not credentials.enable_oci:
            shown = redact_url(url)
            raise SourceError(f"spec.source.repoURL {shown!r} has no scheme: it is an OCI registry only when its "
                              f"repository Secret (type: helm) says enableOCI: \"true\"; else write oci://{shown}, "
                              f"or the https:// URL of a Helm repository", transient=True)
        return True

    def _resolve_oci(self, repo_url: str, chart: str, constraint: str, *, refresh: bool) -> ChartVersion:
        wanted = constraint.strip()
        wanted = "*" if wanted in _LATEST else wanted
        exact = _SEMVER.fullmatch(wanted) is not None  # a tag: helm looks no further
        key = (redact_url(repo_url.strip()).removeprefix("oci://").rstrip("/"), chart, wanted)
        repo = self._repo(repo_url)
        with repo.lock:  # one pull at a time per repository
            known = self._oci_resolved.get(key)
            if known is not None and (exact or (not refresh and time.monotonic() - known.at < self.min_fetch_interval)):
                return known.version
            version = self._pull_oci(repo_url, chart, wanted)
            self._oci_resolved[key] = _Resolved(time.monotonic(), version)
        return version

    def _pull_oci(self, repo_url: str, chart: str, wanted: str) -> ChartVersion:
        """helm pull of `chart` at `wanted`, unpacked under the key of the version helm picked."""
        credentials = self._credentials(repo_url)
        request = helm_tool.OciPull(repo_url, chart, wanted,
                                    plain_http=bool(credentials and credentials.oci_force_http),
                                    skip_tls_verify=bool(credentials and credentials.insecure))
        shown = redact_url(repo_url)
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=self.root) as scratch:
            archive = helm_tool.pull_oci(self.helm, request, Path(scratch), credentials=credentials,
                                         timeout=self.timeout)
            unpacked = Path(scratch) / "unpacked"
            what = f"chart {chart} {wanted} from {shown}"
            _unpack(archive, unpacked, chart, what)
            try:
                metadata = yaml.safe_load((unpacked / chart / "Chart.yaml").read_text(encoding="utf-8")) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                metadata = {}
            if not isinstance(metadata, dict) or metadata.get("version") is None:
                raise SourceError(f"{what}: its Chart.yaml gives no version")
            entry = {"oci": True, "version": str(metadata["version"]), "description": metadata.get("description")}
            version = ChartVersion(chart, entry["version"], _sha256(archive), entry)
            target = self._target(repo_url, version)
            if not (target / chart / "Chart.yaml").is_file():
                try:
                    unpacked.rename(target)
                except OSError:
                    if not target.is_dir():  # not another process that got there first
                        raise
        log.debug("pulled %s %s (%s) from %s", chart, version.version, wanted, shown)
        return version

    # ------------------------------------------------------------------ the index

    def _repo(self, repo_url: str) -> _Repo:
        with self._lock:
            return self._repos.setdefault(redact_url(repo_url.strip()).rstrip("/"), _Repo())

    def _credentials(self, repo_url: str) -> RepoCredentials | None:
        return self.credentials(redact_url(repo_url)) if self.credentials is not None else None

    def _index(self, repo_url: str, charts: Iterable[str]) -> dict[str, list[dict]]:
        """The index's entries of `charts` (only those: a large index holds thousands of charts)."""
        shown = redact_url(repo_url)
        url = repo_url.rstrip("/") + "/index.yaml"
        headers = {"User-Agent": "gantry"}
        given = self._credentials(repo_url)
        if given is not None and given.username and given.password:
            token = base64.b64encode(f"{given.username}:{given.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        started = time.monotonic()
        try:
            # urllib3 drops Authorization on a redirect to another host, as helm does.
            response = self._http.request("GET", url, headers=headers, preload_content=False,
                                          timeout=urllib3.Timeout(connect=10, read=self.timeout),
                                          retries=urllib3.Retry(total=3, redirect=5, status=0))
            try:
                status = response.status
                body = response.read(INDEX_BYTES + 1) if status == 200 else b""
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as error:
            raise SourceError(f"cannot reach the Helm repository {shown}: {_reason(error)}", transient=True) from None
        if status in (401, 403):
            log.warning("index of %s: authentication failed (HTTP %s)", shown, status)
            raise SourceError(f"authentication failed for {shown}", transient=True)
        if status != 200:
            raise SourceError(f"{shown} is not a Helm repository: GET index.yaml answered HTTP {status}",
                              transient=status >= 500 or status == 429)
        if len(body) > INDEX_BYTES:
            raise SourceError(f"the index of {shown} is over {INDEX_BYTES // MiB} MiB: too large to read")
        try:
            index = yaml.load(body, Loader=_LOADER)
        except yaml.YAMLError as error:
            raise SourceError(f"the index of {shown} is not YAML: {' '.join(str(error).split())[:300]}") from None
        entries = index.get("entries") if isinstance(index, dict) else None
        if not isinstance(entries, dict):
            raise SourceError(f"{shown} is not a Helm repository: its index.yaml has no entries")
        log.debug("read the index of %s in %.2fs", shown, time.monotonic() - started)
        return {name: [e for e in entries[name] or () if isinstance(e, dict) and e.get("version") is not None]
                for name in charts if isinstance(entries.get(name), list)}


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split())[:300]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _unpack(archive: Path, target: Path, chart: str, what: str) -> None:
    """The chart's folder out of its .tgz: regular files and folders only, nothing outside it
    (tarfile's data filter refuses links out, devices and absolute names), within CHART_BYTES."""
    target.mkdir()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            if sum(m.size for m in members) > CHART_BYTES:
                raise SourceError(f"{what} is over {CHART_BYTES // MiB} MiB unpacked: too large to render")
            if not any(m.name.split("/", 1)[0] == chart for m in members):
                raise SourceError(f"{what}: the archive holds no folder {chart}/, as helm package makes it")
            tar.extractall(target, members=[m for m in members if m.name.split("/", 1)[0] == chart], filter="data")
    except (tarfile.TarError, OSError) as error:
        raise SourceError(f"{what} is not a chart archive: {error}") from None


# ---------------------------------------------------------------------------------------------
# Versions: semantic versions and the constraints helm's --version takes (Masterminds' syntax)

_SEMVER = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
_PART = re.compile(r"v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")
_COMPARATOR = re.compile(r"(>=|<=|!=|=>|=<|~>|>|<|=|~|\^)?\s*([^\s<>=!~^]\S*)")
_LATEST = ("", "*", "x", "X", "HEAD", "latest")


class _Version(NamedTuple):
    major: int
    minor: int
    patch: int
    release: int  # 1 for a release, 0 for a prerelease (which sorts before it)
    prerelease: tuple

    @classmethod
    def of(cls, text: str) -> "_Version | None":
        match = _SEMVER.fullmatch(str(text).strip())
        if not match:
            return None
        major, minor, patch, pre = match.groups()
        return cls(int(major), int(minor or 0), int(patch or 0), 0 if pre else 1, _prerelease_key(pre))


def _prerelease_key(pre: str | None) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()


_LOWEST = ((0, -1, ""),)  # sorts before every prerelease: `>=1.2.3-0` starts at the first of them


def _bound(numbers: list[int], pre: str | None = None) -> _Version:
    major, minor, patch = (numbers + [0, 0, 0])[:3]
    return _Version(major, minor, patch, 0 if pre else 1, _prerelease_key(pre))


def _floor(numbers: list[int]) -> _Version:
    """The lowest version with these leading numbers, prereleases included."""
    major, minor, patch = (numbers + [0, 0, 0])[:3]
    return _Version(major, minor, patch, 0, _LOWEST)


def _next(numbers: list[int], position: int) -> list[int]:
    """`numbers` with the one at `position` counted up and the rest dropped: 1.2.3, 1 → 1.3."""
    numbers = (numbers + [0, 0, 0])[:position + 1]
    numbers[position] += 1
    return numbers


def _comparator(op: str, text: str) -> list[Callable[[_Version], bool]]:
    """The tests one comparator (`^1.2`, `>=1.0.0-rc.1`, `1.x`) puts on a version."""
    match = _PART.fullmatch(text)
    if not match:
        raise ValueError(text)
    parts = [p for p in match.groups()[:3] if p is not None]
    numbers = []
    for part in parts:
        if not part.isdigit():
            break
        numbers.append(int(part))
    pre = match[4]
    exact = len(numbers) == 3
    op = {"=>": ">=", "=<": "<=", "~>": "~"}.get(op, op or "=")
    if not numbers:  # *, x: anything (a bare `>=*` too)
        return [] if op not in ("<", "!=") else [lambda v: False]
    low = _bound(numbers, pre) if exact else _floor(numbers)
    if op in ("=", "!="):
        if exact:
            test = (lambda v: v == low) if op == "=" else (lambda v: v != low)
            return [test]
        high = _floor(_next(numbers, len(numbers) - 1))
        return [lambda v: low <= v < high] if op == "=" else [lambda v: not low <= v < high]
    if op == "~":
        high = _floor(_next(numbers, 1 if len(numbers) > 1 else 0))
        return [lambda v: v >= low, lambda v: v < high]
    if op == "^":
        significant = next((i for i, n in enumerate(numbers) if n != 0), len(numbers) - 1)
        high = _floor(_next(numbers, significant))
        return [lambda v: v >= low, lambda v: v < high]
    if op == ">":
        return [lambda v: v > low] if exact else [lambda v, h=_floor(_next(numbers, len(numbers) - 1)): v >= h]
    if op == ">=":
        return [lambda v: v >= low]
    if op == "<":
        return [lambda v: v < low]
    high = _floor(_next(numbers, len(numbers) - 1))  # <=1.2 is anything of 1.2.x
    return [lambda v: v <= low] if exact else [lambda v: v < high]


def _alternatives(constraint: str) -> list[tuple[list[Callable[[_Version], bool]], bool]]:
    """Each `||` alternative: its tests, and whether it names a prerelease (only then are
    prereleases candidates, as in helm)."""
    found = []
    for alternative in constraint.split("||"):
        text = re.sub(r"(\S+)\s+-\s+(\S+)", r">=\1 <=\2", alternative.strip())  # 1.2 - 1.4
        tests: list[Callable[[_Version], bool]] = []
        for op, version in _COMPARATOR.findall(text.replace(",", " ")):
            tests += _comparator(op, version)
        found.append((tests, "-" in text))
    return found


def pick_version(entries: list[dict], constraint: str) -> dict | None:
    """The index entry `constraint` picks: one whose version is that very string, else the newest
    that the range allows; None when none does (or the constraint does not parse)."""
    wanted = (constraint or "").strip()
    exact = [e for e in entries if str(e.get("version")) == wanted]
    if exact:
        return exact[0]
    ordered = _newest_first(entries)
    if wanted in _LATEST:
        return next((e for e in ordered if (_Version.of(e["version"]) or _Version(0, 0, 0, 1, ())).release), None)
    try:
        alternatives = _alternatives(wanted)
    except ValueError:
        return None
    for entry in ordered:
        version = _Version.of(entry["version"])
        if version is None:
            continue
        for tests, allows_prerelease in alternatives:
            if (version.release or allows_prerelease) and all(test(version) for test in tests):
                return entry
    return None


def _newest_first(entries: list[dict]) -> list[dict]:
    return sorted(entries, key=lambda e: _Version.of(e.get("version")) or _Version(-1, 0, 0, 0, ()), reverse=True)

