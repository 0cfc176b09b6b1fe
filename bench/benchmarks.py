"""The six benchmarks of issue 6 and the web UI's of issue 12. Each times Gantry, and where it
applies the floor (plain `kubectl apply --server-side`) and Flux, the same way on the same cluster,
and returns figures.

Order matters for the state they share: first_sync keeps its last Gantry and Flux apps, which
noop_reconcile, commit_to_synced and drift_to_healed then use ("the same app"); many_apps starts
from a cluster without them. web_ui needs neither git nor a controller: its Applications carry a
status written as the controller would.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import generate
from .cluster import BenchError, Cluster, KubeApiError, Manifest, WorkRepo, Watch, init_bare, metric_sum, rv
from .stats import Figure, percentile, ratio
from .systems import Flux, Gantry, GantryUi, GitServer, dump


@dataclass(frozen=True)
class Plan:
    """How big and how often. `quick` shrinks everything so a run takes a few minutes."""

    quick: bool = False
    large_objects: int = 1000
    large_namespaces: int = 4
    first_sync_runs: int = 3
    noop_runs: int = 10
    commits: int = 10
    drifts: int = 20
    flux_drifts: int = 6
    flux_drift_interval: int = 15  # seconds: Flux corrects drift only on its interval
    apps: int = 200
    app_objects: int = 20
    # One poll interval (both systems poll git every 180 s here) and a little: every app's poll falls
    # in the window exactly once, wherever the window starts.
    idle_seconds: int = 190
    ui_apps: int = 1000  # benchmark 7: Applications in the list
    ui_resources: int = 1000  # … and status.resources of the one whose page is opened
    ui_loads: int = 10  # page loads of the list, and of the app page
    ui_filter_runs: int = 3  # names typed into the search box
    ui_updates: int = 30  # status changes timed to the list page
    ui_app_updates: int = 10  # … and to the app page
    timeout: float = 900.0  # for any one wait

    @classmethod
    def for_mode(cls, quick: bool) -> "Plan":
        if not quick:
            return cls()
        return cls(quick=True, large_objects=300, first_sync_runs=2, noop_runs=3, commits=3, drifts=5,
                   flux_drifts=3, flux_drift_interval=10, apps=20, idle_seconds=30, ui_loads=3, ui_filter_runs=1,
                   ui_updates=10, ui_app_updates=3, timeout=300.0)


@dataclass
class LargeApp:
    """Benchmark 1's app as deployed by one system; kept for benchmarks 2–4."""

    system: str
    name: str  # repo name, Application / Kustomization name, and prefix of its namespaces
    objects: list[Manifest]
    repo: WorkRepo
    commit: str
    revision: int = 0  # the release ConfigMap's value at `commit`

    @property
    def namespaces(self) -> list[str]:
        return [o["metadata"]["name"] for o in self.objects if o["kind"] == "Namespace"]


@dataclass
class Context:
    cluster: Cluster
    plan: Plan
    work: Path
    git: GitServer
    gantry: Gantry
    flux: Flux | None
    run_id: str
    large: dict[str, LargeApp] = field(default_factory=dict)
    log: Callable[[str], None] = print


@dataclass
class Outcome:
    """One benchmark's result: its figures, notes for the table, and parameters for the JSON."""

    name: str
    title: str
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# helpers


def publish(ctx: Context, name: str, files: dict[str, str], message: str = "initial") -> tuple[WorkRepo, str]:
    """A repo served by the loopback git server holding `files`; returns it and its commit."""
    bare = init_bare(ctx.git.path(name))
    repo = WorkRepo.create(ctx.work / "src" / name, files, remote=bare)
    commit = repo.commit(message)
    repo.push()
    return repo, commit


def cleanup_large(ctx: Context, app: LargeApp) -> None:
    ctx.cluster.delete_namespaces(app.namespaces, timeout=ctx.plan.timeout)
    ctx.cluster.delete_cluster_objects(app.objects)


def retire_gantry_apps(ctx: Context, *, quiet: float = 3.0, timeout: float = 120.0) -> None:
    """Delete our Applications and wait until the controller has stopped reconciling: a reconcile
    already running when its Application goes finishes, and with CreateNamespace=true it creates
    the destination namespace again if that was deleted meanwhile."""
    ctx.gantry.delete_apps()
    wait_all_quiet(ctx, quiet=quiet, timeout=timeout)


