"""The loop's cadence: cycles on the monotonic clock, overruns counted, systemd pinged, SIGTERM honoured.

Cycles are scheduled on a fixed grid (no drift). A cycle that overruns its slot makes the next ones start
on the grid again: missed slots are counted as overruns, never bunched up. Nothing a cycle raises stops
the loop; the log keeps the trace.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from edge_agent.config import LoopSection
from edge_agent.health import AgentHealth
from edge_agent.systemd import notify

logger = logging.getLogger(__name__)


class LoopScheduler:
    """Runs a cycle at ``settings.cadence_s`` until :meth:`stop`, SIGTERM/SIGINT or ``settings.max_cycles``."""

    def __init__(self, settings: LoopSection, health: AgentHealth) -> None:
        self.settings = settings
        self.health = health
        self.stop_event = threading.Event()

    def run(self, cycle: Callable[[], object]) -> None:
        """Call ``cycle`` on the cadence grid, ping the systemd watchdog after each call."""
        installed = self._install_signal_handlers()
        next_tick = time.monotonic()
        try:
            while not self.stop_event.is_set():
                try:
                    cycle()
                except Exception:  # the loop must outlive any bug in one cycle; the log keeps the trace
                    logger.exception("cycle %d failed", self.health.cycles)
                notify("WATCHDOG=1")
                if self.settings.max_cycles and self.health.cycles >= self.settings.max_cycles:
                    break
                cadence = self.settings.cadence_s
                next_tick += cadence
                now = time.monotonic()
                if now > next_tick:
                    missed = int((now - next_tick) // cadence) + 1
                    self.health.overruns += missed
                    next_tick += missed * cadence
                self.stop_event.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            if installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)

    def stop(self) -> None:
        """Finish after the current cycle."""
        self.stop_event.set()

    def _install_signal_handlers(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False

        def stop(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: stopping after this cycle", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        return True
