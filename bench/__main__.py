"""`python -m bench [--quick] [--only NAMES] [--no-flux]`: run the benchmarks of bench/README.md on the
local control plane, print a table per benchmark and write bench/results/<name>.json.

The control plane is the one of hack/localcluster.py (GANTRY_CLUSTER_DIR, default .cluster/): used
when running, else brought up and stopped again at the end. Everything else the run starts (git
server, Gantry, Flux, `gantry ui` and Chromium for benchmark 7) is stopped before it returns,
whatever happens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from . import benchmarks
from .benchmarks import Context, Outcome, Plan
from .cluster import ROOT, BenchError, Cluster, local_cluster, stop_all
from .stats import table
from .systems import Flux, FluxBuild, Gantry, GitServer

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = ("first_sync", "noop_reconcile", "commit_to_synced", "drift_to_healed", "many_apps", "ui", "peer")
# Those that run the controllers under test (and git); `ui` needs neither.
CONTROLLED = NAMES[:5]


def machine() -> dict:
    facts: dict = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        meminfo = Path("/proc/meminfo").read_text()
        facts["memory_gib"] = round(int(meminfo.split("MemTotal:")[1].split()[0]) / 2**20, 1)
        cpuinfo = Path("/proc/cpuinfo").read_text()
        facts["cpu_model"] = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                                   if line.startswith("model name")), platform.processor())
    except (OSError, IndexError, ValueError):
        pass
    return facts


def versions(cluster: Cluster, flux: FluxBuild | None) -> dict:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
        except OSError:
            return ""

    dirty = run("git", "status", "--porcelain", "--", "controller", "crds", "pyproject.toml")
    found = {
        "kubernetes": cluster.client.request("GET", "/version").get("gitVersion"),
        "kubectl": json.loads(run(str(cluster.bin_dir / "kubectl"), "version", "--client", "-o", "json") or "{}")
        .get("clientVersion", {}).get("gitVersion"),
        "kustomize": run(str(cluster.bin_dir / "kustomize"), "version"),
        "gantry_git_sha": run("git", "rev-parse", "HEAD") + ("-dirty" if dirty else ""),
        "go": run("go", "version"),
    }
    if flux is not None:
        found["flux"] = flux.versions
    return found


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def write(outcome: Outcome, header: dict, started: float) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{outcome.name}.json"
    document = {
        "benchmark": outcome.name, "title": outcome.title, **header,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1), "load_average_at_end": loadavg(),
        "parameters": outcome.parameters, "figures": [f.to_dict() for f in outcome.figures],
        "notes": outcome.notes, "details": outcome.details,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller apps and fewer repeats: a few minutes instead of ~30")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(NAMES)}")
    parser.add_argument("--no-flux", action="store_true", help="skip the Flux peer")
    parser.add_argument("--kubeconfig", type=Path, help="a running cluster to use instead of the local control plane")
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory (logs, repos) afterwards")
    args = parser.parse_args(argv)
    only = [n.strip().replace("-", "_") for n in args.only.split(",") if n.strip()] or list(NAMES)
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    plan = Plan.for_mode(args.quick)

    # SIGTERM (a CI timeout, `kill`) must run the clean-up below as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="gantry-bench-"))
    failed = False
    try:
        failed = run(plan, only, work, args)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        failed = True
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        failed = True
    finally:
        stop_all()
        if failed or args.keep_work:
            print(f"work directory (logs, repos): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def run(plan: Plan, only: list[str], work: Path, args: argparse.Namespace) -> bool:
    began = time.monotonic()
    mode = "QUICK mode: smaller apps and fewer repeats; figures are indicative only" if plan.quick else "full mode"
    print(f"gantry bench — {mode}; work directory {work}", flush=True)
    flux_build: FluxBuild | None = None
    controllers = any(name in CONTROLLED for name in only)
    flux_status = "Flux: skipped (--no-flux)" if args.no_flux else "Flux: not needed by these benchmarks"
    if not args.no_flux and controllers:
        try:
            flux_build = FluxBuild.find()
            flux_status = "Flux: " + ", ".join(f"{k} {v}" for k, v in flux_build.versions.items()) + \
                f", built from their Go modules ({flux_build.directory})"
        except BenchError as error:
            flux_status = f"Flux: not available, floor comparison only: {error}"
    print(flux_status, flush=True)

    with local_cluster(args.kubeconfig) as cluster:
        header = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "quick": plan.quick, "plan": plan.__dict__, "machine": machine(),
            "versions": versions(cluster, flux_build), "load_average_at_start": loadavg(),
        }
        print(f"machine: {header['machine']}\nversions: {json.dumps(header['versions'])}", flush=True)
        git = GitServer(work / "git", work / "logs").start()
        gantry = Gantry(cluster, work)
        gantry.install()
        flux = None
        if flux_build is not None:
            flux = Flux(cluster, flux_build, work)
            flux.install()
        ctx = Context(cluster, plan, work, git, gantry, flux, run_id=uuid.uuid4().hex[:4],
                      log=lambda line: print(line, flush=True))
        outcomes: list[Outcome] = []
        first: Outcome | None = None
        failed = False
        try:
            if controllers:
                gantry.start()
            if flux is not None:
                flux.start()
            for name in only:
                if name == "peer":
                    continue
                started = time.monotonic()
                print(f"\n== {name} ==", flush=True)
                try:
                    if name == "first_sync":
                        outcome = first = benchmarks.first_sync(ctx)
                    elif name == "noop_reconcile":
                        outcome = benchmarks.noop_reconcile(ctx, first)
                    elif name == "commit_to_synced":
                        outcome = benchmarks.commit_to_synced(ctx)
                    elif name == "drift_to_healed":
                        outcome = benchmarks.drift_to_healed(ctx)
                    elif name == "many_apps":
                        outcome = benchmarks.many_apps(ctx)
                    else:
                        outcome = benchmarks.web_ui(ctx)
                except BenchError as error:
                    print(f"bench {name} FAILED: {error}", file=sys.stderr, flush=True)
                    failed = True
                    continue
                outcome.notes.append(f"took {time.monotonic() - started:.0f}s; "
                                     f"load average {' '.join(f'{v:.1f}' for v in loadavg())}")
                outcomes.append(outcome)
                print("\n" + table(outcome.title, outcome.figures, outcome.notes), flush=True)
                print(f"→ {write(outcome, header, started)}", flush=True)
            if "peer" in only:
                outcome, text = benchmarks.side_by_side(outcomes, flux_status)
                print("\n" + text, flush=True)
                print(f"→ {write(outcome, header, began)}", flush=True)
        finally:
            _clean(ctx)
            stop_all()
        print(f"\nbench finished in {(time.monotonic() - began) / 60:.1f} min"
              + (" (QUICK mode)" if plan.quick else ""), flush=True)
        return failed


def _clean(ctx: Context) -> None:
    """Leave the cluster as we found it: our apps and namespaces gone (the controllers are still
    running here, so Flux's finalizers are honoured)."""
    retire = (lambda: benchmarks.retire_gantry_apps(ctx)) if ctx.gantry.process and ctx.gantry.process.alive() \
        else ctx.gantry.delete_apps
    for step in (retire, *([ctx.flux.delete_apps] if ctx.flux else [])):
        try:
            step()
        except BenchError as error:
            print(f"clean-up: {error}", file=sys.stderr)
    namespaces = [n["metadata"]["name"] for n in ctx.cluster.client.request("GET", "/api/v1/namespaces")["items"]
                  if n["metadata"]["name"].endswith(f"-{ctx.run_id}") or f"-{ctx.run_id}-" in n["metadata"]["name"]]
    for plural in ("clusterrolebindings", "clusterroles"):
        path = f"/apis/rbac.authorization.k8s.io/v1/{plural}"
        for item in ctx.cluster.client.request("GET", path)["items"]:
            if f"-{ctx.run_id}-" in item["metadata"]["name"]:
                ctx.cluster.client.request("DELETE", f"{path}/{item['metadata']['name']}")
    namespaces += [ctx.gantry.namespace, *([ctx.flux.namespace] if ctx.flux else [])]
    try:
        ctx.cluster.delete_namespaces(namespaces, timeout=300)
    except BenchError as error:
        print(f"clean-up: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
