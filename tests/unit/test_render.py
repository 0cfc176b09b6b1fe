"""controller.render with the real, pinned kustomize: what it builds and how each failure names its file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from gitserver import WorkRepo, init_bare

from controller.model import KustomizeOverrides, RenderError
from controller.render import MiB, RenderLimits, load_yaml, render
from controller.source import GitCache


def configmap(name: str, **data: str) -> str:
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
    if data:
        text += "data:\n" + "".join(f"  {key}: {value!r}\n" for key, value in data.items())
    return text


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: backend
spec:
  replicas: 2
  selector:
    matchLabels: {app: backend}
  template:
    metadata:
      labels: {app: backend}
    spec:
      containers:
      - name: backend
        image: nginx:1.27
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: backend
spec:
  selector: {app: backend}
  ports:
  - port: 80
"""
# Line 5 is `data` without its colon.
BROKEN = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata\n  key: value\n"


def write(root: Path, files: dict[str, str]) -> Path:
    """A checked-out tree: `files` maps a repo-relative path to its text, or `-> target` for a symlink."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("-> "):
            path.symlink_to(text[3:])
        else:
            path.write_text(text)
    return root


def refs(objects: list[dict]) -> list[tuple[str, str | None, str]]:
    return [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]


def render_error(tmp_path: Path, files: dict[str, str], *, path: str = "k8s", kustomize: Path | str = "kustomize",
                 limits: RenderLimits = RenderLimits()) -> RenderError:
    """The RenderError rendering `files` raises, checked to show no path of the checkout itself."""
    root = write(tmp_path / "checkout", files)
    with pytest.raises(RenderError) as caught:
        render(root, path, kustomize=kustomize, limits=limits)
    assert str(tmp_path) not in str(caught.value), "an error shows where the checkout lives"
    assert caught.value.path is None or not caught.value.path.startswith("/")
    return caught.value


# ---------------------------------------------------------------------------------------------
# Kustomize


def test_kustomization_with_resources_and_namespace(tmp_path: Path, kustomize: Path):
    root = write(tmp_path, {
        "k8s/kustomization.yaml": (
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "namespace: shop\nlabels:\n- pairs: {team: web}\n"
            "resources:\n- deployment.yaml\n- service.yaml\n- config\n"
        ),
        "k8s/deployment.yaml": DEPLOYMENT,
        "k8s/service.yaml": SERVICE,
        "k8s/config/kustomization.yaml": "resources:\n- settings.yaml\n",
        "k8s/config/settings.yaml": configmap("settings", mode="fast"),
        "k8s/unlisted.yaml": configmap("not-in-the-build"),
    })
    objects = render(root, "k8s", kustomize=kustomize)
    assert sorted(refs(objects)) == [
        ("ConfigMap", "shop", "settings"),
        ("Deployment", "shop", "backend"),
        ("Service", "shop", "backend"),
    ]
    assert all(o["metadata"]["labels"] == {"team": "web"} for o in objects)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"


@pytest.mark.parametrize("name", ["kustomization.yaml", "kustomization.yml", "Kustomization"])
def test_every_kustomization_file_name_is_recognised(tmp_path: Path, kustomize: Path, name: str):
    root = write(tmp_path, {f"k8s/{name}": "namePrefix: prod-\nresources:\n- a.yaml\n", "k8s/a.yaml": configmap("a")})
    assert refs(render(root, "k8s", kustomize=kustomize)) == [("ConfigMap", None, "prod-a")]


def test_overlay_on_a_base_elsewhere_in_the_repo(tmp_path: Path, kustomize: Path):
    root = write(tmp_path, {
        "base/kustomization.yaml": "resources:\n- deployment.yaml\n",
        "base/deployment.yaml": DEPLOYMENT,
        "overlays/prod/kustomization.yaml": (
            "resources:\n- ../../base\nnamespace: prod\n"
            "patches:\n- patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 5\n"
            "  target: {kind: Deployment, name: backend}\n"
        ),
    })
    [deployment] = render(root, "overlays/prod", kustomize=kustomize)
    assert deployment["metadata"]["namespace"] == "prod"
    assert deployment["spec"]["replicas"] == 5


def test_kustomize_invalid_yaml_resource_names_file_and_line(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- service.yaml\n- backend.yaml\n",
        "k8s/service.yaml": SERVICE,
        "k8s/backend.yaml": BROKEN,
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("k8s/backend.yaml", 5)
    assert "could not find expected ':'" in str(error)
    assert str(error).startswith("k8s/backend.yaml:5: ")


def test_kustomize_and_plain_directories_report_a_yaml_error_alike(tmp_path: Path, kustomize: Path):
    broken = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: [x\ndata:\n  k: v\n"
    plain = render_error(tmp_path / "plain", {"k8s/backend.yaml": broken})
    built = render_error(
        tmp_path / "kustomize",
        {"k8s/kustomization.yaml": "resources:\n- backend.yaml\n", "k8s/backend.yaml": broken},
        kustomize=kustomize,
    )
    assert (built.path, built.line, str(built)) == (plain.path, plain.line, str(plain))
    assert plain.path == "k8s/backend.yaml" and plain.line == 6
    assert "did not find expected ',' or ']'" in str(plain)


def test_kustomize_invalid_yaml_in_a_base_names_the_base_file(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "apps/web/kustomization.yaml": "resources:\n- ../../base\n",
        "base/kustomization.yaml": "resources:\n- manifests/backend.yaml\n",
        "base/manifests/backend.yaml": BROKEN,
    }, path="apps/web", kustomize=kustomize)
    assert (error.path, error.line) == ("base/manifests/backend.yaml", 5)


def test_kustomization_listing_a_missing_file(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- service.yaml\n- missing.yaml\n",
        "k8s/service.yaml": SERVICE,
    }, kustomize=kustomize)
    assert error.path == "k8s/kustomization.yaml"
    assert error.line == 3
    assert str(error) == (
        "k8s/kustomization.yaml:3: resource k8s/missing.yaml does not exist: "
        "add the file or remove it from `resources:`"
    )


def test_base_listing_a_missing_file_names_the_base(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- ../base\n",
        "base/kustomization.yaml": "resources:\n- gone.yaml\n",
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("base/kustomization.yaml", 2)
    assert "resource base/gone.yaml does not exist" in str(error)


def test_kustomization_with_a_missing_patch_file(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- service.yaml\npatches:\n- path: replicas.yaml\n",
        "k8s/service.yaml": SERVICE,
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("k8s/kustomization.yaml", 4)
    assert "patch k8s/replicas.yaml does not exist: add the file or remove it from `patches:`" in str(error)


def test_invalid_kustomization_yaml_itself(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- service.yaml\nnamespace shop\n",
        "k8s/service.yaml": SERVICE,
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("k8s/kustomization.yaml", 3)
    assert "could not find expected ':'" in str(error)


def test_kustomization_with_an_unknown_field(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- service.yaml\nnamespaces: shop\n",
        "k8s/service.yaml": SERVICE,
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("k8s/kustomization.yaml", 3)
    assert "unknown field 'namespaces'" in str(error)


def test_kustomization_field_of_the_wrong_type_keeps_kustomize_reason(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "namespace: shop\nresources: service.yaml\n",
        "k8s/service.yaml": SERVICE,
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("k8s/kustomization.yaml", 2)
    assert "cannot unmarshal string" in str(error)


def test_kustomize_reason_is_kept_with_repo_relative_paths(tmp_path: Path, kustomize: Path):
    # A file outside the kustomization's directory: kustomize's load restrictor refuses it.
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- ../shared/config.yaml\n",
        "shared/config.yaml": configmap("shared"),
    }, kustomize=kustomize)
    assert error.path == "k8s/kustomization.yaml"
    assert "shared/config.yaml is not in or below k8s" in str(error)


def test_kustomize_duplicate_resources(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- a.yaml\n- b.yaml\n",
        "k8s/a.yaml": configmap("same"),
        "k8s/b.yaml": configmap("same", other="1"),
    }, kustomize=kustomize)
    assert error.path == "k8s/kustomization.yaml"
    assert "ConfigMap" in str(error) and "same" in str(error)


def test_kustomize_output_must_name_every_object(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- a.yaml\n",
        "k8s/a.yaml": "kind: ConfigMap\nmetadata:\n  name: a\n",  # kustomize lets a missing apiVersion through
    }, kustomize=kustomize)
    assert error.path == "k8s/kustomization.yaml"
    assert "no apiVersion" in str(error)


def test_kustomize_resource_directory_outside_the_repo(tmp_path: Path, kustomize: Path):
    write(tmp_path / "elsewhere", {"kustomization.yaml": "resources:\n- a.yaml\n", "a.yaml": configmap("stolen")})
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- ../../elsewhere\n",
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("k8s/kustomization.yaml", 2)
    assert "leads outside the repository" in str(error)


def test_kustomize_symlink_to_outside_the_repo(tmp_path: Path, kustomize: Path):
    write(tmp_path / "elsewhere", {"kustomization.yaml": "resources:\n- a.yaml\n", "a.yaml": configmap("stolen")})
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- base\n",
        "k8s/base": f"-> {tmp_path / 'elsewhere'}",
    }, kustomize=kustomize)
    assert error.path == "k8s/base"
    assert "symlink that leads outside the repository" in str(error)


def test_kustomize_symlinked_file_to_outside_the_repo(tmp_path: Path, kustomize: Path):
    write(tmp_path / "elsewhere", {"a.yaml": configmap("stolen")})
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- a.yaml\n",
        "k8s/a.yaml": f"-> {tmp_path / 'elsewhere' / 'a.yaml'}",
    }, kustomize=kustomize)
    assert error.path == "k8s/a.yaml"


def test_symlinks_inside_the_repo_are_followed(tmp_path: Path, kustomize: Path):
    root = write(tmp_path, {
        "shared/kustomization.yaml": "resources:\n- a.yaml\n",
        "shared/a.yaml": configmap("a"),
        "k8s/kustomization.yaml": "resources:\n- base\n",
        "k8s/base": "-> ../shared",
    })
    assert refs(render(root, "k8s", kustomize=kustomize)) == [("ConfigMap", None, "a")]


def test_argo_cd_kustomize_overrides_are_laid_over_the_apps_kustomization(tmp_path: Path, kustomize: Path):
    root = write(tmp_path, {
        "base/kustomization.yaml": "resources:\n- deployment.yaml\n",
        "base/deployment.yaml": DEPLOYMENT,
        "k8s/kustomization.yaml": "resources:\n- ../base\n- config.yaml\n",
        "k8s/config.yaml": configmap("settings"),
    })
    overrides = KustomizeOverrides.parse({
        "namePrefix": "prod-", "images": ["nginx=registry.example:5000/nginx:1.28"],
        "commonLabels": {"team": "shop"}, "commonAnnotations": {"owner": "ops"}, "namespace": "shop-prod",
        "replicas": [{"name": "backend", "count": 5}],
    })
    deployment, config = sorted(render(root, "k8s", kustomize=kustomize, overrides=overrides),
                                key=lambda o: o["kind"], reverse=True)
    assert deployment["metadata"]["name"] == "prod-backend" and config["metadata"]["name"] == "prod-settings"
    assert deployment["metadata"]["namespace"] == "shop-prod"
    assert deployment["spec"]["replicas"] == 5
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example:5000/nginx:1.28"
    assert deployment["metadata"]["labels"] == {"team": "shop"} and config["metadata"]["annotations"] == {"owner": "ops"}
    # The checkout is left as it was: the overrides lived in a kustomization of their own.
    assert (root / "k8s/kustomization.yaml").read_text() == "resources:\n- ../base\n- config.yaml\n"
    assert sorted(p.name for p in (root / "k8s").iterdir()) == ["config.yaml", "kustomization.yaml"]
    plain = render(root, "k8s", kustomize=kustomize)
    assert {o["metadata"]["name"] for o in plain} == {"backend", "settings"}


def test_kustomize_overrides_on_a_plain_folder_are_an_error(tmp_path: Path):
    root = write(tmp_path, {"k8s/a.yaml": configmap("a")})
    with pytest.raises(RenderError) as caught:
        render(root, "k8s", overrides=KustomizeOverrides(name_prefix="prod-"))
    assert "has no kustomization.yaml, so spec.source.kustomize cannot apply" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Plain directories


def test_plain_directory_reads_yaml_json_and_lists_in_name_order(tmp_path: Path):
    root = write(tmp_path, {
        "k8s/b-app.yaml": "# comment only\n---\n" + DEPLOYMENT + "---\n---\n" + SERVICE + "---\n",
        "k8s/a-config.json": json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-json"}}),
        "k8s/c-list.yml": (
            "apiVersion: v1\nkind: List\nitems:\n"
            "- apiVersion: v1\n  kind: Secret\n  metadata:\n    name: s1\n"
            "- apiVersion: v1\n  kind: Secret\n  metadata:\n    name: s2\n"
        ),
        "k8s/d-list.json": json.dumps({"kind": "List", "apiVersion": "v1", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}},
        ]}),
        "k8s/empty.yaml": "",
        "k8s/README.md": "not a manifest",
        "k8s/nested/ignored.yaml": configmap("not-recursive"),
    })
    assert refs(render(root, "k8s")) == [
        ("ConfigMap", None, "from-json"),
        ("Deployment", None, "backend"),
        ("Service", None, "backend"),
        ("Secret", None, "s1"),
        ("Secret", None, "s2"),
        ("ServiceAccount", None, "sa"),
    ]


def test_plain_directory_with_recurse_reads_subdirectories_in_path_order(tmp_path: Path):
    root = write(tmp_path, {
        "k8s/b.yaml": configmap("b"),
        "k8s/a/z.yaml": configmap("a-z"),
        "k8s/a/deeper/x.yml": configmap("a-deeper-x"),
        "k8s/c/README.md": "not a manifest",
    })
    assert refs(render(root, "k8s", recurse=True)) == [
        ("ConfigMap", None, "a-deeper-x"), ("ConfigMap", None, "a-z"), ("ConfigMap", None, "b")]
    assert refs(render(root, "k8s")) == [("ConfigMap", None, "b")]


def test_recurse_refuses_a_subdirectory_linked_outside_the_repo(tmp_path: Path):
    write(tmp_path / "outside", {"a.yaml": configmap("stolen")})
    root = write(tmp_path / "repo", {"k8s/a.yaml": configmap("a"), "k8s/sub": f"-> {tmp_path / 'outside'}"})
    with pytest.raises(RenderError) as caught:
        render(root, "k8s", recurse=True)
    assert caught.value.path == "k8s/sub" and "leads outside the repository" in str(caught.value)


def test_repo_root_as_path(tmp_path: Path):
    root = write(tmp_path, {"a.yaml": configmap("a"), "sub/b.yaml": configmap("b")})
    assert refs(render(root, ".")) == [("ConfigMap", None, "a")]
    assert refs(render(root, "")) == [("ConfigMap", None, "a")]


def test_values_keep_the_types_kubernetes_gives_them(tmp_path: Path):
    root = write(tmp_path, {"k8s/a.yaml": configmap("a") + "data:\n  day: 2024-01-31\n  port: '80'\n"
                            + "---\n" + DEPLOYMENT})
    config, deployment = render(root, "k8s")
    assert config["data"] == {"day": "2024-01-31", "port": "80"}
    assert deployment["spec"]["replicas"] == 2


def test_plain_invalid_yaml_names_file_and_line(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/a.yaml": configmap("a"), "k8s/backend.yaml": BROKEN})
    assert (error.path, error.line) == ("k8s/backend.yaml", 5)
    assert str(error) == "k8s/backend.yaml:5: could not find expected ':'"


def test_plain_invalid_yaml_in_a_later_document(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/all.yaml": configmap("a") + "---\n" + SERVICE + "---\nkind: x: y\n"})
    assert (error.path, error.line) == ("k8s/all.yaml", 15)
    assert "mapping values are not allowed" in str(error)


def test_plain_invalid_json_names_file_and_line(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/a.json": '{\n  "apiVersion": "v1",\n  "kind" "ConfigMap"\n}\n'})
    assert (error.path, error.line) == ("k8s/a.json", 3)
    assert "invalid JSON" in str(error)


def test_a_key_given_twice_is_an_error(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/a.yaml": configmap("a") + "kind: Secret\n"})
    assert (error.path, error.line) == ("k8s/a.yaml", 5)
    assert "'kind' already defined at line 2" in str(error)


@pytest.mark.parametrize(
    ("document", "missing"),
    [
        ("kind: ConfigMap\nmetadata:\n  name: a\n", "apiVersion"),
        ("apiVersion: v1\nmetadata:\n  name: a\n", "kind"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n", "metadata.name"),
        ("apiVersion: v1\nkind: ConfigMap\n", "metadata.name"),
    ],
)
def test_plain_object_without_required_fields(tmp_path: Path, document: str, missing: str):
    error = render_error(tmp_path, {"k8s/app.yaml": configmap("first") + "---\n" + document})
    assert (error.path, error.line) == ("k8s/app.yaml", 6)
    assert f"object has no {missing}" in str(error)


def test_plain_list_item_without_a_name_names_its_line(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/list.yaml": (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: Secret\n  metadata:\n    name: s1\n"
        "- apiVersion: v1\n  kind: Secret\n  metadata: {}\n"
    )})
    assert (error.path, error.line) == ("k8s/list.yaml", 8)


def test_a_document_that_is_not_an_object(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/notes.yaml": "- just\n- a list\n"})
    assert (error.path, error.line) == ("k8s/notes.yaml", 1)
    assert "not a Kubernetes object" in str(error)


def test_duplicate_objects_in_two_files_name_both(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/a.yaml": configmap("x"), "k8s/b.yaml": SERVICE + "---\n" + configmap("x")})
    assert (error.path, error.line) == ("k8s/b.yaml", 10)
    assert str(error) == "k8s/b.yaml:10: ConfigMap x is defined twice, at k8s/a.yaml:1 and at k8s/b.yaml:10: remove one of them"


def test_duplicates_are_per_group_kind_namespace_and_name(tmp_path: Path):
    root = write(tmp_path, {
        "k8s/a.yaml": configmap("x") + "---\n" + configmap("x").replace("name: x", "name: x\n  namespace: other")
        + "---\n" + SERVICE.replace("backend", "x") + "---\n"
        + "apiVersion: example.com/v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    })
    assert len(render(root, "k8s")) == 4
    error = render_error(tmp_path / "dup", {"k8s/a.yaml": configmap("x").replace("name: x", "name: x\n  namespace: n")
                                            + "---\n" + configmap("x").replace("name: x", "name: x\n  namespace: n")})
    assert "ConfigMap n/x is defined twice, at k8s/a.yaml:1 and at k8s/a.yaml:7" in str(error)


# ---------------------------------------------------------------------------------------------
# Where render may read


def test_missing_path(tmp_path: Path):
    error = render_error(tmp_path, {"deploy/a.yaml": configmap("a")})
    assert str(error) == "path 'k8s' does not exist in the repository at this revision"


def test_path_that_is_a_file(tmp_path: Path):
    error = render_error(tmp_path, {"k8s": configmap("a")})
    assert "is a file, not a directory" in str(error)


@pytest.mark.parametrize("path", ["../outside", "k8s/../../outside", "/etc", "/"])
def test_path_may_not_leave_the_repo(tmp_path: Path, path: str):
    write(tmp_path / "outside", {"a.yaml": configmap("stolen")})
    error = render_error(tmp_path, {"k8s/a.yaml": configmap("a")}, path=path)
    assert "must be relative to the repository root and may not use '..'" in str(error)


def test_path_that_is_a_symlink_to_outside(tmp_path: Path):
    write(tmp_path / "outside", {"a.yaml": configmap("stolen")})
    error = render_error(tmp_path, {"k8s": f"-> {tmp_path / 'outside'}"})
    assert str(error) == "path 'k8s' is a symlink that leads outside the repository"


def test_path_through_a_relative_symlink_to_outside(tmp_path: Path):
    write(tmp_path / "outside", {"a.yaml": configmap("stolen")})
    error = render_error(tmp_path, {"k8s": "-> ../outside"})
    assert "leads outside the repository" in str(error)


def test_plain_file_symlinked_to_outside(tmp_path: Path):
    write(tmp_path / "outside", {"a.yaml": configmap("stolen")})
    error = render_error(tmp_path, {"k8s/a.yaml": configmap("a"), "k8s/b.yaml": f"-> {tmp_path / 'outside' / 'a.yaml'}"})
    assert error.path == "k8s/b.yaml"
    assert "symlink that leads outside the repository" in str(error)


def test_plain_file_symlinked_inside_the_repo(tmp_path: Path):
    root = write(tmp_path, {"shared/a.yaml": configmap("a"), "k8s/a.yaml": "-> ../shared/a.yaml"})
    assert refs(render(root, "k8s")) == [("ConfigMap", None, "a")]


def test_load_yaml_skips_empty_documents():
    assert load_yaml("---\n# nothing\n---\na: 1\n---\n", "x.yaml") == [{"a": 1}]
    with pytest.raises(RenderError) as caught:
        load_yaml("a: [\n", "x.yaml")
    assert caught.value.path == "x.yaml"


# ---------------------------------------------------------------------------------------------
# From git to objects


def test_rendering_a_checkout_from_the_git_cache(tmp_path: Path, kustomize: Path):
    bare = init_bare(tmp_path / "app.git")
    repo = WorkRepo.create(tmp_path / "work", {
        "k8s/kustomization.yaml": "namespace: shop\nresources:\n- service.yaml\n",
        "k8s/service.yaml": SERVICE,
    }, remote=bare)
    repo.commit()
    repo.push()
    cache = GitCache(tmp_path / "cache")
    tree = cache.checkout(bare.as_uri(), cache.resolve(bare.as_uri()))
    assert refs(render(tree, "k8s", kustomize=kustomize)) == [("Service", "shop", "backend")]

    repo.write({"k8s/backend.yaml": BROKEN, "k8s/kustomization.yaml": "resources:\n- service.yaml\n- backend.yaml\n"})
    repo.commit("break it")
    repo.push()
    tree = cache.checkout(bare.as_uri(), cache.resolve(bare.as_uri(), refresh=True))
    with pytest.raises(RenderError) as caught:
        render(tree, "k8s", kustomize=kustomize)
    assert (caught.value.path, caught.value.line) == ("k8s/backend.yaml", 5)
    assert str(tmp_path) not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# What a render may read: nothing of the controller's filesystem beyond the app's own checkout


def cached_clone_of_another_app(tmp_path: Path) -> Path:
    """The controller's bare clone of another team's repo, as its git cache holds it."""
    bare = init_bare(tmp_path / "team-b.git")
    repo = WorkRepo.create(tmp_path / "team-b", {
        "k8s/kustomization.yaml": "resources:\n- secret.yaml\n",
        "k8s/secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata:\n  name: team-b-db\nstringData:\n  password: s3cr3t\n",
    }, remote=bare)
    repo.commit()
    repo.push()
    cache = GitCache(tmp_path / "cache")
    cache.resolve(bare.as_uri())
    (clone,) = (tmp_path / "cache" / "repos").iterdir()
    return clone


@pytest.mark.parametrize("field", ["resources", "bases", "components", "generators", "transformers", "validators"])
@pytest.mark.parametrize("form", ["file://{clone}//k8s?ref=HEAD", "FILE://{clone}", "git::file://{clone}//k8s",
                                  "git::{clone}//k8s", "{clone}/k8s", "/{missing}"])
def test_no_kustomization_field_reaches_the_controllers_filesystem(tmp_path: Path, kustomize: Path, field: str,
                                                                   form: str):
    entry = form.format(clone=cached_clone_of_another_app(tmp_path / "controller"), missing="nowhere/at/all")
    error = render_error(tmp_path / "app", {
        "k8s/kustomization.yaml": f"namespace: team-a\n{field}:\n- {entry}\n",
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("k8s/kustomization.yaml", 3)
    assert f"{field} entry {entry!r}: kustomize remote bases on the controller's filesystem are not allowed" in str(error)


def test_the_refused_file_url_is_one_kustomize_itself_would_follow(tmp_path: Path, kustomize: Path):
    """The check above is what stops it: kustomize alone reads another repo's Secret this way."""
    clone = cached_clone_of_another_app(tmp_path)
    root = write(tmp_path / "checkout", {"k8s/kustomization.yaml": f"resources:\n- file://{clone}//k8s?ref=main\n"})
    built = subprocess.run([str(kustomize), "build", str(root / "k8s")], capture_output=True, text=True)
    assert "team-b-db" in built.stdout, built.stderr


