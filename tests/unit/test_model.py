"""controller/model.py: object identity, and the Application spec parsed into values with defaults,
the checks the CRD schema cannot make, and Argo CD's syncPolicy (syncOptions, retry with Go durations).
"""

from __future__ import annotations

import pytest
import yaml

from controller.model import (
    AppSpec,
    HelmParameter,
    HelmSource,
    IgnoreDifference,
    KustomizeOverrides,
    NamespacePolicy,
    ObjectRef,
    RetryPolicy,
    SpecError,
    SyncOptions,
    kustomize_image,
    parse_duration,
)

# ---------------------------------------------------------------------------------------------
# ObjectRef

REFS = [
    # (manifest, ref, str)
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}},
     ObjectRef("apps", "Deployment", "shop", "web"), "Deployment.apps shop/web"),
    ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "shop"}},
     ObjectRef("", "ConfigMap", "shop", "settings"), "ConfigMap shop/settings"),
    ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
     ObjectRef("", "Namespace", "", "shop"), "Namespace shop"),
    ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "reader", "namespace": None}},
     ObjectRef("rbac.authorization.k8s.io", "ClusterRole", "", "reader"), "ClusterRole.rbac.authorization.k8s.io reader"),
]


@pytest.mark.parametrize("manifest,ref,text", REFS, ids=[r[2] for r in REFS])
def test_object_ref_of_and_str(manifest, ref, text):
    assert ObjectRef.of(manifest) == ref
    assert str(ref) == text


def test_object_ref_of_a_manifest_without_metadata_does_not_raise():
    assert ObjectRef.of({"apiVersion": "v1", "kind": "ConfigMap"}) == ObjectRef("", "ConfigMap", "", "")


# ---------------------------------------------------------------------------------------------
# AppSpec.parse

REPO = "https://git.example.com/shop/deploy.git"


def parse(spec: dict) -> AppSpec:
    return AppSpec.parse("guestbook", "argocd", spec)


def test_defaults():
    spec = parse({"source": {"repoURL": REPO}})
    assert spec.repo_url == REPO
    assert spec.target_revision == "HEAD"
    assert spec.path == "k8s"
    assert spec.destination_namespace == "argocd"
    assert spec.project == "default"
    assert (spec.automated, spec.prune, spec.self_heal) == (False, False, False)
    assert spec.sync_options == SyncOptions()
    assert spec.retry is None
    assert spec.ignore_differences == ()
    assert spec.key == "argocd/guestbook"


def test_explicit_values_are_kept():
    spec = parse({"source": {"repoURL": f"  {REPO} ", "targetRevision": "v1.4.2", "path": "deploy/overlays/prod/"},
                  "destination": {"namespace": "shop", "server": "https://kubernetes.default.svc"}})
    assert spec.repo_url == REPO
    assert spec.target_revision == "v1.4.2"
    assert spec.path == "deploy/overlays/prod"
    assert spec.destination_namespace == "shop"


