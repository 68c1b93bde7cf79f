"""Read any time series the task config's ``data`` section describes, onto a regular UTC grid.

One path for every file, the shipped slices included (``configs/*.yaml`` name files in ``data/``):

1. read the table (CSV, CSV.gz or Parquet) and its ``data.time_column``;
2. put the clock on UTC: timestamps with offsets are read as such; naive ones through ``data.utc_offset``
   (fixed) or ``data.timezone`` (IANA, daylight saving applied; repeated and missing local hours handled
   by the declared ``ambiguous``/``nonexistent`` policies and counted);
3. per column: sentinel values and values outside ``min_value``/``max_value`` become missing (counted);
4. duplicate timestamps keep their first row (counted); resample to ``data.step`` with the declared
   ``data.aggregation`` (or keep the file's own step), so gaps become explicit missing rows;
5. PV exports that omit the night are filled with zeros where the sun is down (``fill_night_with_zero``).

Every count lands in a :class:`LoadLog`, which ``gridedge data check`` prints and training reports.
The device keeps its numpy-only reader (:mod:`edge_agent.csvseries`); this module is central-side only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from edge_agent.errors import DataError
from edge_agent.solar import cos_zenith
from gridedge.trainer.config import ClockSource, DataConfig, FileSource, duration_seconds, is_dsn

OFFSET_SUFFIX = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")


@dataclass
class LoadLog:
    """What reading the file changed or found, in counts a person can act on."""

    path: str
    rows_read: int = 0
    detected_step_s: int = 0
    step_s: int = 0
    duplicates: int = 0
    ambiguous_local: int = 0  # naive local times that occur twice (autumn DST change)
    nonexistent_local: int = 0  # naive local times skipped by the clock (spring DST change)
    dropped_clock: int = 0  # rows dropped by the ambiguous/nonexistent policy
    sentinels: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    night_filled: dict[str, int] = field(default_factory=dict)
    content_sha256: str = ""  # of the bytes read: the file, or the fleet store's rows

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LoadedSeries:
    """The regular UTC frame (index = bin start) and what loading it found."""

    frame: pd.DataFrame
    log: LoadLog


def read_table(path: Path) -> pd.DataFrame:
    """The raw table of a CSV, CSV.gz or Parquet file, every column as read."""
    if not path.is_file():
        raise DataError(f"data.path: {path} not found; give a path relative to the config file or an absolute one")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"data.path: cannot read {path}: {exc}") from exc
    raise DataError(f"data.path: {path} is neither .csv, .csv.gz nor .parquet; convert it to one of those")


def _time_column(table: pd.DataFrame, source: ClockSource, path: Path) -> str:
    if source.time_column is not None:
        if source.time_column not in table.columns:
            raise DataError(
                f"data.time_column: {source.time_column!r} is not a column of {path}; use one of {list(table.columns)}"
            )
        return source.time_column
    first = str(table.columns[0])
    if first.lower().startswith(("time", "date")):
        return first
    raise DataError(f"data.time_column: name the time column of {path} (its columns: {list(table.columns)})")


def to_utc(raw: pd.Series, source: ClockSource, log: LoadLog) -> pd.Series:
    """Timestamps to UTC (NaT where the declared policy drops a local time), counting DST artefacts."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw)
        naive = parsed.dt.tz is None
    else:
        text = raw.astype(str).str.strip()
        with_offset = text.str.contains(OFFSET_SUFFIX)
        if with_offset.any() and not with_offset.all():
            raise DataError(
                f"data.time_column: {int((~with_offset).sum())} timestamps have no UTC offset while others do; "
                "write every timestamp the same way"
            )
        naive = not with_offset.any()
        try:
            parsed = pd.to_datetime(text, utc=not naive, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise DataError(f"data.time_column: cannot read the timestamps as ISO 8601 ({exc})") from exc
    if not naive:
        return parsed.dt.tz_convert("UTC")
    if source.utc_offset is not None:
        return (parsed - pd.Timedelta(seconds=source.utc_offset_seconds)).dt.tz_localize("UTC")
    if source.timezone is None:
        raise DataError(
            "data.timezone: the timestamps carry no UTC offset; set data.timezone (IANA zone, e.g. "
            "Europe/Paris, daylight saving applied) or data.utc_offset (a fixed offset, e.g. '+01:00')"
        )
    everywhere = np.ones(len(parsed), dtype=bool)
    ambiguous = parsed.dt.tz_localize(source.timezone, ambiguous="NaT", nonexistent="shift_forward").isna()
    nonexistent = parsed.dt.tz_localize(source.timezone, ambiguous=everywhere, nonexistent="NaT").isna()
    log.ambiguous_local = int(ambiguous.sum())
    log.nonexistent_local = int(nonexistent.sum())
    try:
        localised = parsed.dt.tz_localize(
            source.timezone,
            ambiguous="infer" if source.ambiguous == "infer" else "NaT",
            nonexistent="shift_forward" if source.nonexistent == "shift_forward" else "NaT",
        )
    except ValueError as exc:  # pytz/zoneinfo AmbiguousTimeError subclasses ValueError
        raise DataError(
            f"data.ambiguous: cannot tell the repeated local hour apart ({exc}); set data.ambiguous: drop"
        ) from exc
    log.dropped_clock = int(localised.isna().sum())
    return localised.dt.tz_convert("UTC")


def _clean_columns(frame: pd.DataFrame, config: DataConfig, log: LoadLog) -> None:
    for name, rules in config.columns.items():
        if name not in frame.columns:
            raise DataError(f"data.columns.{name}: no such column in {log.path}; use one of {list(frame.columns)}")
        values = frame[name]
        if rules.sentinels:
            hit = values.isin(rules.sentinels)
            log.sentinels[name] = int(hit.sum())
            values = values.mask(hit)
        out = rules.outside(values.to_numpy(np.float64))
        log.out_of_range[name] = int(out.sum())
        frame[name] = values.mask(out)


def _fill_night(frame: pd.DataFrame, config: DataConfig, log: LoadLog) -> None:
    if not config.fill_night_with_zero:
        return
    assert config.location is not None  # DataConfig requires it with fill_night_with_zero
    seconds = frame.index.as_unit("s").asi8
    middle = seconds + log.step_s // 2  # the sun at the middle of each bin
    sun_down = cos_zenith(middle, config.location.latitude, config.location.longitude) <= 0
    for name in config.fill_night_with_zero:
        if name not in frame.columns:
            raise DataError(f"data.fill_night_with_zero: no column {name!r} in {log.path}")
        hole = sun_down & frame[name].isna().to_numpy()
        log.night_filled[name] = int(hole.sum())
        frame.loc[hole, name] = 0.0


def read_samples(source: FileSource | DataConfig, log: LoadLog | None = None) -> pd.DataFrame:
    """The file's samples in time order on a UTC index, as float64, duplicates (counted) dropped; not regularised."""
    path = source.resolved_path()
    table = read_table(path)
    log = log if log is not None else LoadLog(path=str(path))
    log.rows_read = len(table)
    log.content_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    time_column = _time_column(table, source, path)
    utc = to_utc(table[time_column], source, log)
    frame = table.drop(columns=[time_column])
    frame.index = pd.DatetimeIndex(utc, name="timestamp_utc").as_unit("ns")
    frame = frame[frame.index.notna()]
    for name in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame = frame.astype("float64").sort_index(kind="stable")
    duplicated = frame.index.duplicated(keep="first")
    log.duplicates = int(duplicated.sum())
    frame = frame[~duplicated]
    if len(frame) < 2:
        raise DataError(f"data.path: {path} holds fewer than two timestamped rows")
    log.detected_step_s = int(np.median(np.diff(frame.index.as_unit("s").asi8)))
    return frame


def load(config: DataConfig) -> LoadedSeries:
    """Read the data (``config.path``, or ``config.fleet``'s series in the fleet store) onto a regular UTC
    grid, cleaned as the config declares (see the module doc)."""
    if config.fleet is not None:
        # Not cached: the store grows while a fleet runs.
        log = LoadLog(path=config.fleet.describe())
        return _cleaned(read_fleet_samples(config, log), config, log, config.fleet.describe())
    path = config.resolved_path()
    return _load_cached(path, path.stat().st_mtime_ns if path.is_file() else 0, config.model_dump_json())


def read_fleet_samples(config: DataConfig, log: LoadLog) -> pd.DataFrame:
    """A device's model-step telemetry from the fleet store as a frame (one column per channel, UTC index)."""
    from gridedge.fleet.store import FleetStore

    source = config.fleet
    assert source is not None
    store_arguments: dict[str, Any] = {"dsn": source.db} if is_dsn(source.db) else {"path": Path(source.db)}
    if "path" in store_arguments and not store_arguments["path"].is_file():
        raise DataError(
            f"data.fleet.db: fleet store {source.db} not found; give the file `gridedge fleet listen` writes"
        )
    store = FleetStore(**store_arguments, read_only=True)
    try:
        rows = store.series(source.site, source.device, duration_seconds(source.since) if source.since else None)
    finally:
        store.close()
    if not rows:
        raise DataError(
            f"data.fleet: the fleet store holds no model-step telemetry of {source.site}/{source.device}; enable "
            "mqtt.telemetry.enabled and mqtt.telemetry.model_step on that device"
        )
    long = pd.DataFrame(rows)
    frame = long.pivot_table(index="start_s", columns="channel", values="value", aggfunc="first", dropna=False)
    frame = frame.reindex(sorted(long["start_s"].unique())).astype("float64")
    frame.columns = [str(c) for c in frame.columns]
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.index.to_numpy(), unit="s", utc=True), name="timestamp_utc")
    log.rows_read = len(frame)
    digest = hashlib.sha256(frame.index.as_unit("s").asi8.tobytes())
    digest.update(",".join(frame.columns).encode())
    digest.update(np.ascontiguousarray(frame.to_numpy(np.float64)).tobytes())
    log.content_sha256 = digest.hexdigest()
    if len(frame) < 2:
        raise DataError(f"data.fleet: {source.site}/{source.device} has fewer than two model steps in the store")
    log.detected_step_s = int(np.median(np.diff(frame.index.as_unit("s").asi8)))
    return frame