def test_a_kustomization_in_a_base_is_checked_too(tmp_path: Path, kustomize: Path):
    clone = cached_clone_of_another_app(tmp_path / "controller")
    error = render_error(tmp_path / "app", {
        "k8s/kustomization.yaml": "resources:\n- ../base\n",
        "base/kustomization.yaml": f"components:\n- ./c\ngenerators:\n- file://{clone}//k8s\n",
        "base/c/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n",
    }, kustomize=kustomize)
    assert (error.path, error.line) == ("base/kustomization.yaml", 4)
    assert "kustomize remote bases on the controller's filesystem are not allowed" in str(error)


@pytest.mark.parametrize("entry", ["https://github.com/acme/shop//k8s?ref=v1", "github.com/acme/shop/k8s?ref=v1",
                                   "git@github.com:acme/shop.git//k8s", "ssh://git@github.com/acme/shop//k8s"])
def test_remote_bases_over_the_network_can_be_turned_off(tmp_path: Path, kustomize: Path, entry: str):
    error = render_error(tmp_path, {"k8s/kustomization.yaml": f"resources:\n- {entry}\n"}, kustomize=kustomize,
                         limits=RenderLimits(remote_bases=False))
    assert (error.path, error.line) == ("k8s/kustomization.yaml", 2)
    assert f"resources entry {entry!r} is a remote base, and this controller fetches none" in str(error)
    assert "--no-remote-bases" in str(error)


