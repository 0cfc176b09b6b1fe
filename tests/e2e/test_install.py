"""deploy/ installs Gantry with `kubectl apply -k`: both install modes render alike with kubectl's
kustomize and ours, the API server creates every object, the pod is locked down, and the
ServiceAccount gets the rights of its mode and no more.

The pod does not run the real image here: on the local control plane's fake nodes KWOK marks it
Running. The Namespace `gantry` and the Application CRD are shared with the controller fixture of
the same run, so these tests apply them but delete only what nothing else uses.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from harness import APP_NAMESPACE, Controller, controller_instead, token_kubeconfig

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_MODE = ROOT / "deploy"
NAMESPACED_MODE = ROOT / "deploy" / "namespaced"
SERVICE_ACCOUNT = "system:serviceaccount:gantry:gantry-controller"
SELECTOR = "app.kubernetes.io/name=gantry,app.kubernetes.io/component=controller"
SHARED = {("Namespace", "gantry"), ("CustomResourceDefinition", "applications.gantry.dev")}


def render(cluster, path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(cluster.kubectl("kustomize", str(path)).stdout) if doc]


def type_of(obj: dict) -> str:
    """kind.group as kubectl takes it, so that no other API group's kind of that name is meant."""
    group = obj["apiVersion"].rpartition("/")[0]
    return f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()


def key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def where(obj: dict) -> list[str]:
    namespace = obj["metadata"].get("namespace")
    return ["-n", namespace] if namespace else []


def live(cluster, obj: dict) -> dict | None:
    result = cluster.kubectl("get", type_of(obj), obj["metadata"]["name"], *where(obj), "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def can(cluster, verb: str, resource: str, namespace: str | None = None, subresource: str | None = None) -> bool:
    """What the API server's authorizer says the controller's ServiceAccount may do."""
    args = ["auth", "can-i", verb, resource, f"--as={SERVICE_ACCOUNT}"]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    args += [f"--subresource={subresource}"] if subresource else []
    answer = cluster.kubectl(*args, check=False).stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {answer!r}"
    return answer == "yes"


@contextmanager
def installed(cluster, path: Path) -> Iterator[list[dict]]:
    """`kubectl apply -k path`; afterwards delete what it created, except the shared objects and
    namespaces that existed before."""
    objects = render(cluster, path)
    existing = {key(o) for o in objects if o["kind"] == "Namespace" and live(cluster, o) is not None}
    try:
        cluster.kubectl("apply", "-k", str(path))
        yield objects
    finally:
        ours = [o for o in objects if key(o) not in SHARED and key(o) not in existing]
        # The objects, then the namespaces (without waiting: a namespace takes a while to empty).
        others = [o for o in ours if o["kind"] != "Namespace"]
        namespaces = [o for o in ours if o["kind"] == "Namespace"]
        if others:
            cluster.kubectl("delete", "--ignore-not-found", "-f", "-", stdin=yaml.safe_dump_all(others))
        if namespaces:
            cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                            stdin=yaml.safe_dump_all(namespaces))