REJECTED = [
    # (id, spec, what the message must say)
    ("no source", {}, "spec.source.repoURL is required"),
    ("empty repoURL", {"source": {"repoURL": "  "}}, "spec.source.repoURL is required"),
    ("ftp scheme", {"source": {"repoURL": "ftp://git.example.com/shop.git"}},
     "spec.source.repoURL 'ftp://git.example.com/shop.git': use an https://, http://, ssh:// or git:// URL"),
    ("file URL", {"source": {"repoURL": "file:///var/cache/gantry/repos/3f2a/team-b.git"}},
     "spec.source.repoURL 'file:///var/cache/gantry/repos/3f2a/team-b.git': repositories on the controller's "
     "filesystem are not allowed (other apps' cached clones are there); serve it over https://, ssh:// or git://"),
    ("file URL without slashes", {"source": {"repoURL": "file:repos/team-b.git"}}, "are not allowed"),
    ("bare host path", {"source": {"repoURL": "git.example.com/shop.git"}}, "use an https://"),
    ("local path with an at sign", {"source": {"repoURL": "repos/me@work:shop.git"}}, "use an https://"),
    ("absolute path", {"source": {"repoURL": REPO, "path": "/etc"}},
     "spec.source.path '/etc' must be relative to the repository root and may not use '..'"),
    ("dot-dot path", {"source": {"repoURL": REPO, "path": "k8s/../../other"}}, "may not use '..'"),
    ("leading dot-dot", {"source": {"repoURL": REPO, "path": "../k8s"}}, "may not use '..'"),
    ("remote server", {"source": {"repoURL": REPO}, "destination": {"server": "https://10.0.0.1:6443"}},
     "spec.destination.server 'https://10.0.0.1:6443' is not supported: Gantry deploys only to the cluster it runs in"),
    ("remote cluster name", {"source": {"repoURL": REPO}, "destination": {"name": "prod-eu"}},
     "spec.destination.name 'prod-eu' is not supported: use 'in-cluster'"),
    ("malformed syncOption", {"source": {"repoURL": REPO}, "syncPolicy": {"syncOptions": ["CreateNamespace"]}},
     "syncPolicy.syncOptions: 'CreateNamespace' is not of the form Name="),
    ("bad retry duration", {"source": {"repoURL": REPO}, "syncPolicy": {"retry": {"backoff": {"duration": "five"}}}},
     "'five' is not a duration like 5s, 3m or 1h"),
    ("bad backoff factor", {"source": {"repoURL": REPO}, "syncPolicy": {"retry": {"backoff": {"factor": "double"}}}},
     "syncPolicy.retry.backoff.factor 'double' is not a number"),
    ("bad retry limit", {"source": {"repoURL": REPO}, "syncPolicy": {"retry": {"limit": "often"}}},
     "syncPolicy.retry.limit 'often' is not a number"),
    ("bad history limit", {"source": {"repoURL": REPO}, "revisionHistoryLimit": "ten"},
     "spec.revisionHistoryLimit 'ten' is not a number"),
    ("chart from git URL", {"source": {"repoURL": "git@git.example.com:shop/charts.git", "chart": "shop"}},
     "a chart comes from a Helm repository, an https:// or http:// URL serving index.yaml"),
    ("chart from a malformed OCI URL", {"source": {"repoURL": "oci://registry.example.com:port/charts", "chart": "shop"}},
     "an OCI registry's repository is oci://HOST[:PORT]/PATH, the chart's name in spec.source.chart"),
    ("chart name with a path", {"source": {"repoURL": "https://charts.example.com", "chart": "../shop"}},
     "spec.source.chart '../shop' is not a chart name"),
    ("helm block not a map", {"source": {"repoURL": REPO, "helm": "prod"}}, "spec.source.helm must be a map"),
    ("release name", {"source": {"repoURL": REPO, "helm": {"releaseName": "Shop_Web"}}},
     "spec.source.helm.releaseName 'Shop_Web': Helm release names are lower-case"),
    ("long release name", {"source": {"repoURL": REPO, "helm": {"releaseName": "a" * 54}}}, "at most 53 characters"),
    ("value file URL", {"source": {"repoURL": REPO, "helm": {"valueFiles": ["https://example.com/v.yaml"]}}},
     "spec.source.helm.valueFiles[0] 'https://example.com/v.yaml': Gantry reads values files from the app's own"),
    ("value file of another source", {"source": {"repoURL": REPO, "helm": {"valueFiles": ["ok.yaml", "$values/a.yaml"]}}},
     "spec.source.helm.valueFiles[1] '$values/a.yaml'"),
    ("absolute value file", {"source": {"repoURL": REPO, "helm": {"valueFiles": ["/etc/passwd"]}}},
     "must be relative to the chart's folder"),
    ("value files not a list", {"source": {"repoURL": REPO, "helm": {"valueFiles": "prod.yaml"}}},
     "spec.source.helm.valueFiles must be a list"),
    ("values not YAML", {"source": {"repoURL": REPO, "helm": {"values": "a: [1"}}}, "spec.source.helm.values is not YAML"),
    ("values a list", {"source": {"repoURL": REPO, "helm": {"values": "- 1"}}}, "spec.source.helm.values must be a map"),
    ("valuesObject a list", {"source": {"repoURL": REPO, "helm": {"valuesObject": [1]}}},
     "spec.source.helm.valuesObject must be a map"),
    ("parameter without name", {"source": {"repoURL": REPO, "helm": {"parameters": [{"value": "1"}]}}},
     "spec.source.helm.parameters[0] needs a name"),
    ("forceString not a bool", {"source": {"repoURL": REPO, "helm": {"parameters": [{"name": "a", "forceString": "yes"}]}}},
     "spec.source.helm.parameters[0].forceString 'yes' must be true or false"),
    ("file parameter without path", {"source": {"repoURL": REPO, "helm": {"fileParameters": [{"name": "cfg"}]}}},
     "spec.source.helm.fileParameters[0] needs a name and a path"),
    ("file parameter absolute", {"source": {"repoURL": REPO, "helm": {"fileParameters": [{"name": "c", "path": "/etc/x"}]}}},
     "spec.source.helm.fileParameters[0].path '/etc/x' must be a file of the app's source"),
    ("skipCrds not a bool", {"source": {"repoURL": REPO, "helm": {"skipCrds": "maybe"}}},
     "spec.source.helm.skipCrds 'maybe' must be true or false"),
    ("kubeVersion", {"source": {"repoURL": REPO, "helm": {"kubeVersion": "latest"}}},
     "spec.source.helm.kubeVersion 'latest' is not a Kubernetes version"),
    ("plugin", {"source": {"repoURL": REPO, "plugin": {"name": "cdk8s"}}}, "spec.source.plugin: Gantry does not"),
]