def test_remote_bases_over_the_network_are_fetched_by_default_with_nothing_of_the_controllers(
        tmp_path: Path, kustomize: Path, monkeypatch: pytest.MonkeyPatch):
    # A git config of the controller's user that would hand out a password: kustomize's git must
    # not read it (nor see the controller's environment).
    home = write(tmp_path / "home", {".gitconfig": "[credential]\n\thelper = store\n",
                                     ".git-credentials": "http://gantry:hunter2@127.0.0.1\n"})
    monkeypatch.setenv("HOME", str(home))
    error = render_error(tmp_path, {"k8s/kustomization.yaml": "resources:\n- http://127.0.0.1:9/acme/shop.git//k8s\n"},
                         kustomize=kustomize)
    assert "kustomize build failed" in str(error) and "127.0.0.1:9" in str(error)
    assert "is a remote base" not in str(error) and "hunter2" not in str(error)


# ---------------------------------------------------------------------------------------------
# What a render may cost


def billion_laughs(levels: int = 9) -> str:
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: lol", "data:",
             '  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  l{n}: &l{n} [{','.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_aliases_that_explode_are_refused_before_anything_is_built(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/a.yaml": configmap("fine"), "k8s/lol.yaml": "---\n" + billion_laughs()})
    assert (error.path, error.line) == ("k8s/lol.yaml", 2)
    assert "YAML aliases expand the document that starts here to 490,329,074 nodes from the 38 written" in str(error)
    assert "the limit is 100,000" in str(error)