def wait_gantry_quiet(ctx: Context, name: str, *, quiet: float = 5.0, timeout: float = 300.0) -> None:
    """Until the app is Synced and Healthy and the controller has not reconciled it for `quiet`
    seconds (pods becoming Ready make it reconcile for a while after a sync)."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        count = metric_sum(ctx.gantry.metrics(), "gantry_app_reconcile_duration_seconds_count", name=name)
        app = ctx.cluster.client.request("GET", f"{ctx.gantry.collection}/{name}")
        healthy = ((app.get("status") or {}).get("health") or {}).get("status") == "Healthy"
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif healthy and time.monotonic() - last_change >= quiet:
            return
        time.sleep(0.5)
    ctx.log(f"  (the app {name} did not settle in {timeout:.0f}s; measuring anyway)")


def wait_all_quiet(ctx: Context, *, quiet: float = 10.0, timeout: float = 180.0) -> float:
    """Until no Application has been reconciled for `quiet` seconds; seconds waited."""
    started = time.monotonic()
    last_count, last_change = -1.0, time.monotonic()
    while time.monotonic() - started < timeout:
        count = metric_sum(ctx.gantry.metrics(), "gantry_app_reconcile_duration_seconds_count")
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            break
        time.sleep(1.0)
    return time.monotonic() - started


def sample_idle(process_usage: Callable[[], object], seconds: int, every: float = 5.0,
                window: float = 30.0) -> tuple[list[float], list[float], list[float]]:
    """RSS samples (MiB) every `every` seconds over `seconds`, and CPU seconds per minute over each
    `window` seconds: of the process, and of it with its waited-for children (kustomize, git)."""
    started = time.monotonic()
    samples = [(started, process_usage())]
    while time.monotonic() - started < seconds:
        time.sleep(min(every, max(0.0, seconds - (time.monotonic() - started))))
        samples.append((time.monotonic(), process_usage()))
    rss = [usage.rss_bytes / 2**20 for _, usage in samples]
    # The whole window first (the figure), then each `window` seconds (its spread: git polls make
    # some windows busy and most idle).
    (t0, u0), (t1, u1) = samples[0], samples[-1]
    own = [(u1.cpu_seconds - u0.cpu_seconds) / ((t1 - t0) / 60)]
    with_children = [own[0] + (u1.children_cpu_seconds - u0.children_cpu_seconds) / ((t1 - t0) / 60)]
    begin = 0
    for index in range(1, len(samples)):
        (t0, u0), (t1, u1) = samples[begin], samples[index]
        if t1 - t0 >= window - every / 2:
            minutes = (t1 - t0) / 60
            own.append((u1.cpu_seconds - u0.cpu_seconds) / minutes)
            with_children.append(own[-1] + (u1.children_cpu_seconds - u0.children_cpu_seconds) / minutes)
            begin = index
    return rss, own, with_children


def _fail_fast(check: Callable[[Manifest | None], str | None], key: str) -> Callable[[dict], bool]:
    def predicate(objects: dict) -> bool:
        problem = check(objects.get(key))
        if problem:
            raise BenchError(f"{key}: {problem}")
        return False

    return predicate


# ------------------------------------------------------------------------------------------------
# 1. Large app, first sync


def first_sync(ctx: Context) -> Outcome:
    plan = ctx.plan
    floor = Figure("floor", "kubectl apply --server-side", "s", key="first sync")
    gantry = Figure("gantry", "kubectl apply Application → Synced", "s", key="first sync")
    flux = Figure("flux", "kubectl apply Kustomization → Ready", "s", key="first sync")
    build = Figure("kustomize", "kustomize build (not in any figure above)", "s")
    figures = [floor, gantry, flux, build] if ctx.flux else [floor, gantry, build]
    for run in range(plan.first_sync_runs):
        last = run == plan.first_sync_runs - 1
        # Rotate who goes first so that a noisy moment does not always hit the same system; the
        # last run ends with Gantry so its app (kept for benchmarks 2–4) settles without
        # disturbing anyone's measurement.
        order = ["floor", "gantry", "flux"]
        order = order[run % 3:] + order[:run % 3] if not last else ["floor", "flux", "gantry"]
        for system in order:
            if system == "flux" and not ctx.flux:
                continue
            name = f"b1{system[0]}{run}-{ctx.run_id}"
            objects = generate.large_app(name, plan.large_objects, plan.large_namespaces)
            app = LargeApp(system, name, objects, *publish(ctx, name, generate.repo_files(objects)))
            if system == "floor":
                rendered, seconds = _kustomize_build(ctx, app.repo.path / "k8s")
                build.values.append(seconds)
                floor.values.append(_floor_apply(ctx, rendered))
                cleanup_large(ctx, app)
            elif system == "gantry":
                gantry.values.append(_gantry_first_sync(ctx, app))
                if last:
                    ctx.large["gantry"] = app
                else:
                    retire_gantry_apps(ctx)
                    cleanup_large(ctx, app)
            else:
                flux.values.append(_flux_first_sync(ctx, app))
                if last:
                    ctx.large["flux"] = app
                else:
                    ctx.flux.delete_apps()
                    cleanup_large(ctx, app)
            ctx.log(f"  run {run + 1}/{plan.first_sync_runs} {system:7} "
                    f"{(floor if system == 'floor' else gantry if system == 'gantry' else flux).values[-1]:.2f}s")
    notes = [f"{plan.large_objects} objects ({_kinds(generate.large_app('x', plan.large_objects, plan.large_namespaces))}); "
             f"fresh namespaces each run"]
    gantry_ratio = ratio(gantry.values, floor.values)
    notes.append(f"gantry / floor = {gantry_ratio:.2f}× (median / median)" if gantry_ratio else "")
    if ctx.flux and flux.values:
        notes.append(f"flux / floor = {ratio(flux.values, floor.values):.2f}×; "
                     f"gantry / flux = {ratio(gantry.values, flux.values):.2f}×")
    return Outcome("first_sync", "1. Large app, first sync", figures, [n for n in notes if n],
                   {"objects": plan.large_objects, "namespaces": plan.large_namespaces, "runs": plan.first_sync_runs},
                   {"ratio_gantry_floor": gantry_ratio,
                    "ratio_flux_floor": ratio(flux.values, floor.values) if ctx.flux else None})


def _kinds(objects: list[Manifest]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in generate.kinds(objects).most_common())


def _kustomize_build(ctx: Context, folder: Path) -> tuple[Path, float]:
    import subprocess

    started = time.monotonic()
    result = subprocess.run([str(ctx.cluster.bin_dir / "kustomize"), "build", str(folder)], capture_output=True,
                            text=True, check=True)
    seconds = time.monotonic() - started
    rendered = folder.parent.parent / f"{folder.parent.name}-rendered.yaml"
    rendered.write_text(result.stdout)
    return rendered, seconds


def _floor_apply(ctx: Context, rendered: Path) -> float:
    started = time.monotonic()
    ctx.cluster.kubectl("apply", "--server-side", "--field-manager=gantry-bench-floor", "-f", str(rendered))
    return time.monotonic() - started


def _gantry_first_sync(ctx: Context, app: LargeApp) -> float:
    manifest = ctx.gantry.app(app.name, ctx.git.url(app.name), app.namespaces[0])
    with Watch(ctx.cluster.client, ctx.gantry.collection, field_selector=f"metadata.name={app.name}") as watch:
        started = time.monotonic()
        ctx.cluster.kubectl("apply", "-f", "-", stdin=dump([manifest]))
        key = f"{ctx.gantry.namespace}/{app.name}"
        done = watch.wait(lambda o: ctx.gantry.synced(o.get(key), app.commit)
                          or _fail_fast(ctx.gantry.failure, key)(o), f"{app.name} Synced", ctx.plan.timeout)
    return done - started


def _flux_first_sync(ctx: Context, app: LargeApp) -> float:
    assert ctx.flux is not None
    objects = ctx.flux.app(app.name, ctx.git.url(app.name))
    with Watch(ctx.cluster.client, ctx.flux.collection, field_selector=f"metadata.name={app.name}") as watch:
        started = time.monotonic()
        ctx.cluster.kubectl("apply", "-f", "-", stdin=dump(objects))
        key = f"{ctx.flux.namespace}/{app.name}"
        done = watch.wait(lambda o: ctx.flux.synced(o.get(key), app.commit) or _fail_fast(ctx.flux.failure, key)(o),
                          f"{app.name} Ready", ctx.plan.timeout)
    return done - started


def ensure_large(ctx: Context, system: str) -> LargeApp:
    """The kept app of benchmark 1, or (when it did not run) one deployed now, untimed."""
    if system in ctx.large:
        return ctx.large[system]
    name = f"b1{system[0]}x-{ctx.run_id}"
    objects = generate.large_app(name, ctx.plan.large_objects, ctx.plan.large_namespaces)
    app = LargeApp(system, name, objects, *publish(ctx, name, generate.repo_files(objects)))
    (_gantry_first_sync if system == "gantry" else _flux_first_sync)(ctx, app)
    ctx.large[system] = app
    return app


def drop_large(ctx: Context) -> None:
    """Benchmarks 2–4 are done: remove their apps so many_apps starts clean."""
    for system, app in list(ctx.large.items()):
        if system == "gantry":
            retire_gantry_apps(ctx)
        elif ctx.flux:
            ctx.flux.delete_apps()
        cleanup_large(ctx, app)
        del ctx.large[system]


# ------------------------------------------------------------------------------------------------
# 2. No-op reconcile


def noop_reconcile(ctx: Context, first_sync_outcome: Outcome | None) -> Outcome:
    app = ensure_large(ctx, "gantry")
    wait_gantry_quiet(ctx, app.name)
    latency = Figure("gantry", "refresh → reconciled (annotation consumed)", "s")
    duration = Figure("gantry", "reconcile duration (controller histogram)", "s")
    requests = Figure("gantry", "API requests per no-op reconcile", "count")
    dry_runs = Figure("gantry", "  of which SSA dry-runs", "count")
    writes = Figure("gantry", "  of which writes to managed objects", "count")
    app_writes = Figure("gantry", "  of which Application/Event writes", "count")
    changed = Figure("gantry", "managed objects whose resourceVersion changed", "count")
    reconciles = Figure("gantry", "reconciles per refresh", "count")
    key = f"{ctx.gantry.namespace}/{app.name}"
    by_kind: list[dict[str, float]] = []
    with Watch(ctx.cluster.client, ctx.gantry.collection, field_selector=f"metadata.name={app.name}") as watch:
        for _ in range(ctx.plan.noop_runs):
            versions = ctx.cluster.resource_versions(app.objects)
            before = ctx.gantry.metrics()
            started = time.monotonic()
            annotated = rv(ctx.gantry.refresh(app.name))
            done = watch.wait(lambda o: ctx.gantry.refreshed(o.get(key), annotated), "refresh consumed",
                              ctx.plan.timeout)
            latency.values.append(done - started)
            after = _metrics_after_reconcile(ctx, before, app.name)
            count = _delta(after, before, "gantry_app_reconcile_duration_seconds_count", name=app.name)
            reconciles.values.append(count)
            duration.values.append(_delta(after, before, "gantry_app_reconcile_duration_seconds_sum",
                                          name=app.name) / max(count, 1))
            counted_before, counted_after = _requests(before), _requests(after)
            counts = {k: counted_after.get(k, 0) - counted_before.get(k, 0) for k in counted_before | counted_after}
            by_kind.append({f"{m} {t}": v for (m, t), v in sorted(counts.items()) if v})
            requests.values.append(sum(counts.values()))
            dry_runs.values.append(sum(v for (m, t), v in counts.items() if t == "dry-run"))
            writes.values.append(sum(v for (m, t), v in counts.items()
                                     if t == "object" and m in ("POST", "PUT", "PATCH", "DELETE")))
            app_writes.values.append(sum(v for (m, t), v in counts.items()
                                         if t in ("application", "event") and m != "GET"))
            now = ctx.cluster.resource_versions(app.objects)
            changed.values.append(sum(1 for k, v in versions.items() if now.get(k) != v))
            ctx.log(f"  no-op {len(latency.values)}/{ctx.plan.noop_runs}: {latency.values[-1]:.2f}s, "
                    f"{requests.values[-1]:.0f} requests, {changed.values[-1]:.0f} objects changed")
    notes = [f"the app of benchmark 1 ({len(app.objects)} objects); request counts are the controller's own "
             "client (kopf's watch of Applications not included), by method and target in the JSON"]
    first = next((f for f in (first_sync_outcome.figures if first_sync_outcome else []) if f.system == "gantry"), None)
    share = ratio(latency.values, first.values) if first else None
    if share is not None:
        notes.append(f"no-op / first sync = {share * 100:.1f}% (medians; target < 5%)")
    return Outcome("noop_reconcile", "2. No-op reconcile (refresh, nothing changed)",
                   [latency, duration, reconciles, requests, dry_runs, writes, app_writes, changed], notes,
                   {"objects": len(app.objects), "runs": ctx.plan.noop_runs},
                   {"requests_by_method_and_target": by_kind, "noop_over_first_sync": share})


def _requests(samples: dict) -> dict[tuple[str, str], float]:
    out = {}
    for (name, labels), value in samples.items():
        if name == "gantry_bench_api_requests_total":
            label = dict(labels)
            out[(label["method"], label["target"])] = value
    return out


def _delta(after: dict, before: dict, metric: str, /, **labels: str) -> float:
    return metric_sum(after, metric, **labels) - metric_sum(before, metric, **labels)


def _metrics_after_reconcile(ctx: Context, before: dict, name: str, timeout: float = 10.0) -> dict:
    """The metrics once the reconcile that consumed the refresh has been recorded (the scheduler
    records it just after the status is written)."""
    deadline = time.monotonic() + timeout
    while True:
        after = ctx.gantry.metrics()
        if _delta(after, before, "gantry_app_reconcile_duration_seconds_count", name=name) >= 1 or \
                time.monotonic() > deadline:
            time.sleep(0.3)  # let a reconcile that started meanwhile show too
            return ctx.gantry.metrics()
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# 3. Commit to Synced


def _commit(app: LargeApp) -> str:
    app.revision += 1
    objects = generate.large_app(app.name, len(app.objects), len(app.namespaces), revision=app.revision)
    app.repo.write(generate.repo_files(objects))
    app.commit = app.repo.commit(f"release {app.revision}")
    app.repo.push()
    return app.commit


def commit_to_synced(ctx: Context) -> Outcome:
    figures = []
    gantry_app = ensure_large(ctx, "gantry")
    wait_gantry_quiet(ctx, gantry_app.name)
    gantry = Figure("gantry", "push → refresh annotation → Synced at the commit", "s", key="commit → synced")
    hooked = Figure("gantry", "push → signed GitHub push webhook → Synced at the commit", "s")
    figures += [gantry, hooked]
    key = f"{ctx.gantry.namespace}/{gantry_app.name}"
    with Watch(ctx.cluster.client, ctx.gantry.collection, field_selector=f"metadata.name={gantry_app.name}") as watch:
        for _ in range(ctx.plan.commits):
            commit = _commit(gantry_app)
            started = time.monotonic()
            ctx.gantry.refresh(gantry_app.name)
            done = watch.wait(lambda o: ctx.gantry.synced(o.get(key), commit) or _fail_fast(ctx.gantry.failure, key)(o),
                              f"Synced at {commit[:7]}", ctx.plan.timeout)
            gantry.values.append(done - started)
            ctx.log(f"  gantry commit {len(gantry.values)}/{ctx.plan.commits}: {gantry.values[-1]:.2f}s")
            time.sleep(0.5)
        for _ in range(ctx.plan.commits):
            commit = _commit(gantry_app)
            started = time.monotonic()
            ctx.gantry.push_webhook(ctx.git.url(gantry_app.name), commit)
            done = watch.wait(lambda o: ctx.gantry.synced(o.get(key), commit) or _fail_fast(ctx.gantry.failure, key)(o),
                              f"Synced at {commit[:7]}", ctx.plan.timeout)
            hooked.values.append(done - started)
            ctx.log(f"  gantry webhook commit {len(hooked.values)}/{ctx.plan.commits}: {hooked.values[-1]:.2f}s")
            time.sleep(0.5)
    if ctx.flux:
        flux_app = ensure_large(ctx, "flux")
        flux = Figure("flux", "push → reconcile annotation on the GitRepository → Ready at the commit", "s",
                      key="commit → synced")
        figures.append(flux)
        key = f"{ctx.flux.namespace}/{flux_app.name}"
        with Watch(ctx.cluster.client, ctx.flux.collection, field_selector=f"metadata.name={flux_app.name}") as watch:
            for _ in range(ctx.plan.commits):
                commit = _commit(flux_app)
                started = time.monotonic()
                ctx.flux.request_reconcile(f"{ctx.flux.sources}/{flux_app.name}", str(time.time()))
                done = watch.wait(lambda o: ctx.flux.synced(o.get(key), commit) or _fail_fast(ctx.flux.failure, key)(o),
                                  f"Ready at {commit[:7]}", ctx.plan.timeout)
                flux.values.append(done - started)
                ctx.log(f"  flux commit {len(flux.values)}/{ctx.plan.commits}: {flux.values[-1]:.2f}s")
                time.sleep(0.5)
    notes = [f"each commit changes one ConfigMap of the {len(gantry_app.objects)}-object app of benchmark 1 and is "
             "pushed before the clock starts; Gantry is told by its refresh annotation, then by a signed GitHub "
             "push event to its /api/webhook; Flux by its reconcile annotation (its webhook Receiver lives in "
             "notification-controller, not run here)"]
    if ctx.flux:
        notes.append(f"gantry / flux = {ratio(gantry.values, figures[2].values):.2f}×")
    return Outcome("commit_to_synced", "3. Commit to Synced", figures, notes,
                   {"objects": len(gantry_app.objects), "commits": ctx.plan.commits})


# ------------------------------------------------------------------------------------------------
# 4. Drift to healed


DRIFTED = "svc-000"  # a Deployment of the large app, in its first namespace


def _drift(ctx: Context, app: LargeApp, watch: Watch, *, timeout: float) -> float:
    """`kubectl scale --replicas=3` on a Deployment git has at 1, as its API request; seconds until
    the Deployment is back at 1."""
    namespace = app.namespaces[0]
    key = f"{namespace}/{DRIFTED}"
    started = time.monotonic()
    scaled = ctx.cluster.patch(f"/apis/apps/v1/namespaces/{namespace}/deployments/{DRIFTED}/scale",
                               {"spec": {"replicas": 3}})
    drifted_at = rv(scaled)
    done = watch.wait(lambda o: rv(o.get(key)) > drifted_at and (o.get(key) or {}).get("spec", {}).get("replicas") == 1,
                      f"{key} healed", timeout)
    return done - started


def drift_to_healed(ctx: Context) -> Outcome:
    figures = []
    gantry_app = ensure_large(ctx, "gantry")
    wait_gantry_quiet(ctx, gantry_app.name)
    gantry = Figure("gantry", "kubectl scale → back at git's replicas (selfHeal)", "s", key="drift → healed")
    figures.append(gantry)
    with Watch(ctx.cluster.client, f"/apis/apps/v1/namespaces/{gantry_app.namespaces[0]}/deployments",
               field_selector=f"metadata.name={DRIFTED}") as watch:
        for _ in range(ctx.plan.drifts):
            gantry.values.append(_drift(ctx, gantry_app, watch, timeout=ctx.plan.timeout))
            ctx.log(f"  gantry drift {len(gantry.values)}/{ctx.plan.drifts}: {gantry.values[-1]:.2f}s")
            time.sleep(1.0)
    notes = [f"Deployment {DRIFTED} of the {len(gantry_app.objects)}-object app of benchmark 1, scaled 1 → 3"]
    parameters: dict = {"objects": len(gantry_app.objects), "drifts": ctx.plan.drifts}
    if ctx.flux:
        flux_app = ensure_large(ctx, "flux")
        interval = ctx.plan.flux_drift_interval
        ctx.cluster.patch(f"{ctx.flux.collection}/{flux_app.name}", {"spec": {"interval": f"{interval}s"}})
        flux = Figure("flux", f"kubectl scale → back at git's replicas (interval {interval}s)", "s",
                      key="drift → healed")
        figures.append(flux)
        with Watch(ctx.cluster.client, f"/apis/apps/v1/namespaces/{flux_app.namespaces[0]}/deployments",
                   field_selector=f"metadata.name={DRIFTED}") as watch:
            time.sleep(interval)  # the new interval is in effect after the next reconcile
            phases = random.Random(6)
            for _ in range(ctx.plan.flux_drifts):
                # Drift at a random point of Flux's cycle, as a user would, not right after a heal
                # (which would always wait a whole interval).
                time.sleep(phases.uniform(0, interval))
                flux.values.append(_drift(ctx, flux_app, watch, timeout=interval * 4 + ctx.plan.timeout))
                ctx.log(f"  flux drift {len(flux.values)}/{ctx.plan.flux_drifts}: {flux.values[-1]:.2f}s")
        notes.append(f"Flux has no watch on applied objects: it corrects drift on its Kustomization interval, "
                     f"here {interval}s (set for this benchmark; our other Flux runs use 1h), so a drift made at a "
                     f"random moment waits on average interval/2 plus one reconcile")
        parameters.update(flux_drifts=ctx.plan.flux_drifts, flux_interval_seconds=interval)
    return Outcome("drift_to_healed", "4. Drift to healed", figures, notes, parameters)


# ------------------------------------------------------------------------------------------------
# 5. Many apps, steady state


def many_apps(ctx: Context) -> Outcome:
    plan = ctx.plan
    drop_large(ctx)
    # One repo per app, as Gantry's README lays an app out; copies of one, so all share a commit.
    objects = generate.small_app(plan.app_objects)
    names = [f"m{i:03d}-{ctx.run_id}" for i in range(plan.apps)]
    _, commit = publish(ctx, names[0], generate.repo_files(objects))
    for name in names[1:]:
        shutil.copytree(ctx.git.path(names[0]), ctx.git.path(name))
    figures: list[Figure] = []
    details: dict = {}
    systems: list = [ctx.gantry] + ([ctx.flux] if ctx.flux else [])
    for system in systems:
        ctx.log(f"  {system.name}: {plan.apps} apps × {plan.app_objects} objects")
        figs, info = (_many_gantry if system is ctx.gantry else _many_flux)(ctx, names, commit)
        figures += figs
        details[system.name] = info
    notes = [f"{plan.apps} apps × {plan.app_objects} objects ({_kinds(objects)}), one git repo each, a "
             f"namespace each (created before the clock starts); idle window {plan.idle_seconds}s",
             "CPU s/min: the controller process(es); '+children' adds the kustomize/git processes Gantry runs"]
    if ctx.flux:
        gantry_cold = next(f for f in figures if f.system == "gantry" and f.metric.startswith("cold"))
        flux_cold = next(f for f in figures if f.system == "flux" and f.metric.startswith("cold"))
        notes.append(f"cold start gantry / flux = {ratio(gantry_cold.values, flux_cold.values):.2f}×")
    return Outcome("many_apps", "5. Many apps, steady state", figures, notes,
                   {"apps": plan.apps, "objects_per_app": plan.app_objects, "idle_seconds": plan.idle_seconds},
                   details)


def _parallel(function: Callable, items: list) -> list:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(function, items))


def _many_gantry(ctx: Context, names: list[str], commit: str) -> tuple[list[Figure], dict]:
    gantry, plan = ctx.gantry, ctx.plan
    destinations = {name: f"g{name}" for name in names}
    _parallel(ctx.cluster.ensure_namespace, list(destinations.values()))
    gantry.stop()
    ctx.cluster.kubectl("apply", "-f", "-", stdin=dump([gantry.app(n, ctx.git.url(n), destinations[n]) for n in names]))
    cold = Figure("gantry", "cold start → all Synced", "s", key="many apps: cold start → all synced")
    rss = Figure("gantry", "RSS while idle", "MiB", key="many apps: RSS idle")
    cpu = Figure("gantry", "CPU while idle, whole window", "CPU s/min", key="many apps: CPU idle")
    cpu_windows = Figure("gantry", "CPU while idle, per 30 s", "CPU s/min")
    cpu_all = Figure("gantry", "CPU while idle, whole window, +children", "CPU s/min")
    rate = Figure("gantry", "all refreshed at once: apps reconciled", "apps/min",
                  key="many apps: refresh all, rate")
    peak = Figure("gantry", "RSS after the refresh", "MiB", key="many apps: RSS after refresh")
    keys = [f"{gantry.namespace}/{n}" for n in names]
    info: dict = {}
    with Watch(ctx.cluster.client, gantry.collection) as watch:
        started = gantry.start()
        done = watch.wait(lambda o: all(gantry.synced(o.get(k), commit) for k in keys), "all apps Synced",
                          plan.timeout)
        cold.values.append(done - started)
        ctx.log(f"    cold start → all Synced: {cold.values[-1]:.1f}s")
        info["settle_seconds"] = wait_all_quiet(ctx)
        before = gantry.metrics()
        samples, own, with_children = sample_idle(gantry.usage, plan.idle_seconds)
        after = gantry.metrics()
        rss.values += samples
        cpu.values.append(own[0])
        cpu_windows.values += own[1:]
        cpu_all.values.append(with_children[0])
        info["reconciles_while_idle"] = _delta(after, before, "gantry_app_reconcile_duration_seconds_count")
        info["api_requests_while_idle"] = {f"{m} {t}": v - _requests(before).get((m, t), 0)
                                           for (m, t), v in _requests(after).items()}
        ctx.log(f"    idle: RSS {max(samples):.0f} MiB, {own[0]:.2f} CPU s/min ({with_children[0]:.2f} with children)")
        started = time.monotonic()
        annotated = dict(zip(keys, _parallel(lambda n: rv(gantry.refresh(n)), names)))
        done = watch.wait(lambda o: all(gantry.refreshed(o.get(k), annotated[k]) for k in keys),
                          "all refreshes consumed", plan.timeout)
        rate.values.append(len(names) / (done - started) * 60)
        peak.values.append(gantry.usage().rss_bytes / 2**20)
        ctx.log(f"    refresh all: {done - started:.1f}s ({rate.values[-1]:.0f} apps/min)")
    info["flags"] = gantry.flags
    retire_gantry_apps(ctx)
    ctx.cluster.delete_namespaces(list(destinations.values()), timeout=plan.timeout)
    return [cold, rss, cpu, cpu_windows, cpu_all, rate, peak], info


def _many_flux(ctx: Context, names: list[str], commit: str) -> tuple[list[Figure], dict]:
    flux, plan = ctx.flux, ctx.plan
    assert flux is not None
    destinations = {name: f"f{name}" for name in names}
    _parallel(ctx.cluster.ensure_namespace, list(destinations.values()))
    flux.stop()
    # Intervals as a Flux user would set them next to Gantry's defaults: git polled every 3 minutes
    # (Gantry's --poll-interval), the Kustomization re-applied every 10 minutes.
    objects = [o for n in names for o in flux.app(n, ctx.git.url(n), interval="10m", source_interval="3m",
                                                  target_namespace=destinations[n])]
    ctx.cluster.kubectl("apply", "-f", "-", stdin=dump(objects))
    cold = Figure("flux", "cold start → all Ready", "s", key="many apps: cold start → all synced")
    rss = Figure("flux", "RSS while idle (both controllers)", "MiB", key="many apps: RSS idle")
    cpu = Figure("flux", "CPU while idle, whole window (both controllers)", "CPU s/min", key="many apps: CPU idle")
    cpu_windows = Figure("flux", "CPU while idle, per 30 s (both controllers)", "CPU s/min")
    rate = Figure("flux", "all refreshed at once: apps reconciled", "apps/min", key="many apps: refresh all, rate")
    peak = Figure("flux", "RSS after the refresh", "MiB", key="many apps: RSS after refresh")
    keys = [f"{flux.namespace}/{n}" for n in names]
    info: dict = {"kustomization_interval": "10m", "gitrepository_interval": "3m"}
    with Watch(ctx.cluster.client, flux.collection) as watch:
        started = flux.start()
        done = watch.wait(lambda o: all(flux.synced(o.get(k), commit) for k in keys), "all Kustomizations Ready",
                          plan.timeout)
        cold.values.append(done - started)
        ctx.log(f"    cold start → all Ready: {cold.values[-1]:.1f}s")
        time.sleep(10)  # as Gantry's settle: let stragglers finish
        samples, own, _ = sample_idle(flux.usage, plan.idle_seconds)
        rss.values += samples
        cpu.values.append(own[0])
        cpu_windows.values += own[1:]
        ctx.log(f"    idle: RSS {max(samples):.0f} MiB, {own[0]:.2f} CPU s/min")
        token = str(time.time())
        started = time.monotonic()
        _parallel(lambda n: flux.request_reconcile(f"{flux.sources}/{n}", token), names)
        _parallel(lambda n: flux.request_reconcile(f"{flux.collection}/{n}", token), names)
        done = watch.wait(lambda o: all(flux.handled(o.get(k), token) for k in keys), "all reconciles handled",
                          plan.timeout)
        rate.values.append(len(names) / (done - started) * 60)
        peak.values.append(flux.usage().rss_bytes / 2**20)
        ctx.log(f"    refresh all: {done - started:.1f}s ({rate.values[-1]:.0f} apps/min)")
    info["flags"] = flux.flags
    flux.delete_apps()
    ctx.cluster.delete_namespaces(list(destinations.values()), timeout=plan.timeout)
    return [cold, rss, cpu, cpu_windows, rate, peak], info


# ------------------------------------------------------------------------------------------------
# 6. Peer, side by side


def side_by_side(outcomes: list[Outcome], flux_status: str) -> tuple[Outcome, str]:
    """Benchmark 6: the medians of benchmarks 1, 3, 4 and 5 for the floor, Gantry and Flux next to
    each other; returns the outcome (for the JSON) and its table."""
    from .stats import comparison

    figures = [f for o in outcomes if o.name in ("first_sync", "commit_to_synced", "drift_to_healed", "many_apps")
               for f in o.figures]
    notes = [flux_status, "medians of the figures above; gantry/x below 1: Gantry takes less time or memory "
                          "(for apps/min, above 1: Gantry reconciles more)"]
    drift = next((f for f in figures if f.system == "flux" and f.key == "drift → healed"), None)
    if drift:
        notes.append(f"flux drift → healed is bounded by its interval: {drift.metric}")
    text, rows = comparison("6. Peer, side by side (medians)", figures, notes=notes)
    return Outcome("peer", "6. Peer, side by side", [f for f in figures if f.key], notes, {},
                   {"rows": rows, "flux": flux_status}), text


# ------------------------------------------------------------------------------------------------
# 7. The web UI


PAGE_TIMEOUT = 60.0  # seconds for any one thing a page should show


def web_ui(ctx: Context) -> Outcome:
    """The web UI in Chromium, served by `gantry ui` from a namespace of its own holding
    `ui_apps` Applications (statuses written through the status subresource, no controller):
    page loads of the list and of the app with `ui_resources` resources, the search box, and
    status changes until the page shows them."""
    from .chromium import Chromium  # Playwright is imported only when this benchmark runs

    plan = ctx.plan
    namespace = f"ui-bench-{ctx.run_id}"
    apps = generate.ui_apps(namespace, plan.ui_apps, plan.ui_resources)
    names = [app["metadata"]["name"] for app, _ in apps]
    ctx.cluster.ensure_namespace(namespace)
    try:
        started = time.monotonic()
        _parallel(lambda pair: _create_with_status(ctx, namespace, *pair), apps)
        ctx.log(f"  {len(apps)} Applications created, their status written: {time.monotonic() - started:.0f}s")
        ui = GantryUi(ctx.cluster, namespace, ctx.work)
        ui.start(len(apps))
        try:
            server_figures, server_info = _ui_server(ctx, ui, namespace, names[0])
            with Chromium() as chromium:
                list_figures, list_info = _ui_list(ctx, ui, chromium, namespace, names)
                app_figures, app_info = _ui_app(ctx, ui, chromium, namespace, names[0])
            server_figures.append(Figure("gantry", "gantry ui: RSS after the run", "MiB",
                                         [ui.usage().rss_bytes / 2**20]))
        finally:
            ui.stop()
    finally:
        _delete_namespace_of_apps(ctx, namespace)
    notes = [f"{len(apps)} Applications (one with {plan.ui_resources} resources, the others 20) with statuses "
             "written through the status subresource, no controller; `gantry ui` in a process of its own; "
             "Debian's Chromium, headless, 1280x800, a fresh context per page load, one warm-up load not counted",
             "ms from navigation start (or the input event, or just before the PATCH) to the moment the frame "
             "holding what is awaited had been laid out and painted on the page's main thread; script/style/"
             "layout: Chromium's own account of that thread over the load",
             f"status change → painted crosses the browser's clock and ours (offset measured to "
             f"±{list_info['clock_offset_ms'][1]:.2f} ms)"]
    return Outcome("ui", "7. Web UI", list_figures + app_figures + server_figures, notes,
                   {"apps": len(apps), "resources": plan.ui_resources, "loads": plan.ui_loads,
                    "filter_runs": plan.ui_filter_runs, "updates": plan.ui_updates, "app_updates": plan.ui_app_updates},
                   {"list": list_info, "app": app_info, "server": server_info, "server_argv": ui.process.argv[3:]})


def _create_with_status(ctx: Context, namespace: str, app: Manifest, status: dict) -> None:
    collection = f"/apis/gantry.dev/v1alpha1/namespaces/{namespace}/applications"
    ctx.cluster.client.request("POST", collection, body=app)
    ctx.cluster.patch(f"{collection}/{app['metadata']['name']}/status", {"status": status})


def _delete_namespace_of_apps(ctx: Context, namespace: str) -> None:
    """Delete the namespace and its Applications. They have no finalizer unless a controller
    serving that namespace added one meanwhile; if one did and is gone, the finalizers are removed."""
    collection = f"/apis/gantry.dev/v1alpha1/namespaces/{namespace}/applications"
    try:
        ctx.cluster.delete_namespaces([namespace], timeout=120)
        return
    except BenchError:
        pass
    for item in ctx.cluster.client.request("GET", collection)["items"]:
        try:
            ctx.cluster.patch(f"{collection}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})
        except KubeApiError:
            pass
    ctx.cluster.delete_namespaces([namespace], timeout=120)


def _ui_server(ctx: Context, ui: GantryUi, namespace: str, large: str) -> tuple[list[Figure], dict]:
    """The server's share, read by a plain HTTP client with no page: the stream's first burst and
    the large app's tree."""
    stream = Figure("gantry", "server: /api/v1/stream → ready (every app sent; plain client)", "ms")
    tree = Figure("gantry", f"server: GET …/{large}/tree (plain client)", "ms")
    info: dict = {}
    for _ in range(ctx.plan.ui_loads):
        seconds, apps, size = ui.read_stream()
        stream.values.append(seconds * 1000)
        info.update(stream_apps=apps, stream_bytes=size)
        seconds, size = ui.timed_get(f"applications/{namespace}/{large}/tree")
        tree.values.append(seconds * 1000)
        info["tree_bytes"] = size
    return [stream, tree], info


