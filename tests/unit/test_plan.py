"""controller/plan.py without a cluster: tables of rendered objects and what the planner makes of
them (phases, waves, kind order, hooks and their delete policies, stale objects, whether to sync,
where a running operation goes on). The same rules on the real control plane are in
tests/e2e/test_waves_hooks.py."""

from __future__ import annotations

import pytest

from controller import plan as planner
from controller.model import ObjectRef
from controller.plan import (DeletePolicy, Phase, PlanError, Situation, StepOutcome, SyncDecision, Task,
                             decide, delete_policies, hook_name_taken, hook_phases, next_step, plan, prune_after,
                             stale, wave_of)
from controller.sync import InventoryEntry

ARGO_WAVE = "argocd.argoproj.io/sync-wave"
GANTRY_WAVE = "gantry.dev/sync-wave"
HOOK = "argocd.argoproj.io/hook"
POLICY = "argocd.argoproj.io/hook-delete-policy"
HELM_HOOK = "helm.sh/hook"
HELM_WEIGHT = "helm.sh/hook-weight"
HELM_POLICY = "helm.sh/hook-delete-policy"

API_VERSIONS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1",
                "Ingress": "networking.k8s.io/v1", "CustomResourceDefinition": "apiextensions.k8s.io/v1",
                "Role": "rbac.authorization.k8s.io/v1", "Widget": "example.com/v1", "Gadget": "example.com/v1"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition"}


def obj(kind: str = "ConfigMap", name: str = "a", annotations: dict | None = None, *, namespace: str = "shop",
        generate_name: str | None = None) -> dict:
    """A rendered object; `generate_name` leaves its name to the API server."""
    metadata: dict = {"generateName": generate_name} if generate_name else {"name": name}
    if kind not in CLUSTER_SCOPED:
        metadata["namespace"] = namespace
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": API_VERSIONS.get(kind, "v1"), "kind": kind, "metadata": metadata}


def hook(kind: str = "Job", name: str = "migrate", phase: str = "PreSync", wave: int | None = None,
         **more: str) -> dict:
    annotations = {HOOK: phase, **({ARGO_WAVE: str(wave)} if wave is not None else {}), **more}
    return obj(kind, name, annotations)


def waved(kind: str, name: str, wave: int) -> dict:
    return obj(kind, name, {ARGO_WAVE: str(wave)})


def keys(p: planner.Plan) -> list[str]:
    return [s.key for s in p.steps]


def names(tasks) -> list[str]:
    return [f"{t.manifest['kind']}/{t.name}" for t in tasks]


# ------------------------------------------------------------------------------------------------
# Waves


@pytest.mark.parametrize("annotations, wave", [
    ({}, 0),
    ({ARGO_WAVE: "5"}, 5),
    ({ARGO_WAVE: "-3"}, -3),
    ({ARGO_WAVE: "+2"}, 2),
    ({ARGO_WAVE: " 4 "}, 4),
    ({GANTRY_WAVE: "2"}, 2),
    ({GANTRY_WAVE: "-10"}, -10),
    # Argo CD's annotation wins over Gantry's when both are set.
    ({ARGO_WAVE: "1", GANTRY_WAVE: "7"}, 1),
    # Helm's hook weight is a wave, as Argo CD reads it: on a hook and on any other object.
    ({HELM_HOOK: "pre-install", HELM_WEIGHT: "-5"}, -5),
    ({HELM_WEIGHT: "3"}, 3),
    ({ARGO_WAVE: "1", HELM_WEIGHT: "9"}, 1),
    ({GANTRY_WAVE: "2", HELM_WEIGHT: "9"}, 2),
], ids=lambda v: repr(v) if not isinstance(v, int) else str(v))
def test_wave_of(annotations, wave):
    assert wave_of(obj(annotations=annotations)) == wave


@pytest.mark.parametrize("annotation, text", [
    (ARGO_WAVE, "one"), (ARGO_WAVE, "1.5"), (ARGO_WAVE, ""), (ARGO_WAVE, "1_0"), (ARGO_WAVE, "\u0663"),
    (GANTRY_WAVE, "early"), (HELM_WEIGHT, "-x"),
])
def test_a_wave_that_is_not_an_integer_refuses_the_commit_naming_object_and_annotation(annotation, text):
    with pytest.raises(PlanError) as raised:
        wave_of(obj("Deployment", "web", {annotation: text}))
    assert raised.value.ref == ObjectRef("apps", "Deployment", "shop", "web")
    message = str(raised.value)
    assert message.startswith("Deployment.apps shop/web: ") and annotation in message and repr(text) in message