def test_a_few_aliases_are_fine(tmp_path: Path):
    root = write(tmp_path / "checkout", {"k8s/a.yaml": billion_laughs(levels=3) + "  again: *l2\n"})
    (lol,) = render(root, "k8s")
    assert lol["data"]["again"] == lol["data"]["l2"] and len(lol["data"]["l2"]) == 9


@pytest.mark.parametrize("name", ["lol.yaml", "lol.txt"])
def test_exploding_aliases_are_refused_before_kustomize_reads_them(tmp_path: Path, kustomize: Path, name: str):
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- ../base\n",
        "base/kustomization.yaml": f"resources:\n- {name}\n",
        f"base/{name}": billion_laughs(),
    }, kustomize=kustomize)
    assert error.path == f"base/{name}" and "YAML aliases expand" in str(error)


def test_exploding_aliases_in_a_kustomization_itself_are_refused_before_its_entries_are_walked(tmp_path: Path,
                                                                                               kustomize: Path):
    # The check of what a kustomization names walks its every value: expanded, nine levels of
    # aliases are 387 million strings to look up on disk (about half an hour of CPU).
    laughs = "\n".join(billion_laughs().splitlines()[5:])  # the data: block's lines, l0 … l8
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- a.yaml\nconfigMapGenerator:\n- name: lol\n  literals:\n"
                                  + laughs.replace("  l", "  - l", 1).replace("\n  l", "\n  - l") + "\n",
        "k8s/a.yaml": configmap("a"),
    }, kustomize=kustomize)
    assert error.path == "k8s/kustomization.yaml" and "YAML aliases expand" in str(error), error


