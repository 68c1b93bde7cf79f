"""Turn a task config into model-ready splits, using only edge_agent's feature pipeline.

Everything that can be wrong with a config or its data (unknown column, NaN-only channel, too few rows
for the window, horizon longer than the data) is found here, before any training starts, and reported
as a ConfigError naming the field and the fix. Forecast origins are chosen by local time: every split's
origins start at ``protocol.origin_hour`` and repeat every stride, so training windows start at the time
of day the evaluation uses. Each split records how many candidate origins it dropped and why
(:class:`OriginScreen`); ``gridedge data check`` prints those counts, and an empty split's error names them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from edge_agent.errors import ConfigError, DataError, FeatureError
from edge_agent.features import (
    DERIVED_CHANNELS,
    ChannelSpec,
    FeaturePipeline,
    FeatureSpec,
    GapPolicy,
    ModelInputs,
    NormalisationStats,
    OutputBounds,
    derive_channels,
    forecast_samples,
    local_seconds,
    within_bounds,
)
from gridedge.trainer import datasets
from gridedge.trainer.config import ChannelConfig, TaskConfig, duration_seconds

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


# Why a candidate origin is not used, in the words the data check and the errors share.
EDGE = "window or horizon outside the split"
FILLED = "horizon holds an upstream-filled day"
HISTORY = "missing samples in the 7-day baseline history"
INPUT_GAP = "input gap longer than features.gap_policy.max_gap"
TARGET_GAP = "missing target values"


@dataclass(frozen=True)
class OriginScreen:
    """How one split's candidate origins were screened: what is kept, what was dropped and why."""

    name: str
    when: str  # e.g. "00:00 local every 6h"
    candidates: int
    dropped: dict[str, int]

    @property
    def kept(self) -> int:
        return self.candidates - sum(self.dropped.values())

    def explain(self) -> str:
        reasons = ", ".join(f"{count} {why}" for why, count in self.dropped.items() if count) or "none dropped"
        return f"{self.kept} of {self.candidates} origins ({self.when}) usable; dropped: {reasons}"


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
class AnomalySteps:
    """The anomaly section's durations counted in samples of the data step (what the rules and bundle use)."""

    score: int
    train_stride: int
    zscore_window: int
    stale_run: int
    stale_in_detector: bool

    @property
    def detector_stale_run(self) -> int | None:
        """The stale run the shipped detector adds to the model's score, or None when it is off."""
        return self.stale_run if self.stale_in_detector else None


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
    load_log: datasets.LoadLog | None = None
    screens: dict[str, OriginScreen] = field(default_factory=dict)
    channel_out_of_range: dict[str, int] = field(default_factory=dict)
    upstream_filled_days: list[str] = field(default_factory=list)
    anomaly_steps: AnomalySteps | None = None

    @property
    def pipeline(self) -> FeaturePipeline:
        return FeaturePipeline(self.spec)

    @property
    def day_steps(self) -> int:
        return SECONDS_PER_DAY // self.spec.sample_period_s

    @property
    def output_bounds(self) -> tuple[OutputBounds, ...]:
        return tuple(OutputBounds.model_validate(b) for b in self.output_spec.get("bounds", ()))

    def bounded(self, forecasts: NDArray[np.floating], split: Split) -> NDArray[np.float32]:
        """Forecasts in units for ``split``'s origins within the targets' physical bounds, as the device decodes."""
        return within_bounds(forecasts, self.output_bounds, self.spec, forecast_step_times(self, split))

    def decode(self, outputs: NDArray[np.floating], split: Split) -> NDArray[np.float32]:
        """Normalised model outputs for ``split``'s origins in physical units, bounded like on the device."""
        return self.bounded(self.pipeline.decode(outputs), split)


def _channel_values(
    frame: pd.DataFrame,
    channels: list[ChannelConfig],
    field_name: str,
    config: TaskConfig,
    out_of_range: dict[str, int],
) -> tuple[NDArray[np.float32], list[ChannelSpec]]:
    units = {name: rules.unit for name, rules in config.data.columns.items() if rules.unit}
    units.update(dict.fromkeys(set(DERIVED_CHANNELS) & set(frame.columns), "W/m2"))
    columns, specs = [], []
    for i, channel in enumerate(channels):
        if channel.column not in frame.columns:
            raise ConfigError(
                f"{field_name}[{i}].column: unknown column {channel.column!r} in "
                f"{frame.attrs.get('name')!r}; use one of {list(frame.columns)}"
            )
        values = frame[channel.column].to_numpy(np.float64) * channel.scale
        # A channel's plausible range is applied, not just recorded: an implausible value is missing.
        outside = channel.outside(values)
        out_of_range[channel.channel] = int(outside.sum())
        values[outside] = np.nan
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
    return frame