# ------------------------------------------------------------------------------------------------
# Which objects are hooks, and of which phases

PRE, SYNC, POST = Phase.PRE_SYNC, Phase.SYNC, Phase.POST_SYNC


@pytest.mark.parametrize("annotations, phases", [
    ({}, None),
    ({ARGO_WAVE: "1"}, None),
    ({HOOK: "PreSync"}, (PRE,)),
    ({HOOK: "Sync"}, (SYNC,)),
    ({HOOK: "PostSync"}, (POST,)),
    ({HOOK: "SyncFail"}, (Phase.SYNC_FAIL,)),
    ({HOOK: "PreDelete"}, (Phase.PRE_DELETE,)),
    ({HOOK: "PostDelete"}, (Phase.POST_DELETE,)),
    ({HOOK: "PreSync,PostSync"}, (PRE, POST)),
    ({HOOK: " PreSync , PostSync "}, (PRE, POST)),
    ({HOOK: "PostSync,PreSync,PostSync"}, (POST, PRE)),  # each phase once, in the order written
    ({HOOK: "PreSync,"}, (PRE,)),  # a trailing comma is no hook of its own
    ({HOOK: "Skip"}, ()),
    ({HOOK: " Skip "}, ()),
    ({HOOK: "Skip,PreSync"}, (PRE,)),  # Argo CD skips only a lone Skip
    ({HOOK: ""}, ()),  # a hook of no phase: never run, as in Argo CD
    # Helm's hooks, mapped as Argo CD maps them.
    ({HELM_HOOK: "pre-install"}, (PRE,)),
    ({HELM_HOOK: "pre-upgrade"}, (PRE,)),
    ({HELM_HOOK: "pre-install,pre-upgrade"}, (PRE,)),
    ({HELM_HOOK: "post-install"}, (POST,)),
    ({HELM_HOOK: "post-upgrade"}, (POST,)),
    ({HELM_HOOK: "pre-install, post-upgrade"}, (PRE, POST)),
    ({HELM_HOOK: "pre-delete"}, (Phase.PRE_DELETE,)),
    ({HELM_HOOK: "post-delete"}, (Phase.POST_DELETE,)),
    ({HELM_HOOK: "test"}, ()),  # no sync phase: not applied
    ({HELM_HOOK: "test-success"}, ()),
    ({HELM_HOOK: "pre-rollback,post-rollback"}, ()),
    ({HELM_HOOK: "test,post-install"}, (POST,)),
    ({HELM_HOOK: "crd-install"}, None),  # Helm 2's CRDs: ordinary resources
    ({HELM_HOOK: "crd-install,pre-install"}, (PRE,)),
    # With Argo CD's annotation, Helm's is ignored.
    ({HOOK: "Sync", HELM_HOOK: "pre-install"}, (SYNC,)),
    ({HOOK: "Skip", HELM_HOOK: "post-install"}, ()),
], ids=repr)
def test_hook_phases(annotations, phases):
    assert hook_phases(obj("Job", annotations=annotations)) == phases


@pytest.mark.parametrize("text, word", [
    ("presync", "presync"), ("PreSynk", "PreSynk"), ("PreSync,Bogus", "Bogus"), ("pre-install", "pre-install"),
])
def test_an_unknown_hook_refuses_the_commit_naming_object_annotation_and_the_choices(text, word):
    with pytest.raises(PlanError) as raised:
        plan([obj("Job", "migrate", {HOOK: text})])
    message = str(raised.value)
    assert message.startswith("Job.batch shop/migrate: "), message
    assert HOOK in message and repr(word) in message
    assert all(choice in message for choice in ("PreSync", "Sync", "PostSync", "SyncFail", "Skip")), message


def test_a_plan_error_of_a_generate_name_hook_names_its_prefix():
    with pytest.raises(PlanError) as raised:
        plan([obj("Job", annotations={HOOK: "Later"}, generate_name="migrate-")])
    assert raised.value.ref.name == "migrate-" and "Job.batch shop/migrate-:" in str(raised.value)


# ------------------------------------------------------------------------------------------------
# Delete policies

BHC, HS, HF = DeletePolicy.BEFORE_HOOK_CREATION, DeletePolicy.HOOK_SUCCEEDED, DeletePolicy.HOOK_FAILED


