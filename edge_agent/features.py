"""The feature pipeline shared by the trainer, the exporter and the device.

Everything that turns raw sensor values into model inputs lives here, numpy only, so that the model
sees the same numbers in training and on the device (no train/serve skew):

* a declared gap policy: short runs of missing values are filled by hold or linear interpolation, longer
  runs leave the window invalid with a reason;
* normalisation with statistics fitted once on the training split and serialised into the bundle;
* calendar features (hour of day, day of week as sin/cos) computed from UTC timestamps in the site's
  local time zone;
* windowing of a multichannel series into (past window -> horizon) samples.

Arrays are time-major: a series is ``(T, C)``, a batch of windows ``(N, T, C)``. Timestamps are UTC epoch
seconds (int64). One batch path serves both sides: the device builds a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator, model_validator

from edge_agent.arrays import FloatArray
from edge_agent.errors import FeatureError
from edge_agent.ranges import PlausibleRange
from edge_agent.yamlconfig import StrictModel

CALENDAR_FEATURES = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
# A channel whose training spread is below this is constant; dividing by its std would blow up noise.
MIN_STD = 1e-6
SECONDS_PER_DAY = 86_400
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY
# Windows built at once when cutting a series into samples (bounds memory, not results).
SAMPLE_CHUNK = 2048


class ChannelSpec(PlausibleRange, frozen=True):
    """One measured quantity: its name, unit and physically plausible range."""

    name: str = Field(min_length=1, title="Name")
    """Channel name as used in data and configs."""
    unit: str = Field(title="Unit")
    """Physical unit, e.g. kW, W, degC, W/m2."""


class GapPolicy(StrictModel, frozen=True):
    """How missing values inside a window are treated."""

    method: Literal["hold", "interpolate"] = Field(default="interpolate", title="Fill method")
    """hold repeats the last good value; interpolate draws a line between good neighbours."""
    max_gap_steps: int = Field(default=4, ge=0, title="Longest fillable gap")
    """Runs of missing samples up to this length are filled; longer runs invalidate the window."""


class NormalisationStats(StrictModel, frozen=True):
    """Per-channel mean and standard deviation, fitted once on the training split."""

    channels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _lengths_match(self) -> NormalisationStats:
        if not len(self.channels) == len(self.mean) == len(self.std):
            raise ValueError("normalisation: channels, mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError("normalisation: every std must be positive")
        return self

    @classmethod
    def fit(cls, values: NDArray[np.floating], channels: Sequence[str]) -> NormalisationStats:
        """Fit statistics on ``values`` (T, C), ignoring missing values; refuses all-missing channels."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(channels):
            raise FeatureError(
                f"normalisation: expected a (time, {len(channels)}) array for channels {list(channels)}, "
                f"got shape {values.shape}"
            )
        finite = np.isfinite(values)
        empty = [name for name, ok in zip(channels, finite.any(axis=0), strict=True) if not ok]
        if empty:
            raise FeatureError(
                f"channel(s) {empty} have no valid value in the training data; drop them from the task "
                "config or fix the data source"
            )
        masked = np.where(finite, values, np.nan)
        mean = np.nanmean(masked, axis=0)
        std = np.nanstd(masked, axis=0)
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(channels=tuple(channels), mean=tuple(map(float, mean)), std=tuple(map(float, std)))

    def _vectors(self, channels: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        index = {name: i for i, name in enumerate(self.channels)}
        missing = [c for c in channels if c not in index]
        if missing:
            raise FeatureError(f"normalisation has no statistics for channel(s) {missing}")
        idx = [index[c] for c in channels]
        mean = np.asarray(self.mean, dtype=np.float64)[idx]
        std = np.asarray(self.std, dtype=np.float64)[idx]
        return mean.astype(np.float32), std.astype(np.float32)

    def transform(self, values: NDArray[np.floating], channels: Sequence[str]) -> FloatArray:
        """Scale raw values whose last axis is ``channels`` to zero mean and unit spread."""
        mean, std = self._vectors(channels)
        return ((np.asarray(values, dtype=np.float32) - mean) / std).astype(np.float32)

    def inverse(self, values: NDArray[np.floating], channels: Sequence[str]) -> FloatArray:
        """Undo :meth:`transform`, returning values in the channels' physical units."""
        mean, std = self._vectors(channels)
        return (np.asarray(values, dtype=np.float32) * std + mean).astype(np.float32)


def fill_gaps(values: NDArray[np.floating], policy: GapPolicy) -> FloatArray:
    """Fill runs of NaN no longer than ``policy.max_gap_steps`` along the time axis (-2).

    Works on a series ``(T, C)`` or a batch ``(N, T, C)``; each window is filled from its own values
    only, so the device (which sees one window) and training (which sees many) agree exactly. Leading
    gaps take the first good value and trailing gaps hold the last one; longer runs stay NaN.
    """
    x = np.array(values, dtype=np.float32, copy=True)
    if x.ndim < 2:
        raise FeatureError(f"fill_gaps expects (time, channels) or (batch, time, channels), got {x.shape}")
    missing = ~np.isfinite(x)
    if not missing.any() or policy.max_gap_steps == 0:
        return np.where(missing, np.float32(np.nan), x)
    steps = x.shape[-2]
    shape = [1] * x.ndim
    shape[-2] = steps
    t = np.arange(steps).reshape(shape)
    prev_good = np.maximum.accumulate(np.where(missing, -1, t), axis=-2)
    next_good = np.flip(np.minimum.accumulate(np.flip(np.where(missing, steps, t), -2), axis=-2), -2)
    has_prev, has_next = prev_good >= 0, next_good < steps
    run = np.where(has_prev, prev_good, -1)
    run_length = np.where(has_next, next_good, steps) - run - 1
    fillable = missing & (run_length <= policy.max_gap_steps) & (has_prev | has_next)

    prev_value = np.take_along_axis(x, np.clip(prev_good, 0, steps - 1), axis=-2)
    next_value = np.take_along_axis(x, np.clip(next_good, 0, steps - 1), axis=-2)
    if policy.method == "hold":
        filled = np.where(has_prev, prev_value, next_value)
    else:
        span = np.maximum(next_good - prev_good, 1)
        weight = ((t - prev_good) / span).astype(np.float32)
        line = prev_value + (next_value - prev_value) * weight
        filled = np.where(has_prev & has_next, line, np.where(has_prev, prev_value, next_value))
    x = np.where(fillable, filled, x)
    return np.where(np.isfinite(x), x, np.float32(np.nan)).astype(np.float32)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FeatureError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris' or 'America/Denver'"
        ) from exc


