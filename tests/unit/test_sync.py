"""controller/sync.py, the pure parts: the apply order and the inventory entries kept in status.

Applying and pruning need an API server; they are covered by tests/e2e.
"""

from __future__ import annotations

import random

import pytest

from controller.model import HealthResult, HealthStatus, ObjectRef, SyncStatus
from controller.status import resource_entry
from controller.sync import InventoryEntry, inventory_of, order_key, ordered


def obj(api_version: str, kind: str, name: str, namespace: str | None = "shop") -> dict:
    metadata = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


NAMESPACE = obj("v1", "Namespace", "shop", None)
CRD = obj("apiextensions.k8s.io/v1", "CustomResourceDefinition", "widgets.example.com", None)
SERVICE_ACCOUNT = obj("v1", "ServiceAccount", "web")
SECRET = obj("v1", "Secret", "db")
CONFIG_MAP = obj("v1", "ConfigMap", "settings")
SERVICE = obj("v1", "Service", "web")
DEPLOYMENT = obj("apps/v1", "Deployment", "web")
INGRESS = obj("networking.k8s.io/v1", "Ingress", "web")
WIDGET = obj("example.com/v1", "Widget", "blue")  # a custom resource of the CRD above
CERTIFICATE = obj("cert-manager.io/v1", "Certificate", "web")


def names(manifests) -> list[str]:
    return [f"{m['kind']}/{m['metadata'].get('namespace', '')}/{m['metadata']['name']}" for m in manifests]


def position(result: list[dict], manifest: dict) -> int:
    return next(i for i, m in enumerate(result) if m is manifest)


ALL = [NAMESPACE, CRD, SERVICE_ACCOUNT, SECRET, CONFIG_MAP, SERVICE, DEPLOYMENT, INGRESS, WIDGET, CERTIFICATE]


@pytest.fixture(params=range(5), ids=lambda seed: f"shuffle{seed}")
def shuffled(request) -> list[dict]:
    objects = list(ALL)
    random.Random(request.param).shuffle(objects)
    return objects


def test_namespaces_and_crds_come_first(shuffled):
    result = ordered(shuffled)
    assert {result[0]["kind"], result[1]["kind"]} == {"Namespace", "CustomResourceDefinition"}
    # ServiceAccount sorts before CRD in the kind table; the CRD still goes first.
    assert position(result, CRD) < position(result, SERVICE_ACCOUNT)


@pytest.mark.parametrize("before,after", [
    (SERVICE_ACCOUNT, DEPLOYMENT),
    (SECRET, DEPLOYMENT),
    (CONFIG_MAP, DEPLOYMENT),
    (SERVICE, DEPLOYMENT),
    (DEPLOYMENT, INGRESS),
    (INGRESS, WIDGET),  # custom kinds after every built-in kind
    (DEPLOYMENT, CERTIFICATE),
    (NAMESPACE, WIDGET),
], ids=lambda m: m["kind"])
def test_kind_order(shuffled, before, after):
    result = ordered(shuffled)
    assert position(result, before) < position(result, after)


def test_order_is_the_same_whatever_the_input_order(shuffled):
    assert names(ordered(shuffled)) == names(ordered(ALL))


def test_within_a_kind_by_namespace_then_name():
    maps = [obj("v1", "ConfigMap", "b", "alpha"), obj("v1", "ConfigMap", "a", "beta"), obj("v1", "ConfigMap", "a", "alpha")]
    assert names(ordered(maps)) == ["ConfigMap/alpha/a", "ConfigMap/alpha/b", "ConfigMap/beta/a"]


def test_custom_kinds_are_grouped_by_kind_then_sorted():
    custom = [obj("example.com/v1", "Widget", "a"), obj("cert-manager.io/v1", "Certificate", "z"),
              obj("example.com/v1", "Widget", "0"), obj("cert-manager.io/v1", "Certificate", "a")]
    assert names(ordered(custom)) == ["Certificate/shop/a", "Certificate/shop/z", "Widget/shop/0", "Widget/shop/a"]


def test_order_key_puts_prerequisites_in_stage_zero():
    assert order_key(NAMESPACE)[0] == order_key(CRD)[0] == 0
    assert all(order_key(m)[0] == 1 for m in ALL if m not in (NAMESPACE, CRD))


