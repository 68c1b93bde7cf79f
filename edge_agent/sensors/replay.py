"""Replay of recorded measurements (CSV, CSV.gz or Parquet) as a sensor source, optionally accelerated.

Each read returns the latest sample at or before the replay clock, which runs ``speed`` times faster
than the wall clock from the chosen start: a meter reports its last measurement, it does not
interpolate. Readings carry the data's own UTC timestamps so windows and calendar features see the
recorded time. CSV goes through :mod:`edge_agent.csvseries` (numpy only); Parquet needs pyarrow, which
comes with the ``train`` extra.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from edge_agent.csvseries import read_csv_series
from edge_agent.errors import ConfigError, FeatureError, missing_extra
from edge_agent.features import ChannelSpec
from edge_agent.ranges import PlausibleRange
from edge_agent.sensors.base import MISSING, ChannelStatus, ChannelValue, Reading, checked_value
from edge_agent.yamlconfig import StrictModel

REPLAY_KEY = "replay"


class ReplayChannelConfig(PlausibleRange, frozen=True):
    """One replayed channel: which column, its unit, scale and physical range."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", title="Channel name")
    """Name of the channel; the reading calls it '<source name>.<name>'."""
    column: str = Field(min_length=1, title="Column")
    """Column of the file holding the values."""
    unit: str = Field(default="", title="Unit")
    """Unit after scaling."""
    scale: float = Field(default=1.0, title="Scale")
    """Multiplier, e.g. 1000 to turn kW into W."""


class ReplayConfig(StrictModel, frozen=True):
    """Replays a recorded file as if its channels were read live."""

    type: Literal["replay"] = Field(title="Type")
    """Selects the replay source."""
    name: str = Field(default="replay", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", title="Name")
    """Name of this source and prefix of its channels."""
    path: Path = Field(title="File")
    """CSV/CSV.gz whose first column is 'timestamp_utc' or 'timestamp', or a Parquet file; relative to the config
    file."""
    timestamp_column: str | None = Field(default=None, title="Timestamp column")
    """Parquet only: the time column (default: the first timestamp-typed column)."""
    naive_utc_offset_s: int | None = Field(
        default=None, ge=-14 * 3600, le=14 * 3600, title="Offset of naive timestamps (s)"
    )
    """For timestamps without a zone: their offset from UTC (3600 for CET); ignored otherwise."""
    channels: list[ReplayChannelConfig] = Field(min_length=1, title="Channels")
    """The columns to replay."""
    speed: float = Field(default=1.0, gt=0, title="Speed")
    """Time acceleration: 60 replays one minute of data per second."""
    start: datetime | None = Field(default=None, title="Start")
    """Data time to start from (ISO 8601, naive means UTC); the first sample when omitted."""
    at_end: Literal["stop", "loop"] = Field(default="stop", title="At the end")
    """stop: channels go missing after the last sample; loop: start over."""

    @model_validator(mode="after")
    def _unique_channels(self) -> ReplayConfig:
        names = [channel.name for channel in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"replay channel names must be unique, got {names}")
        return self


def load_table(
    path: Path, timestamp_column: str | None = None, naive_utc_offset_s: int | None = None
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float32]]]:
    """Read a CSV or Parquet file into (UTC epoch seconds, {column: float32 values})."""
    if path.suffix == ".parquet":
        return _read_parquet(path, timestamp_column, naive_utc_offset_s)
    try:
        return read_csv_series(path, naive_utc_offset_s)
    except OSError as exc:
        raise ConfigError(f"cannot read replay file {path}: {exc}; check 'path' in the sensor config") from exc


