"""controller/helm.py and the chart side of render.py: the helm command line built as Argo CD builds
it, the versions a chart's targetRevision picks (charts.py), and charts rendered by the real,
pinned helm binary (no cluster): values in order, the files helm may read, errors naming file:line.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from helmrepo import HelmRepo
from ociregistry import OciRegistry

from controller.charts import ChartCache, ChartVersion, pick_version
from controller.credentials import select
from controller.helm import Capabilities, ChartRender, OciPull, oci_pull_command, template_command
from controller.model import AppSpec, HelmParameter, HelmSource, RenderError, SourceError
from controller.render import render
from controller.source import RepoCredentials

# ---------------------------------------------------------------------------------------------
# The command line


def test_template_command_as_argo_cd_builds_it():
    options = HelmSource(
        release_name="web", namespace="shop", value_files=("values-prod.yaml",), values="a: 1\n",
        parameters=(HelmParameter("image.tag", "1.2"), HelmParameter("hosts", "a.example,b.example"),
                    HelmParameter("list", "{a,b}"), HelmParameter("port", "80", force_string=True)),
        skip_tests=True, skip_schema_validation=True)
    command = template_command("/bin/helm", Path("/src/chart"), options,
                               Capabilities("v1.36.3", ("apps/v1", "apps/v1/Deployment", "v1")),
                               [Path("/src/chart/values-prod.yaml")], Path("/tmp/inline.yaml"),
                               [("config", Path("/src/chart/files/c.json"))])
    assert command == [
        "/bin/helm", "template", "web", "/src/chart", "--namespace", "shop", "--include-crds", "--skip-tests",
        "--skip-schema-validation", "--kube-version", "v1.36.3",
        "--api-versions", "apps/v1", "--api-versions", "apps/v1/Deployment", "--api-versions", "v1",
        # value files first, then the inline values, then the parameters: each wins over the one before
        "--values", "/src/chart/values-prod.yaml", "--values", "/tmp/inline.yaml",
        "--set", "image.tag=1.2", "--set", "hosts=a.example\\,b.example", "--set", "list={a,b}",
        "--set-string", "port=80", "--set-file", "config=/src/chart/files/c.json"]


def test_the_apps_own_kube_and_api_versions_replace_the_clusters_and_skip_crds_drops_them():
    options = HelmSource(release_name="web", namespace="shop", skip_crds=True, kube_version="1.29",
                         api_versions=("monitoring.coreos.com/v1",))
    command = template_command("helm", Path("c"), options, Capabilities("v1.36.3", ("apps/v1",)), [], None, [])
    assert command == ["helm", "template", "web", "c", "--namespace", "shop", "--skip-crds", "--kube-version", "1.29",
                       "--api-versions", "monitoring.coreos.com/v1"]


# ---------------------------------------------------------------------------------------------
# Versions

ENTRIES = [{"version": v} for v in ("0.9.0", "1.0.0", "1.2.0", "1.2.5", "1.3.0-rc.1", "1.10.1", "2.0.0", "2.1.0-beta")]


@pytest.mark.parametrize("constraint,picked", [
    ("1.2.0", "1.2.0"),
    ("=1.2.0", "1.2.0"),
    ("v1.2.0", "1.2.0"),
    ("HEAD", "2.0.0"),  # the CRD's default targetRevision: the newest release
    ("*", "2.0.0"),
    ("", "2.0.0"),
    ("^1.2", "1.10.1"),
    ("^1.2.3", "1.10.1"),
    ("^0.9", "0.9.0"),
    ("~1.2", "1.2.5"),
    ("~1.2.1", "1.2.5"),
    ("1.2.x", "1.2.5"),
    ("1.x", "1.10.1"),
    ("1", "1.10.1"),
    (">=1.0 <1.3", "1.2.5"),
    (">=1.0, <1.3", "1.2.5"),
    ("1.0 - 1.2", "1.2.5"),
    (">1.2", "2.0.0"),
    ("<=1.2", "1.2.5"),
    ("<1.2", "1.0.0"),
    ("!=2.0.0", "1.10.1"),
    (">=3 || ~1.0", "1.0.0"),
    (">=1.3.0-0 <1.4", "1.3.0-rc.1"),  # prereleases only when the constraint names one
    ("~1.3", None),
    ("^3", None),
    ("3.0.0", None),
    ("not a range", None),
])
def test_the_version_a_constraint_picks(constraint, picked):
    entry = pick_version(ENTRIES, constraint)
    assert (entry["version"] if entry else None) == picked


# ---------------------------------------------------------------------------------------------
# Credentials: a repository uses the Secrets of its own kind only


def _secret(url: str, kind: str | None, password: str) -> dict:
    data = {"url": url, "username": "u", "password": password, **({"type": kind} if kind else {})}
    return {"metadata": {"name": password}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_helm_repositories_use_helm_secrets_and_git_the_others():
    secrets = [_secret("https://charts.example.com", "helm", "helm-pw"),
               _secret("https://charts.example.com", None, "git-pw"),
               _secret("https://git.example.com/", "git", "git2-pw")]
    assert select(secrets, "https://charts.example.com", "helm").password == "helm-pw"
    assert select(secrets, "https://charts.example.com").password == "git-pw"
    assert select(secrets, "https://git.example.com/shop.git").password == "git2-pw"
    assert select(secrets, "https://git.example.com/shop.git", "helm") is None


# ---------------------------------------------------------------------------------------------
# Rendering with the real helm

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: shop\nversion: 0.1.0\n",
    "values.yaml": "replicas: 1\ncolor: red\nport: 80\ngreeting: hello\n",
    "values-prod.yaml": "replicas: 3\ncolor: blue\n",
    "templates/configmap.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "  namespace: {{ .Release.Namespace }}\ndata:\n  replicas: {{ .Values.replicas | quote }}\n"
        "  color: {{ .Values.color | quote }}\n  port: {{ .Values.port | quote }}\n"
        "  greeting: {{ .Values.greeting | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
        "  monitoring: {{ .Capabilities.APIVersions.Has \"monitoring.coreos.com/v1\" | quote }}\n"
        "  {{- with .Values.config }}\n  config: {{ . | quote }}\n  {{- end }}\n"),
    "templates/job.yaml": (
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\n  annotations:\n"
        "    helm.sh/hook: pre-install,pre-upgrade\n    helm.sh/hook-weight: \"-1\"\nspec:\n  template:\n"
        "    spec:\n      restartPolicy: Never\n      containers: [{name: m, image: busybox}]\n"),
    "crds/widget.yaml": (
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n"
        "  name: widgets.example.com\nspec:\n  group: example.com\n  names: {kind: Widget, plural: widgets}\n"
        "  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true, schema: {openAPIV3Schema: "
        "{type: object}}}]\n"),
    "files/config.json": "{\"debug\": true}\n",
}


def write(root: Path, files: dict[str, str], under: str = "charts/shop") -> Path:
    for name, text in files.items():
        path = root / under / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def chart_render(helm: Path, **options) -> ChartRender:
    return ChartRender(HelmSource(**{"release_name": "web", "namespace": "shop", **options}), str(helm),
                       Capabilities("v1.36.3", ("v1", "apps/v1", "monitoring.coreos.com/v1")), declared=True)


def settings(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "ConfigMap")["data"]


def test_values_files_inline_values_and_parameters_in_argo_cds_order(tmp_path, helm):
    root = write(tmp_path, CHART)
    objects = render(root, "charts/shop", chart=chart_render(
        helm, value_files=("values-prod.yaml",), values="color: green\nport: 81\n",
        parameters=(HelmParameter("port", "8080", force_string=True), HelmParameter("greeting", "hi, there")),
        file_parameters=(("config", "files/config.json"),)))
    assert settings(objects) == {"replicas": "3", "color": "green", "port": "8080", "greeting": "hi, there",
                                 "kube": "v1.36.3", "monitoring": "true", "config": "{\"debug\": true}\n"}
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    assert configmap["metadata"] == {"name": "web-settings", "namespace": "shop"}
    # The chart's CRDs are rendered (they go first, as any CRD), and hooks keep their annotations
    # for the planner, which maps pre-install to PreSync.
    assert [o["kind"] for o in objects if o["kind"] != "ConfigMap"] == ["CustomResourceDefinition", "Job"]
    job = next(o for o in objects if o["kind"] == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_skip_crds(tmp_path, helm):
    objects = render(write(tmp_path, CHART), "charts/shop", chart=chart_render(helm, skip_crds=True))
    assert "CustomResourceDefinition" not in [o["kind"] for o in objects]


def test_a_folder_with_a_chart_is_rendered_by_helm_without_a_helm_block(tmp_path, helm, kustomize):
    root = write(tmp_path, CHART)
    chart = ChartRender(HelmSource(release_name="web", namespace="shop"), str(helm))
    assert settings(render(root, "charts/shop", chart=chart))["replicas"] == "1"
    # A kustomization beside it wins, as in Argo CD, unless the app declares a Helm source.
    write(root, {"kustomization.yaml": "resources: [cm.yaml]\n",
                 "cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-kustomize}\n"})
    assert [o["metadata"]["name"] for o in render(root, "charts/shop", kustomize=kustomize, chart=chart)] == [
        "from-kustomize"]
    assert settings(render(root, "charts/shop", chart=chart_render(helm)))["replicas"] == "1"


def test_a_missing_values_file_fails_naming_it_unless_missing_ones_are_ignored(tmp_path, helm):
    root = write(tmp_path, CHART)
    with pytest.raises(RenderError) as caught:
        render(root, "charts/shop", chart=chart_render(helm, value_files=("values-staging.yaml",)))
    assert str(caught.value).startswith("charts/shop/values-staging.yaml: values file charts/shop/values-staging.yaml "
                                        "(spec.source.helm.valueFiles 'values-staging.yaml') does not exist")
    objects = render(root, "charts/shop", chart=chart_render(helm, value_files=("values-staging.yaml", "values-prod.yaml"),
                                                             ignore_missing_value_files=True))
    assert settings(objects)["replicas"] == "3"


@pytest.mark.parametrize("options,message", [
    ({"value_files": ("../../../outside.yaml",)}, "spec.source.helm.valueFiles '../../../outside.yaml' leads outside"),
    ({"value_files": ("linked.yaml",)}, "charts/shop/linked.yaml: is a symlink that leads outside the repository"),
    ({"file_parameters": (("x", "../../../outside.yaml"),)}, "spec.source.helm.fileParameters x: '../../../outside.yaml'"),
])
def test_nothing_outside_the_checkout_is_read(tmp_path, helm, options, message):
    (tmp_path / "outside.yaml").write_text("color: stolen\n")
    root = write(tmp_path / "repo", CHART)
    if "linked.yaml" in options.get("value_files", ()):
        (root / "charts/shop/linked.yaml").symlink_to(tmp_path / "outside.yaml")
    with pytest.raises(RenderError) as caught:
        render(root, "charts/shop", chart=chart_render(helm, **options))
    assert message in str(caught.value)


def test_a_symlink_in_the_chart_out_of_the_checkout_is_refused(tmp_path, helm):
    (tmp_path / "secret.txt").write_text("s3cr3t")
    root = write(tmp_path / "repo", {**CHART, "templates/leak.yaml":
                                     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: leak}\n"
                                     "data: {x: {{ .Files.Get \"files/secret.txt\" | quote }}}\n"})
    (root / "charts/shop/files/secret.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(RenderError) as caught:
        render(root, "charts/shop", chart=chart_render(helm))
    assert str(caught.value) == "charts/shop/files/secret.txt: is a symlink that leads outside the repository"


@pytest.mark.parametrize("template,where,message", [
    ("replicas: {{ .Values.nothing.deeper }}", "charts/shop/templates/broken.yaml:4",
     "nil pointer evaluating interface {}.deeper"),
    ("replicas: {{ required \"replicas is required\" .Values.nothing }}", "charts/shop/templates/broken.yaml:4",
     "replicas is required"),
    ("name: {{ .Release.Name }", "charts/shop/templates/broken.yaml:4", "unexpected \"}\" in operand"),
    ("replicas: : 1", "charts/shop/templates/broken.yaml", "mapping values are not allowed in this context"),
])
def test_template_errors_name_the_template_and_line_in_the_repository(tmp_path, helm, template, where, message):
    root = write(tmp_path, {**CHART, "templates/broken.yaml":
                            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  {template}\n"})
    with pytest.raises(RenderError) as caught:
        render(root, "charts/shop", chart=chart_render(helm))
    text = str(caught.value)
    assert text.startswith(f"{where}: helm template failed: ") and message in text, text
    assert str(tmp_path) not in text


def test_an_object_without_a_name_is_named_by_its_template(tmp_path, helm):
    root = write(tmp_path, {**CHART, "templates/nameless.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n"})
    with pytest.raises(RenderError) as caught:
        render(root, "charts/shop", chart=chart_render(helm))
    assert str(caught.value).startswith("charts/shop/templates/nameless.yaml: object has no metadata.name")


def test_a_declared_helm_source_needs_a_chart(tmp_path, helm):
    (tmp_path / "k8s").mkdir()
    with pytest.raises(RenderError) as caught:
        render(tmp_path, "k8s", chart=chart_render(helm))
    assert "path 'k8s' has no Chart.yaml, so spec.source.helm cannot apply" in str(caught.value)


def test_vendored_and_local_dependencies(tmp_path, helm):
    sub = {"Chart.yaml": "apiVersion: v2\nname: cache\nversion: 1.0.0\n", "values.yaml": "size: 1\n",
           "templates/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-cache}\n"
                                "data: {size: {{ .Values.size | quote }}}\n"}
    # Vendored in charts/: used as it is, helm is never asked to fetch.
    root = write(tmp_path / "vendored", {**CHART, "Chart.yaml": CHART["Chart.yaml"] + (
        "dependencies:\n- name: cache\n  version: 1.0.0\n  repository: https://charts.invalid/\n")})
    write(root, sub, "charts/shop/charts/cache")
    names = {o["metadata"]["name"] for o in render(root, "charts/shop", chart=chart_render(helm))}
    assert {"web-settings", "web-cache"} <= names
    # A file:// dependency of the same repository: built by `helm dependency build` in a copy of
    # the checkout, which stays as it was.
    root = write(tmp_path / "local", {**CHART, "Chart.yaml": CHART["Chart.yaml"] + (
        "dependencies:\n- name: cache\n  version: 1.0.0\n  repository: file://../cache\n")})
    write(root, sub, "charts/cache")
    objects = render(root, "charts/shop", chart=chart_render(helm, values="cache:\n  size: 5\n"))
    assert next(o for o in objects if o["metadata"]["name"] == "web-cache")["data"] == {"size": "5"}
    assert not (root / "charts/shop/charts").exists()
    # One that leads out of the checkout is refused before helm runs.
    (root / "charts/shop/Chart.yaml").write_text(CHART["Chart.yaml"] + (
        "dependencies:\n- name: cache\n  version: 1.0.0\n  repository: file://../../../elsewhere\n"))
    with pytest.raises(RenderError) as caught:
        render(root, "charts/shop", chart=chart_render(helm))
    assert "charts/shop/Chart.yaml: a file:// dependency of the chart leads outside the repository" == str(caught.value)


# ---------------------------------------------------------------------------------------------
# Charts from a Helm repository (served on loopback, packaged and indexed by the real helm)

SHOP_V1 = {**CHART, "Chart.yaml": "apiVersion: v2\nname: shop\nversion: 1.0.0\n"}
SHOP_V2 = {**CHART, "Chart.yaml": "apiVersion: v2\nname: shop\nversion: 1.1.0\n", "values.yaml": "replicas: 2\n"}


def test_a_chart_is_resolved_pulled_unpacked_once_and_rendered(tmp_path, helm):
    with HelmRepo(tmp_path / "served", helm) as served:
        served.publish(SHOP_V1)
        cache = ChartCache(tmp_path / "cache", helm=str(helm), min_fetch_interval=60)
        version = cache.resolve(served.url, "shop", "^1")
        assert (version.name, version.version, len(version.digest)) == ("shop", "1.0.0", 64)
        folder = cache.checkout(served.url, version)
        assert settings(render(folder, "shop", chart=chart_render(helm)))["replicas"] == "1"
        assert cache.checkout(served.url, version) == folder  # pulled once
        served.publish(SHOP_V2)
        assert cache.resolve(served.url, "shop", "^1").version == "1.0.0"  # the index is read once a poll
        version = cache.resolve(served.url, "shop", "^1", refresh=True)
        assert version.version == "1.1.0"
        assert settings(render(cache.checkout(served.url, version), "shop", chart=chart_render(helm)))["replicas"] == "2"
        assert [path for path, _ in served.requests if path.endswith(".tgz")] == ["/charts/shop-1.0.0.tgz",
                                                                                "/charts/shop-1.1.0.tgz"]
        with pytest.raises(SourceError) as caught:
            cache.resolve(served.url, "shop", "2.0.0")
        assert str(caught.value) == f"chart shop version '2.0.0' not found in {served.url}: it has 1.1.0, 1.0.0"
        with pytest.raises(SourceError) as caught:
            cache.resolve(served.url, "cart", "1.0.0")
        assert str(caught.value) == f"chart 'cart' not found in the Helm repository {served.url}"


def test_a_private_repository_with_basic_auth(tmp_path, helm):
    with HelmRepo(tmp_path / "served", helm, username="deploy", password="s3cr3t-pw") as served:
        served.publish(SHOP_V1)
        given: dict[str, RepoCredentials | None] = {"creds": RepoCredentials(username="deploy", password="s3cr3t-pw")}
        cache = ChartCache(tmp_path / "cache", helm=str(helm), credentials=lambda url: given["creds"])
        folder = cache.checkout(served.url, cache.resolve(served.url, "shop", "1.0.0"))
        assert (folder / "shop" / "Chart.yaml").is_file()
        for wrong in (RepoCredentials(username="deploy", password="wrong"), None):
            given["creds"] = wrong
            with pytest.raises(SourceError) as caught:
                cache.resolve(served.url, "shop", "1.0.0", refresh=True)
            assert str(caught.value) == f"authentication failed for {served.url}" and caught.value.transient
        # helm pull itself is refused too (a chart served by a host that checks only downloads).
        given["creds"] = RepoCredentials(username="deploy", password="wrong")
        version = ChartVersion("shop", "1.1.0", "", {"name": "shop", "version": "1.1.0", "apiVersion": "v2",
                                                      "urls": ["shop-1.0.0.tgz"]})
        with pytest.raises(SourceError) as caught:
            cache.checkout(served.url, version)
        assert str(caught.value) == f"authentication failed for {served.url}"
        assert "s3cr3t" not in str(caught.value) and "wrong" not in str(caught.value)


def test_a_chart_that_is_not_what_the_index_says_is_refused(tmp_path, helm):
    with HelmRepo(tmp_path / "served", helm) as served:
        archive = served.publish(SHOP_V1)
        cache = ChartCache(tmp_path / "cache", helm=str(helm))
        version = cache.resolve(served.url, "shop", "1.0.0")
        archive.write_bytes(archive.read_bytes() + b"\0")  # republished in place, index not updated
        with pytest.raises(SourceError) as caught:
            cache.checkout(served.url, version)
        assert "does not match the digest its index gives" in str(caught.value)


def test_a_dependency_from_a_private_helm_repository_is_fetched_with_its_own_secret_only(tmp_path, helm):
    cache_chart = {"Chart.yaml": "apiVersion: v2\nname: cache\nversion: 2.0.0\n",
                   "templates/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-cache}\n"}
    with HelmRepo(tmp_path / "deps", helm, username="deps", password="deps-pw-17") as served:
        served.publish(cache_chart)
        root = write(tmp_path / "repo", {**CHART, "Chart.yaml": CHART["Chart.yaml"] + (
            f"dependencies:\n- name: cache\n  version: ^2\n  repository: {served.url}\n")})
        asked: list[str] = []

        def credentials(url: str) -> RepoCredentials | None:
            asked.append(url)
            return RepoCredentials(username="deps", password="deps-pw-17") if url == served.url else None

        chart = ChartRender(HelmSource(release_name="web", namespace="shop"), str(helm), credentials=credentials)
        names = {o["metadata"]["name"] for o in render(root, "charts/shop", chart=chart)}
        assert "web-cache" in names and asked == [served.url]
        assert not (root / "charts/shop/charts").exists()  # built in a copy: the checkout stays as it was
        wrong = ChartRender(chart.options, str(helm), credentials=lambda url: RepoCredentials("deps", "nope"))
        with pytest.raises(RenderError) as caught:
            render(root, "charts/shop", chart=wrong)
        assert str(caught.value) == (f"charts/shop/Chart.yaml: authentication failed for {served.url} "
                                     f"(a dependency's Helm repository)")


# ---------------------------------------------------------------------------------------------
# Charts from an OCI registry (crane's registry on loopback, charts pushed by the real helm)


def test_oci_pull_command_lines_carry_no_credentials():
    request = OciPull("oci://registry.example.com/charts/", "shop", "1.2.3")
    assert request.reference == "oci://registry.example.com/charts/shop"
    assert oci_pull_command("helm", request, Path("/d")) == [
        "helm", "pull", "oci://registry.example.com/charts/shop", "--version", "1.2.3", "--destination", "/d"]
    declared = OciPull("registry.example.com:5000/charts", "shop", "^1", plain_http=True, skip_tls_verify=True)
    assert oci_pull_command("helm", declared, Path("/d")) == [
        "helm", "pull", "oci://registry.example.com:5000/charts/shop", "--version", "^1", "--destination", "/d",
        "--plain-http", "--insecure-skip-tls-verify"]


def _oci_secret(url: str, password: str, **flags: str) -> dict:
    data = {"url": url, "type": "helm", "username": "u", "password": password, **flags}
    return {"metadata": {"name": password}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_an_oci_registry_uses_the_helm_secret_of_its_url_with_or_without_oci_scheme():
    secrets = [_oci_secret("registry.example.com/charts", "declared-pw", enableOCI="true", insecureOCIForceHttp="true"),
               _oci_secret("https://registry.example.com/charts", "https-pw"),
               _oci_secret("oci://registry.example.com/team", "team-pw"),
               {**_secret("registry.example.com/other", None, "git-pw")}]
    declared = select(secrets, "oci://registry.example.com/charts", "helm")
    assert (declared.password, declared.enable_oci, declared.oci_force_http) == ("declared-pw", True, True)
    assert select(secrets, "registry.example.com/charts/", "helm").password == "declared-pw"
    assert select(secrets, "oci://REGISTRY.example.com/team/apps", "helm").password == "team-pw"  # a prefix
    assert select(secrets, "https://registry.example.com/charts", "helm").password == "https-pw"
    https = select(secrets, "https://registry.example.com/charts", "helm")
    assert not https.enable_oci and not https.oci_force_http
    # Neither another Helm repository's Secret nor a git one.
    assert select(secrets, "oci://registry.example.com/other", "helm") is None
    assert select(secrets, "oci://registry.example.com/elsewhere", "helm") is None


@pytest.mark.parametrize("repo_url", ["oci://127.0.0.1:5000/charts", "registry.example.com/charts",
                                      "oci://registry.example.com"])
def test_a_chart_may_come_from_an_oci_registry(repo_url):
    spec = AppSpec.parse("web", "gantry", {"source": {"repoURL": repo_url, "chart": "shop", "targetRevision": "1.0.0"},
                                           "destination": {"namespace": "shop"}})
    assert (spec.repo_url, spec.chart, spec.path, spec.target_revision) == (repo_url, "shop", "shop", "1.0.0")


@pytest.fixture
def registry(crane, helm):
    with OciRegistry(crane, helm) as served:
        yield served


def _pulls(registry: OciRegistry) -> list[str]:
    return [r for r in registry.requests() if r.startswith("GET") and "/blobs/" in r]


def test_a_chart_from_an_oci_registry_is_pulled_once_per_version_and_rendered(tmp_path, helm, registry):
    registry.publish(SHOP_V1)
    plain_http = RepoCredentials(oci_force_http=True)
    cache = ChartCache(tmp_path / "cache", helm=str(helm), min_fetch_interval=60, credentials=lambda url: plain_http)
    version = cache.resolve(registry.url, "shop", "1.0.0")
    assert (version.name, version.version, len(version.digest)) == ("shop", "1.0.0", 64)
    folder = cache.checkout(registry.url, version)
    assert settings(render(folder, "shop", chart=chart_render(helm)))["replicas"] == "1"
    pulled = len(_pulls(registry))
    assert pulled == 2  # the chart's config and its archive
    # A version is a tag, kept once pulled: neither a refresh nor a checkout pulls it again.
    assert cache.resolve(registry.url, "shop", "1.0.0", refresh=True) == version
    assert cache.checkout(registry.url, version) == folder
    assert len(_pulls(registry)) == pulled
    # A range: helm lists the tags and pulls the newest it allows, again on a refresh.
    assert cache.resolve(registry.url, "shop", "^1").version == "1.0.0"
    registry.publish(SHOP_V2)
    assert cache.resolve(registry.url, "shop", "^1").version == "1.0.0"  # within the poll interval
    newer = cache.resolve(registry.url, "shop", "^1", refresh=True)
    assert newer.version == "1.1.0"
    assert settings(render(cache.checkout(registry.url, newer), "shop", chart=chart_render(helm)))["replicas"] == "2"
    assert cache.resolve(registry.url, "shop", "HEAD").version == "1.1.0"
    for missing in ("2.0.0", "^3"):
        with pytest.raises(SourceError) as caught:
            cache.resolve(registry.url, "shop", missing)
        assert str(caught.value) == f"chart shop version {missing!r} not found in {registry.url}"
        assert not caught.value.transient
    with pytest.raises(SourceError) as caught:
        cache.resolve(registry.url, "cart", "1.0.0")
    assert str(caught.value) == f"chart cart version '1.0.0' not found in {registry.url}"


def test_an_oci_registry_declared_by_its_secret_and_one_over_plain_http_without_it(tmp_path, helm, registry):
    registry.publish(SHOP_V1)
    declared = registry.url.removeprefix("oci://")
    given: dict[str, RepoCredentials | None] = {"creds": None}
    cache = ChartCache(tmp_path / "cache", helm=str(helm), credentials=lambda url: given["creds"])
    with pytest.raises(SourceError) as caught:
        cache.resolve(declared, "shop", "1.0.0")
    assert f"spec.source.repoURL {declared!r} has no scheme: it is an OCI registry only when its repository " \
           f"Secret (type: helm) says enableOCI: \"true\"" in str(caught.value)
    with pytest.raises(SourceError) as caught:
        cache.resolve(registry.url, "shop", "1.0.0")
    assert str(caught.value) == (f"{registry.url} answers plain HTTP: set insecureOCIForceHttp: \"true\" in its "
                                 f"repository Secret (type: helm) to pull over HTTP")
    given["creds"] = RepoCredentials(username="deploy", password="s3cr3t-pw", enable_oci=True, oci_force_http=True)
    version = cache.resolve(declared, "shop", "1.0.0")
    assert (cache.checkout(declared, version) / "shop" / "Chart.yaml").is_file()


def test_a_private_oci_registry_with_basic_auth(tmp_path, crane, helm):
    with OciRegistry(crane, helm, username="deploy", password="s3cr3t-pw") as registry:
        registry.publish(SHOP_V1)
        registry.publish(SHOP_V2)
        given = {"creds": RepoCredentials(username="deploy", password="s3cr3t-pw", oci_force_http=True)}
        cache = ChartCache(tmp_path / "cache", helm=str(helm), credentials=lambda url: given["creds"])
        version = cache.resolve(registry.url, "shop", "1.0.0")
        assert (cache.checkout(registry.url, version) / "shop" / "Chart.yaml").is_file()
        for wrong in (RepoCredentials(username="deploy", password="wrong-pw", oci_force_http=True),
                      RepoCredentials(oci_force_http=True)):
            given["creds"] = wrong
            with pytest.raises(SourceError) as caught:
                cache.resolve(registry.url, "shop", "1.1.0")
            assert str(caught.value) == f"authentication failed for {registry.url}" and caught.value.transient
            assert "s3cr3t" not in str(caught.value) and "wrong-pw" not in str(caught.value)
