"""controller.source against real git: repos served over smart HTTP and over SSH on loopback, and file:// repos."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gitfixtures import git_server, make_repo  # noqa: F401  (fixtures, until conftest registers the plugin)
from gitserver import GitServer, WorkRepo, git, init_bare
from sshgit import ClientKey, SshGitServer

from controller.model import SourceError
from controller.source import GitCache, RepoCredentials, redact_url

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {value!r}\n"


@dataclass
class Remote:
    url: str
    repo: WorkRepo  # the developer's working copy, pushing to `url`


@pytest.fixture(params=["http", "file"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    """A repo with one commit on `main`, served over HTTP on loopback or as a file:// URL."""
    files = {"k8s/configmap.yaml": CONFIGMAP.format(name="app", value="1")}
    if request.param == "http":
        server: GitServer = request.getfixturevalue("git_server")
        repo = request.getfixturevalue("make_repo")(files)
        return Remote(server.url("app"), repo)
    bare = init_bare(tmp_path / "bare" / "app.git")
    repo = WorkRepo.create(tmp_path / "work", files, remote=bare)
    repo.commit("initial commit")
    repo.push()
    return Remote(bare.as_uri(), repo)


@pytest.fixture
def cache(tmp_path: Path) -> GitCache:
    return GitCache(tmp_path / "cache", min_fetch_interval=60, timeout=30)


def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Resolving revisions


def test_resolves_head_branches_tags_and_shas(remote: Remote, cache: GitCache):
    repo = remote.repo
    first = repo.head
    repo.tag("v1")  # lightweight
    second = repo.commit("second")
    repo.branch("feature", start=first)
    feature = repo.commit("on feature")
    repo.tag("v2", message="annotated release")
    repo.switch("main")
    repo.push()
    annotated_object = repo.git("rev-parse", "v2")
    assert annotated_object != feature  # the tag object, which must peel to the commit

    assert cache.resolve(remote.url) == second
    assert cache.resolve(remote.url, "HEAD") == second
    assert cache.resolve(remote.url, "main") == second
    assert cache.resolve(remote.url, "feature") == feature
    assert cache.resolve(remote.url, "v1") == first
    assert cache.resolve(remote.url, "v2") == feature
    assert cache.resolve(remote.url, first) == first
    assert cache.resolve(remote.url, first[:7]) == first
    assert cache.resolve(remote.url, first.upper()) == first
    assert cache.resolve(remote.url, "refs/heads/feature") == feature


def test_head_follows_the_remote_default_branch(tmp_path: Path, cache: GitCache):
    bare = init_bare(tmp_path / "app.git", default_branch="trunk")
    repo = WorkRepo.create(tmp_path / "work", {"a.txt": "a"}, remote=bare, branch="trunk")
    trunk = repo.commit()
    repo.branch("release")
    release = repo.commit("release")
    repo.push()
    assert cache.resolve(bare.as_uri()) == trunk
    git("symbolic-ref", "HEAD", "refs/heads/release", cwd=bare)
    assert cache.resolve(bare.as_uri(), refresh=True) == release


def test_new_commit_is_seen_only_after_refresh(remote: Remote, cache: GitCache):
    before = cache.resolve(remote.url, "main")
    remote.repo.write({"k8s/configmap.yaml": CONFIGMAP.format(name="app", value="2")})
    after = remote.repo.commit("change the value")
    remote.repo.push()

    assert cache.resolve(remote.url, "main") == before  # the fetch of a moment ago is reused
    assert cache.fetch_count(remote.url) == 1
    assert cache.resolve(remote.url, "main", refresh=True) == after
    assert cache.fetch_count(remote.url) == 2


def test_new_commit_is_seen_after_min_fetch_interval(remote: Remote, tmp_path: Path):
    cache = GitCache(tmp_path / "cache", min_fetch_interval=2.0)
    before = cache.resolve(remote.url)
    fetched = time.monotonic()
    remote.repo.write({"new.txt": "new"})
    after = remote.repo.commit("add a file")
    remote.repo.push()
    if time.monotonic() - fetched < 1.5:  # the push was quick enough to still be inside the interval
        assert cache.resolve(remote.url) == before
    time.sleep(max(0.0, 2.1 - (time.monotonic() - fetched)))
    assert cache.resolve(remote.url) == after


