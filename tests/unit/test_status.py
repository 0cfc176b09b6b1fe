"""controller/status.py: images, external URLs, conditions and the small formatting helpers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from controller.model import Action, HealthResult, HealthStatus, ObjectRef, SyncStatus
from controller.reconcile import _sync_result_entry
from controller.sync import ResourceResult
from controller.status import (
    DELETION,
    PRE_DELETE_HOOKS,
    Reason,
    Report,
    condition,
    external_urls,
    history_after_sync,
    STATUS_BUDGET,
    images,
    inventory_bytes,
    inventory_refusal,
    merge_conditions,
    merge_patch,
    one_line,
    resource_entry,
    short_revision,
    summary,
    timestamp,
)


def pod_spec(*images_: str, init: tuple[str, ...] = ()) -> dict:
    spec: dict = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images_)]}
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": image} for i, image in enumerate(init)]
    return spec


def workload(kind: str, *images_: str, init: tuple[str, ...] = (), api: str = "apps/v1") -> dict:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": kind.lower()},
            "spec": {"template": {"spec": pod_spec(*images_, init=init)}}}


def ingress(rules: list[dict], tls: list[dict] | None = None, lb: list[dict] | None = None, **spec: object) -> dict:
    obj = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
           "spec": {"rules": rules, **spec}, "status": {"loadBalancer": {"ingress": lb} if lb else {}}}
    if tls is not None:
        obj["spec"]["tls"] = tls
    return obj


def rule(host: str | None, *paths: str) -> dict:
    r: dict = {"http": {"paths": [{"path": p, "pathType": "Prefix",
                                   "backend": {"service": {"name": "web", "port": {"number": 80}}}} for p in paths]}}
    if host:
        r["host"] = host
    return r


def service(type_: str, ports: list[int], lb: list[dict] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
            "spec": {"type": type_, "ports": [{"port": p} for p in ports]},
            "status": {"loadBalancer": {"ingress": lb} if lb else {}}}


# -- images ---------------------------------------------------------------------------------------


def test_images_from_every_workload_kind_sorted_and_unique() -> None:
    objects = [
        workload("Deployment", "nginx:1.27.3-alpine", init=("busybox:1.37.0",)),
        workload("StatefulSet", "mariadb:11.4.4"),
        workload("DaemonSet", "fluent/fluent-bit:3.2.4"),
        workload("ReplicaSet", "nginx:1.27.3-alpine"),
        workload("Job", "alpine:3.21", api="batch/v1"),
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "backup"},
         "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": pod_spec("mariadb:11.4.4", init=("curlimages/curl:8.11.1",))}}}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug"}, "spec": pod_spec("busybox:1.37.0")},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"image": "not-an-image:1"}},
    ]
    assert images(objects) == [
        "alpine:3.21",
        "busybox:1.37.0",
        "curlimages/curl:8.11.1",
        "fluent/fluent-bit:3.2.4",
        "mariadb:11.4.4",
        "nginx:1.27.3-alpine",
    ]


def test_images_tolerates_partial_objects() -> None:
    assert images([{"kind": "Deployment"}, {"kind": "Pod", "spec": {"containers": [{"name": "x"}]}}, {}]) == []


# -- external URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "urls"),
    [
        (ingress([rule("krampoline.local", "/")]), ["http://krampoline.local"]),
        (ingress([rule("shop.example.com", "/", "/api")], tls=[{"hosts": ["shop.example.com"], "secretName": "t"}]),
         ["https://shop.example.com", "https://shop.example.com/api"]),
        # TLS for another host only
        (ingress([rule("a.example.com", "/")], tls=[{"hosts": ["b.example.com"]}]), ["http://a.example.com"]),
        # ingress-nginx regex and GCE wildcard paths cut to what a browser can open
        (ingress([rule("a.example.com", "/api(/|$)(.*)", "/static/*", "/*")]),
         ["http://a.example.com", "http://a.example.com/api", "http://a.example.com/static/"]),
        # a rule without paths, and one without http at all
        (ingress([{"host": "b.example.com"}]), ["http://b.example.com"]),
        # no host: the address the controller published
        (ingress([rule(None, "/")], lb=[{"ip": "172.18.0.2"}, {"hostname": "lb.example.net"}]),
         ["http://172.18.0.2", "http://lb.example.net"]),
        (ingress([rule(None, "/")]), []),
        (ingress([rule("*.example.com", "/")]), []),
        (ingress([], lb=[{"ip": "10.0.0.9"}], defaultBackend={"service": {"name": "web", "port": {"number": 80}}}),
         ["http://10.0.0.9"]),
        (service("LoadBalancer", [80, 443, 8080], lb=[{"ip": "172.18.255.200"}]),
         ["http://172.18.255.200", "http://172.18.255.200:8080", "https://172.18.255.200"]),
        (service("LoadBalancer", [80], lb=[{"hostname": "a1b2.elb.amazonaws.com"}]), ["http://a1b2.elb.amazonaws.com"]),
        (service("LoadBalancer", [80]), []),
        (service("ClusterIP", [80], lb=[{"ip": "1.2.3.4"}]), []),
    ],
)
def test_external_urls(obj: dict, urls: list[str]) -> None:
    assert external_urls([obj]) == urls


def test_external_urls_unique_across_objects() -> None:
    objs = [ingress([rule("a.example.com", "/")]), ingress([rule("a.example.com", "/")]),
            service("LoadBalancer", [80], lb=[{"ip": "1.2.3.4"}])]
    assert external_urls(objs) == ["http://1.2.3.4", "http://a.example.com"]


def test_summary_primary_url() -> None:
    objs = [workload("Deployment", "nginx:1.27.3-alpine"), ingress([rule("krampoline.local", "/", "/api")])]
    assert summary(objs) == {
        "images": ["nginx:1.27.3-alpine"],
        "externalURLs": ["http://krampoline.local", "http://krampoline.local/api"],
        "primaryURL": "http://krampoline.local",
    }
    assert summary([])["primaryURL"] is None  # None removes a stale URL in a merge patch


# -- conditions -----------------------------------------------------------------------------------

T0, T1 = "2025-01-14T09:00:00Z", "2025-01-14T10:00:00Z"


def test_condition_keeps_transition_time_of_the_same_condition() -> None:
    previous = [{"type": "SyncError", "message": "boom", "lastTransitionTime": T0}]
    assert condition("SyncError", "boom", T1, previous) == {"type": "SyncError", "message": "boom", "lastTransitionTime": T0}


@pytest.mark.parametrize(
    "previous",
    [None, [], [{"type": "SyncError", "message": "other", "lastTransitionTime": T0}],
     [{"type": "ComparisonError", "message": "boom", "lastTransitionTime": T0}]],
)
def test_condition_new_or_changed_gets_now(previous: list[dict] | None) -> None:
    assert condition("SyncError", "boom", T1, previous)["lastTransitionTime"] == T1


def test_merge_conditions_drops_resolved_ones() -> None:
    previous = [{"type": "SyncError", "message": "boom", "lastTransitionTime": T0},
                {"type": "ComparisonError", "message": "gone", "lastTransitionTime": T0}]
    assert merge_conditions([("SyncError", "boom"), ("InvalidSpecError", "bad")], T1, previous) == [
        {"type": "InvalidSpecError", "message": "bad", "lastTransitionTime": T1},
        {"type": "SyncError", "message": "boom", "lastTransitionTime": T0},
    ]


# -- small helpers --------------------------------------------------------------------------------


def test_short_revision() -> None:
    assert short_revision("a1b2c3d4e5f60718293a4b5c6d7e8f9011223344") == "a1b2c3d"
    assert short_revision("v1.2.0") == "v1.2.0"
    assert short_revision("") == "" and short_revision(None) == ""


def test_one_line() -> None:
    assert one_line("sync failed:\n  Deployment web:\tinvalid") == "sync failed: Deployment web: invalid"
    long = one_line("x" * 500, limit=20)
    assert len(long) == 20 and long.endswith("…")


def test_timestamp() -> None:
    moment = datetime(2025, 1, 14, 10, 12, 3, 999, tzinfo=timezone(timedelta(hours=1)))
    assert timestamp(moment) == "2025-01-14T09:12:03Z"
    assert timestamp().endswith("Z")


def test_resource_entry() -> None:
    ref = ObjectRef("apps", "Deployment", "krampoline", "web")
    assert resource_entry(ref, "v1", SyncStatus.SYNCED, HealthResult(HealthStatus.PROGRESSING, "1 of 2 replicas updated")) == {
        "group": "apps", "version": "v1", "kind": "Deployment", "namespace": "krampoline", "name": "web",
        "status": "Synced", "health": {"status": "Progressing", "message": "1 of 2 replicas updated"},
    }
    ns = ObjectRef("", "Namespace", "", "krampoline")
    assert resource_entry(ns, "v1", SyncStatus.OUT_OF_SYNC, None, requires_pruning=True) == {
        "group": "", "version": "v1", "kind": "Namespace", "name": "krampoline", "status": "OutOfSync",
        "requiresPruning": True,
    }


def test_merge_patch_carries_only_changes_and_nulls_for_removed_keys():
    old = {"sync": {"status": "Synced", "revision": "a"}, "health": {"status": "Degraded", "message": "pod x"},
           "resources": [1, 2], "reconciledAt": "t1", "operationState": {"phase": "Succeeded"}}
    new = {"sync": {"status": "Synced", "revision": "a"}, "health": {"status": "Healthy"},
           "resources": [1, 2, 3], "reconciledAt": "t2", "operationState": None}
    patch = merge_patch(old, new)
    assert patch == {"health": {"status": "Healthy", "message": None}, "resources": [1, 2, 3],
                     "reconciledAt": "t2", "operationState": None}
    assert merge_patch(new, new) == {}


SOURCE = {"repoURL": "https://git.example/shop.git", "path": "k8s", "targetRevision": "HEAD"}


def synced(history: list[dict], revision: str, *, changed: bool = True, limit: int = 10) -> list[dict]:
    return history_after_sync(history, revision, SOURCE, "2026-12-02T10:00:00Z", changed=changed, limit=limit)


def test_history_counts_ids_up_and_keeps_the_newest_ten_by_default():
    history: list[dict] = []
    for number in range(13):
        history = synced(history, f"{number:040x}")
    assert [entry["id"] for entry in history] == list(range(3, 13))
    assert history[-1] == {"id": 12, "revision": f"{12:040x}", "deployedAt": "2026-12-02T10:00:00Z", "source": SOURCE}


def test_history_limit_is_the_revision_history_limit():
    history: list[dict] = []
    for number in range(5):
        history = synced(history, f"{number:040x}", limit=2)
    assert [entry["id"] for entry in history] == [3, 4]
    assert synced(history, "f" * 40, limit=0) == []


def test_a_sync_that_changed_nothing_adds_no_entry_for_the_same_revision():
    history = synced([], "a" * 40)
    assert synced(history, "a" * 40, changed=False) == history
    assert len(synced(history, "a" * 40, changed=True)) == 2  # a self-heal re-applied it
    assert len(synced(history, "b" * 40, changed=False)) == 2  # another revision, identical objects


# ---------------------------------------------------------------------------------------------
# How much of the Application an app's inventory takes


@pytest.mark.parametrize("message", ["", "Deployment has 1/3 ready replicas", "x" * 60])
def test_the_inventory_estimate_is_on_the_large_side_of_what_the_status_really_takes(message):
    refs = [ObjectRef(group, kind, "shop", f"{kind.lower()}-{i}") for i in range(300)
            for group, kind in (("", "ConfigMap"), ("apps", "Deployment"), ("networking.k8s.io", "Ingress"))]
    health = HealthResult(HealthStatus.PROGRESSING, message)
    entries = [resource_entry(ref, "v1", SyncStatus.SYNCED, health) for ref in refs]
    results = [_sync_result_entry(ResourceResult(ref, Action.CREATED)) for ref in refs]
    # The API server stores custom resources as compact JSON.
    real = len(json.dumps({"resources": entries, "syncResult": {"resources": results}}, separators=(",", ":")))
    estimate = inventory_bytes(refs)
    assert real <= estimate <= 1.5 * real


def test_objects_without_a_namespace_count_the_destination():
    refs = [ObjectRef("", "ConfigMap", "", "settings")]
    assert inventory_bytes(refs, "a-long-destination") - inventory_bytes(refs) == 2 * len("a-long-destination")


def test_the_refusal_says_the_limit_and_what_to_do():
    message = inventory_refusal(20001, 6_000_000)
    assert message.startswith("the app renders 20001 objects, and the Application's status would need about 5.7 MiB")
    assert f"the {STATUS_BUDGET / 2**20:.1f} MiB it may use" in message and "nothing was applied" in message
    assert "split the app into several Applications" in message


# -- deletion -------------------------------------------------------------------------------------


def test_what_a_sync_records_for_the_deletion_stays_until_the_next_sync_says_otherwise() -> None:
    report = Report({}, 1, "2025-01-01T00:00:00Z")
    report.pre_delete_hooks("abc", ["Job/cleanup"], {"path": "old"})
    recorded = {"revision": "abc", "hooks": ["Job/cleanup"], "source": {"path": "old"}}
    assert report.status[PRE_DELETE_HOOKS] == recorded
    later = Report(report.status, 1, "2025-01-01T00:01:00Z")  # a pass without a sync keeps it
    assert later.status[PRE_DELETE_HOOKS] == recorded
    later.pre_delete_hooks("def", [])  # a revision without PreDelete hooks: removed (null in the patch)
    assert later.status[PRE_DELETE_HOOKS] is None
    assert merge_patch(report.status, later.status)[PRE_DELETE_HOOKS] is None
    # An app that never had any gets no key at all: its status (and each write of it) is as before.
    plain = Report({}, 1, "2025-01-01T00:00:00Z")
    plain.pre_delete_hooks("abc", [])
    assert PRE_DELETE_HOOKS not in plain.status
    again = Report(later.status, 1, "2025-01-01T00:02:00Z")
    again.pre_delete_hooks("def", [])
    assert merge_patch(later.status, again.status).keys() <= {"reconciledAt"}


def test_a_stuck_deletion_says_why_once_and_keeps_the_rest_of_the_status() -> None:
    previous = {"sync": {"status": "Synced"}, "resources": [{"kind": "Deployment", "name": "web"}],
                "reconciledAt": "2025-01-01T00:00:00Z", "message": "synced to abc",
                "conditions": [{"type": "UnsupportedFieldWarning", "message": "x", "lastTransitionTime": "t"}]}
    report = Report(previous, 1, "2025-01-01T00:05:00Z")
    report.deletion({"phase": "Failed", "hooks": []}, failure="PreDelete hook Job/cleanup failed: boom")
    status = report.status
    assert status["resources"] == previous["resources"] and status["sync"] == previous["sync"]
    assert status[DELETION] == {"phase": "Failed", "hooks": []}
    assert [c["type"] for c in status["conditions"]] == [Reason.DELETION_ERROR, "UnsupportedFieldWarning"]
    assert status["conditions"][0]["message"] == "PreDelete hook Job/cleanup failed: boom"
    assert status["conditions"][0]["lastTransitionTime"] == "2025-01-01T00:05:00Z"
    assert status["message"] == "PreDelete hook Job/cleanup failed: boom"
    assert [(e.type, e.reason) for e in report.events] == [("Warning", Reason.DELETION_ERROR)]
    # The next pass finds the same: nothing to write (each write wakes the app again), no second event.
    same = Report(status, 1, "2025-01-01T00:06:00Z")
    same.deletion({"phase": "Failed", "hooks": []}, failure="PreDelete hook Job/cleanup failed: boom")
    assert merge_patch(status, same.status) == {} and same.events == []
    # Running again: the condition goes, the message says what it waits for.
    running = Report(status, 1, "2025-01-01T00:07:00Z")
    running.deletion({"phase": "Running", "hooks": []}, message="deleting: waiting for PreDelete hook Job/cleanup")
    assert [c["type"] for c in running.status["conditions"]] == ["UnsupportedFieldWarning"]
    assert running.status["reconciledAt"] == "2025-01-01T00:07:00Z" and running.events == []