def big_configmaps(count: int, size: int) -> str:
    return "".join(f"---\n{configmap(f'c{i}', blob='x' * size)}" for i in range(count))


def test_kustomize_runs_under_a_memory_limit(tmp_path: Path, kustomize: Path):
    small = RenderLimits(kustomize_memory=100 * MiB, file_bytes=16 * MiB, total_bytes=64 * MiB)
    fine = write(tmp_path / "fine", {"k8s/kustomization.yaml": "resources:\n- a.yaml\n", "k8s/a.yaml": configmap("a")})
    assert refs(render(fine, "k8s", kustomize=kustomize, limits=small)) == [("ConfigMap", None, "a")]
    error = render_error(tmp_path, {
        "k8s/kustomization.yaml": "resources:\n- a.yaml\n- b.yaml\n",
        "k8s/a.yaml": big_configmaps(2000, 4000),
        "k8s/b.yaml": big_configmaps(2000, 4000).replace("name: c", "name: d"),
    }, kustomize=kustomize, limits=small)
    assert error.path == "k8s/kustomization.yaml"
    assert "kustomize build ran out of memory: it may use 100 MiB" in str(error)


def test_a_file_over_the_limit_is_refused_unread(tmp_path: Path, kustomize: Path):
    limits = RenderLimits(file_bytes=1 * MiB)
    files = {"k8s/a.yaml": configmap("a"), "k8s/big.yaml": big_configmaps(300, 4000)}
    error = render_error(tmp_path, files, limits=limits)
    assert error.path == "k8s/big.yaml"
    assert "is 1.2 MiB, over the 1 MiB limit for one file the controller renders" in str(error)
    # Through kustomize, and whatever the field that names it.
    error = render_error(tmp_path / "k", {**files, "k8s/kustomization.yaml": "resources:\n- a.yaml\n"
                                          "configMapGenerator:\n- name: g\n  files:\n  - key=big.yaml\n"},
                         kustomize=kustomize, limits=limits)
    assert error.path == "k8s/big.yaml" and "over the 1 MiB limit" in str(error)