@pytest.mark.parametrize("annotations, policies", [
    ({}, {BHC}),
    ({POLICY: ""}, {BHC}),
    ({POLICY: "HookSucceeded"}, {HS}),
    ({POLICY: "HookFailed"}, {HF}),
    ({POLICY: "BeforeHookCreation"}, {BHC}),
    ({POLICY: "HookSucceeded,HookFailed"}, {HS, HF}),
    ({POLICY: " BeforeHookCreation , HookSucceeded "}, {BHC, HS}),
    ({HELM_POLICY: "hook-succeeded"}, {HS}),
    ({HELM_POLICY: "hook-failed"}, {HF}),
    ({HELM_POLICY: "before-hook-creation,hook-succeeded"}, {BHC, HS}),
    ({HELM_POLICY: "hook-succeeded, hook-failed"}, {HS, HF}),
    ({HELM_POLICY: "hook-succeeded,whenever"}, {HS}),  # Helm's unknown words are ignored, as Argo CD does
    ({HELM_POLICY: "whenever"}, {BHC}),
    # Both annotations count together (Argo CD adds Helm's to its own).
    ({POLICY: "HookFailed", HELM_POLICY: "hook-succeeded"}, {HF, HS}),
], ids=repr)
def test_delete_policies(annotations, policies):
    assert delete_policies(obj("Job", annotations={HOOK: "PreSync", **annotations})) == frozenset(policies)


@pytest.mark.parametrize("text", ["Never", "hooksucceeded", "HookSucceeded,Always"])
def test_an_unknown_delete_policy_refuses_the_commit(text):
    with pytest.raises(PlanError) as raised:
        plan([hook(**{POLICY: text})])
    message = str(raised.value)
    assert message.startswith("Job.batch shop/migrate: ") and POLICY in message
    assert "BeforeHookCreation" in message and "HookSucceeded" in message and "HookFailed" in message


def test_a_hook_task_carries_its_delete_policies_and_a_resource_none():
    p = plan([hook(**{POLICY: "HookSucceeded"}), obj("ConfigMap", "settings")])
    [pre, sync] = p.steps
    assert pre.tasks[0].hook and pre.tasks[0].delete_policies == {HS}
    assert not sync.tasks[0].hook and sync.tasks[0].delete_policies == frozenset()


# ------------------------------------------------------------------------------------------------
# Steps: phase, then wave, then kind


@pytest.mark.parametrize("objects, expected", [
    ([], []),
    ([obj()], ["Sync/0"]),
    ([waved("ConfigMap", "b", 3), waved("ConfigMap", "a", -2), obj("ConfigMap", "c")], ["Sync/-2", "Sync/0", "Sync/3"]),
    ([hook(phase="PostSync"), obj(), hook(name="m", phase="PreSync")], ["PreSync/0", "Sync/0", "PostSync/0"]),
    # A phase's waves never mix with another's: PreSync wave 5 still goes before Sync wave -5.
    ([waved("ConfigMap", "a", -5), hook(wave=5)], ["PreSync/5", "Sync/-5"]),
    ([hook(name="late", wave=1), hook(name="early", wave=-1), obj(), hook(name="after", phase="PostSync", wave=2)],
     ["PreSync/-1", "PreSync/1", "Sync/0", "PostSync/2"]),
    # A Sync hook shares its wave's step with the resources of that wave.
    ([hook(phase="Sync", wave=1), waved("Deployment", "web", 1), obj()], ["Sync/0", "Sync/1"]),
    # Only hooks: no Sync step at all.
    ([hook(), hook(name="check", phase="PostSync")], ["PreSync/0", "PostSync/0"]),
], ids=["empty", "one", "waves", "phases", "phase-before-wave", "hook-waves", "sync-hook", "only-hooks"])
def test_steps_go_by_phase_then_wave(objects, expected):
    assert keys(plan(objects)) == expected


@pytest.mark.parametrize("given, expected", [
    # Argo CD's kind order (gitops-engine's sync_tasks.go): what others use before what uses it.
    (["Ingress", "Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount"],
     ["ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment", "Ingress"]),
    (["Job", "StatefulSet", "PersistentVolumeClaim", "Role", "CronJob"],
     ["PersistentVolumeClaim", "Role", "StatefulSet", "Job", "CronJob"]),
    # Kinds it does not know (custom resources) go last, by kind.
    (["Widget", "Gadget", "Deployment", "Ingress"], ["Deployment", "Ingress", "Gadget", "Widget"]),
], ids=["web-app", "workloads", "custom-last"])
def test_within_a_wave_objects_go_by_kind(given, expected):
    [step] = plan([obj(kind, kind.lower()) for kind in given]).steps
    assert [t.manifest["kind"] for t in step.tasks] == expected


