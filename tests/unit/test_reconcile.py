"""controller/reconcile.py, the parts that need no cluster: what a reconcile is asked to do
(Request), and failure messages that name the file declaring each refused object."""

from __future__ import annotations

from pathlib import Path

import yaml

from controller.model import ObjectRef
from controller.reconcile import Request, describe_failures


def write(root: Path, files: dict[str, object]) -> Path:
    for name, documents in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump_all(documents if isinstance(documents, list) else [documents]))
    return root


WEB = ObjectRef("apps", "Deployment", "shop", "web")
DB = ObjectRef("apps", "StatefulSet", "shop", "db")


def test_each_failure_names_the_file_that_declares_the_object(tmp_path):
    checkout = write(tmp_path, {
        "k8s/web.yaml": [{"kind": "Service", "metadata": {"name": "web"}},
                         {"kind": "Deployment", "metadata": {"name": "web"}}],
        "k8s/db/statefulset.yml": {"kind": "StatefulSet", "metadata": {"name": "db"}},
        "other/web.yaml": {"kind": "Deployment", "metadata": {"name": "web"}},
    })
    message = describe_failures(checkout, "k8s", [(WEB, "selector does not match"), (DB, "invalid volume")])
    assert message == ("k8s/web.yaml: Deployment.apps shop/web: selector does not match; "
                       "k8s/db/statefulset.yml: StatefulSet.apps shop/db: invalid volume")


def test_an_object_no_file_declares_is_named_without_a_file(tmp_path):
    # kustomize can make objects no file spells out (a configMapGenerator's ConfigMap, say).
    checkout = write(tmp_path, {"k8s/web.yaml": {"kind": "Service", "metadata": {"name": "web"}}})
    assert describe_failures(checkout, "k8s", [(WEB, "refused")]) == "Deployment.apps shop/web: refused"


def test_unreadable_files_are_passed_over(tmp_path):
    checkout = write(tmp_path, {"k8s/web.yaml": {"kind": "Deployment", "metadata": {"name": "web"}}})
    (checkout / "k8s" / "broken.yaml").write_text("kind: [unclosed\n")
    assert describe_failures(checkout, "k8s", [(WEB, "refused")]) == "k8s/web.yaml: Deployment.apps shop/web: refused"


def test_request_reads_refresh_and_sync_operation():
    body = {"metadata": {"annotations": {"gantry.dev/refresh": "hard"}},
            "operation": {"sync": {"revision": "v1", "prune": True,
                                   "source": {"repoURL": "https://git.example/a.git", "path": "old"}}}}
    request = Request.of(body)
    assert request == Request(refresh="hard", sync_revision="v1", sync_prune=True, sync_requested=True,
                              sync_source={"repoURL": "https://git.example/a.git", "path": "old"},
                              initiated_by={"automated": False})


def test_request_without_annotation_or_operation():
    assert Request.of({"metadata": {}}) == Request()
    assert Request.of({"metadata": {}, "operation": {"sync": {}}}) == Request(sync_requested=True,
                                                                             initiated_by={"automated": False})


def test_a_sync_request_says_who_asked_for_it():
    body = {"metadata": {}, "operation": {"sync": {}, "initiatedBy": {"username": "system:serviceaccount:a:b"}}}
    assert Request.of(body).initiated_by == {"username": "system:serviceaccount:a:b"}
    odd = {"metadata": {}, "operation": {"sync": {}, "initiatedBy": {"username": ["not", "a", "name"]}}}
    assert Request.of(odd).initiated_by == {"automated": False}
