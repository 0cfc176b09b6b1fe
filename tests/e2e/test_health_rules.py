"""Health of the API machinery's kinds and of custom resources by the users' own rules, through the
real controller on the local control plane: a CRD whose names are taken (never Established), a
PodDisruptionBudget that can never be met, an aggregated APIService without endpoints that
`gantry app wait --health` waits through until it becomes available, and a custom resource judged
by a CEL rule from the ConfigMap gantry-health-rules, picked up and then broken while the
controller runs.

Everything cluster-scoped here has a group of its own per test, and the APIService is deleted in
a finally: an unavailable aggregated API leaves discovery of its group failing for every client
(namespace deletion and garbage collection included) for as long as it is registered.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from harness import APP_NAMESPACE

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RULES_CONFIGMAP = "gantry-health-rules"  # the controller's default, in its namespace


def files_of(**manifests: dict) -> dict[str, str]:
    """A plain folder k8s/NAME.yaml per manifest."""
    return {f"k8s/{name}.yaml": yaml.safe_dump(manifest) for name, manifest in manifests.items()}


def unique_group(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:6]}.health.gantry.test"


def resource(status: dict, kind: str, name: str) -> dict:
    found = [r for r in status.get("resources") or [] if r["kind"] == kind and r["name"] == name]
    assert found, f"no {kind} {name} in the app's resources: {status.get('resources')}"
    return found[0]


def health_of(kind: str, name: str, wanted: str):
    """A predicate for App.wait: that resource's health is `wanted`."""
    def check(status: dict) -> bool:
        entries = [r for r in status.get("resources") or [] if r["kind"] == kind and r["name"] == name]
        return bool(entries) and (entries[0].get("health") or {}).get("status") == wanted

    return check


def crd(group: str, kind: str, plural: str, *, list_kind: str = "", scope: str = "Namespaced") -> dict:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": scope,
                     "names": {"kind": kind, "plural": plural, "singular": plural.rstrip("s"),
                               "listKind": list_kind or f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}}}]}}


def deployment(name: str, replicas: int = 1) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]}}}}


@pytest.fixture
def gantry(cluster, tmp_path):
    """gantry(*args) → CompletedProcess of the CLI, as a CI job runs it."""
    env = {**os.environ, "PATH": f"{cluster.bin_dir}:{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("KUBECONFIG", None)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "controller", *args, "--kubeconfig", str(cluster.kubeconfig),
                                 "-n", APP_NAMESPACE], capture_output=True, text=True, cwd=ROOT, env=env,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    return run


# ------------------------------------------------------------------------------------------------ CRD


def test_a_crd_whose_kind_another_crd_has_is_degraded_naming_the_conflict(cluster, make_app):
    group = unique_group("crd")
    # Only the kind is taken: the API server would name a taken listKind first.
    first, second = crd(group, "Gadget", "gadgets"), crd(group, "Gadget", "gizmos", list_kind="GizmoList")
    app = make_app(files_of(crd=second))
    try:
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(first))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/gadgets.{group}", "--timeout=60s")
        app.apply()
        # The sync waits a while for the CRD to be Established, then gives up on that: it is applied.
        status = app.wait(lambda s: (s.get("health") or {}).get("status") == "Degraded"
                          and (s.get("sync") or {}).get("status") == "Synced", "Synced and Degraded", timeout=120)
        health = resource(status, "CustomResourceDefinition", f"gizmos.{group}")["health"]
        assert health["status"] == "Degraded"
        assert health["message"].startswith("names not accepted: KindConflict: "), health
        assert '"Gadget"' in health["message"], health  # the kind the other CRD holds
        assert status["health"]["message"] == health["message"]  # the app says why, not just that

        # The other CRD gone, the names are accepted and the same CRD becomes Established.
        cluster.kubectl("delete", "crd", f"gadgets.{group}", "--timeout=60s")
        status = app.wait(health_of("CustomResourceDefinition", f"gizmos.{group}", "Healthy"), "the CRD Healthy",
                          timeout=60)
        assert (status.get("health") or {}).get("status") == "Healthy"
    finally:
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, check=False)
        cluster.kubectl("delete", "crd", f"gadgets.{group}", f"gizmos.{group}", "--ignore-not-found", check=False)


# ------------------------------------------------------------------------------------------------ PDB


