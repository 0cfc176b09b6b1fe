"""controller/traps.py: which changes are healed, which are refused (and how it says so), and how
the API server's conflict, immutable and terminating-namespace answers are read. No cluster: the
live objects are what the API server returns (defaults included), the messages its exact text
(tests/e2e/test_traps.py checks the same against the real server)."""

from __future__ import annotations

import base64
import copy

import pytest

from controller import traps
from controller.traps import ObjectSyncOptions, Takeover


def deployment(**spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}, **spec}}


def live_deployment(**spec) -> dict:
    """As the API server keeps it: defaults added, RollingUpdate's block among them."""
    live = deployment(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                      revisionHistoryLimit=10, progressDeadlineSeconds=600, **spec)
    live["metadata"].update(uid="u-1", resourceVersion="42")
    container = live["spec"]["template"]["spec"]["containers"][0]
    container.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log", resources={})
    live["spec"]["template"]["spec"].update(restartPolicy="Always", dnsPolicy="ClusterFirst", securityContext={})
    live["status"] = {"replicas": 1}
    return live


def statefulset(**spec) -> dict:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "db", "image": "mariadb:11"}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                         "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
                     **spec}}


def live_statefulset(**spec) -> dict:
    live = statefulset(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                       podManagementPolicy="OrderedReady", **spec)
    template = live["spec"]["volumeClaimTemplates"][0]
    template.update(apiVersion="v1", kind="PersistentVolumeClaim", status={"phase": "Pending"})
    template["spec"]["volumeMode"] = "Filesystem"
    live["metadata"].update(uid="u-2", resourceVersion="7")
    return live


def core(kind: str, **fields) -> dict:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": "x", "namespace": "shop"}, **fields}


# ------------------------------------------------------------------ sync options


@pytest.mark.parametrize("text, expected", [
    ("", ObjectSyncOptions()),
    ("Replace=true", ObjectSyncOptions(replace=True)),
    ("Force=true,Replace=true", ObjectSyncOptions(replace=True, force=True)),
    (" Prune=false , Delete=false ", ObjectSyncOptions(prune=False, delete=False)),
    ("Prune=confirm", ObjectSyncOptions(prune_confirm=True)),
    ("Replace=TRUE,Replace=false", ObjectSyncOptions()),
    ("PruneLast=true,ServerSideApply=true,Validate=false,SkipDryRunOnMissingResource=true",
     ObjectSyncOptions(prune_last=True, server_side_apply=True, validate=False, skip_dry_run_on_missing_resource=True)),
    ("Replace=yes,FailOnSharedResource=true,oops", ObjectSyncOptions(
        unknown=("Replace=yes", "FailOnSharedResource=true", "oops"))),
])
def test_sync_options_text_is_parsed_as_argo_cd_writes_it(text, expected):
    assert traps.parse_sync_options(text) == expected


@pytest.mark.parametrize("annotations, recreate", [
    ({}, False),
    ({"argocd.argoproj.io/sync-options": "Replace=true"}, True),
    ({"argocd.argoproj.io/sync-options": "Force=true"}, True),
    ({"gantry.dev/sync-options": "Force=true"}, True),
    ({"argocd.argoproj.io/sync-options": "Replace=true", "gantry.dev/sync-options": "Replace=false"}, False),
    ({"argocd.argoproj.io/sync-options": "Prune=false"}, False),
])
def test_an_objects_annotations_say_whether_it_may_be_recreated(annotations, recreate):
    obj = deployment()
    obj["metadata"]["annotations"] = annotations
    assert traps.object_sync_options(obj).recreate is recreate


def test_null_annotations_are_no_options():
    obj = deployment()
    obj["metadata"]["annotations"] = None
    assert traps.object_sync_options(obj) == ObjectSyncOptions()


# ------------------------------------------------------------------ comparing with what the server keeps