def _read_parquet(
    path: Path, timestamp_column: str | None, naive_utc_offset_s: int | None
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float32]]]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise missing_extra("pyarrow", "train") from exc
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"cannot read replay file {path}: {exc}") from exc
    time_columns = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
    name = timestamp_column or (time_columns[0] if time_columns else None)
    if name is None or name not in table.column_names:
        raise ConfigError(
            f"{path}: no timestamp column {timestamp_column or ''!r} (timestamp columns: {time_columns}); "
            "set timestamp_column"
        )
    stamps = table.column(name)
    if not pa.types.is_timestamp(stamps.type):
        raise ConfigError(f"{path}: column {name!r} is {stamps.type}, not a timestamp; set timestamp_column")
    seconds = pc.cast(stamps, pa.timestamp("s", tz=stamps.type.tz)).cast(pa.int64())
    times = seconds.to_numpy(zero_copy_only=False).astype(np.int64)
    if stamps.type.tz is None:
        if naive_utc_offset_s is None:
            raise ConfigError(
                f"{path}: timestamps in {name!r} have no zone; set naive_utc_offset_s (3600 for CET, 0 for UTC)"
            )
        times = times - naive_utc_offset_s
    columns = {
        column: table.column(column).to_numpy(zero_copy_only=False).astype(np.float32)
        for column, kind in zip(table.column_names, table.schema.types, strict=True)
        if column != name and (pa.types.is_floating(kind) or pa.types.is_integer(kind))
    }
    return times, columns


class ReplaySource:
    """Plays a recorded file back, ``speed`` times faster than real time."""

    def __init__(
        self, config: ReplayConfig, base_dir: Path | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = config.name
        self.config = config
        path = config.path if config.path.is_absolute() or base_dir is None else base_dir / config.path
        try:
            times, columns = load_table(path, config.timestamp_column, config.naive_utc_offset_s)
        except FeatureError as exc:
            raise ConfigError(f"replay source {config.name!r}: {exc}") from exc
        if len(times) == 0:
            raise ConfigError(f"replay file {path} has no rows; point 'path' at a file with data")
        missing = [c.column for c in config.channels if c.column not in columns]
        if missing:
            raise ConfigError(f"replay file {path} has no column(s) {missing}; it has {sorted(columns)}")
        order = np.argsort(times, kind="stable")
        self._times = times[order]
        self._values = {c.name: columns[c.column][order].astype(np.float64) * c.scale for c in config.channels}
        self._start = float(self._times[0])
        if config.start is not None:
            start = config.start if config.start.tzinfo is not None else config.start.replace(tzinfo=UTC)
            self._start = start.timestamp()
        # Playback covers one sample period past the last sample, so a loop does not repeat a sample.
        period = float(self._times[1] - self._times[0]) if len(self._times) > 1 else 0.0
        self._first = float(self._times[0])
        self._end = float(self._times[-1]) + period
        self._clock = clock
        self._wall_start = clock()

    def channels(self) -> list[ChannelSpec]:
        """The replayed channels, named ``source.channel``."""
        return [
            ChannelSpec(name=f"{self.name}.{c.name}", unit=c.unit, min_value=c.min_value, max_value=c.max_value)
            for c in self.config.channels
        ]

    def data_time(self) -> float:
        """The replay clock: UTC epoch seconds of the data being played now."""
        return self._start + (self._clock() - self._wall_start) * self.config.speed

    def read(self) -> Reading:
        """The latest sample at or before the replay clock, for every channel."""
        now = self.data_time()
        if self.config.at_end == "loop" and now >= self._end:
            now = self._first + (now - self._first) % (self._end - self._first)
        index = int(np.searchsorted(self._times, now, side="right")) - 1
        channels: dict[str, ChannelValue] = {}
        for c in self.config.channels:
            key = f"{self.name}.{c.name}"
            if index < 0 or now >= self._end:
                reason = "replay clock is before the first sample" if index < 0 else "replay reached the end"
                channels[key] = ChannelValue(MISSING, c.unit, ChannelStatus.MISSING, reason, now)
                continue
            sample_time = float(self._times[index])
            value = float(self._values[c.name][index])
            channels[key] = checked_value(value, c.unit, c, sample_time, "no value in the recording")
        return Reading(self.name, now, channels, {})

    def close(self) -> None:
        """Nothing to release: the file was read at start-up."""
