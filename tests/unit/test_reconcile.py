"""controller/reconcile.py, the parts that need no cluster: what a reconcile is asked to do
(Request), failure messages that name the file declaring each refused object, and when a chart is
rendered again (with the real helm)."""

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


# ---------------------------------------------------------------------------------------------
# Charts: rendered once per (commit, helm settings, cluster capabilities)


class _Capabilities:
    """The two questions a chart's render asks the API server, answered and counted."""

    def __init__(self) -> None:
        self.asked = 0
        self.api_versions: tuple[str, ...] = ("v1", "apps/v1")

    def server_version(self) -> str:
        self.asked += 1
        return "v1.36.3"

    def served_api_versions(self) -> tuple[str, ...]:
        return self.api_versions


def test_a_chart_is_rendered_again_only_when_its_commit_settings_or_the_clusters_apis_change(tmp_path, helm):
    from controller.model import AppSpec, KustomizeOverrides
    from controller.reconcile import Reconciler

    runs = tmp_path / "runs"
    counting = tmp_path / "helm"
    counting.write_text(f"#!/bin/sh\necho run >> {runs}\nexec {helm} \"$@\"\n")
    counting.chmod(0o755)
    checkout = tmp_path / "checkout"
    (checkout / "chart/templates").mkdir(parents=True)
    (checkout / "chart/Chart.yaml").write_text("apiVersion: v2\nname: shop\nversion: 1.0.0\n")
    (checkout / "chart/templates/cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
        "data: {color: {{ .Values.color | default \"red\" | quote }}, "
        "monitoring: {{ .Capabilities.APIVersions.Has \"monitoring.coreos.com/v1\" | quote }}}\n")
    client = _Capabilities()
    reconciler = Reconciler(client, git=None, live=None, helm=str(counting))

    def data(helm_block: dict | None = None, commit: str = "a" * 40, hard: bool = False) -> dict:
        source = {"repoURL": "https://git.example.com/shop.git", "path": "chart",
                  **({"helm": helm_block} if helm_block is not None else {})}
        spec = AppSpec.parse("shop", "gantry", {"source": source, "destination": {"namespace": "shop"}})
        objects = reconciler._render(checkout, commit, spec.path, hard=hard, recurse=False,
                                     overrides=KustomizeOverrides(), chart=reconciler._chart_render(spec, checkout))
        return objects[0]["data"]

    def helm_runs() -> int:
        return len(runs.read_text().splitlines()) if runs.exists() else 0

    assert data() == {"color": "red", "monitoring": "false"} and helm_runs() == 1
    assert data() == {"color": "red", "monitoring": "false"} and helm_runs() == 1  # a no-op pass: no helm
    assert data({"values": "color: blue"})["color"] == "blue" and helm_runs() == 2  # new values
    assert data(commit="b" * 40) and helm_runs() == 3  # a new commit
    assert data(hard=True) and helm_runs() == 4  # a hard refresh renders again
    client.api_versions += ("monitoring.coreos.com/v1",)
    reconciler._capabilities = None  # the minute they are kept for is over
    assert data()["monitoring"] == "true" and helm_runs() == 5
    assert client.asked == 2
