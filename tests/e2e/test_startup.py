"""A controller that cannot start says why on one line and exits: a port in use, a kubeconfig that
is broken or names no running server, a ServiceAccount without rights on Applications, a cache
directory it cannot create. The real process, against the real control plane; none of these gets
as far as watching Applications, so the session's controller is not needed, nor stopped.

The Application CRD missing is not tested here: deleting it would delete every Application of the
tests running beside these. tests/unit/test_startup.py covers that answer of the API server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import APP_NAMESPACE, ROOT, token_kubeconfig
from localcluster import free_port

pytestmark = pytest.mark.e2e

PREFIX = "gantry-controller: cannot start: "
EXIT_CODE = 2
WITHIN = 20.0  # seconds: a controller that is still up by then has not seen its failure


@pytest.fixture(scope="module")
def crd(cluster) -> None:
    """The CRD and the namespace served, as the session's controller has them: so that the checks
    after them are the ones that fail."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/applications.gantry.dev", "--timeout=60s")
    if cluster.kubectl("get", "namespace", APP_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", APP_NAMESPACE)


def run_controller(cluster, tmp_path: Path, *args: str, kubeconfig: Path | None = None) -> tuple[int, str]:
    """The controller with `args` after the usual ones (a later flag wins), run until it exits;
    returns its exit code and the last line of its stderr. Fails if it is still up after WITHIN s."""
    argv = [sys.executable, "-m", "controller.operator", "--kubeconfig", str(kubeconfig or cluster.kubeconfig),
            "--namespace", APP_NAMESPACE, "--cache-dir", str(tmp_path / "cache"),
            "--kustomize", str(cluster.bin_dir / "kustomize"),
            "--metrics-address", f"127.0.0.1:{free_port()}", "--webhook-address", f"127.0.0.1:{free_port()}",
            "--ui-address", f"127.0.0.1:{free_port()}", *args]
    started = time.monotonic()
    try:
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=WITHIN,
                                env={**os.environ, "PATH": f"{cluster.bin_dir}:{os.environ['PATH']}"})
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        pytest.fail(f"the controller was still running after {WITHIN:.0f}s; its stderr:\n{stderr or ''}")
    print(f"exited {result.returncode} after {time.monotonic() - started:.1f}s; stderr:\n{result.stderr}")
    lines = result.stderr.strip().splitlines()
    return result.returncode, lines[-1] if lines else ""


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("flag", ["--metrics-address", "--webhook-address"])
def test_a_port_in_use_ends_the_controller_with_one_line(cluster, tmp_path, taken_port, flag):
    code, last = run_controller(cluster, tmp_path, flag, f"127.0.0.1:{taken_port}")
    assert code == EXIT_CODE
    assert last == (f"{PREFIX}cannot listen on {flag}=127.0.0.1:{taken_port}: Address already in use; "
                    f"stop what listens there or pass another {flag}")


def test_a_kubeconfig_that_does_not_parse_ends_the_controller(cluster, tmp_path):
    kubeconfig = tmp_path / "broken.kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nclusters: [{name: local, cluster: {server: https://x}\n")
    code, last = run_controller(cluster, tmp_path, kubeconfig=kubeconfig)
    assert code == EXIT_CODE
    assert last.startswith(f"{PREFIX}cannot load the kubeconfig {kubeconfig}: ")
    assert last.endswith("; pass a valid one with --kubeconfig or $KUBECONFIG")


def test_a_kubeconfig_naming_a_closed_port_ends_the_controller(cluster, tmp_path):
    closed = free_port()  # nothing listens there once free_port has closed its socket
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{closed}"
    kubeconfig = tmp_path / "closed.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    code, last = run_controller(cluster, tmp_path, kubeconfig=kubeconfig)
    assert code == EXIT_CODE
    assert last == (f"{PREFIX}cannot reach the API server at https://127.0.0.1:{closed}: Connection refused; "
                    "check that the cluster is up and that the kubeconfig names its server")


def test_a_service_account_without_rights_on_applications_ends_the_controller(cluster, crd, tmp_path):
    account = f"no-rights-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "serviceaccount", account, "-n", APP_NAMESPACE)
    try:
        kubeconfig = token_kubeconfig(cluster, APP_NAMESPACE, account, tmp_path / "sa.kubeconfig")
        code, last = run_controller(cluster, tmp_path, kubeconfig=kubeconfig)
    finally:
        cluster.kubectl("delete", "serviceaccount", account, "-n", APP_NAMESPACE, check=False)
    assert code == EXIT_CODE
    assert last == (f"{PREFIX}system:serviceaccount:{APP_NAMESPACE}:{account} may not list applications.gantry.dev, "
                    f"watch applications.gantry.dev, patch applications.gantry.dev/status in namespace {APP_NAMESPACE}; "
                    "grant them as deploy/ does (deploy/README.md lists every rule)")


def test_a_failure_in_kopfs_startup_handler_ends_the_controller(cluster, crd, tmp_path):
    # The git cache is made in the startup handler, which kopf would retry for ever.
    cache = tmp_path / "not-a-directory"
    cache.write_text("")
    code, last = run_controller(cluster, tmp_path, "--cache-dir", str(cache))
    assert code == EXIT_CODE
    assert last == (f"{PREFIX}cannot use --cache-dir {cache}: Not a directory: {cache}/git/repos; "
                    "pass a directory the controller can write")
