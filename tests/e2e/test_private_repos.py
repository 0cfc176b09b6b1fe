"""Private repositories: credentials from labelled Secrets, against git servers on loopback that
require them: basic auth (git's own http-backend) and SSH public keys (tests/e2e/sshgit.py).
Credentials never show in status, events or the controller's log."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path

import pytest
import yaml
from gitserver import GitServer, WorkRepo
from harness import APP_NAMESPACE, App, controller_instead, web_app_files
from sshgit import ClientKey, SshGitServer

pytestmark = pytest.mark.e2e
USER, PASSWORD = "deployer", f"s3cret-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def private_server(tmp_path):
    with GitServer(tmp_path / "private", username=USER, password=PASSWORD) as server:
        yield server


def repository_secret(cluster, name: str, url: str, username: str | None = None, password: str | None = None,
                      secret_type: str = "repository", **fields: str):
    """A Secret in the shape of Argo CD's: `url`, `username`/`password` or other fields (sshPrivateKey)."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    given = {"url": url, "username": username, "password": password, **fields}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": APP_NAMESPACE, "labels": {"gantry.dev/secret-type": secret_type}},
        "data": {key: b64(value) for key, value in given.items() if value is not None},
    }))


def cleanup(cluster, apps: list[App], secrets: list[str]) -> None:
    for app in apps:
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", app.destination, "--wait=false", check=False)
    for secret in secrets:
        cluster.kubectl("delete", "secret", secret, "-n", APP_NAMESPACE, check=False)


def failure_message(app: App) -> str:
    status = app.wait_sync_status("Failed")
    return status["conditions"][0]["message"]


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
            assert failure_message(app) == f"authentication failed for {app.repo_url}"
            assert app.object("deployment", "web") is None
        for app in (good, bare, wrong):
            said = everything_said(app, controller)
            assert PASSWORD not in said and "not-the-password" not in said
    finally:
        cleanup(cluster, [good, bare, wrong], secrets)