def test_a_pdb_requiring_more_pods_than_the_workload_has_is_degraded_until_it_asks_for_what_exists(make_app):
    budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"},
              "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "web"}}}}
    app = make_app(files_of(deployment=deployment("web", replicas=1), pdb=budget))
    app.apply()
    status = app.wait(health_of("PodDisruptionBudget", "web", "Degraded"), "the PDB Degraded", timeout=90)
    health = resource(status, "PodDisruptionBudget", "web")["health"]
    assert health["message"] == "can never be met: requires 3 healthy pods, the workload has 1", health
    assert resource(status, "Deployment", "web")["health"]["status"] == "Healthy"  # the budget is the fault
    assert status["health"]["status"] == "Degraded" and status["health"]["message"] == health["message"]
    live = app.object("poddisruptionbudget", "web")["status"]
    assert (live["expectedPods"], live["currentHealthy"], live["desiredHealthy"]) == (1, 1, 3)

    budget["spec"]["minAvailable"] = 1  # met, though no disruption is allowed: a choice, not a fault
    revision = app.push(files_of(pdb=budget), message="a budget the workload can meet")
    app.refresh()
    status = app.wait_synced(revision, timeout=90)
    assert resource(status, "PodDisruptionBudget", "web")["health"]["status"] == "Healthy"


# ------------------------------------------------------------------------------------------------ APIService


@contextmanager
def discovery_server(tmp_path: Path, group_version: str) -> Iterator[int]:
    """An HTTPS server on loopback answering the aggregator's discovery check of `group_version`
    (an empty resource list) and 404 to everything else; yields its port."""
    key, cert = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    body = json.dumps({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                       "resources": []}).encode()

    class Discovery(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            found = self.path.split("?")[0] == f"/apis/{group_version}"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_apiservice_without_endpoints_is_waited_through_until_it_becomes_available(cluster, make_app, gantry,
                                                                                      tmp_path):
    group = unique_group("metrics").replace(".health.gantry.test", ".metrics.example.dev")
    api_service_name = f"v1beta1.{group}"
    # The Service selects pods that do not exist yet, as metrics-server's before they are ready.
    backend = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics"},
               "spec": {"selector": {"app": "metrics-not-yet"}, "ports": [{"name": "https", "port": 443}]}}
    app = make_app(files_of(service=backend))  # the APIService names the app's namespace: added below
    api_service = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                   "metadata": {"name": api_service_name},
                   "spec": {"group": group, "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100,
                            "insecureSkipTLSVerify": True,
                            "service": {"namespace": app.destination, "name": "metrics", "port": 443}}}
    try:
        app.push(files_of(apiservice=api_service), message="an aggregated API")
        app.apply()
        status = app.wait(health_of("APIService", api_service_name, "Progressing"), "the APIService Progressing",
                          timeout=90)
        health = resource(status, "APIService", api_service_name)["health"]
        assert health["message"].startswith("MissingEndpoints: "), health
        assert status["sync"]["status"] == "Synced" and status["health"]["status"] == "Progressing"

        # A CI job waiting for health keeps waiting: this is an install under way, not a failure.
        waited = gantry("app", "wait", app.name, "--health", "--timeout", "8s")
        assert waited.returncode == 1, waited
        assert waited.stderr.startswith(f"gantry: timed out after 8s: {app.name}: health is Progressing (MissingEndpoints"), \
            waited.stderr
        assert "Degraded" not in waited.stderr
        assert resource(app.status(), "APIService", api_service_name)["health"]["status"] == "Progressing"

        if not cluster.local:
            return  # the API server below dials localhost: our server only on the local control plane
        with discovery_server(tmp_path, f"{group}/v1beta1") as port:
            # The backend comes up (here: a Service naming this machine's server), and the same
            # wait, started while it is still missing, ends as soon as the aggregator finds it.
            external = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics-ready"},
                        "spec": {"type": "ExternalName", "externalName": "localhost",
                                 "ports": [{"name": "https", "port": port}]}}
            api_service["spec"]["service"] = {"namespace": app.destination, "name": "metrics-ready", "port": port}
            waiting = subprocess.Popen([sys.executable, "-m", "controller", "app", "wait", app.name, "--health",
                                        "--timeout", "90s", "--kubeconfig", str(cluster.kubeconfig),
                                        "-n", APP_NAMESPACE], cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            revision = app.push(files_of(external=external, apiservice=api_service), message="the backend is ready")
            app.refresh()
            out, err = waiting.communicate(timeout=120)
            assert waiting.returncode == 0, (out, err)
            assert out.strip() == f"{app.name}: Synced, Healthy", (out, err)
            status = app.status()
            assert status["sync"]["revision"] == revision
            assert resource(status, "APIService", api_service_name)["health"]["status"] == "Healthy"
            available = json.loads(cluster.kubectl("get", "apiservice", api_service_name, "-o", "json").stdout)
            assert [c["reason"] for c in available["status"]["conditions"] if c["type"] == "Available"] == ["Passed"]
    finally:
        # The app first (it would put the APIService back), then the APIService, at once.
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, check=False)
        cluster.kubectl("delete", "apiservice", api_service_name, "--ignore-not-found", check=False)


