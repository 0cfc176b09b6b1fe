"""A real, local Kubernetes control plane for Gantry's demo and end-to-end tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes), built from Go
modules by hack/build-binaries.sh, started on loopback with TLS and RBAC; a small volume
provisioner of ours makes PVCs of the default StorageClass Bound, and a log writer of ours gives
every container on the fake nodes a log that kwok serves for pods/log. All state lives in .cluster/.

    python hack/localcluster.py up         # idempotent; returns when /readyz is ok and nodes are Ready
    python hack/localcluster.py down       # stops exactly the processes it started, removes state
    python hack/localcluster.py status
    python hack/localcluster.py provision  # the volume provisioner (started by `up`)
    python hack/localcluster.py pod-logs   # the pod log writer (started by `up`)

Only the standard library and the `kubernetes` client are used, so it runs from the project venv.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("GANTRY_CLUSTER_DIR", ROOT / ".cluster"))
PIDS = STATE / "pids"
LOGS = STATE / "logs"
PKI = STATE / "pki"
BIN = STATE / "bin"
KUBECONFIG = STATE / "kubeconfig"
SERVICE_CIDR = "10.96.0.0/16"
FAKE_NODES = ("kwok-node-0", "kwok-node-1")
STORAGE_CLASS = "standard"
PROVISIONER = "gantry.dev/local-volume"
POD_LOGS = STATE / "pod-logs"
# A test pod annotated with this gets its text (one log line per line) in each container's log, or
# only in the container that TEST_LOG_CONTAINER_ANNOTATION names (tests/e2e/test_cluster.py shows how).
TEST_LOG_ANNOTATION = "gantry.dev/test-log"
TEST_LOG_CONTAINER_ANNOTATION = "gantry.dev/test-log-container"
HEARTBEAT_SECONDS = 3.0  # how often a running container's log gets a line, so `kubectl logs -f` sees some
# Order matters twice: start in this order, stop in the reverse one.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "provisioner",
              "pod-logs")


class ClusterError(RuntimeError):
    """The local control plane could not be brought up; the message says which part and its log."""


@dataclass(frozen=True)
class Binaries:
    kube: Path
    etcd: Path
    kwok: Path
    kustomize: Path
    helm: Path
    crane: Path  # tests only: its in-memory OCI registry holds the charts of the Helm OCI tests
    kube_version: str
    kwok_stages: Path  # the stage set of this checkout (hack/kwok/stages), by content hash
    kwok_logs_crd: Path  # the CRD of kwok's Logs, which kwok reads but does not install

    @classmethod
    def build(cls) -> "Binaries":
        """Build (or reuse from ~/.cache/gantry) every binary and return where they are."""
        script = ROOT / "hack" / "build-binaries.sh"
        subprocess.run(["bash", str(script)], check=True)
        dirs = dict(
            line.split("=", 1)
            for line in subprocess.run(
                ["bash", str(script), "--print-dirs"], check=True, capture_output=True, text=True
            ).stdout.split()
        )
        return cls(
            kube=Path(dirs["KUBE_BIN"]),
            etcd=Path(dirs["ETCD_BIN"]),
            kwok=Path(dirs["KWOK_BIN"]),
            kustomize=Path(dirs["KUSTOMIZE_BIN"]),
            helm=Path(dirs["HELM_BIN"]),
            crane=Path(dirs["CRANE_BIN"]),
            kube_version=dirs["KUBE_VERSION"],
            kwok_stages=Path(dirs["KWOK_STAGES"]),
            kwok_logs_crd=Path(dirs["KWOK_LOGS_CRD"]),
        )

    @staticmethod
    def build_one(tool: str) -> Path:
        """Only `tool` (kustomize, helm or crane), for tests that need no cluster (render, charts,
        the OCI registry crane serves): its bin directory."""
        script = ROOT / "hack" / "build-binaries.sh"
        subprocess.run(["bash", str(script), tool], check=True)
        dirs = subprocess.run(["bash", str(script), "--print-dirs"], check=True, capture_output=True, text=True)
        return Path(dict(line.split("=", 1) for line in dirs.stdout.split())[f"{tool.upper()}_BIN"])

    def link_into(self, directory: Path) -> None:
        """One PATH entry with every tool, so `source .cluster/env` gives kubectl, kustomize and helm
        (and crane, the tests' OCI registry)."""
        directory.mkdir(parents=True, exist_ok=True)
        for source_dir in (self.kube, self.etcd, self.kwok, self.kustomize, self.helm, self.crane):
            for binary in source_dir.iterdir():
                link = directory / binary.name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(binary)


# ---------------------------------------------------------------------------------------------
# Processes, by pid file


def _pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def _read_pid(name: str) -> int | None:
    try:
        return int(_pid_file(name).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _is_ours(pid: int, name: str) -> bool:
    """True when pid is alive and still runs the binary we started (pids get reused)."""
    recorded = _pid_file(name).read_text().split(maxsplit=1) if _pid_file(name).exists() else []
    return len(recorded) == 2 and _runs(pid, recorded[1].strip())


def _runs(pid: int, binary: str) -> bool:
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(binary)
    except OSError:
        return False


def start(name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start a process of ours in the background, its output in .cluster/logs/NAME.log, its pid
    recorded so `down` stops it (the demo's controller and git server use this too)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    # A session of its own: the process outlives `make cluster-up` and a Ctrl-C in that terminal.
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})}, cwd=cwd or STATE,
    )
    # Popen may return before the child has exec'd; record it once it runs the binary, so a later
    # check by executable never mistakes the starting child for a dead one.
    deadline = time.monotonic() + 5
    while not _runs(process.pid, argv[0]) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    _pid_file(name).write_text(f"{process.pid} {argv[0]}\n")
    return process.pid


