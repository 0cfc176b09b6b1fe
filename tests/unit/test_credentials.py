"""controller.credentials: which repository Secret serves which repo URL, and the store that lists them."""

from __future__ import annotations

import base64
import time

import pytest

from controller.credentials import CredentialStore, refusal, select
from controller.kube import KubeApiError
from controller.source import RepoCredentials


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(url: str, name: str | None = None, **fields: str) -> dict:
    """A repository Secret as the API returns it; `username` defaults to its name, to tell them apart."""
    name = name or url
    data = {"url": b64(url), "username": b64(name), **{key: b64(value) for key, value in fields.items()}}
    return {"metadata": {"name": name}, "data": data}


def chosen(secrets: list[dict], repo_url: str) -> str | None:
    """The name of the Secret select() uses for `repo_url` (its username, see secret())."""
    found = select(secrets, repo_url)
    return found.username if found else None


# ---------------------------------------------------------------------------------------------
# select()


def test_exact_match_wins_over_any_prefix():
    secrets = [
        secret("https://git.example.com/", "host"),
        secret("https://git.example.com/org/app-and-more", "longer-but-not-this-repo"),
        secret("https://git.example.com/org/app", "exact"),
        secret("https://git.example.com/org/", "org"),
    ]
    assert chosen(secrets, "https://git.example.com/org/app") == "exact"


@pytest.mark.parametrize("repo_url", [
    "https://git.example.com/org/app",
    "https://git.example.com/org/app.git",
    "https://git.example.com/org/app/",
    "https://GIT.Example.COM/org/app",
    "HTTPS://git.example.com/org/app.git",
])
def test_exact_match_ignores_dot_git_trailing_slash_and_case_of_scheme_and_host(repo_url: str):
    secrets = [secret("https://git.example.com/", "host"), secret("https://git.example.com/org/app.git", "exact")]
    assert chosen(secrets, repo_url) == "exact"


def test_longest_prefix_wins():
    secrets = [
        secret("https://git.example.com", "host"),
        secret("https://git.example.com/org/team/", "team"),
        secret("https://git.example.com/org/", "org"),
    ]
    assert chosen(secrets, "https://git.example.com/org/team/app.git") == "team"
    assert chosen(secrets, "https://git.example.com/org/other.git") == "org"
    assert chosen(secrets, "https://git.example.com/elsewhere/app.git") == "host"


def test_a_prefix_is_a_plain_string_prefix_as_in_argo_cd():
    secrets = [secret("https://git.example.com/org-", "dash"), secret("git@github.com:org/", "scp")]
    assert chosen(secrets, "https://git.example.com/org-app.git") == "dash"
    assert chosen(secrets, "git@github.com:org/app.git") == "scp"
    assert chosen(secrets, "git@github.com:orgs-of-others/app.git") is None


@pytest.mark.parametrize("repo_url", [
    "https://git.example.com/other/app.git",
    "https://other.example.com/org/app.git",
    "http://git.example.com/org/app.git",  # another scheme is another server
    "git@git.example.com:org/app.git",
    "https://git.example.com/organisation",  # `org/` ends at the slash
])
def test_no_matching_secret_gives_none(repo_url: str):
    assert select([secret("https://git.example.com/org/", "org")], repo_url) is None


def test_scheme_and_host_are_case_insensitive_the_path_is_not():
    secrets = [secret("https://Git.Example.com/Org/", "org"), secret("git@GitHub.com:Team/", "scp")]
    assert chosen(secrets, "https://git.example.com/Org/app.git") == "org"
    assert chosen(secrets, "https://git.example.com/org/app.git") is None
    assert chosen(secrets, "git@github.com:Team/app.git") == "scp"
    assert chosen(secrets, "git@github.com:team/app.git") is None
    assert chosen([secret("https://git.example.com/org/App.git", "exact")], "https://git.example.com/org/app") is None


def test_ssh_urls_match_on_their_own_form():
    secrets = [secret("ssh://git@git.example.com:2222/org/", "ssh"), secret("git@git.example.com:org/app.git", "scp")]
    assert chosen(secrets, "ssh://git@git.example.com:2222/org/app.git") == "ssh"
    assert chosen(secrets, "git@git.example.com:org/app") == "scp"
    assert chosen(secrets, "ssh://git@git.example.com:22/org/app.git") is None


def test_user_info_in_either_url_is_ignored():
    # source.py asks with the redacted URL; a Secret's url may carry a user name of its own.
    assert chosen([secret("https://deployer@git.example.com/org/", "org")], "https://git.example.com/org/app") == "org"


def test_fields_are_decoded_into_credentials():
    found = select([
        secret("ssh://git@git.example.com/org/", "ssh", password="pa55", sshPrivateKey="-----BEGIN KEY-----\n", insecure="true"),
    ], "ssh://git@git.example.com/org/app")
    assert found == RepoCredentials(username="ssh", password="pa55", ssh_private_key="-----BEGIN KEY-----\n",
                                    insecure=True)
    assert "pa55" not in repr(found) and "BEGIN" not in repr(found)
    assert select([secret("https://h/org/", insecure="false")], "https://h/org/a").insecure is False
    assert select([secret("https://h/org/")], "https://h/org/a").insecure is False