def _fingerprint(config: TaskConfig, data_sha256: str) -> str:
    """sha256 over the data read (file bytes, or the fleet store's rows), labelled files and the data section."""
    digest = hashlib.sha256(bytes.fromhex(data_sha256))
    for source in config.anomaly.labelled if config.anomaly else []:
        digest.update(source.resolved_path().read_bytes())
    digest.update(config.data.model_dump_json(exclude={"path"}).encode())
    return digest.hexdigest()


def _steps(text: str, period: int, field_name: str) -> int:
    seconds = duration_seconds(text)
    if seconds % period:
        raise ConfigError(f"{field_name}: {text} is not a whole number of {period} s steps; use a multiple of the step")
    return seconds // period


def origin_candidates(
    timestamps: NDArray[np.int64], timezone: str, origin_hour: int, stride: str, field_name: str
) -> NDArray[np.int64]:
    """Rows at ``origin_hour`` local time and every ``stride`` after it: the same times of day in every split."""
    stride_s = duration_seconds(stride)
    if stride_s <= 0 or (SECONDS_PER_DAY % stride_s and stride_s % SECONDS_PER_DAY):
        raise ConfigError(f"{field_name}: {stride} must divide a day (e.g. '1h', '6h', '1d') or be whole days")
    local = local_seconds(timestamps, timezone) - origin_hour * 3600
    return np.flatnonzero(local % stride_s == 0).astype(np.int64)


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
) -> tuple[NDArray[np.int64], int, dict[str, int]]:
    """Screen a split's candidate origins: (kept origins, number of candidates, dropped count per reason)."""
    start, stop = rows
    h = spec.horizon_steps
    candidates = candidates[(candidates >= start) & (candidates < stop)]
    inside = (candidates >= history_steps) & (candidates + h <= min(stop, series_len))
    origins = candidates[inside]
    dropped = {EDGE: int((~inside).sum())}
    if filled.any() and len(origins):
        cumulative = np.concatenate([[0], np.cumsum(filled)])
        clean = cumulative[origins + h] - cumulative[origins] == 0
        dropped[FILLED] = int((~clean).sum())
        origins = origins[clean]
    if complete_history is not None and len(origins):
        # Evaluation origins need the baselines' whole history too, so every method sees the same windows.
        cumulative = np.concatenate([[0], np.cumsum(~complete_history)])
        complete = cumulative[origins] - cumulative[origins - history_steps] == 0
        dropped[HISTORY] = int((~complete).sum())
        origins = origins[complete]
    return origins, len(candidates), dropped


def _empty_split(name: str, spec: FeatureSpec) -> Split:
    steps = spec.horizon_steps or spec.input_steps
    targets = np.zeros((0, steps, len(spec.target_channels)), dtype=np.float32)
    return Split(
        name=name,
        inputs=ModelInputs(
            past=np.zeros((0, spec.input_steps, 0), np.float32), future=None, valid=np.zeros(0, bool), reasons=()
        ),
        targets=targets,
        targets_normalised=targets,
        origins=np.zeros(0, np.int64),
        origin_times=np.zeros(0, np.int64),
    )


def _make_split(
    name: str,
    spec: FeatureSpec,
    series: Series,
    screened: tuple[NDArray[np.int64], int, dict[str, int]],
    when: str,
    screens: dict[str, OriginScreen],
    strict: bool,
    field_hint: str,
) -> Split:
    origins, candidates, dropped = screened
    keep = np.zeros(0, dtype=bool)
    if len(origins):
        inputs, targets, origins = forecast_samples(spec, series.past, series.timestamps, series.future, origins)
        keep = inputs.valid
        reasons = [r for r in inputs.reasons if r is not None]
        dropped[TARGET_GAP] = sum(r == "target has missing values" for r in reasons)
        dropped[INPUT_GAP] = len(reasons) - dropped[TARGET_GAP]
    screen = OriginScreen(name, when, candidates, dropped)
    screens[name] = screen
    if not keep.any():
        if strict:
            raise DataError(f"{name} split has no usable origin: {screen.explain()}; {field_hint}")
        return _empty_split(name, spec)
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