def stop(name: str, grace: float = 10.0) -> None:
    pid = _read_pid(name)
    if pid is not None and _is_ours(pid, name):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _is_ours(pid, name):
            time.sleep(0.1)
        if _is_ours(pid, name):
            os.kill(pid, signal.SIGKILL)
        # Reap it if it is our child (only when `up` failed in this same process).
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    _pid_file(name).unlink(missing_ok=True)


def running(name: str) -> bool:
    pid = _read_pid(name)
    return pid is not None and _is_ours(pid, name)


def _log_tail(name: str, lines: int = 15) -> str:
    try:
        text = (LOGS / f"{name}.log").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _wait(what: str, check, timeout: float, component: str) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not running(component):
            raise ClusterError(
                f"{component} exited while waiting for {what}; see {LOGS / (component + '.log')}:\n"
                + _log_tail(component)
            )
        try:
            if check():
                return
        except Exception as error:  # the check talks to a server that is still starting
            last_error = error
        time.sleep(0.25)
    raise ClusterError(
        f"timed out after {timeout:.0f}s waiting for {what} ({last_error}); "
        f"see {LOGS / (component + '.log')}:\n{_log_tail(component)}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Certificates and kubeconfig


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_pki() -> None:
    """A CA, the apiserver's and kwok's serving certs, an admin client cert and the service-account
    key pair."""
    PKI.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = PKI / "ca.key", PKI / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=gantry-local-ca",
             "-keyout", str(ca_key), "-out", str(ca_crt))
    sans = ",".join([
        "IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ])
    for name, subject, extensions in (
        ("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"),
        ("admin", "/O=system:masters/CN=kubernetes-admin", "extendedKeyUsage=clientAuth\n"),
        # kwok's kubelet-like server, which the apiserver calls for pods/log at the nodes' address.
        ("kwok", "/CN=kwok", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
    ):
        key, csr, crt = PKI / f"{name}.key", PKI / f"{name}.csr", PKI / f"{name}.crt"
        ext = PKI / f"{name}.ext"
        ext.write_text(extensions)
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-days", "3650", "-extfile", str(ext), "-out", str(crt))
    _openssl("genrsa", "-out", str(PKI / "sa.key"), "2048")
    _openssl("rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_kubeconfig(server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "gantry-local", "cluster": {
            "server": server, "certificate-authority-data": _b64(PKI / "ca.crt")}}],
        "users": [{"name": "gantry-admin", "user": {
            "client-certificate-data": _b64(PKI / "admin.crt"), "client-key-data": _b64(PKI / "admin.key")}}],
        "contexts": [{"name": "gantry-local", "context": {"cluster": "gantry-local", "user": "gantry-admin"}}],
        "current-context": "gantry-local",
    }
    KUBECONFIG.write_text(json.dumps(config, indent=2) + "\n")  # JSON is valid YAML
    KUBECONFIG.chmod(0o600)


