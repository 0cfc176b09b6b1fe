"""Git push webhooks: a signed push refreshes exactly the matching Application; unsigned, badly
signed, oversized or malformed deliveries refresh nothing; a flood of the webhook port leaves the
probes answering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

import pytest
import yaml
from harness import APP_NAMESPACE, web_app_files
from slowloris import slowloris

pytestmark = pytest.mark.e2e


@pytest.fixture
def webhook_secrets(cluster) -> dict[str, str]:
    """A different secret per provider, so that each is seen to verify with its own."""
    secrets = {provider: f"{provider}-{uuid.uuid4().hex}" for provider in ("github", "gitlab", "gitea")}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gantry-webhook", "namespace": APP_NAMESPACE},
        "data": {provider: base64.b64encode(secret.encode()).decode() for provider, secret in secrets.items()},
    }))
    yield secrets
    cluster.kubectl("delete", "secret", "gantry-webhook", "-n", APP_NAMESPACE, check=False)


def github_push(repo_url: str, sha: str, branch: str = "main") -> bytes:
    return json.dumps({
        "ref": f"refs/heads/{branch}", "before": "0" * 40, "after": sha,
        "repository": {"full_name": "team/app", "clone_url": repo_url, "html_url": repo_url.removesuffix(".git"),
                       "default_branch": "main"},
        "pusher": {"name": "dev"}, "head_commit": {"id": sha, "message": "change"},
    }).encode()


def gitlab_push(repo_url: str, sha: str, branch: str = "main") -> bytes:
    web_url = repo_url.removesuffix(".git")
    return json.dumps({
        "object_kind": "push", "event_name": "push", "ref": f"refs/heads/{branch}", "before": "0" * 40,
        "after": sha, "checkout_sha": sha, "user_username": "dev",
        "project": {"path_with_namespace": "team/app", "web_url": web_url, "git_http_url": repo_url,
                    "git_ssh_url": "git@gitlab.example.test:team/app.git", "default_branch": "main"},
        "repository": {"name": "app", "url": repo_url, "homepage": web_url, "git_http_url": repo_url},
        "commits": [{"id": sha, "message": "change"}], "total_commits_count": 1,
    }).encode()


def gitea_push(repo_url: str, sha: str, branch: str = "main") -> bytes:
    """What Gitea and Forgejo send alike."""
    return json.dumps({
        "ref": f"refs/heads/{branch}", "before": "0" * 40, "after": sha,
        "repository": {"full_name": "team/app", "clone_url": repo_url, "html_url": repo_url.removesuffix(".git"),
                       "ssh_url": "git@gitea.example.test:team/app.git", "default_branch": "main"},
        "pusher": {"login": "dev"}, "commits": [{"id": sha, "message": "change"}],
    }).encode()


def gitlab_tokened(token: str, _body: bytes) -> dict[str, str]:
    return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token, "X-Gitlab-Event-UUID": str(uuid.uuid4())}


def gitea_signed(secret: str, body: bytes) -> dict[str, str]:
    # Gitea also sends GitHub's and Gogs' headers, for tools that only know those.
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Gitea-Event": "push", "X-Gitea-Signature": digest, "X-Gitea-Delivery": str(uuid.uuid4()),
            "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={digest}", "X-Gogs-Event": "push"}


def forgejo_signed(secret: str, body: bytes) -> dict[str, str]:
    # Forgejo sends its own headers and, for compatibility, Gitea's.
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Forgejo-Event": "push", "X-Forgejo-Signature": digest, "X-Forgejo-Delivery": str(uuid.uuid4()),
            "X-Gitea-Event": "push", "X-Gitea-Signature": digest}


def post(controller, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(controller.webhook_url + "/api/webhook", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def signed(secret: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": str(uuid.uuid4())}


def test_signed_push_refreshes_only_the_matching_app(make_app, controller, webhook_secrets):
    target, other = make_app(), make_app()
    for app in (target, other):
        app.apply()
    for app in (target, other):
        app.wait_synced(app.repo.head)

    new = target.push(web_app_files(replicas=2), message="scale")
    other_new = other.push(web_app_files(replicas=3), message="scale other")
    body = github_push(target.repo_url, new)
    status, answer = post(controller, body, signed(webhook_secrets["github"], body))
    assert status == 200, answer
    assert json.loads(answer)["refreshed"] == [f"{APP_NAMESPACE}/{target.name}"]
    target.wait_synced(new, timeout=30)
    assert target.object("deployment", "web")["spec"]["replicas"] == 2
    time.sleep(2)
    assert other.status()["sync"]["revision"] != other_new, "a push to another repo refreshed this app"


def test_unsigned_bad_oversized_and_malformed_deliveries_are_refused(make_app, controller, webhook_secrets):
    webhook_secret = webhook_secrets["github"]
    app = make_app()
    app.apply()
    first = app.wait_synced(app.repo.head)["sync"]["revision"]
    new = app.push(web_app_files(replicas=2), message="scale")
    body = github_push(app.repo_url, new)

    status, _ = post(controller, body, {"X-GitHub-Event": "push"})
    assert status == 401
    status, _ = post(controller, body, signed("not-the-secret", body))
    assert status == 401
    status, _ = post(controller, body, signed(webhook_secret, body.replace(b"main", b"mainx")))
    assert status == 401  # signature of another body
    status, _ = post(controller, body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"})
    assert status == 401
    malformed = b'{"ref": "refs/heads/main", '
    status, _ = post(controller, malformed, signed(webhook_secret, malformed))
    assert status == 400
    huge = b" " * (2 << 20)
    status, _ = post(controller, huge, signed(webhook_secret, huge))
    assert status == 400

    time.sleep(2)
    assert app.status()["sync"]["revision"] == first, "a refused delivery refreshed the app"


@pytest.mark.parametrize(("payload", "headers", "provider"), [
    (gitlab_push, gitlab_tokened, "gitlab"),
    (gitea_push, gitea_signed, "gitea"),
    (gitea_push, forgejo_signed, "gitea"),  # Forgejo's secret is the Secret's `gitea` key
], ids=["gitlab", "gitea", "forgejo"])
def test_gitlab_gitea_and_forgejo_pushes_refresh_the_matching_app(make_app, controller, webhook_secrets,
                                                                   payload, headers, provider):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    new = app.push(web_app_files(replicas=2), message="scale")
    body = payload(app.repo_url, new)

    # Signed with another provider's secret: refused, as each provider has a secret of its own.
    wrong = next(secret for name, secret in webhook_secrets.items() if name != provider)
    status, _ = post(controller, body, headers(wrong, body))
    assert status == 401

    status, answer = post(controller, body, headers(webhook_secrets[provider], body))
    assert status == 200, answer
    assert json.loads(answer)["refreshed"] == [f"{APP_NAMESPACE}/{app.name}"]
    app.wait_synced(new, timeout=30)
    assert app.object("deployment", "web")["spec"]["replicas"] == 2


def test_a_push_to_another_branch_refreshes_nothing(make_app, controller, git_server, webhook_secrets):
    app = make_app()
    app.apply()  # targetRevision HEAD: the default branch, main
    first = app.wait_synced(app.repo.head)["sync"]["revision"]
    # main moves without a webhook saying so: a refresh, and only a refresh, would deploy it now
    # (the last fetch is reused for the poll interval, minutes).
    new_main = app.push(web_app_files(replicas=2), message="scale main")
    app.repo.branch("feature")
    feature = app.push(web_app_files(replicas=3), message="scale feature")
    app.repo.switch("main")
    fetches = git_server.fetches(app.name)

    body = github_push(app.repo_url, feature, branch="feature")
    status, answer = post(controller, body, signed(webhook_secrets["github"], body))
    assert status == 200, answer
    assert json.loads(answer)["refreshed"] == []
    time.sleep(3)  # what a wrong refresh would have done, it would have begun by now
    assert git_server.fetches(app.name) == fetches, "a push to another branch made the controller fetch"
    assert app.status()["sync"]["revision"] == first, "a push to another branch refreshed the app"

    # The same delivery for main does refresh it.
    body = github_push(app.repo_url, new_main)
    status, answer = post(controller, body, signed(webhook_secrets["github"], body))
    assert status == 200, answer
    assert json.loads(answer)["refreshed"] == [f"{APP_NAMESPACE}/{app.name}"]
    app.wait_synced(new_main, timeout=30)
    assert git_server.fetches(app.name) > fetches
    assert app.object("deployment", "web")["spec"]["replicas"] == 2


def health_status(controller) -> int | str:
    try:
        with urllib.request.urlopen(controller.metrics_url + "/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return type(error).__name__


def test_a_slowloris_on_the_webhook_port_leaves_healthz_answering(make_app, controller, webhook_secrets):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    webhook = urlsplit(controller.webhook_url)
    stop, answers = threading.Event(), []
    attackers = [threading.Thread(target=slowloris, args=((webhook.hostname, webhook.port), stop, answers))
                 for _ in range(40)]
    for attacker in attackers:
        attacker.start()
    health = []
    try:
        # Longer than the webhook's deadline (5 s): slow requests are cut and their slots retaken.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            health.append(health_status(controller))
            time.sleep(0.25)
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join()
    assert health and set(health) == {200}, f"/healthz during the flood: {health}"
    # The flood did fill the webhook's connections, and slow requests were cut at its deadline.
    assert b"HTTP/1.1 503" in answers and b"HTTP/1.1 408" in answers, set(answers)

    # The attackers gone, a signed push is served and deploys.
    new = app.push(web_app_files(replicas=2), message="scale")
    body = github_push(app.repo_url, new)
    deadline = time.monotonic() + 15
    while (result := post(controller, body, signed(webhook_secrets["github"], body)))[0] == 503:
        assert time.monotonic() < deadline, "the webhook still refuses connections after the flood"
        time.sleep(0.2)
    status, answer = result
    assert status == 200, answer
    assert json.loads(answer)["refreshed"] == [f"{APP_NAMESPACE}/{app.name}"]
    app.wait_synced(new, timeout=30)
