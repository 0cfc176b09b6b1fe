"""Helm charts end to end (issue 15): charts in git and from a Helm repository served on loopback
(packaged and indexed by the real helm, plain and behind basic auth), rendered by the controller's
real helm, synced into the local control plane; upgrades, values changes, rollback, Helm hooks in
their phases, each failure named with nothing running touched, and Argo CD's own helm-guestbook
registered with its Application changed only in apiVersion (and where it points)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from harness import APP_NAMESPACE, ROOT, App
from helmrepo import HelmRepo
from ociregistry import OciRegistry

from controller.application import rollback_request, sync_request

pytestmark = pytest.mark.e2e
VENDOR = Path(__file__).resolve().parent / "vendor" / "argocd-example-apps"


def chart(version: str = "1.0.0", *, replicas: int = 1, greeting: str = "hello", extra: dict | None = None) -> dict:
    """A chart's files: a Deployment and a ConfigMap of its values, and what `extra` adds."""
    return {
        "Chart.yaml": f"apiVersion: v2\nname: shop\nversion: {version}\nappVersion: \"{version}\"\n",
        "values.yaml": yaml.safe_dump({"replicas": replicas, "greeting": greeting, "color": "red"}),
        "templates/configmap.yaml": (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n"
            "  greeting: {{ .Values.greeting | quote }}\n  color: {{ .Values.color | quote }}\n"
            "  version: {{ .Chart.Version | quote }}\n"
            # What the cluster serves, which the controller passes as Argo CD does.
            "  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
            "  served: {{ .Capabilities.APIVersions.Has \"gantry.dev/v1alpha1/Application\" | quote }}\n"),
        "templates/deployment.yaml": (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-web\nspec:\n"
            "  replicas: {{ .Values.replicas }}\n  selector: {matchLabels: {app: web}}\n  template:\n"
            "    metadata: {labels: {app: web}}\n    spec:\n      containers:\n"
            "      - {name: web, image: \"nginx:{{ .Chart.AppVersion }}\"}\n"),
        **(extra or {}),
    }


def in_git(files: dict, under: str = "charts/shop") -> dict:
    return {f"{under}/{name}": text for name, text in files.items()}


def settings(app: App, release: str) -> dict:
    """The chart's values as rendered (the cluster's capabilities are checked on their own)."""
    data = dict(app.object("configmap", f"{release}-settings")["data"])
    del data["kube"], data["served"]
    return data


def replicas(app: App, release: str) -> int:
    return app.object("deployment", f"{release}-web")["spec"]["replicas"]


def patch(app: App, body: dict) -> None:
    app.cluster.kubectl("patch", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--type", "merge",
                        "-p", json.dumps(body))


def operation_done(app: App, revision: str) -> dict:
    """The status once the sync operation of `revision` Succeeded and the app is Healthy."""
    return app.wait(lambda s: (s.get("operationState") or {}).get("phase") == "Succeeded"
                    and (s.get("operationState") or {}).get("syncResult", {}).get("revision") == revision
                    and "operation" not in app.get()
                    and (s.get("health") or {}).get("status") == "Healthy", f"a sync of {revision}", 120)


def failed_with(app: App, text: str) -> dict:
    return app.wait(lambda s: (s.get("sync") or {}).get("status") == "Failed" and text in (s.get("message") or ""),
                    f"Failed saying {text!r}", 90)


def helm_secret(cluster, name: str, url: str, username: str, password: str) -> None:
    """A repository Secret in Argo CD's shape for a Helm repository (`type: helm`)."""
    data = {"type": "helm", "name": name, "url": url, "username": username, "password": password}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": APP_NAMESPACE,
                                                           "labels": {"gantry.dev/secret-type": "repository"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}))


