"""Test apps for the end-to-end tests: what a team keeps under k8s/ in its repo, and an App
handle to apply an Application for it, change its repo and wait for its status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from gitserver import WorkRepo
from localcluster import free_port

# Where the controller under test serves Applications. Another value lets two test runs share one
# cluster without their controllers fighting over the same Applications.
APP_NAMESPACE = os.environ.get("GANTRY_TEST_APP_NAMESPACE", "gantry")
ROOT = Path(__file__).resolve().parents[2]


def web_app_files(*, replicas: int = 1, image: str = "nginx:1.27", host: str = "shop.example.test") -> dict[str, str]:
    """A Deployment with a readiness probe, its Service, a ConfigMap and an Ingress with a host,
    listed by a kustomization, plus the Dockerfile every app repo has at its root."""
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                     "name": "web", "image": image, "ports": [{"containerPort": 80}],
                     "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
                 }]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80}]}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"},
              "data": {"greeting": "hello"}}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
               "spec": {"rules": [{"host": host, "http": {"paths": [{
                   "path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}
    return {
        "k8s/kustomization.yaml": yaml.safe_dump({"resources": ["deployment.yaml", "service.yaml", "config.yaml", "ingress.yaml"]}),
        "k8s/deployment.yaml": yaml.safe_dump(deployment),
        "k8s/service.yaml": yaml.safe_dump(service),
        "k8s/config.yaml": yaml.safe_dump(config),
        "k8s/ingress.yaml": yaml.safe_dump(ingress),
        "Dockerfile": "FROM nginx:1.27\n",
    }


@dataclass
class App:
    """One Application under test, with its repo and destination namespace."""

    cluster: object
    name: str
    destination: str
    repo: WorkRepo
    repo_url: str
    created: list[str] = field(default_factory=list)
    namespace: str = APP_NAMESPACE  # the Application's own

    def get(self) -> dict:
        return json.loads(self.cluster.kubectl("get", "applications.gantry.dev", self.name, "-n", self.namespace,
                                               "-o", "json").stdout)

    def status(self) -> dict:
        return self.get().get("status") or {}

    def apply(self, *, automated: bool = True, self_heal: bool = True, prune: bool = True,
              finalizer: bool = False, revision: str = "HEAD", repo_url: str | None = None, **extra_spec) -> None:
        spec = {
            "project": "default",
            "source": {"repoURL": repo_url or self.repo_url, "targetRevision": revision, "path": "k8s"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": self.destination},
            "syncPolicy": {"syncOptions": ["CreateNamespace=true"]},
        }
        if automated:
            spec["syncPolicy"]["automated"] = {"prune": prune, "selfHeal": self_heal}
        spec.update(extra_spec)
        metadata = {"name": self.name, "namespace": self.namespace}
        if finalizer:
            metadata["finalizers"] = ["gantry.dev/resources-finalizer"]
        manifest = {"apiVersion": "gantry.dev/v1alpha1", "kind": "Application", "metadata": metadata, "spec": spec}
        self.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))

    def push(self, files: dict[str, str] | None = None, *, delete: tuple[str, ...] = (), message: str = "change") -> str:
        if files:
            self.repo.write(files)
        if delete:
            self.repo.delete(*delete)
        sha = self.repo.commit(message)
        self.repo.push()
        return sha

    def refresh(self, mode: str = "normal") -> None:
        self.cluster.kubectl("annotate", "--overwrite", "applications.gantry.dev", self.name, "-n", self.namespace,
                             f"gantry.dev/refresh={mode}")

    def wait(self, predicate: Callable[[dict], bool], what: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: timed out after {timeout:.0f}s waiting for {what}; status:\n"
                             + yaml.safe_dump(status))

    def wait_synced(self, revision: str | None = None, *, healthy: bool = True, timeout: float = 90.0) -> dict:
        def done(status: dict) -> bool:
            sync = status.get("sync") or {}
            return (sync.get("status") == "Synced" and (revision is None or sync.get("revision") == revision)
                    and (not healthy or (status.get("health") or {}).get("status") == "Healthy"))

        return self.wait(done, f"Synced{' at ' + revision[:7] if revision else ''}{' and Healthy' if healthy else ''}",
                         timeout)

    def wait_sync_status(self, value: str, timeout: float = 60.0) -> dict:
        return self.wait(lambda s: (s.get("sync") or {}).get("status") == value, value, timeout)

    def kubectl(self, *args: str, check: bool = True):
        return self.cluster.kubectl("-n", self.destination, *args, check=check)

    def object(self, kind: str, name: str) -> dict | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def events(self) -> list[dict]:
        listing = self.cluster.kubectl("get", "events", "-n", self.namespace, "--field-selector",
                                       f"involvedObject.name={self.name}", "-o", "json")
        return json.loads(listing.stdout)["items"]


def token_kubeconfig(cluster, namespace: str, service_account: str, path):
    """A kubeconfig for the cluster that authenticates with a ServiceAccount's token, as a pod's would."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": service_account,
                      "context": {"cluster": admin["clusters"][0]["name"], "user": service_account}}],
        "current-context": service_account,
    }))
    return path


@contextmanager
def controller_instead(cluster, controller: "Controller", work: Path, *args: str,
                       kubeconfig: Path | None = None) -> Iterator["Controller"]:
    """The session's controller paused (two serving one namespace would fight) and one with
    `args` (and `kubeconfig`, else the admin's) running instead; the session's is back afterwards."""
    metrics, webhook, ui = (f"127.0.0.1:{free_port()}" for _ in range(3))
    other = Controller(cluster, work / "controller-instead.log", [
        "--kubeconfig", str(kubeconfig or cluster.kubeconfig), "--namespace", APP_NAMESPACE,
        "--cache-dir", str(work / "cache"), "--kustomize", str(cluster.bin_dir / "kustomize"),
        "--metrics-address", metrics, "--webhook-address", webhook, "--ui-address", ui, *args,
    ], metrics_url=f"http://{metrics}", webhook_url=f"http://{webhook}", ui_url=f"http://{ui}")
    controller.stop()
    try:
        other.start()
        other.wait_ready()
        yield other
    finally:
        other.stop()
        controller.start()
        controller.wait_ready()
        print(f"controller (instead of the session's) log: {other.log_path}")


@dataclass
class Controller:
    """The controller process; restart() stops and starts it, as a pod restart would."""

    cluster: object
    log_path: Path
    args: list[str]
    metrics_url: str  # http://127.0.0.1:PORT, serving /metrics and /healthz
    webhook_url: str  # http://127.0.0.1:PORT, serving POST /api/webhook
    ui_url: str = ""  # http://127.0.0.1:PORT, the web UI
    process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controller.operator", *self.args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PATH": f"{self.cluster.bin_dir}:{os.environ['PATH']}"},
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /healthz answers: kopf has started and the scheduler exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the controller exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.metrics_url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the controller did not become ready in {timeout:.0f}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