def local_seconds(timestamps_utc: NDArray[np.integer], timezone: str) -> NDArray[np.int64]:
    """Shift UTC epoch seconds to the site's local wall-clock seconds (daylight saving included)."""
    ts = np.asarray(timestamps_utc, dtype=np.int64)
    zone = _zone(timezone)
    # Offsets change at most at whole quarter hours; look each distinct quarter hour up once.
    quarters, inverse = np.unique(ts // 900, return_inverse=True)
    offsets = np.fromiter(
        (
            int(offset.total_seconds())
            if (offset := datetime.fromtimestamp(int(q) * 900, UTC).astimezone(zone).utcoffset())
            else 0
            for q in quarters
        ),
        dtype=np.int64,
        count=len(quarters),
    )
    return ts + offsets[inverse].reshape(ts.shape)


def calendar_features(timestamps_utc: NDArray[np.integer], timezone: str) -> FloatArray:
    """Hour of day and day of week as sin/cos pairs, shape ``(*timestamps.shape, 4)``."""
    local = local_seconds(timestamps_utc, timezone)
    day_phase = 2 * np.pi * (local % SECONDS_PER_DAY) / SECONDS_PER_DAY
    # Epoch day 0 (1970-01-01) was a Thursday; shift so that Monday 00:00 has phase 0.
    week_phase = 2 * np.pi * ((local + 3 * SECONDS_PER_DAY) % SECONDS_PER_WEEK) / SECONDS_PER_WEEK
    return np.stack([np.sin(day_phase), np.cos(day_phase), np.sin(week_phase), np.cos(week_phase)], axis=-1).astype(
        np.float32
    )


class SiteLocation(StrictModel, frozen=True):
    """Where the site is: what derived astronomical channels are computed for."""

    latitude: float = Field(ge=-90, le=90, title="Latitude")
    """Degrees north."""
    longitude: float = Field(ge=-180, le=180, title="Longitude")
    """Degrees east (west is negative)."""


class OutputBounds(PlausibleRange, frozen=True):
    """Physical limits of one forecast target, applied to decoded forecasts in training and on the device.

    ``min_value``/``max_value`` clip the forecast (a PV system cannot export below zero or above its
    rating); ``zero_when_sun_down`` forces it to zero for steps the sun spends below the horizon at the
    site (``FeatureSpec.location``), as the measured PV output is.
    """

    zero_when_sun_down: bool = Field(default=False, title="Zero when the sun is down")
    """PV output: 0 while the sun is down."""


def _clear_sky_ghi(timestamps_utc: NDArray[np.integer], location: SiteLocation) -> FloatArray:
    from edge_agent.solar import clear_sky_ghi

    return clear_sky_ghi(timestamps_utc, location.latitude, location.longitude)


# Channels computed from the timestamp and the site's location, identically in training and on the device.
DERIVED_CHANNELS = {"clear_sky_ghi": _clear_sky_ghi}


def derive_channels(
    names: Sequence[str], timestamps_utc: NDArray[np.integer], location: SiteLocation | None
) -> FloatArray:
    """Values ``(*timestamps.shape, len(names))`` of derived channels (e.g. ``clear_sky_ghi``)."""
    unknown = [n for n in names if n not in DERIVED_CHANNELS]
    if unknown:
        raise FeatureError(f"channel(s) {unknown} cannot be derived; derivable: {sorted(DERIVED_CHANNELS)}")
    if location is None:
        raise FeatureError(f"derived channel(s) {list(names)} need the site location (latitude, longitude)")
    ts = np.asarray(timestamps_utc, dtype=np.int64)
    return np.stack([DERIVED_CHANNELS[n](ts, location) for n in names], axis=-1).astype(np.float32)


class FeatureSpec(StrictModel, frozen=True):
    """Everything needed to turn raw channels into model inputs; carried in every bundle's manifest."""

    sample_period_s: int = Field(gt=0, title="Sample period")
    """Seconds between samples."""
    input_steps: int = Field(gt=0, title="Input window")
    """Past samples the model sees."""
    horizon_steps: int = Field(ge=0, title="Horizon")
    """Future samples forecast; 0 for a reconstruction (anomaly) model."""
    past_channels: tuple[ChannelSpec, ...] = Field(min_length=1, title="Observed channels")
    """Measured channels fed as history."""
    target_channels: tuple[str, ...] = Field(min_length=1, title="Targets")
    """Channels the model forecasts (or reconstructs); each must be an observed channel."""
    known_future_channels: tuple[ChannelSpec, ...] = Field(default=(), title="Known-future channels")
    """Channels known over the horizon in advance, e.g. clear-sky irradiance."""
    calendar: bool = Field(default=True, title="Calendar features")
    """Add hour-of-day and day-of-week as sin/cos."""
    timezone: str = Field(default="UTC", title="Site time zone")
    """IANA zone used for the calendar features."""
    gap_policy: GapPolicy = Field(default_factory=GapPolicy, title="Gap policy")
    location: SiteLocation | None = Field(default=None, title="Site location")
    """Needed by derived channels such as clear_sky_ghi."""
    normalisation: NormalisationStats | None = Field(default=None, title="Normalisation")
    """Fitted on the training split; required to serve."""
    seasonal_lags: tuple[int, ...] = Field(default=(), title="Seasonal lags")
    """Periods in samples (a day, a week) whose seasonal-naive forecast of each target is fed over the horizon as a
    known-future input, so the model learns a correction of those baselines."""
    seasonal_profile_steps: int = Field(default=0, ge=0, title="Seasonal profile")
    """Also feed each target's mean at the same time of day over this many past samples (whole days); 0 = none."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            _zone(value)
        except FeatureError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _targets_observed(self) -> FeatureSpec:
        observed = [c.name for c in self.past_channels]
        unknown = [t for t in self.target_channels if t not in observed]
        if unknown:
            raise ValueError(f"target channel(s) {unknown} are not among the observed channels {observed}")
        if len(set(observed)) != len(observed):
            raise ValueError(f"observed channel names repeat: {observed}")
        derived = [c.name for c in (*self.past_channels, *self.known_future_channels) if c.name in DERIVED_CHANNELS]
        if derived and self.location is None:
            raise ValueError(f"derived channel(s) {derived} need location (latitude, longitude) of the site")
        if self.known_future_channels and self.horizon_steps == 0:
            raise ValueError("known_future_channels need a horizon; set horizon_steps > 0 or remove them")
        if (self.seasonal_lags or self.seasonal_profile_steps) and self.horizon_steps == 0:
            raise ValueError("seasonal inputs need a horizon; set horizon_steps > 0 or remove them")
        if any(lag <= 0 for lag in self.seasonal_lags):
            raise ValueError(f"seasonal_lags must be positive numbers of samples, got {list(self.seasonal_lags)}")
        if self.seasonal_profile_steps and (
            SECONDS_PER_DAY % self.sample_period_s or self.seasonal_profile_steps % self.day_steps
        ):
            raise ValueError(
                f"seasonal_profile_steps ({self.seasonal_profile_steps}) must be whole days of "
                f"{self.sample_period_s} s samples"
            )
        return self

    @property
    def day_steps(self) -> int:
        return SECONDS_PER_DAY // self.sample_period_s

    @property
    def window_steps(self) -> int:
        """Samples of history the pipeline needs: the model's input window, or more for seasonal inputs."""
        return max(self.input_steps, *self.seasonal_lags, self.seasonal_profile_steps)

    @property
    def seasonal_feature_names(self) -> tuple[str, ...]:
        """Per target: one seasonal-naive forecast per lag, then the same-time-of-day profile."""
        names: list[str] = []
        for target in self.target_channels:
            names += [f"{target}_lag_{lag}" for lag in self.seasonal_lags]
            if self.seasonal_profile_steps:
                names.append(f"{target}_profile_{self.seasonal_profile_steps}")
        return tuple(names)

    @property
    def seasonal_feature_targets(self) -> tuple[str, ...]:
        """The target each seasonal feature is a forecast of (its normalisation)."""
        per_target = len(self.seasonal_lags) + (1 if self.seasonal_profile_steps else 0)
        return tuple(t for t in self.target_channels for _ in range(per_target))

    @property
    def past_channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.past_channels)

    @property
    def future_channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.known_future_channels)

    @property
    def past_feature_names(self) -> tuple[str, ...]:
        return self.past_channel_names + (CALENDAR_FEATURES if self.calendar else ())

    @property
    def future_feature_names(self) -> tuple[str, ...]:
        if self.horizon_steps == 0:
            return ()
        return self.future_channel_names + self.seasonal_feature_names + (CALENDAR_FEATURES if self.calendar else ())

    @property
    def derived_past_channels(self) -> tuple[str, ...]:
        """Observed channels the device computes itself instead of reading a sensor."""
        return tuple(c.name for c in self.past_channels if c.name in DERIVED_CHANNELS)

    @property
    def future_is_derivable(self) -> bool:
        """True when every known-future channel can be computed on the device."""
        return all(c.name in DERIVED_CHANNELS for c in self.known_future_channels)

    @property
    def is_forecast(self) -> bool:
        return self.horizon_steps > 0

    def with_normalisation(self, stats: NormalisationStats) -> FeatureSpec:
        """Return a copy carrying ``stats``, checked to cover every channel the pipeline scales."""
        needed = set(self.past_channel_names) | set(self.future_channel_names)
        missing = sorted(needed - set(stats.channels))
        if missing:
            raise FeatureError(f"normalisation lacks channel(s) {missing}")
        return self.model_copy(update={"normalisation": stats})


