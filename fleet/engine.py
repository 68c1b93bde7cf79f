"""Per-site jobs on Dask distributed: a LocalCluster by default, a scheduler address for a real cluster.

Why Dask rather than Ray: it is pure Python (distributed, tornado, msgpack, cloudpickle: a few MB, no
compiled object store or raylet), starts a local cluster of worker processes in a second or two, and
its scheduler is a single process a fleet team can run next to the receiver; Ray's wheels are ~60 MB per
platform with a C++ core, which is weight this workload (independent jobs of seconds to minutes) does
not need. Each job returns its outcome; an exception inside a job is caught there (see
:func:`gridedge.fleet.retrain.run_site`) and a job lost with its worker is reported as failed, so one
site never stops the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import GridedgeError, missing_extra
from gridedge.fleet.retrain import SiteJob, SiteOutcome, run_site

Progress = Callable[[str, str], None]  # (site, state)
POLL_S = 0.3


@dataclass(frozen=True)
class EngineInfo:
    """What ran the jobs, for the report."""

    scheduler: str
    workers: int
    dask_version: str

    def describe(self) -> str:
        return f"dask {self.dask_version}, {self.workers} worker(s) at {self.scheduler}"


def _client(scheduler: str | None, workers: int) -> tuple[Any, Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise missing_extra("distributed", "fleet") from exc
    if scheduler is not None:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as exc:
            raise GridedgeError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); check --scheduler") from exc
    # One thread per worker process: each job trains with its own intra-op threads (training.threads).
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    return Client(cluster), cluster


def run_jobs(
    jobs: Sequence[SiteJob], scheduler: str | None = None, workers: int = 2, progress: Progress | None = None
) -> tuple[list[SiteOutcome], EngineInfo]:
    """Run every job; outcomes in job order. ``progress(site, state)`` hears queued/running/done/failed."""
    import distributed

    client, cluster = _client(scheduler, workers)
    notify = progress or (lambda _site, _state: None)
    try:
        info = EngineInfo(client.scheduler.address, len(client.scheduler_info()["workers"]), distributed.__version__)
        futures = {
            client.submit(run_site, job, key=f"retrain-{job.site}-{time.time_ns()}", pure=False): job for job in jobs
        }
        for job in jobs:
            notify(job.site, "queued")
        outcomes: dict[str, SiteOutcome] = {}
        pending = set(futures)
        running: set[str] = set()
        while pending:
            done = {future for future in pending if future.done()}
            pending -= done
            for future in done:
                job = futures[future]
                outcomes[job.site] = _outcome(future, job)
                notify(job.site, outcomes[job.site].decision)
            keys = {key for keys in client.processing().values() for key in keys}
            for future in pending:
                site = futures[future].site
                if future.key in keys and site not in running:
                    running.add(site)
                    notify(site, "running")
            if pending:
                time.sleep(POLL_S)
        return [outcomes[job.site] for job in jobs], info
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _outcome(future: Any, job: SiteJob) -> SiteOutcome:
    """The job's own outcome, or a failed one when the job could not run (its worker died, say)."""
    try:
        outcome: SiteOutcome = future.result()
        return outcome
    except Exception as exc:  # the engine lost the job: still one row of the report
        return SiteOutcome(job.site, job.device, "failed", f"job lost by the engine: {type(exc).__name__}: {exc}"[:300],
                           champion=job.running)  # fmt: skip