@pytest.mark.parametrize("want, have, result", [
    ({"a": 1}, {"a": 1, "defaulted": 2}, False),
    ({"a": 1}, {"a": 2}, True),
    ({"a": {}}, {}, False),  # an empty value the server leaves out
    ({"a": False, "b": [], "c": ""}, {}, False),
    ({"a": None}, {"a": 5}, False),  # null: the target says nothing
    ([{"name": "x"}], [{"name": "x", "y": 1}], False),
    ([{"name": "x"}], [{"name": "x"}, {"name": "y"}], True),
    ({"storage": "1024Mi"}, {"storage": "1Gi"}, False),
    ({"cpu": 0.5}, {"cpu": "500m"}, False),
    ({"cpu": 1}, {"cpu": "1"}, False),
    ({"storage": "2Gi"}, {"storage": "1Gi"}, True),
    ({"image": "a"}, {"image": "b"}, True),
])
def test_differs_ignores_defaults_and_equal_quantities(want, have, result):
    assert traps.differs(want, have) is result


# ------------------------------------------------------------------ heals


def test_recreate_after_rolling_update_heals_the_defaulted_block_in_one_patch():
    target = deployment(strategy={"type": "Recreate"})
    live = live_deployment()
    (heal,) = traps.heals(target, live)
    assert heal.field == "spec.strategy.rollingUpdate"
    assert "defaulted" in heal.why and "Recreate" in heal.why
    assert traps.heal_patch((heal,), "42") == {"metadata": {"resourceVersion": "42"},
                                                "spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}}}
    # The dry run sends the target with the live type, then makes the heal on the answer.
    assert traps.neutral(target, live, (heal,))["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert traps.healed(live, (heal,))["spec"]["strategy"] == {"type": "Recreate"}
    assert live["spec"]["strategy"]["rollingUpdate"], "healed() must not change its input"


def test_on_delete_after_rolling_update_heals_a_statefulsets_defaulted_partition():
    (heal,) = traps.heals(statefulset(updateStrategy={"type": "OnDelete"}), live_statefulset())
    assert heal.field == "spec.updateStrategy.rollingUpdate"
    assert traps.heal_patch((heal,), "7")["spec"] == {"updateStrategy": {"type": "OnDelete", "rollingUpdate": None}}


@pytest.mark.parametrize("target, live", [
    (deployment(), live_deployment()),  # no change of type
    (deployment(strategy={"type": "Recreate"}), None),  # a new object
    (deployment(strategy={"type": "RollingUpdate"}), {**live_deployment(), "spec": {
        **live_deployment()["spec"], "strategy": {"type": "Recreate"}}}),  # back: the server defaults it again
    # The target sets rollingUpdate itself: its own mistake, for the API server to name.
    (deployment(strategy={"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}), live_deployment()),
    (statefulset(), live_statefulset()),
    # A Service leaving NodePort: the API server drops the allocated nodePorts itself.
    (core("Service", spec={"type": "ClusterIP", "ports": [{"port": 80}]}),
     core("Service", spec={"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}],
                           "externalTrafficPolicy": "Cluster"})),
], ids=["unchanged", "new", "back-to-rolling", "target-sets-it", "statefulset-unchanged", "service"])
def test_nothing_to_heal(target, live):
    assert traps.heals(target, live) == ()


def test_merge_patch_follows_rfc_7386():
    assert traps.merge_patch({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": None, "e": 3}, "d": [2]}) == \
        {"a": {"c": 2, "e": 3}, "d": [2]}


# ------------------------------------------------------------------ immutable fields


def fields(target, live) -> list[str]:
    return [c.field for c in traps.immutable_changes(target, live)]


def changed(obj: dict, *path_and_value) -> dict:
    result = copy.deepcopy(obj)
    *path, last, value = path_and_value
    node = result
    for key in path:
        node = node[key]
    node[last] = value
    return result


def secret(**fields) -> dict:
    return core("Secret", **fields)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


IMMUTABLE_CASES = {
    "deployment selector": (changed(deployment(), "spec", "selector", {"matchLabels": {"app": "web", "v": "2"}}),
                            live_deployment(), ["spec.selector"]),
    "deployment selector narrowed": (changed(deployment(), "spec", "selector", {"matchLabels": {}}),
                                     live_deployment(), ["spec.selector"]),
    "statefulset serviceName": (changed(statefulset(), "spec", "serviceName", "db2"), live_statefulset(),
                                ["spec.serviceName"]),
    "statefulset serviceName dropped": ({**statefulset(), "spec": {k: v for k, v in statefulset()["spec"].items()
                                                                   if k != "serviceName"}},
                                        live_statefulset(), ["spec.serviceName"]),
    "statefulset podManagementPolicy": (statefulset(podManagementPolicy="Parallel"), live_statefulset(),
                                        ["spec.podManagementPolicy"]),
    "statefulset volumeClaimTemplates": (
        changed(statefulset(), "spec", "volumeClaimTemplates", [{"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}]),
        live_statefulset(), ["spec.volumeClaimTemplates"]),
    "job template": (
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
         "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "migrate:2"}], "restartPolicy": "Never"}}}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
         "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}}, "template": {
             "metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u", "job-name": "migrate"}},
             "spec": {"containers": [{"name": "m", "image": "migrate:1", "imagePullPolicy": "IfNotPresent"}],
                      "restartPolicy": "Never"}}}},
        ["spec.template"]),
    "service clusterIP to headless": (core("Service", spec={"clusterIP": "None", "ports": [{"port": 80}]}),
                                      core("Service", spec={"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
                                      ["spec.clusterIP"]),
    "immutable configmap data": (core("ConfigMap", immutable=True, data={"a": "2"}),
                                 core("ConfigMap", immutable=True, data={"a": "1"}), ["data"]),
    "immutable configmap made mutable": (core("ConfigMap", data={"a": "1"}),
                                         core("ConfigMap", immutable=True, data={"a": "1"}), ["immutable"]),
    "immutable secret stringData": (secret(immutable=True, stringData={"password": "new"}),
                                    secret(immutable=True, type="Opaque", data={"password": b64("old")}), ["data"]),
    "secret type": (secret(type="kubernetes.io/basic-auth", stringData={"username": "a", "password": "b"}),
                    secret(type="Opaque", data={"username": b64("a"), "password": b64("b")}), ["type"]),
    "pvc storageClassName": (core("PersistentVolumeClaim", spec={"storageClassName": "fast"}),
                             core("PersistentVolumeClaim", spec={"storageClassName": "standard"}),
                             ["spec.storageClassName"]),
}


@pytest.mark.parametrize("case", list(IMMUTABLE_CASES))
def test_immutable_changes_name_the_field(case):
    target, live, expected = IMMUTABLE_CASES[case]
    assert fields(target, live) == expected


MUTABLE_CASES = {
    "deployment image and replicas": (changed(changed(deployment(), "spec", "replicas", 3), "spec", "template", "spec",
                                              "containers", [{"name": "web", "image": "nginx:1.28"}]),
                                      live_deployment()),
    "deployment selector left to the server": ({**deployment(), "spec": {"template": deployment()["spec"]["template"]}},
                                               live_deployment()),
    "statefulset as the server keeps it": (statefulset(), live_statefulset()),
    "statefulset template and replicas": (changed(statefulset(replicas=3), "spec", "template", "spec", "containers",
                                                  [{"name": "db", "image": "mariadb:12"}]), live_statefulset()),
    "statefulset storage in another unit": (
        changed(statefulset(), "spec", "volumeClaimTemplates", [{"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1024Mi"}}}}]), live_statefulset()),
    "job unchanged, server labels in live": (
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
         "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "migrate:1"}], "restartPolicy": "Never"}}}},
        IMMUTABLE_CASES["job template"][1]),
    "service without clusterIP": (core("Service", spec={"ports": [{"port": 80}]}),
                                  core("Service", spec={"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})),
    "service to ExternalName": (core("Service", spec={"type": "ExternalName", "externalName": "db.example",
                                                      "clusterIP": ""}),
                                core("Service", spec={"clusterIP": "10.96.0.10"})),
    "mutable configmap data": (core("ConfigMap", data={"a": "2"}), core("ConfigMap", data={"a": "1"})),
    "immutable configmap unchanged": (core("ConfigMap", immutable=True, data={"a": "1"}),
                                      core("ConfigMap", immutable=True, data={"a": "1"})),
    "immutable secret unchanged": (secret(immutable=True, stringData={"password": "old"}),
                                   secret(immutable=True, type="Opaque", data={"password": b64("old")})),
    "secret type left to the default": (secret(stringData={"a": "b"}), secret(type="Opaque", data={"a": b64("b")})),
    "pvc class left to the default": (core("PersistentVolumeClaim", spec={"accessModes": ["ReadWriteOnce"]}),
                                      core("PersistentVolumeClaim", spec={"storageClassName": "standard",
                                                                          "accessModes": ["ReadWriteOnce"]})),
    "new object": (changed(deployment(), "spec", "selector", {"matchLabels": {"v": "2"}}), None),
}


@pytest.mark.parametrize("case", list(MUTABLE_CASES))
def test_changes_the_api_server_allows_are_not_immutable(case):
    target, live = MUTABLE_CASES[case]
    assert fields(target, live) == []


def test_refusal_names_the_field_why_and_the_fix():
    (change,) = traps.immutable_changes(*IMMUTABLE_CASES["deployment selector"][:2])
    message = traps.refusal("Deployment", (change,))
    assert message.startswith("spec.selector is immutable: it is how the Deployment finds its ReplicaSets")
    assert "argocd.argoproj.io/sync-options: Replace=true (or Force=true)" in message
    assert "syncPolicy.syncOptions" in message
    assert "Orphan" not in message


def test_refusal_of_a_statefulset_groups_fields_and_says_its_pods_and_claims_stay():
    target = statefulset(podManagementPolicy="Parallel", serviceName="other")
    message = traps.refusal("StatefulSet", traps.immutable_changes(target, live_statefulset()))
    assert message.startswith("spec.serviceName and spec.podManagementPolicy are immutable: the API server lets")
    assert message.count("immutable:") == 1
    assert "propagationPolicy Orphan, so its Pods and PersistentVolumeClaims stay" in message


def test_refusal_of_a_secret_never_shows_its_values():
    target, live, _ = IMMUTABLE_CASES["immutable secret stringData"]
    message = traps.refusal("Secret", traps.immutable_changes(target, live))
    assert "new" not in message.split("immutable")[0] and b64("old") not in message and "password" not in message


# The API server's own words (Kubernetes 1.36), values shortened.
SERVER_ERRORS = {
    'Deployment.apps "sel" is invalid: spec.selector: Invalid value: {"matchLabels":{"app":"sel"}}: field is immutable':
        ("spec.selector", "field is immutable"),
    'Job.batch "j" is invalid: spec.template: Invalid value: {"labels":{"x":"y"},"Spec":{"Containers":[]}}: '
    'field is immutable': ("spec.template", "field is immutable"),
    'Service "hl" is invalid: spec.clusterIPs[0]: Invalid value: ["10.96.0.77"]: may not change once set':
        ("spec.clusterIPs", "may not change once set"),
    'ConfigMap "frozen" is invalid: data: Forbidden: field is immutable when `immutable` is set':
        ("data", "field is immutable when `immutable` is set"),
    'Secret "s" is invalid: [type: Invalid value: "kubernetes.io/basic-auth": field is immutable, data[username]: '
    'Required value]': ("type", "field is immutable"),
    'PersistentVolumeClaim "p" is invalid: spec: Forbidden: spec is immutable after creation except '
    'resources.requests and volumeAttributesClassName for bound claims':
        ("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for "
                 "bound claims"),
    'StatefulSet.apps "db" is invalid: spec: Forbidden: updates to statefulset spec for fields other than '
    "'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', "
    "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden": ("spec", "updates to statefulset"),
}


@pytest.mark.parametrize("message", list(SERVER_ERRORS))
def test_the_api_servers_immutable_errors_are_recognised_without_their_values(message):
    field, reason = SERVER_ERRORS[message]
    change = traps.immutable_from_error(422, message)
    assert change is not None and change.field == field and reason in change.why
    assert "Invalid value" not in change.why and "10.96" not in change.why


@pytest.mark.parametrize("status, message", [
    (422, 'Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value: {"app":"other"}: '
          '`selector` does not match template `labels`'),
    (409, "field is immutable"),
    (422, ""),
])
def test_other_errors_are_not_immutable(status, message):
    assert traps.immutable_from_error(status, message) is None


def test_recreate_orphans_only_a_statefulsets_pods():
    assert traps.recreate_propagation("StatefulSet") == "Orphan"
    assert {traps.recreate_propagation(k) for k in ("Deployment", "Job", "Service", "ConfigMap")} == {"Background"}
    assert "Pods and PersistentVolumeClaims kept" in traps.recreated_message("StatefulSet", ("spec.serviceName",))


# ------------------------------------------------------------------ conflicts


CONFLICT = ('Apply failed with 3 conflicts: conflicts with "kubectl" with subresource "scale" using apps/v1:\n'
            '- .spec.replicas\nconflicts with "kubectl-edit" using apps/v1:\n- .spec.minReadySeconds\n'
            '- .spec.template.spec.containers[name="web"].image')


def test_a_conflict_report_says_which_manager_owned_which_field():
    assert traps.conflicts_from_error(409, CONFLICT) == (
        Takeover("kubectl", (".spec.replicas",), "scale"),
        Takeover("kubectl-edit", (".spec.minReadySeconds", '.spec.template.spec.containers[name="web"].image')),
    )
    message = traps.takeover_message(traps.conflicts_from_error(409, CONFLICT))
    assert message.startswith("took over .spec.replicas from kubectl (scale subresource); .spec.minReadySeconds, "
                              '.spec.template.spec.containers[name="web"].image from kubectl-edit')
    assert "ignoreDifferences" in message and "RespectIgnoreDifferences=true" in message


def test_a_single_conflict_on_one_line():
    message = 'Apply failed with 1 conflict: conflict with "hpa-controller" using autoscaling/v2: .spec.replicas'
    assert traps.conflicts_from_error(409, message) == (Takeover("hpa-controller", (".spec.replicas",)),)


def test_many_fields_are_shortened():
    message = traps.takeover_message((Takeover("m", tuple(f".f{i}" for i in range(8))),), most=3)
    assert ".f0, .f1, .f2 and 5 more from m" in message


@pytest.mark.parametrize("status, message", [
    (409, 'Operation cannot be fulfilled on deployments.apps "web": the object has been modified'),
    (422, CONFLICT),
])
def test_other_errors_are_not_conflicts(status, message):
    assert traps.conflicts_from_error(status, message) == ()


# ------------------------------------------------------------------ namespaces being deleted


def test_a_namespace_being_deleted_is_named_and_said_to_be_retried():
    message = ('configmaps "web-config" is forbidden: unable to create new content in namespace shop because it '
               'is being terminated')
    assert traps.terminating_namespace(403, message) == "shop"
    assert traps.terminating_namespace(422, message) is None
    assert traps.terminating_namespace(403, "forbidden: User cannot create") is None
    said = traps.terminating_message("shop")
    assert "namespace shop is being deleted" in said and "retries" in said