@dataclass(frozen=True)
class ModelInputs:
    """A batch of model inputs in network layout, plus which windows are usable and why not.

    ``past`` is ``(N, input_steps, len(past_feature_names))``; ``future`` is
    ``(N, horizon_steps, len(future_feature_names))`` or None when the model has no future input.
    Rows with ``valid[i] == False`` hold NaN and must not be fed to a model; ``reasons[i]`` says why.
    """

    past: FloatArray
    future: FloatArray | None
    valid: NDArray[np.bool_]
    reasons: tuple[str | None, ...]

    def as_feeds(self) -> dict[str, FloatArray]:
        """The named tensors a runtime feeds to the model (``past`` and, if any, ``future``)."""
        feeds = {"past": self.past}
        if self.future is not None:
            feeds["future"] = self.future
        return feeds


class FeaturePipeline:
    """Builds normalised model inputs from raw windows, and turns model outputs back into units."""

    def __init__(self, spec: FeatureSpec) -> None:
        if spec.normalisation is None:
            raise FeatureError("the feature spec has no normalisation statistics; fit them on training data")
        self.spec = spec
        self.stats: NormalisationStats = spec.normalisation

    def build(
        self,
        past_values: NDArray[np.floating],
        past_timestamps: NDArray[np.integer],
        future_values: NDArray[np.floating] | None = None,
        future_timestamps: NDArray[np.integer] | None = None,
    ) -> ModelInputs:
        """Turn raw windows into model inputs.

        ``past_values`` is ``(N, window_steps, C_past)`` (or one window without the batch axis) in the
        order of ``spec.past_channels``; ``past_timestamps`` matches its leading axes. The model sees the
        newest ``input_steps`` of it; seasonal inputs are cut from the whole window. For forecast models
        ``future_timestamps`` ``(N, horizon_steps)`` is required and ``future_values`` carries the
        known-future channels, if the spec has any.
        """
        spec = self.spec
        history = _batched(past_values, spec.window_steps, len(spec.past_channels), "past_values")
        batch = history.shape[0]
        past_ts = np.asarray(past_timestamps, dtype=np.int64).reshape(batch, spec.window_steps)[:, -spec.input_steps :]
        filled_history = fill_gaps(history, spec.gap_policy)
        filled = filled_history[:, -spec.input_steps :]
        reasons = _gap_reasons(filled, spec.past_channel_names, spec.gap_policy)
        parts = [self.stats.transform(filled, spec.past_channel_names)]
        if spec.calendar:
            parts.append(calendar_features(past_ts, spec.timezone))
        past_features = np.concatenate(parts, axis=-1)

        future_features: FloatArray | None = None
        if spec.is_forecast:
            if future_timestamps is None:
                raise FeatureError("a forecast model needs future_timestamps for its horizon")
            future_ts = np.asarray(future_timestamps, dtype=np.int64).reshape(batch, spec.horizon_steps)
            future_parts: list[FloatArray] = []
            if spec.known_future_channels:
                if future_values is None:
                    raise FeatureError(f"this model needs known-future values for {list(spec.future_channel_names)}")
                future = _batched(future_values, spec.horizon_steps, len(spec.known_future_channels), "future_values")
                future_filled = fill_gaps(future, spec.gap_policy)
                future_reasons = _gap_reasons(future_filled, spec.future_channel_names, spec.gap_policy)
                reasons = [r or fr for r, fr in zip(reasons, future_reasons, strict=True)]
                future_parts.append(self.stats.transform(future_filled, spec.future_channel_names))
            if spec.seasonal_feature_names:
                seasonal = seasonal_forecasts(filled_history, spec)
                gaps = np.asarray(~np.isfinite(seasonal).all(axis=(1, 2)), dtype=bool).tolist()
                why = f"seasonal history of {list(spec.target_channels)} has a gap longer than the fill limit"
                reasons = [r or (why if gap else None) for r, gap in zip(reasons, gaps, strict=True)]
                future_parts.append(self.stats.transform(seasonal, spec.seasonal_feature_targets))
            if spec.calendar:
                future_parts.append(calendar_features(future_ts, spec.timezone))
            if future_parts:
                future_features = np.concatenate(future_parts, axis=-1)

        valid = np.array([r is None for r in reasons], dtype=bool)
        return ModelInputs(
            past=past_features.astype(np.float32),
            future=None if future_features is None else future_features.astype(np.float32),
            valid=valid,
            reasons=tuple(reasons),
        )

    def normalise_targets(self, values: NDArray[np.floating]) -> FloatArray:
        """Scale raw target values (last axis = ``spec.target_channels``) as the model's outputs are."""
        return self.stats.transform(values, self.spec.target_channels)

    def decode(
        self,
        outputs: NDArray[np.floating],
        step_times: NDArray[np.integer] | None = None,
        bounds: Sequence[OutputBounds] = (),
    ) -> FloatArray:
        """Turn normalised model outputs (last axis = targets) into physical units within ``bounds``.

        ``bounds`` holds one entry per target (the bundle's ``OutputSpec.bounds``; empty = unbounded);
        ``step_times`` (UTC seconds of each output step, shaped like ``outputs`` without its last axis)
        are needed by ``zero_when_sun_down``.
        """
        decoded = self.stats.inverse(outputs, self.spec.target_channels)
        return within_bounds(decoded, bounds, self.spec, step_times)