def _https_get(server: str, path: str) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    context.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    try:
        with urllib.request.urlopen(server + path, context=context, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# Bring-up


def _kubectl(binaries: Binaries, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(binaries.kube / "kubectl"), "--kubeconfig", str(KUBECONFIG), *args],
        input=stdin, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _node_manifest(name: str, index: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok", "kubernetes.io/role": "agent", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": f"local-{index}",
            },
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24"},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                         "kubeletVersion": "fake", "kubeProxyVersion": "fake"},
        },
    }


STORAGE_CLASS_MANIFEST = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": STORAGE_CLASS,
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": PROVISIONER,
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}


def is_up() -> bool:
    if not KUBECONFIG.exists() or not all(running(name) for name in COMPONENTS):
        return False
    server = json.loads(KUBECONFIG.read_text())["clusters"][0]["cluster"]["server"]
    try:
        return _https_get(server, "/readyz")[0] == 200
    except OSError:
        return False


def up() -> None:
    binaries = Binaries.build()
    binaries.link_into(BIN)
    if is_up():
        print(f"local control plane already running; KUBECONFIG={KUBECONFIG}")
        return
    down(quiet=True)  # a half-started or crashed one: start clean
    started = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    BIN.mkdir(parents=True, exist_ok=True)
    binaries.link_into(BIN)
    _make_pki()
    try:
        _bring_up(binaries)
    except BaseException:
        down(quiet=True, keep_logs=True)
        raise
    _write_env_file()
    print(f"local control plane {binaries.kube_version} up in {time.monotonic() - started:.1f}s; "
          f"KUBECONFIG={KUBECONFIG}  (source {STATE / 'env'} for kubectl on PATH)")


def _etcd_data_dir() -> Path:
    # etcd on tmpfs with fsync off: test data need not survive a reboot, and disk syncs dominate.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="gantry-etcd-", dir=shm))
    return STATE / "etcd"