def test_within_a_kind_objects_go_by_namespace_then_name():
    [step] = plan([obj(name="b", namespace="x"), obj(name="a", namespace="y"), obj(name="a", namespace="x")]).steps
    assert [(t.ref.namespace, t.ref.name) for t in step.tasks] == [("x", "a"), ("x", "b"), ("y", "a")]


def test_hooks_and_resources_of_one_sync_wave_interleave_by_kind():
    [step] = plan([obj("Deployment", "web"), hook(phase="Sync"), obj("ConfigMap", "settings")]).steps
    assert names(step.tasks) == ["ConfigMap/settings", "Deployment/web", "Job/migrate"]
    assert names(step.hooks) == ["Job/migrate"]
    assert [m["metadata"]["name"] for m in step.resources] == ["settings", "web"]


@pytest.mark.parametrize("objects, first, later", [
    # Namespaces and CRDs of later waves join the first Sync step (the dry run needs them).
    ([waved("Namespace", "shop", 5), waved("CustomResourceDefinition", "widgets.example.com", 3),
      waved("ConfigMap", "settings", -1), waved("Deployment", "web", 5)],
     ["Namespace/shop", "ConfigMap/settings", "CustomResourceDefinition/widgets.example.com"],
     {"Sync/5": ["Deployment/web"]}),
    # ... even when the first Sync step comes after PreSync hooks.
    ([hook(), waved("Namespace", "shop", 2), waved("Deployment", "web", 2), obj("ConfigMap", "settings")],
     ["Namespace/shop", "ConfigMap/settings"], {"Sync/2": ["Deployment/web"]}),
], ids=["later-waves", "after-presync"])
def test_namespaces_and_crds_join_the_first_sync_step_in_kind_order(objects, first, later):
    sync = [s for s in plan(objects).steps if s.phase is SYNC]
    assert names(sync[0].tasks) == first
    assert {s.key: names(s.tasks) for s in sync[1:]} == later


def test_a_step_left_empty_by_moving_namespaces_is_dropped():
    p = plan([waved("ConfigMap", "settings", 0), waved("Namespace", "shop", 4)])
    assert keys(p) == ["Sync/0"] and names(p.steps[0].tasks) == ["Namespace/shop", "ConfigMap/settings"]
    assert not p.staged


def test_a_namespace_hook_is_not_moved_and_a_lone_sync_step_is_left_alone():
    p = plan([obj("Namespace", "scratch", {HOOK: "PreSync", ARGO_WAVE: "3"}), waved("Namespace", "shop", 2)])
    assert keys(p) == ["PreSync/3", "Sync/2"]


def test_a_hook_of_two_phases_runs_in_both():
    p = plan([hook(phase="PreSync,PostSync"), obj()])
    assert keys(p) == ["PreSync/0", "Sync/0", "PostSync/0"]
    assert p.steps[0].hooks[0].manifest is p.steps[2].hooks[0].manifest
    assert [t.phase for t in p.hooks] == [PRE, POST]


# ------------------------------------------------------------------------------------------------
# What the plan holds besides its steps


def test_desired_state_is_every_resource_in_render_order_and_no_hook():
    objects = [obj("Deployment", "web"), hook(), obj("ConfigMap", "settings"), obj("Job", "skip", {HOOK: "Skip"}),
               hook(name="cleanup", phase="SyncFail")]
    p = plan(objects)
    assert list(p.resources) == [objects[0], objects[2]]
    assert p.skipped == (ObjectRef("batch", "Job", "shop", "skip"),)


def test_syncfail_and_predelete_hooks_wait_apart_from_the_steps_and_postdelete_ones_are_skipped():
    p = plan([hook(name="b-alert", phase="SyncFail"), hook(name="a-alert", phase="SyncFail", wave=-1),
              hook(name="drain", phase="PreDelete"), hook(name="goodbye", phase="PostDelete"),
              obj("Job", "chart-test", {HELM_HOOK: "post-delete"}), obj()])
    assert keys(p) == ["Sync/0"]
    assert names(p.sync_fail) == ["Job/a-alert", "Job/b-alert"]  # by wave, then name
    assert all(t.phase is Phase.SYNC_FAIL and t.hook for t in p.sync_fail)
    assert names(p.pre_delete) == ["Job/drain"]
    assert {r.name for r in p.skipped} == {"goodbye", "chart-test"}
    assert names(p.hooks) == ["Job/a-alert", "Job/b-alert", "Job/drain"]


