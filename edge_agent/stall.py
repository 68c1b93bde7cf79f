"""A site that stopped receiving sample periods is not "online": one alert, and a ``decisions`` health reason.

Every way the window can starve (a clock that labels every sweep with a rejected time, a sensor that
never answers, a model that cannot decide) ends in the same symptom: no sample period closes. Watching
that one symptom catches them all, including the ones nobody thought of yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_agent.alerts import AlertLatch
from edge_agent.health import HealthReasons
from edge_agent.reporting.base import Reporter

STALL_KEY = "decisions"  # the alert key and the health concern


class DecisionStallWatch:
    """Raises ``decisions-stalled`` once when no sample period closed for ``limit_s``, clears on progress.

    While stalled, :meth:`reason` is set as the ``decisions`` concern of ``reasons``, so the device's
    status turns "degraded" with it.
    """

    def __init__(
        self,
        reporter: Reporter,
        limit_s: float,
        reasons: HealthReasons | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_s = limit_s
        self.reasons = reasons or HealthReasons()
        self._monotonic = monotonic
        self._last_progress = monotonic()
        self._reason: str | None = None
        self.latch = AlertLatch(reporter, "decisions-stalled", "decisions-resumed", severity="critical")

    def progress(self) -> None:
        """A sample period closed into the window (or a decision was made)."""
        self._last_progress = self._monotonic()
        if self._reason is not None:
            self._reason = None
            self.reasons.clear(STALL_KEY)
            self.latch.clear_once(STALL_KEY, "sample periods close again; decisions resume")

    def check(self, context: str) -> None:
        """Alert once when stalled; ``context`` (e.g. the clock's rejected readings) goes into the reason."""
        silent = self._monotonic() - self._last_progress
        if silent <= self.limit_s:
            return
        self._reason = f"no sample period for {silent:.0f} s (limit {self.limit_s:g} s)" + (
            f"; {context}" if context else ""
        )
        self.reasons.set(STALL_KEY, self._reason)
        self.latch.raise_once(STALL_KEY, f"the site makes no decisions: {self._reason}")

    def reason(self) -> str | None:
        """Why the site is degraded by a stall, None when sample periods arrive."""
        return self._reason