def seasonal_forecasts(history: NDArray[np.floating], spec: FeatureSpec) -> FloatArray:
    """Seasonal-naive forecasts of each target over the horizon from gap-filled windows, in units.

    ``history`` is ``(N, window_steps, C_past)``; the result ``(N, horizon_steps, len(seasonal_feature_names))``
    holds, per target, the value one lag earlier at each horizon step (repeating the last lag when the
    horizon is longer) and the mean of the same time of day over the profile's days (missing days skipped).
    """
    x = np.asarray(history, dtype=np.float32)
    n, w = x.shape[0], x.shape[1]
    steps = np.arange(spec.horizon_steps)
    columns: list[FloatArray] = []
    for target in spec.target_channels:
        series = x[:, :, spec.past_channel_names.index(target)]
        columns += [series[:, w - lag + steps % lag] for lag in spec.seasonal_lags]
        if spec.seasonal_profile_steps:
            day = spec.day_steps
            days = series[:, w - spec.seasonal_profile_steps :].reshape(n, -1, day)
            seen = np.isfinite(days)
            count = seen.sum(axis=1)
            total = np.where(seen, days, 0).sum(axis=1)
            profile = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            columns.append(profile[:, steps % day].astype(np.float32))
    return np.stack(columns, axis=-1).astype(np.float32)


