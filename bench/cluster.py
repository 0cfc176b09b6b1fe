"""The benchmarks' edges: the local control plane, kubectl, API watches, processes and their cost.

Everything here talks to the outside (the API server, /proc, child processes); the benchmarks in
bench/benchmarks.py only combine these pieces and time them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# hack/ (the local cluster launcher, the loopback git server) is a plain folder, not a package.
sys.path.insert(0, str(ROOT / "hack"))

import localcluster  # noqa: E402
from gitserver import WorkRepo, init_bare  # noqa: E402,F401  (re-exported for the benchmarks)

from controller.kube import KubeApiError, KubeClient  # noqa: E402

Manifest = dict


class BenchError(RuntimeError):
    """A benchmark could not measure what it should (a timeout, a process that died); says which."""


# ------------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path  # kubectl and kustomize of the pinned versions
    client: KubeClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = KubeClient.from_kubeconfig(str(self.kubeconfig))

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
                                input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)[:200]} failed: {result.stderr.strip()[:2000]}")
        return result

    def apply(self, objects: Sequence[Manifest], *, server_side: bool = True) -> None:
        """Set-up applies (not timed): one kubectl call for a list of objects."""
        args = ["apply", "-f", "-"] + (["--server-side", "--field-manager=gantry-bench-setup"] if server_side else [])
        self.kubectl(*args, stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def patch(self, path: str, body: dict, *, content_type: str = "application/merge-patch+json") -> Manifest:
        return self.client.request("PATCH", path, body=body, content_type=content_type)

    def ensure_namespace(self, name: str) -> None:
        try:
            self.client.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                                   "metadata": {"name": name}})
        except KubeApiError as error:
            if error.status != 409:
                raise

    def delete_namespaces(self, names: Sequence[str], *, timeout: float = 600) -> float:
        """Delete namespaces and wait until they are gone (their objects with them); seconds taken."""
        started = time.monotonic()
        for name in names:
            try:
                self.client.request("DELETE", f"/api/v1/namespaces/{name}")
            except KubeApiError as error:
                if error.status != 404:
                    raise
        deadline = started + timeout
        remaining = list(names)
        while remaining:
            remaining = [n for n in remaining if self._exists(f"/api/v1/namespaces/{n}")]
            if remaining and time.monotonic() > deadline:
                raise BenchError(f"namespaces still terminating after {timeout:.0f}s: {', '.join(remaining[:5])}")
            if remaining:
                time.sleep(0.5)
        return time.monotonic() - started

    def delete_cluster_objects(self, objects: Sequence[Manifest]) -> None:
        """Delete the cluster-scoped objects (ClusterRoles …) of an app; Namespaces go through
        delete_namespaces."""
        for obj in objects:
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                plural = "clusterroles" if obj["kind"] == "ClusterRole" else "clusterrolebindings"
                with contextlib.suppress(KubeApiError):
                    self.client.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/{plural}/"
                                                  f"{obj['metadata']['name']}")

    def _exists(self, path: str) -> bool:
        try:
            self.client.request("GET", path)
            return True
        except KubeApiError as error:
            if error.status == 404:
                return False
            raise

    def resource_versions(self, objects: Sequence[Manifest]) -> dict[tuple[str, str, str], str]:
        """(kind, namespace, name) → resourceVersion for each of `objects` that exists, read with
        one list per kind and namespace."""
        wanted = {(o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"]): o for o in objects}
        scopes = {(o["apiVersion"], o["kind"], o["metadata"].get("namespace") or "") for o in objects}
        versions: dict[tuple[str, str, str], str] = {}
        for api_version, kind, namespace in sorted(scopes):
            resource = self.client.resource(api_version, kind)
            for item in self.client.list(resource, namespace or None)["items"]:
                key = (kind, item["metadata"].get("namespace") or "", item["metadata"]["name"])
                if key in wanted:
                    versions[key] = item["metadata"]["resourceVersion"]
        return versions


@contextlib.contextmanager
def local_cluster(kubeconfig: Path | None = None) -> Iterator[Cluster]:
    """The cluster at `kubeconfig`, or the local control plane (GANTRY_CLUSTER_DIR, default .cluster/),
    brought up when it is not running and then stopped again at the end."""
    binaries = localcluster.Binaries.build()
    binaries.link_into(localcluster.BIN)
    if kubeconfig is not None:
        yield Cluster(kubeconfig, localcluster.BIN)
        return
    started_here = not localcluster.is_up()
    if started_here:
        localcluster.up()
    try:
        yield Cluster(localcluster.KUBECONFIG, localcluster.BIN)
    finally:
        if started_here:
            localcluster.down()


def free_port() -> int:
    return localcluster.free_port()


# ------------------------------------------------------------------------------------------------
# Watches: the moment something became true, seen as the API server's event arrives


def _key(obj: Manifest) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def rv(obj: Manifest | None) -> int:
    """An object's resourceVersion as a number (etcd revisions are, on every real cluster)."""
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Watch:
    """A list+watch of one collection kept as {namespace/name: object} by a thread, so a benchmark
    can wait for a state and learn when the event that made it true arrived."""

    def __init__(self, client: KubeClient, path: str, *, label_selector: str | None = None,
                 field_selector: str | None = None) -> None:
        self.client = client
        self.path = path
        self.query = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        self.objects: dict[str, Manifest] = {}
        self.stamp = 0.0  # time.monotonic() of the last change
        self.synced = threading.Event()
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self._thread.start()
        if not self.synced.wait(60):
            raise BenchError(f"could not list {path}: {self._error}")

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                listing = self.client.request("GET", self.path, query=self.query)  # one page: no limit
                with self._changed:
                    self.objects = {_key(o): o for o in listing.get("items") or []}
                    self.stamp = time.monotonic()
                    self._changed.notify_all()
                self.synced.set()
                version = (listing.get("metadata") or {}).get("resourceVersion")
                while not self._stopped.is_set():
                    query = {**self.query, "resourceVersion": version, "allowWatchBookmarks": "true",
                             "timeoutSeconds": 30}
                    for event in self.client.stream(self.path, query, timeout=30):
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            raise KubeApiError(obj.get("code", 0), obj.get("reason", ""), obj.get("message", ""))
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if kind == "BOOKMARK":
                            continue
                        with self._changed:
                            if kind == "DELETED":
                                self.objects.pop(_key(obj), None)
                            else:
                                self.objects[_key(obj)] = obj
                            self.stamp = time.monotonic()
                            self._changed.notify_all()
                        if self._stopped.is_set():
                            return
            except Exception as error:  # 410 Gone, a reset connection: list again
                self._error = error
                time.sleep(0.2)

    def wait(self, predicate: Callable[[dict[str, Manifest]], bool], what: str, timeout: float) -> float:
        """Block until predicate(objects) holds; returns time.monotonic() of the change that made it hold."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if predicate(self.objects):
                    return self.stamp
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what} ({self.path})")
                self._changed.wait(min(remaining, 1.0))

    def snapshot(self) -> dict[str, Manifest]:
        with self._changed:
            return dict(self.objects)


# ------------------------------------------------------------------------------------------------
# Processes we start, and what they cost


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_RUNNING: list["Process"] = []  # stopped on exit whatever happens (see stop_all)


@dataclass
class Usage:
    rss_bytes: int
    cpu_seconds: float  # the process itself
    children_cpu_seconds: float  # its children that exited and were waited for (kustomize, git)


def usage(pid: int) -> Usage:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # After the command name: state is field 3, so utime (14) … cstime (17) are at 11 … 14 here.
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    rss_kib = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return Usage(rss_kib * 1024, (utime + stime) / _CLOCK_TICKS, (cutime + cstime) / _CLOCK_TICKS)


class Process:
    """A child process with its output in a log file; stop() ends exactly it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> "Process":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **(self.env or {})}, cwd=self.cwd)
        log.close()
        _RUNNING.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited ({self.popen.returncode if self.popen else 'not started'}); "
                             f"log {self.log_path}:\n{self.log_tail()}")

    def usage(self) -> Usage:
        return usage(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace: float = 20.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self in _RUNNING:
            _RUNNING.remove(self)


def stop_all() -> None:
    for process in reversed(list(_RUNNING)):
        process.stop()


def wait_http(url: str, process: Process, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{process.name} did not answer {url} in {timeout:.0f}s; log {process.log_path}:\n"
                     f"{process.log_tail()}")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_sum(samples: dict, metric: str, /, **labels: str) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == metric and all(dict(sample_labels).get(k) == v for k, v in labels.items()))


def metric_by(samples: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, sample_labels), value in samples.items():
        if sample == name:
            key = dict(sample_labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out