@pytest.mark.parametrize("text,image", [
    ("nginx:1.28", {"name": "nginx", "newTag": "1.28"}),
    ("nginx=registry.example/web:2", {"name": "nginx", "newName": "registry.example/web", "newTag": "2"}),
    ("nginx=registry.example:5000/web", {"name": "nginx", "newName": "registry.example:5000/web"}),
    ("localhost:5000/web:3", {"name": "localhost:5000/web", "newTag": "3"}),
    ("web@sha256:abc", {"name": "web", "digest": "sha256:abc"}),
    ("web=mirror/web@sha256:abc", {"name": "web", "newName": "mirror/web", "digest": "sha256:abc"}),
])
def test_kustomize_images_in_argo_cd_syntax(text, image):
    assert kustomize_image(text) == image


@pytest.mark.parametrize("text", ["nginx", "=web:2", "localhost:5000/web"])
def test_kustomize_images_that_change_nothing_or_name_nothing_are_refused(text):
    with pytest.raises(SpecError) as caught:
        kustomize_image(text)
    assert "spec.source.kustomize.images" in str(caught.value)


def test_kustomize_overrides_become_a_kustomization_around_the_app():
    spec = parse({"source": {"repoURL": REPO, "kustomize": {
        "namePrefix": "prod-", "images": ["web:2"], "commonLabels": {"team": "shop"},
        "replicas": [{"name": "web", "count": 3}], "components": ["../extra"]}}})
    assert spec.kustomize.kustomization("/checkout/k8s") == {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": ["/checkout/k8s"],
        "namePrefix": "prod-", "images": [{"name": "web", "newTag": "2"}],
        "labels": [{"pairs": {"team": "shop"}, "includeSelectors": True}],
        "replicas": [{"name": "web", "count": 3}]}
    assert spec.unsupported == ("spec.source.kustomize.components",)
    assert not parse({"source": {"repoURL": REPO}}).kustomize
    assert KustomizeOverrides.parse({"namePrefix": "a-"}) == KustomizeOverrides(name_prefix="a-")


def test_directory_recurse_and_the_argo_cd_fields_gantry_does_not_act_on():
    spec = parse({
        "source": {"repoURL": REPO, "directory": {"recurse": True, "exclude": "*.tmp"},
                   "kustomize": {"images": ["web=web:2"], "namePrefix": "prod-", "patches": []}},
        "ignoreDifferences": [
            {"group": "apps", "kind": "Deployment", "jsonPointers": ["/spec/replicas"]},
            {"group": "apps", "kind": "Deployment", "managedFieldsManagers": ["kube-controller-manager"],
             "jqPathExpressions": [".spec.replicas"]},
        ],
    })
    assert spec.directory_recurse is True
    assert spec.unsupported == (
        "spec.source.kustomize.patches", "spec.source.directory.exclude",
        "spec.ignoreDifferences[1].jqPathExpressions", "spec.ignoreDifferences[1].managedFieldsManagers")
    assert parse({"source": {"repoURL": REPO, "directory": {"recurse": True}}}).unsupported == ()