def test_secrets_without_a_usable_url_are_skipped():
    broken = {"metadata": {"name": "broken"}, "data": {"url": "not base64 !", "password": b64("x")}}
    binary = {"metadata": {"name": "binary"}, "data": {"url": base64.b64encode(b"\xff\xfe").decode()}}
    secrets = [broken, binary, {"metadata": {"name": "empty"}}, secret("https://h/org/", "good")]
    assert chosen(secrets, "https://h/org/app") == "good"


def test_an_undecodable_password_is_no_password():
    bad = secret("https://h/org/", "org")
    bad["data"]["password"] = "%%%"
    assert select([bad], "https://h/org/app") == RepoCredentials(username="org")


# ---------------------------------------------------------------------------------------------
# CredentialStore


class FakeKube:
    """The two KubeClient calls the store makes, answering with `secrets` (or raising `error`)."""

    def __init__(self, secrets: list[dict]) -> None:
        self.secrets = secrets
        self.error: KubeApiError | None = None
        self.lists: list[tuple[str, str]] = []

    def resource(self, api_version: str, kind: str) -> str:
        return f"{api_version}/{kind}"

    def list(self, resource: str, namespace: str, *, label_selector: str) -> dict:
        self.lists.append((namespace, label_selector))
        if self.error is not None:
            raise self.error
        return {"items": list(self.secrets)}


def test_store_lists_the_labelled_secrets_of_its_namespace():
    kube = FakeKube([secret("https://h/org/", "org")])
    store = CredentialStore(kube, "gantry")
    assert store("https://h/org/app").username == "org"
    assert kube.lists == [("gantry", "gantry.dev/secret-type in (repository,repo-creds)")]


def test_store_reuses_its_list_for_known_repos():
    kube = FakeKube([secret("https://h/org/", "org")])
    store = CredentialStore(kube, "gantry", ttl=60)
    for _ in range(5):
        assert store("https://h/org/app").username == "org"
    assert len(kube.lists) == 1


def test_store_looks_again_at_once_for_a_repo_it_has_no_secret_for():
    kube = FakeKube([])
    store = CredentialStore(kube, "gantry", ttl=60)
    assert store("https://h/org/app") is None
    kube.secrets.append(secret("https://h/org/", "org"))  # the Secret is created just after
    time.sleep(0.6)  # a moment later: the store lists at most every half second for this
    assert store("https://h/org/app").username == "org"


def test_store_without_access_to_secrets_gives_none():
    kube = FakeKube([secret("https://h/org/", "org")])
    kube.error = KubeApiError(403, "Forbidden", 'secrets is forbidden: User "x" cannot list resource "secrets"')
    assert CredentialStore(kube, "gantry")("https://h/org/app") is None


# ---------------------------------------------------------------------------------------------
# refusal(): whose Applications may use a repository Secret


def scoped(url: str, name: str, namespaces: str | None) -> dict:
    found = secret(url, name)
    if namespaces is not None:
        found["metadata"]["annotations"] = {"gantry.dev/app-namespaces": namespaces}
    return found


def test_the_controllers_own_applications_may_use_every_secret():
    assert refusal([scoped("https://h/team-b/", "team-b", None)], "https://h/team-b/app", "gantry", "gantry") is None


def test_other_namespaces_use_only_the_secrets_that_list_them():
    secrets = [scoped("https://h/team-a/", "team-a", "team-a, ops"), scoped("https://h/team-b/", "team-b", None),
               scoped("https://h/shared/", "shared", "*")]
    assert refusal(secrets, "https://h/team-a/app", "team-a", "gantry") is None
    assert refusal(secrets, "https://h/team-a/app", "ops", "gantry") is None
    assert refusal(secrets, "https://h/shared/lib", "team-b", "gantry") is None
    message = refusal(secrets, "https://h/team-b/app", "team-a", "gantry")
    assert message == ("https://h/team-b/app is a private repository whose credentials (Secret gantry/team-b) "
                       "Applications in namespace 'team-a' may not use: an administrator can list team-a in that "
                       "Secret's gantry.dev/app-namespaces annotation")
    assert refusal(secrets, "https://h/team-a/app", "team-b", "gantry") is not None


def test_a_public_repository_is_anyones():
    assert refusal([scoped("https://h/team-b/", "team-b", None)], "https://h/public/app", "team-a", "gantry") is None


def test_the_refusal_never_shows_credentials():
    message = refusal([scoped("https://h/b/", "b", None)], "https://user:hunter2@h/b/app", "team-a", "gantry")
    assert "hunter2" not in message and "user" not in message
