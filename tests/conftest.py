"""Fixtures shared by every test: the cluster (once per run) and a fresh namespace per test.

The cluster is the one named by $KUBECONFIG when set (a kind cluster, say); otherwise the local
control plane of hack/localcluster.py, brought up on first use and stopped at the end of the run
if this run started it. Unit tests never touch these fixtures and so never start a cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# hack/ (the local cluster launcher, the git server) and the tests' helper modules are plain
# folders, not packages; pytest's importlib mode puts nothing on the path by itself.
sys.path.insert(0, str(ROOT / "hack"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import localcluster  # noqa: E402  (hack/ is not a package; it is put on the path just above)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    bin_dir: Path  # kubectl, kustomize and helm of the pinned versions
    local: bool  # our local control plane (fake KWOK nodes), not a user's cluster

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin, capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def api_client(self):
        from kubernetes import client, config

        return config.new_client_from_config(str(self.kubeconfig))


@pytest.fixture(scope="session")
def kustomize() -> Path:
    """The pinned, Go-built kustomize binary (built into ~/.cache/gantry on first use)."""
    return localcluster.Binaries.build_one("kustomize") / "kustomize"


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned, Go-built helm binary (built into ~/.cache/gantry on first use)."""
    return localcluster.Binaries.build_one("helm") / "helm"


@pytest.fixture(scope="session")
def crane() -> Path:
    """The pinned, Go-built crane binary (its `crane registry serve` is the tests' OCI registry)."""
    return localcluster.Binaries.build_one("crane") / "crane"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    binaries = localcluster.Binaries.build()
    binaries.link_into(localcluster.BIN)
    if os.environ.get("KUBECONFIG"):
        yield Cluster(Path(os.environ["KUBECONFIG"]), localcluster.BIN, local=False)
        return
    started_here = not localcluster.is_up()
    localcluster.up()
    try:
        yield Cluster(localcluster.KUBECONFIG, localcluster.BIN, local=True)
    finally:
        if started_here and not os.environ.get("GANTRY_KEEP_CLUSTER"):
            localcluster.down()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own, deleted (without waiting) when the test ends."""
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the namespace's `default` ServiceAccount exists.
    cluster.kubectl("wait", "--for=create", f"--namespace={name}", "serviceaccount/default", "--timeout=60s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
