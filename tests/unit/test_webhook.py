"""controller/webhook.py: GitHub, GitLab and Gitea/Forgejo push deliveries, signed with hmac as the
providers sign them, verified before they are read; repo URL normalisation; which apps a push matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import io
import json
from urllib.parse import urlencode

import pytest

from controller.model import AppSpec
from controller.webhook import (
    PushEvent,
    WebhookError,
    WebhookIgnored,
    WebhookSecrets,
    matches,
    normalise_repo_url,
    parse,
)

GITHUB_SECRET = "gh-s3cret"
GITLAB_SECRET = "gl-t0ken"
GITEA_SECRET = "gt-s3cret"
SECRETS = WebhookSecrets(github=GITHUB_SECRET, gitlab=GITLAB_SECRET, gitea=GITEA_SECRET)

BEFORE = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
AFTER = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
ZEROS = "0" * 40


# ---------------------------------------------------------------------------------------------
# Payloads in the providers' documented shapes (trimmed, real field names)


def github_push(ref: str = "refs/heads/main", after: str = AFTER, deleted: bool = False) -> dict:
    return {
        "ref": ref,
        "before": BEFORE,
        "after": after,
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/Acme/Shop/compare/{BEFORE[:12]}...{after[:12]}",
        "commits": [] if deleted else [{
            "id": after,
            "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
            "distinct": True,
            "message": "Scale web to 3 replicas",
            "timestamp": "2024-05-02T10:15:00+02:00",
            "url": f"https://github.com/Acme/Shop/commit/{after}",
            "author": {"name": "Alice", "email": "alice@example.com", "username": "alice"},
            "committer": {"name": "Alice", "email": "alice@example.com", "username": "alice"},
            "added": [], "removed": [], "modified": ["k8s/deployment.yaml"],
        }],
        "head_commit": None,
        "repository": {
            "id": 35129377,
            "node_id": "MDEwOlJlcG9zaXRvcnkzNTEyOTM3Nw==",
            "name": "Shop",
            "full_name": "Acme/Shop",
            "private": True,
            "owner": {"name": "Acme", "login": "Acme", "id": 21031067},
            "html_url": "https://github.com/Acme/Shop",
            "url": "https://github.com/Acme/Shop",
            "git_url": "git://github.com/Acme/Shop.git",
            "ssh_url": "git@github.com:Acme/Shop.git",
            "clone_url": "https://github.com/Acme/Shop.git",
            "svn_url": "https://github.com/Acme/Shop",
            "default_branch": "main",
            "master_branch": "main",
        },
        "pusher": {"name": "alice", "email": "alice@example.com"},
        "sender": {"login": "alice", "id": 6752317, "type": "User"},
    }


def github_ping() -> dict:
    return {
        "zen": "Design for failure.",
        "hook_id": 109948940,
        "hook": {"type": "Repository", "id": 109948940, "name": "web", "active": True, "events": ["push"],
                 "config": {"content_type": "json", "insecure_ssl": "0", "url": "https://gantry.example.com/api/webhook"}},
        "repository": github_push()["repository"],
        "sender": {"login": "alice", "id": 6752317},
    }


def gitlab_push(ref: str = "refs/heads/main", after: str = AFTER, kind: str = "push") -> dict:
    project = {
        "id": 15,
        "name": "Shop",
        "description": "",
        "web_url": "https://gitlab.example.com/acme/platform/shop",
        "avatar_url": None,
        "git_ssh_url": "git@gitlab.example.com:acme/platform/shop.git",
        "git_http_url": "https://gitlab.example.com/acme/platform/shop.git",
        "namespace": "platform",
        "visibility_level": 0,
        "path_with_namespace": "acme/platform/shop",
        "default_branch": "main",
        "homepage": "https://gitlab.example.com/acme/platform/shop",
        "url": "git@gitlab.example.com:acme/platform/shop.git",
        "ssh_url": "git@gitlab.example.com:acme/platform/shop.git",
        "http_url": "https://gitlab.example.com/acme/platform/shop.git",
    }
    return {
        "object_kind": kind,
        "event_name": kind,
        "before": BEFORE,
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if after == ZEROS else after,
        "user_id": 4,
        "user_name": "Alice",
        "user_username": "alice",
        "project_id": 15,
        "project": project,
        "commits": [],
        "total_commits_count": 0,
        "repository": {
            "name": "Shop",
            "url": "git@gitlab.example.com:acme/platform/shop.git",
            "description": "",
            "homepage": "https://gitlab.example.com/acme/platform/shop",
            "git_http_url": "https://gitlab.example.com/acme/platform/shop.git",
            "git_ssh_url": "git@gitlab.example.com:acme/platform/shop.git",
            "visibility_level": 0,
        },
    }


def gitea_push(ref: str = "refs/heads/main", after: str = AFTER, host: str = "gitea.example.com") -> dict:
    return {
        "ref": ref,
        "before": BEFORE,
        "after": after,
        "compare_url": f"https://{host}/acme/shop/compare/{BEFORE}...{after}",
        "commits": [{
            "id": after,
            "message": "Scale web to 3 replicas\n",
            "url": f"https://{host}/acme/shop/commit/{after}",
            "author": {"name": "Alice", "email": "alice@example.com", "username": "alice"},
            "committer": {"name": "Alice", "email": "alice@example.com", "username": "alice"},
            "timestamp": "2024-05-02T10:15:00+02:00",
            "added": [], "removed": [], "modified": ["k8s/deployment.yaml"],
        }],
        "total_commits": 1,
        "repository": {
            "id": 1,
            "owner": {"id": 1, "login": "acme", "username": "acme"},
            "name": "shop",
            "full_name": "acme/shop",
            "private": False,
            "fork": False,
            "html_url": f"https://{host}/acme/shop",
            "ssh_url": f"git@{host}:acme/shop.git",
            "clone_url": f"https://{host}/acme/shop.git",
            "default_branch": "main",
        },
        "pusher": {"id": 1, "login": "alice", "username": "alice"},
        "sender": {"id": 1, "login": "alice", "username": "alice"},
    }


# ---------------------------------------------------------------------------------------------
# Deliveries: headers as each provider sends them, signed with the secret


def body_of(payload: dict) -> bytes:
    return json.dumps(payload, indent=2).encode()


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(body: bytes, event: str = "push", secret: str = GITHUB_SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/8e03811",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-GitHub-Event": event,
        "X-GitHub-Hook-ID": "109948940",
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": "sha256=" + hmac_hex(secret, body),
    }


def gitlab_headers(event: str = "Push Hook", token: str = GITLAB_SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.0.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Webhook-UUID": "2b2a3c1e-0f35-4c4b-9a0e-8f3a1b5d6c7e",
        "X-Gitlab-Token": token,
    }


def gitea_headers(body: bytes, event: str = "push", secret: str = GITEA_SECRET) -> dict[str, str]:
    # Gitea also sends Gogs- and GitHub-compatible headers, signed with the *Gitea* secret.
    signature = hmac_hex(secret, body)
    return {
        "Content-Type": "application/json",
        "X-Gitea-Delivery": "a1b2c3d4-0000-4000-8000-000000000001",
        "X-Gitea-Event": event,
        "X-Gitea-Event-Type": event,
        "X-Gitea-Signature": signature,
        "X-Gogs-Delivery": "a1b2c3d4-0000-4000-8000-000000000001",
        "X-Gogs-Event": event,
        "X-Gogs-Signature": signature,
        "X-GitHub-Delivery": "a1b2c3d4-0000-4000-8000-000000000001",
        "X-GitHub-Event": event,
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": "sha256=" + signature,
    }


def forgejo_headers(body: bytes, event: str = "push", secret: str = GITEA_SECRET) -> dict[str, str]:
    signature = hmac_hex(secret, body)
    return {
        **gitea_headers(body, event, secret),
        "X-Forgejo-Delivery": "a1b2c3d4-0000-4000-8000-000000000001",
        "X-Forgejo-Event": event,
        "X-Forgejo-Event-Type": event,
        "X-Forgejo-Signature": signature,
    }


def refused(headers, body, secrets=SECRETS) -> WebhookError:
    with pytest.raises(WebhookError) as caught:
        parse(headers, body, secrets)
    assert not isinstance(caught.value, WebhookIgnored)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Valid deliveries


def test_github_push_is_verified_and_read():
    body = body_of(github_push())
    event = parse(github_headers(body), body, SECRETS)
    assert event == PushEvent(
        provider="github",
        repo_urls=("https://github.com/Acme/Shop", "https://github.com/Acme/Shop.git",
                   "git@github.com:Acme/Shop.git", "git://github.com/Acme/Shop.git"),
        ref="refs/heads/main",
        default_branch="main",
        after=AFTER,
    )
    assert not event.deleted
    assert str(event) == f"github push refs/heads/main ({AFTER[:12]}) to https://github.com/Acme/Shop"


def test_gitlab_push_and_tag_push_are_verified_and_read():
    body = body_of(gitlab_push())
    event = parse(gitlab_headers(), body, SECRETS)
    assert (event.provider, event.ref, event.default_branch, event.after) == ("gitlab", "refs/heads/main", "main", AFTER)
    assert set(event.repo_urls) == {
        "https://gitlab.example.com/acme/platform/shop",
        "https://gitlab.example.com/acme/platform/shop.git",
        "git@gitlab.example.com:acme/platform/shop.git",
    }

    body = body_of(gitlab_push(ref="refs/tags/v1.2.0", kind="tag_push"))
    event = parse(gitlab_headers("Tag Push Hook"), body, SECRETS)
    assert event.ref == "refs/tags/v1.2.0"


@pytest.mark.parametrize("make_headers", [gitea_headers, forgejo_headers], ids=["gitea", "forgejo"])
def test_gitea_and_forgejo_push_are_verified_and_read(make_headers):
    body = body_of(gitea_push())
    event = parse(make_headers(body), body, SECRETS)
    assert event == PushEvent(
        provider="gitea",
        repo_urls=("https://gitea.example.com/acme/shop", "https://gitea.example.com/acme/shop.git",
                   "git@gitea.example.com:acme/shop.git"),
        ref="refs/heads/main",
        default_branch="main",
        after=AFTER,
    )


def test_forgejo_without_gitea_compatibility_headers_is_verified_by_its_own_signature():
    body = body_of(gitea_push(host="codeberg.org"))
    headers = {k: v for k, v in forgejo_headers(body).items() if not k.startswith(("X-Gitea", "X-Gogs"))}
    assert parse(headers, body, SECRETS).provider == "gitea"


def test_gitea_is_not_taken_for_github_despite_its_compatibility_headers():
    # Gitea sends X-GitHub-Event and X-Hub-Signature-256 too; with only the gitea secret set, the
    # delivery must be verified as Gitea's, not refused for want of a GitHub secret.
    body = body_of(gitea_push())
    event = parse(gitea_headers(body), body, WebhookSecrets(gitea=GITEA_SECRET))
    assert event.provider == "gitea"
    # …and a Gitea delivery is not accepted on the strength of the GitHub secret.
    err = refused(gitea_headers(body, secret=GITHUB_SECRET), body, WebhookSecrets(github=GITHUB_SECRET))
    assert err.status == 401


def test_header_names_are_case_insensitive_including_the_real_http_message():
    body = body_of(github_push())
    headers = github_headers(body)
    assert parse({k.lower(): v for k, v in headers.items()}, body, SECRETS).provider == "github"
    assert parse({k.upper(): v for k, v in headers.items()}, body, SECRETS).provider == "github"
    # What BaseHTTPRequestHandler.headers is: an http.client.HTTPMessage parsed from the wire.
    raw = "".join(f"{k.lower()}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    message = http.client.parse_headers(io.BytesIO(raw.encode("latin-1")))
    assert parse(message, body, SECRETS).ref == "refs/heads/main"


def test_upper_case_hex_signature_is_accepted():
    body = body_of(github_push())
    headers = github_headers(body)
    headers["X-Hub-Signature-256"] = "sha256=" + hmac_hex(GITHUB_SECRET, body).upper()
    assert parse(headers, body, SECRETS).provider == "github"


def test_github_form_encoded_delivery_is_read():
    # GitHub's webhook form defaults to application/x-www-form-urlencoded: the JSON is in `payload`.
    body = urlencode({"payload": json.dumps(github_push(ref="refs/tags/v2"))}).encode()
    headers = {**github_headers(body), "Content-Type": "application/x-www-form-urlencoded"}
    assert parse(headers, body, SECRETS).ref == "refs/tags/v2"


# ---------------------------------------------------------------------------------------------
# 401: nothing unverified gets through


def test_wrong_github_signature_is_401_and_does_not_leak_the_expected_one():
    body = body_of(github_push())
    err = refused(github_headers(body, secret="not-the-secret"), body)
    assert err.status == 401
    assert "X-Hub-Signature-256" in str(err)
    assert hmac_hex(GITHUB_SECRET, body) not in str(err) and GITHUB_SECRET not in str(err)


def test_tampered_body_is_401():
    signed = body_of(github_push(ref="refs/heads/main"))
    tampered = body_of(github_push(ref="refs/heads/evil"))
    assert refused(github_headers(signed), tampered).status == 401
    signed = body_of(gitea_push())
    tampered = signed.replace(b"gitea.example.com", b"gitea.evil.example")
    assert refused(gitea_headers(signed), tampered).status == 401
    assert refused(forgejo_headers(signed), tampered).status == 401


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea", "forgejo"])
def test_missing_signature_is_401(provider):
    body = body_of(gitlab_push() if provider == "gitlab" else github_push() if provider == "github" else gitea_push())
    headers = {
        "github": lambda: github_headers(body),
        "gitlab": lambda: gitlab_headers(),
        "gitea": lambda: gitea_headers(body),
        "forgejo": lambda: forgejo_headers(body),
    }[provider]()
    for name in ("X-Hub-Signature-256", "X-Gitlab-Token", "X-Gitea-Signature", "X-Forgejo-Signature"):
        headers.pop(name, None)
    err = refused(headers, body)
    assert err.status == 401
    assert "header" in str(err)


def test_github_sha1_signature_alone_is_not_enough():
    body = body_of(github_push())
    headers = github_headers(body)
    del headers["X-Hub-Signature-256"]
    assert "X-Hub-Signature" in headers  # the SHA-1 one is still there
    assert refused(headers, body).status == 401


def test_wrong_or_missing_gitlab_token_is_401():
    body = body_of(gitlab_push())
    assert refused(gitlab_headers(token="gl-t0ke"), body).status == 401
    assert refused(gitlab_headers(token=GITLAB_SECRET + " "), body).status == 401
    assert refused(gitlab_headers(token=""), body).status == 401


def test_non_ascii_signature_is_401_not_a_crash():
    body = body_of(github_push())
    headers = github_headers(body)
    headers["X-Hub-Signature-256"] = "sha256=é" + "0" * 63
    assert refused(headers, body).status == 401
    assert refused(gitlab_headers(token="tökén\udcff"), body_of(gitlab_push())).status == 401


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea"])
def test_no_secret_configured_refuses_even_a_correctly_signed_delivery(provider):
    body = body_of(gitea_push() if provider == "gitea" else gitlab_push() if provider == "gitlab" else github_push())
    headers = {"github": github_headers(body), "gitlab": gitlab_headers(), "gitea": gitea_headers(body)}[provider]
    others = {"github": GITHUB_SECRET, "gitlab": GITLAB_SECRET, "gitea": GITEA_SECRET}
    others.pop(provider)
    err = refused(headers, body, WebhookSecrets(**others))
    assert err.status == 401
    assert "unsigned" in str(err) and f"'{provider}'" in str(err) and "gantry-webhook" in str(err)


def test_an_empty_secret_counts_as_none():
    # An HMAC keyed with "" is something anyone can compute: it must not be taken as configured.
    body = body_of(github_push())
    err = refused(github_headers(body, secret=""), body, WebhookSecrets(github=""))
    assert err.status == 401 and "unsigned" in str(err)
    assert refused(gitlab_headers(token=""), body_of(gitlab_push()), WebhookSecrets(gitlab="")).status == 401


def test_signature_is_checked_before_the_body_is_parsed():
    body = b"{not json"
    assert refused(github_headers(b"something else"), body).status == 401
    assert refused(gitlab_headers(token="wrong"), body).status == 401
    # …and before the event type is acted on: an unsigned ping is no pong.
    ping = body_of(github_ping())
    assert refused(github_headers(ping, event="ping", secret="wrong"), ping).status == 401


# ---------------------------------------------------------------------------------------------
# 400: verified but not a push payload, or not a webhook at all


@pytest.mark.parametrize("body", [
    b"{not json",
    b"",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'"refs/heads/main"',
    b"[" * 100_000 + b"]" * 100_000,  # deep nesting must not escape as RecursionError
], ids=["broken", "empty", "not-utf8", "array", "string", "deeply-nested"])
def test_malformed_json_with_a_valid_signature_is_400(body):
    assert refused(github_headers(body), body).status == 400
    assert refused(gitea_headers(body), body).status == 400
    assert refused(gitlab_headers(), body).status == 400


@pytest.mark.parametrize("payload", [
    {k: v for k, v in github_push().items() if k != "ref"},
    {**github_push(), "ref": 7},
    {**github_push(), "repository": {"name": "Shop"}},
    {k: v for k, v in github_push().items() if k != "repository"},
], ids=["no-ref", "ref-not-string", "no-urls", "no-repository"])
def test_push_payload_missing_fields_is_400(payload):
    body = body_of(payload)
    assert refused(github_headers(body), body).status == 400


def test_form_encoded_delivery_without_payload_is_400():
    body = b"other=1"
    headers = {**github_headers(body), "Content-Type": "application/x-www-form-urlencoded"}
    assert refused(headers, body).status == 400


def test_request_from_no_known_provider_is_400():
    body = body_of(github_push())
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + hmac_hex(GITHUB_SECRET, body)}
    err = refused(headers, body)
    assert err.status == 400
    assert "X-GitHub-Event" in str(err)


# ---------------------------------------------------------------------------------------------
# Verified events that refresh nothing


def test_github_ping_answers_pong_and_refreshes_nothing():
    body = body_of(github_ping())
    with pytest.raises(WebhookIgnored) as caught:
        parse(github_headers(body, event="ping"), body, SECRETS)
    assert caught.value.status == 200 and str(caught.value) == "pong"
    assert isinstance(caught.value, WebhookError)  # one except clause serves the caller


@pytest.mark.parametrize("headers_for", [
    lambda body: github_headers(body, event="pull_request"),
    lambda body: gitlab_headers("Merge Request Hook"),
    lambda body: gitlab_headers("System Hook"),
    lambda body: gitea_headers(body, event="create"),
    lambda body: forgejo_headers(body, event="issues"),
], ids=["github-pull_request", "gitlab-merge-request", "gitlab-system-hook", "gitea-create", "forgejo-issues"])
def test_other_verified_events_are_ignored_with_202(headers_for):
    body = body_of({"action": "opened", "number": 1})
    with pytest.raises(WebhookIgnored) as caught:
        parse(headers_for(body), body, SECRETS)
    assert caught.value.status == 202
    assert "only push events" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# The Secret


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_secrets_from_kubernetes_secret_data():
    secrets = WebhookSecrets.from_secret_data(
        {"github": b64(GITHUB_SECRET + "\n"), "gitlab": b64(GITLAB_SECRET), "gitea": b64(""), "other": b64("x")}
    )
    assert secrets == WebhookSecrets(github=GITHUB_SECRET, gitlab=GITLAB_SECRET, gitea=None)
    assert WebhookSecrets.from_secret_data({}) == WebhookSecrets()
    assert WebhookSecrets.from_secret_data(None) == WebhookSecrets()
    # …and a delivery signed with the decoded secret is accepted.
    body = body_of(github_push())
    assert parse(github_headers(body), body, secrets).provider == "github"


def test_secrets_never_show_in_repr_or_errors():
    secrets = WebhookSecrets(github=GITHUB_SECRET, gitlab=GITLAB_SECRET, gitea=GITEA_SECRET)
    assert all(s not in repr(secrets) for s in (GITHUB_SECRET, GITLAB_SECRET, GITEA_SECRET))
    unreadable = WebhookSecrets.from_secret_data({"gitlab": "not base64 %%%"})
    error = refused(gitlab_headers(), body_of(gitlab_push()), unreadable)
    assert "'gitlab'" in str(error) and "%%%" not in str(error)


@pytest.mark.parametrize("value", [
    "not base64 %%%",
    base64.b64encode(b"\xff\xfe latin-1 \xe9").decode(),  # base64, but not of UTF-8 text
    42,  # not even a string
])
def test_an_unreadable_secret_value_refuses_only_its_provider(value):
    secrets = WebhookSecrets.from_secret_data({"gitlab": value, "github": b64(GITHUB_SECRET)})
    assert secrets.gitlab is None and secrets.unreadable == {"gitlab"}
    error = refused(gitlab_headers(), body_of(gitlab_push()), secrets)
    assert error.status == 401
    assert "key 'gitlab' of Secret gantry-webhook is not base64-encoded UTF-8 text" in str(error)
    # …while the other providers' deliveries still go through.
    body = body_of(github_push())
    assert parse(github_headers(body), body, secrets).provider == "github"


# ---------------------------------------------------------------------------------------------
# normalise_repo_url

SAME_REPO = [
    "https://github.com/acme/shop",
    "https://github.com/acme/shop.git",
    "https://github.com/acme/shop/",
    "https://github.com/acme/shop.git/",
    "https://GitHub.com/Acme/Shop.git",
    "  https://github.com/acme/shop  ",
    "https://user:p4ss@github.com/acme/shop.git",
    "https://x-access-token@github.com/acme/shop",
    "https://github.com:443/acme/shop",
    "https://github.com:8443/acme/shop",  # ports only distinguish servers on loopback
    "http://github.com/acme/shop",
    "ssh://git@github.com/acme/shop.git",
    "ssh://git@github.com:22/acme/shop",
    "ssh://git@github.com:2222/acme/shop",
    "git@github.com:acme/shop.git",
    "git@github.com:acme/shop",
    "git@github.com:/acme/shop.git",
    "git://github.com/acme/shop.git",
    "https://github.com/acme/shop%2Egit",
]


@pytest.mark.parametrize("url", SAME_REPO)
def test_normalise_writes_one_repo_one_way(url):
    assert normalise_repo_url(url) == "github.com/acme/shop"


@pytest.mark.parametrize("url,key", [
    ("http://127.0.0.1:8080/app.git", "127.0.0.1:8080/app"),
    ("http://user:pw@127.0.0.1:8080/app/", "127.0.0.1:8080/app"),
    ("http://localhost:3000/Acme/Shop.git", "localhost:3000/acme/shop"),
    ("http://[::1]:8080/app.git", "[::1]:8080/app"),
    ("http://127.0.0.1/app.git", "127.0.0.1/app"),
    ("http://127.0.0.1:80/app.git", "127.0.0.1/app"),
    ("https://gitlab.example.com/acme/platform/shop.git", "gitlab.example.com/acme/platform/shop"),
    ("git@gitlab.example.com:acme/platform/shop.git", "gitlab.example.com/acme/platform/shop"),
])
def test_normalise_keeps_loopback_ports_and_subgroups(url, key):
    assert normalise_repo_url(url) == key


@pytest.mark.parametrize("a,b", [
    ("https://github.com/acme/shop", "https://github.com/acme/shop-config"),
    ("https://github.com/acme/shop", "https://github.com/other/shop"),
    ("https://github.com/acme/shop", "https://gitlab.com/acme/shop"),
    ("https://gitlab.example.com/acme/platform/shop", "https://gitlab.example.com/acme/shop"),
    ("http://127.0.0.1:8080/app.git", "http://127.0.0.1:8081/app.git"),
    ("http://127.0.0.1:8080/app.git", "http://127.0.0.2:8080/app.git"),
])
def test_normalise_keeps_different_repos_apart(a, b):
    assert normalise_repo_url(a) != normalise_repo_url(b)


# ---------------------------------------------------------------------------------------------
# matches

GH = "https://github.com/Acme/Shop"
GH_URLS = ("https://github.com/Acme/Shop", "https://github.com/Acme/Shop.git", "git@github.com:Acme/Shop.git")


def push(ref: str, *, after: str = AFTER, default_branch: str | None = "main", urls=GH_URLS) -> PushEvent:
    return PushEvent(provider="github", repo_urls=urls, ref=ref, default_branch=default_branch, after=after)


MATCHES = [
    # (event, repoURL, targetRevision, expected)
    (push("refs/heads/main"), GH, "main", True),
    (push("refs/heads/main"), GH, "refs/heads/main", True),
    (push("refs/heads/main"), GH, "HEAD", True),
    (push("refs/heads/main"), GH, "", True),
    (push("refs/heads/main"), GH, " main ", True),
    (push("refs/heads/main"), GH, "Main", False),  # refs are case-sensitive
    (push("refs/heads/main"), GH, "develop", False),
    (push("refs/heads/main"), GH, "refs/tags/main", False),
    (push("refs/heads/develop"), GH, "develop", True),
    (push("refs/heads/develop"), GH, "HEAD", False),  # not the default branch
    (push("refs/heads/develop"), GH, "", False),
    (push("refs/heads/develop", default_branch=None), GH, "HEAD", True),  # unknown default: refresh
    (push("refs/heads/feature/x"), GH, "feature/x", True),
    (push("refs/heads/feature/x"), GH, "x", False),
    (push("refs/tags/v1.2.0"), GH, "v1.2.0", True),
    (push("refs/tags/v1.2.0"), GH, "refs/tags/v1.2.0", True),
    (push("refs/tags/v1.2.0"), GH, "refs/heads/v1.2.0", False),
    (push("refs/tags/v1.2.0"), GH, "v1.2", False),
    (push("refs/tags/main"), GH, "HEAD", False),  # a tag never moves HEAD
    (push("refs/heads/main"), GH, AFTER, False),  # a commit SHA never needs a refresh
    (push("refs/heads/main"), GH, AFTER.upper(), False),
    (push("refs/heads/main"), GH, "a" * 64, False),  # SHA-256 repositories
    (push(f"refs/heads/{AFTER}"), GH, AFTER, False),  # git reads 40 hex digits as a commit, not a ref
    (push("refs/heads/main", after=ZEROS), GH, "main", False),  # branch deleted
    (push("refs/heads/main", after=ZEROS), GH, "HEAD", False),
    (push("refs/tags/v1", after=ZEROS), GH, "v1", False),
    (push("refs/heads/main", after="0" * 64), GH, "main", False),
    (push("refs/pull/7/head"), GH, "refs/pull/7/head", False),
    (push("refs/heads/main"), "git@github.com:acme/shop.git", "main", True),  # ssh app, https payload
    (push("refs/heads/main"), "ssh://git@github.com/acme/shop", "HEAD", True),
    (push("refs/heads/main", urls=("git@github.com:Acme/Shop.git",)), "https://github.com/acme/shop.git", "main", True),
    (push("refs/heads/main"), "https://token@github.com/acme/shop.git/", "main", True),
    (push("refs/heads/main"), "https://github.com/Acme/Shop-config", "main", False),
    (push("refs/heads/main"), "https://github.com/Other/Shop", "main", False),
    (push("refs/heads/main"), "https://gitlab.com/Acme/Shop", "main", False),
    (push("refs/heads/main", urls=("http://127.0.0.1:8080/app.git",)), "http://127.0.0.1:8080/app.git", "main", True),
    (push("refs/heads/main", urls=("http://127.0.0.1:8080/app.git",)), "http://127.0.0.1:9090/app.git", "main", False),
]


@pytest.mark.parametrize("event,repo_url,revision,expected", MATCHES,
                         ids=[f"{e.ref}{'-deleted' if e.deleted else ''}:{u}@{r or 'empty'}" for e, u, r, _ in MATCHES])
def test_matches(event, repo_url, revision, expected):
    assert matches(event, repo_url, revision) is expected


def test_a_signed_push_selects_exactly_the_apps_it_concerns():
    """The whole path the route takes: verify, parse, then pick Applications by repoURL and revision."""
    apps = {
        "shop-prod": ("git@github.com:acme/shop.git", "HEAD"),
        "shop-staging": ("https://github.com/acme/shop", "refs/heads/main"),
        "shop-v1": ("https://github.com/acme/shop.git", "v1.0.0"),
        "shop-pinned": ("https://github.com/acme/shop.git", AFTER),
        "shop-dev": ("https://github.com/acme/shop.git", "develop"),
        "billing": ("https://github.com/acme/billing.git", "main"),
    }
    specs = [AppSpec.parse(name, "apps", {"source": {"repoURL": url, "targetRevision": rev}})
             for name, (url, rev) in apps.items()]

    def refreshed(payload: dict) -> set[str]:
        body = body_of(payload)
        event = parse(github_headers(body), body, SECRETS)
        return {spec.name for spec in specs if matches(event, spec.repo_url, spec.target_revision)}

    assert refreshed(github_push()) == {"shop-prod", "shop-staging"}
    assert refreshed(github_push(ref="refs/tags/v1.0.0")) == {"shop-v1"}
    assert refreshed(github_push(ref="refs/heads/develop")) == {"shop-dev"}
    assert refreshed(github_push(ref="refs/heads/develop", after=ZEROS, deleted=True)) == set()