def test_commit_reached_by_no_branch_or_tag_is_fetched_by_its_full_sha(remote: Remote, cache: GitCache):
    main = cache.resolve(remote.url)
    remote.repo.branch("pr")
    pull_request = remote.repo.commit("proposed change")
    remote.repo.push(f"{pull_request}:refs/pull/1/head")  # as a forge keeps pull requests
    with pytest.raises(SourceError, match="not found"):
        cache.resolve(remote.url, pull_request[:10])  # an abbreviation cannot be asked for
    assert cache.resolve(remote.url, pull_request) == pull_request
    assert cache.resolve(remote.url, "main") == main


def test_full_sha_already_in_the_cache_needs_no_fetch(remote: Remote, cache: GitCache):
    sha = cache.resolve(remote.url)
    count = cache.fetch_count(remote.url)
    assert cache.resolve(remote.url, sha, refresh=True) == sha
    assert cache.fetch_count(remote.url) == count


def test_last_fetch_is_recorded(remote: Remote, cache: GitCache):
    assert cache.last_fetch(remote.url) is None
    before = time.time()
    cache.resolve(remote.url)
    stamp = cache.last_fetch(remote.url)
    assert stamp is not None and before <= stamp <= time.time()


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("revision", ["nope", "v9.9.9", "feature/missing", "0" * 40, "deadbeef", "main~1", "--upload-pack=x"])
def test_unknown_revision_is_a_permanent_error(remote: Remote, cache: GitCache, revision: str):
    with pytest.raises(SourceError) as caught:
        cache.resolve(remote.url, revision)
    assert str(caught.value) == (
        f"revision {revision!r} not found in {remote.url}: no branch, tag or commit of that name"
    )
    assert not caught.value.transient


def test_unreachable_repo_is_a_transient_error(cache: GitCache):
    url = f"http://127.0.0.1:{closed_port()}/app.git"
    with pytest.raises(SourceError) as caught:
        cache.resolve(url)
    message = str(caught.value)
    assert caught.value.transient
    assert message.startswith(f"cannot reach {url}: ")
    assert "connect" in message.lower()
    assert "\n" not in message


def test_missing_file_repo_is_a_transient_error(tmp_path: Path, cache: GitCache):
    url = (tmp_path / "nowhere.git").as_uri()
    with pytest.raises(SourceError) as caught:
        cache.resolve(url)
    assert caught.value.transient
    assert str(caught.value).startswith(f"cannot reach {url}: ")
    assert "does not appear to be a git repository" in str(caught.value)


def test_server_that_never_answers_times_out(tmp_path: Path):
    with socket.socket() as silent:  # accepts connections (backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/app.git"
        cache = GitCache(tmp_path / "cache", timeout=2)
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            cache.resolve(url)
    assert time.monotonic() - started < 20
    assert caught.value.transient
    assert str(caught.value).startswith(f"cannot reach {url}: ")


