"""The controller's /metrics and /healthz, read over HTTP while real syncs happen."""

from __future__ import annotations

import urllib.request

import pytest
from harness import APP_NAMESPACE, web_app_files
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e


def scrape(controller) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(controller.metrics_url + "/metrics", timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, metric: str, **labels) -> float:
    """Sum of the samples of `metric` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == metric and wanted <= l)


def test_healthz_answers(controller):
    with urllib.request.urlopen(controller.metrics_url + "/healthz", timeout=5) as response:
        assert response.status == 200


def test_metrics_follow_syncs(make_app, controller):
    app = make_app()
    app.apply()
    app.wait_synced(app.repo.head)
    before = scrape(controller)
    info = value(before, "gantry_app_info", namespace=APP_NAMESPACE, name=app.name, repo=app.repo_url,
                 dest_namespace=app.destination, sync_status="Synced", health_status="Healthy")
    assert info == 1
    assert value(before, "gantry_app_sync_total", name=app.name, phase="Succeeded") >= 1
    assert value(before, "gantry_app_reconcile_duration_seconds_count", name=app.name) >= 1
    assert value(before, "gantry_git_request_duration_seconds_count", repo=app.repo_url, request_type="fetch") >= 1
    assert value(before, "gantry_kubectl_exec_total", command="apply") >= 4
    assert value(before, "gantry_cluster_api_resource_objects") >= 4

    sha = app.push(web_app_files(replicas=2), message="scale")
    app.refresh()
    app.wait_synced(sha)
    after = scrape(controller)
    assert value(after, "gantry_app_sync_total", name=app.name, phase="Succeeded") > \
        value(before, "gantry_app_sync_total", name=app.name, phase="Succeeded")
    assert value(after, "gantry_kubectl_exec_total", command="apply") > value(before, "gantry_kubectl_exec_total", command="apply")
    # Later syncs dry-run every object before applying any (a first sync applies new objects directly).
    assert value(after, "gantry_kubectl_exec_total", command="dry-run") > value(before, "gantry_kubectl_exec_total", command="dry-run")
    assert value(after, "gantry_git_request_duration_seconds_count", repo=app.repo_url) > \
        value(before, "gantry_git_request_duration_seconds_count", repo=app.repo_url)

    # A broken commit moves the app's info series to Failed: one series per app, never two.
    app.push({"k8s/kustomization.yaml": "resources: [missing.yaml]\n"}, message="break")
    app.refresh()
    app.wait_sync_status("Failed")
    broken = scrape(controller)
    series = [labels for (name, labels), _ in broken.items() if name == "gantry_app_info" and ("name", app.name) in labels]
    assert len(series) == 1 and ("sync_status", "Failed") in series[0]