def gantry(cluster, *args: str) -> str:
    env = {**os.environ, "PATH": f"{cluster.bin_dir}:{os.environ['PATH']}"}
    env.pop("KUBECONFIG", None)
    result = subprocess.run([sys.executable, "-m", "controller", *args, "--kubeconfig", str(cluster.kubeconfig)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def helm_repo(cluster, tmp_path):
    with HelmRepo(tmp_path / "charts", cluster.bin_dir / "helm") as served:
        yield served


# ------------------------------------------------------------------------------------------------
# A chart in git


def test_a_chart_in_git_with_values_files_parameters_a_values_change_and_rollback(make_app):
    files = in_git(chart(extra={"values-prod.yaml": "replicas: 2\ncolor: blue\n"}))
    app = make_app(files)
    release = "shop-web"
    app.apply(automated=False, source={"repoURL": app.repo_url, "targetRevision": "HEAD", "path": "charts/shop",
                                       "helm": {"releaseName": release, "valueFiles": ["values-prod.yaml"],
                                                "parameters": [{"name": "greeting", "value": "hi, there"}]}})
    app.wait_sync_status("OutOfSync")
    first = app.repo.head
    patch(app, sync_request())
    operation_done(app, first)
    assert settings(app, release) == {"greeting": "hi, there", "color": "blue", "version": "1.0.0"}
    assert replicas(app, release) == 2
    capabilities = app.object("configmap", f"{release}-settings")["data"]
    server = json.loads(app.cluster.kubectl("get", "--raw", "/version").stdout)["gitVersion"]
    assert (capabilities["kube"], capabilities["served"]) == (server, "true")
    entry = app.status()["history"][-1]
    assert entry["source"]["helm"]["valueFiles"] == ["values-prod.yaml"]

    # A values change in git and one in the Application, synced together.
    second = app.push({"charts/shop/values-prod.yaml": "replicas: 3\ncolor: green\n"}, message="more replicas")
    patch(app, {"spec": {"source": {"helm": {"releaseName": release, "valueFiles": ["values-prod.yaml"],
                                             "parameters": [{"name": "greeting", "value": "welcome"}]}}}})
    app.wait(lambda s: (s.get("sync") or {}).get("revision") == second
             and (s.get("sync") or {}).get("status") == "OutOfSync", "OutOfSync at the new commit")
    patch(app, sync_request())
    operation_done(app, second)
    assert settings(app, release) == {"greeting": "welcome", "color": "green", "version": "1.0.0"}
    assert replicas(app, release) == 3

    # A rollback renders the first commit with the helm settings of then (history recorded them).
    patch(app, rollback_request(entry))
    operation_done(app, first)
    assert settings(app, release) == {"greeting": "hi, there", "color": "blue", "version": "1.0.0"}
    assert replicas(app, release) == 2


def test_helm_hooks_run_in_their_phases_in_order(make_app):
    job = ("apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-%s\n  annotations:\n"
           "    helm.sh/hook: %s\n    helm.sh/hook-weight: \"%d\"\n    helm.sh/hook-delete-policy: before-hook-creation\n"
           "spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: j, image: busybox}]\n")
    app = make_app(in_git(chart(extra={
        "templates/migrate.yaml": job % ("migrate", "pre-install,pre-upgrade", -1),
        "templates/backup.yaml": job % ("backup", "pre-install", -2),
        "templates/notify.yaml": job % ("notify", "post-install,post-upgrade", 0),
        "templates/test.yaml": job % ("smoke-test", "test", 0),
    })))
    release = app.name
    app.apply(source={"repoURL": app.repo_url, "targetRevision": "HEAD", "path": "charts/shop"})
    status = operation_done(app, app.repo.head)
    order = [(e["syncPhase"], e["kind"], e["name"], e.get("hookType"))
             for e in status["operationState"]["syncResult"]["resources"]]
    assert order == [
        ("PreSync", "Job", f"{release}-backup", "PreSync"),  # pre-install, weight -2
        ("PreSync", "Job", f"{release}-migrate", "PreSync"),  # weight -1
        ("Sync", "ConfigMap", f"{release}-settings", None),
        ("Sync", "Deployment", f"{release}-web", None),
        ("PostSync", "Job", f"{release}-notify", "PostSync"),  # post-install
    ], order  # the test hook never runs, as in Argo CD
    assert app.object("job", f"{release}-smoke-test") is None


def test_failures_are_named_and_leave_the_running_release_as_it_was(make_app):
    app = make_app(in_git(chart(extra={"values-prod.yaml": "replicas: 2\n"})))
    release = app.name
    app.apply(source={"repoURL": app.repo_url, "targetRevision": "HEAD", "path": "charts/shop",
                      "helm": {"valueFiles": ["values-prod.yaml"]}})
    good = app.repo.head
    app.wait_synced(good)
    running = app.object("deployment", f"{release}-web")["metadata"]["uid"]

    # A values file the commit no longer has.
    app.push(delete=("charts/shop/values-prod.yaml",), message="lose the values file")
    app.refresh()
    failed = failed_with(app, "values file charts/shop/values-prod.yaml (spec.source.helm.valueFiles "
                              "'values-prod.yaml') does not exist")
    assert failed["message"].startswith("charts/shop/values-prod.yaml: ")
    # … unless missing ones are ignored.
    patch(app, {"spec": {"source": {"helm": {"valueFiles": ["values-prod.yaml"], "ignoreMissingValueFiles": True}}}})
    app.wait_synced(app.repo.head)
    assert replicas(app, release) == 1

    # A template that does not render: helm's words, with the template and line in the repository.
    broken = app.push({"charts/shop/templates/deployment.yaml":
                       chart()["templates/deployment.yaml"].replace("{{ .Values.replicas }}",
                                                                     "{{ .Values.missing.deeper }}")},
                      message="break the template")
    app.refresh()
    failed = failed_with(app, "charts/shop/templates/deployment.yaml:6: helm template failed: ")
    assert "nil pointer evaluating" in failed["message"] and failed["sync"]["revision"] == broken
    deployment = app.object("deployment", f"{release}-web")
    assert deployment["metadata"]["uid"] == running and deployment["spec"]["replicas"] == 1


# ------------------------------------------------------------------------------------------------
# Charts from a Helm repository


def chart_app(make_app, repo_url: str, revision: str, **helm) -> App:
    app = make_app({"README.md": "the chart comes from a Helm repository\n"})
    app.apply(source={"repoURL": repo_url, "chart": "shop", "targetRevision": revision,
                      **({"helm": helm} if helm else {})})
    return app


def test_a_chart_from_a_helm_repository_upgraded_then_a_version_that_does_not_exist(make_app, helm_repo, cluster):
    helm_repo.publish(chart("1.0.0"))
    app = chart_app(make_app, helm_repo.url, "^1", parameters=[{"name": "greeting", "value": "from the app"}])
    app.wait_synced("1.0.0")
    release = app.name
    assert settings(app, release) == {"greeting": "from the app", "color": "red", "version": "1.0.0"}
    header = gantry(cluster, "app", "get", app.name)
    assert any(line.split() == ["Chart:", "shop", "1.0.0"] for line in header.splitlines()), header

    # A new version in range: a refresh finds it, helm pulls it, the app follows.
    helm_repo.publish(chart("1.1.0", replicas=2))
    app.refresh()
    app.wait_synced("1.1.0")
    assert settings(app, release)["version"] == "1.1.0" and replicas(app, release) == 2
    # A refresh with nothing new reads the index again and pulls nothing.
    pulled = [path for path, _ in helm_repo.requests if path.endswith(".tgz")]
    assert pulled == ["/charts/shop-1.0.0.tgz", "/charts/shop-1.1.0.tgz"]
    app.refresh()
    app.wait(lambda s: s.get("reconciledAt") and not app.get()["metadata"].get("annotations", {}).get(
        "gantry.dev/refresh"), "the refresh to be served")
    assert [path for path, _ in helm_repo.requests if path.endswith(".tgz")] == pulled

    patch(app, {"spec": {"source": {"targetRevision": "9.9.9"}}})
    failed_with(app, f"chart shop version '9.9.9' not found in {helm_repo.url}: it has 1.1.0, 1.0.0")
    assert settings(app, release)["version"] == "1.1.0" and replicas(app, release) == 2


def test_a_private_helm_repository_with_basic_auth(make_app, cluster, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    secret = f"charts-{suffix}"
    with HelmRepo(tmp_path / "private", cluster.bin_dir / "helm", username="deploy", password="chart-pw-91c0") as served:
        served.publish(chart("1.0.0"))
        app = chart_app(make_app, served.url, "1.0.0")
        try:
            failed_with(app, f"authentication failed for {served.url}")
            helm_secret(cluster, secret, served.url, "deploy", "chart-pw-91c0")
            app.refresh()
            app.wait_synced("1.0.0")
            assert settings(app, app.name)["version"] == "1.0.0"
            # The repository's password is changed and the Secret's no longer works: the app says
            # so, and what runs stays.
            served.credentials = ("deploy", "rotated-pw-5d1e")
            served.publish(chart("1.0.1"))
            patch(app, {"spec": {"source": {"targetRevision": "1.0.1"}}})
            status = failed_with(app, f"authentication failed for {served.url}")
            assert settings(app, app.name)["version"] == "1.0.0"
            said = json.dumps(status) + json.dumps(app.events())
            assert "chart-pw-91c0" not in said and "rotated-pw-5d1e" not in said
            assert served.requests[-1] == ("/charts/index.yaml", 401)
        finally:
            cluster.kubectl("delete", "secret", secret, "-n", APP_NAMESPACE, check=False)


# ------------------------------------------------------------------------------------------------
# Argo CD's own example


# What Argo CD's apps/templates/applications.yaml (with apps/values.yaml) renders for helm-guestbook
# in argocd-example-apps at the vendored commit: `example.helm-guestbook` with tool.helm.releaseName.
ARGOCD_HELM_GUESTBOOK = """
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: "example.helm-guestbook"
  namespace: argocd
  finalizers:
  - resources-finalizer.argocd.argoproj.io
spec:
  destination:
    namespace: "helm-guestbook"
    server: "https://kubernetes.default.svc"
  project: default
  source:
    path: "helm-guestbook"
    repoURL: https://github.com/argoproj/argocd-example-apps
    targetRevision: master
    helm:
      releaseName: helm-guestbook
  syncPolicy:
    syncOptions:
      - CreateNamespace=true
    automated:
      prune: true
      selfHeal: true
"""


def test_argo_cds_helm_guestbook_with_its_application_changed_only_in_api_version(make_app, cluster):
    files = {f"helm-guestbook/{path.relative_to(VENDOR / 'helm-guestbook')}": path.read_text()
             for path in (VENDOR / "helm-guestbook").rglob("*") if path.is_file()}
    app = make_app(files)
    app.repo.branch("master")  # the branch Argo CD's Application names
    app.repo.push()
    application = yaml.safe_load(ARGOCD_HELM_GUESTBOOK)
    application["apiVersion"] = "gantry.dev/v1alpha1"
    # Where it points: our namespace for Applications, the test's git server and namespace.
    application["metadata"]["namespace"] = APP_NAMESPACE
    application["spec"]["source"]["repoURL"] = app.repo_url
    application["spec"]["destination"]["namespace"] = app.destination
    app.name = application["metadata"]["name"] = f"example.helm-guestbook-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(application))
    try:
        status = app.wait_synced(app.repo.head, timeout=120)
        kinds = {(r["kind"], r["name"]) for r in status["resources"]}
        assert kinds == {("Deployment", "helm-guestbook"), ("Service", "helm-guestbook")}, kinds
        image = app.object("deployment", "helm-guestbook")["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "gcr.io/google-samples/gb-frontend:v5"
    finally:
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, "--wait=false",
                        check=False)


# ------------------------------------------------------------------------------------------------
# Charts from an OCI registry (crane's registry on loopback, charts pushed by the real helm)


@pytest.fixture
def oci_registry(crane, cluster):
    with OciRegistry(crane, cluster.bin_dir / "helm") as served:
        yield served


def oci_secret(cluster, name: str, url: str, **fields: str) -> None:
    """A repository Secret as Argo CD declares a Helm OCI registry (`type: helm`, `enableOCI`)."""
    data = {"type": "helm", "name": name, "url": url, **fields}
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": APP_NAMESPACE,
                                                           "labels": {"gantry.dev/secret-type": "repository"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}))


def chart_pulls(registry: OciRegistry) -> list[str]:
    return [r for r in registry.requests() if r.startswith("GET") and "/blobs/" in r]


def test_a_chart_from_an_oci_registry_upgraded_then_a_version_that_does_not_exist(make_app, oci_registry, cluster):
    secret = f"oci-{uuid.uuid4().hex[:6]}"
    oci_registry.publish(chart("1.0.0"))
    # The registry speaks plain HTTP, which its repository Secret says, as in Argo CD (whose
    # Secrets name an OCI registry without oci://).
    oci_secret(cluster, secret, oci_registry.url.removeprefix("oci://"), enableOCI="true",
               insecureOCIForceHttp="true")
    try:
        app = chart_app(make_app, oci_registry.url, "1.0.0")
        app.wait_synced("1.0.0")
        release = app.name
        assert settings(app, release) == {"greeting": "hello", "color": "red", "version": "1.0.0"}
        header = gantry(cluster, "app", "get", app.name)
        assert any(line.split() == ["Chart:", "shop", "1.0.0"] for line in header.splitlines()), header

        # A refresh with nothing new pulls nothing: the version was pulled once and is kept.
        pulled = chart_pulls(oci_registry)
        assert len(pulled) == 2, pulled  # the chart's config and its archive
        app.refresh()
        app.wait(lambda s: s.get("reconciledAt") and not app.get()["metadata"].get("annotations", {}).get(
            "gantry.dev/refresh"), "the refresh to be served")
        assert chart_pulls(oci_registry) == pulled

        # A second version pushed and asked for: the app follows.
        oci_registry.publish(chart("1.1.0", replicas=2))
        patch(app, {"spec": {"source": {"targetRevision": "1.1.0"}}})
        app.wait_synced("1.1.0")
        assert settings(app, release)["version"] == "1.1.0" and replicas(app, release) == 2

        # A version the registry does not have: Failed naming it, the running release untouched.
        patch(app, {"spec": {"source": {"targetRevision": "9.9.9"}}})
        failed_with(app, f"chart shop version '9.9.9' not found in {oci_registry.url}")
        assert settings(app, release)["version"] == "1.1.0" and replicas(app, release) == 2
    finally:
        cluster.kubectl("delete", "secret", secret, "-n", APP_NAMESPACE, check=False)
