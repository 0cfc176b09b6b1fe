"""One object, one Application; one namespace, the Applications it admits (the security issue's part 2).

A commit that names another Application's object is refused before anything is applied, so it can
neither overwrite that object nor, on revert, prune it; the owner's self-heal takes back an object
whose tracking id someone rewrote; in namespaced mode a namespace admits only its own Applications
and those --destination-apps grants it.
"""

from __future__ import annotations

import base64
import time

import yaml
from harness import APP_NAMESPACE, controller_instead, web_app_files

TRACKING = "gantry.dev/tracking-id"


def secret_files(name: str, value: str, *, namespace: str | None = None) -> dict[str, str]:
    """The web app plus an Opaque Secret `name` holding `password: value`."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    files = web_app_files()
    files["k8s/secret.yaml"] = yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
                                               "type": "Opaque", "stringData": {"password": value}})
    kustomization = yaml.safe_load(files["k8s/kustomization.yaml"])
    kustomization["resources"].append("secret.yaml")
    files["k8s/kustomization.yaml"] = yaml.safe_dump(kustomization)
    return files


def password(app, name: str) -> str:
    return base64.b64decode(app.object("secret", name)["data"]["password"]).decode()


def owner(app, kind: str, name: str) -> str:
    return app.object(kind, name)["metadata"]["annotations"][TRACKING].partition(":")[0]


def test_a_commit_naming_another_apps_object_is_refused_and_its_revert_prunes_nothing(make_app):
    team_b = make_app(secret_files("db", "team-b-secret"))
    team_b.apply()
    team_b.wait_synced(team_b.repo.head)
    version = team_b.object("secret", "db")["metadata"]["resourceVersion"]

    team_a = make_app(secret_files("db", "stolen", namespace=team_b.destination))
    team_a.apply()
    status = team_a.wait_sync_status("Failed")
    message = status["conditions"][0]["message"]
    assert f"k8s/secret.yaml: Secret {team_b.destination}/db: already managed by Application " \
           f"{APP_NAMESPACE}/{team_b.name}" in message, message
    assert "stolen" not in message and "team-b-secret" not in message
    # Refused before anything was applied: not even team-a's own objects went out.
    assert team_a.object("deployment", "web") is None
    assert team_b.object("secret", "db")["metadata"]["resourceVersion"] == version
    assert password(team_b, "db") == "team-b-secret"
    assert owner(team_b, "secret", "db") == f"{APP_NAMESPACE}/{team_b.name}"

    # The revert: team-a syncs without the Secret, and team-b's stays, its app Synced.
    reverted = team_a.push(web_app_files(), delete=("k8s/secret.yaml",), message="drop the secret")
    team_a.refresh()
    team_a.wait_synced(reverted)
    assert team_b.object("secret", "db")["metadata"]["resourceVersion"] == version
    team_b.refresh()
    status = team_b.wait_synced(team_b.repo.head)
    assert all(r["status"] == "Synced" for r in status["resources"])


def test_two_apps_in_one_namespace_cannot_share_an_object(make_app):
    first, second = make_app(), make_app()
    second.destination = first.destination
    first.apply()
    first.wait_synced(first.repo.head)
    second.apply()
    status = second.wait_sync_status("Failed")
    message = status["conditions"][0]["message"]
    for kind, file in (("Deployment.apps", "deployment"), ("Service", "service"), ("ConfigMap", "config")):
        assert f"k8s/{file}.yaml: {kind} {first.destination}/" in message, message
    assert f"already managed by Application {APP_NAMESPACE}/{first.name}" in message
    for kind, name in (("deployment", "web"), ("service", "web"), ("configmap", "web-config")):
        assert owner(first, kind, name) == f"{APP_NAMESPACE}/{first.name}"
    assert first.status()["sync"]["status"] == "Synced"


def test_the_owner_takes_back_an_object_whose_tracking_id_was_rewritten(make_app):
    app = make_app(secret_files("db", "right"))
    app.apply()
    app.wait_synced(app.repo.head)
    tracking = app.object("secret", "db")["metadata"]["annotations"][TRACKING]
    forged = f"{APP_NAMESPACE}/intruder:" + tracking.partition(":")[2]
    app.kubectl("annotate", "--overwrite", "secret", "db", f"{TRACKING}={forged}")
    app.kubectl("patch", "secret", "db", "--type", "merge", "-p", '{"stringData": {"password": "wrong"}}')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = app.object("secret", "db")
        if live["metadata"]["annotations"][TRACKING] == tracking and password(app, "db") == "right":
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"self-heal did not restore the Secret: {live['metadata']['annotations']}")
    app.wait_synced(app.repo.head)


# ------------------------------------------------------------------------------------------------
# Namespaced mode


def test_namespaced_mode_keeps_each_namespace_to_the_apps_it_admits(cluster, controller, make_app, tmp_path):
    suffix = tmp_path.name[-6:].lower().replace("_", "-")
    ns_a, ns_b = f"team-a-{suffix}", f"team-b-{suffix}"
    for name in (ns_a, ns_b):
        cluster.kubectl("create", "namespace", name)
    granted, aims_at_b, writes_into_b = make_app(), make_app(), make_app(secret_files("db", "x", namespace=ns_b))
    granted.destination = aims_at_b.destination = writes_into_b.destination = ns_a
    aims_at_b.destination = ns_b
    grant = f"{ns_a}={APP_NAMESPACE}/{granted.name},{APP_NAMESPACE}/{aims_at_b.name},{APP_NAMESPACE}/{writes_into_b.name}"
    try:
        with controller_instead(cluster, controller, tmp_path, "--namespaces", f"{ns_a},{ns_b}",
                                   "--destination-apps", grant):
            for app in (granted, aims_at_b, writes_into_b):
                app.apply()
            granted.wait_synced(granted.repo.head)

            status = aims_at_b.wait_sync_status("Failed")
            assert status["conditions"][0]["message"] == (
                f"destination namespace {ns_b!r} is not allowed for Application {APP_NAMESPACE}/{aims_at_b.name}: "
                f"it admits only {ns_b}/*; an administrator can grant it with --destination-apps "
                f"{ns_b}={APP_NAMESPACE}/{aims_at_b.name}")

            status = writes_into_b.wait_sync_status("Failed")
            message = status["conditions"][0]["message"]
            assert f"k8s/secret.yaml: Secret {ns_b}/db: namespace {ns_b!r} is not allowed for Application" in message
            assert "web" not in cluster.kubectl("get", "all", "-n", ns_b, "-o", "name").stdout
            assert cluster.kubectl("get", "secret", "db", "-n", ns_b, check=False).returncode != 0
    finally:
        for app in (granted, aims_at_b, writes_into_b):
            cluster.kubectl("delete", "applications.gantry.dev", app.name, "-n", APP_NAMESPACE, check=False)
        for name in (ns_a, ns_b):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