def prepare_task(config: TaskConfig, strict: bool = True) -> PreparedTask:
    """Load the data, validate it against the config, fit normalisation on train, build all splits.

    ``strict=False`` (the data check) returns empty splits instead of refusing, so every split's
    screening can be reported.
    """
    loaded = datasets.load(config.data)
    frame, period = loaded.frame, loaded.log.step_s
    if len(frame) < 2:
        raise DataError("data: the selected rows hold fewer than two samples; widen data.start/data.end")
    timezone = config.data.site_timezone
    feats = config.features
    input_steps = _steps(feats.input_window, period, "features.input_window")
    horizon_steps = _steps(feats.horizon, period, "features.horizon")
    if SECONDS_PER_DAY % period:
        raise ConfigError(f"data.step: {period} s does not divide a day; resample with data.step, e.g. '15min'")
    day_steps = SECONDS_PER_DAY // period

    filled = np.zeros(len(frame), dtype=bool)
    filled_days: list[str] = []
    if config.data.exclude_upstream_filled:
        filled, filled_days = datasets.upstream_filled_days(
            frame, timezone, period, duration_seconds(config.data.upstream_copy_min)
        )
    frame = _add_derived(frame, config)
    out_of_range: dict[str, int] = {}
    past, past_specs = _channel_values(frame, feats.past, "features.past", config, out_of_range)
    future: NDArray[np.float32] | None = None
    future_specs: list[ChannelSpec] = []
    if feats.known_future:
        future, future_specs = _channel_values(frame, feats.known_future, "features.known_future", config, out_of_range)
    timestamps = frame.index.as_unit("s").asi8.astype(np.int64)

    window = input_steps + horizon_steps
    if window > len(frame):
        raise ConfigError(
            f"features: input_window + horizon = {window} steps is longer than the {len(frame)} rows selected; "
            "shorten the window/horizon or widen data.start/data.end"
        )
    anomaly_steps = None if config.anomaly is None else _anomaly_steps(config, period)
    if anomaly_steps is not None and anomaly_steps.stale_in_detector and anomaly_steps.stale_run > input_steps:
        assert config.anomaly is not None
        raise ConfigError(
            f"anomaly.stale_run ({config.anomaly.stale_run}) must fit in features.input_window "
            f"({feats.input_window}): the device judges a frozen sensor from its window; shorten "
            "the run or set anomaly.stale_rule_in_detector: false"
        )
    try:
        spec = FeatureSpec(
            sample_period_s=period,
            input_steps=input_steps,
            horizon_steps=horizon_steps,
            past_channels=tuple(past_specs),
            target_channels=tuple(feats.targets),
            known_future_channels=tuple(future_specs),
            calendar=feats.calendar,
            timezone=timezone,
            gap_policy=GapPolicy(method=feats.gap_policy.method, max_gap_steps=_max_gap_steps(config, period)),
            location=config.data.location,
            **_seasonal(config, period),
        )
    except ValueError as exc:
        raise ConfigError(f"features: {exc}") from exc

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
    screens: dict[str, OriginScreen] = {}
    test_rolling = None
    if spec.is_forecast:
        protocol = config.protocol
        at = f"{protocol.origin_hour:02d}:00 local"

        def candidates(stride: str, field_name: str) -> NDArray[np.int64]:
            return origin_candidates(timestamps, timezone, protocol.origin_hour, stride, field_name)

        history = max(spec.window_steps, WEEK_DAYS * day_steps)
        complete: NDArray[np.bool_] = np.asarray(np.isfinite(past).all(axis=1))
        if future is not None:
            complete &= np.asarray(np.isfinite(future).all(axis=1))
        hint = "run `gridedge data check` on this config, widen data.start/data.end or shorten the window"
        n = len(frame)
        train = _make_split(
            "train",
            spec,
            series,
            _forecast_origins(n, split_rows["train"], spec, candidates(protocol.train_stride, "protocol.train_stride"),
                              spec.window_steps, filled),
            f"every {protocol.train_stride} from {at}",
            screens,
            strict,
            hint,
        )  # fmt: skip
        val = _make_split(
            "val",
            spec,
            series,
            _forecast_origins(n, split_rows["val"], spec, candidates(protocol.val_stride, "protocol.val_stride"),
                              history, filled, complete),
            f"every {protocol.val_stride} from {at}",
            screens,
            strict,
            hint,
        )  # fmt: skip
        if strict and len(val) < protocol.min_val_origins:
            raise DataError(
                f"val split has {len(val)} usable origins, fewer than protocol.min_val_origins="
                f"{protocol.min_val_origins}, too few to choose an epoch: {screens['val'].explain()}; raise "
                "split.val_fraction or shorten protocol.val_stride"
            )
        test = _make_split(
            "test",
            spec,
            series,
            _forecast_origins(n, split_rows["test"], spec, candidates("1d", "protocol.origin_hour"), history, filled,
                              complete),
            f"{at} daily",
            screens,
            strict,
            hint,
        )  # fmt: skip
        if protocol.rolling_every_hours is not None:
            every = f"{protocol.rolling_every_hours}h"
            rolling = _forecast_origins(
                n,
                split_rows["test"],
                spec,
                candidates(every, "protocol.rolling_every_hours"),
                history,
                filled,
                complete,
            )
            test_rolling = _make_split(
                "test_rolling", spec, series, rolling, f"every {every} from {at}", screens, strict, hint
            )
        output_spec = {
            "kind": "forecast",
            "horizon_steps": spec.horizon_steps,
            "target_channels": list(spec.target_channels),
            "target_units": [_unit(spec, t) for t in spec.target_channels],
            "anomaly": None,
            "quantiles": list(config.model.quantiles),  # scales filled in after calibration on validation
            "bounds": _output_bounds(config, spec),
        }
    else:
        assert config.anomaly is not None and anomaly_steps is not None  # guaranteed by TaskConfig validation
        w = input_steps
        hint = "widen data.start/data.end or shorten features.input_window"
        splits = []
        for name, stride in (("train", anomaly_steps.train_stride), ("val", 1), ("test", 1)):
            start, stop = split_rows[name]
            ends = np.arange(max(start, w - 1), stop, stride, dtype=np.int64) + 1
            when = f"window ends every {stride} step(s)"
            splits.append(_make_split(name, spec, series, (ends, len(ends), {}), when, screens, strict, hint))
        train, val, test = splits
        labelled = [_labelled(spec, config, i) for i in range(len(config.anomaly.labelled))]
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
        data_fingerprint=_fingerprint(config, loaded.log.content_sha256),
        test_rolling=test_rolling,
        load_log=loaded.log,
        screens=screens,
        channel_out_of_range=out_of_range,
        upstream_filled_days=filled_days,
        anomaly_steps=anomaly_steps,
    )