def _bring_up(binaries: Binaries) -> None:
    etcd_port, etcd_peer_port = free_port(), free_port()
    api_port, kcm_port, scheduler_port, kwok_port = (free_port() for _ in range(4))
    data_dir = _etcd_data_dir()
    (STATE / "etcd-data-dir").write_text(str(data_dir))
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    start("etcd", [
        str(binaries.etcd / "etcd"), "--name=gantry", f"--data-dir={data_dir}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
        f"--initial-cluster=gantry=http://127.0.0.1:{etcd_peer_port}",
        "--unsafe-no-fsync", "--quota-backend-bytes=4294967296", "--log-level=warn",
    ])
    _wait("etcd health", lambda: urllib.request.urlopen(etcd_url + "/health", timeout=2).status == 200, 60, "etcd")

    server = f"https://127.0.0.1:{api_port}"
    start("kube-apiserver", [
        str(binaries.kube / "kube-apiserver"),
        f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}", f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--client-ca-file={PKI / 'ca.crt'}",
        f"--service-account-key-file={PKI / 'sa.pub'}",
        f"--service-account-signing-key-file={PKI / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true", "--enable-priority-and-fairness=false",
        # Without a CA the apiserver would call kubelets (here kwok, for pods/log) unverified.
        f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
        # The `kubernetes` Service's endpoints would point at 127.0.0.1, which Endpoints may not hold.
        "--endpoint-reconciler-type=none",
        "--v=1",
    ])
    _write_kubeconfig(server)
    _wait("kube-apiserver /readyz", lambda: _https_get(server, "/readyz")[0] == 200, 120, "kube-apiserver")

    kubeconfig = str(KUBECONFIG)
    common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
              f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", "--leader-elect=false"]
    start("kube-controller-manager", [
        str(binaries.kube / "kube-controller-manager"), *common, f"--secure-port={kcm_port}",
        f"--service-account-private-key-file={PKI / 'sa.key'}", f"--root-ca-file={PKI / 'ca.crt'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}", f"--cluster-signing-key-file={PKI / 'ca.key'}",
        "--use-service-account-credentials=true", f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allocate-node-cidrs=false", "--controllers=*,-nodeipam", "--v=1",
    ])
    start("kube-scheduler", [str(binaries.kube / "kube-scheduler"), *common, f"--secure-port={scheduler_port}", "--v=1"])

    # kwok serves pods/log from Logs objects (one per pod, written by `pod-logs`); their CRD must be
    # served before kwok starts watching them, or its informer backs off for seconds.
    _kubectl(binaries, "apply", "-f", str(binaries.kwok_logs_crd))
    _kubectl(binaries, "wait", "--for=condition=Established", "crd/logs.kwok.x-k8s.io", "--timeout=60s")
    start("kwok", [
        str(binaries.kwok / "kwok"), f"--kubeconfig={kubeconfig}",
        f"--config={binaries.kwok_stages}", f"--config={_write_fallback_logs()}", "--enable-crds=Logs",
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        # The nodes' kubelet endpoint (status.daemonEndpoints) is --node-port at --node-ip; kwok's
        # server would listen there on every interface unless told loopback.
        "--node-ip=127.0.0.1", f"--node-port={kwok_port}", f"--server-address=127.0.0.1:{kwok_port}",
        f"--tls-cert-file={PKI / 'kwok.crt'}", f"--tls-private-key-file={PKI / 'kwok.key'}",
        "--cidr=10.244.0.0/16",
        # Without leases the node lifecycle controller sees no heartbeat, marks the nodes Unknown
        # every grace period and flips every pod to NotReady until kwok patches the node back.
        "--node-lease-duration-seconds=40",
    ])
    for index, name in enumerate(FAKE_NODES):
        _kubectl(binaries, "apply", "-f", "-", stdin=json.dumps(_node_manifest(name, index)))
    _kubectl(binaries, "apply", "-f", "-", stdin=json.dumps(STORAGE_CLASS_MANIFEST))
    start("provisioner", [sys.executable, str(Path(__file__).resolve()), "provision"],
           env={"KUBECONFIG": kubeconfig})
    start("pod-logs", [sys.executable, str(Path(__file__).resolve()), "pod-logs"], env={"KUBECONFIG": kubeconfig})

    def nodes_ready() -> bool:
        nodes = json.loads(_kubectl(binaries, "get", "nodes", "-o", "json"))["items"]
        ready = [
            node for node in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
        ]
        return len(ready) == len(FAKE_NODES)

    _wait("fake nodes Ready", nodes_ready, 60, "kwok")
    # Pods are admitted only once their namespace's `default` ServiceAccount exists.
    _wait("default ServiceAccount", lambda: bool(_kubectl(binaries, "get", "serviceaccount", "default", "-o", "name")),
          60, "kube-controller-manager")
    # Pods created from now on get their logs from the start.
    _wait("pod log writer", (POD_LOGS / ".ready").exists, 30, "pod-logs")
    for name in ("kube-controller-manager", "kube-scheduler", "provisioner", "pod-logs"):
        if not running(name):
            raise ClusterError(f"{name} exited during start-up; see {LOGS / (name + '.log')}:\n{_log_tail(name)}")


def _write_env_file() -> None:
    (STATE / "env").write_text(f'export PATH="{BIN}:$PATH"\nexport KUBECONFIG="{KUBECONFIG}"\n')


def down(quiet: bool = False, keep_logs: bool = False) -> None:
    """Stop what `up` (and `make demo`) started, newest first, by recorded pid only."""
    recorded = sorted(PIDS.glob("*.pid")) if PIDS.exists() else []
    extra = [p.stem for p in recorded if p.stem not in COMPONENTS]  # e.g. the demo's controller
    for name in [*extra, *reversed(COMPONENTS)]:
        stop(name)
    data_dir_file = STATE / "etcd-data-dir"
    if data_dir_file.exists():
        shutil.rmtree(data_dir_file.read_text().strip(), ignore_errors=True)
    if STATE.exists():
        for child in STATE.iterdir():
            if keep_logs and child.name == "logs":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(STATE, ignore_errors=True)
    if not quiet:
        print("local control plane stopped")