def test_a_hook_of_a_sync_phase_and_postdelete_runs_only_in_the_sync_phase():
    p = plan([hook(phase="PreSync,PostDelete")])
    assert keys(p) == ["PreSync/0"] and not p.skipped


def test_task_name_is_the_name_or_the_generate_name_prefix():
    named = Task(obj("Job", "migrate"), PRE, 0, hook=True)
    generated = Task(obj("Job", generate_name="migrate-"), PRE, 0, hook=True)
    assert (named.name, generated.name) == ("migrate", "migrate-")
    assert named.ref == ObjectRef("batch", "Job", "shop", "migrate")


@pytest.mark.parametrize("objects, staged", [
    ([], False),
    ([obj()], False),
    ([obj(name="a"), obj(name="b"), obj("Deployment", "web")], False),
    ([obj(), waved("Deployment", "web", 1)], True),
    ([waved("ConfigMap", "a", -1)], False),  # one step, whatever its wave
    ([hook(), obj()], True),
    ([hook(phase="Sync")], True),  # a hook must be waited for, even alone
    ([obj(), hook(phase="SyncFail")], False),  # runs only if the sync fails
    ([obj(), hook(phase="PreDelete")], False),
    ([obj(), obj("Job", "t", {HOOK: "Skip"})], False),
    ([obj(), waved("Namespace", "shop", 1)], False),  # the Namespace joins wave 0: one step
], ids=["empty", "one", "one-wave", "two-waves", "negative", "presync", "sync-hook", "syncfail", "predelete",
        "skip", "namespace-joins"])
def test_staged_when_a_sync_may_span_passes(objects, staged):
    assert plan(objects).staged is staged


@pytest.mark.parametrize("objects, descriptions", [
    ([obj()], ["wave 0"]),
    ([waved("ConfigMap", "a", 4)], ["wave 4"]),
    ([waved("ConfigMap", "a", -1), obj("ConfigMap", "b"), waved("ConfigMap", "c", 2)],
     ["wave 1 of 3", "wave 2 of 3", "wave 3 of 3"]),
    ([hook(), obj()], ["PreSync wave 0", "wave 0"]),
    ([hook(wave=-1), hook(name="b", wave=1), obj(), waved("Deployment", "web", 1), hook(phase="PostSync", wave=4)],
     ["PreSync wave 1 of 2", "PreSync wave 2 of 2", "wave 1 of 2", "wave 2 of 2", "PostSync wave 4"]),
], ids=["one", "one-numbered", "three", "presync", "all-phases"])
def test_describe_names_the_step_for_the_running_message(objects, descriptions):
    p = plan(objects)
    assert [p.describe(i) for i in range(len(p.steps))] == descriptions


def test_step_index_finds_a_step_by_its_key():
    p = plan([hook(), obj(), waved("Deployment", "web", 2)])
    assert [p.step_index(k) for k in ("PreSync/0", "Sync/0", "Sync/2", "Sync/1", None)] == [0, 1, 2, None, None]


# ------------------------------------------------------------------------------------------------
# Stale objects


def entry(api_version: str, kind: str, name: str, namespace: str = "shop") -> InventoryEntry:
    return InventoryEntry(api_version, kind, namespace, name)


@pytest.mark.parametrize("previous, targets, expected", [
    ([], [obj()], []),
    ([entry("v1", "ConfigMap", "a")], [obj()], []),
    ([entry("v1", "ConfigMap", "a"), entry("v1", "ConfigMap", "gone")], [obj()], [entry("v1", "ConfigMap", "gone")]),
    # The same object at another version of its API is not stale (it would be pruned right after its apply).
    ([entry("autoscaling/v1", "HorizontalPodAutoscaler", "web")],
     [{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "shop"}}],
     []),
    # Another namespace, kind or group is another object.
    ([entry("v1", "ConfigMap", "a", namespace="old")], [obj()], [entry("v1", "ConfigMap", "a", namespace="old")]),
    ([entry("v1", "Secret", "a")], [obj()], [entry("v1", "Secret", "a")]),
    ([entry("example.org/v1", "ConfigMap", "a")], [obj()], [entry("example.org/v1", "ConfigMap", "a")]),
    # Sorted by kind, namespace, name, whatever the inventory's order.
    ([entry("v1", "Secret", "b"), entry("v1", "ConfigMap", "z", "b"), entry("v1", "ConfigMap", "y", "a")], [],
     [entry("v1", "ConfigMap", "y", "a"), entry("v1", "ConfigMap", "z", "b"), entry("v1", "Secret", "b")]),
], ids=["none", "kept", "one-gone", "api-version", "namespace", "kind", "group", "sorted"])
def test_stale(previous, targets, expected):
    assert stale(previous, targets) == expected