def test_a_failed_fetch_is_shared_by_the_callers_that_waited_on_it(cache: GitCache):
    url = f"http://127.0.0.1:{closed_port()}/app.git"
    errors: list[SourceError] = []

    def resolve() -> None:
        try:
            cache.resolve(url)
        except SourceError as error:
            errors.append(error)

    threads = [threading.Thread(target=resolve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4 and all(e.transient for e in errors)
    assert cache.fetch_count(url) == 1


def test_a_failed_fetch_is_tried_again_at_the_next_resolve(cache: GitCache):
    url = f"http://127.0.0.1:{closed_port()}/app.git"
    for _ in range(2):
        with pytest.raises(SourceError):
            cache.resolve(url)  # within a moment of the failure: the same error, no new fetch
    assert cache.fetch_count(url) == 1
    time.sleep(1.1)
    with pytest.raises(SourceError):
        cache.resolve(url)  # not a minute later (the cache's min_fetch_interval is 60 s)
    assert cache.fetch_count(url) == 2
    with pytest.raises(SourceError):
        cache.resolve(url, refresh=True)  # a refresh never settles for an earlier failure
    assert cache.fetch_count(url) == 3


def test_after_a_failure_the_next_fetch_is_not_skipped_for_the_interval(tmp_path: Path, cache: GitCache):
    bare = init_bare(tmp_path / "srv" / "app.git")
    repo = WorkRepo.create(tmp_path / "work", {"a.txt": "a"}, remote=bare)
    repo.commit()
    repo.push()
    assert cache.resolve(bare.as_uri(), "main") == repo.head
    bare.rename(bare.with_name("away.git"))  # the server goes down ...
    with pytest.raises(SourceError, match="^cannot reach"):
        cache.resolve(bare.as_uri(), "main", refresh=True)
    bare.with_name("away.git").rename(bare)  # ... comes back, and a push lands
    newer = repo.commit("after the outage")
    repo.push()
    time.sleep(1.1)
    # The last good fetch is seconds old, well inside min_fetch_interval, yet older than the failure.
    assert cache.resolve(bare.as_uri(), "main") == newer


# ---------------------------------------------------------------------------------------------
# Credentials


@pytest.fixture
def private(tmp_path: Path) -> Iterator[tuple[GitServer, str]]:
    with GitServer(tmp_path / "private", username="deployer", password="s3cr3t-Pa55") as server:
        repo = WorkRepo.create(tmp_path / "work", {"k8s/a.yaml": "a: 1\n"}, remote=server.create_repo("app"))
        sha = repo.commit()
        repo.push()
        yield server, sha


def test_right_credentials_from_the_hook_work(private, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    server, sha = private
    asked: list[str] = []

    def credentials(url: str) -> tuple[str, str] | None:
        asked.append(url)
        return ("deployer", "s3cr3t-Pa55")

    cache = GitCache(tmp_path / "cache", credentials=credentials)
    with caplog.at_level(logging.DEBUG):
        assert cache.resolve(server.url("app")) == sha
    assert asked and all(url == server.url("app") for url in asked)
    assert {r.user for r in server.requests if r.status == 200} == {"deployer"}
    assert "s3cr3t-Pa55" not in caplog.text  # GitPython logs every command line at debug level
    stored = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not [p for p in stored if b"s3cr3t-Pa55" in p.read_bytes()]


def test_credentials_in_the_url_work_and_are_never_stored(private, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    server, sha = private
    cache = GitCache(tmp_path / "cache")
    with caplog.at_level(logging.DEBUG):
        assert cache.resolve(server.url("app", credentials=True)) == sha
    assert "s3cr3t-Pa55" not in caplog.text
    stored = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not [p for p in stored if b"s3cr3t-Pa55" in p.read_bytes()]


@pytest.mark.parametrize("given", [("deployer", "wrong-Pa55"), ("intruder", "s3cr3t-Pa55"), None])
def test_wrong_or_missing_credentials_fail_as_authentication(
    private, tmp_path: Path, given, caplog: pytest.LogCaptureFixture
):
    server, _ = private
    cache = GitCache(tmp_path / "cache", credentials=lambda url: given)
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError) as caught:
        cache.resolve(server.url("app"))
    message = str(caught.value)
    assert message == f"authentication failed for {server.url('app')}"
    assert caught.value.transient  # a Secret added or rotated later fixes it: worth retrying
    for secret in ("wrong-Pa55", "s3cr3t-Pa55"):
        assert secret not in message and secret not in caplog.text
    # The server notes a request once its answer is sent, which may be after git has exited.
    assert eventually(lambda: any(r.status == 401 for r in server.requests))


def test_wrong_password_in_the_url_is_not_shown(private, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    server, _ = private
    url = server.url("app", credentials=True).replace("s3cr3t-Pa55", "wrong-Pa55")
    cache = GitCache(tmp_path / "cache")
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError) as caught:
        cache.resolve(url)
    assert str(caught.value) == f"authentication failed for {server.url('app')}"
    assert "wrong-Pa55" not in caplog.text and "deployer" not in caplog.text


def test_credentials_added_after_a_failure_are_used_at_the_next_try(private, tmp_path: Path):
    server, sha = private
    secret: dict[str, tuple[str, str]] = {}
    # As the controller runs: refs reused for a whole poll interval (180 s there, 60 s here).
    cache = GitCache(tmp_path / "cache", min_fetch_interval=60, credentials=lambda url: secret.get(url))
    with pytest.raises(SourceError, match="^authentication failed for"):
        cache.resolve(server.url("app"))
    secret[server.url("app")] = ("deployer", "s3cr3t-Pa55")  # the repository Secret is created
    time.sleep(1.1)  # the reconcile's first retry comes a few seconds later
    assert cache.resolve(server.url("app")) == sha
    assert cache.fetch_count(server.url("app")) == 2


# ---------------------------------------------------------------------------------------------
# SSH keys: real git over real SSH (tests/e2e/sshgit.py, public-key auth only)


@dataclass
class SshRemote:
    server: SshGitServer
    key: ClientKey  # the one key the server accepts
    sha: str  # main's commit

    @property
    def url(self) -> str:
        return self.server.url("app")


@pytest.fixture
def ssh_remote(tmp_path: Path) -> Iterator[SshRemote]:
    key = ClientKey.generate()
    with SshGitServer(tmp_path / "ssh-server", authorized=[key]) as server:
        repo = WorkRepo.create(tmp_path / "ssh-work", {"k8s/a.yaml": "a: 1\n"}, remote=server.create_repo("app"))
        sha = repo.commit()
        repo.push()
        yield SshRemote(server, key, sha)


def key_body(key: ClientKey) -> str:
    """The secret middle of the key (its first and last lines are the same for every key)."""
    return "".join(key.openssh.strip().splitlines()[1:-1])


def files_holding(root: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_ssh_private_key_from_the_hook_authenticates(ssh_remote: SshRemote, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture):
    asked: list[str] = []

    def credentials(url: str) -> RepoCredentials:
        asked.append(url)
        return RepoCredentials(ssh_private_key=ssh_remote.key.openssh)

    cache = GitCache(tmp_path / "cache", credentials=credentials)
    with caplog.at_level(logging.DEBUG):
        assert cache.resolve(ssh_remote.url) == ssh_remote.sha
        assert (cache.checkout(ssh_remote.url, ssh_remote.sha) / "k8s" / "a.yaml").read_text() == "a: 1\n"
    assert asked == [ssh_remote.url]
    assert {login.fingerprint for login in ssh_remote.server.logins if login.accepted} == {ssh_remote.key.fingerprint}
    assert ssh_remote.server.fetches("app") == 1
    assert key_body(ssh_remote.key) not in caplog.text
    # The key lived in a file only as long as the fetch; what stays is the server's host key.
    assert not files_holding(tmp_path / "cache", key_body(ssh_remote.key))
    (known_hosts,) = (tmp_path / "cache" / "ssh").iterdir()
    assert known_hosts.suffix == ".known_hosts"
    assert f"ssh-ed25519 {ssh_remote.server.host_key.get_base64()}" in known_hosts.read_text()


def test_the_secrets_key_wins_over_an_ssh_command_of_the_host(ssh_remote: SshRemote, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_SSH_COMMAND", "false")  # an ssh of the host's that would fail
    cache = GitCache(tmp_path / "cache", credentials=lambda url: RepoCredentials(ssh_private_key=ssh_remote.key.openssh))
    assert cache.resolve(ssh_remote.url) == ssh_remote.sha


def test_a_key_with_crlf_line_ends_and_no_final_newline_works(ssh_remote: SshRemote, tmp_path: Path):
    written_on_windows = ssh_remote.key.openssh.strip().replace("\n", "\r\n")
    cache = GitCache(tmp_path / "cache", credentials=lambda url: RepoCredentials(ssh_private_key=written_on_windows))
    assert cache.resolve(ssh_remote.url) == ssh_remote.sha


@pytest.mark.parametrize("given", ["another key", "no key", "not a key"])
def test_wrong_or_missing_ssh_key_fails_as_authentication(ssh_remote: SshRemote, tmp_path: Path, given: str,
                                                           caplog: pytest.LogCaptureFixture):
    wrong = ClientKey.generate()
    key = {"another key": wrong.openssh, "no key": None, "not a key": "-----BEGIN NONSENSE-----\nx\n"}[given]
    cache = GitCache(tmp_path / "cache", credentials=lambda url: RepoCredentials(ssh_private_key=key))
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError) as caught:
        cache.resolve(ssh_remote.url)
    assert str(caught.value) == f"authentication failed for {ssh_remote.url}"
    assert caught.value.transient
    assert not any(login.accepted for login in ssh_remote.server.logins)
    if given == "another key":
        assert [login.fingerprint for login in ssh_remote.server.logins] == [wrong.fingerprint]
        assert key_body(wrong) not in caplog.text
    assert not list((tmp_path / "cache" / "ssh").glob(".key-*"))


def test_a_password_in_an_ssh_url_is_dropped_and_never_shown(ssh_remote: SshRemote, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture):
    url = ssh_remote.url.replace("git@", "git:pa55word@")
    key = {"key": ssh_remote.key.openssh}
    cache = GitCache(tmp_path / "cache", credentials=lambda shown: RepoCredentials(ssh_private_key=key["key"]))
    with caplog.at_level(logging.DEBUG):
        assert cache.resolve(url) == ssh_remote.sha  # logged in as `git`, not as `git:pa55word`
        key["key"] = ClientKey.generate().openssh
        with pytest.raises(SourceError) as caught:
            cache.resolve(url, refresh=True)
    assert str(caught.value) == f"authentication failed for {redact_url(url)}"
    assert "pa55word" not in str(caught.value) and "pa55word" not in caplog.text
    assert {login.user for login in ssh_remote.server.logins} == {"git"}


def test_a_changed_host_key_is_refused_unless_the_secret_says_insecure(ssh_remote: SshRemote, tmp_path: Path):
    given = RepoCredentials(ssh_private_key=ssh_remote.key.openssh)
    cache = GitCache(tmp_path / "cache", credentials=lambda url: given)
    assert cache.resolve(ssh_remote.url) == ssh_remote.sha  # first contact: its host key is recorded
    url, port = ssh_remote.url, ssh_remote.server.port
    ssh_remote.server.stop()
    # Another server (another host key) where the first one was: a man in the middle, or a rotation.
    with SshGitServer(tmp_path / "ssh-server", authorized=[ssh_remote.key], port=port) as impostor:
        with pytest.raises(SourceError) as caught:
            cache.resolve(url, refresh=True)
        message = str(caught.value)
        assert message.startswith(f"cannot reach {url}: its SSH host key differs from the one recorded")
        assert 'set insecure: "true" in the repository Secret' in message
        assert impostor.fetches("app") == 0
        given = RepoCredentials(ssh_private_key=ssh_remote.key.openssh, insecure=True)
        assert cache.resolve(url, refresh=True) == ssh_remote.sha
        assert impostor.fetches("app") == 1


def test_unreachable_ssh_repo_says_why(tmp_path: Path, cache: GitCache):
    url = f"ssh://git@127.0.0.1:{closed_port()}/app.git"
    with pytest.raises(SourceError) as caught:
        cache.resolve(url)
    port = url.split(":")[2].split("/")[0]
    assert str(caught.value) == f"cannot reach {url}: ssh: connect to host 127.0.0.1 port {port}: Connection refused"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pa55@example.com/org/repo.git", "https://example.com/org/repo.git"),
        ("https://ghp_token@example.com/org/repo.git", "https://example.com/org/repo.git"),
        ("http://u:p@127.0.0.1:8080/x.git", "http://127.0.0.1:8080/x.git"),
        ("ssh://git@example.com/org/repo.git", "ssh://git@example.com/org/repo.git"),
        ("ssh://git:pa55@example.com/org/repo.git", "ssh://example.com/org/repo.git"),
        ("git@example.com:org/repo.git", "git@example.com:org/repo.git"),
        ("file:///srv/git/app.git", "file:///srv/git/app.git"),
        ("see 'https://a:b@h/x' and https://c:d@h/y", "see 'https://h/x' and https://h/y"),
    ],
)
def test_redact_url(url: str, shown: str):
    assert redact_url(url) == shown


# ---------------------------------------------------------------------------------------------
# One fetch for many Applications


def test_concurrent_resolves_of_one_repo_share_one_fetch(git_server: GitServer, make_repo, cache: GitCache):
    repo = make_repo({"k8s/a.yaml": "a: 1\n"})
    url = git_server.url("app")
    barrier = threading.Barrier(8)
    results: list[str] = []

    def resolve() -> None:
        barrier.wait()
        results.append(cache.resolve(url, "main"))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [repo.head] * 8
    assert cache.fetch_count(url) == 1
    assert git_server.fetches("app") == 1


def test_refresh_always_fetches_again(git_server: GitServer, make_repo, cache: GitCache):
    make_repo({"a.txt": "a"})
    url = git_server.url("app")
    cache.resolve(url)
    cache.resolve(url, refresh=True)
    cache.resolve(url)
    assert git_server.fetches("app") == 2


def test_repos_share_a_clone_per_url(git_server: GitServer, make_repo, cache: GitCache, tmp_path: Path):
    make_repo({"a.txt": "a"}, name="one")
    make_repo({"b.txt": "b"}, name="two")
    cache.resolve(git_server.url("one"))
    cache.resolve(git_server.url("two"))
    cache.resolve(git_server.url("one"), "main")
    assert len(list((tmp_path / "cache" / "repos").iterdir())) == 2


# ---------------------------------------------------------------------------------------------
# Checkout


def tree_files(directory: Path) -> dict[str, bytes | str]:
    """Every file under `directory`: its bytes, or for a symlink `-> target`."""
    files: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_symlink():
            files[name] = f"-> {path.readlink()}"
        elif path.is_file():
            files[name] = path.read_bytes()
    return files


def test_checkout_holds_exactly_the_files_of_the_commit(remote: Remote, cache: GitCache, tmp_path: Path):
    repo = remote.repo
    repo.write({
        "k8s/deployment.yaml": "kind: Deployment\n",
        "k8s/base/kustomization.yaml": "resources: []\n",
        ".gitattributes": "k8s/secret.yaml export-ignore\n",  # `git archive` would drop it
        "k8s/secret.yaml": "kind: Secret\n",
    })
    repo.symlink("k8s/current", "base")
    first = repo.commit("layout")
    repo.delete("k8s/deployment.yaml")
    repo.write({"k8s/service.yaml": "kind: Service\n"})
    second = repo.commit("replace the deployment with a service")
    repo.push()
    assert cache.resolve(remote.url) == second

    for commit in (first, second):
        tree = cache.checkout(remote.url, commit)
        assert tree == tmp_path / "cache" / "trees" / commit
        expected = {}
        for name in repo.git("ls-tree", "-r", "--name-only", commit).splitlines():
            mode = repo.git("ls-tree", commit, name).split()[0]
            blob = subprocess_bytes(repo, f"{commit}:{name}")
            expected[name] = f"-> {blob.decode()}" if mode == "120000" else blob
        assert tree_files(tree) == expected
    assert "k8s/deployment.yaml" in tree_files(cache.checkout(remote.url, first))
    assert "k8s/deployment.yaml" not in tree_files(cache.checkout(remote.url, second))


def subprocess_bytes(repo: WorkRepo, spec: str) -> bytes:
    return subprocess.run(["git", "cat-file", "-p", spec], cwd=repo.path, capture_output=True, check=True).stdout


def test_checkout_is_built_once_and_reused(remote: Remote, cache: GitCache, tmp_path: Path):
    sha = cache.resolve(remote.url)
    tree = cache.checkout(remote.url, sha)
    marker = (tree / "k8s" / "configmap.yaml").stat().st_mtime_ns
    assert cache.checkout(remote.url, sha) == tree
    assert (tree / "k8s" / "configmap.yaml").stat().st_mtime_ns == marker
    assert sorted(p.name for p in (tmp_path / "cache" / "trees").iterdir()) == [sha]  # no temp leftovers


def test_concurrent_checkouts_of_one_commit_agree(remote: Remote, cache: GitCache):
    sha = cache.resolve(remote.url)
    barrier = threading.Barrier(6)
    trees: list[Path] = []

    def checkout() -> None:
        barrier.wait()
        trees.append(cache.checkout(remote.url, sha))

    threads = [threading.Thread(target=checkout) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(trees) == 6 and len(set(trees)) == 1
    assert (trees[0] / "k8s" / "configmap.yaml").read_text() == CONFIGMAP.format(name="app", value="1")


def test_checkout_fetches_a_commit_it_does_not_have_yet(remote: Remote, cache: GitCache):
    sha = remote.repo.head
    assert (cache.checkout(remote.url, sha) / "k8s" / "configmap.yaml").is_file()


def test_checkout_of_an_unknown_commit_fails(remote: Remote, cache: GitCache):
    with pytest.raises(SourceError, match="not found"):
        cache.checkout(remote.url, "1" * 40)
    with pytest.raises(SourceError, match="full commit SHA"):
        cache.checkout(remote.url, "main")


def test_empty_repo_has_no_default_branch(git_server: GitServer, cache: GitCache):
    git_server.create_repo("empty")
    with pytest.raises(SourceError) as caught:
        cache.resolve(git_server.url("empty"))
    assert str(caught.value) == f"{git_server.url('empty')} has no default branch (is the repository empty?)"
    assert caught.value.transient


def test_a_commits_author_date_and_subject_are_known_for_the_status(remote: Remote, cache: GitCache):
    commit = cache.resolve(remote.url)
    metadata = cache.revision_metadata(remote.url, commit)
    assert metadata["author"] == "Gantry Tests" and metadata["message"] == "initial commit"
    assert metadata["date"][:4].isdigit() and "T" in metadata["date"]
    assert cache.revision_metadata(remote.url, "0" * 40) == {}, "a commit git does not know: nothing, no error"
