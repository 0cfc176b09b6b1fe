"""pytest fixtures for real git repositories served on loopback (see hack/gitserver.py).

Registered by `pytest_plugins = ["gitfixtures"]` in tests/conftest.py; until then a test module
imports the fixtures it uses (`from gitfixtures import git_server, make_repo`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gitserver import GitServer, WorkRepo

MakeRepo = Callable[..., WorkRepo]


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """A git smart-HTTP server on 127.0.0.1 serving bare repos from a temporary directory."""
    with GitServer(tmp_path / "git-server") as server:
        yield server


@pytest.fixture
def make_repo(git_server: GitServer, tmp_path: Path) -> MakeRepo:
    """`make_repo(files, name="app")`: a working repo holding `files`, committed and pushed to
    `git_server` as `git_server.url(name)`; commit more with `.write()`, `.commit()`, `.push()`."""

    def make(files: dict[str, str], name: str = "app", message: str = "initial commit") -> WorkRepo:
        repo = WorkRepo.create(tmp_path / "work" / name, files, remote=git_server.create_repo(name))
        repo.commit(message)
        repo.push()
        return repo

    return make