def test_an_app_over_the_total_limit_is_refused(tmp_path: Path, kustomize: Path):
    limits = RenderLimits(file_bytes=1 * MiB, total_bytes=2 * MiB)
    files = {f"k8s/{n}.yaml": big_configmaps(200, 4000).replace("name: c", f"name: {n}") for n in "abc"}
    error = render_error(tmp_path, files, limits=limits)
    assert error.path == "k8s/c.yaml"
    assert "over the 2 MiB limit for one app's manifests" in str(error)
    # kustomize's output counts the same way: it may repeat one file many times.
    error = render_error(tmp_path / "k", {**files, "k8s/kustomization.yaml": "resources:\n- a.yaml\n- b.yaml\n- c.yaml\n"},
                         kustomize=kustomize, limits=limits)
    assert error.path == "k8s/kustomization.yaml"
    assert "kustomize build printed more than the 2 MiB limit for one app's manifests" in str(error)


@pytest.mark.parametrize("name, text", [("deep.json", "[" * 100_000 + "]" * 100_000),
                                        ("deep.yaml", "a: " + "[" * 100_000 + "]" * 100_000)])
def test_nesting_too_deep_to_read_is_a_render_error(tmp_path: Path, name: str, text: str):
    error = render_error(tmp_path, {f"k8s/{name}": text})
    assert error.path == f"k8s/{name}" and "nest" in str(error)


