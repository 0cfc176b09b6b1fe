"""Git push webhooks, at the very start of the flow (push → refresh → source → …): verify a GitHub,
GitLab or Gitea/Forgejo delivery and say which Applications it concerns, so a push deploys now.

Pure functions over headers, bytes and strings: no HTTP server, no kopf, no API calls. The caller
answers `WebhookError.status` with `str(error)` as the body, and refreshes the Applications for
which `matches()` is true.

Status contract of `parse()`:

* returns a `PushEvent`: a verified push; answer 200 after refreshing what `matches()` selects.
* `WebhookIgnored` (a `WebhookError`), status 200 for GitHub's `ping` (body "pong"), 202 for any
  other verified event (pull requests, issues, GitLab system hooks…): nothing to refresh, but a 2xx
  so the provider does not list every such delivery as failed.
* 401: the provider's secret is not configured (or its value in the Secret is not readable), or
  the signature/token is missing or wrong.
  Verification happens before the body is parsed, and before the event type is acted on.
* 400: no provider recognised from the headers, or a verified body that is not a push payload
  (not JSON, not an object, no `ref`, no repository URL).

Oversized bodies and slow clients are the HTTP server's business (metrics.HttpServer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from controller.model import GantryError
from controller.source import redact_url

__all__ = [
    "SECRET_NAME",
    "PushEvent",
    "WebhookError",
    "WebhookIgnored",
    "WebhookSecrets",
    "matches",
    "normalise_repo_url",
    "parse",
]

# The Secret, in the controller's namespace, whose keys `github`, `gitlab` and `gitea` hold the
# webhook secrets (Forgejo uses `gitea`: it is a Gitea fork and signs the same way).
SECRET_NAME = "gantry-webhook"

GITHUB, GITLAB, GITEA = "github", "gitlab", "gitea"
_TITLES = {GITHUB: "GitHub", GITLAB: "GitLab", GITEA: "Gitea/Forgejo"}

# Git writes a deleted ref's new value as all zeros (40 for SHA-1 repos, 64 for SHA-256 ones).
_ZERO_SHA = re.compile(r"0{40}|0{64}")
_FULL_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
# git's scp-like syntax, `[user@]host:path`, recognised (as git does) only when there is no `://`
# and no `/` before the colon.
_SCP = re.compile(r"(?:[^@/:]+@)?(?P<host>[^@/:]+):(?P<path>.*)")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}
_LOOPBACK_NAMES = ("localhost", "::1")

# Where each provider's push payload names the repository. Every form is kept: the Application may
# use any of them, and normalise_repo_url() makes them comparable.
_URL_FIELDS = {
    GITHUB: {"repository": ("html_url", "clone_url", "ssh_url", "git_url", "svn_url", "url")},
    GITLAB: {
        "project": ("web_url", "git_http_url", "git_ssh_url", "http_url", "ssh_url", "url", "homepage"),
        "repository": ("homepage", "git_http_url", "git_ssh_url", "url"),
    },
    GITEA: {"repository": ("html_url", "clone_url", "ssh_url")},
}


class WebhookError(GantryError):
    """A delivery that refreshes nothing; `status` is the HTTP status to answer, the message its body."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class WebhookIgnored(WebhookError):
    """A verified delivery of an event that is not a push (2xx: the provider did nothing wrong)."""


@dataclass(frozen=True)
class WebhookSecrets:
    """One secret per provider; None means deliveries from that provider are refused (401)."""

    # repr=False: these end up in logs as part of objects that hold them, and must not.
    github: str | None = field(default=None, repr=False)
    gitlab: str | None = field(default=None, repr=False)
    gitea: str | None = field(default=None, repr=False)
    # Keys of the Secret whose value could not be read: their provider's 401 says so.
    unreadable: frozenset[str] = frozenset()

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> "WebhookSecrets":
        """From a Kubernetes Secret's `data` (base64 values). A trailing newline is dropped, since
        `echo secret | base64` is how many people fill a Secret; an empty value counts as unset,
        because an HMAC keyed with "" is no protection at all. A value that is not base64 of UTF-8
        text counts as unset too, and is named in `unreadable`: one bad key must not take the
        other providers' webhooks down with it, and its own deliveries get a 401 that names it."""
        values: dict[str, str | None] = {}
        unreadable = set()
        for key in (GITHUB, GITLAB, GITEA):
            encoded = (data or {}).get(key)
            if encoded is None:
                continue
            try:
                text = base64.b64decode(encoded, validate=True).decode("utf-8")
            except (binascii.Error, ValueError, TypeError):  # TypeError: a value that is not a string
                unreadable.add(key)
                continue
            values[key] = text.rstrip("\r\n") or None
        return cls(**values, unreadable=frozenset(unreadable))


