"""bench/: the pure parts — statistics, the table, and the generated benchmark apps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is not an installed package

from bench.chromium import clock_offset, longest_task, matching  # noqa: E402
from bench.generate import (RELEASE_CONFIGMAP, SERVICE_BUNDLE, kinds, large_app, repo_files, resource_entries,  # noqa: E402
                            small_app, ui_apps)
from bench.stats import Figure, Summary, fmt, percentile, ratio, table  # noqa: E402


def test_percentile_interpolates_between_ranks_like_numpy():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 10) == pytest.approx(1.3)
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([7], 90) == 7
    assert percentile([1, 2, 3], 0) == 1 and percentile([1, 2, 3], 100) == 3


def test_percentile_refuses_nothing_and_out_of_range():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summary_and_ratio():
    summary = Summary.of([3.0, 1.0, 2.0])
    assert (summary.n, summary.median, summary.min, summary.max, summary.mean) == (3, 2.0, 1.0, 3.0, 2.0)
    assert ratio([4.0, 6.0], [2.0, 2.0, 3.0]) == 2.5
    assert ratio([], [1.0]) is None and ratio([1.0], [0.0]) is None


def test_table_has_a_row_per_figure_with_median_spread_and_n():
    text = table("1. Title", [Figure("gantry", "first sync", "s", [1.0, 2.0, 3.0]), Figure("flux", "first sync", "s")],
                 ["a note"])
    lines = text.splitlines()
    assert lines[0] == "1. Title"
    gantry = next(line for line in lines if line.startswith("gantry"))
    assert "2.00" in gantry and "1.20–2.80" in gantry and "1.00–3.00" in gantry and gantry.split()[-2:] == ["3", "s"]
    assert next(line for line in lines if line.startswith("flux")).split()[-2:] == ["0", "s"]
    assert lines[-1] == "  a note"


def test_fmt_keeps_three_significant_figures():
    assert (fmt(0.01234), fmt(1.234), fmt(12.34), fmt(123.4), fmt(None)) == ("0.012", "1.23", "12.3", "123", "–")
    assert fmt(7.0, "count") == "7"


@pytest.mark.parametrize("total", [1000, 300, 57])
def test_large_app_has_exactly_the_objects_asked_for(total):
    objects = large_app("b1", total=total, namespaces=4)
    assert len(objects) == total
    counted = kinds(objects)
    assert counted["Namespace"] == 4 and counted["StatefulSet"] == 1
    assert counted["ClusterRole"] == counted["ClusterRoleBinding"] == 4
    assert counted["Deployment"] == (total - 15) // len(SERVICE_BUNDLE)
    refs = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    assert len(refs) == total, "names are unique"
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    assert namespaces == {"b1-0", "b1-1", "b1-2", "b1-3"}
    namespaced = [o for o in objects if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")]
    assert all(o["metadata"]["namespace"] in namespaces for o in namespaced)


def test_the_1000_object_app_is_a_realistic_mix():
    counted = kinds(large_app("b1"))
    assert counted["Deployment"] == 98 and counted["Service"] == 99 and counted["ConfigMap"] == 300
    assert counted["Secret"] == 196 and counted["Role"] == counted["RoleBinding"] == counted["ServiceAccount"] == 98


def test_a_new_revision_changes_only_the_release_configmap():
    before, after = large_app("b1", total=300), large_app("b1", total=300, revision=7)
    changed = [(a["kind"], a["metadata"]["name"]) for a, b in zip(after, before) if a != b]
    assert changed == [("ConfigMap", RELEASE_CONFIGMAP)]


def test_too_small_an_app_is_refused():
    with pytest.raises(ValueError):
        large_app("b1", total=10)
    with pytest.raises(ValueError):
        small_app(total=5)


def test_small_app_has_no_namespaces_so_one_repo_serves_any_destination():
    objects = small_app(20)
    assert len(objects) == 20
    assert all("namespace" not in o["metadata"] for o in objects)
    assert kinds(objects)["Deployment"] == 1


def test_repo_files_hold_every_object_once_and_list_them_in_the_kustomization():
    objects = large_app("b1", total=300)
    files = repo_files(objects)
    kustomization = yaml.safe_load(files.pop("k8s/kustomization.yaml"))
    assert sorted(f"k8s/{name}" for name in kustomization["resources"]) == sorted(files)
    loaded = [doc for text in files.values() for doc in yaml.safe_load_all(text)]
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    assert sorted(loaded, key=key) == sorted(objects, key=key)


def test_kustomize_renders_the_1000_object_repo(tmp_path, kustomize):
    for name, text in repo_files(large_app("b1")).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    rendered = subprocess.run([str(kustomize), "build", str(tmp_path / "k8s")], capture_output=True, text=True,
                              check=True).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(documents) == 1000
    assert documents[0]["kind"] == "Namespace"  # kustomize orders them first, as the floor's apply needs


def test_ui_apps_are_a_fleet_with_one_large_app():
    apps = ui_apps("ui-bench", count=300, large_resources=500)
    names = [app["metadata"]["name"] for app, _ in apps]
    assert len(set(names)) == 300 and names[0] == "app-0000" and names[-1] == "app-0299"
    assert {app["metadata"]["namespace"] for app, _ in apps} == {"ui-bench"}
    assert all("automated" not in app["spec"].get("syncPolicy", {}) for app, _ in apps), "nothing would deploy"
    assert len(apps[0][1]["resources"]) == 500
    assert {len(status["resources"]) for _, status in apps[1:]} == {20}
    syncs = {status["sync"]["status"] for _, status in apps}
    assert syncs == {"Synced", "OutOfSync", "Failed"}
    failed = next(status for _, status in apps if status["sync"]["status"] == "Failed")
    assert "deployment.yaml: line 12" in failed["message"] and failed["health"]["status"] == "Degraded"


def test_resource_entries_are_shaped_as_the_controller_writes_them():
    deployment, service, *_ = small_app(20)
    entries = resource_entries([deployment, service], namespace="web-prod")
    assert entries[0] == {"group": "apps", "version": "v1", "kind": "Deployment", "name": "web", "status": "Synced",
                          "namespace": "web-prod", "health": {"status": "Healthy"}}
    assert (entries[1]["group"], entries[1]["version"]) == ("", "v1")
    namespace = resource_entries(large_app("b1", total=300)[:1])[0]
    assert namespace["kind"] == "Namespace" and "namespace" not in namespace and "health" not in namespace


def test_clock_offset_trusts_the_shortest_round_trip():
    # (ours before, theirs, ours after): the second reading's round trip is 2 ms.
    readings = [(1000.0, 1510.0, 1020.0), (2000.0, 2501.0, 2002.0), (3000.0, 3400.0, 3050.0)]
    assert clock_offset(readings) == (500.0, 1.0)
    with pytest.raises(ValueError):
        clock_offset([])


def test_matching_counts_what_the_search_box_keeps():
    names = ["app-0042", "app-0420", "app-1042", "App-0042-b"]
    assert matching(names, "  APP-004 ") == 2
    assert matching(names, "042") == 4 and matching(names, "1042") == 1
    assert matching(names, "") == 4


def test_longest_task_counts_only_the_window():
    tasks = [[10.0, 60.0], [200.0, 700.0], [1500.0, 900.0]]
    assert longest_task(tasks, 0, 1000) == 700.0
    assert longest_task(tasks, 300, 1000) == 0.0
