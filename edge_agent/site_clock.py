"""The time that labels a sweep of readings: the device clock, a clock a sensor serves, or the readings' own.

A site controller often keeps better time than a device without RTC or network: ``clock.source: sensor``
takes UTC seconds from one of its channels. A garbled or unreadable clock register must not throw the
window into another period (or another year), so implausible values are ignored and the last good site
time is carried forward on the monotonic clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from edge_agent.config import ClockSection
from edge_agent.sensing import Sweep

logger = logging.getLogger(__name__)


class SiteClock:
    """Labels each sweep with a UTC time, following ``settings`` (replaced on a config reload)."""

    def __init__(
        self,
        settings: ClockSection,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._last_good: tuple[float, float] | None = None  # (site time, monotonic time it was read at)

    def time_of(self, sweep: Sweep) -> float:
        """UTC seconds for this sweep."""
        if self.settings.source == "reading" and sweep.readings:
            return sweep.readings[0].timestamp
        if self.settings.source != "sensor":
            return self._wall_clock()
        assert self.settings.channel is not None
        stamp = sweep.values.get(self.settings.channel, math.nan)
        now = self._monotonic()
        if math.isfinite(stamp) and stamp > 0 and self._plausible(stamp):
            self._last_good = (stamp, now)
            return stamp
        if self._last_good is None:
            logger.warning("clock channel %s unreadable; using the device clock", self.settings.channel)
            return self._wall_clock()
        stamp, read_at = self._last_good
        return stamp + (now - read_at)

    def _plausible(self, stamp: float) -> bool:
        """A site clock may not run backwards nor jump further ahead than ``max_jump_s``."""
        if self._last_good is None:
            return True
        last, _ = self._last_good
        plausible = last <= stamp <= last + self.settings.max_jump_s
        if not plausible:
            logger.warning("ignoring implausible site clock %.0f (last good %.0f)", stamp, last)
        return plausible