@dataclass(frozen=True)
class PushEvent:
    """A verified push: which repository (every URL form the payload gives) and which ref moved."""

    provider: str  # "github" | "gitlab" | "gitea" (Gitea and Forgejo)
    repo_urls: tuple[str, ...]
    ref: str  # "refs/heads/main", "refs/tags/v1.2.0"
    default_branch: str | None = None
    after: str | None = None  # the ref's new commit; all zeros when the ref was deleted

    @property
    def deleted(self) -> bool:
        return bool(self.after) and _ZERO_SHA.fullmatch(self.after or "") is not None

    def __str__(self) -> str:
        commit = "deleted" if self.deleted else (self.after or "?")[:12]
        repo = redact_url(self.repo_urls[0]) if self.repo_urls else "?"
        return f"{self.provider} push {self.ref} ({commit}) to {repo}"


# ---------------------------------------------------------------------------------------------
# parse: detect, verify, then read


def parse(headers: Mapping[str, str] | Message, body: bytes, secrets: WebhookSecrets) -> PushEvent:
    """The push event in one webhook delivery, verified with the provider's secret.

    `headers` may be a plain mapping or the request's `handler.headers`; names are compared without
    regard to case. Raises WebhookError (see the module docstring for the status of each case).
    """
    lowered = {name.lower(): str(value) for name, value in headers.items()}
    provider, event = _detect(lowered)
    _verify(provider, lowered, body, secrets)

    if provider == GITHUB and event == "ping":
        raise WebhookIgnored("pong", status=200)
    if not _is_push(provider, event):
        raise WebhookIgnored(
            f"ignored {_TITLES[provider]} {event!r} event: only push events refresh Applications", status=202
        )
    return _read_push(provider, _load_json(provider, lowered, body))


def _detect(headers: Mapping[str, str]) -> tuple[str, str]:
    # Gitea and Forgejo also send X-GitHub-Event (and Forgejo X-Gitea-Event) for compatibility, with
    # GitHub-style signatures made with *their* secret: the most specific header must win.
    for header, provider in (
        ("x-forgejo-event", GITEA),
        ("x-gitea-event", GITEA),
        ("x-gitlab-event", GITLAB),
        ("x-github-event", GITHUB),
    ):
        if header in headers:
            return provider, headers[header].strip()
    raise WebhookError(
        "not a webhook from GitHub, GitLab, Gitea or Forgejo: none of the X-GitHub-Event, "
        "X-Gitlab-Event, X-Gitea-Event or X-Forgejo-Event headers is present",
        status=400,
    )


def _verify(provider: str, headers: Mapping[str, str], body: bytes, secrets: WebhookSecrets) -> None:
    title = _TITLES[provider]
    secret = getattr(secrets, provider)
    if provider in secrets.unreadable:
        # Never echo the value: it is (an attempt at) a secret.
        raise WebhookError(
            f"{title} webhook refused: key {provider!r} of Secret {SECRET_NAME} is not base64-encoded "
            f"UTF-8 text; set it to the {title} webhook's secret",
            status=401,
        )
    if not secret:
        raise WebhookError(
            f"{title} webhook refused: no {title} secret is configured, and Gantry does not accept "
            f"unsigned webhooks; set key {provider!r} of Secret {SECRET_NAME} in the controller's "
            f"namespace, and the same secret in the {title} webhook",
            status=401,
        )
    key = secret.encode("utf-8")
    digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    if provider == GITHUB:
        header, given, expected = "X-Hub-Signature-256", headers.get("x-hub-signature-256"), f"sha256={digest}"
    elif provider == GITEA:
        header = "X-Forgejo-Signature" if "x-forgejo-signature" in headers else "X-Gitea-Signature"
        given, expected = headers.get(header.lower()), digest
    else:  # GitLab sends the secret itself, as a token, not a signature of the body
        header, given, expected = "X-Gitlab-Token", headers.get("x-gitlab-token"), secret
    if given is None:
        raise WebhookError(f"{title} webhook refused: no {header} header (set a secret in the webhook)", status=401)
    if provider != GITLAB:
        given = given.strip().lower()  # hex is hex in either case
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold anything.
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        what = "token" if provider == GITLAB else "signature"
        raise WebhookError(
            f"{title} webhook refused: the {header} {what} does not match the {title} secret in "
            f"Secret {SECRET_NAME}",
            status=401,
        )


def _is_push(provider: str, event: str) -> bool:
    if provider == GITLAB:
        return event in ("Push Hook", "Tag Push Hook")
    return event.lower() == "push"