# ------------------------------------------------------------------------------------------------
# Whether to sync

COMMIT, OLDER = "c" * 40, "b" * 40


def succeeded(revision: str) -> dict:
    return {"phase": "Succeeded", "operation": {"sync": {"revision": revision}}, "syncResult": {"revision": revision}}


def failed(revision: str) -> dict:
    return {"phase": "Failed", "operation": {"sync": {"revision": revision}}, "syncResult": {"revision": revision}}


def situation(**given) -> Situation:
    values = dict(automated=True, self_heal=False, requested=False, commit=COMMIT, attempt=0, refreshed=False,
                  generation_changed=False, operation_state={})
    return Situation(**{**values, **given})


@pytest.mark.parametrize("given, decision", [
    # Not automated: only when asked.
    (dict(automated=False), SyncDecision(False)),
    (dict(automated=False, requested=True), SyncDecision(True)),
    (dict(automated=False, operation_state=failed(COMMIT)), SyncDecision(False)),
    # Automated: a new commit (or never synced), a new spec; drift only with selfHeal.
    (dict(), SyncDecision(True)),
    (dict(operation_state=succeeded(OLDER)), SyncDecision(True)),
    (dict(operation_state=succeeded(COMMIT)), SyncDecision(False)),
    (dict(operation_state=succeeded(COMMIT), self_heal=True), SyncDecision(True)),
    (dict(operation_state=succeeded(COMMIT), generation_changed=True), SyncDecision(True)),
    (dict(operation_state=succeeded(COMMIT), refreshed=True), SyncDecision(False)),  # a refresh is no new commit
    # A revision whose sync failed: retried while attempts are counted, then not until something changes.
    (dict(operation_state=failed(COMMIT), attempt=2), SyncDecision(True)),
    (dict(operation_state=failed(COMMIT)), SyncDecision(False, failed_before=True)),
    (dict(operation_state=failed(COMMIT), self_heal=True), SyncDecision(False, failed_before=True)),
    (dict(operation_state=failed(COMMIT), refreshed=True), SyncDecision(True)),
    (dict(operation_state=failed(COMMIT), generation_changed=True), SyncDecision(True)),
    (dict(operation_state=failed(OLDER)), SyncDecision(True)),  # a new commit after a failed one
    # A requested sync goes whatever failed before.
    (dict(operation_state=failed(COMMIT), requested=True), SyncDecision(True)),
    # An operation still running goes on, asked or not, automated or not.
    (dict(operation_state={"phase": "Running", "step": "Sync/0"}), SyncDecision(True, resume=True)),
    (dict(operation_state={"phase": "Terminating"}), SyncDecision(True, resume=True)),
    (dict(automated=False, operation_state={"phase": "Running"}), SyncDecision(True, resume=True)),
    (dict(requested=True, operation_state={"phase": "Running"}), SyncDecision(True, resume=True)),
    (dict(operation_state=None), SyncDecision(True)),
], ids=["manual", "manual-requested", "manual-failed", "auto-first", "auto-new-commit", "auto-same-commit",
        "auto-selfheal", "auto-new-spec", "auto-refresh-same", "failed-retrying", "failed-spent",
        "failed-spent-selfheal", "failed-refreshed", "failed-new-spec", "failed-older", "failed-requested",
        "running", "terminating", "running-manual", "running-requested", "no-state"])
def test_decide(given, decision):
    assert decide(situation(**given)) == decision


def test_running_is_running_or_terminating():
    assert [planner.running(s) for s in ({"phase": "Running"}, {"phase": "Terminating"}, {"phase": "Failed"},
                                         {"phase": "Succeeded"}, {}, None)] == [True, True, False, False, False, False]


# ------------------------------------------------------------------------------------------------
# Where a running operation goes on

STAGED = [hook(), obj(), waved("Deployment", "web", 1), hook(name="check", phase="PostSync")]