def check_renders_alike(cluster, kustomize: Path, path: Path) -> None:
    ours = subprocess.run([str(kustomize), "build", str(path)], capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == cluster.kubectl("kustomize", str(path)).stdout


def check_created(cluster, objects: list[dict]) -> None:
    for obj in objects:
        found = live(cluster, obj)
        assert found is not None, f"{type_of(obj)} {obj['metadata']['name']} was not created"
        assert found["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gantry", key(obj)


def check_server_dry_run(cluster, path: Path) -> None:
    result = cluster.kubectl("apply", "-k", str(path), "--dry-run=server")
    assert "(server dry run)" in result.stdout


def check_controller_pod(cluster, deployment: dict) -> list[str]:
    """The pod template's hardening, probes, ports and writable volumes; returns its args."""
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "gantry-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    assert container["image"] == "gantry:latest"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "webhook", "containerPort": 8081, "protocol": "TCP"},
                                  {"name": "ui", "containerPort": 8082, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
        assert container[probe]["httpGet"]["port"] == "http", probe
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert container["resources"]["limits"] == {"memory": "512Mi"}
    # The root filesystem is read-only: the git cache and /tmp are emptyDirs.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/var/cache/gantry", "/tmp"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    assert "--cache-dir=/var/cache/gantry" in container["args"]
    assert "--metrics-address=:8080" in container["args"]
    assert "--webhook-address=:8081" in container["args"]
    assert "--ui-address=:8082" in container["args"]
    return container["args"]


def check_service(service: dict) -> None:
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    # The probes' port, the webhook's and the UI's, apart: the probes' is not meant to be exposed.
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8080, "http"), ("webhook", 8081, "webhook"), ("ui", 8082, "ui")]
    assert service["spec"]["selector"] == dict(pair.split("=") for pair in SELECTOR.split(","))


def check_pod_admitted(cluster) -> None:
    """The gantry namespace enforces the restricted Pod Security Standard: a pod exists only if
    its securityContext passes. (Whether it then runs is not checked: no real container runs on
    the fake nodes, and on a real cluster the image may not be loaded.)"""
    deadline = time.monotonic() + 60
    while not json.loads(cluster.kubectl("get", "pods", "-n", "gantry", "-l", SELECTOR, "-o", "json").stdout)["items"]:
        events = cluster.kubectl("get", "events", "-n", "gantry", "--field-selector", "type=Warning").stdout
        assert time.monotonic() < deadline, f"no controller pod was admitted in 60s; warnings:\n{events}"
        time.sleep(0.5)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_cluster_mode_installs_with_apply_k(cluster, kustomize):
    check_renders_alike(cluster, kustomize, CLUSTER_MODE)
    with installed(cluster, CLUSTER_MODE) as objects:
        assert sorted(key(o) for o in objects) == sorted([
            ("Namespace", "gantry"), ("CustomResourceDefinition", "applications.gantry.dev"),
            ("ServiceAccount", "gantry-controller"), ("ClusterRole", "gantry-controller"),
            ("ClusterRoleBinding", "gantry-controller"), ("Service", "gantry-controller"),
            ("Deployment", "gantry-controller"),
        ])
        check_created(cluster, objects)
        check_server_dry_run(cluster, CLUSTER_MODE)
        [deployment] = by_kind(objects, "Deployment")
        args = check_controller_pod(cluster, live(cluster, deployment))
        assert not any(arg.startswith("--namespaces") for arg in args)
        [service] = by_kind(objects, "Service")
        check_service(live(cluster, service))
        check_pod_admitted(cluster)

        # Everything, everywhere: Applications can hold any kind, for any namespace.
        assert can(cluster, "*", "*")
        assert can(cluster, "create", "clusterroles.rbac.authorization.k8s.io")
        assert can(cluster, "create", "deployments.apps", "default")

    for obj in objects:
        assert (live(cluster, obj) is not None) == (key(obj) in SHARED), f"{key(obj)} after clean-up"


def test_namespaced_mode_grants_only_the_destination_namespaces(cluster, kustomize):
    check_renders_alike(cluster, kustomize, NAMESPACED_MODE)
    leftover = cluster.kubectl("get", "clusterrolebinding", "gantry-controller", "--ignore-not-found", "-o", "name")
    assert not leftover.stdout.strip(), "a cluster-mode install is present: its rights would hide this mode's limits"
    with installed(cluster, NAMESPACED_MODE) as objects:
        kinds = {key(o) for o in objects}
        assert ("Namespace", "team-a") in kinds  # the example destination, created by the overlay
        assert all(b["roleRef"]["name"] == "gantry-controller-read" for b in by_kind(objects, "ClusterRoleBinding"))
        for role in by_kind(objects, "ClusterRole"):
            for rule in role["rules"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, f"cluster-wide write in {rule}"
        check_created(cluster, objects)
        check_server_dry_run(cluster, NAMESPACED_MODE)
        [deployment] = by_kind(objects, "Deployment")
        assert "--namespaces=team-a" in check_controller_pod(cluster, live(cluster, deployment))
        check_pod_admitted(cluster)

        # The destination namespace: anything.
        assert can(cluster, "create", "deployments.apps", "team-a")
        assert can(cluster, "delete", "secrets", "team-a")
        assert can(cluster, "create", "roles.rbac.authorization.k8s.io", "team-a")
        # Its own namespace: its Applications, events, and reading Secrets.
        assert can(cluster, "watch", "applications.gantry.dev", "gantry")
        assert can(cluster, "patch", "applications.gantry.dev", "gantry", subresource="status")
        assert can(cluster, "update", "applications.gantry.dev", "gantry", subresource="finalizers")
        assert can(cluster, "create", "events", "gantry")
        assert can(cluster, "list", "secrets", "gantry")
        assert not can(cluster, "create", "secrets", "gantry")
        # The users' health rules: that one ConfigMap, read by name; no other ConfigMap, no writes.
        assert can(cluster, "get", "configmaps/gantry-health-rules", "gantry")
        assert not can(cluster, "get", "configmaps/other", "gantry")
        assert not can(cluster, "list", "configmaps", "gantry")
        assert not can(cluster, "update", "configmaps/gantry-health-rules", "gantry")
        assert not can(cluster, "delete", "applications.gantry.dev", "gantry")
        assert not can(cluster, "create", "deployments.apps", "gantry")
        # Cluster-wide: reading IngressClasses and CRDs, nothing else.
        assert can(cluster, "list", "ingressclasses.networking.k8s.io")
        assert can(cluster, "watch", "customresourcedefinitions.apiextensions.k8s.io")
        assert not can(cluster, "create", "customresourcedefinitions.apiextensions.k8s.io")
        assert not can(cluster, "create", "namespaces")
        assert not can(cluster, "create", "clusterroles.rbac.authorization.k8s.io")
        # Any other namespace: nothing.
        assert not can(cluster, "create", "deployments.apps", "default")
        assert not can(cluster, "get", "secrets", "default")
        assert not can(cluster, "list", "pods", "kube-system")

    for obj in objects:
        if key(obj) in SHARED:
            assert live(cluster, obj) is not None, f"{key(obj)} is shared and must stay"
        elif obj["kind"] != "Namespace":  # team-a may still be terminating
            assert live(cluster, obj) is None, f"{key(obj)} after clean-up"


# ------------------------------------------------------------------------------------------------
# The controller itself, run out of cluster with the ServiceAccount's token (not as admin): what
# each mode's Roles allow is enough for it to work, and namespaced mode refuses what it must.


@contextmanager
def controller_as_service_account(cluster, controller, tmp_path: Path, *args: str) -> Iterator[Controller]:
    """Instead of the session's controller, one running as gantry:gantry-controller."""
    kubeconfig = token_kubeconfig(cluster, "gantry", "gantry-controller", tmp_path / "sa.kubeconfig")
    with controller_instead(cluster, controller, tmp_path, *args, kubeconfig=kubeconfig) as as_sa:
        yield as_sa


def example_files() -> dict[str, str]:
    """examples/krampoline as its team keeps it in git."""
    example = ROOT / "examples" / "krampoline"
    return {str(path.relative_to(example)): path.read_text() for path in example.rglob("*")
            if path.is_file() and path.name not in ("application.yaml", "README.md")}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_migration_between_database_and_backend(app, status: dict) -> None:
    """The example's schema migration ran after the database was ready and before the backend
    was created, as its sync report and the API server's timestamps both say."""
    results = {(r["kind"], r["name"]): r for r in status["operationState"]["syncResult"]["resources"]}
    migration = results[("Job", "schema-migrate")]
    assert (migration["hookType"], migration["hookPhase"], migration["wave"]) == ("Sync", "Succeeded", 0), migration
    assert results[("StatefulSet", "mariadb")]["wave"] == -1 and results[("Deployment", "backend")]["wave"] == 1
    # A hook is not desired state: it never shows in the inventory.
    assert ("Job", "schema-migrate") not in {(r["kind"], r["name"]) for r in status["resources"]}
    job = app.object("job", "schema-migrate")
    complete = next(c for c in job["status"]["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True"
    ready = next(c for c in app.object("pod", "mariadb-0")["status"]["conditions"] if c["type"] == "Ready")
    assert _time(job["metadata"]["creationTimestamp"]) >= _time(ready["lastTransitionTime"])
    backend = app.object("deployment", "backend")
    assert _time(backend["metadata"]["creationTimestamp"]) >= _time(complete["lastTransitionTime"])


def test_cluster_mode_service_account_syncs_the_example_app(cluster, controller, make_app, tmp_path):
    with installed(cluster, CLUSTER_MODE), controller_as_service_account(cluster, controller, tmp_path) as as_sa:
        files = example_files()
        app = make_app(files)
        # A namespace of its own rather than the example's: `make demo` may have krampoline running there.
        files["k8s/kustomization.yaml"] = files["k8s/kustomization.yaml"].replace(
            "\nnamespace: krampoline\n", f"\nnamespace: {app.destination}\n")
        app.push(files, message="into the test's namespace")
        try:
            app.apply(finalizer=True)
            app.wait_synced(app.repo.head, timeout=120)
            status = app.wait(lambda s: (s.get("operationState") or {}).get("phase") == "Succeeded",
                              "the staged sync to end", timeout=60)
            assert status["summary"]["externalURLs"] == ["http://krampoline.local"]
            assert app.object("statefulset", "mariadb")["status"]["readyReplicas"] == 1
            check_migration_between_database_and_backend(app, status)
            assert "forbidden" not in as_sa.log().lower()
            cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--timeout=60s")
            assert app.object("deployment", "backend") is None  # cascade, with the SA's rights
        finally:
            cluster.kubectl("delete", "namespace", app.destination, "--wait=false", check=False)


def test_namespaced_mode_service_account_syncs_its_namespace_and_refuses_others(cluster, controller, make_app,
                                                                                tmp_path):
    leftover = cluster.kubectl("get", "clusterrolebinding", "gantry-controller", "--ignore-not-found", "-o", "name")
    assert not leftover.stdout.strip(), "a cluster-mode install is present: its rights would hide this mode's limits"
    allowed, foreign, cluster_scoped = make_app(), make_app(), make_app()
    allowed.destination = cluster_scoped.destination = "team-a"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": f"reader-{cluster_scoped.name}"[:63]},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    cluster_scoped.push({"k8s/role.yaml": yaml.safe_dump(role), "k8s/kustomization.yaml": yaml.safe_dump(
        {"resources": ["deployment.yaml", "service.yaml", "config.yaml", "ingress.yaml", "role.yaml"]})})
    with installed(cluster, NAMESPACED_MODE), \
            controller_as_service_account(cluster, controller, tmp_path, "--namespaces", "team-a",
                                          "--destination-apps", f"team-a={APP_NAMESPACE}/*") as as_sa:
        assert "--namespaces" in as_sa.args
        try:
            for app in (allowed, foreign, cluster_scoped):
                app.apply()
            allowed.wait_synced(allowed.repo.head)
            assert allowed.object("deployment", "web") is not None

            status = foreign.wait_sync_status("Failed")
            assert "not allowed" in status["conditions"][0]["message"] and foreign.destination in status["message"]
            assert foreign.object("deployment", "web") is None

            status = cluster_scoped.wait_sync_status("Failed")
            message = status["conditions"][0]["message"]
            assert "k8s/role.yaml" in message and "cluster-scoped ClusterRole is not allowed" in message
            assert cluster.kubectl("get", "clusterrole", role["metadata"]["name"], check=False).returncode != 0
            # Both apps name their Deployment `web` in team-a: it must be the allowed app's alone.
            owner = allowed.object("deployment", "web")["metadata"]["annotations"]["gantry.dev/tracking-id"]
            assert owner.startswith(f"{APP_NAMESPACE}/{allowed.name}:"), "a refused commit applied something"
            assert "cannot read health rules" not in as_sa.log()  # the Role lets it read their ConfigMap
        finally:
            # Before the session's cluster-mode controller is back: it would sync them.
            for app in (allowed, foreign, cluster_scoped):
                cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, check=False)
            cluster.kubectl("delete", "all", "--all", "-n", "team-a", "--wait=false", check=False)