def _load_json(provider: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    title = _TITLES[provider]
    try:
        # GitHub's and Gitea's webhook forms offer `application/x-www-form-urlencoded` (GitHub's
        # default), which sends the JSON as the `payload` field; the signature covers the raw body.
        if headers.get("content-type", "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            fields = parse_qs(body.decode("ascii"), strict_parsing=True)
            if len(fields.get("payload", ())) != 1:
                raise ValueError("no payload field")
            payload = json.loads(fields["payload"][0])
        else:
            payload = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WebhookError(f"{title} push webhook: the body is not a JSON payload", status=400) from None
    if not isinstance(payload, dict):
        raise WebhookError(f"{title} push webhook: the payload is not a JSON object", status=400)
    return payload


def _read_push(provider: str, payload: dict[str, Any]) -> PushEvent:
    title = _TITLES[provider]
    ref = payload.get("ref")
    if not isinstance(ref, str) or not ref:
        raise WebhookError(f"{title} push webhook: the payload has no 'ref'", status=400)
    urls: list[str] = []
    for section, names in _URL_FIELDS[provider].items():
        block = payload.get(section)
        if isinstance(block, dict):
            urls.extend(block[name] for name in names if isinstance(block.get(name), str) and block[name])
    if not urls:
        raise WebhookError(f"{title} push webhook: the payload names no repository URL", status=400)
    repo = payload.get("project" if provider == GITLAB else "repository")
    default_branch = repo.get("default_branch") if isinstance(repo, dict) else None
    after = payload.get("after")
    return PushEvent(
        provider=provider,
        repo_urls=tuple(dict.fromkeys(urls)),
        ref=ref,
        default_branch=default_branch if isinstance(default_branch, str) and default_branch else None,
        after=after if isinstance(after, str) and after else None,
    )


# ---------------------------------------------------------------------------------------------
# Which Applications a push concerns


def normalise_repo_url(url: str) -> str:
    """A key under which every way of writing one repository's URL compares equal: `host/path`.

    Dropped: the scheme (https, http, ssh, git and scp-like `git@host:org/repo` all name the same
    repository on a forge, as in Argo CD's webhook handler), credentials, a trailing `/` or `.git`,
    and the port — except on loopback hosts, where different ports are different servers (tests
    serve repos on 127.0.0.1:PORT). Lower-cased as a whole: hosts are case-insensitive and GitHub,
    GitLab and Gitea resolve owner/repo without regard to case, while payloads use the canonical
    case and Applications whatever the user typed. A wrong match only costs one extra refresh.
    """
    text = url.strip()
    scp = _SCP.fullmatch(text) if "://" not in text else None
    if scp:
        host, port, path = scp["host"], None, scp["path"]
    else:
        parts = urlsplit(text)
        host, path = parts.hostname or "", parts.path
        try:
            port = parts.port
        except ValueError:
            port = None
        if port == _DEFAULT_PORTS.get(parts.scheme.lower()):
            port = None
        if port is not None and not _is_loopback(host):
            port = None
    path = unquote(path).strip("/")
    if path.lower().endswith(".git"):
        path = path[: -len(".git")].rstrip("/")
    if ":" in host:
        host = f"[{host}]"  # IPv6, so that a port stays distinguishable
    netloc = f"{host}:{port}" if port is not None else host
    return f"{netloc}/{path}".lower()


def _is_loopback(host: str) -> bool:
    host = host.lower()
    return host in _LOOPBACK_NAMES or host.startswith("127.")


def matches(event: PushEvent, repo_url: str, target_revision: str) -> bool:
    """Whether this push can change what an Application with this repoURL and targetRevision deploys.

    A branch push `refs/heads/B` matches targetRevision `B` or `refs/heads/B`, and `HEAD` (or empty)
    when B is the default branch — or when the payload did not say which branch that is, since a
    missed refresh costs more than an extra one. A tag push `refs/tags/T` matches `T` or
    `refs/tags/T`. A bare name matches a branch or a tag of that name, as git would resolve either.
    A full commit SHA never moves, and a deleted ref has nothing to deploy: both never match.
    """
    if event.deleted:
        return False
    revision = target_revision.strip()
    if _FULL_SHA.fullmatch(revision):
        return False
    if normalise_repo_url(repo_url) not in _keys(event.repo_urls):
        return False
    for prefix in ("refs/heads/", "refs/tags/"):
        if event.ref.startswith(prefix):
            name = event.ref[len(prefix):]
            if revision in ("", "HEAD"):
                return prefix == "refs/heads/" and (event.default_branch is None or name == event.default_branch)
            return revision in (name, event.ref)
    return False  # refs/pull/…, refs/merge-requests/…: nothing an Application tracks


def _keys(urls: Iterable[str]) -> set[str]:
    return {normalise_repo_url(url) for url in urls}