def status() -> int:
    for name in COMPONENTS:
        print(f"{name:25} {'running' if running(name) else 'stopped'}")
    if is_up():
        print(f"ready; KUBECONFIG={KUBECONFIG}")
        return 0
    return 1


# ---------------------------------------------------------------------------------------------
# The volume provisioner: the smallest thing that makes volumeClaimTemplates work on fake nodes.


def provision() -> None:
    """Create a hostPath PV for every Pending claim of our StorageClass; delete Released ones."""
    from kubernetes import client, config, watch

    config.load_kube_config()
    core = client.CoreV1Api()
    storage = client.StorageV1Api()

    def our_class(claim) -> bool:
        name = claim.spec.storage_class_name
        if name is None:
            return False
        try:
            return storage.read_storage_class(name).provisioner == PROVISIONER
        except client.ApiException:
            return False

    def provision_claim(claim) -> None:
        if claim.status.phase != "Pending" or claim.spec.volume_name or not our_class(claim):
            return
        pv_name = f"pvc-{claim.metadata.uid}"
        volume = client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=pv_name, annotations={"pv.kubernetes.io/provisioned-by": PROVISIONER}),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": claim.spec.resources.requests.get("storage", "1Gi")},
                access_modes=claim.spec.access_modes or ["ReadWriteOnce"],
                persistent_volume_reclaim_policy="Delete",
                storage_class_name=claim.spec.storage_class_name,
                volume_mode=claim.spec.volume_mode or "Filesystem",
                host_path=client.V1HostPathVolumeSource(path=f"/var/lib/gantry-local/{pv_name}"),
                claim_ref=client.V1ObjectReference(
                    kind="PersistentVolumeClaim", api_version="v1", namespace=claim.metadata.namespace,
                    name=claim.metadata.name, uid=claim.metadata.uid),
            ),
        )
        try:
            core.create_persistent_volume(volume)
            print(f"provisioned {pv_name} for {claim.metadata.namespace}/{claim.metadata.name}", flush=True)
        except client.ApiException as error:
            if error.status != 409:
                print(f"provisioning {pv_name} failed: {error.reason}", flush=True)

    def reclaim(volume) -> None:
        annotations = volume.metadata.annotations or {}
        if (annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER
                and volume.status.phase == "Released"
                and volume.spec.persistent_volume_reclaim_policy == "Delete"):
            try:
                core.delete_persistent_volume(volume.metadata.name)
                print(f"deleted released {volume.metadata.name}", flush=True)
            except client.ApiException as error:
                if error.status != 404:
                    print(f"deleting {volume.metadata.name} failed: {error.reason}", flush=True)

    while True:  # a watch ends on server timeouts; resume with a fresh list so nothing is missed
        try:
            for claim in core.list_persistent_volume_claim_for_all_namespaces().items:
                provision_claim(claim)
            for volume in core.list_persistent_volume().items:
                reclaim(volume)
            stream = watch.Watch().stream(core.list_persistent_volume_claim_for_all_namespaces, timeout_seconds=10)
            for event in stream:
                if event["type"] in ("ADDED", "MODIFIED"):
                    provision_claim(event["object"])
        except Exception as error:  # the apiserver restarting must not kill the provisioner
            print(f"provisioner: {error}", flush=True)
            time.sleep(1)


# ---------------------------------------------------------------------------------------------
# Pod logs. Fake nodes run no containers, so nothing writes what `kubectl logs` reads. `pod-logs`
# writes each container's log in the CRI format of a kubelet's log files, and a kwok Logs object
# naming them; the apiserver sends pods/log to kwok's kubelet-like server (the nodes' kubelet
# endpoint), which reads the file as the kubelet does: tailLines, timestamps, sinceSeconds,
# limitBytes, follow and previous all work.


