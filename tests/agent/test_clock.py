"""The site clock alone: which time labels a sweep, and how an unreadable or garbled site clock is handled."""

from __future__ import annotations

import math
from typing import Any

import pytest

from edge_agent.config import ClockSection
from edge_agent.sensing import Sweep
from edge_agent.sensors.base import Reading
from edge_agent.site_clock import SiteClock

DEVICE_NOW = 1_800_000_000.0


def _sweep(clock_value: float | None = None, reading_ts: float | None = None) -> Sweep:
    values = {} if clock_value is None else {"plc.utc": clock_value}
    readings = [] if reading_ts is None else [Reading("replay", reading_ts, {})]
    return Sweep(values, readings)


def test_system_clock_is_the_device_clock() -> None:
    clock = SiteClock(ClockSection(), wall_clock=lambda: DEVICE_NOW)
    assert clock.time_of(_sweep(clock_value=5.0, reading_ts=7.0)) == DEVICE_NOW


def test_reading_clock_is_the_first_readings_stamp_else_the_device_clock() -> None:
    clock = SiteClock(ClockSection(source="reading"), wall_clock=lambda: DEVICE_NOW)
    assert clock.time_of(_sweep(reading_ts=1_500_000_000.0)) == 1_500_000_000.0
    assert clock.time_of(_sweep()) == DEVICE_NOW


def test_sensor_clock_carries_the_last_good_time_over_garbled_and_missing_values(make_clock: Any) -> None:
    monotonic = make_clock(100.0)
    clock = SiteClock(ClockSection(source="sensor", channel="plc.utc", max_jump_s=3600), lambda: DEVICE_NOW, monotonic)
    assert clock.time_of(_sweep(math.nan)) == DEVICE_NOW  # nothing good yet: the device clock
    assert clock.time_of(_sweep(1_600_000_000.0)) == 1_600_000_000.0
    monotonic.now += 10
    assert clock.time_of(_sweep(1_600_000_000.0 - 60)) == 1_600_000_010.0  # backwards: ignored
    monotonic.now += 10
    assert clock.time_of(_sweep(1_600_000_000.0 + 86_400)) == 1_600_000_020.0  # a day ahead: ignored
    monotonic.now += 10
    assert clock.time_of(_sweep(math.nan)) == 1_600_000_030.0  # unreadable: carried forward
    assert clock.time_of(_sweep(1_600_000_031.0)) == 1_600_000_031.0


def test_a_reloaded_clock_setting_applies_from_the_next_sweep() -> None:
    clock = SiteClock(ClockSection(), wall_clock=lambda: DEVICE_NOW)
    clock.settings = ClockSection(source="reading")
    assert clock.time_of(_sweep(reading_ts=42.0)) == 42.0


def test_sensor_clock_needs_its_channel() -> None:
    with pytest.raises(ValueError, match=r"clock\.source 'sensor' needs clock\.channel"):
        ClockSection(source="sensor")


GARBAGE_2038 = 2_147_450_879.0  # 0x7FFF7FFF: a meter's first clock word pair before its RTC settled


def test_a_garbage_first_clock_reading_does_not_anchor_the_site_clock(make_clock: Any) -> None:
    """Issue 12 item 6: a year-2038 first reading made every real reading after it "implausible"."""
    monotonic = make_clock(100.0)
    settings = ClockSection(source="sensor", channel="plc.utc", confirm_readings=3)
    clock = SiteClock(settings, lambda: 1_500_000_000.0, monotonic)
    assert clock.time_of(_sweep(GARBAGE_2038)) == GARBAGE_2038
    real = 1_170_000_000.0  # the site's real time (2007: the simulated household), far from the device clock
    for step in range(2):
        monotonic.now += 1
        assert clock.time_of(_sweep(real + step)) == GARBAGE_2038 + step + 1  # not yet confirmed: carried
    assert not clock.take_step()
    monotonic.now += 1
    assert clock.time_of(_sweep(real + 2)) == real + 2  # three consistent readings: re-acquired
    assert clock.take_step() and not clock.take_step()
    monotonic.now += 1
    assert clock.time_of(_sweep(real + 3)) == real + 3
    assert clock.rejected == 2


def test_a_reading_that_agrees_with_the_device_clock_replaces_a_lock_that_does_not(make_clock: Any) -> None:
    monotonic = make_clock(100.0)
    clock = SiteClock(ClockSection(source="sensor", channel="plc.utc"), lambda: DEVICE_NOW, monotonic)
    assert clock.time_of(_sweep(GARBAGE_2038)) == GARBAGE_2038
    monotonic.now += 1
    assert clock.time_of(_sweep(DEVICE_NOW + 1)) == DEVICE_NOW + 1  # the system clock is a reference
    assert clock.take_step()


def test_one_outlier_does_not_move_a_confirmed_clock(make_clock: Any) -> None:
    monotonic = make_clock(100.0)
    clock = SiteClock(
        ClockSection(source="sensor", channel="plc.utc", confirm_readings=2), lambda: DEVICE_NOW, monotonic
    )
    clock.time_of(_sweep(1_600_000_000.0))
    for garbage in (GARBAGE_2038, 1_000.0, GARBAGE_2038 - 5e8):  # inconsistent with each other
        monotonic.now += 1
        assert clock.time_of(_sweep(garbage)) == 1_600_000_000.0 + monotonic.now - 100.0
    assert not clock.take_step()
