"""First stage of the flow (Application → source → render): git fetch into a shared cache of bare clones.

Resolves an Application's targetRevision to a full commit SHA and lays that commit's tree out on disk for render.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import git

from controller.model import SourceError

__all__ = ["Credentials", "GitCache", "redact_url"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RepoCredentials:
    """What a repository Secret gives: basic auth for http(s), a private key for ssh.

    `insecure` (Argo CD's field of that name) skips the check of an ssh server's host key (for
    an OCI registry: of its TLS certificate). A Helm Secret's `enableOCI` says its URL, written
    without a scheme, is an OCI registry; `insecureOCIForceHttp` that the registry speaks plain HTTP.
    """

    username: str | None = None
    password: str | None = None
    ssh_private_key: str | None = None
    insecure: bool = False
    enable_oci: bool = False
    oci_force_http: bool = False

    def __repr__(self) -> str:  # never show secrets, not even in a traceback
        return (f"RepoCredentials(username={'set' if self.username else None}, password=***, "
                f"ssh_private_key=***, insecure={self.insecure})")


# Called with the redacted repository URL: (username, password), RepoCredentials, or None to
# fetch anonymously.
Credentials = Callable[[str], "tuple[str, str] | RepoCredentials | None"]

_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_HEX = re.compile(r"[0-9a-f]{4,40}")
# What git refuses in a ref name, plus rev-parse's own syntax (`main~1`, `v1^{tree}`, `@{u}`): a
# targetRevision names a branch, a tag or a commit, never an expression.
_NOT_A_NAME = re.compile(r"\.\.|@\{|[~^:?*\[\\\s]|^-|^/|/$|\.lock$|^$")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")

# Failures git reports when the server wants credentials it did not get or did not accept.
_AUTH_FAILURES = (
    "authentication failed",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "http basic: access denied",
    "the requested url returned error: 401",
    "the requested url returned error: 403",
    "invalid username or password",
    "permission denied (publickey",
)
_MISSING_REF = ("couldn't find remote ref", "not our ref", "no such remote ref", "unadvertised object")
# git's closing line after any ssh failure; the line before it (ssh's own) says what went wrong.
_SSH_GENERIC = "could not read from remote repository"

# After a failed fetch, callers that waited on it share its error, and so does any caller within
# this many seconds (the Applications of one repo retrying together need not each fetch). Never
# longer: a failure is not a fetch to reuse, and the fix (a Secret added, the server back) must be
# seen at the next try, not a poll interval later.
_FAILURE_REUSE = 1.0


def redact_url(url: str) -> str:
    """`url` without its credentials, fit for messages and logs.

    http(s) loses all userinfo (a token is often given as the user name); other schemes keep a
    plain user name (`ssh://git@host/…`) and lose `user:password@`.
    """
    return _USERINFO.sub(_redact_userinfo, url)


def _redact_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match["scheme"], match["userinfo"]
    if scheme.lower().startswith("http") or ":" in userinfo:
        return scheme
    return match[0]


@dataclass
class _Repo:
    """One cached bare clone and what the cache knows about its last fetch."""

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    fetched_at: float | None = None  # monotonic end of the last successful fetch
    fetch_started: float | None = None  # monotonic start of that fetch
    last_fetch: float | None = None  # wall-clock time of it, for status and metrics
    fetch_count: int = 0
    failure: SourceError | None = None  # the last fetch's error, if it failed; cleared by a success
    failed_at: float = float("-inf")  # monotonic end of that failed fetch


class GitCache:
    """One bare clone per repository URL under `root`, shared by every Application using that repo.

    Thread-safe: calls for one repo are serialised by a lock of its own, so Applications resolving
    the same repo at once share one fetch; calls for different repos run in parallel.
    """

    def __init__(
        self,
        root: Path,
        *,
        min_fetch_interval: float = 5.0,
        timeout: float = 60.0,
        credentials: Credentials | None = None,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """observe(redacted repo URL, request type, seconds) is called after every git request
        (the metrics stage's histogram)."""
        self.root = Path(root).resolve()
        self.observe = observe
        self.min_fetch_interval = min_fetch_interval
        self.timeout = timeout
        self.credentials = credentials
        self._repos: dict[str, _Repo] = {}
        self._metadata: dict[str, dict] = {}  # commit → revision_metadata (a commit never changes)
        self._repos_lock = threading.Lock()
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "trees").mkdir(parents=True, exist_ok=True)
        (self.root / "ssh").mkdir(mode=0o700, exist_ok=True)
        for stale in (self.root / "ssh").glob(".key-*"):  # left by a process killed mid-fetch
            stale.unlink(missing_ok=True)

    # -- public surface ---------------------------------------------------------------------

    def resolve(self, repo_url: str, target_revision: str = "HEAD", *, refresh: bool = False) -> str:
        """The full commit SHA `target_revision` names in `repo_url`, fetching what is needed.

        `target_revision` is `HEAD` (the remote's default branch), a branch, a tag (annotated tags
        peel to their commit) or a full or abbreviated commit SHA. A fetch that finished less than
        `min_fetch_interval` seconds ago is reused unless `refresh` is true; with `refresh`, a fetch
        that started after this call was made is reused (it already saw the newest state). A failed
        fetch is not reused beyond the callers that waited on it (and a second's grace): the next
        call fetches again.
        """
        asked = time.monotonic()
        revision = (target_revision or "HEAD").strip()
        repo = self._repo(repo_url)
        with repo.lock:
            lowered = revision.lower()
            if _FULL_SHA.fullmatch(lowered) and self._has_commit(repo, lowered):
                return lowered  # commits are immutable: no fetch can change what this names
            if _NOT_A_NAME.search(revision):
                raise self._not_found(repo_url, revision)
            if self._needs_fetch(repo, asked, refresh):
                self._fetch(repo, repo_url)
            sha = self._lookup(repo, revision)
            if sha is None and _FULL_SHA.fullmatch(lowered):
                # A commit no branch or tag reaches (a pull request head, a rewritten branch's
                # old tip): servers hand it out when asked for by its full SHA.
                self._fetch_commit(repo, repo_url, lowered)
                sha = lowered if self._has_commit(repo, lowered) else None
            if sha is None:
                raise self._not_found(repo_url, revision)
            return sha

    def checkout(self, repo_url: str, commit: str) -> Path:
        """A directory holding the tree of `commit` (a full SHA), built once and then reused.

        Render reads it and nothing writes to it. It is built in a temporary directory and renamed
        into place, so a reader never sees a half-written tree.
        """
        commit = commit.strip().lower()
        if not _FULL_SHA.fullmatch(commit):
            raise SourceError(f"checkout needs a full commit SHA, not {commit!r}: resolve the revision first")
        target = self.root / "trees" / commit
        if target.is_dir():
            return target
        repo = self._repo(repo_url)
        if not self._has_commit(repo, commit):
            self.resolve(repo_url, commit)
        tmp = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=self.root / "trees"))
        try:
            # read-tree into a private index rather than `git archive`: archive honours the
            # export-ignore/export-subst attributes, so its output can differ from the commit.
            status, _, stderr = self._git(
                repo,
                "--work-tree", str(tmp), "read-tree", "--reset", "-u", f"{commit}^{{tree}}",
                env={"GIT_INDEX_FILE": str(tmp) + ".index"},
            )
            if status != 0:
                raise SourceError(f"cannot check out {commit[:12]} of {redact_url(repo_url)}: {_one_line(stderr)}")
            try:
                tmp.rename(target)
            except OSError:
                if not target.is_dir():  # not simply another thread or process that got there first
                    raise
        finally:
            Path(str(tmp) + ".index").unlink(missing_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def revision_metadata(self, repo_url: str, commit: str) -> dict:
        """{author, date, message} of `commit` (a full SHA in the cache), as Argo CD's UI shows a
        revision: the author's name, the commit date and the subject line. Empty if git cannot say."""
        cached = self._metadata.get(commit)
        if cached is None:
            status, stdout, _ = self._git(self._repo(repo_url), "log", "-1", "--no-show-signature",
                                          "--format=%an%x00%cI%x00%s", commit, "--")
            parts = stdout.split("\x00") if status == 0 else []
            cached = ({"author": parts[0][:200], "date": parts[1], "message": parts[2][:200]}
                      if len(parts) == 3 else {})
            if cached:
                self._metadata[commit] = cached
                if len(self._metadata) > 4096:  # the oldest first: dicts keep insertion order
                    del self._metadata[next(iter(self._metadata))]
        return cached

    def last_fetch(self, repo_url: str) -> float | None:
        """Wall-clock time (`time.time()`) of the last successful fetch of `repo_url`, or None."""
        repo = self._repos.get(repo_url.strip())
        return repo.last_fetch if repo else None

    def fetch_count(self, repo_url: str) -> int:
        """How many fetches this cache has run against `repo_url` (successful or not)."""
        repo = self._repos.get(repo_url.strip())
        return repo.fetch_count if repo else 0

    # -- the clone ------------------------------------------------------------------------

    def _repo(self, repo_url: str) -> _Repo:
        key = repo_url.strip()
        with self._repos_lock:
            repo = self._repos.get(key)
            if repo is None:
                # The URL as given (credentials included) is the key, so two URLs that differ only
                # in credentials never share what one of them was allowed to fetch.
                name = hashlib.sha256(key.encode()).hexdigest()[:32]
                repo = self._repos[key] = _Repo(self.root / "repos" / name)
        with repo.lock:
            if not (repo.path / "HEAD").exists():
                tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=self.root / "repos"))
                git.Repo.init(tmp, bare=True)
                try:
                    tmp.rename(repo.path)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if not (repo.path / "HEAD").exists():
                        raise
        return repo

    def _needs_fetch(self, repo: _Repo, asked: float, refresh: bool) -> bool:
        """Whether to fetch now; raises the last fetch's error instead when it is still news."""
        now = time.monotonic()
        if repo.failure is not None:
            waited_on_it = repo.failed_at >= asked
            just_now = now - repo.failed_at < min(self.min_fetch_interval, _FAILURE_REUSE)
            if waited_on_it or (just_now and not refresh):
                raise repo.failure
            return True  # the last good fetch is older than the failure: what it saw may be gone
        if refresh:
            # Another caller's fetch that began after we asked has seen everything we would.
            return repo.fetch_started is None or repo.fetch_started < asked
        return repo.fetched_at is None or now - repo.fetched_at >= self.min_fetch_interval

    def _fetch(self, repo: _Repo, repo_url: str) -> None:
        started = time.monotonic()
        refspecs = ["+HEAD:refs/gantry/HEAD", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
        try:
            self._run_fetch(repo, repo_url, refspecs, missing_ok=False)
        except SourceError as error:
            repo.failure, repo.failed_at = error, time.monotonic()
            raise
        repo.failure, repo.failed_at = None, float("-inf")
        repo.fetch_started, repo.fetched_at, repo.last_fetch = started, time.monotonic(), time.time()

    def _fetch_commit(self, repo: _Repo, repo_url: str, sha: str) -> None:
        self._run_fetch(repo, repo_url, [f"+{sha}:refs/gantry/commits/{sha}"], missing_ok=True)

    def _run_fetch(self, repo: _Repo, repo_url: str, refspecs: list[str], *, missing_ok: bool) -> None:
        url, username, password = _split_credentials(repo_url.strip())
        shown = redact_url(repo_url.strip())
        given = self._credentials_for(shown)
        if given.username is not None or given.password is not None:
            # The Secret's pair wins over one in the URL; a token alone goes with an empty user
            # name, as Argo CD sends it.
            username, password = given.username or username or "", given.password
        config = [("credential.helper", "")]  # no helper of the host's may answer for us
        token = None
        if username is not None and _is_http(url):
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            # Through the environment, so it is on no command line and in no config file.
            config.append(("http.extraHeader", f"Authorization: Basic {token}"))
        repo.fetch_count += 1
        began = time.monotonic()
        with self._ssh_environment(repo, url, given) as env:
            status, _, stderr = self._git(
                repo, "fetch", "--prune", "--force", "--no-tags", "--no-write-fetch-head", "--quiet",
                "--end-of-options", url, *refspecs, config=config, env=env,
            )
        # With no password, the user name is the secret (a token given as `https://<token>@host/`);
        # a long one is a token too (`https://<token>:x-oauth-basic@host/`), while a short one
        # ("git", "deployer") would only garble the message. The header's token goes too, should a
        # GIT_TRACE_CURL of the host's print headers.
        secrets = [password, token]
        if username and (not password or len(username) >= 20):
            secrets.append(username)
        stderr = _scrub(stderr, [secret for secret in secrets if secret])
        if self.observe is not None:
            self.observe(shown, "fetch", time.monotonic() - began)
        if status == 0:
            log.info("fetched %s in %.2fs", shown, time.monotonic() - began)
            return
        lowered = stderr.lower()
        if any(marker in lowered for marker in _AUTH_FAILURES):
            log.warning("fetch of %s failed: authentication failed", shown)
            # Exactly this and nothing else (the contract): which credential was wrong,
            # or whether there was one, is for the user to check in the repository Secret.
            # Transient: credentials change without the Application changing (a Secret added or
            # rotated), so the reconcile retries with backoff instead of waiting for the next poll.
            raise SourceError(f"authentication failed for {shown}", transient=True)
        if missing_ok and any(marker in lowered for marker in _MISSING_REF):
            return
        if "couldn't find remote ref head" in lowered:
            # Likely a repository created but not pushed to yet: worth retrying.
            raise SourceError(f"{shown} has no default branch (is the repository empty?)", transient=True)
        if "host key verification failed" in lowered:
            log.warning("fetch of %s failed: ssh host key verification failed", shown)
            raise SourceError(
                f"cannot reach {shown}: its SSH host key differs from the one recorded at first contact in "
                f"{self._known_hosts(repo)}; if the server's key was rotated, delete that file, or set "
                f"insecure: \"true\" in the repository Secret to skip the check",
                transient=True,
            )
        reason = _one_line(stderr)
        if stderr.startswith("Timeout:"):
            reason = f"git did not finish within {self.timeout:g}s"
        log.warning("fetch of %s failed: %s", shown, reason)
        raise SourceError(f"cannot reach {shown}: {reason}", transient=True)

    def _credentials_for(self, shown: str) -> RepoCredentials:
        given = self.credentials(shown) if self.credentials is not None else None
        if given is None:
            return RepoCredentials()
        if isinstance(given, RepoCredentials):
            return given
        username, password = given
        return RepoCredentials(username=username, password=password)

    def _lookup(self, repo: _Repo, revision: str) -> str | None:
        if revision == "HEAD":
            candidates = ["refs/gantry/HEAD"]
        elif revision.startswith("refs/"):
            candidates = [revision]
        else:
            # A branch wins over a tag of the same name, as in Argo CD.
            candidates = [f"refs/heads/{revision}", f"refs/tags/{revision}"]
            if _HEX.fullmatch(revision.lower()):
                candidates.append(revision.lower())
        for candidate in candidates:
            status, stdout, _ = self._git(
                repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"
            )
            if status == 0 and _FULL_SHA.fullmatch(stdout.strip()):
                return stdout.strip()
        return None

    def _has_commit(self, repo: _Repo, sha: str) -> bool:
        status, _, _ = self._git(repo, "cat-file", "-e", f"{sha}^{{commit}}")
        return status == 0

    def _not_found(self, repo_url: str, revision: str) -> SourceError:
        return SourceError(
            f"revision {revision!r} not found in {redact_url(repo_url.strip())}: no branch, tag or commit of that name"
        )

    @contextmanager
    def _ssh_environment(self, repo: _Repo, url: str, given: RepoCredentials) -> Iterator[dict[str, str]]:
        """GIT_SSH_COMMAND for one fetch of an ssh URL (nothing for other URLs).

        A Secret's key wins over any ssh the host configured: it is written to a 0600 file that
        lives only as long as the fetch, and ssh offers that key alone. Without a key, a GIT_SSH or
        GIT_SSH_COMMAND of the host's is left to git (the operator's own setup); else plain ssh.

        Host keys: Argo CD checks them against its known-hosts ConfigMap, which Gantry does not
        have. Instead the first contact records the server's key in a known_hosts file of this
        repo's own and a different key later is refused (ssh's accept-new: trust on first use).
        Per repo because fetches of one repo are serialised by its lock, so no two ssh processes
        ever write one file. `insecure: "true"` in the Secret, as in Argo CD, skips the check.
        """
        if not _is_ssh(url):
            yield {}
            return
        if given.ssh_private_key is None and ("GIT_SSH" in os.environ or "GIT_SSH_COMMAND" in os.environ):
            yield {}
            return
        options = ["-o", "BatchMode=yes"]  # no passphrase, password or host-key prompt: fail instead
        if given.insecure:
            options += ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}"]
        else:
            known_hosts = self._known_hosts(repo)
            options += ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known_hosts}"]
        if given.ssh_private_key is None:
            yield {"GIT_SSH_COMMAND": shlex.join(["ssh", *options])}
            return
        # mkstemp creates the file 0600 (ssh refuses a key others can read), in our 0700 directory.
        fd, key_file = tempfile.mkstemp(prefix=".key-", dir=self.root / "ssh")
        try:
            with os.fdopen(fd, "w") as handle:
                # ssh rejects a key without its final newline; a Secret written on Windows has CRLFs.
                handle.write(given.ssh_private_key.replace("\r\n", "\n").strip() + "\n")
            yield {"GIT_SSH_COMMAND": shlex.join(["ssh", "-i", key_file, "-o", "IdentitiesOnly=yes", *options])}
        finally:
            os.unlink(key_file)

    def _known_hosts(self, repo: _Repo) -> Path:
        return self.root / "ssh" / f"{repo.path.name}.known_hosts"

    def _git(
        self, repo: _Repo, *args: str, config: list[tuple[str, str]] = (), env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        pairs = [
            *config,
            # curl gives up on a connection that stalls, besides the kill after `timeout`.
            ("http.lowSpeedLimit", "1"),
            ("http.lowSpeedTime", str(max(int(self.timeout), 1))),
        ]
        environment = {
            "GIT_TERMINAL_PROMPT": "0",  # fail instead of asking for a password on a terminal
            "GIT_ASKPASS": "",  # set but empty: no askpass program either (nor SSH_ASKPASS)
            "GCM_INTERACTIVE": "never",
            "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",  # never ext:: (runs commands)
            "GIT_CONFIG_COUNT": str(len(pairs)),
            **{f"GIT_CONFIG_KEY_{i}": key for i, (key, _) in enumerate(pairs)},
            **{f"GIT_CONFIG_VALUE_{i}": value for i, (_, value) in enumerate(pairs)},
            **(env or {}),
        }
        runner = git.Git(str(repo.path))
        status, stdout, stderr = runner.execute(
            ["git", "--git-dir", str(repo.path), *args],
            with_extended_output=True,
            with_exceptions=False,
            kill_after_timeout=self.timeout,
            env=environment,
        )
        return status, stdout, stderr


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _is_ssh(url: str) -> bool:
    """An ssh URL as git reads one: ssh://… or scp-like `[user@]host:path` (a colon before any slash)."""
    if "://" in url:
        return url.lower().startswith(("ssh://", "git+ssh://", "ssh+git://"))
    colon, slash = url.find(":"), url.find("/")
    return colon > 0 and (slash == -1 or colon < slash)


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """An http(s) URL without its `user:password@`, and those two, so they go to git as a header
    and never on its command line. An ssh:// URL keeps its user and loses a password, which ssh
    has no use for (it would log in as user `user:password`), so that it can be scrubbed."""
    if not (_is_http(url) or _is_ssh(url)) or "://" not in url:
        return url, None, None
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    username, sep, password = userinfo.partition(":")
    if not _is_http(url):
        return urlunsplit(parts._replace(netloc=f"{username}@{host}")), None, unquote(password) if sep else None
    return urlunsplit(parts._replace(netloc=host)), unquote(username), unquote(password) if sep else None


def _scrub(text: str, secrets: list[str]) -> str:
    text = redact_url(text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _one_line(stderr: str) -> str:
    """git's reason in one line: ssh's own complaint, else its first `fatal:` line (or first line),
    minus the URL it repeats."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    ssh = [line for line in lines if line.startswith("ssh:")]  # `ssh: connect to host …: Connection refused`
    fatal = [line for line in lines if line.startswith(("fatal:", "error:")) and _SSH_GENERIC not in line.lower()]
    line = (ssh or fatal or lines or ["git failed without saying why"])[0]
    line = re.sub(r"^(fatal|error):\s*", "", line)
    line = re.sub(r"^unable to access '[^']*':\s*", "", line)
    return redact_url(line)