def within_bounds(
    values: NDArray[np.floating],
    bounds: Sequence[OutputBounds],
    spec: FeatureSpec,
    step_times: NDArray[np.integer] | None = None,
) -> FloatArray:
    """Forecasts in units (last axis = ``spec.target_channels``) clipped to ``bounds``, 0 where the sun is down.

    Empty ``bounds`` leave the values as they are (bundles written before bounds existed).
    """
    array = np.asarray(values, dtype=np.float32)
    if not bounds:
        return array
    if len(bounds) != len(spec.target_channels):
        raise FeatureError(f"{len(bounds)} output bounds for targets {list(spec.target_channels)}")
    lower = np.array([-np.inf if b.min_value is None else b.min_value for b in bounds], dtype=np.float32)
    upper = np.array([np.inf if b.max_value is None else b.max_value for b in bounds], dtype=np.float32)
    array = np.clip(array, lower, upper)
    night = np.array([b.zero_when_sun_down for b in bounds])
    if night.any():
        if step_times is None or spec.location is None:
            raise FeatureError("zero_when_sun_down needs the forecast step times and the site location")
        from edge_agent.solar import sun_down

        times = np.asarray(step_times, dtype=np.int64)
        dark = sun_down(times, spec.sample_period_s, spec.location.latitude, spec.location.longitude)
        array = np.where(dark[..., np.newaxis] & night, np.float32(0), array)
    return array.astype(np.float32)


