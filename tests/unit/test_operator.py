"""The kopf wiring's pieces that need no cluster."""

import kopf

from controller.operator import DiffBaseWithoutStatus, _plain


def application(resources: int) -> dict:
    return {
        "apiVersion": "gantry.dev/v1alpha1", "kind": "Application",
        "metadata": {"name": "shop", "namespace": "gantry", "labels": {"team": "a"},
                     "annotations": {"gantry.dev/refresh": "normal",
                                     "kopf.zalando.org/last-handled-configuration": "{}"}},
        "spec": {"source": {"repoURL": "https://git/shop", "path": "k8s"}},
        "status": {"resources": [{"kind": "ConfigMap", "name": f"c{i}"} for i in range(resources)]},
    }


def test_the_diff_base_is_kopfs_own_without_reading_the_status():
    raw = application(3)
    ours = DiffBaseWithoutStatus().build(body=kopf.Body(raw))
    assert ours == kopf.AnnotationsDiffBaseStorage().build(body=kopf.Body(raw))
    assert "status" not in ours and ours["spec"] == raw["spec"]
    assert ours["metadata"]["labels"] == {"team": "a"}


def test_the_diff_base_still_honours_extra_status_fields():
    raw = application(2)
    essence = DiffBaseWithoutStatus().build(body=kopf.Body(raw), extra_fields=["status.resources"])
    assert essence["status"]["resources"] == raw["status"]["resources"]


def test_a_snapshot_keeps_its_spec_when_the_event_body_changes():
    raw = application(2)
    snapshot = _plain(kopf.Body(raw))
    raw["spec"]["source"]["path"] = "other"
    raw["metadata"]["labels"]["team"] = "b"
    assert snapshot["spec"]["source"]["path"] == "k8s"
    assert snapshot["metadata"]["labels"] == {"team": "a"}
    assert snapshot["status"] == raw["status"]
