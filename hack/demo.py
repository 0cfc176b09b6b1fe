"""`make demo`: the example app deployed by Gantry on the local control plane, left running.

Brings nothing up itself but the demo's own processes (the cluster comes from `make cluster-up`):
a git server on loopback serving examples/krampoline as a repository, and the controller. Both
are recorded in .cluster/pids, so `make cluster-down` stops them with the cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import localcluster  # noqa: I001  (hack/ is on the path when run as a script)
from gitserver import WorkRepo, init_bare

ROOT = localcluster.ROOT
EXAMPLE = ROOT / "examples" / "krampoline"
DEMO = localcluster.STATE / "demo"


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run([str(localcluster.BIN / "kubectl"), "--kubeconfig", str(localcluster.KUBECONFIG), *args],
                            input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"demo: kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def serve_example() -> str:
    """Publish examples/krampoline as a git repo on a loopback HTTP server; returns its URL."""
    repos = DEMO / "repos"
    if not (repos / "krampoline.git").exists():
        init_bare(repos / "krampoline.git")
        work = DEMO / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("application.yaml", "README.md"))
        repo = WorkRepo.create(work, remote=repos / "krampoline.git")
        repo.commit("krampoline: initial import")
        repo.push()
    port_file = DEMO / "git-port"
    if not localcluster.running("git-server"):
        port = localcluster.free_port()
        localcluster.start("git-server", [sys.executable, str(ROOT / "hack" / "gitserver.py"), "serve",
                                          str(repos), str(port)])
        port_file.write_text(str(port))
    return f"http://127.0.0.1:{port_file.read_text().strip()}/krampoline.git"


def start_controller() -> None:
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/applications.gantry.dev", "--timeout=60s")
    if not kubectl("get", "namespace", "gantry", "--ignore-not-found", "-o", "name"):
        kubectl("create", "namespace", "gantry")
    if localcluster.running("controller"):
        return
    port, webhook_port = localcluster.free_port(), localcluster.free_port()
    (DEMO / "metrics-port").write_text(str(port))
    (DEMO / "webhook-port").write_text(str(webhook_port))
    localcluster.start("controller", [
        sys.executable, "-m", "controller.operator", "--kubeconfig", str(localcluster.KUBECONFIG),
        "--namespace", "gantry", "--cache-dir", str(DEMO / "cache"),
        "--kustomize", str(localcluster.BIN / "kustomize"),
        "--metrics-address", f"127.0.0.1:{port}", "--webhook-address", f"127.0.0.1:{webhook_port}",
        "--ui-address", "",  # the demo's UI is `gantry ui`: no sign-in, the kubeconfig's identity
    ], cwd=ROOT)


def start_ui() -> str:
    """`gantry ui` on loopback, as a user runs it; its URL."""
    if not localcluster.running("ui"):
        port = localcluster.free_port()
        (DEMO / "ui-port").write_text(str(port))
        localcluster.start("ui", [sys.executable, "-m", "controller.cli", "--kubeconfig", str(localcluster.KUBECONFIG),
                                  "-n", "gantry", "ui", "--port", str(port)], cwd=ROOT)
    return f"http://127.0.0.1:{(DEMO / 'ui-port').read_text().strip()}/"


def main() -> int:
    DEMO.mkdir(parents=True, exist_ok=True)
    url = serve_example()
    start_controller()
    application = (EXAMPLE / "application.yaml").read_text().replace("REPO_URL", url)
    kubectl("apply", "-f", "-", stdin=application)
    print(f"Application krampoline applied (repo {url}); waiting for Synced and Healthy ...", flush=True)
    deadline = time.monotonic() + 180
    status: dict = {}
    while time.monotonic() < deadline:
        status = json.loads(kubectl("get", "applications.gantry.dev", "krampoline", "-n", "gantry", "-o", "json"))
        status = status.get("status") or {}
        if (status.get("sync") or {}).get("status") == "Synced" and (status.get("health") or {}).get("status") == "Healthy":
            break
        time.sleep(1)
    else:
        print(kubectl("get", "apps", "-A", "-o", "wide"))
        sys.exit(f"demo: krampoline did not become Synced and Healthy in 180s: {status.get('message')}\n"
                 f"controller log: {localcluster.LOGS / 'controller.log'}")
    print(kubectl("get", "apps", "-A", "-o", "wide"))
    print(kubectl("get", "deployments,statefulsets,services,pvc,ingress", "-n", "krampoline"))
    ui = start_ui()
    print(f"""The demo keeps running. Explore it:
  open {ui} in a browser: the web UI (as the kubeconfig's user)
  source {localcluster.STATE / 'env'}          # kubectl and KUBECONFIG for this shell
  kubectl get apps -n gantry -o wide
  kubectl -n krampoline scale deployment/backend --replicas=3   # drift: Gantry undoes it in seconds
Controller log: {localcluster.LOGS / 'controller.log'}
Metrics: curl http://127.0.0.1:{(DEMO / 'metrics-port').read_text().strip()}/metrics
Webhook: POST http://127.0.0.1:{(DEMO / 'webhook-port').read_text().strip()}/api/webhook
Stop everything: make cluster-down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
