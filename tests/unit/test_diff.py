"""controller/diff.py, the pure parts: normalise, compare, prepare, Secret masking, unserved-API messages.

The live and predicted objects are fixtures under testdata/diff/ shaped like real API server answers;
`prepare` takes a plain `resource_of` function, given here as a small table instead of discovery.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from controller.diff import (compare, mask_secret, normalise, owned_elsewhere, owner_of, prepare, tracking_id,
                             unified_diff, unserved_message)
from controller.kube import Resource, UnservedApiError
from controller.model import IgnoreDifference, ObjectRef

TESTDATA = Path(__file__).parent / "testdata" / "diff"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def load(name: str) -> dict:
    return yaml.safe_load((TESTDATA / f"{name}.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# normalise


def test_normalise_drops_what_the_server_owns_and_keeps_the_rest():
    live = load("deployment-live")
    result = normalise(live)

    assert "status" not in result
    for key in ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid"):
        assert key not in result["metadata"], key
    assert LAST_APPLIED not in result["metadata"]["annotations"]
    # What users (and other controllers) set stays: it is part of the comparison.
    assert result["metadata"]["name"] == "web"
    assert result["metadata"]["namespace"] == "shop"
    assert result["metadata"]["labels"] == {"app": "web", "app.kubernetes.io/managed-by": "gantry"}
    assert result["metadata"]["annotations"] == {
        "deployment.kubernetes.io/revision": "3",
        "gantry.dev/tracking-id": "argocd/shop:apps/Deployment:shop/web",
    }
    assert result["spec"] == live["spec"]


def test_normalise_removes_annotations_left_empty_by_dropping_last_applied():
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "c", "annotations": {LAST_APPLIED: "{}"}}, "data": {"k": "v"}}
    assert normalise(obj) == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}


def test_normalise_does_not_mutate_its_input():
    live = load("deployment-live")
    before = copy.deepcopy(live)
    ignore = IgnoreDifference("apps", "Deployment", ("/spec/replicas", "/spec/template/spec/containers/1"))
    normalise(live, [ignore])
    assert live == before


def _deployment(name: str = "web", namespace: str = "shop") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"example.com/rollout": "a", "weird~key": "b", "keep": "c"},
        },
        "spec": {
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "web", "image": "web:1"}, {"name": "proxy", "image": "envoy:1"}]}},
        },
    }


# (ignoreDifferences entry, the value at spec.replicas afterwards: None when removed)
MATCHING = [
    ("group and kind", IgnoreDifference("apps", "Deployment", ("/spec/replicas",)), None),
    ("and name", IgnoreDifference("apps", "Deployment", ("/spec/replicas",), name="web"), None),
    ("and namespace", IgnoreDifference("apps", "Deployment", ("/spec/replicas",), namespace="shop"), None),
    ("and both", IgnoreDifference("apps", "Deployment", ("/spec/replicas",), name="web", namespace="shop"), None),
    ("other name", IgnoreDifference("apps", "Deployment", ("/spec/replicas",), name="api"), 3),
    ("other namespace", IgnoreDifference("apps", "Deployment", ("/spec/replicas",), namespace="prod"), 3),
    ("other kind", IgnoreDifference("apps", "StatefulSet", ("/spec/replicas",)), 3),
    ("core group for an apps object", IgnoreDifference("", "Deployment", ("/spec/replicas",)), 3),
    ("other group", IgnoreDifference("extensions", "Deployment", ("/spec/replicas",)), 3),
]


@pytest.mark.parametrize("ignore,replicas", [c[1:] for c in MATCHING], ids=[c[0] for c in MATCHING])
def test_ignore_differences_apply_only_to_the_objects_they_match(ignore, replicas):
    result = normalise(_deployment(), [ignore])
    assert result["spec"].get("replicas") == replicas
    assert result["spec"]["template"] == _deployment()["spec"]["template"]


def test_escaped_pointer_names_a_key_with_a_slash():
    ignore = IgnoreDifference("apps", "Deployment", ("/metadata/annotations/example.com~1rollout",))
    assert normalise(_deployment(), [ignore])["metadata"]["annotations"] == {"weird~key": "b", "keep": "c"}


def test_escaped_pointer_names_a_key_with_a_tilde():
    ignore = IgnoreDifference("apps", "Deployment", ("/metadata/annotations/weird~0key",))
    assert normalise(_deployment(), [ignore])["metadata"]["annotations"] == {"example.com/rollout": "a", "keep": "c"}


def test_pointer_with_list_indices():
    ignore = IgnoreDifference("apps", "Deployment", ("/spec/template/spec/containers/0/image",))
    containers = normalise(_deployment(), [ignore])["spec"]["template"]["spec"]["containers"]
    assert containers == [{"name": "web"}, {"name": "proxy", "image": "envoy:1"}]


def test_pointer_to_a_list_element_removes_it():
    ignore = IgnoreDifference("apps", "Deployment", ("/spec/template/spec/containers/1",))
    containers = normalise(_deployment(), [ignore])["spec"]["template"]["spec"]["containers"]
    assert containers == [{"name": "web", "image": "web:1"}]


@pytest.mark.parametrize("pointer", [
    "/spec/strategy/rollingUpdate/maxSurge",  # missing intermediate key
    "/spec/minReadySeconds",  # missing leaf
    "/spec/template/spec/containers/7/image",  # index past the end
    "/spec/template/spec/containers/web/image",  # a name where an index belongs
    "/spec/replicas/value",  # through a scalar
    "",  # the whole document: not removable, and not an error
])
def test_pointer_to_nothing_changes_nothing_and_raises_nothing(pointer):
    ignore = IgnoreDifference("apps", "Deployment", (pointer,))
    assert normalise(_deployment(), [ignore]) == normalise(_deployment())


# ---------------------------------------------------------------------------------------------
# compare


def test_live_with_defaults_and_status_equals_its_dry_run():
    assert compare(load("deployment-predicted"), load("deployment-live")) is True


def test_changed_replicas_is_drift():
    predicted = load("deployment-predicted")
    predicted["spec"]["replicas"] = 5
    assert compare(predicted, load("deployment-live")) is False


def test_changed_image_in_a_list_is_drift():
    predicted = load("deployment-predicted")
    predicted["spec"]["template"]["spec"]["containers"][1]["image"] = "envoyproxy/envoy:v1.32.0"
    assert compare(predicted, load("deployment-live")) is False


def test_changed_label_is_drift():
    predicted = load("deployment-predicted")
    predicted["metadata"]["labels"]["tier"] = "frontend"
    assert compare(predicted, load("deployment-live")) is False


def test_ignored_pointer_difference_is_not_drift():
    predicted = load("deployment-predicted")
    predicted["spec"]["replicas"] = 5  # an autoscaler changed it live; git says otherwise
    ignores = [IgnoreDifference("apps", "Deployment", ("/spec/replicas",), name="web")]
    assert compare(predicted, load("deployment-live"), ignores) is True
    # …and only that pointer is ignored.
    predicted["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/example/web:1.5.0"
    assert compare(predicted, load("deployment-live"), ignores) is False


# ---------------------------------------------------------------------------------------------
# prepare

RESOURCES = {
    ("v1", "ConfigMap"): Resource("v1", "ConfigMap", "configmaps", True),
    ("v1", "Namespace"): Resource("v1", "Namespace", "namespaces", False),
    ("apps/v1", "Deployment"): Resource("apps/v1", "Deployment", "deployments", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): Resource("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
}


def resource_of(manifest: dict) -> Resource:
    try:
        return RESOURCES[(manifest["apiVersion"], manifest["kind"])]
    except KeyError:
        raise UnservedApiError(manifest["apiVersion"], manifest["kind"]) from None


def _prepare(*objects: dict) -> list[dict]:
    return prepare(objects, resource_of, destination_namespace="shop", app_key="argocd/guestbook")


def test_namespaced_object_without_namespace_gets_the_destination():
    [cm] = _prepare({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}})
    assert cm["metadata"]["namespace"] == "shop"


def test_namespaced_object_keeps_its_own_namespace():
    [deploy] = _prepare({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "other"}})
    assert deploy["metadata"]["namespace"] == "other"
    assert deploy["metadata"]["annotations"]["gantry.dev/tracking-id"] == "argocd/guestbook:apps/Deployment:other/web"


def test_cluster_scoped_object_loses_its_namespace():
    [role] = _prepare({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                       "metadata": {"name": "reader", "namespace": "shop"}})
    assert "namespace" not in role["metadata"]
    assert role["metadata"]["annotations"]["gantry.dev/tracking-id"] == (
        "argocd/guestbook:rbac.authorization.k8s.io/ClusterRole:/reader")


def test_tracking_label_and_annotation_are_added_next_to_the_users_own():
    [cm] = _prepare({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "settings", "labels": {"app": "web"}, "annotations": {"team": "shop"}}})
    assert cm["metadata"]["labels"] == {"app": "web", "app.kubernetes.io/managed-by": "gantry"}
    assert cm["metadata"]["annotations"] == {"team": "shop", "gantry.dev/tracking-id": "argocd/guestbook:/ConfigMap:shop/settings"}


def test_tracking_values_set_by_the_source_are_overwritten():
    # A manifest copied from another app's live object must not claim that app's ownership.
    [cm] = _prepare({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "settings",
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"gantry.dev/tracking-id": "argocd/other:/ConfigMap:shop/settings"},
    }})
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gantry"
    assert cm["metadata"]["annotations"]["gantry.dev/tracking-id"] == "argocd/guestbook:/ConfigMap:shop/settings"


def test_prepare_does_not_mutate_its_inputs():
    objects = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "labels": {"app": "web"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "namespace": "x"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}},
    ]
    before = copy.deepcopy(objects)
    prepared = _prepare(*objects)
    assert objects == before
    assert [o["metadata"]["name"] for o in prepared] == ["settings", "shop", "web"]


def test_prepare_raises_for_an_unserved_api():
    with pytest.raises(UnservedApiError):
        _prepare({"apiVersion": "networking.k8s.io/v1beta1", "kind": "Ingress", "metadata": {"name": "web"}})


def test_tracking_id_format():
    assert tracking_id("argocd/guestbook", ObjectRef("apps", "Deployment", "shop", "web")) == (
        "argocd/guestbook:apps/Deployment:shop/web")
    assert tracking_id("argocd/guestbook", ObjectRef("", "Namespace", "", "shop")) == "argocd/guestbook:/Namespace:/shop"


@pytest.mark.parametrize("namespace", [None, ""], ids=["null", "empty"])
def test_namespaced_object_with_empty_namespace_gets_the_destination(namespace):
    [cm] = _prepare({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": namespace}})
    assert cm["metadata"]["namespace"] == "shop"
    assert cm["metadata"]["annotations"]["gantry.dev/tracking-id"] == "argocd/guestbook:/ConfigMap:shop/settings"


@pytest.mark.parametrize("field", ["labels", "annotations"])
def test_null_labels_or_annotations_are_treated_as_empty(field):
    [cm] = _prepare({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", field: None}})
    assert cm["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "gantry"}
    assert cm["metadata"]["annotations"] == {"gantry.dev/tracking-id": "argocd/guestbook:/ConfigMap:shop/settings"}


# ---------------------------------------------------------------------------------------------
# Secret masking

# base64 of "hunter2-live" / "admin-live" in secret-live.yaml, and what they decode to.
LIVE_VALUES = ("aHVudGVyMi1saXZl", "YWRtaW4tbGl2ZQ==", "hunter2-live", "admin-live")


def _target_secret() -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"}, "type": "Opaque",
            "data": {"password": "czNjcjN0LXRhcmdldA=="},  # s3cr3t-target
            "stringData": {"api-token": "tok-9f8e7d6c"}}


def test_mask_secret_replaces_every_value_and_keeps_the_keys():
    masked = mask_secret(load("secret-live"))
    assert masked["data"] == {"password": "++++++++", "username": "++++++++"}
    text = yaml.safe_dump(masked)
    for value in LIVE_VALUES:
        assert value not in text  # not in data, nor in the last-applied annotation that repeats it


def test_mask_secret_masks_string_data_and_leaves_the_input_alone():
    target = _target_secret()
    before = copy.deepcopy(target)
    masked = mask_secret(target)
    assert masked["stringData"] == {"api-token": "++++++++"}
    assert masked["data"] == {"password": "++++++++"}
    assert target == before


@pytest.mark.parametrize("obj", [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"password": "visible"}},
    # Same kind name in another group is not a core Secret.
    {"apiVersion": "example.com/v1", "kind": "Secret", "metadata": {"name": "c"}, "data": {"password": "visible"}},
])
def test_mask_secret_leaves_other_kinds_as_they_are(obj):
    assert mask_secret(obj) == obj


def test_mask_secret_of_nothing_is_nothing():
    assert mask_secret(None) is None


def test_unified_diff_of_a_secret_never_shows_values():
    text = unified_diff(load("secret-live"), _target_secret())
    assert text  # keys appear and disappear: there is a diff to show
    for value in (*LIVE_VALUES, "czNjcjN0LXRhcmdldA==", "s3cr3t-target", "tok-9f8e7d6c"):
        assert value not in text
    for key in ("password", "username", "api-token"):
        assert key in text
    assert "++++++++" in text


def test_unified_diff_of_a_new_secret_never_shows_values():
    text = unified_diff(None, _target_secret())
    assert "czNjcjN0LXRhcmdldA==" not in text and "tok-9f8e7d6c" not in text
    assert "+  password: ++++++++" in text


def test_unified_diff_shows_changes_to_other_kinds():
    live = load("deployment-live")
    predicted = load("deployment-predicted")
    predicted["spec"]["replicas"] = 5
    text = unified_diff(live, predicted)
    assert text.startswith("--- live\n+++ target\n")
    assert "-  replicas: 2\n" in text
    assert "+  replicas: 5\n" in text
    # Server-owned noise never shows up as a change.
    for noise in ("resourceVersion", "managedFields", "generation", "last-applied-configuration", "observedGeneration"):
        assert noise not in text


def test_unified_diff_of_equal_objects_is_empty():
    assert unified_diff(load("deployment-live"), load("deployment-predicted")) == ""


# ---------------------------------------------------------------------------------------------
# unserved APIs


def test_removed_ingress_api_says_what_to_use_instead():
    message = unserved_message(UnservedApiError("networking.k8s.io/v1beta1", "Ingress"))
    assert message.startswith("networking.k8s.io/v1beta1 Ingress is not served by this cluster")
    assert "use networking.k8s.io/v1" in message
    assert "service.name" in message


def test_unknown_custom_kind_suggests_installing_its_crd():
    message = unserved_message(UnservedApiError("cert-manager.io/v1", "Certificate"))
    assert message.startswith("cert-manager.io/v1 Certificate is not served by this cluster")
    assert "install the CRD" in message
    assert "removed" not in message


# ---------------------------------------------------------------------------------------------
# owned_elsewhere: one object, one Application


def _live(name: str, owner: str | None) -> dict:
    annotations = {"gantry.dev/tracking-id": tracking_id(owner, ObjectRef("", "Secret", "team-b", name))} if owner else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "team-b",
                                                                "annotations": annotations}}


def test_owner_of_reads_the_tracking_id():
    assert owner_of(_live("db", "gantry/team-b")) == "gantry/team-b"
    assert owner_of(_live("db", None)) is None
    assert owner_of({"metadata": {"annotations": {"gantry.dev/tracking-id": "no-colon"}}}) is None


def test_objects_of_another_application_are_conflicts_and_others_are_not():
    lives = [_live("ours", "gantry/team-a"), _live("theirs", "gantry/team-b"), _live("by-hand", None), None]
    conflicts = owned_elsewhere("gantry/team-a", lives)
    assert [c.ref for c in conflicts] == [ObjectRef("", "Secret", "team-b", "theirs")]
    assert conflicts[0].message.startswith("already managed by Application gantry/team-b (its gantry.dev/tracking-id")
    assert "remove it from gantry/team-b first" in conflicts[0].message
    assert owned_elsewhere("gantry/team-b", lives)[0].ref.name == "ours"


def test_an_object_in_our_own_inventory_is_ours_whatever_its_tracking_id_says_now():
    rewritten = _live("ours", "gantry/intruder")
    assert owned_elsewhere("gantry/team-a", [rewritten], ours={ObjectRef("", "Secret", "team-b", "ours")}) == []
    assert len(owned_elsewhere("gantry/team-a", [rewritten])) == 1