HOOK_JOB = ("apiVersion: batch/v1\nkind: Job\nmetadata:\n  generateName: migrate-\n"
            "  annotations:\n    argocd.argoproj.io/hook: PreSync\nspec: {}\n")


def test_plain_hooks_may_leave_their_name_to_the_api_server(tmp_path: Path):
    root = write(tmp_path / "checkout", {"k8s/a.yaml": HOOK_JOB, "k8s/b.yaml": HOOK_JOB.replace("PreSync", "PostSync")})
    objects = render(root, "k8s", kustomize="kustomize")
    assert [o["metadata"]["generateName"] for o in objects] == ["migrate-", "migrate-"]


def test_an_object_that_is_not_a_hook_needs_a_name_even_with_generate_name(tmp_path: Path):
    error = render_error(tmp_path, {"k8s/a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: c-\n"})
    assert "object has no metadata.name" in str(error)


def test_kustomize_refusing_generate_name_says_what_to_do_instead(tmp_path: Path, kustomize: Path):
    error = render_error(tmp_path, {"k8s/kustomization.yaml": "resources:\n- job.yaml\n", "k8s/job.yaml": HOOK_JOB},
                         kustomize=kustomize)
    assert error.path == "k8s/job.yaml"
    assert "generateName" in str(error) and "BeforeHookCreation" in str(error), str(error)
