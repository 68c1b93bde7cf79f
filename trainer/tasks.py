"""Turn a task config into model-ready splits, using only edge_agent's feature pipeline.

Everything that can be wrong with a config or its data (unknown column, NaN-only channel, too few rows
for the window, horizon longer than the data) is found here, before any training starts, and reported
as a ConfigError naming the field and the fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from edge_agent.errors import ConfigError, FeatureError
from edge_agent.features import (
    DERIVED_CHANNELS,
    ChannelSpec,
    FeaturePipeline,
    FeatureSpec,
    ModelInputs,
    NormalisationStats,
    derive_channels,
    forecast_samples,
    local_seconds,
)
from gridedge.datafiles import slice_info, slice_path
from gridedge.trainer import datasets
from gridedge.trainer.config import ChannelConfig, TaskConfig

SECONDS_PER_DAY = 86_400
WEEK_DAYS = 7


@dataclass(frozen=True)
class Split:
    """One time-ordered split: valid model inputs, raw targets (units), normalised targets, origins."""

    name: str
    inputs: ModelInputs
    targets: NDArray[np.float32]
    targets_normalised: NDArray[np.float32]
    origins: NDArray[np.int64]  # row index of the first forecast step (anomaly: one past the window end)
    origin_times: NDArray[np.int64]  # UTC epoch seconds of those rows (anomaly: of the window's last row)

    def __len__(self) -> int:
        return len(self.origins)


@dataclass(frozen=True)
class LabelledEvaluation:
    """A labelled series and the windows that end at each of its samples (anomaly evaluation)."""

    name: str
    timestamps: NDArray[np.int64]
    values: NDArray[np.float32]
    labels: NDArray[np.bool_]
    split: Split  # windows whose last row is split.origins - 1


@dataclass(frozen=True)
class Series:
    """The task's raw series on a regular grid, in the config's channel units."""

    timestamps: NDArray[np.int64]
    past: NDArray[np.float32]  # (T, C_past)
    future: NDArray[np.float32] | None  # (T, C_future) or None
    upstream_filled: NDArray[np.bool_]
    split_rows: dict[str, tuple[int, int]]  # name -> [start, stop) row range


@dataclass(frozen=True)
class PreparedTask:
    """Everything training, baselines and export need, computed once from the config."""

    config: TaskConfig
    spec: FeatureSpec
    output_spec: dict[str, Any]
    series: Series
    train: Split
    val: Split
    test: Split
    labelled: list[LabelledEvaluation] = field(default_factory=list)
    test_rolling: Split | None = None  # intraday origins (forecasts, protocol.rolling_every_hours)
    data_fingerprint: str = ""

    @property
    def pipeline(self) -> FeaturePipeline:
        return FeaturePipeline(self.spec)

    @property
    def day_steps(self) -> int:
        return SECONDS_PER_DAY // self.spec.sample_period_s


def _channel_values(
    frame: pd.DataFrame, channels: list[ChannelConfig], field_name: str
) -> tuple[NDArray[np.float32], list[ChannelSpec]]:
    units: dict[str, str] = frame.attrs.get("units", {})
    columns, specs = [], []
    for i, channel in enumerate(channels):
        if channel.column not in frame.columns:
            raise ConfigError(
                f"{field_name}[{i}].column: unknown column {channel.column!r} in slice "
                f"{frame.attrs.get('name')!r}; use one of {list(frame.columns)}"
            )
        values = frame[channel.column].to_numpy(np.float64) * channel.scale
        if not np.isfinite(values).any():
            raise ConfigError(
                f"{field_name}[{i}] ({channel.column!r}) has no valid value in the selected rows; "
                "drop the channel or widen data.start/data.end"
            )
        columns.append(values.astype(np.float32))
        unit = channel.unit or units.get(channel.column, "1")
        specs.append(
            ChannelSpec(name=channel.channel, unit=unit, min_value=channel.min_value, max_value=channel.max_value)
        )
    return np.stack(columns, axis=1), specs


def _add_derived(frame: pd.DataFrame, config: TaskConfig) -> pd.DataFrame:
    """Compute configured derived channels (e.g. clear_sky_ghi) from the timestamps, as the device will."""
    wanted = {c.column for c in (*config.features.past, *config.features.known_future)}
    derived = sorted(name for name in wanted & set(DERIVED_CHANNELS) if name not in frame.columns)
    if not derived:
        return frame
    try:
        values = derive_channels(derived, frame.index.as_unit("s").asi8.astype(np.int64), config.data.location)
    except FeatureError as exc:
        raise ConfigError(f"data.location: {exc}") from exc
    frame = frame.copy()
    for i, name in enumerate(derived):
        frame[name] = values[:, i]
    frame.attrs["units"] = {**frame.attrs.get("units", {}), **dict.fromkeys(derived, "W/m2")}
    return frame


def _regular(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    steps = np.diff(frame.index.as_unit("s").asi8)
    if len(steps) == 0:
        raise ConfigError("data: the selected rows hold fewer than two samples; widen data.start/data.end")
    period = int(np.median(steps))
    grid = pd.date_range(frame.index[0], frame.index[-1], freq=f"{period}s", tz="UTC")
    regular = frame.reindex(grid)
    regular.attrs = frame.attrs
    return regular, period


def _load_frame(config: TaskConfig, data_dir: str | Path | None) -> pd.DataFrame:
    try:
        frame = datasets.load(config.data.slice, data_dir)
    except FeatureError as exc:
        raise ConfigError(f"data.slice: {exc}") from exc
    start = pd.Timestamp(config.data.start, tz="UTC") if config.data.start else None
    end = pd.Timestamp(config.data.end, tz="UTC") if config.data.end else None
    selected = frame.loc[start:end]
    selected.attrs = frame.attrs
    return selected


def _fingerprint(config: TaskConfig, data_dir: str | Path | None) -> str:
    digest = hashlib.sha256()
    names = [config.data.slice] + ([s.slice for s in config.anomaly.labelled] if config.anomaly else [])
    for name in names:
        digest.update(slice_path(name, data_dir).read_bytes())
    digest.update(config.data.model_dump_json().encode())
    return digest.hexdigest()


def _split_rows(local_day: NDArray[np.int64], config: TaskConfig) -> dict[str, tuple[int, int]]:
    days = np.unique(local_day)
    n_test = max(1, round(len(days) * config.split.test_fraction))
    n_val = max(1, round(len(days) * config.split.val_fraction))
    if len(days) < n_test + n_val + 1:
        raise ConfigError(f"data: {len(days)} days cannot be split into train/val/test; widen data.start/data.end")
    val_start = int(np.searchsorted(local_day, days[-(n_test + n_val)]))
    test_start = int(np.searchsorted(local_day, days[-n_test]))
    return {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, len(local_day))}


def _forecast_origins(
    series_len: int,
    rows: tuple[int, int],
    spec: FeatureSpec,
    candidates: NDArray[np.int64],
    history_steps: int,
    filled: NDArray[np.bool_],
    complete_history: NDArray[np.bool_] | None = None,
) -> NDArray[np.int64]:
    start, stop = rows
    h = spec.horizon_steps
    origins = candidates[(candidates >= max(start, history_steps)) & (candidates + h <= min(stop, series_len))]
    if filled.any() and len(origins):
        cumulative = np.concatenate([[0], np.cumsum(filled)])
        clean = cumulative[origins + h] - cumulative[origins] == 0
        origins = origins[clean]
    if complete_history is not None and len(origins):
        # Evaluation origins need the baselines' whole history too, so every method sees the same windows.
        cumulative = np.concatenate([[0], np.cumsum(~complete_history)])
        origins = origins[cumulative[origins] - cumulative[origins - history_steps] == 0]
    return origins


def _make_split(
    name: str,
    spec: FeatureSpec,
    series: Series,
    origins: NDArray[np.int64],
    field_hint: str,
) -> Split:
    if len(origins) == 0:
        raise ConfigError(
            f"{name} split has no usable sample: too few rows for input_steps={spec.input_steps} plus "
            f"horizon_steps={spec.horizon_steps} (and a week of history for the baselines); {field_hint}"
        )
    inputs, targets, origins = forecast_samples(spec, series.past, series.timestamps, series.future, origins)
    keep = inputs.valid
    if not keep.any():
        raise ConfigError(
            f"{name} split: every window has gaps longer than features.gap_policy.max_gap_steps "
            f"({inputs.reasons[0]}); raise the limit or choose rows with fewer gaps"
        )
    kept = ModelInputs(
        past=inputs.past[keep],
        future=None if inputs.future is None else inputs.future[keep],
        valid=inputs.valid[keep],
        reasons=tuple(r for r, k in zip(inputs.reasons, keep, strict=True) if k),
    )
    kept_origins = origins[keep]
    targets = targets[keep]
    pipeline = FeaturePipeline(spec)
    time_rows = kept_origins if spec.is_forecast else kept_origins - 1
    return Split(
        name=name,
        inputs=kept,
        targets=targets.astype(np.float32),
        targets_normalised=pipeline.normalise_targets(targets),
        origins=kept_origins,
        origin_times=series.timestamps[time_rows],
    )


def prepare_task(config: TaskConfig, data_dir: str | Path | None = None) -> PreparedTask:
    """Load the data, validate it against the config, fit normalisation on train, build all splits."""
    frame, period = _regular(_load_frame(config, data_dir))
    frame = _add_derived(frame, config)
    feats = config.features
    timezone = config.data.timezone or slice_info(config.data.slice).site_timezone
    past, past_specs = _channel_values(frame, feats.past, "features.past")
    future: NDArray[np.float32] | None = None
    future_specs: list[ChannelSpec] = []
    if feats.known_future:
        future, future_specs = _channel_values(frame, feats.known_future, "features.known_future")
    timestamps = frame.index.as_unit("s").asi8.astype(np.int64)

    day_steps = SECONDS_PER_DAY // period
    window = feats.input_steps + feats.horizon_steps
    if window > len(frame):
        raise ConfigError(
            f"features: input_steps + horizon_steps = {window} is longer than the {len(frame)} rows selected; "
            "shorten the window/horizon or widen data.start/data.end"
        )
    try:
        spec = FeatureSpec(
            sample_period_s=period,
            input_steps=feats.input_steps,
            horizon_steps=feats.horizon_steps,
            past_channels=tuple(past_specs),
            target_channels=tuple(feats.targets),
            known_future_channels=tuple(future_specs),
            calendar=feats.calendar,
            timezone=timezone,
            gap_policy=feats.gap_policy,
            location=config.data.location,
        )
    except ValueError as exc:
        raise ConfigError(f"features: {exc}") from exc

    filled = np.zeros(len(frame), dtype=bool)
    if config.data.exclude_upstream_filled:
        filled = datasets.upstream_filled_mask(frame, day_steps)
    local_day = local_seconds(timestamps, timezone) // SECONDS_PER_DAY
    split_rows = _split_rows(local_day, config)
    series = Series(timestamps, past, future, filled, split_rows)

    train_start, train_stop = split_rows["train"]
    stats_values = past[train_start:train_stop]
    stats_names = [s.name for s in past_specs]
    if future is not None:
        extra = [i for i, s in enumerate(future_specs) if s.name not in stats_names]
        stats_values = np.concatenate([stats_values, future[train_start:train_stop][:, extra]], axis=1)
        stats_names += [future_specs[i].name for i in extra]
    try:
        stats = NormalisationStats.fit(stats_values, stats_names)
    except FeatureError as exc:
        raise ConfigError(f"data: {exc}") from exc
    spec = spec.with_normalisation(stats)

    labelled: list[LabelledEvaluation] = []
    if spec.is_forecast:
        local = local_seconds(timestamps, timezone)
        at_origin_hour = np.flatnonzero(local % SECONDS_PER_DAY == config.protocol.origin_hour * 3600)
        every = np.arange(0, len(frame), config.protocol.train_stride_steps, dtype=np.int64)
        history = max(feats.input_steps, WEEK_DAYS * day_steps)
        complete: NDArray[np.bool_] = np.asarray(np.isfinite(past).all(axis=1))
        if future is not None:
            complete &= np.asarray(np.isfinite(future).all(axis=1))
        hint = "widen data.start/data.end or shorten the window"
        train = _make_split(
            "train",
            spec,
            series,
            _forecast_origins(len(frame), split_rows["train"], spec, every, feats.input_steps, filled),
            hint,
        )
        val = _make_split(
            "val",
            spec,
            series,
            _forecast_origins(len(frame), split_rows["val"], spec, at_origin_hour, history, filled, complete),
            hint,
        )
        test = _make_split(
            "test",
            spec,
            series,
            _forecast_origins(len(frame), split_rows["test"], spec, at_origin_hour, history, filled, complete),
            hint,
        )
        test_rolling = None
        if config.protocol.rolling_every_hours is not None:
            every_hours = np.flatnonzero(local % (config.protocol.rolling_every_hours * 3600) == 0)
            rolling = _forecast_origins(len(frame), split_rows["test"], spec, every_hours, history, filled, complete)
            test_rolling = _make_split("test_rolling", spec, series, rolling, hint)
        output_spec = {
            "kind": "forecast",
            "horizon_steps": spec.horizon_steps,
            "target_channels": list(spec.target_channels),
            "target_units": [_unit(spec, t) for t in spec.target_channels],
            "anomaly": None,
        }
    else:
        assert config.anomaly is not None  # guaranteed by TaskConfig validation
        w = feats.input_steps
        hint = "widen data.start/data.end or shorten features.input_steps"
        ends = {
            name: np.arange(max(start, w - 1), stop, stride, dtype=np.int64) + 1
            for name, (start, stop), stride in [
                ("train", split_rows["train"], config.anomaly.train_stride_steps),
                ("val", split_rows["val"], 1),
                ("test", split_rows["test"], 1),
            ]
        }
        train, val, test = (_make_split(n, spec, series, ends[n], hint) for n in ("train", "val", "test"))
        test_rolling = None
        labelled = [_labelled(spec, config, i, data_dir) for i in range(len(config.anomaly.labelled))]
        output_spec = {
            "kind": "reconstruction",
            "horizon_steps": 0,
            "target_channels": list(spec.target_channels),
            "target_units": [_unit(spec, t) for t in spec.target_channels],
            "anomaly": None,  # threshold filled in after calibration on validation
        }
    return PreparedTask(
        config=config,
        spec=spec,
        output_spec=output_spec,
        series=series,
        train=train,
        val=val,
        test=test,
        labelled=labelled,
        data_fingerprint=_fingerprint(config, data_dir),
        test_rolling=test_rolling,
    )


def _unit(spec: FeatureSpec, channel: str) -> str:
    return next(c.unit for c in spec.past_channels if c.name == channel)


def _labelled(spec: FeatureSpec, config: TaskConfig, index: int, data_dir: str | Path | None) -> LabelledEvaluation:
    assert config.anomaly is not None
    item = config.anomaly.labelled[index]
    where = f"anomaly.labelled[{index}]"
    try:
        frame = datasets.load(item.slice, data_dir)
    except FeatureError as exc:
        raise ConfigError(f"{where}.slice: {exc}") from exc
    # Kept in sample order, not regularised: some labelled series omit nights entirely, and their
    # evening and next-morning samples (both near zero) join smoothly.
    for column_field, column in (("column", item.column), ("label_column", item.label_column)):
        if column not in frame.columns:
            raise ConfigError(
                f"{where}.{column_field}: unknown column {column!r} in {item.slice!r}; use one of {list(frame.columns)}"
            )
    if len(spec.past_channels) != 1:
        raise ConfigError(
            f"{where}: labelled series carry one value column, so features.past must hold exactly one channel"
        )
    values = frame[item.column].to_numpy(np.float32)
    labels = frame[item.label_column].fillna(False).to_numpy(bool)
    timestamps = frame.index.as_unit("s").asi8.astype(np.int64)
    w = spec.input_steps
    if len(values) < w:
        raise ConfigError(f"{where}: {len(values)} rows are fewer than features.input_steps={w}")
    series = Series(timestamps, values[:, None], None, np.zeros(len(values), bool), {})
    inputs, targets, origins = forecast_samples(spec, series.past, timestamps, None, np.arange(w, len(values) + 1))
    pipeline = FeaturePipeline(spec)
    split = Split(
        name=item.slice,
        inputs=inputs,
        targets=targets.astype(np.float32),
        targets_normalised=pipeline.normalise_targets(targets),
        origins=origins,
        origin_times=timestamps[origins - 1],
    )
    return LabelledEvaluation(item.slice, timestamps, values, labels, split)