def _seasonal(config: TaskConfig, period: int) -> dict[str, Any]:
    """The seasonal-input fields of the FeatureSpec, in samples; the profile must be whole days."""
    seasonal = config.features.seasonal_inputs
    if seasonal is None:
        return {}
    field_name = "features.seasonal_inputs"
    lags = tuple(_steps(lag, period, f"{field_name}.lags[{i}]") for i, lag in enumerate(seasonal.lags))
    profile = 0
    if seasonal.profile is not None:
        if duration_seconds(seasonal.profile) % SECONDS_PER_DAY:
            raise ConfigError(f"{field_name}.profile: {seasonal.profile} is not a whole number of days, e.g. '7d'")
        profile = _steps(seasonal.profile, period, f"{field_name}.profile")
    if not lags and not profile:
        raise ConfigError(f"{field_name}: give at least one lag or a profile, or remove the section")
    return {"seasonal_lags": lags, "seasonal_profile_steps": profile}


def _max_gap_steps(config: TaskConfig, period: int) -> int:
    """The longest fillable gap in whole samples: a limit, so a duration between two steps rounds down."""
    return duration_seconds(config.features.gap_policy.max_gap) // period


def _anomaly_steps(config: TaskConfig, period: int) -> AnomalySteps:
    """The anomaly section's durations in samples of ``period`` s, refusing lengths the step cannot hold."""
    cfg = config.anomaly
    assert cfg is not None
    zscore = _steps(cfg.zscore_window, period, "anomaly.zscore_window")
    stale = _steps(cfg.stale_run, period, "anomaly.stale_run")
    for field_name, steps in (("zscore_window", zscore), ("stale_run", stale)):
        if steps < 2:
            raise ConfigError(
                f"anomaly.{field_name}: {getattr(cfg, field_name)} is {steps} sample(s); it needs "
                f"at least two samples of {period} s"
            )
    return AnomalySteps(
        score=1 if cfg.score_span is None else _steps(cfg.score_span, period, "anomaly.score_span"),
        train_stride=1 if cfg.train_stride is None else _steps(cfg.train_stride, period, "anomaly.train_stride"),
        zscore_window=zscore,
        stale_run=stale,
        stale_in_detector=cfg.stale_rule_in_detector,
    )


