"""The sensor-source protocol and the reading it returns.

A reading never raises for a bad sensor: a device that times out, answers with an exception or sends
nonsense yields channels marked ``missing`` or ``out_of_range`` plus a per-device error, so one broken
device cannot stop the agent's loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from edge_agent.features import ChannelSpec
from edge_agent.ranges import PlausibleRange

MISSING = math.nan


class ChannelStatus(StrEnum):
    """Whether a channel's value can be fed to a model."""

    OK = "ok"
    MISSING = "missing"
    OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True, slots=True)
class ChannelValue:
    """One channel's value in engineering units, with its status and the UTC time it was sampled.

    ``value`` is NaN when the channel is missing; when it is out of range it keeps the decoded number so
    a technician can see what the device sent, but :meth:`Reading.values` hides it from the model.
    """

    value: float
    unit: str
    status: ChannelStatus = ChannelStatus.OK
    detail: str = ""
    timestamp: float = MISSING

    @property
    def usable(self) -> bool:
        """True when the value may be fed to a model."""
        return self.status is ChannelStatus.OK and math.isfinite(self.value)


@dataclass(frozen=True, slots=True)
class Reading:
    """The result of one read of a source: per-channel values, per-device errors, timestamps (UTC s)."""

    source: str
    timestamp: float
    channels: Mapping[str, ChannelValue]
    device_errors: Mapping[str, str] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        """Channel values for the model: NaN for every channel that is missing or out of range."""
        return {name: (cv.value if cv.usable else MISSING) for name, cv in self.channels.items()}

    def units(self) -> dict[str, str]:
        """Unit of every channel."""
        return {name: cv.unit for name, cv in self.channels.items()}

    def flagged(self) -> dict[str, str]:
        """Channels that are not usable, with the reason (status and detail)."""
        return {
            name: f"{cv.status.value}: {cv.detail}" if cv.detail else cv.status.value
            for name, cv in self.channels.items()
            if not cv.usable
        }


def checked_value(
    value: float,
    unit: str,
    plausible: PlausibleRange,
    timestamp: float,
    missing_reason: str = "no value",
) -> ChannelValue:
    """A channel value with its status: missing when not finite, flagged when outside the physical range."""
    if not math.isfinite(value):
        return ChannelValue(MISSING, unit, ChannelStatus.MISSING, missing_reason, timestamp)
    violation = plausible.violation(value)
    if violation:
        detail = f"{value:g} {unit}".strip() + f" is {violation}"
        return ChannelValue(value, unit, ChannelStatus.OUT_OF_RANGE, detail, timestamp)
    return ChannelValue(value, unit, ChannelStatus.OK, "", timestamp)


@runtime_checkable
class SensorSource(Protocol):
    """What the agent needs from any source of measurements.

    ``read`` must return within a bounded time and must not raise for a failing device: it reports the
    failure in the reading instead. ``close`` releases connections and files; calling it twice is fine.
    """

    name: str

    def channels(self) -> list[ChannelSpec]:
        """The channels this source produces, with units and physical ranges."""
        ...

    def read(self) -> Reading:
        """Read every channel once."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
