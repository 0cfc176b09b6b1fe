"""End-to-end fixtures: the Application CRD, a real git server on loopback, and the controller
itself running as a separate process against the cluster, as users run it with `make run`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import localcluster
import pytest
from browser import browser, page, page_errors  # noqa: F401  (fixtures: Chromium, a page per test)
from gitserver import GitServer, WorkRepo
from harness import APP_NAMESPACE, App, Controller, web_app_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("git-server")) as server:
        yield server


@pytest.fixture(scope="session")
def controller(cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    if cluster.local and localcluster.running("controller"):
        # `make demo` left its controller running; two controllers on one namespace fight.
        print("stopping the demo's controller for the test run (make demo starts it again)")
        localcluster.stop("controller")
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/applications.gantry.dev", "--timeout=60s")
    if cluster.kubectl("get", "namespace", APP_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", APP_NAMESPACE)
    work = tmp_path_factory.mktemp("controller")
    metrics, webhook, ui = (f"127.0.0.1:{localcluster.free_port()}" for _ in range(3))
    ctl = Controller(cluster, work / "controller.log", [
        "--kubeconfig", str(cluster.kubeconfig), "--namespace", APP_NAMESPACE,
        "--cache-dir", str(work / "cache"), "--kustomize", str(cluster.bin_dir / "kustomize"),
        "--metrics-address", metrics, "--webhook-address", webhook, "--ui-address", ui,
    ], metrics_url=f"http://{metrics}", webhook_url=f"http://{webhook}", ui_url=f"http://{ui}")
    ctl.start()
    ctl.wait_ready()
    yield ctl
    ctl.stop()
    print(f"controller log: {ctl.log_path}")


@pytest.fixture
def make_app(cluster, controller, git_server: GitServer, tmp_path: Path, request: pytest.FixtureRequest):
    """make_app(files) → an App whose repo holds files (committed and pushed, not yet applied)."""
    apps: list[App] = []

    def make(files: dict[str, str] | None = None) -> App:
        suffix = uuid.uuid4().hex[:6]
        base = "".join(c for c in request.node.name.lower().replace("_", "-") if c.isalnum() or c == "-")[:30].strip("-")
        name = f"{base}-{suffix}"
        remote = git_server.create_repo(name)
        repo = WorkRepo.create(tmp_path / f"work-{name}", files or web_app_files(), remote=remote)
        repo.commit("initial")
        repo.push()
        app = App(cluster, name, destination=f"dest-{name}"[:63].rstrip("-"), repo=repo, repo_url=git_server.url(name))
        apps.append(app)
        return app

    yield make
    for app in apps:
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--wait=false",
                        check=False)
        cluster.kubectl("delete", "namespace", app.destination, "--wait=false", check=False)
