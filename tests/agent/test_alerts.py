"""Alert latches alone, and the sensor sweep's latches per concern (no model, no Modbus, no MQTT)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edge_agent.alerts import AlertLatch
from edge_agent.features import ChannelSpec
from edge_agent.health import AgentHealth
from edge_agent.ranges import PlausibleRange
from edge_agent.reporting.base import MemoryReporter
from edge_agent.sensing import SensorSweeper
from edge_agent.sensors.base import ChannelValue, Reading, checked_value
from edge_agent.sensors.replay import ReplayConfig, ReplaySource


def _codes(reporter: MemoryReporter) -> list[str]:
    return [alert.code for alert in reporter.of_kind("alert")]  # type: ignore[attr-defined]


def test_a_latch_raises_once_and_clears_once_per_key() -> None:
    reporter = MemoryReporter()
    latch = AlertLatch(reporter, "thing-broken", "thing-fixed", severity="critical")
    assert latch.raise_once("a", "a broke", channel="a", value=3.0, threshold=2.0)
    assert not latch.raise_once("a", "a still broken")
    assert latch.raise_once("b", "b broke")
    assert not latch.clear_once("c", "c was never raised")
    assert latch.raised == {"a", "b"}
    assert latch.clear_once("a", "a fixed")
    assert not latch.clear_once("a", "a still fixed")
    assert latch.raise_once("a", "a broke again")
    assert _codes(reporter) == ["thing-broken", "thing-broken", "thing-fixed", "thing-broken"]
    first, _, cleared, _ = reporter.of_kind("alert")
    assert (first.severity, first.channel, first.value, first.threshold) == ("critical", "a", 3.0, 2.0)  # type: ignore[attr-defined]
    assert cleared.severity == "info" and cleared.message == "a fixed"  # type: ignore[attr-defined]


class ScriptedSource:
    """A source that plays back the outcomes a test scripts: a Reading, or an exception to raise."""

    def __init__(self, name: str, outcomes: list[Reading | Exception]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.closed = False

    def channels(self) -> list[ChannelSpec]:
        return []

    def read(self) -> Reading:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def close(self) -> None:
        self.closed = True


def _gateway(errors: dict[str, str]) -> Reading:
    plausible = PlausibleRange(min_value=45.0, max_value=65.0)
    frequency = checked_value(math.nan if errors else 50.0, "Hz", plausible, 0.0, "timeout")
    return Reading("gateway", 0.0, {"gateway.frequency": frequency}, errors)


def test_each_sensor_concern_keeps_its_own_latch_across_sources(tmp_path: Path, make_clock: Any) -> None:
    """A healthy source read after a failing one must not make the failure alert again (the old bug)."""
    csv = tmp_path / "cabinet.csv"
    temperatures = [95.0, 96.0, 97.0, 98.0, 99.0, 35.0, 36.0, 37.0]
    csv.write_text(
        "timestamp_utc,temperature\n"
        + "\n".join(f"2026-01-01T00:{i:02d}:00+00:00,{t}" for i, t in enumerate(temperatures))
        + "\n"
    )
    config = ReplayConfig.model_validate(
        {
            "type": "replay",
            "name": "cabinet",
            "path": str(csv),
            "channels": [{"name": "temperature", "column": "temperature", "min_value": -20, "max_value": 70}],
        }
    )
    replay_clock = make_clock()
    cabinet = ReplaySource(config, clock=replay_clock)
    raising = ScriptedSource("meter", [ConnectionError("bus down")] * 5 + [Reading("meter", 0.0, {})] * 3)
    gateway = ScriptedSource("gateway", [_gateway({"rtu-7": "no response"})] * 5 + [_gateway({})] * 3)
    health = AgentHealth()
    reporter = MemoryReporter()
    sweeper = SensorSweeper([raising, cabinet, gateway], reporter, health)  # type: ignore[list-item]

    for minute in range(5):
        replay_clock.now = minute * 60.0
        sweep = sweeper.read()
        assert math.isnan(sweep.values["cabinet.temperature"]) and "meter" not in {r.source for r in sweep.readings}
    assert _codes(reporter) == ["sensor-failure", "sensor-out-of-range", "sensor-failure"]
    assert health.sensor_errors == 10  # five raises, five device errors
    for minute in range(5, 8):
        replay_clock.now = minute * 60.0
        sweep = sweeper.read()
    assert sweep.values == {"cabinet.temperature": 37.0, "gateway.frequency": 50.0}
    assert _codes(reporter)[3:] == ["sensor-recovered", "sensor-back-in-range", "sensor-recovered"]
    messages = [alert.message for alert in reporter.of_kind("alert")]  # type: ignore[attr-defined]
    assert messages[0] == "sensor source meter failed: bus down"
    assert messages[2] == "device rtu-7 of source gateway failed: no response"
    assert "99" not in messages[1] and "95 is above the physical maximum 70" in messages[1]
    sweeper.close()
    assert raising.closed and gateway.closed


def test_an_out_of_range_value_is_reported_but_kept_from_the_model() -> None:
    status = checked_value(120.0, "C", PlausibleRange(max_value=70.0), 0.0).status
    hot = ChannelValue(120.0, "C", status, "120 C is above 70", 0.0)
    reporter = MemoryReporter()
    sweeper = SensorSweeper([ScriptedSource("box", [Reading("box", 0.0, {"box.t": hot})])], reporter, AgentHealth())  # type: ignore[list-item]
    sweep = sweeper.read()
    assert math.isnan(sweep.values["box.t"])
    (alert,) = reporter.of_kind("alert")
    assert alert.channel == "box.t" and alert.value == 120.0  # type: ignore[attr-defined]
