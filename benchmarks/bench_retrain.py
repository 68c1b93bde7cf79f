"""Retraining throughput: N simulated sites retrained on a local Dask cluster with 1 and with 2 workers busy.

Each site job is the whole of `gridedge fleet retrain` for one site: read its recent series from the fleet
store, train the task config (PyTorch), export and sign the int8 ONNX challenger, run champion and
challenger with the device runtime on the same recent windows, decide. The sites are the simulated fleet
of :mod:`gridedge.sim.fleet` (shipped load and PV series, shifted and scaled), four weeks at 1 h steps.

One cluster of two worker processes serves the whole run. A first pass gives every site its champion and
imports the frameworks in both workers; then every measured pass runs the same jobs on warm workers, on
one of them (the jobs restricted to it) or on both, in the order 2, 1, 1, 2, ... so a drift of the
machine's background load does not favour either. The 1-minute load average is recorded at the start and
end of every pass; the run refuses to start above ``--max-load`` (a shared 2-core machine measures the
neighbours, not the engine). Speed-up and sites/minute come from the median pass of each worker count.
The projection for 1,000 sites divides the 1-worker time per site by the workers of a stated cluster
and by the 2-worker scaling efficiency measured here (jobs are independent, so it is the only loss).

Results: ``benchmarks/results/retrain.json`` and ``.md``.

    python benchmarks/bench_retrain.py [--sites 12] [--rounds 3] [--max-load 3] [--cluster-workers 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import benchreport
import distributed

from edge_agent.bundle import read_bundle
from edge_agent.keys import load_public_key, new_keypair
from edge_agent.reporting.base import MemoryReporter
from gridedge.fleet import retrain as core
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


@dataclass
class Pass:
    """One measured pass: how many workers ran it, its wall time, the load around it, failed jobs."""

    workers: int
    seconds: float
    load_start: float
    load_end: float
    failed: int


def timed_pass(
    client: distributed.Client, jobs: list[core.SiteJob], workers: list[str]
) -> tuple[Pass, list[core.SiteOutcome]]:
    """Run the jobs on the given (warm) workers only and time them until the last outcome is back."""
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    futures = client.map(core.run_site, jobs, workers=workers, allow_other_workers=False, pure=False)
    outcomes: list[core.SiteOutcome] = client.gather(futures)
    seconds = time.monotonic() - started
    failed = sum(o.decision == "failed" for o in outcomes)
    return Pass(len(workers), seconds, load_start, os.getloadavg()[0], failed), outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=12, help="Simulated sites retrained per pass.")
    parser.add_argument("--cluster-workers", type=int, default=64, help="Workers of the projected cluster.")
    parser.add_argument("--rounds", type=int, default=3, help="Measured passes per worker count.")
    parser.add_argument("--max-load", type=float, default=3.0, help="Refuse to measure above this load average.")
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if load_before[0] > args.max_load:
        sys.exit(f"load average {load_before[0]:.1f} is above --max-load {args.max_load:g}: not measuring a busy box")
    os.environ.setdefault("TQDM_DISABLE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    private, public = new_keypair(work / "keys")
    store = FleetStore(path=work / "fleet.sqlite3")
    devices = fill_store(store, args.sites)
    fleet_task_yaml(work / "task.yaml")
    plan_path = fleet_plan_yaml(work / "plan.yaml", site_profiles(args.sites), since=f"{DAYS}d")
    plan, folder = core.load_plan(plan_path)
    everyone, _ = core.select_sites(plan, store, "all")
    passes: list[Pass] = []
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        workers = sorted(client.scheduler_info()["workers"])
        jobs = core.make_jobs(plan, folder, everyone, store, private, work / "first")
        first, outcomes = timed_pass(client, jobs, workers)
        for outcome in outcomes:  # every site runs its first model: the champion of the measured passes
            if outcome.decision == "ship" and outcome.bundle:
                device = devices[outcome.site]
                device.install(read_bundle(Path(outcome.bundle), load_public_key(public)))
                register_bundle(store, Path(outcome.bundle), load_public_key(public))
                assert isinstance(device.reporter, MemoryReporter)
                deliver(store, device.reporter)
        order = [2, 1, 1, 2] * ((args.rounds + 1) // 2)
        for n, count in enumerate(order[: 2 * args.rounds]):
            jobs = core.make_jobs(plan, folder, everyone, store, private, work / f"pass{n}")
            passes.append(timed_pass(client, jobs, workers[:count])[0])
    store.close()
    median = {w: statistics.median(p.seconds for p in passes if p.workers == w) for w in (1, 2)}
    per_site_1 = median[1] / args.sites
    speedup = median[1] / median[2]
    efficiency = min(1.0, speedup / 2)
    projected_s = 1000 * per_site_1 / (args.cluster_workers * efficiency)
    # The same projection for a site model that trains for a minute (a bigger model or more data than here).
    projected_minute_model_s = 1000 * (per_site_1 + 60) / (args.cluster_workers * efficiency)
    payload = {
        "sites": args.sites,
        "days_per_site": DAYS,
        "first_pass_2_workers_s": first.seconds,
        "passes": [asdict(p) for p in passes],
        "median_s": median,
        "sites_per_minute": {w: 60 * args.sites / median[w] for w in (1, 2)},
        "speedup_2_workers": speedup,
        "scaling_efficiency": efficiency,
        "projection": {
            "sites": 1000,
            "cluster_workers": args.cluster_workers,
            "seconds_per_site_1_worker": per_site_1,
            "hours": projected_s / 3600,
            "hours_if_a_site_trains_a_minute_more": projected_minute_model_s / 3600,
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "max_load": args.max_load,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    rows = [
        (p.workers, f"{p.seconds:.1f}", f"{60 * args.sites / p.seconds:.2f}", f"{p.load_start:.1f} -> {p.load_end:.1f}",
         p.failed)
        for p in passes
    ]  # fmt: skip
    intro = (
        f"{args.sites} simulated sites, {DAYS} days of 1 h model-step telemetry each, PyTorch, int8 ONNX export and "
        f"champion/challenger on two warm workers, one or both busy, passes in the order shown; {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.1f} before and {payload['load_average_after'][0]:.1f} after (shared machine). "
        f"Median pass: 1 worker {median[1]:.1f} s, 2 workers {median[2]:.1f} s, {speedup:.2f}x "
        f"(efficiency {efficiency:.0%}). Projected for 1,000 sites on {args.cluster_workers} workers (e.g. 8 "
        f"machines x 8 cores, one worker per core): {projected_s / 60:.1f} min at the {per_site_1:.2f} s per site "
        f"measured here on one worker; {projected_minute_model_s / 3600:.2f} h if each site's model trained a minute "
        f"longer. On this machine's 2 workers: {1000 * median[2] / args.sites / 60:.0f} min."
    )
    benchreport.publish(
        "retrain",
        payload,
        "Fleet retraining throughput (Dask distributed)",
        intro,
        benchreport.markdown_table(("workers", "wall s", "sites/minute", "load average (1 min)", "failed"), rows),
    )


if __name__ == "__main__":
    main()