def _rows_test(shown: int, total: int) -> str:
    """JS: the list's table holds exactly `shown` rows and its count line says so."""
    return (f"document.querySelectorAll('tbody tr[data-app]').length === {shown} && "
            f"(document.querySelector('p.count') || {{}}).textContent === '{shown} of {total} applications'")


def _thread_figures(prefix: str) -> list[Figure]:
    return [Figure("gantry", f"  {prefix}: {part}", "ms") for part in ("script", "style", "layout")]


def _ui_list(ctx: Context, ui: GantryUi, chromium, namespace: str, names: list[str]) -> tuple[list[Figure], dict]:
    from .chromium import longest_task, matching

    plan, total = ctx.plan, len(names)
    paint = Figure("gantry", f"list: navigation → {total} rows painted", "ms")
    handled = Figure("gantry", f"  navigation → the page has handled the stream's {total} apps", "ms")
    threads = _thread_figures("main thread until painted")
    long_task = Figure("gantry", "  longest main-thread task", "ms")
    broad = Figure("gantry", f"filter: a keystroke that still matches all {total} → painted", "ms")
    narrow = Figure("gantry", "filter: a keystroke that narrows to 100, 10, 1 rows → painted", "ms")
    cleared = Figure("gantry", f"filter: cleared → all {total} rows painted", "ms")
    update = Figure("gantry", "list: status change (PATCH) → its row painted", "ms")
    arrival = Figure("gantry", "  PATCH → its event reached the page", "ms")
    info: dict = {"long_tasks_ms": [], "dom_nodes": 0}
    for run in range(plan.ui_loads + 1):  # the first is a warm-up
        with chromium.tab({"list": _rows_test(total, total)}) as tab:
            tab.goto(ui.url)
            mark = tab.mark("list", PAGE_TIMEOUT)
            used = tab.main_thread()
            state = tab.state()
        if run == 0:
            continue
        paint.values.append(mark.ms)
        handled.values.append(state["streams"][0]["ready"])
        for figure, part in zip(threads, ("script", "style", "layout")):
            figure.values.append(used[part])
        long_task.values.append(longest_task(state["longTasks"], 0, mark.painted))
        info["long_tasks_ms"].append([round(d) for start, d in state["longTasks"] if start <= mark.painted])
        info["dom_nodes"] = used["nodes"]
        ctx.log(f"  list load {run}/{plan.ui_loads}: {mark.ms:.0f} ms (stream handled at "
                f"{state['streams'][0]['ready']:.0f} ms; layout {used['layout']:.0f} ms, script {used['script']:.0f} ms)")
    with chromium.tab({"list": _rows_test(total, total)}) as tab:
        tab.goto(ui.url)
        tab.mark("list", PAGE_TIMEOUT)
        search = tab.page.locator("#filter-text")
        for run in range(plan.ui_filter_runs):
            typed = names[(42 + 97 * run) % total]
            search.focus()
            times = []
            for end in range(1, len(typed) + 1):
                expected = matching(names, typed[:end])
                tab.expect("key", _rows_test(expected, total), on="input")
                tab.page.keyboard.type(typed[end - 1])
                times.append(tab.mark("key", PAGE_TIMEOUT).ms)
                (broad if expected == total else narrow).values.append(times[-1])
            tab.expect("cleared", _rows_test(total, total), on="input")
            search.fill("")
            cleared.values.append(tab.mark("cleared", PAGE_TIMEOUT).ms)
            ctx.log(f"  typed {typed!r}: " + ", ".join(f"{v:.0f}" for v in times)
                    + f" ms per key; cleared: {cleared.values[-1]:.0f} ms")
        # Status changes, one app at a time, each on a row the page shows.
        offset, uncertainty = tab.clock_offset()
        info["clock_offset_ms"] = [offset, uncertainty]
        collection = f"/apis/gantry.dev/v1alpha1/namespaces/{namespace}/applications"
        pick = random.Random(12)
        for index in range(plan.ui_updates):
            name = names[pick.randrange(1, total)]
            token = f"bench update {index} {ctx.run_id}"
            cell = json.dumps(f'tr[data-app="{namespace}/{name}"] td.message')
            tab.expect("update", f"(document.querySelector({cell}) || {{}}).textContent === {json.dumps(token)}")
            sent = time.time() * 1000
            ctx.cluster.patch(f"{collection}/{name}/status", {"status": {
                "message": token, "sync": {"status": "OutOfSync" if index % 2 == 0 else "Synced"}}})
            mark = tab.mark("update", PAGE_TIMEOUT)
            origin = tab.evaluate("() => performance.timeOrigin")
            arrived = tab.evaluate(f"() => window.__benchProbe.streams[0].arrivals[{json.dumps(f'{namespace}/{name}')}]")
            update.values.append(origin + mark.painted - offset - sent)
            arrival.values.append(origin + arrived - offset - sent)
            time.sleep(pick.uniform(0.2, 0.5))
        ctx.log(f"  list: status change → painted, median {percentile(update.values, 50):.0f} ms "
                f"(its event at the page after {percentile(arrival.values, 50):.0f} ms)")
    return [paint, handled, *threads, long_task, broad, narrow, cleared, update, arrival], info


