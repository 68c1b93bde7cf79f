"""One sweep over the sensor sources per cycle, with one alert latch per sensor concern.

A source that breaks its no-raise contract, or a device it reports as failing, raises one
``sensor-failure`` alert and one ``sensor-recovered`` when it reads again; a channel outside its physical
range raises one ``sensor-out-of-range`` and one ``sensor-back-in-range``. Nothing a source does stops
the sweep: its channels are simply missing from this cycle's values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from edge_agent.alerts import AlertLatch
from edge_agent.health import AgentHealth
from edge_agent.reporting.base import Reporter
from edge_agent.sensors.base import ChannelStatus, Reading, SensorSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    """What one read of every source gave: merged channel values (NaN when unusable) and the readings."""

    values: dict[str, float]
    readings: list[Reading]


class SensorSweeper:
    """Reads every source once per cycle and alerts once per failing source, device or channel."""

    def __init__(self, sources: list[SensorSource], reporter: Reporter, health: AgentHealth) -> None:
        self.sources = sources
        self.health = health
        self.failures = AlertLatch(reporter, "sensor-failure", "sensor-recovered")
        self.out_of_range = AlertLatch(reporter, "sensor-out-of-range", "sensor-back-in-range")

    def read(self) -> Sweep:
        """Read every source once; a source that raises is logged, counted and alerted once."""
        merged: dict[str, float] = {}
        readings: list[Reading] = []
        for source in self.sources:
            name = getattr(source, "name", "?")
            try:
                reading = source.read()
            except Exception as exc:  # a source that breaks its no-raise contract must not stop the loop
                logger.exception("sensor source %s raised", name)
                self.health.sensor_errors += 1
                self.failures.raise_once(f"source:{name}", f"sensor source {name} failed: {exc}")
                continue
            self.failures.clear_once(f"source:{name}", f"sensor source {name} reads again")
            readings.append(reading)
            merged.update(reading.values())
            self._watch_devices(name, reading)
            self._watch_ranges(reading)
        return Sweep(merged, readings)

    def _watch_devices(self, source: str, reading: Reading) -> None:
        self.health.sensor_errors += len(reading.device_errors)
        prefix = f"device:{source}/"
        for device, error in reading.device_errors.items():
            self.failures.raise_once(prefix + device, f"device {device} of source {source} failed: {error}")
        for key in self.failures.raised:
            device = key.removeprefix(prefix)
            if key.startswith(prefix) and device not in reading.device_errors:
                self.failures.clear_once(key, f"device {device} of source {source} answers again")

    def _watch_ranges(self, reading: Reading) -> None:
        flagged = reading.flagged()
        for name, value in reading.channels.items():
            if value.status is ChannelStatus.OUT_OF_RANGE:
                self.out_of_range.raise_once(
                    name,
                    f"{name} {flagged[name]}; the value is kept away from the model",
                    channel=name,
                    value=value.value if math.isfinite(value.value) else None,
                )
            else:
                self.out_of_range.clear_once(name, f"{name} is back within its physical range", channel=name)

    def close(self) -> None:
        """Release every source's connections and files."""
        for source in self.sources:
            source.close()