def _write_fallback_logs() -> Path:
    """kwok configuration with one ClusterLogs for every pod, used until the pod's own Logs exists
    (the moment after it is created) or if `pod-logs` is not running: a line saying so rather
    than a 400 from kwok."""
    POD_LOGS.mkdir(parents=True, exist_ok=True)
    fallback = POD_LOGS / "not-written-yet.log"
    now = _timestamp(None)
    fallback.write_text(_cri_line(now, f'time={now} msg="this pod\'s log is not written yet" '
                                       f"writer={LOGS / 'pod-logs.log'}"))
    config = STATE / "kwok-logs.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs", "metadata": {"name": "not-written-yet"},
        "spec": {"logs": [{"logsFile": str(fallback)}]},
    }) + "\n")
    return config


def _timestamp(value: str | None) -> str:
    """RFC 3339 with microseconds in UTC, from a status time (kwok's are to the second) or now."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else datetime.now(timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _cri_line(timestamp: str, message: str) -> str:
    """One line of a container log file as a container runtime writes it (what kwok parses)."""
    return f"{timestamp} stdout F {message}\n"


@dataclass
class _ContainerLog:
    """One container's log files and what has been written to them, so each pod event appends
    only what is new: `current.log`, and `previous.log` once the container has restarted."""

    pod: str  # namespace/name
    name: str
    image: str
    directory: Path
    test_lines: list[str]
    started: bool = False
    exited: bool = False
    running: bool = False
    heartbeats: int = 0

    @property
    def current(self) -> Path:
        return self.directory / "current.log"

    @property
    def previous(self) -> Path:
        return self.directory / "previous.log"

    def _line(self, at: str, message: str) -> str:
        return _cri_line(at, f"time={at} pod={self.pod} container={self.name} {message}")

    def _exited(self, terminated: dict) -> str:
        at = _timestamp(terminated.get("finishedAt"))
        return self._line(at, f'msg="exited" code={terminated.get("exitCode")} reason={terminated.get("reason")}')

    def _run(self, restart: int, running: dict, terminated: dict | None) -> str:
        """The lines one run of the container writes: started, the test's lines, how it exited."""
        at = _timestamp(running.get("startedAt"))
        text = self._line(at, f'msg="started" image={self.image} restart={restart}')
        text += "".join(_cri_line(at, line) for line in self.test_lines)
        return text + (self._exited(terminated) if terminated else "")

    def observe(self, status: dict) -> None:
        """Write what the container's status (as kwok's stages set it) says happened since."""
        state, restarts = status.get("state") or {}, status.get("restartCount") or 0
        last = (status.get("lastState") or {}).get("terminated")
        if restarts and last and not self.previous.exists():
            self.previous.write_text(self._run(restarts - 1, last, last))
        # A container waiting in CrashLoopBackOff is between runs: its log is the run that exited.
        ended = state.get("terminated") or (last if "waiting" in state else None)
        text = ""
        if not self.started and (state.get("running") or ended):
            text = self._run(restarts, state.get("running") or ended, ended)
            self.started, self.exited = True, ended is not None
        elif ended and self.started and not self.exited:
            text, self.exited = self._exited(ended), True
        if text:
            with self.current.open("a") as log:
                log.write(text)
        self.running = "running" in state

    def heartbeat(self) -> None:
        self.heartbeats += 1
        with self.current.open("a") as log:
            log.write(self._line(_timestamp(None), f'msg="running" heartbeat={self.heartbeats}'))


@dataclass
class _PodLogs:
    namespace: str
    name: str
    uid: str
    directory: Path
    containers: dict[str, _ContainerLog] = field(default_factory=dict)
    applied: bool = False  # its Logs object

    def logs_object(self) -> dict:
        return {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
            # Owned by the pod, so the garbage collector deletes it with the pod.
            "metadata": {"name": self.name, "namespace": self.namespace, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}]},
            # kwok v0.8 follows whenever the request says so; `follow` here is for later releases.
            "spec": {"logs": [
                {"containers": [name], "logsFile": str(log.current), "previousLogsFile": str(log.previous),
                 "follow": True}
                for name, log in self.containers.items()]},
        }


