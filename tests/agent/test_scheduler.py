"""The loop scheduler alone: cadence on the monotonic clock, overruns, max_cycles, stop, SIGTERM."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable

from edge_agent.config import LoopSection
from edge_agent.health import AgentHealth
from edge_agent.scheduler import LoopScheduler


def _counting(
    health: AgentHealth, work_s: float = 0.0, fail_on: int | None = None
) -> tuple[list[float], Callable[[], None]]:
    started: list[float] = []

    def cycle() -> None:
        started.append(time.monotonic())
        health.cycles += 1
        if health.cycles == fail_on:
            raise RuntimeError("a bug in one cycle")
        time.sleep(work_s)

    return started, cycle


def test_cycles_keep_the_cadence_grid_and_stop_at_max_cycles() -> None:
    health = AgentHealth()
    started, cycle = _counting(health, work_s=0.03, fail_on=3)
    LoopScheduler(LoopSection(cadence_s=0.05, max_cycles=6), health).run(cycle)
    assert health.cycles == 6 and health.overruns == 0  # the failing third cycle did not stop the loop
    offsets = [t - started[0] for t in started]
    assert all(offset >= k * 0.05 - 0.005 for k, offset in enumerate(offsets)), offsets  # never early
    # On the grid the sixth cycle starts at 0.25 s; sleeping a full cadence after each 0.03 s of work
    # (drift) would start it at 0.40 s. The margin absorbs a busy machine's late wake-ups.
    assert offsets[-1] < 0.37, offsets


def test_a_cycle_longer_than_the_cadence_counts_overruns_instead_of_bunching_up() -> None:
    health = AgentHealth()
    started, cycle = _counting(health, work_s=0.12)
    LoopScheduler(LoopSection(cadence_s=0.05, max_cycles=4), health).run(cycle)
    assert health.overruns >= 6  # each 0.12 s cycle misses two 0.05 s slots
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert all(gap >= 0.12 for gap in gaps), gaps


def test_stop_from_another_thread_ends_the_loop_after_the_current_cycle() -> None:
    health = AgentHealth()
    _, cycle = _counting(health)
    scheduler = LoopScheduler(LoopSection(cadence_s=0.02), health)
    threading.Timer(0.2, scheduler.stop).start()
    runner = threading.Thread(target=scheduler.run, args=(cycle,))
    runner.start()
    runner.join(5)
    assert not runner.is_alive() and health.cycles >= 3


def test_sigterm_stops_the_loop_and_the_default_handler_comes_back() -> None:
    health = AgentHealth()
    _, cycle = _counting(health)
    scheduler = LoopScheduler(LoopSection(cadence_s=0.02, max_cycles=10_000), health)
    threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
    scheduler.run(cycle)
    assert scheduler.stop_event.is_set() and 3 <= health.cycles < 10_000
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