@lru_cache(maxsize=8)
def _load_cached(path: Path, _mtime_ns: int, config_json: str) -> LoadedSeries:
    # Parsing a year of 15-minute rows costs seconds; tests and baselines reload the same file often.
    config = DataConfig.model_validate_json(config_json)
    log = LoadLog(path=str(path))
    return _cleaned(read_samples(config, log), config, log, path.name)


def _cleaned(frame: pd.DataFrame, config: DataConfig, log: LoadLog, name: str) -> LoadedSeries:
    """Sentinels, ranges, the regular grid, night filling and the start/end cut, for every source."""
    _clean_columns(frame, config, log)
    frame = _regular(frame, config, log)
    _fill_night(frame, config, log)
    start = pd.Timestamp(config.start, tz="UTC") if config.start else None
    end = pd.Timestamp(config.end, tz="UTC") if config.end else None
    frame = frame.loc[start:end]
    frame.attrs = {"name": name, "source": config.source, "licence": config.licence}
    return LoadedSeries(frame, log)


def _regular(frame: pd.DataFrame, config: DataConfig, log: LoadLog) -> pd.DataFrame:
    """Resample onto the configured step (or reindex onto the file's own step), gaps as missing rows."""
    if config.step is None:
        log.step_s = log.detected_step_s
        grid = pd.date_range(frame.index[0], frame.index[-1], freq=f"{log.step_s}s", tz="UTC")
        if not frame.index.isin(grid).all():
            raise DataError(
                f"data.step: the timestamps of {log.path} are not on one regular grid of {log.step_s} s; set "
                "data.step (e.g. '15min') and data.aggregation to resample them"
            )
        return frame.reindex(grid)
    log.step_s = duration_seconds(config.step)
    resampler = frame.resample(f"{log.step_s}s", label="left", closed="left")
    resampled: pd.DataFrame = getattr(resampler, config.aggregation)()
    if config.aggregation == "sum":
        # An empty bin sums to 0 in pandas; it is missing, not zero.
        counts = resampler.count()
        resampled = resampled.mask(counts == 0)
    return resampled


def upstream_filled_days(
    frame: pd.DataFrame, timezone: str, step_s: int, min_run_s: int
) -> tuple[NDArray[np.bool_], list[str]]:
    """Rows of local days holding a copy of the previous day, and those days (``YYYY-MM-DD``).

    A copy is a run of at least ``min_run_s`` in which every column equals the value one day earlier,
    exactly, and which is not flat: constant stretches (night PV at zero, an idle meter) repeat by
    nature, not by an upstream packager filling its gaps with yesterday.
    """
    day = 86_400 // step_s
    values = frame.to_numpy(dtype=np.float64)
    same = np.zeros(len(values), dtype=bool)
    if len(values) > day:
        same[day:] = (values[day:] == values[:-day]).all(axis=1)
    min_run = max(1, min_run_s // step_s)
    copied = np.zeros(len(values), dtype=bool)
    padded = np.concatenate([[0], same.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    for begin, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - begin >= min_run and np.ptp(values[begin:stop], axis=0).max() > 0:
            copied[begin:stop] = True
    local_day = frame.index.tz_convert(timezone).strftime("%Y-%m-%d").to_numpy()
    days = sorted(set(local_day[copied]))
    return np.isin(local_day, days), days
