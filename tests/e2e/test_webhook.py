"""Git push webhooks: a signed push refreshes exactly the matching Application; unsigned, badly
signed, oversized or malformed deliveries refresh nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml
from harness import APP_NAMESPACE, web_app_files

pytestmark = pytest.mark.e2e


@pytest.fixture
def webhook_secret(cluster):
    secret = f"hook-{uuid.uuid4().hex}"
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gantry-webhook", "namespace": APP_NAMESPACE},
        "data": {"github": base64.b64encode(secret.encode()).decode(),
                 "gitlab": base64.b64encode(secret.encode()).decode()},
    }))
    yield secret
    cluster.kubectl("delete", "secret", "gantry-webhook", "-n", APP_NAMESPACE, check=False)


def github_push(repo_url: str, sha: str, branch: str = "main") -> bytes:
    return json.dumps({
        "ref": f"refs/heads/{branch}", "before": "0" * 40, "after": sha,
        "repository": {"full_name": "team/app", "clone_url": repo_url, "html_url": repo_url.removesuffix(".git"),
                       "default_branch": "main"},
        "pusher": {"name": "dev"}, "head_commit": {"id": sha, "message": "change"},
    }).encode()


def post(controller, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(controller.metrics_url + "/api/webhook", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def signed(secret: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": str(uuid.uuid4())}


def test_signed_push_refreshes_only_the_matching_app(make_app, controller, webhook_secret):
    target, other = make_app(), make_app()
    for app in (target, other):
        app.apply()
    for app in (target, other):
        app.wait_synced(app.repo.head)

    new = target.push(web_app_files(replicas=2), message="scale")
    other_new = other.push(web_app_files(replicas=3), message="scale other")
    body = github_push(target.repo_url, new)
    status, answer = post(controller, body, signed(webhook_secret, body))
    assert status == 200, answer
    assert json.loads(answer)["refreshed"] == [f"{APP_NAMESPACE}/{target.name}"]
    target.wait_synced(new, timeout=30)
    assert target.object("deployment", "web")["spec"]["replicas"] == 2
    time.sleep(2)
    assert other.status()["sync"]["revision"] != other_new, "a push to another repo refreshed this app"


def test_unsigned_bad_oversized_and_malformed_deliveries_are_refused(make_app, controller, webhook_secret):
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