def test_a_refused_repo_url_is_shown_without_its_credentials():
    with pytest.raises(SpecError) as caught:
        parse({"source": {"repoURL": "ftp://deployer:s3cret@git.example.com/shop.git"}})
    assert "s3cret" not in str(caught.value) and "deployer" not in str(caught.value)
    assert "'ftp://git.example.com/shop.git'" in str(caught.value)


@pytest.mark.parametrize("automated,allowed", [
    ({"prune": True}, False),
    ({"prune": True, "allowEmpty": True}, True),
    (None, False),
])
def test_allow_empty(automated, allowed):
    spec = {"source": {"repoURL": REPO}}
    if automated is not None:
        spec["syncPolicy"] = {"automated": automated}
    assert parse(spec).allow_empty is allowed


@pytest.mark.parametrize("spec,message", [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_invalid_specs_are_rejected_with_a_message_that_says_what_to_fix(spec, message):
    with pytest.raises(SpecError) as caught:
        parse(spec)
    assert message in str(caught.value)


@pytest.mark.parametrize("url", [
    "git@github.com:example/shop.git",
    "deploy@git.example.com:shop/deploy",
    "ssh://git@git.example.com:2222/shop/deploy.git",
    "git://git.example.com/shop.git",
    "http://127.0.0.1:8080/shop.git",
])
def test_accepted_repo_urls(url):
    assert parse({"source": {"repoURL": url}}).repo_url == url


@pytest.mark.parametrize("destination", [
    {"server": "https://kubernetes.default.svc"},
    {"server": "https://kubernetes.default.svc/"},
    {"name": "in-cluster"},
    {"server": "https://kubernetes.default.svc", "name": "in-cluster"},
    {},
])
def test_in_cluster_destinations_are_accepted(destination):
    assert parse({"source": {"repoURL": REPO}, "destination": {**destination, "namespace": "shop"}}).destination_namespace == "shop"


@pytest.mark.parametrize("path,parsed", [("k8s/", "k8s"), (".", "."), ("./", "."), ("a/..b/c", "a/..b/c")])
def test_paths_inside_the_repository(path, parsed):
    assert parse({"source": {"repoURL": REPO, "path": path}}).path == parsed


@pytest.mark.parametrize("automated,expected", [
    ({}, (True, False, False)),
    ({"prune": True}, (True, True, False)),
    ({"selfHeal": True}, (True, False, True)),
    ({"prune": True, "selfHeal": True}, (True, True, True)),
    (None, (False, False, False)),
], ids=["empty", "prune", "selfHeal", "both", "null"])
def test_automated(automated, expected):
    spec = parse({"source": {"repoURL": REPO}, "syncPolicy": {"automated": automated}})
    assert (spec.automated, spec.prune, spec.self_heal) == expected


def test_automated_enabled_false_turns_auto_sync_off():
    spec = parse({"source": {"repoURL": REPO}, "syncPolicy": {"automated": {"enabled": False, "prune": True}}})
    assert spec.automated is False


def test_automated_enabled_true_is_automated():
    assert parse({"source": {"repoURL": REPO}, "syncPolicy": {"automated": {"enabled": True}}}).automated is True


# ---------------------------------------------------------------------------------------------
# syncOptions


def test_sync_options_honoured():
    options = SyncOptions.parse(["CreateNamespace=true", "PruneLast=true", "Replace=true", "RespectIgnoreDifferences=true"])
    assert options == SyncOptions(create_namespace=True, prune_last=True, replace=True, respect_ignore_differences=True)


def test_sync_option_values_are_case_insensitive_and_false_turns_off():
    assert SyncOptions.parse(["CreateNamespace=True", "PruneLast=FALSE"]) == SyncOptions(create_namespace=True)
    assert SyncOptions.parse(["CreateNamespace=true", "CreateNamespace=false"]).create_namespace is False


def test_other_argo_cd_sync_options_are_accepted_without_effect():
    options = SyncOptions.parse(["Validate=false", "ApplyOutOfSyncOnly=true", "FailOnSharedResource=true",
                                 "ServerSideApply=true", "SkipDryRunOnMissingResource=true"])
    assert options == SyncOptions()


@pytest.mark.parametrize("entry", ["CreateNamespace", "CreateNamespace=yes", "CreateNamespace=", "Replace:true"])
def test_malformed_sync_options_are_rejected(entry):
    with pytest.raises(SpecError, match="is not of the form (Name=value|CreateNamespace=true.false)"):
        SyncOptions.parse(["PruneLast=true", entry])


@pytest.mark.parametrize("policy", ["foreground", "background", "orphan"])
def test_prune_propagation_policy_is_accepted(policy):
    assert SyncOptions.parse([f"PrunePropagationPolicy={policy}", "CreateNamespace=true"]).create_namespace is True


# ---------------------------------------------------------------------------------------------
# retry and durations


@pytest.mark.parametrize("text,seconds", [
    ("5s", 5.0), ("3m", 180.0), ("1h", 3600.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1m30s", 90.0),
    ("1.5s", 1.5), ("2h0m0s", 7200.0), (" 10s ", 10.0), (7, 7.0), (2.5, 2.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["five", "5x", "s", "m5", "-5s", "5 s", "1h30", "5d"])
def test_parse_duration_rejects_what_is_not_a_duration(text):
    with pytest.raises(SpecError, match="is not a duration"):
        parse_duration(text)


def test_parse_duration_rejects_a_malformed_number_with_spec_error():
    with pytest.raises(SpecError):
        parse_duration("1.2.3s")


@pytest.mark.parametrize("text,seconds", [("10", 10.0), ("0", 0.0)])
def test_parse_duration_unitless_means_seconds_as_in_argo_cd(text, seconds):
    assert parse_duration(text) == seconds


def test_retry_parsed_from_an_argo_cd_block():
    spec = parse({"source": {"repoURL": REPO}, "syncPolicy": {"retry": {
        "limit": 3, "backoff": {"duration": "10s", "factor": 3, "maxDuration": "30m"}}}})
    assert spec.retry == RetryPolicy(limit=3, backoff_seconds=10.0, factor=3.0, max_backoff_seconds=1800.0)


def test_retry_defaults_and_factor_as_a_string():
    spec = parse({"source": {"repoURL": REPO}, "syncPolicy": {"retry": {"backoff": {"factor": "2"}}}})
    assert spec.retry == RetryPolicy(limit=5, backoff_seconds=5.0, factor=2.0, max_backoff_seconds=180.0)
    assert parse({"source": {"repoURL": REPO}, "syncPolicy": {"retry": {}}}).retry == RetryPolicy()


def test_retry_delay_grows_by_the_factor_up_to_the_cap():
    policy = RetryPolicy(limit=10, backoff_seconds=5, factor=2, max_backoff_seconds=60)
    assert [policy.delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert policy.delay(0) == 5  # treated as the first retry, never less


def test_retry_delay_with_factor_one_is_constant():
    assert {RetryPolicy(backoff_seconds=7, factor=1).delay(n) for n in range(1, 20)} == {7}


def test_unlimited_retry_delay_stays_at_the_cap_for_ever():
    spec = parse({"source": {"repoURL": REPO}, "syncPolicy": {"retry": {"limit": -1}}})
    assert spec.retry.limit == -1
    assert spec.retry.delay(1025) == 180.0
    assert spec.retry.delay(2000) == 180.0


# ---------------------------------------------------------------------------------------------
# ignoreDifferences


@pytest.mark.parametrize("ignore,ref,matches", [
    (IgnoreDifference("apps", "Deployment", ()), ObjectRef("apps", "Deployment", "shop", "web"), True),
    (IgnoreDifference("apps", "Deployment", (), name="web"), ObjectRef("apps", "Deployment", "shop", "web"), True),
    (IgnoreDifference("apps", "Deployment", (), name="api"), ObjectRef("apps", "Deployment", "shop", "web"), False),
    (IgnoreDifference("apps", "Deployment", (), namespace="shop"), ObjectRef("apps", "Deployment", "shop", "web"), True),
    (IgnoreDifference("apps", "Deployment", (), namespace="prod"), ObjectRef("apps", "Deployment", "shop", "web"), False),
    (IgnoreDifference("", "Deployment", ()), ObjectRef("apps", "Deployment", "shop", "web"), False),
    (IgnoreDifference("apps", "StatefulSet", ()), ObjectRef("apps", "Deployment", "shop", "web"), False),
    (IgnoreDifference("", "ConfigMap", ()), ObjectRef("", "ConfigMap", "shop", "settings"), True),
    (IgnoreDifference("", "Namespace", (), namespace="shop"), ObjectRef("", "Namespace", "", "shop"), False),
])
def test_ignore_difference_matches(ignore, ref, matches):
    assert ignore.matches(ref) is matches


# ---------------------------------------------------------------------------------------------
# An Argo CD Application as users write it

ARGO_CD_APPLICATION = """
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: shop
  namespace: argocd
  finalizers:
    - resources-finalizer.argocd.argoproj.io
spec:
  project: shop-team
  source:
    repoURL: https://github.com/example/shop-deploy.git
    targetRevision: main
    path: overlays/prod
    kustomize:
      namePrefix: prod-
      images:
        - ghcr.io/example/web:1.4.2
  destination:
    server: https://kubernetes.default.svc
    namespace: shop
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
      allowEmpty: false
    syncOptions:
      - CreateNamespace=true
      - PruneLast=true
      - ApplyOutOfSyncOnly=true
    retry:
      limit: 5
      backoff:
        duration: 5s
        factor: 2
        maxDuration: 3m
  ignoreDifferences:
    - group: apps
      kind: Deployment
      jsonPointers:
        - /spec/replicas
    - kind: Secret
      name: db
      namespace: shop
      jsonPointers:
        - /data/password
        - /metadata/annotations/example.com~1rotated-at
"""


def test_argo_cd_application_parses():
    app = yaml.safe_load(ARGO_CD_APPLICATION)
    spec = AppSpec.parse(app["metadata"]["name"], app["metadata"]["namespace"], app["spec"])
    assert spec == AppSpec(
        name="shop",
        namespace="argocd",
        repo_url="https://github.com/example/shop-deploy.git",
        target_revision="main",
        path="overlays/prod",
        destination_namespace="shop",
        automated=True,
        prune=True,
        self_heal=True,
        sync_options=SyncOptions(create_namespace=True, prune_last=True),
        retry=RetryPolicy(limit=5, backoff_seconds=5.0, factor=2.0, max_backoff_seconds=180.0),
        ignore_differences=(
            IgnoreDifference("apps", "Deployment", ("/spec/replicas",)),
            IgnoreDifference("", "Secret", ("/data/password", "/metadata/annotations/example.com~1rotated-at"),
                             name="db", namespace="shop"),
        ),
        project="shop-team",
        kustomize=KustomizeOverrides(name_prefix="prod-", images=((("name", "ghcr.io/example/web"), ("newTag", "1.4.2")),)),
    )


# ---------------------------------------------------------------------------------------------
# NamespacePolicy: namespaced mode's fence between teams


def test_cluster_mode_has_no_policy():
    assert NamespacePolicy.parse("") is None
    assert NamespacePolicy.parse(" , ") is None


def test_a_namespace_admits_only_its_own_applications_by_default():
    policy = NamespacePolicy.parse("team-a,team-b")
    assert policy.allows("team-a/shop", "team-a")
    assert not policy.allows("team-a/shop", "team-b")
    # The controller's own namespace is not trusted by default either: a grant says who may.
    assert not policy.allows("gantry/shop", "team-a")
    assert not policy.allows("team-c/x", "team-c"), "a namespace not listed admits nobody"


def test_grants_add_applications_by_glob_and_only_for_their_namespace():
    policy = NamespacePolicy.parse("team-a,team-b", ["team-b=gantry/shop-b*,team-a/reporting", "team-b=ops/*"])
    assert policy.allows("gantry/shop-b", "team-b") and policy.allows("gantry/shop-b-canary", "team-b")
    assert policy.allows("team-a/reporting", "team-b") and policy.allows("ops/anything", "team-b")
    assert policy.allows("team-b/own", "team-b"), "a grant adds to the default, it does not replace it"
    assert not policy.allows("gantry/shop-a", "team-b")
    assert not policy.allows("gantry/shop-b", "team-a")
    assert policy.admitted("team-b") == ("team-b/*", "gantry/shop-b*", "team-a/reporting", "ops/*")


def test_refusals_say_what_would_allow_it():
    policy = NamespacePolicy.parse("team-a,team-b", ["team-b=gantry/shop-b"])
    message = policy.refusal("team-a/shop", "team-b")
    assert message == ("namespace 'team-b' is not allowed for Application team-a/shop: it admits only team-b/*, "
                       "gantry/shop-b; an administrator can grant it with --destination-apps team-b=team-a/shop")
    assert "manages only team-a, team-b (its --namespaces)" in policy.refusal("team-a/shop", "kube-system")


@pytest.mark.parametrize("grant", ["team-a", "team-a=", "team-a=shop", "team-c=gantry/x", "=gantry/x"])
def test_a_grant_that_does_not_fit_is_an_error(grant):
    with pytest.raises(SpecError, match="--destination-apps"):
        NamespacePolicy.parse("team-a,team-b", [grant])


def test_grants_need_namespaced_mode():
    with pytest.raises(SpecError, match="needs namespaced mode"):
        NamespacePolicy.parse("", ["team-a=gantry/x"])


# ---------------------------------------------------------------------------------------------
# Helm sources


def test_a_chart_from_a_helm_repository():
    spec = AppSpec.parse("guestbook", "argocd", {
        "source": {"repoURL": "https://charts.example.com/stable", "chart": "shop", "targetRevision": "^1.2",
                   "path": "k8s"},  # the CRD's default path: meaningless for a chart
        "destination": {"namespace": "shop"}})
    assert (spec.chart, spec.repo_url, spec.target_revision, spec.path) == ("shop", "https://charts.example.com/stable",
                                                                            "^1.2", "shop")
    assert spec.helm == HelmSource(release_name="guestbook", namespace="shop")
    assert spec.source_record() == {"repoURL": "https://charts.example.com/stable", "path": "shop",
                                    "targetRevision": "^1.2", "chart": "shop",
                                    "helm": {"releaseName": "guestbook", "namespace": "shop"}}


def test_a_helm_block_with_every_field():
    spec = AppSpec.parse("guestbook", "argocd", {"source": {"repoURL": REPO, "path": "charts/shop", "helm": {
        "releaseName": "web", "namespace": "other", "valueFiles": ["values-prod.yaml", "../common.yaml"],
        "ignoreMissingValueFiles": True, "values": "replicaCount: 1\n", "valuesObject": {"replicaCount": 3},
        "parameters": [{"name": "image.tag", "value": "1.2,3"}, {"name": "port", "value": "80", "forceString": True},
                       {"name": "enabled", "value": True}],
        "fileParameters": [{"name": "config", "path": "files/config.json"}],
        "skipCrds": "true", "skipSchemaValidation": True, "skipTests": True, "kubeVersion": "v1.31.2",
        "apiVersions": ["monitoring.coreos.com/v1"], "passCredentials": True, "version": "v3"}},
        "destination": {"namespace": "shop"}})
    assert spec.helm == HelmSource(
        release_name="web", namespace="other", value_files=("values-prod.yaml", "../common.yaml"),
        ignore_missing_value_files=True, values="replicaCount: 3\n",  # valuesObject wins, as in Argo CD
        parameters=(HelmParameter("image.tag", "1.2,3"), HelmParameter("port", "80", True),
                    HelmParameter("enabled", "true")),
        file_parameters=(("config", "files/config.json"),), skip_crds=True, skip_schema_validation=True,
        skip_tests=True, kube_version="v1.31.2", api_versions=("monitoring.coreos.com/v1",), pass_credentials=True)
    assert spec.unsupported == ()  # `version` (Helm 2 or 3) is accepted
    # What history records is what parses back to the same settings (a rollback renders as then).
    again = AppSpec.parse("guestbook", "argocd", {"source": {"repoURL": REPO, "path": "charts/shop",
                                                             "helm": spec.helm.block()}})
    assert again.helm == spec.helm


def test_without_a_helm_block_a_chart_in_git_renders_with_the_defaults():
    spec = AppSpec.parse("guestbook", "argocd", {"source": {"repoURL": REPO, "path": "chart"},
                                                 "destination": {"namespace": "shop"}})
    assert spec.helm is None and spec.chart == ""
    assert spec.helm_options == HelmSource(release_name="guestbook", namespace="shop")


def test_unknown_helm_fields_are_said_not_dropped():
    spec = AppSpec.parse("guestbook", "argocd", {"source": {"repoURL": REPO, "helm": {"valueFile": ["a.yaml"]}}})
    assert spec.unsupported == ("spec.source.helm.valueFile",)