def _tree_test(resources: int) -> str:
    """JS: the tree accounts for `resources` top-level resources: as nodes, or (an app of more
    than 100) as kind groups whose summaries count them."""
    return f"""(() => {{
      const tree = document.querySelector('ul.tree');
      if (!tree) return false;
      const groups = [...tree.querySelectorAll('details[data-group] > summary')];
      const shown = groups.length
        ? groups.reduce((n, s) => n + Number((/\\((\\d+)\\)/.exec(s.textContent) || [0, 0])[1]), 0)
        : tree.querySelectorAll('button.node').length;
      return shown >= {resources};
    }})()"""


STREAM_READY = "window.__benchProbe.streams.length && window.__benchProbe.streams[0].ready !== null"


def _ui_app(ctx: Context, ui: GantryUi, chromium, namespace: str, name: str) -> tuple[list[Figure], dict]:
    from .chromium import longest_task

    plan, resources = ctx.plan, ctx.plan.ui_resources
    url = f"{ui.url}apps/{namespace}/{name}"
    paint = Figure("gantry", f"app page: navigation → tree of {resources} resources painted", "ms")
    tree_request = Figure("gantry", "  of which GET …/tree, as the page made it", "ms")
    threads = _thread_figures("main thread until painted")
    long_task = Figure("gantry", "  longest main-thread task", "ms")
    opened = Figure("gantry", f"app page: every kind group opened → {resources} nodes painted", "ms")
    listed = Figure("gantry", f"app page: List view → {resources} rows painted", "ms")
    update = Figure("gantry", "app page: status change (PATCH) → header painted", "ms")
    info: dict = {"tree_requests_per_load": [], "nodes_at_first_paint": [], "groups": 0}
    tree_test = _tree_test(resources)
    all_nodes = f"document.querySelectorAll('ul.tree button.node').length >= {resources}"
    all_rows = f"document.querySelectorAll('#resource-table tr[data-node]').length >= {resources}"
    for run in range(plan.ui_loads + 1):  # the first is a warm-up
        with chromium.tab({"tree": tree_test}) as tab:
            tab.goto(url)
            mark = tab.mark("tree", PAGE_TIMEOUT)
            used = tab.main_thread()
            nodes = tab.evaluate("() => document.querySelectorAll('ul.tree button.node').length")
            info["groups"] = tab.evaluate("() => document.querySelectorAll('details[data-group]').length")
            # Settled first: the page's stream sends every app, this one too, which reloads the
            # page when it comes after the first load.
            tab.wait(STREAM_READY, PAGE_TIMEOUT)
            time.sleep(0.5)
            tab.evaluate(f"""() => {{
              window.__benchProbe.expect('nodes', () => ({all_nodes}), 'now');
              for (const group of document.querySelectorAll('details[data-group]')) group.open = true;
            }}""")
            open_mark = tab.mark("nodes", PAGE_TIMEOUT)
            tab.expect("rows", all_rows, on="click")
            tab.page.click("#view-list")
            list_mark = tab.mark("rows", PAGE_TIMEOUT)
            state = tab.state()
        trees = [r for r in state["resources"] if r["name"].endswith("/tree")]
        if run == 0:
            continue
        paint.values.append(mark.ms)
        if trees:
            tree_request.values.append(trees[0]["end"] - trees[0]["start"])
        for figure, part in zip(threads, ("script", "style", "layout")):
            figure.values.append(used[part])
        long_task.values.append(longest_task(state["longTasks"], 0, mark.painted))
        opened.values.append(open_mark.ms)
        listed.values.append(list_mark.ms)
        info["tree_requests_per_load"].append(len(trees))
        info["nodes_at_first_paint"].append(nodes)
        ctx.log(f"  app page load {run}/{plan.ui_loads}: {mark.ms:.0f} ms (/tree "
                f"{tree_request.values[-1] if trees else 0:.0f} ms, {nodes} nodes built); every group opened "
                f"{open_mark.ms:.0f} ms; list view {list_mark.ms:.0f} ms")
    with chromium.tab({"tree": tree_test}) as tab:
        tab.goto(url)
        tab.mark("tree", PAGE_TIMEOUT)
        tab.wait(STREAM_READY, PAGE_TIMEOUT)
        time.sleep(0.5)
        offset, _ = tab.clock_offset()
        path = f"/apis/gantry.dev/v1alpha1/namespaces/{namespace}/applications/{name}/status"
        for index in range(plan.ui_app_updates):
            token = f"bench update {index} {ctx.run_id}"
            tab.expect("update", f"((document.getElementById('app-health') || {{}}).textContent || '')"
                                 f".includes({json.dumps(token)})")
            sent = time.time() * 1000
            ctx.cluster.patch(path, {"status": {"health": {"status": "Healthy", "message": token}}})
            mark = tab.mark("update", PAGE_TIMEOUT)
            update.values.append(tab.evaluate("() => performance.timeOrigin") + mark.painted - offset - sent)
            time.sleep(0.5)
        ctx.log(f"  app page: status change → painted, median {percentile(update.values, 50):.0f} ms")
    return [paint, tree_request, *threads, long_task, opened, listed, update], info