def test_ordered_returns_a_new_list_and_keeps_the_objects():
    objects = [DEPLOYMENT, NAMESPACE]
    result = ordered(objects)
    assert result == [NAMESPACE, DEPLOYMENT]
    assert objects == [DEPLOYMENT, NAMESPACE]


# ---------------------------------------------------------------------------------------------
# InventoryEntry

INVENTORY_CASES = [
    # (manifest, legacy status.inventory entry, ref)
    (DEPLOYMENT, {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "shop"},
     ObjectRef("apps", "Deployment", "shop", "web")),
    (CONFIG_MAP, {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": "shop"},
     ObjectRef("", "ConfigMap", "shop", "settings")),
    (NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "name": "shop"},
     ObjectRef("", "Namespace", "", "shop")),
    (obj("rbac.authorization.k8s.io/v1", "ClusterRole", "reader", None),
     {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "reader"},
     ObjectRef("rbac.authorization.k8s.io", "ClusterRole", "", "reader")),
]


@pytest.mark.parametrize("manifest,entry,ref", INVENTORY_CASES, ids=["deployment", "configmap", "namespace", "clusterrole"])
def test_inventory_entry_round_trips_through_status_resources(manifest, entry, ref):
    of = InventoryEntry.of(manifest)
    resource = resource_entry(of.ref, of.api_version.rpartition("/")[2], SyncStatus.SYNCED, None)
    assert InventoryEntry.of_resource(resource) == of
    assert InventoryEntry.parse(entry) == of
    assert of.ref == ref == ObjectRef.of(manifest)


def test_the_inventory_is_status_resources_or_the_legacy_list():
    stale = resource_entry(ObjectRef("apps", "Deployment", "shop", "old"), "v1", SyncStatus.OUT_OF_SYNC, None,
                           requires_pruning=True)
    current = resource_entry(ObjectRef("", "ConfigMap", "shop", "settings"), "v1", SyncStatus.SYNCED,
                             HealthResult(HealthStatus.HEALTHY, ""))
    assert inventory_of({"resources": [current, stale]}) == [
        InventoryEntry("v1", "ConfigMap", "shop", "settings"), InventoryEntry("apps/v1", "Deployment", "shop", "old")]
    # Written by an earlier Gantry: its list wins until the next pass replaces it.
    legacy = {"inventory": [INVENTORY_CASES[0][1]], "resources": [current]}
    assert inventory_of(legacy) == [InventoryEntry.of(DEPLOYMENT)]
    assert inventory_of({}) == []


def test_cluster_scoped_entry_has_no_namespace():
    entry = InventoryEntry.of(NAMESPACE)
    assert entry.namespace == ""
    assert "namespace" not in resource_entry(entry.ref, "v1", SyncStatus.SYNCED, None)


def test_parse_accepts_an_explicit_empty_or_null_namespace():
    for namespace in ("", None):
        entry = InventoryEntry.parse({"apiVersion": "v1", "kind": "Namespace", "name": "shop", "namespace": namespace})
        assert entry == InventoryEntry("v1", "Namespace", "", "shop")


def test_entries_are_hashable_values_so_old_minus_new_finds_what_to_prune():
    old = {InventoryEntry.parse(e) for e in (
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": "shop"},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "legacy", "namespace": "shop"},
    )}
    new = {InventoryEntry.of(DEPLOYMENT)}
    assert old - new == {InventoryEntry("v1", "ConfigMap", "shop", "legacy")}


def test_prune_and_its_previews_delete_only_what_still_carries_this_apps_id_for_that_object():
    from controller.diff import tracking_id
    from controller.model import TRACKING_ANNOTATION
    from controller.sync import prunable

    ref = ObjectRef("", "ConfigMap", "shop", "web-config")

    def live(owner: str | None) -> dict:
        annotations = {TRACKING_ANNOTATION: owner} if owner is not None else {}
        return {"metadata": {"name": "web-config", "namespace": "shop", "annotations": annotations}}

    assert prunable(live(tracking_id("apps/web", ref)), "apps/web", ref)
    assert not prunable(live(tracking_id("apps/other", ref)), "apps/web", ref)  # adopted by another app
    # This app's id, but for another object (copied by hand): not this inventory entry's object.
    assert not prunable(live(tracking_id("apps/web", ObjectRef("", "ConfigMap", "shop", "other"))), "apps/web", ref)
    assert not prunable(live(None), "apps/web", ref)  # created by someone else since