@pytest.mark.parametrize("applied, index", [
    (None, 0), ("PreSync/0", 1), ("Sync/0", 2), ("Sync/1", 3), ("PostSync/0", 4),
    ("Sync/7", 0),  # a key the plan no longer has: start over
])
def test_next_step(applied, index):
    assert next_step(plan(STAGED), applied) == index


@pytest.mark.parametrize("objects, index", [
    (STAGED, 2),  # the last Sync step, before PostSync
    ([obj()], 0),
    ([waved("ConfigMap", "a", -1), obj("ConfigMap", "b"), waved("ConfigMap", "c", 3)], 2),
    ([hook(), obj()], 1),
    ([hook(), hook(name="check", phase="PostSync")], 0),  # no Sync step: before PostSync all the same
    ([hook(phase="PostSync")], 0),
    ([], -1),
], ids=["staged", "one", "waves", "presync", "hooks-only", "postsync-only", "empty"])
def test_prune_after(objects, index):
    assert prune_after(plan(objects)) == index


def test_step_outcome_is_done_only_when_said_and_carries_what_it_waits_for():
    assert StepOutcome(True) == StepOutcome(done=True, failed="", waiting="")
    waiting = StepOutcome(False, waiting="Deployment backend (1/2 ready)")
    assert not waiting.done and not waiting.failed and "backend" in waiting.waiting
    with pytest.raises(AttributeError):
        waiting.done = True  # type: ignore[misc]  # frozen: a pass's verdict, not something to patch


# ------------------------------------------------------------------------------------------------
# Earlier instances of a hook, for BeforeHookCreation


def generated(prefix: str) -> Task:
    return Task(obj("Job", generate_name=prefix), PRE, 0, hook=True)


@pytest.mark.parametrize("task, existing, taken", [
    (Task(obj("Job", "migrate"), PRE, 0, hook=True), ["migrate", "migrate-x7k2p", "other"], ["migrate"]),
    (Task(obj("Job", "migrate"), PRE, 0, hook=True), ["other"], []),
    (generated("migrate-"), ["migrate-x7k2p", "migrate-bc4d9", "migrate", "other-x7k2p"],
     ["migrate-x7k2p", "migrate-bc4d9"]),
    # Not made from the prefix: a suffix of another length, or with letters the API server never uses.
    (generated("migrate-"), ["migrate-x7k2", "migrate-x7k2pq", "migrate-users", "migrate-aeiou"], []),
    (generated("migrate-"), ["migrate-db-x7k2p"], []),
    (generated(""), ["x7k2p"], []),
    # The API server cuts a prefix to 58 characters before adding 5.
    (generated("m" * 70), ["m" * 58 + "x7k2p", "m" * 70 + "x7k2p"], ["m" * 58 + "x7k2p"]),
], ids=["named", "named-absent", "generated", "not-generated", "longer-prefix", "no-prefix", "long-prefix"])
def test_hook_name_taken(task, existing, taken):
    assert hook_name_taken(task, existing) == taken


# -- deleting an Application: its PreDelete hooks first ------------------------------------------

RECORDED = {"revision": "c0ffee", "hooks": ["Job/cleanup"]}
ROLLED_BACK = {"revision": "beef", "hooks": ["Job/cleanup"], "source": {"path": "old"}}


def hook_entry(phase: str, *, name: str = "cleanup", message: str = "", action: str = "created",
               policies: tuple[str, ...] = ("BeforeHookCreation",)) -> dict:
    """A PreDelete hook's result entry as operation.create_hook writes it, its hookPhase read now."""
    return {"group": "batch", "version": "v1", "kind": "Job", "namespace": "shop", "name": name,
            "hookType": "PreDelete", "hookPhase": phase, "message": message, "deletePolicies": list(policies),
            **({"action": action} if action else {})}


def deletion(phase: str, *hooks: dict, revision: str | None = "c0ffee", **extra) -> dict:
    return {"phase": phase, "revision": revision, "hooks": list(hooks), **extra}


D = planner.DeletionAction


