"""Private repositories: credentials from labelled Secrets, against a git server that requires
basic auth (git's own http-backend on loopback). Credentials never show in status or events."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import yaml
from gitserver import GitServer, WorkRepo
from harness import APP_NAMESPACE, App, web_app_files

pytestmark = pytest.mark.e2e
USER, PASSWORD = "deployer", f"s3cret-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def private_server(tmp_path):
    with GitServer(tmp_path / "private", username=USER, password=PASSWORD) as server:
        yield server


def repository_secret(cluster, name: str, url: str, username: str, password: str, secret_type: str = "repository"):
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": APP_NAMESPACE, "labels": {"gantry.dev/secret-type": secret_type}},
        "data": {"url": b64(url), "username": b64(username), "password": b64(password)},
    }))


def private_app(cluster, server: GitServer, tmp_path, name: str) -> App:
    server.create_repo(name)
    repo = WorkRepo.create(tmp_path / name, web_app_files(), remote=server.url(name, credentials=True))
    repo.commit("initial")
    repo.push()
    return App(cluster, name, destination=f"dest-{name}", repo=repo, repo_url=server.url(name))


def everything_said(app: App, controller) -> str:
    """Status, events and the controller's log: where a leaked password would show."""
    return json.dumps(app.get()) + json.dumps(app.events()) + controller.log()


def test_private_repo_syncs_with_credentials_and_fails_clearly_without(cluster, controller, private_server, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    good = private_app(cluster, private_server, tmp_path, f"private-{suffix}")
    bare = private_app(cluster, private_server, tmp_path, f"nocreds-{suffix}")
    wrong = private_app(cluster, private_server, tmp_path, f"wrong-{suffix}")
    secrets = [f"repo-{suffix}", f"wrong-{suffix}"]
    try:
        repository_secret(cluster, secrets[0], good.repo_url, USER, PASSWORD)
        repository_secret(cluster, secrets[1], wrong.repo_url, USER, "not-the-password")
        for app in (good, bare, wrong):
            app.apply()
        good.wait_synced(good.repo.head)
        assert good.object("deployment", "web") is not None

        for app in (bare, wrong):
            status = app.wait_sync_status("Failed")
            message = status["conditions"][0]["message"]
            assert message.startswith("authentication failed for"), message
            assert app.repo_url in message
            assert app.object("deployment", "web") is None
        for app in (good, bare, wrong):
            said = everything_said(app, controller)
            assert PASSWORD not in said and "not-the-password" not in said
    finally:
        for app in (good, bare, wrong):
            cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--wait=false", check=False)
            cluster.kubectl("delete", "namespace", app.destination, "--wait=false", check=False)
        for secret in secrets:
            cluster.kubectl("delete", "secret", secret, "-n", APP_NAMESPACE, check=False)


def test_one_prefix_secret_serves_every_repo_under_it(cluster, controller, private_server, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    apps = [private_app(cluster, private_server, tmp_path, f"org-{suffix}-{i}") for i in range(2)]
    secret = f"org-{suffix}"
    try:
        prefix = f"http://127.0.0.1:{private_server.port}"
        repository_secret(cluster, secret, prefix, USER, PASSWORD, secret_type="repo-creds")
        for app in apps:
            app.apply()
        for app in apps:
            app.wait_synced(app.repo.head)
    finally:
        for app in apps:
            cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--wait=false", check=False)
            cluster.kubectl("delete", "namespace", app.destination, "--wait=false", check=False)
        cluster.kubectl("delete", "secret", secret, "-n", APP_NAMESPACE, check=False)
