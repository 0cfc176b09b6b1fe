"""Repository credentials from Secrets, for the source stage (Argo CD's repository Secrets, ported).

A Secret in the controller's namespace labelled `gantry.dev/secret-type: repository` (or
`repo-creds`) holds `url` and `username`/`password` or `sshPrivateKey` (and `insecure: "true"` to
skip ssh host key checks), and its annotation `gantry.dev/app-namespaces` lets Applications of
other namespaces than the controller's use it. A repository's URL uses the Secret whose `url`
equals it, else the one whose `url` is its longest prefix, so one Secret can serve every repo of
an organisation. Values
are decoded here and go only to git; nothing here logs or returns them in a printable form.

A Secret's `type` (Argo CD's field) says what kind of repository it is for: `helm` for a Helm
repository (its `username`/`password` go to helm: the chart's repository, or a dependency's),
`git` or none for git. A repository uses only Secrets of its own kind, so a git Secret's password
never goes to a Helm repository at a matching URL, nor the other way. An OCI registry's URL
matches with or without its `oci://` (Argo CD's Secrets name one without it, with
`enableOCI: "true"`; `insecureOCIForceHttp: "true"` for a registry over plain HTTP).
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time

from .kube import KubeApiError, KubeClient
from .source import RepoCredentials, redact_url

SECRET_TYPE_LABEL = "gantry.dev/secret-type"
SECRET_TYPES = ("repository", "repo-creds")
# On a repository Secret: the namespaces (comma-separated, or `*`) besides the controller's own
# whose Applications may use it.
APP_NAMESPACES_ANNOTATION = "gantry.dev/app-namespaces"

# What comes before a URL's path: `scheme://[user@]host[:port]` or scp-like `[user@]host:`.
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<user>[^@/:]*@)?(?P<host>[^/:]*)")


def _decode(data: dict, key: str) -> str | None:
    """The Secret's value for `key`, or None when absent or not base64 of UTF-8 text (such a
    Secret cannot be meant for us; the repo then fails as any repo without credentials does)."""
    value = (data or {}).get(key)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _normalised(url: str) -> str:
    """`url` without user info (for http) and with its scheme and host lower-cased: those are
    case-insensitive, while a path may not be (most git servers tell `Org/App` from `org/app`).
    An OCI registry's `oci://` is dropped: Argo CD's Secrets name one without it (`enableOCI`)."""
    url = redact_url(url.strip())
    if url[:6].lower() == "oci://":
        url = url[6:]
    match = _AUTHORITY.match(url)
    scheme, user, host = match["scheme"] or "", match["user"] or "", match["host"]
    return scheme.lower() + user + host.lower() + url[match.end():]


def _same_repo(url: str) -> str:
    """For an exact match, a trailing slash or `.git` makes no difference."""
    url = url.rstrip("/")
    return url.removesuffix(".git")


def select(secrets: list[dict], repo_url: str, kind: str = "git") -> RepoCredentials | None:
    """The credentials for repo_url: the Secret whose `url` is the same repository, else the one
    whose `url` is the longest plain string prefix of it (as Argo CD's repo-creds match, so
    `https://host/org/`, `https://host/org-` and `git@host:org/` all work as prefixes), among the
    Secrets of `kind` (`git`: no type or `type: git`; `helm`: `type: helm`)."""
    secret = _matching([s for s in secrets if _kind(s) == kind], repo_url)
    if secret is None:
        return None
    data = secret.get("data") or {}
    return RepoCredentials(username=_decode(data, "username"), password=_decode(data, "password"),
                           ssh_private_key=_decode(data, "sshPrivateKey"), insecure=_flag(data, "insecure"),
                           enable_oci=_flag(data, "enableOCI"), oci_force_http=_flag(data, "insecureOCIForceHttp"))


def _flag(data: dict, key: str) -> bool:
    return (_decode(data, key) or "").strip().lower() == "true"


def refusal(secrets: list[dict], repo_url: str, app_namespace: str, controller_namespace: str) -> str | None:
    """Why an Application in `app_namespace` may not use the credentials Secret for `repo_url`,
    or None when it may (or the repo has no Secret: a public repo is anyone's).

    The Secret lives in the controller's namespace, so its Applications may use it; Applications
    in other namespaces (--app-namespaces: a team's own) only where its `APP_NAMESPACES_ANNOTATION`
    lists their namespace. Otherwise a team could name another team's private repository and
    deploy (and so read) what it holds; the clone cached for the other team needs no credentials
    of its own, so the check is on the repository, before any fetch.
    """
    secret = _matching(secrets, repo_url)
    if secret is None or app_namespace == controller_namespace:
        return None
    metadata = secret.get("metadata") or {}
    listed = (metadata.get("annotations") or {}).get(APP_NAMESPACES_ANNOTATION, "")
    if app_namespace in {n.strip() for n in listed.split(",")} or listed.strip() == "*":
        return None
    return (f"{redact_url(repo_url)} is a private repository whose credentials (Secret "
            f"{controller_namespace}/{metadata.get('name')}) Applications in namespace {app_namespace!r} may not use: "
            f"an administrator can list {app_namespace} in that Secret's {APP_NAMESPACES_ANNOTATION} annotation")


def _kind(secret: dict) -> str:
    """Which kind of repository a Secret is for: its `type`, git when it has none."""
    return (_decode(secret.get("data") or {}, "type") or "git").strip().lower()


def _matching(secrets: list[dict], repo_url: str) -> dict | None:
    wanted = _normalised(repo_url)
    best: tuple[int, dict] | None = None
    for secret in secrets:
        url = _decode(secret.get("data") or {}, "url")
        if not url:
            continue
        candidate = _normalised(url)
        if _same_repo(candidate) == _same_repo(wanted):
            best = (1 << 30, secret)
            break
        if wanted.startswith(candidate) and (best is None or len(candidate) > best[0]):
            best = (len(candidate), secret)
    return best[1] if best is not None else None


class CredentialStore:
    """Looks Secrets up on demand (and caches the list briefly: a sync of many apps asks often)."""

    def __init__(self, client: KubeClient, namespace: str, *, ttl: float = 5.0) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl = ttl
        self._secrets: list[dict] = []
        self._listed_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, repo_url: str) -> RepoCredentials | None:
        found = select(self._list(), repo_url)
        if found is None:  # perhaps a Secret added since the last list: look once more, now
            found = select(self._list(max_age=0.5), repo_url)
        return found

    def helm(self, repo_url: str, app_namespace: str | None = None) -> RepoCredentials | None:
        """The credentials of the Helm repository Secret (type: helm) for repo_url; with
        app_namespace, only when Applications there may use that Secret (see refusal())."""
        if app_namespace is not None and self.refusal(repo_url, app_namespace) is not None:
            return None
        found = select(self._list(), repo_url, "helm")
        if found is None:
            found = select(self._list(max_age=0.5), repo_url, "helm")
        return found

    def refusal(self, repo_url: str, app_namespace: str) -> str | None:
        """Why an Application in `app_namespace` may not read `repo_url` (see refusal())."""
        refused = refusal(self._list(), repo_url, app_namespace, self.namespace)
        if refused is not None:  # perhaps the Secret was changed since the last list: look again, now
            refused = refusal(self._list(max_age=0.5), repo_url, app_namespace, self.namespace)
        return refused

    def _list(self, max_age: float | None = None) -> list[dict]:
        with self._lock:
            if time.monotonic() - self._listed_at < (self.ttl if max_age is None else max_age):
                return self._secrets
            try:
                resource = self.client.resource("v1", "Secret")
                self._secrets = self.client.list(
                    resource, self.namespace, label_selector=f"{SECRET_TYPE_LABEL} in ({','.join(SECRET_TYPES)})"
                )["items"]
            except KubeApiError:
                # Unreadable Secrets must not stop public repos from syncing; a private one then
                # reports git's own "authentication failed".
                self._secrets = []
            self._listed_at = time.monotonic()
            return self._secrets
