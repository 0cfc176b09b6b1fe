"""The systems under test, each as processes of its own on this machine: the loopback git server,
the Gantry controller, Flux's source-controller + kustomize-controller, and Gantry's web UI.

Each knows how to start and stop itself, what its app objects look like, how to ask for a refresh
and how to tell that an app is synced at a commit; the benchmarks do the rest the same way for all.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .cluster import ROOT, BenchError, KubeApiError, Cluster, Manifest, Process, Usage, free_port, scrape, wait_http

GANTRY_NAMESPACE = "gantry-bench"  # the Applications; not `gantry`, so a demo's controller stays out
FLUX_NAMESPACE = "flux-bench"
REFRESH_ANNOTATION = "gantry.dev/refresh"
WEBHOOK_SECRET_NAME = "gantry-webhook"
FLUX_REQUEST_ANNOTATION = "reconcile.fluxcd.io/requestedAt"


# ------------------------------------------------------------------------------------------------
# git


class GitServer:
    """hack/gitserver.py in a process of its own (not a thread of ours, so our timing loops and the
    server never share a GIL)."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process = Process("git-server", [sys.executable, str(ROOT / "hack" / "gitserver.py"), "serve",
                                              str(root), str(self.port)], logs / "git-server.log")

    def start(self) -> "GitServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.process.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.process.check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"the git server did not listen on {self.port}")

    def stop(self) -> None:
        self.process.stop()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def path(self, name: str) -> Path:
        return self.root / f"{name}.git"


# ------------------------------------------------------------------------------------------------
# Gantry