def pod_logs() -> None:
    """Keep a log for every container of every pod and a kwok Logs object naming its files; append
    a heartbeat line to each running container's log every HEARTBEAT_SECONDS, so `-f` sees lines
    arrive; delete a pod's files when it is gone (the garbage collector deletes its Logs)."""
    from kubernetes import client, config, watch

    config.load_kube_config()
    core = client.CoreV1Api()
    custom = client.CustomObjectsApi()
    pods: dict[str, _PodLogs] = {}
    lock = threading.Lock()  # the watch and the heartbeat thread share `pods` and the files

    def apply_logs(entry: _PodLogs) -> None:
        try:
            custom.patch_namespaced_custom_object(
                "kwok.x-k8s.io", "v1alpha1", entry.namespace, "logs", entry.name, entry.logs_object(),
                field_manager="gantry-pod-logs", force=True, _content_type="application/apply-patch+yaml")
            entry.applied = True
        except client.ApiException as error:
            if error.status not in (403, 404):  # the namespace is being deleted, or is gone
                print(f"pod-logs: Logs {entry.namespace}/{entry.name}: {error.status} {error.reason}", flush=True)

    def observe(pod: dict) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        entry = pods.get(meta["uid"])
        if entry is None:
            directory = POD_LOGS / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
            entry = pods[meta["uid"]] = _PodLogs(meta["namespace"], meta["name"], meta["uid"], directory)
            annotations = meta.get("annotations") or {}
            lines = annotations.get(TEST_LOG_ANNOTATION, "").splitlines()
            only = annotations.get(TEST_LOG_CONTAINER_ANNOTATION)
            for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                name = container["name"]
                log = _ContainerLog(f"{entry.namespace}/{entry.name}", name, container.get("image", ""),
                                    directory / name, lines if only in (None, name) else [])
                log.directory.mkdir(parents=True, exist_ok=True)
                log.current.touch()
                entry.containers[log.name] = log
        started = sum(log.started for log in entry.containers.values())
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            if container.get("name") in entry.containers:
                entry.containers[container["name"]].observe(container)
        # Applied again once a container starts: a pod recreated under the same name (a StatefulSet's)
        # can lose its Logs to the garbage collector collecting the previous pod's.
        if not entry.applied or sum(log.started for log in entry.containers.values()) > started:
            apply_logs(entry)

    def forget(uid: str) -> None:
        entry = pods.pop(uid, None)
        if entry is not None:
            shutil.rmtree(entry.directory, ignore_errors=True)

    def heartbeats() -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with lock:
                for entry in pods.values():
                    for log in entry.containers.values():
                        if log.running:
                            try:
                                log.heartbeat()
                            except OSError as error:
                                print(f"pod-logs: {log.current}: {error}", flush=True)

    threading.Thread(target=heartbeats, daemon=True).start()
    while True:  # a watch ends on server timeouts and errors; resume with a fresh list
        try:
            listed = json.loads(core.list_pod_for_all_namespaces(_preload_content=False).data)
            with lock:
                for pod in listed["items"]:
                    observe(pod)
                current = {pod["metadata"]["uid"] for pod in listed["items"]}
                for uid in set(pods) - current:
                    forget(uid)
                for directory in POD_LOGS.iterdir():  # left by pods deleted while we were not watching
                    if directory.is_dir() and directory.name.rsplit("_", 1)[-1] not in current:
                        shutil.rmtree(directory, ignore_errors=True)
            (POD_LOGS / ".ready").touch()
            stream = watch.Watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=300,
                                          resource_version=listed["metadata"]["resourceVersion"])
            for event in stream:
                with lock:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        observe(event["raw_object"])
                    elif event["type"] == "DELETED":
                        forget(event["raw_object"]["metadata"]["uid"])
        except Exception as error:  # the apiserver restarting, an expired resourceVersion (410)
            print(f"pod-logs: {error}", flush=True)
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "provision", "pod-logs"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "pod-logs":
            pod_logs()
        else:
            provision()
    except (ClusterError, subprocess.CalledProcessError) as error:
        print(f"localcluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
