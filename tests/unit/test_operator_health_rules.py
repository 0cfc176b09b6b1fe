"""operator.py's wiring of the users' health rules: where they are read from (the ConfigMap through
the controller's client, files, directories), the flags that say so, and every app woken when they
change. The rules themselves are tests/unit/test_health_cel.py's."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import yaml

import pytest

from controller import operator
from controller.health import HealthContext, assess
from controller.kube import KubeApiError
from controller.metrics import Metrics
from controller.model import HealthStatus
from controller.startup import StartupError

RULE = """\
- apiVersion: example.com/v1
  kind: Widget
  failed: "status.state == 'jammed'"
  current: "status.state == 'turning'"
"""


class FakeClient:
    """Answers GETs of ConfigMaps from `configmaps` (path → data, or an error to raise)."""

    def __init__(self) -> None:
        self.configmaps: dict[str, dict | Exception] = {}
        self.asked: list[str] = []

    def request(self, method: str, path: str, **_) -> dict:
        assert method == "GET"
        self.asked.append(path)
        found = self.configmaps.get(path, KubeApiError(404, "NotFound", "configmaps not found"))
        if isinstance(found, Exception):
            raise found
        return {"data": found}


PATH = "/api/v1/namespaces/gantry/configmaps/gantry-health-rules"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "health-rules.yaml"


def test_by_default_the_configmap_in_the_controllers_namespace_is_read_and_its_absence_is_no_rules():
    client, problems = FakeClient(), []
    source = operator.health_rule_source(client, operator.Options(health_rules_interval=0))
    source.report = problems.append
    assert [name for name, _ in source.readers] == ["ConfigMap gantry/gantry-health-rules"]
    assert source.current().rules == () and problems == []
    client.configmaps[PATH] = {"widgets.yaml": RULE}
    [rule] = source.current().rules
    assert (rule.group, rule.kind, rule.where) == ("example.com", "Widget",
                                                  "ConfigMap gantry/gantry-health-rules, key widgets.yaml, rule 1")
    assert client.asked == [PATH, PATH]


def test_a_configmap_that_cannot_be_read_is_reported_once_and_its_last_rules_are_kept():
    client, problems = FakeClient(), []
    client.configmaps[PATH] = {"widgets.yaml": RULE}
    source = operator.health_rule_source(client, operator.Options(health_rules_interval=0))
    source.report = problems.append
    assert len(source.current().rules) == 1
    client.configmaps[PATH] = KubeApiError(403, "Forbidden", 'configmaps "gantry-health-rules" is forbidden')
    assert len(source.current().rules) == 1 and len(source.current().rules) == 1
    assert problems == ["cannot read health rules from ConfigMap gantry/gantry-health-rules: "
                        'configmaps "gantry-health-rules" is forbidden']


def test_a_named_configmap_files_and_directories_are_read_in_that_order(tmp_path):
    client = FakeClient()
    client.configmaps["/api/v1/namespaces/ops/configmaps/rules"] = {"a.yaml": RULE}
    single = tmp_path / "extra.yaml"
    single.write_text(RULE.replace("Widget", "Gadget"))
    mounted = tmp_path / "mounted"  # as the kubelet lays out a ConfigMap volume
    (mounted / "..2026_01_01").mkdir(parents=True)
    (mounted / "..2026_01_01" / "b.yaml").write_text(RULE.replace("Widget", "Gizmo"))
    (mounted / "..data").symlink_to("..2026_01_01")
    (mounted / "b.yaml").symlink_to("..data/b.yaml")
    options = operator.Options(health_rules_configmap="ops/rules", health_rules_files=(single, mounted))
    source = operator.health_rule_source(client, options)
    assert [name for name, _ in source.readers] == ["ConfigMap ops/rules", f"file {single}", f"directory {mounted}"]
    assert [rule.kind for rule in source.current().rules] == ["Widget", "Gadget", "Gizmo"]
    assert source.current().rules[2].where == f"directory {mounted}, key b.yaml, rule 1"
    single.unlink()  # gone: its rules with it, not an error
    source.ttl = 0
    assert [rule.kind for rule in source.current().rules] == ["Widget", "Gizmo"]


def test_a_bare_name_is_in_the_controllers_namespace_and_empty_reads_no_configmap(tmp_path):
    source = operator.health_rule_source(FakeClient(), operator.Options(namespace="ops",
                                                                        health_rules_configmap="mine"))
    assert [name for name, _ in source.readers] == ["ConfigMap ops/mine"]
    assert operator.health_rule_source(FakeClient(), operator.Options(health_rules_configmap="")) is None


def test_a_broken_rule_from_the_configmap_makes_its_objects_unknown_and_is_logged_once(caplog):
    client = FakeClient()
    client.configmaps[PATH] = {"widgets.yaml": RULE.replace("== 'jammed'", "==")}
    source = operator.health_rule_source(client, operator.Options(health_rules_interval=0))
    with caplog.at_level("WARNING", logger="gantry"):
        for _ in range(3):
            rules = source.current()
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("health rules: ConfigMap gantry/gantry-health-rules, key widgets.yaml, rule 1: "
                              "failed `status.state ==`: at 1:")
    result = assess({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                     "status": {"state": "jammed"}}, HealthContext(rules=rules))
    assert result.status is HealthStatus.UNKNOWN and "failed `status.state ==`" in result.message


# ---------------------------------------------------------------------------------------------- flags


@pytest.fixture
def parsed(monkeypatch):
    """main(argv) up to the Options it would start with (prepare() is where it stops)."""
    monkeypatch.setattr(operator, "_options", operator.Options())

    def stop(_options):
        raise StartupError("stopped by the test")

    monkeypatch.setattr(operator, "prepare", stop)

    def run(*argv: str) -> operator.Options:
        assert operator.main(["--kustomize", sys.executable, *argv]) == 2
        return operator._options

    return run


def test_the_flags_reach_the_options(parsed, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE)
    assert parsed().health_rules_configmap is None
    options = parsed("--health-rules-configmap", "ops/health", "--health-rules-file", str(rules),
                     "--health-rules-file", str(tmp_path), "--health-rules-interval", "2")
    assert options.health_rules_configmap == "ops/health"
    assert options.health_rules_files == (rules, tmp_path)
    assert options.health_rules_interval == 2.0
    assert parsed("--health-rules-configmap", "").health_rules_configmap == ""


@pytest.mark.parametrize("argv, error", [
    (["--health-rules-configmap", "a/b/c"], "--health-rules-configmap 'a/b/c': give NAMESPACE/NAME"),
    (["--health-rules-configmap", "Ops/x"], "give NAMESPACE/NAME"),
    (["--health-rules-file", "/nonexistent/rules.yaml"], "--health-rules-file /nonexistent/rules.yaml: no such file"),
    (["--health-rules-interval", "0"], "give a positive number of seconds"),
])
def test_bad_flags_are_refused_with_what_to_give(parsed, capsys, argv, error):
    with pytest.raises(SystemExit) as exited:
        parsed(*argv)
    assert exited.value.code == 2 and error in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- waking


def test_every_app_is_woken_when_the_rules_change_and_not_otherwise():
    client = FakeClient()
    source = operator.health_rule_source(client, operator.Options(health_rules_interval=0.05))

    async def scenario() -> list[bool]:
        scheduler = operator.Scheduler(reconciler=None, client=None, options=operator.Options(), metrics=Metrics())
        workers = [operator.AppWorker(body={}) for _ in range(2)]
        scheduler.workers = {"gantry/a": workers[0], "gantry/b": workers[1]}
        scheduler.follow_health_rules(source)
        await asyncio.sleep(0.3)
        seen = [any(w.wake.is_set() for w in workers)]  # read again and again, unchanged: nobody woken
        client.configmaps[PATH] = {"widgets.yaml": RULE}
        await asyncio.sleep(0.3)
        seen += [w.wake.is_set() for w in workers]
        scheduler._beat_handle.cancel()
        scheduler._rules_task.cancel()
        scheduler.pool.shutdown()
        scheduler.git_pool.shutdown()
        return seen

    assert asyncio.run(scenario()) == [False, True, True]
    assert len(client.asked) > 4


def test_the_example_configmap_is_read_without_problems_and_its_rules_decide():
    example = yaml.safe_load(EXAMPLE.read_text())
    client = FakeClient()
    client.configmaps[PATH] = example["data"]
    rules = operator.health_rule_source(client, operator.Options()).current()
    assert rules.problems == () and all(not rule.error for rule in rules.rules) and len(rules.rules) == 2

    def health(obj: dict) -> HealthStatus:
        return assess({"metadata": {"name": "x", "namespace": "n"}, **obj}, HealthContext(rules=rules)).status

    database = {"apiVersion": "db.example.com/v1", "kind": "Database"}
    assert health(database) is HealthStatus.PROGRESSING  # no status yet: none holds
    assert health({**database, "status": {"state": "failed"}}) is HealthStatus.DEGRADED
    assert health({**database, "status": {"state": "available"}}) is HealthStatus.HEALTHY
    backup = {"apiVersion": "backup.example.com/v1", "kind": "Schedule"}
    assert health({**backup, "status": {"lastSuccessfulRun": "2026-01-01T00:00:00Z"}}) is HealthStatus.HEALTHY
    assert health({**backup, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}) is HealthStatus.DEGRADED
