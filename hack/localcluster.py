"""A real, local Kubernetes control plane for Gantry's demo and end-to-end tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes), built from Go
modules by hack/build-binaries.sh, started on loopback with TLS and RBAC; a small volume
provisioner of ours makes PVCs of the default StorageClass Bound. All state lives in .cluster/.

    python hack/localcluster.py up         # idempotent; returns when /readyz is ok and nodes are Ready
    python hack/localcluster.py down       # stops exactly the processes it started, removes state
    python hack/localcluster.py status
    python hack/localcluster.py provision  # the volume provisioner (started by `up`)

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
import time
import urllib.request
from dataclasses import dataclass
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
# Order matters twice: start in this order, stop in the reverse one.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "provisioner")


class ClusterError(RuntimeError):
    """The local control plane could not be brought up; the message says which part and its log."""


@dataclass(frozen=True)
class Binaries:
    kube: Path
    etcd: Path
    kwok: Path
    kustomize: Path
    kube_version: str
    kwok_stages: Path  # the stage set of this checkout (hack/kwok/stages), by content hash

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
            kube_version=dirs["KUBE_VERSION"],
            kwok_stages=Path(dirs["KWOK_STAGES"]),
        )

    @staticmethod
    def build_kustomize() -> Path:
        """Only kustomize (for unit tests of render, which need no cluster): its bin directory."""
        script = ROOT / "hack" / "build-binaries.sh"
        subprocess.run(["bash", str(script), "kustomize"], check=True)
        dirs = subprocess.run(["bash", str(script), "--print-dirs"], check=True, capture_output=True, text=True)
        return Path(dict(line.split("=", 1) for line in dirs.stdout.split())["KUSTOMIZE_BIN"])

    def link_into(self, directory: Path) -> None:
        """One PATH entry with every tool, so `source .cluster/env` gives kubectl and kustomize."""
        directory.mkdir(parents=True, exist_ok=True)
        for source_dir in (self.kube, self.etcd, self.kwok, self.kustomize):
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

    start("kwok", [
        str(binaries.kwok / "kwok"), f"--kubeconfig={kubeconfig}", f"--config={binaries.kwok_stages}",
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
    for name in ("kube-controller-manager", "kube-scheduler", "provisioner"):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "provision"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        else:
            provision()
    except (ClusterError, subprocess.CalledProcessError) as error:
        print(f"localcluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
