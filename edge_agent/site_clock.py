"""The time that labels a sweep of readings: the device clock, a clock a sensor serves, or the readings' own.

A site controller often keeps better time than a device without RTC or network: ``clock.source: sensor``
takes UTC seconds from one of its channels. A garbled or unreadable clock register must not throw the
window into another period (or another year), so implausible values are ignored and the last good site
time is carried forward on the monotonic clock.

Nor may one garbled reading anchor the clock for good (a meter answered 2038 once, before its RTC settled,
and every real reading after it was refused): the clock re-acquires when ``confirm_readings`` readings in a
row agree with each other but not with the time in use, and at once when a reading agrees with the device
clock while the time in use does not. Values outside the clock register's range never get here (the
register map hides them from every consumer). A re-acquisition is a step that the window must follow:
:meth:`SiteClock.take_step` says when one happened.
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
        self._candidate: tuple[float, int] | None = None  # (newest disagreeing reading, readings in a row)
        self._stepped = False
        self.rejected = 0

    def time_of(self, sweep: Sweep) -> float:
        """UTC seconds for this sweep."""
        if self.settings.source == "reading" and sweep.readings:
            return sweep.readings[0].timestamp
        if self.settings.source != "sensor":
            return self._wall_clock()
        assert self.settings.channel is not None
        stamp = sweep.values.get(self.settings.channel, math.nan)
        now = self._monotonic()
        if math.isfinite(stamp) and stamp > 0 and (self._plausible(stamp) or self._reacquired(stamp, now)):
            self._last_good = (stamp, now)
            return stamp
        if self._last_good is None:
            logger.warning("clock channel %s unreadable; using the device clock", self.settings.channel)
            return self._wall_clock()
        return self._carried(now)

    def take_step(self) -> bool:
        """True once after the clock re-acquired (the sample periods must restart from the new time)."""
        stepped, self._stepped = self._stepped, False
        return stepped

    def _carried(self, now: float) -> float:
        assert self._last_good is not None
        stamp, read_at = self._last_good
        return stamp + (now - read_at)

    def _follows(self, stamp: float, last: float) -> bool:
        """A site clock may not run backwards nor jump further ahead than ``max_jump_s``."""
        return last <= stamp <= last + self.settings.max_jump_s

    def _plausible(self, stamp: float) -> bool:
        if self._last_good is None:
            return True
        if self._follows(stamp, self._last_good[0]):
            self._candidate = None
            return True
        return False

    def _near_device_clock(self, stamp: float) -> bool:
        return abs(stamp - self._wall_clock()) <= self.settings.max_jump_s

    def _reacquired(self, stamp: float, now: float) -> bool:
        """Count a reading that disagrees with the time in use; True when it replaces that time."""
        in_row = 1
        if self._candidate is not None and self._follows(stamp, self._candidate[0]):
            in_row = self._candidate[1] + 1
        self._candidate = (stamp, in_row)
        confirmed = in_row >= self.settings.confirm_readings or (
            self._near_device_clock(stamp) and not self._near_device_clock(self._carried(now))
        )
        if not confirmed:
            self.rejected += 1
            logger.warning(
                "ignoring implausible site clock %.0f (in use %.0f; %d of %d readings to re-acquire)",
                stamp,
                self._carried(now),
                in_row,
                self.settings.confirm_readings,
            )
            return False
        logger.warning("site clock re-acquired at %.0f (was %.0f)", stamp, self._carried(now))
        self._candidate = None
        self._stepped = True
        return True
