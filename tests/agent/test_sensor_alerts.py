"""Each sensor concern owns its alert latch: with several sources, one alert per fault and one clear.

Three sources feed one agent: the inverter replay the W3 model reads, a second replay whose temperature
channel starts outside its physical range, and a source that fails (raising, or answering with device
errors) until the test heals it. A healthy source must never reset the latch of another concern.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.features import ChannelSpec
from edge_agent.reporting.base import MemoryReporter
from edge_agent.sensors.base import Reading, checked_value
from edge_agent.sensors.replay import ReplayConfig, ReplaySource

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PERIOD = 900
FAULTY_CYCLES = 6


class FailingSource:
    """A sensor source that fails until healed: by raising (breaking its contract) or with a device error."""

    name = "gateway"

    def __init__(self, how: Literal["raises", "device-errors"]) -> None:
        self.how = how
        self.healthy = False

    def channels(self) -> list[ChannelSpec]:
        return [ChannelSpec(name="gateway.frequency", unit="Hz", min_value=45.0, max_value=65.0)]

    def read(self) -> Reading:
        if self.healthy:
            value = checked_value(50.0, "Hz", self.channels()[0], 0.0)
            return Reading(self.name, 0.0, {"gateway.frequency": value})
        if self.how == "raises":
            raise ConnectionError("gateway unreachable")
        missing = checked_value(math.nan, "Hz", self.channels()[0], 0.0, "timeout")
        return Reading(self.name, 0.0, {"gateway.frequency": missing}, {"gateway": "no response in 0.3 s"})

    def close(self) -> None:
        """Nothing to release."""


def _replay(name: str, path: Path, column: str, channel: str, **limits: float) -> ReplayConfig:
    return ReplayConfig.model_validate(
        {"type": "replay", "name": name, "path": str(path), "channels": [{"name": channel, "column": column, **limits}]}
    )


@pytest.mark.parametrize("how", ["raises", "device-errors"])
def test_a_failing_source_and_an_out_of_range_channel_alert_once_each_and_clear_once(
    tmp_path: Path, exported: Any, anomaly_bundle: Path, make_clock: Any, how: Literal["raises", "device-errors"]
) -> None:
    inverter = _replay("inv", REPO / "data" / "w3_inv7539_outliers.csv", "value_normalized", "ac_power_pu")
    cabinet_csv = tmp_path / "cabinet.csv"
    start = datetime(2017, 4, 10, 19, 15, tzinfo=UTC)  # the inverter series' first sample
    rows = [
        f"{(start + timedelta(seconds=i * PERIOD)).isoformat()},{95.0 if i < FAULTY_CYCLES else 35.0}"
        for i in range(40)
    ]
    cabinet_csv.write_text("timestamp_utc,temperature\n" + "\n".join(rows) + "\n")
    cabinet = _replay("cabinet", cabinet_csv, "temperature", "temperature", min_value=-20.0, max_value=70.0)
    config = AgentConfig.model_validate(
        {
            "site": "alert-site",
            "device": "ctrl-1",
            "state_dir": str(tmp_path / "state"),
            "bundle": {"path": str(anomaly_bundle), "public_key": str(exported.keys / "bundle-signing.pub")},
            "runtime": {"type": "litert"},
            "sensors": [inverter.model_dump(mode="json"), cabinet.model_dump(mode="json")],
            "channels": {"ac_power_pu": "inv.ac_power_pu"},
            "clock": {"source": "reading"},
        }
    )
    clock = make_clock()
    failing = FailingSource(how)
    sources = [ReplaySource(inverter, clock=clock), ReplaySource(cabinet, clock=clock), failing]
    reporter = MemoryReporter()
    agent = Agent(config, reporter, sources=sources)  # type: ignore[arg-type]
    agent.start()
    for _ in range(FAULTY_CYCLES):
        agent.cycle()
        clock.now += PERIOD
    failing.healthy = True
    for _ in range(FAULTY_CYCLES):
        agent.cycle()
        clock.now += PERIOD
    agent.close()

    codes = [a.code for a in reporter.of_kind("alert") if a.code.startswith("sensor-")]
    assert codes.count("sensor-failure") == 1, codes
    assert codes.count("sensor-out-of-range") == 1, codes
    assert codes.count("sensor-recovered") == 1, codes
    assert codes.count("sensor-back-in-range") == 1, codes
    assert codes.index("sensor-failure") < codes.index("sensor-recovered")
    assert codes.index("sensor-out-of-range") < codes.index("sensor-back-in-range")
    out_of_range = next(a for a in reporter.of_kind("alert") if a.code == "sensor-out-of-range")
    assert out_of_range.channel == "cabinet.temperature" and out_of_range.value == 95.0
