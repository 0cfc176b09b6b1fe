"""operation.py without a cluster: a fake API server that records what is asked of it, a fake
syncer and live cache, and the real planner's steps."""

from __future__ import annotations

import copy

import pytest

from controller import plan
from controller.model import Action, ObjectRef
from controller.operation import Operation, OperationRunner, Work
from controller.status import merge_patch
from controller.sync import ResourceResult

HOOK = "argocd.argoproj.io/hook"


class Resource:
    api_version, kind, namespaced = "batch/v1", "Job", True

    def object_path(self, name: str, namespace: str | None) -> str:
        return f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"

    def collection_path(self, namespace: str | None) -> str:
        return f"/apis/batch/v1/namespaces/{namespace}/jobs"


class Client:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def resource_of(self, _manifest: dict) -> Resource:
        return Resource()

    def list(self, *_args, **_kwargs) -> dict:
        return {"items": []}

    def request(self, method: str, path: str, **kwargs) -> dict:
        self.requests.append((method, path))
        return copy.deepcopy(kwargs.get("body") or {})


class Syncer:
    def apply(self, diffs, replace: bool = False) -> list[ResourceResult]:
        return [ResourceResult(d.ref, Action.CREATED) for d in diffs]

    def prune(self, *_args, **_kwargs) -> list[ResourceResult]:
        return []

    def wait_deleted(self, *_args, **_kwargs) -> None:
        pass


class Live:
    """Jobs as created; every other object Healthy, and a record of which were looked at."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.looked_at: list[str] = []

    def record(self, obj: dict) -> None:
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj

    def get(self, target: dict) -> dict | None:
        self.looked_at.append(target["metadata"]["name"])
        if target["kind"] != "Job":
            return target  # a ConfigMap is Healthy as it is
        return self.objects.get((target["kind"], target["metadata"]["name"]))

    def forget(self, _ref) -> None:
        pass

    def finish_jobs(self, condition: str = "Complete") -> None:
        for (kind, _), obj in self.objects.items():
            if kind == "Job":
                obj["status"] = {"conditions": [{"type": condition, "status": "True", "message": "exit 1"}]}


class Diff:
    def __init__(self, manifest: dict) -> None:
        self.ref = ObjectRef.of(manifest)


def job(name: str, hook: str, **annotations: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "shop", "annotations": {HOOK: hook, **annotations}}, "spec": {}}


def config_map(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "shop"}}


class HealthContexts:
    """The runner's health_context: counts how often a health check was about to happen."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def runner() -> tuple[OperationRunner, Client, Live, HealthContexts]:
    client, live, contexts = Client(), Live(), HealthContexts()
    return OperationRunner(client, Syncer(), live, contexts), client, live, contexts


def run(runner_: OperationRunner, objects: list[dict], state: dict | None = None) -> Operation:
    planned = plan.plan(objects)
    operation = Operation.resumed(state) if state else Operation("abc123", False, {"automated": True}, "t0")
    runner_.run(operation, Work(planned, {ObjectRef.of(m): Diff(m) for m in planned.resources}, [], "gantry/shop"))
    return operation


def test_an_app_without_hooks_ends_in_one_pass_with_no_health_check(runner):
    runner_, client, live, contexts = runner
    operation = run(runner_, [config_map("settings")])
    assert operation.phase == "Succeeded"
    assert (live.looked_at, client.requests, contexts.calls) == ([], [], 0)


def test_the_last_steps_hooks_are_waited_for_and_their_end_reaches_the_status(runner):
    runner_, client, live, _ = runner
    objects = [config_map("settings"),
               job("after", "PostSync", **{"argocd.argoproj.io/hook-delete-policy": "HookSucceeded"})]
    first = run(runner_, objects)
    assert first.phase == "Running" and first.step == "PostSync/0"
    assert "finishing PostSync wave 0, waiting for PostSync hook Job after" in first.message, first.message
    previous = first.state()
    written = copy.deepcopy(previous)  # what the status holds: the next pass reads it back
    live.finish_jobs()
    second = run(runner_, objects, written)
    assert second.phase == "Succeeded", second.message
    [entry] = [e for e in second.results if e.get("hookType")]
    assert entry["hookPhase"] == "Succeeded"
    assert ("DELETE", Resource().object_path("after", "shop")) in client.requests  # HookSucceeded
    # The status writer sends what changed against the status it read: the hook's end must be in it.
    patch = merge_patch(written, second.state())
    assert patch["syncResult"]["resources"][-1]["hookPhase"] == "Succeeded", patch


def test_a_failed_last_hook_fails_the_sync_and_runs_syncfail(runner):
    runner_, _, live, _ = runner
    objects = [config_map("settings"), job("after", "PostSync"), job("alert", "SyncFail")]
    state = copy.deepcopy(run(runner_, objects).state())
    live.finish_jobs("Failed")
    operation = run(runner_, objects, state)
    assert operation.phase == "Failed" and "Job after (PostSync hook, wave 0) failed" in operation.message
    assert [e["name"] for e in operation.results if e.get("hookType") == "SyncFail"] == ["alert"]
