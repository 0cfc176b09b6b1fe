"""Repository credentials from Secrets, for the source stage (Argo CD's repository Secrets, ported).

A Secret in the controller's namespace labelled `gantry.dev/secret-type: repository` (or
`repo-creds`) holds `url` and `username`/`password` or `sshPrivateKey`. A repository's URL uses the
Secret whose `url` equals it, else the one whose `url` is its longest prefix, so one Secret can
serve every repo of an organisation. Values are decoded here and go only to git; nothing here logs
or returns them in a printable form.
"""

from __future__ import annotations

import base64
import threading
import time

from .kube import KubeApiError, KubeClient
from .source import RepoCredentials, redact_url

SECRET_TYPE_LABEL = "gantry.dev/secret-type"
SECRET_TYPES = ("repository", "repo-creds")


def _decode(data: dict, key: str) -> str | None:
    value = (data or {}).get(key)
    if not value:
        return None
    return base64.b64decode(value).decode()


def _comparable(url: str) -> str:
    """URLs compare without user info, trailing slash or `.git`, case-insensitively in the host."""
    url = redact_url(url.strip()).rstrip("/")
    return url[:-4] if url.endswith(".git") else url


def select(secrets: list[dict], repo_url: str) -> RepoCredentials | None:
    """The credentials for repo_url: an exact `url` match first, else the longest prefix match."""
    wanted = _comparable(repo_url).lower()
    best: tuple[int, dict] | None = None
    for secret in secrets:
        url = _decode(secret.get("data") or {}, "url")
        if not url:
            continue
        candidate = _comparable(url).lower()
        if candidate == wanted:
            best = (1 << 30, secret)
            break
        if wanted.startswith(candidate.rstrip("/") + "/") and (best is None or len(candidate) > best[0]):
            best = (len(candidate), secret)
    if best is None:
        return None
    data = best[1].get("data") or {}
    return RepoCredentials(username=_decode(data, "username"), password=_decode(data, "password"),
                           ssh_private_key=_decode(data, "sshPrivateKey"))


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