def test_a_secret_created_after_the_failure_is_used_at_the_next_retry(cluster, controller, private_server, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    app = private_app(cluster, private_server, tmp_path, f"late-{suffix}")
    secret = f"late-{suffix}"
    try:
        app.apply()
        assert failure_message(app) == f"authentication failed for {app.repo_url}"
        repository_secret(cluster, secret, app.repo_url, USER, PASSWORD)
        # The retry backoff starts at 10 s; the poll interval (which a cached failure would wait
        # out) is 180 s.
        app.wait_synced(app.repo.head, timeout=60)
    finally:
        cleanup(cluster, [app], [secret])


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
        cleanup(cluster, apps, [secret])


@pytest.fixture
def ssh_server(tmp_path):
    key = ClientKey.generate()
    with SshGitServer(tmp_path / "ssh", authorized=[key]) as server:
        yield server, key


def ssh_app(cluster, server: SshGitServer, tmp_path, name: str) -> App:
    repo = WorkRepo.create(tmp_path / name, web_app_files(), remote=server.create_repo(name))
    repo.commit("initial")
    repo.push()
    return App(cluster, name, destination=f"dest-{name}", repo=repo, repo_url=server.url(name))


def test_ssh_private_key_syncs_and_a_wrong_or_missing_one_fails_clearly(cluster, controller, ssh_server, tmp_path):
    server, key = ssh_server
    wrong_key = ClientKey.generate()
    suffix = uuid.uuid4().hex[:6]
    good, wrong, bare = (ssh_app(cluster, server, tmp_path, f"{kind}-ssh-{suffix}") for kind in ("good", "wrong", "bare"))
    secrets = [f"ssh-{suffix}", f"wrong-ssh-{suffix}"]
    try:
        repository_secret(cluster, secrets[0], good.repo_url, sshPrivateKey=key.openssh)
        repository_secret(cluster, secrets[1], wrong.repo_url, sshPrivateKey=wrong_key.openssh)
        for app in (good, wrong, bare):
            app.apply()
        good.wait_synced(good.repo.head)
        assert good.object("deployment", "web") is not None
        assert any(login.accepted and login.fingerprint == key.fingerprint for login in server.logins)

        for app in (wrong, bare):
            assert failure_message(app) == f"authentication failed for {app.repo_url}"
            assert app.object("deployment", "web") is None
        secret_lines = [line for k in (key, wrong_key) for line in k.openssh.splitlines()[1:-1]]
        for app in (good, wrong, bare):
            said = everything_said(app, controller)
            assert not [line for line in secret_lines if line in said]
    finally:
        cleanup(cluster, [good, wrong, bare], secrets)


def test_another_namespaces_applications_cannot_use_a_private_repos_credentials(cluster, controller, private_server,
                                                                               tmp_path):
    """A team serving its own Applications (--app-namespaces) cannot name another team's private
    repository: its Secret serves the controller's namespace, and others only where it says so."""
    suffix = uuid.uuid4().hex[:6]
    team = f"team-{suffix}"
    cluster.kubectl("create", "namespace", team)
    app = private_app(cluster, private_server, tmp_path, f"other-team-{suffix}")
    app.namespace = team
    secret_name = f"repo-{suffix}"
    repository_secret(cluster, secret_name, app.repo_url, USER, PASSWORD)
    try:
        with controller_instead(cluster, controller, tmp_path, "--app-namespaces", team) as instead:
            app.apply()
            message = failure_message(app)
            assert message == (f"{app.repo_url} is a private repository whose credentials (Secret "
                               f"{APP_NAMESPACE}/{secret_name}) Applications in namespace {team!r} may not use: an "
                               f"administrator can list {team} in that Secret's gantry.dev/app-namespaces annotation")
            assert app.object("deployment", "web") is None
            cluster.kubectl("annotate", "secret", secret_name, "-n", APP_NAMESPACE,
                            f"gantry.dev/app-namespaces={team}")
            app.refresh()
            app.wait_synced(app.repo.head)
            assert PASSWORD not in everything_said(app, instead)
    finally:
        cleanup(cluster, [app], [secret_name])
        cluster.kubectl("delete", "applications.gantry.dev", "--all", "-n", team, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", team, "--wait=false", check=False)


def controller_cache(controller) -> Path:
    return Path(controller.args[controller.args.index("--cache-dir") + 1])


def team_b_with_a_secret(cluster, private_server, tmp_path, suffix: str) -> tuple[App, str]:
    """Team-b's private app, synced: its repo holds a Secret, and the controller caches its clone."""
    team_b = private_app(cluster, private_server, tmp_path, f"team-b-{suffix}")
    team_b.push({"k8s/secret.yaml": yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                                                    "stringData": {"password": "team-b-only"}}),
                 "k8s/kustomization.yaml": "resources:\n- deployment.yaml\n- service.yaml\n- config.yaml\n"
                                           "- secret.yaml\n"}, message="a secret")
    secret_name = f"repo-{suffix}"
    repository_secret(cluster, secret_name, team_b.repo_url, USER, PASSWORD)
    team_b.apply()
    team_b.wait_synced(team_b.repo.head)
    return team_b, secret_name


def cached_clone(controller, app) -> Path:
    """The controller's cached clone of app's repository (its path is the URL's hash)."""
    (clone,) = [path for path in (controller_cache(controller) / "git" / "repos").iterdir()
                if path.name == hashlib.sha256(app.repo_url.encode()).hexdigest()[:32]]
    return clone


def synced_team_a(make_app):
    """An app of team-a, synced; and its Deployment's resourceVersion, to see that nothing touches it."""
    team_a = make_app()
    team_a.apply()
    team_a.wait_synced(team_a.repo.head)
    return team_a, team_a.object("deployment", "web")["metadata"]["resourceVersion"]