class Gantry:
    name = "gantry"

    def __init__(self, cluster: Cluster, work: Path, *, workers: int | None = None,
                 poll_interval: float | None = None) -> None:
        self.cluster = cluster
        self.work = work
        self.namespace = GANTRY_NAMESPACE
        self.options = {"--workers": workers, "--poll-interval": poll_interval}
        self.process: Process | None = None
        self.metrics_url = ""
        self.webhook_url = ""
        self.starts = 0
        self.webhook_secret = secrets.token_hex(16)

    def install(self) -> None:
        self.cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        self.cluster.kubectl("wait", "--for=condition=Established", "crd/applications.gantry.dev", "--timeout=60s")
        self.cluster.ensure_namespace(self.namespace)
        self.cluster.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": WEBHOOK_SECRET_NAME,
                                                                               "namespace": self.namespace},
                             "stringData": {"github": self.webhook_secret}}])

    def start(self) -> float:
        """Start the controller with an empty git cache (a cold start); returns when it began."""
        self.starts += 1
        port, webhook_port = free_port(), free_port()
        self.metrics_url = f"http://127.0.0.1:{port}"
        self.webhook_url = f"http://127.0.0.1:{webhook_port}"
        argv = [sys.executable, "-m", "bench.probe", "--kubeconfig", str(self.cluster.kubeconfig),
                "--namespace", self.namespace, "--cache-dir", str(self.work / f"gantry-cache-{self.starts}"),
                "--kustomize", str(self.cluster.bin_dir / "kustomize"), "--metrics-address", f"127.0.0.1:{port}",
                "--webhook-address", f"127.0.0.1:{webhook_port}", "--ui-address", ""]
        for flag, value in self.options.items():
            if value is not None:
                argv += [flag, str(value)]
        self.process = Process("gantry", argv, self.work / "logs" / f"gantry-{self.starts}.log", cwd=ROOT,
                               env={"PATH": f"{self.cluster.bin_dir}:{__import__('os').environ.get('PATH', '')}"})
        self.process.start()
        started = self.process.started_at
        wait_http(self.metrics_url + "/healthz", self.process)
        return started

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    @property
    def flags(self) -> list[str]:
        return self.process.argv[3:] if self.process else []

    def usage(self) -> Usage:
        assert self.process is not None
        self.process.check_alive()
        return self.process.usage()

    def metrics(self) -> dict:
        assert self.process is not None
        self.process.check_alive()
        return scrape(self.metrics_url + "/metrics")

    # -- apps ---------------------------------------------------------------------------------

    def app(self, name: str, repo_url: str, destination: str) -> Manifest:
        return {
            "apiVersion": "gantry.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "project": "default",
                "source": {"repoURL": repo_url, "targetRevision": "HEAD", "path": "k8s"},
                "destination": {"server": "https://kubernetes.default.svc", "namespace": destination},
                "syncPolicy": {"automated": {"prune": True, "selfHeal": True},
                               "syncOptions": ["CreateNamespace=true"]},
            },
        }

    @property
    def collection(self) -> str:
        return f"/apis/gantry.dev/v1alpha1/namespaces/{self.namespace}/applications"

    @staticmethod
    def synced(app: Manifest | None, commit: str) -> bool:
        sync = ((app or {}).get("status") or {}).get("sync") or {}
        return sync.get("status") == "Synced" and sync.get("revision") == commit

    @staticmethod
    def failure(app: Manifest | None) -> str | None:
        status = (app or {}).get("status") or {}
        if (status.get("sync") or {}).get("status") == "Failed":
            return status.get("message") or "Failed"
        return None

    def refresh(self, name: str) -> Manifest:
        """Ask for a refresh as `kubectl annotate app NAME gantry.dev/refresh=normal` does."""
        return self.cluster.patch(f"{self.collection}/{name}",
                                  {"metadata": {"annotations": {REFRESH_ANNOTATION: "normal"}}})

    def push_webhook(self, repo_url: str, commit: str, branch: str = "main") -> None:
        """Deliver the push event GitHub would send for `commit` on `branch`, signed with the secret."""
        body = json.dumps({
            "ref": f"refs/heads/{branch}", "before": "0" * 40, "after": commit,
            "repository": {"clone_url": repo_url, "html_url": repo_url.removesuffix(".git")},
            "head_commit": {"id": commit},
        }).encode()
        signature = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(self.webhook_url + "/api/webhook", data=body, method="POST", headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-Hub-Signature-256": f"sha256={signature}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            refreshed = json.loads(response.read()).get("refreshed") or []
        if not refreshed:
            raise BenchError(f"the webhook for {repo_url} refreshed no application")

    @staticmethod
    def refreshed(app: Manifest | None, after_rv: int) -> bool:
        from .cluster import rv

        annotations = ((app or {}).get("metadata") or {}).get("annotations") or {}
        return rv(app) > after_rv and REFRESH_ANNOTATION not in annotations

    def delete_apps(self) -> None:
        self.cluster.kubectl("delete", "applications.gantry.dev", "--all", "-n", self.namespace, "--wait=true",
                             "--timeout=120s")


class GantryUi:
    """`gantry ui` (the UI server in the CLI's local mode: the kubeconfig's identity, on 127.0.0.1)
    serving one namespace's Applications, in a process of its own as a user runs it, so that its
    event loop and watch never share a GIL with the benchmark or the browser's driver."""

    name = "gantry-ui"

    def __init__(self, cluster: Cluster, namespace: str, work: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process = Process("gantry-ui", [sys.executable, "-m", "controller.cli", "--kubeconfig",
                                             str(cluster.kubeconfig), "-n", namespace, "ui", "--port", str(self.port)],
                               work / "logs" / "gantry-ui.log", cwd=ROOT)

    def start(self, apps: int, timeout: float = 120.0) -> None:
        """Start it and wait until its list holds `apps` Applications (its watch has listed them)."""
        self.process.start()
        wait_http(self.url + "api/v1/session", self.process)
        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(self.url + "api/v1/applications", timeout=30) as response:
                seen = len(json.loads(response.read())["items"])
            if seen >= apps:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the UI lists {seen} of {apps} Applications after {timeout:.0f}s")
            self.process.check_alive()
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.stop()

    def usage(self) -> Usage:
        self.process.check_alive()
        return self.process.usage()

    def read_stream(self) -> tuple[float, int, int]:
        """Open the live stream as a plain client would and read it up to `ready` (every app the
        server has, sent): seconds taken, apps and bytes received."""
        started = time.monotonic()
        apps = size = 0
        with urllib.request.urlopen(self.url + "api/v1/stream", timeout=60) as response:
            for line in response:
                size += len(line)
                if line.startswith(b"event: app"):
                    apps += 1
                elif line.startswith(b"event: ready"):
                    return time.monotonic() - started, apps, size
        raise BenchError("the UI's stream ended before its ready event")

    def timed_get(self, path: str) -> tuple[float, int]:
        """GET `path` (under /api/v1/): seconds to the last byte, and the bytes."""
        started = time.monotonic()
        with urllib.request.urlopen(self.url + "api/v1/" + path, timeout=60) as response:
            body = response.read()
        return time.monotonic() - started, len(body)


# ------------------------------------------------------------------------------------------------
# Flux


@dataclass(frozen=True)
class FluxBuild:
    directory: Path  # ~/.cache/gantry/flux-…: bin/, crds/, VERSIONS

    @property
    def versions(self) -> dict[str, str]:
        return dict(line.split() for line in (self.directory / "VERSIONS").read_text().splitlines() if line.strip())

    @classmethod
    def find(cls) -> "FluxBuild":
        """The build of hack/build-flux.sh (run by `make bench`); BenchError with the reason when absent."""
        import subprocess

        script = ROOT / "hack" / "build-flux.sh"
        directory = Path(subprocess.run(["bash", str(script), "--print-dir"], check=True, capture_output=True,
                                        text=True).stdout.strip())
        if not (directory / "VERSIONS").exists():
            error = Path(f"{directory}.error")
            if error.exists():
                raise BenchError(f"Flux could not be built; the command and its error:\n{error.read_text().strip()}")
            raise BenchError(f"Flux is not built in {directory}: run `bash hack/build-flux.sh` (make bench does)")
        return cls(directory)


class Flux:
    name = "flux"

    def __init__(self, cluster: Cluster, build: FluxBuild, work: Path) -> None:
        self.cluster = cluster
        self.build = build
        self.work = work
        self.namespace = FLUX_NAMESPACE
        self.processes: list[Process] = []
        self.starts = 0

    def install(self) -> None:
        crds = sorted((self.build.directory / "crds").glob("*.yaml"))
        # Server-side: some of Flux's CRDs are too big for client-side apply's last-applied annotation.
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=gantry-bench",
                             *[arg for crd in crds for arg in ("-f", str(crd))])
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                             *[arg for crd in crds for arg in ("-f", str(crd))])
        self.cluster.ensure_namespace(self.namespace)

    def start(self) -> float:
        """Start source-controller and kustomize-controller (fresh artifact storage); returns when
        the first began."""
        self.starts += 1
        storage = self.work / f"flux-storage-{self.starts}"
        storage.mkdir(parents=True, exist_ok=True)
        storage_port = free_port()
        env = {"KUBECONFIG": str(self.cluster.kubeconfig), "RUNTIME_NAMESPACE": self.namespace}
        health: list[tuple[Process, str]] = []
        started = time.monotonic()
        for name, extra in (
            ("source-controller", [f"--storage-path={storage}", f"--storage-addr=127.0.0.1:{storage_port}",
                                   f"--storage-adv-addr=127.0.0.1:{storage_port}"]),
            ("kustomize-controller", []),
        ):
            metrics_port, health_port = free_port(), free_port()
            process = Process(name, [str(self.build.directory / "bin" / name), "--watch-all-namespaces=true",
                                     f"--metrics-addr=127.0.0.1:{metrics_port}",
                                     f"--health-addr=127.0.0.1:{health_port}", "--enable-leader-election=false",
                                     "--log-level=info", "--log-encoding=json", *extra],
                              self.work / "logs" / f"{name}-{self.starts}.log", env=env)
            process.start()
            self.processes.append(process)
            health.append((process, f"http://127.0.0.1:{health_port}/readyz"))
        for process, url in health:
            wait_http(url, process)
        return started

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes = []

    @property
    def flags(self) -> dict[str, list[str]]:
        return {p.name: p.argv[1:] for p in self.processes}

    def usage(self) -> Usage:
        total = Usage(0, 0.0, 0.0)
        for process in self.processes:
            process.check_alive()
            one = process.usage()
            total = Usage(total.rss_bytes + one.rss_bytes, total.cpu_seconds + one.cpu_seconds,
                          total.children_cpu_seconds + one.children_cpu_seconds)
        return total

    # -- apps ---------------------------------------------------------------------------------

    def app(self, name: str, repo_url: str, *, interval: str = "1h", source_interval: str = "1h",
            target_namespace: str | None = None) -> list[Manifest]:
        """A GitRepository and a Kustomization of ./k8s, as `flux create source git` /
        `flux create kustomization --prune=true` would write them (no health checks: wait=false)."""
        kustomization: dict = {
            "interval": interval, "path": "./k8s", "prune": True, "wait": False, "timeout": "10m",
            "sourceRef": {"kind": "GitRepository", "name": name},
        }
        if target_namespace:
            kustomization["targetNamespace"] = target_namespace
        return [
            {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
             "metadata": {"name": name, "namespace": self.namespace},
             "spec": {"interval": source_interval, "url": repo_url, "ref": {"branch": "main"}, "timeout": "60s"}},
            {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
             "metadata": {"name": name, "namespace": self.namespace}, "spec": kustomization},
        ]

    @property
    def collection(self) -> str:
        return f"/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/kustomizations"

    @property
    def sources(self) -> str:
        return f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{self.namespace}/gitrepositories"

    @staticmethod
    def synced(kustomization: Manifest | None, commit: str) -> bool:
        status = (kustomization or {}).get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return ready and str(status.get("lastAppliedRevision", "")).endswith(commit)

    @staticmethod
    def failure(kustomization: Manifest | None) -> str | None:
        status = (kustomization or {}).get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Ready" and condition.get("status") == "False" and \
                    condition.get("reason") not in ("Progressing", "DependencyNotReady", "ArtifactFailed"):
                return f"{condition.get('reason')}: {condition.get('message')}"
        return None

    def request_reconcile(self, path: str, token: str) -> Manifest:
        """What `flux reconcile` does: annotate with reconcile.fluxcd.io/requestedAt."""
        return self.cluster.patch(path, {"metadata": {"annotations": {FLUX_REQUEST_ANNOTATION: token}}})

    @staticmethod
    def handled(kustomization: Manifest | None, token: str) -> bool:
        status = (kustomization or {}).get("status") or {}
        return status.get("lastHandledReconcileAt") == token

    def delete_apps(self, timeout: float = 300) -> None:
        """Delete every Kustomization and GitRepository of ours. Their finalizers need the
        controllers: when those are not running (or too slow), the finalizers are removed."""
        # prune off first: the finalizer would otherwise delete every applied object one by one,
        # which the namespace deletion that follows does anyway (and much faster).
        for item in self.cluster.client.request("GET", self.collection)["items"]:
            with contextlib.suppress(KubeApiError):
                self.cluster.patch(f"{self.collection}/{item['metadata']['name']}", {"spec": {"prune": False}})
        for collection in (self.collection, self.sources):
            for item in self.cluster.client.request("GET", collection)["items"]:
                with contextlib.suppress(KubeApiError):
                    self.cluster.client.request("DELETE", f"{collection}/{item['metadata']['name']}")
            deadline = time.monotonic() + (timeout if any(p.alive() for p in self.processes) else 0)
            while True:
                left = self.cluster.client.request("GET", collection)["items"]
                if not left:
                    break
                if time.monotonic() > deadline:
                    for item in left:
                        with contextlib.suppress(KubeApiError):
                            self.cluster.patch(f"{collection}/{item['metadata']['name']}",
                                               {"metadata": {"finalizers": None}})
                time.sleep(0.5)


def dump(objects: list[Manifest]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