# ------------------------------------------------------------------------------------------------ user rules


def rules_configmap(rules: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": RULES_CONFIGMAP, "namespace": APP_NAMESPACE},
            "data": {"widgets.yaml": yaml.safe_dump(rules)}}


def test_a_custom_resource_follows_the_users_cel_rule_edited_while_the_controller_runs(cluster, controller, make_app):
    group = unique_group("widgets")
    widgets = crd(group, "Widget", "widgets")
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "mixer"}, "spec": {"speed": 3}}
    rule = {"apiVersion": f"{group}/v1", "kind": "Widget",
            "inProgress": "has(status.state) && status.state == 'starting'",
            "failed": "has(status.state) && status.state == 'jammed'",
            "current": "has(status.state) && status.state == 'turning'"}
    app = make_app(files_of(widget=widget))
    cluster.kubectl("delete", "configmap", RULES_CONFIGMAP, "-n", APP_NAMESPACE, "--ignore-not-found")
    try:
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(widgets))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s")
        app.apply()
        status = app.wait_synced(app.repo.head)
        assert "health" not in resource(status, "Widget", "mixer")  # no status yet: no health
        # A status that follows no convention Gantry knows: still no health of its own.
        app.kubectl("patch", f"widgets.{group}", "mixer", "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"state": "jammed", "conditions": [
                {"type": "Turning", "status": "False", "reason": "Jammed", "message": "gear 3 is jammed"}]}}))

        # The rule, given without a restart: the next read of the ConfigMap (every 10 s) assesses
        # the app again, though nothing in it changed.
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(rules_configmap([rule])))
        status = app.wait(health_of("Widget", "mixer", "Degraded"), "the rule's Degraded", timeout=45)
        assert resource(status, "Widget", "mixer")["health"]["message"] == "failed: Turning: Jammed: gear 3 is jammed"
        assert status["health"] == {"status": "Degraded", "message": "failed: Turning: Jammed: gear 3 is jammed"}

        # A broken expression: Unknown with the expression and the library's error, and said once in
        # the controller's log, which keeps running and serving.
        broken = {**rule, "failed": "status.state =="}
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(rules_configmap([broken])))
        status = app.wait(health_of("Widget", "mixer", "Unknown"), "Unknown from the broken rule", timeout=45)
        message = resource(status, "Widget", "mixer")["health"]["message"]
        where = f"ConfigMap {APP_NAMESPACE}/{RULES_CONFIGMAP}, key widgets.yaml, rule 1"
        assert message.startswith(f"health rule for {group}/Widget ({where}): failed `status.state ==`: at 1:"), message
        assert status["health"]["status"] == "Unknown"
        app.refresh()  # another pass over the same broken rule
        app.wait(lambda s: "gantry.dev/refresh" not in (app.get()["metadata"].get("annotations") or {}),
                 "the refresh served")
        assert controller.process.poll() is None
        logged = [line for line in controller.log().splitlines() if f"health rules: {where}" in line]
        assert len(logged) == 1 and "failed `status.state ==`" in logged[0], logged

        # Fixed again, and the object's own state is what decides.
        app.kubectl("patch", f"widgets.{group}", "mixer", "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"state": "turning", "conditions": [
                        {"type": "Turning", "status": "True", "reason": "Turning", "message": "at speed 3"}]}}))
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(rules_configmap([rule])))
        app.wait(health_of("Widget", "mixer", "Healthy"), "Healthy by the rule's current", timeout=45)
    finally:
        cluster.kubectl("delete", "configmap", RULES_CONFIGMAP, "-n", APP_NAMESPACE, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, check=False)
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--ignore-not-found", "--wait=false", check=False)