def test_a_kustomization_cannot_read_another_teams_cached_clone(cluster, controller, private_server, git_server,
                                                                make_app, tmp_path):
    """The cached clone of team-b's private repo is a file:// URL or a path away on the controller's
    disk; a kustomization of team-a that names it is refused, whatever field names it, and what
    team-a runs stays as it was."""
    suffix = uuid.uuid4().hex[:6]
    team_b, secret_name = team_b_with_a_secret(cluster, private_server, tmp_path, suffix)
    try:
        clone = cached_clone(controller, team_b)
        team_a, web = synced_team_a(make_app)
        for field, entry in (("resources", f"file://{clone}//k8s?ref=main"), ("components", f"{clone}/k8s"),
                             ("generators", f"git::file://{clone}//k8s?ref=main")):
            team_a.push({"k8s/kustomization.yaml": f"resources:\n- deployment.yaml\n- service.yaml\n- config.yaml\n"
                                                   f"{'' if field == 'resources' else field + ':' + chr(10)}- {entry}\n"},
                        message=f"read team-b through {field}")
            team_a.refresh()
            status = team_a.wait(lambda s: (s.get("sync") or {}).get("revision") == team_a.repo.head
                                 and s["sync"]["status"] == "Failed", f"Failed at the {field} commit")
            message = status["conditions"][0]["message"]
            assert message.startswith(f"k8s/kustomization.yaml:{5 if field == 'resources' else 6}: {field} entry "
                                      f"{entry!r}: kustomize remote bases on the controller's filesystem are not "
                                      f"allowed"), message
            assert team_a.object("secret", "db") is None
            assert team_a.object("deployment", "web")["metadata"]["resourceVersion"] == web
        assert team_b.object("secret", "db") is not None
        assert "team-b-only" not in controller.log()
    finally:
        cleanup(cluster, [team_b], [secret_name])


def test_an_application_cannot_name_another_teams_cached_clone_as_its_repository(cluster, controller, private_server,
                                                                                 make_app, tmp_path):
    """The same clone named as the Application's own repoURL (file:// or a path): refused by the
    spec, before git is read, and what the app runs stays as it was."""
    suffix = uuid.uuid4().hex[:6]
    team_b, secret_name = team_b_with_a_secret(cluster, private_server, tmp_path, suffix)
    try:
        clone = cached_clone(controller, team_b)
        team_a, web = synced_team_a(make_app)
        for url in (clone.as_uri(), f"file:{clone}"):
            team_a.apply(repo_url=url)
            status = team_a.wait(lambda s: (s.get("sync") or {}).get("status") == "Failed"
                                 and url in (s.get("conditions") or [{}])[0].get("message", ""), f"Failed for {url}")
            condition = status["conditions"][0]
            assert condition["type"] == "InvalidSpecError", condition
            assert condition["message"] == (f"spec.source.repoURL {url!r}: repositories on the controller's filesystem "
                                            f"are not allowed (other apps' cached clones are there); serve it over "
                                            f"https://, ssh:// or git://"), condition
            assert team_a.object("secret", "db") is None
            assert team_a.object("deployment", "web")["metadata"]["resourceVersion"] == web
        assert "team-b-only" not in controller.log()
    finally:
        cleanup(cluster, [team_b], [secret_name])


def test_a_remote_base_never_gets_another_repositorys_credentials(cluster, controller, private_server, make_app,
                                                                  tmp_path):
    """Remote bases over the network are allowed (as in Argo CD), but kustomize fetches them with
    no credentials of the controller's: team-b's private repo, named as a base, is not readable."""
    suffix = uuid.uuid4().hex[:6]
    team_b, secret_name = team_b_with_a_secret(cluster, private_server, tmp_path, suffix)
    try:
        team_a = make_app()
        team_a.push({"k8s/kustomization.yaml": "resources:\n- deployment.yaml\n- service.yaml\n- config.yaml\n"
                                               f"- {team_b.repo_url}//k8s?ref=main\n"}, message="team-b as a base")
        team_a.apply()
        message = failure_message(team_a)
        assert message.startswith("k8s/kustomization.yaml: kustomize build failed:"), message
        assert team_b.repo_url in message and "could not read Username" in message, message
        assert team_a.object("secret", "db") is None and team_a.object("deployment", "web") is None
        assert PASSWORD not in everything_said(team_a, controller)
    finally:
        cleanup(cluster, [team_b], [secret_name])