def _batched(values: NDArray[np.floating], steps: int, channels: int, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (steps, channels):
        raise FeatureError(
            f"{name}: expected shape (batch, {steps}, {channels}) or ({steps}, {channels}), got {array.shape}"
        )
    return array


def _gap_reasons(filled: FloatArray, channels: Sequence[str], policy: GapPolicy) -> list[str | None]:
    still_missing = ~np.isfinite(filled)
    reasons: list[str | None] = []
    for window in still_missing:
        bad = window.any(axis=0)
        if not bad.any():
            reasons.append(None)
            continue
        names = [c for c, b in zip(channels, bad, strict=True) if b]
        longest = max(_longest_run(window[:, i]) for i in np.flatnonzero(bad))
        reasons.append(f"gap of {longest} samples in {names} exceeds the fill limit of {policy.max_gap_steps}")
    return reasons


def _longest_run(mask: NDArray[np.bool_]) -> int:
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def sliding_windows(series: NDArray[np.floating], length: int, stride: int = 1) -> FloatArray:
    """All windows of ``length`` consecutive rows of ``series`` (T, ...) every ``stride`` rows, as a view."""
    array = np.asarray(series)
    if length <= 0 or stride <= 0:
        raise FeatureError(f"window length and stride must be positive (got {length}, {stride})")
    if array.shape[0] < length:
        raise FeatureError(f"series of {array.shape[0]} samples is shorter than the window of {length}")
    view = np.lib.stride_tricks.sliding_window_view(array, length, axis=0)[::stride]
    return np.moveaxis(view, -1, 1)


def forecast_samples(
    spec: FeatureSpec,
    values: NDArray[np.floating],
    timestamps: NDArray[np.integer],
    future_values: NDArray[np.floating] | None = None,
    origins: NDArray[np.integer] | None = None,
) -> tuple[ModelInputs, FloatArray, NDArray[np.int64]]:
    """Cut a series into training/evaluation samples for a forecast (or reconstruction) model.

    ``values`` is ``(T, C_past)`` raw, ``timestamps`` ``(T,)`` UTC seconds on a regular grid and
    ``future_values`` ``(T, C_future)`` the known-future channels on the same grid. ``origins`` are row
    indices where a forecast is made (the first forecast step); by default every row that has a full
    window behind and a full horizon ahead. Returns the inputs, the raw targets ``(N, H or W, targets)``
    and the origin indices. Targets with gaps make the sample invalid too.
    """
    values = np.asarray(values, dtype=np.float32)
    ts = np.asarray(timestamps, dtype=np.int64)
    w, h = spec.window_steps, spec.horizon_steps
    if values.ndim != 2 or values.shape[1] != len(spec.past_channels):
        raise FeatureError(
            f"values: expected (time, {len(spec.past_channels)}) for {list(spec.past_channel_names)}, "
            f"got {values.shape}"
        )
    if len(ts) != len(values):
        raise FeatureError(f"{len(ts)} timestamps for {len(values)} rows of values")
    if len(values) < w + h:
        raise FeatureError(
            f"{len(values)} samples are too few for a window of {w} plus a horizon of {h}; "
            "use more data or a shorter window"
        )
    if origins is None:
        origins = np.arange(w, len(values) - h + 1)
    origin_index: NDArray[np.int64] = np.asarray(origins, dtype=np.int64)
    origins = origin_index
    if len(origins) == 0 or origins.min() < w or origins.max() > len(values) - h:
        raise FeatureError(f"forecast origins must lie in [{w}, {len(values) - h}]")

    past_idx = origins[:, None] + np.arange(-w, 0)[None, :]
    pipeline = FeaturePipeline(spec)
    future_idx = origins[:, None] + np.arange(h)[None, :]
    if spec.known_future_channels and future_values is None:
        raise FeatureError(f"future_values needed for {list(spec.future_channel_names)}")
    # In chunks: a week of history per origin would otherwise hold every window (and the gap filler's
    # index arrays) in memory at once.
    chunks = []
    for start in range(0, len(origins), SAMPLE_CHUNK):
        rows = slice(start, start + SAMPLE_CHUNK)
        future = None if future_values is None else np.asarray(future_values, dtype=np.float32)[future_idx[rows]]
        future = future if spec.known_future_channels else None
        chunks.append(
            pipeline.build(values[past_idx[rows]], ts[past_idx[rows]], future, ts[future_idx[rows]] if h else None)
        )
    inputs = ModelInputs(
        past=np.concatenate([c.past for c in chunks]),
        future=None if chunks[0].future is None else np.concatenate([c.future for c in chunks if c.future is not None]),
        valid=np.concatenate([c.valid for c in chunks]),
        reasons=tuple(r for c in chunks for r in c.reasons),
    )

    target_cols = [spec.past_channel_names.index(t) for t in spec.target_channels]
    target_idx = future_idx if h else past_idx
    targets = values[target_idx][..., target_cols]
    target_missing = ~np.isfinite(targets).all(axis=(1, 2))
    valid = inputs.valid & ~target_missing
    reasons = tuple(
        r if r is not None else ("target has missing values" if miss else None)
        for r, miss in zip(inputs.reasons, target_missing, strict=True)
    )
    return ModelInputs(inputs.past, inputs.future, valid, reasons), targets.astype(np.float32), origin_index