@pytest.mark.parametrize("recorded, state, refreshed, gone, expected", [
    # No PreDelete hooks in the revision last synced: deleted at once, as before hooks existed.
    (None, None, False, (), planner.DeletionStep(D.DELETE)),
    (None, None, True, (), planner.DeletionStep(D.DELETE)),
    # The first pass renders the recorded revision (and the source it was synced from).
    (RECORDED, None, False, (), planner.DeletionStep(D.RUN, "c0ffee")),
    (ROLLED_BACK, None, True, (), planner.DeletionStep(D.RUN, "beef", {"path": "old"})),
    # Hooks running: wait, whatever else happens meanwhile.
    (RECORDED, deletion("Running", hook_entry("Running", message="1 active, 0 failed")), False, (),
     planner.DeletionStep(D.WAIT, message="deleting: waiting for PreDelete hook Job/cleanup (1 active, 0 failed)")),
    (RECORDED, deletion("Running", hook_entry("Succeeded", name="a"), hook_entry("Running", name="b")), True, (),
     planner.DeletionStep(D.WAIT, message="deleting: waiting for PreDelete hook Job/b (running)")),
    # All completed (or the revision rendered has none any more): the resources go.
    (RECORDED, deletion("Running", hook_entry("Succeeded", name="a"), hook_entry("Succeeded", name="b")), False, (),
     planner.DeletionStep(D.DELETE)),
    (RECORDED, deletion("Running"), False, (), planner.DeletionStep(D.DELETE)),
    (RECORDED, deletion("Succeeded", hook_entry("Succeeded")), False, (), planner.DeletionStep(D.DELETE)),
    # A failed hook blocks the deletion and says which and why…
    (RECORDED, deletion("Running", hook_entry("Failed", message="BackoffLimitExceeded")), False, (),
     planner.DeletionStep(D.BLOCKED, message="PreDelete hook Job/cleanup failed: BackoffLimitExceeded")),
    (RECORDED, deletion("Failed", hook_entry("Failed", name="a", message="x"), hook_entry("Failed", name="b")), False,
     (), planner.DeletionStep(D.BLOCKED, message="PreDelete hook Job/a failed: x; PreDelete hook Job/b failed: no message")),
    # … until someone deletes it: it runs again, from the same revision …
    (RECORDED, deletion("Failed", hook_entry("Failed"), revision="feed", source={"path": "old"}), False,
     ("Job/cleanup",), planner.DeletionStep(D.RUN, "feed", {"path": "old"})),
    # … (unless its own HookFailed policy deleted it, or it was never created) …
    (RECORDED, deletion("Failed", hook_entry("Failed", policies=("HookFailed",))), False, ("Job/cleanup",),
     planner.DeletionStep(D.BLOCKED, message="PreDelete hook Job/cleanup failed: no message")),
    (RECORDED, deletion("Failed", hook_entry("Failed", action="", message="forbidden")), False, ("Job/cleanup",),
     planner.DeletionStep(D.BLOCKED, message="PreDelete hook Job/cleanup failed: forbidden")),
    # … or the app is refreshed: git is read again at spec.targetRevision.
    (RECORDED, deletion("Failed", hook_entry("Failed")), True, (), planner.DeletionStep(D.RUN, refresh=True)),
    (RECORDED, deletion("Failed", hook_entry("Failed", policies=("HookFailed",))), True, (),
     planner.DeletionStep(D.RUN, refresh=True)),
    # Git or the render failed: tried again at every pass, at git as it is now after a refresh.
    (RECORDED, deletion("Failed", message="cannot run …"), False, (), planner.DeletionStep(D.RUN, "c0ffee")),
    (RECORDED, deletion("Failed", revision=None, source={"path": "old"}), False, (),
     planner.DeletionStep(D.RUN, None, {"path": "old"})),
    (RECORDED, deletion("Failed"), True, (), planner.DeletionStep(D.RUN, refresh=True)),
    # Once a deletion runs, what a later sync could record does not matter (none runs any more).
    (None, deletion("Running", hook_entry("Running")), False, (),
     planner.DeletionStep(D.WAIT, message="deleting: waiting for PreDelete hook Job/cleanup (running)")),
])
def test_deletion_step(recorded, state, refreshed, gone, expected):
    assert planner.deletion_step(recorded, state, refreshed=refreshed, gone=gone) == expected


def test_predelete_hooks_are_planned_apart_from_the_sync():
    planned = plan([obj("Job", "cleanup", {HOOK: "PreDelete", POLICY: "HookSucceeded"}), obj("ConfigMap", "a")])
    assert [t.name for t in planned.pre_delete] == ["cleanup"]
    assert planned.pre_delete[0].delete_policies == {DeletePolicy.HOOK_SUCCEEDED}
    assert all(not s.hooks for s in planned.steps) and not planned.staged