def _output_bounds(config: TaskConfig, spec: FeatureSpec) -> list[dict[str, Any]]:
    """Each target's physical limits: its channel's range (else data.columns', scaled); PV is 0 at night.

    A PV target's ``max_value`` is the system's rating: the forecast is clipped to [min, rating], and to
    zero whenever the sun is down at ``data.location`` (refused without one).
    """
    pv = config.task == "pv_forecast"
    if pv and config.data.location is None:
        raise ConfigError("data.location: a pv_forecast needs the site's latitude/longitude (PV is 0 at night)")
    bounds = []
    for target in spec.target_channels:
        channel = next(c for c in config.features.past if c.channel == target)
        rules = config.data.columns.get(channel.column)
        low, high = channel.min_value, channel.max_value
        if low is None and rules is not None and rules.min_value is not None:
            low = rules.min_value * channel.scale
        if high is None and rules is not None and rules.max_value is not None:
            high = rules.max_value * channel.scale
        bounds.append({"min_value": low, "max_value": high, "zero_when_sun_down": pv})
    return bounds


def forecast_step_times(prepared: PreparedTask, split: Split) -> NDArray[np.int64]:
    """UTC seconds of every forecast step of ``split``'s origins, ``(N, horizon_steps)``."""
    steps = np.arange(prepared.spec.horizon_steps, dtype=np.int64) * prepared.spec.sample_period_s
    return np.asarray(split.origin_times[:, None] + steps[None, :], dtype=np.int64)


def _unit(spec: FeatureSpec, channel: str) -> str:
    return next(c.unit for c in spec.past_channels if c.name == channel)


def _labelled(spec: FeatureSpec, config: TaskConfig, index: int) -> LabelledEvaluation:
    assert config.anomaly is not None
    item = config.anomaly.labelled[index]
    where = f"anomaly.labelled[{index}]"
    name = Path(item.path).name.split(".")[0]
    # Kept in sample order, not regularised: some labelled series omit nights entirely, and their
    # evening and next-morning samples (both near zero) join smoothly.
    try:
        frame = datasets.read_samples(item)
    except DataError as exc:
        raise DataError(f"{where}.{exc}") from exc
    for column_field, column in (("column", item.column), ("label_column", item.label_column)):
        if column not in frame.columns:
            raise ConfigError(
                f"{where}.{column_field}: unknown column {column!r} in {name!r}; use one of {list(frame.columns)}"
            )
    if len(spec.past_channels) != 1:
        raise ConfigError(
            f"{where}: labelled series carry one value column, so features.past must hold exactly one channel"
        )
    values = frame[item.column].to_numpy(np.float32)
    labels = frame[item.label_column].fillna(0).to_numpy(bool)
    timestamps = frame.index.as_unit("s").asi8.astype(np.int64)
    w = spec.input_steps
    if len(values) < w:
        raise ConfigError(f"{where}: {len(values)} rows are fewer than features.input_window ({w} steps)")
    series = Series(timestamps, values[:, None], None, np.zeros(len(values), bool), {})
    inputs, targets, origins = forecast_samples(spec, series.past, timestamps, None, np.arange(w, len(values) + 1))
    pipeline = FeaturePipeline(spec)
    split = Split(
        name=name,
        inputs=inputs,
        targets=targets.astype(np.float32),
        targets_normalised=pipeline.normalise_targets(targets),
        origins=origins,
        origin_times=timestamps[origins - 1],
    )
    return LabelledEvaluation(name, timestamps, values, labels, split)
