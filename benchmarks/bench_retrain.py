"""Retraining throughput: N simulated sites retrained on a local Dask cluster of 1 and of 2 workers.

Each site job is the whole of `gridedge fleet retrain` for one site: read its recent series from the fleet
store, train the task config (PyTorch), export and sign the int8 ONNX challenger, run champion and
challenger with the device runtime on the same recent windows, decide. The sites are the simulated fleet
of :mod:`gridedge.sim.fleet` (shipped load and PV series, shifted and scaled), four weeks at 1 h steps.

A first pass on 2 workers gives every site its champion and imports the frameworks in each worker; the
measured passes then run on warm workers with the same jobs, 2 workers then 1 (one run, same load).
The projection for 1,000 sites divides the 1-worker time per site by the workers of a stated cluster
and by the 2-worker scaling efficiency measured here (jobs are independent, so it is the only loss).

Results: ``benchmarks/results/retrain.json`` and ``.md``.

    python benchmarks/bench_retrain.py [--sites 6] [--cluster-workers 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import benchreport
import distributed

from edge_agent.bundle import read_bundle
from edge_agent.keys import load_public_key, new_keypair
from edge_agent.reporting.base import MemoryReporter
from gridedge.fleet import retrain as core
from gridedge.fleet.engine import run_jobs
from gridedge.fleet.models import register_bundle
from gridedge.fleet.store import FleetStore, Received
from gridedge.sim.fleet import SiteDevice, fleet_plan_yaml, fleet_task_yaml, net_load, site_profiles

DAYS = 28


def deliver(store: FleetStore, reporter: MemoryReporter) -> None:
    """What a receiver does with the device's messages (the MQTT leg is measured by bench_mqtt)."""
    store.ingest([Received(m, m.model_dump_json(), time.time()) for m in reporter.messages])
    reporter.messages.clear()


def fill_store(store: FleetStore, sites: int) -> dict[str, SiteDevice]:
    """Four weeks of model-step telemetry per site, through the device's own reporting code."""
    devices = {}
    for profile in site_profiles(sites):
        reporter = MemoryReporter(profile.site, profile.device)
        devices[profile.site] = SiteDevice(profile, reporter)
        devices[profile.site].report(*net_load(profile, DAYS))
        deliver(store, reporter)
    return devices


def timed_pass(jobs: list[core.SiteJob], scheduler: str) -> tuple[float, list[core.SiteOutcome]]:
    started = time.monotonic()
    outcomes, _ = run_jobs(jobs, scheduler)
    return time.monotonic() - started, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=6, help="Simulated sites retrained per pass.")
    parser.add_argument("--cluster-workers", type=int, default=64, help="Workers of the projected cluster.")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    private, public = new_keypair(work / "keys")
    store = FleetStore(path=work / "fleet.sqlite3")
    devices = fill_store(store, args.sites)
    fleet_task_yaml(work / "task.yaml")
    plan_path = fleet_plan_yaml(work / "plan.yaml", site_profiles(args.sites), since=f"{DAYS}d")
    plan, folder = core.load_plan(plan_path)
    everyone, _ = core.select_sites(plan, store, "all")
    load_before = os.getloadavg()
    results: dict[str, float] = {}
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        seconds, outcomes = timed_pass(
            core.make_jobs(plan, folder, everyone, store, private, work / "first"), cluster.scheduler_address
        )
        results["first_pass_2_workers_s"] = seconds
        for outcome in outcomes:  # every site runs its first model: the champion of the measured passes
            if outcome.decision == "ship" and outcome.bundle:
                device = devices[outcome.site]
                device.install(read_bundle(Path(outcome.bundle), load_public_key(public)))
                register_bundle(store, Path(outcome.bundle), load_public_key(public))
                assert isinstance(device.reporter, MemoryReporter)
                deliver(store, device.reporter)
        client = distributed.Client(cluster)
        for workers in (2, 1):  # scale down, never up: every measured worker is warm
            cluster.scale(workers)
            while len(client.scheduler_info()["workers"]) != workers:
                time.sleep(0.2)
            jobs = core.make_jobs(plan, folder, everyone, store, private, work / f"w{workers}")
            seconds, outcomes = timed_pass(jobs, cluster.scheduler_address)
            results[f"{workers}_worker_s"] = seconds
            results[f"{workers}_worker_failed"] = sum(o.decision == "failed" for o in outcomes)
        client.close()
    store.close()
    per_site_1 = results["1_worker_s"] / args.sites
    speedup = results["1_worker_s"] / results["2_worker_s"]
    efficiency = min(1.0, speedup / 2)
    projected_s = 1000 * per_site_1 / (args.cluster_workers * efficiency)
    payload = {
        "sites": args.sites,
        "days_per_site": DAYS,
        "results": results,
        "sites_per_minute": {w: 60 * args.sites / results[f"{w}_worker_s"] for w in (1, 2)},
        "speedup_2_workers": speedup,
        "scaling_efficiency": efficiency,
        "projection": {"sites": 1000, "cluster_workers": args.cluster_workers, "hours": projected_s / 3600},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    rows = [
        (w, f"{results[f'{w}_worker_s']:.1f}", f"{payload['sites_per_minute'][w]:.2f}", results[f"{w}_worker_failed"])
        for w in (1, 2)
    ]
    intro = (
        f"{args.sites} simulated sites, {DAYS} days of 1 h model-step telemetry each, PyTorch, int8 ONNX export and "
        f"champion/challenger on warm workers; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before and "
        f"{payload['load_average_after'][0]:.1f} after (shared machine). 2 workers: {speedup:.2f}x "
        f"(efficiency {efficiency:.0%}). Projected for 1,000 sites on {args.cluster_workers} workers (e.g. 8 "
        f"machines x 8 cores, one worker per core): {projected_s / 3600:.2f} h."
    )
    benchreport.publish(
        "retrain",
        payload,
        "Fleet retraining throughput (Dask distributed)",
        intro,
        benchreport.markdown_table(("workers", "wall s", "sites/minute", "failed"), rows),
    )


if __name__ == "__main__":
    main()
