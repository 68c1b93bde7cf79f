"""Forecasts the planner runs on: the bundle's where it forecasts a channel, the on-device baseline elsewhere.

The baseline is :func:`edge_agent.baselines.seasonal_naive` (the same step one day earlier) over the
history the device measured, with its spread taken from its own recent residuals (today minus yesterday)
by hour of day: the P10/P90 of those errors, added to the P50, bound a bad day as this site has seen it.
The central closed-loop evaluation runs exactly this function, so what is evaluated is what runs.

A bundle forecast (:class:`edge_agent.messages.Forecast`, P50 in ``values`` and ``quantiles`` at named
levels) is placed on the plan's step grid by its period starts; steps it does not reach keep the baseline,
and quantile levels it does not carry are the baseline's spread around the bundle's P50.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from edge_agent.baselines import seasonal_naive
from edge_agent.messages import Forecast as ForecastMessage
from edge_agent.planning.dispatch import ChannelForecast, FloatArray

SECONDS_PER_DAY = 86_400
# Share of yesterday's steps that must be measured; the rest is interpolated, fewer is no forecast.
MIN_COVERAGE = 0.8
# kW per forecast unit: a bundle forecasts in the unit of its target channel.
KW_PER_UNIT = {"W": 1e-3, "kW": 1.0, "MW": 1e3}


class ForecastUnavailableError(ValueError):
    """No usable forecast for a channel; the message says why (too little history, unknown unit ...)."""


def baseline_forecast(
    history: NDArray[np.floating],
    history_starts: NDArray[np.int64],
    step_s: int,
    target_starts: NDArray[np.int64],
    levels: Sequence[float],
) -> ChannelForecast:
    """Seasonal-naive P50 at ``target_starts``, quantiles from its residuals by hour of day.

    ``history`` holds one value per period (NaN where nothing was measured), oldest first, on a regular
    grid of ``step_s`` with period starts ``history_starts``. Each target takes the last measured day's
    value at the same time of day (so a gap between history and targets is no problem). At least one day
    is needed; every day beyond the first adds one day of residuals to the spread.
    """
    values = np.asarray(history, dtype=np.float64)
    period = SECONDS_PER_DAY // step_s
    if values.size < period:
        raise ForecastUnavailableError(f"{values.size} of the {period} measured steps a day-ahead baseline needs")
    measured = np.isfinite(values[-period:])
    if measured.mean() < MIN_COVERAGE:
        raise ForecastUnavailableError(
            f"only {int(measured.sum())} of the last {period} steps measured (needs {MIN_COVERAGE:.0%})"
        )
    season = seasonal_naive(_interpolated(values)[np.newaxis, :, np.newaxis], period, period)[0, :, 0]
    targets = np.asarray(target_starts, dtype=np.int64)
    p50 = season[((targets - int(history_starts[-period])) // step_s) % period].astype(np.float64)
    quantiles: dict[float, FloatArray] = {}
    paths: dict[float, FloatArray] = {}
    if values.size > period:
        errors = values[period:] - values[:-period]
        error_starts = np.asarray(history_starts[period:], dtype=np.int64)
        error_hours = _hour_of_day(error_starts)
        for level in levels:
            quantiles[float(level)] = np.maximum(p50 + _by_hour(errors, error_hours, level)[_hour_of_day(targets)], 0.0)
            path = _bad_day_path(errors, error_starts, targets, level)
            if path is not None:
                paths[float(level)] = np.maximum(p50 + path, 0.0)
    return ChannelForecast(p50=np.maximum(p50, 0.0), quantiles=quantiles, paths=paths)


def _bad_day_path(
    errors: FloatArray, error_starts: NDArray[np.int64], targets: NDArray[np.int64], level: float
) -> FloatArray | None:
    """Per-step deviations whose running sum is the ``level`` quantile of the running sums of past errors.

    The past windows start at the same time of day as the first target (so an evening keeps the shape
    of evenings), as many as the history holds for the whole horizon; None when there is none.
    """
    horizon = targets.size
    same_time = (error_starts - int(targets[0])) % SECONDS_PER_DAY == 0
    starts = np.flatnonzero(same_time)
    starts = starts[starts + horizon <= errors.size]
    if starts.size == 0:
        return None
    windows = errors[starts[:, np.newaxis] + np.arange(horizon)]
    if not np.isfinite(windows).all():
        windows = np.where(np.isfinite(windows), windows, 0.0)
    cumulative = np.quantile(np.cumsum(windows, axis=1), level, axis=0)
    steps = np.diff(cumulative, prepend=0.0)
    # A bad day for load is one with more of it, for PV one with less: no step on the good side.
    return np.maximum(steps, 0.0) if level > 0.5 else np.minimum(steps, 0.0)


def _interpolated(values: FloatArray) -> FloatArray:
    good = np.isfinite(values)
    if good.all():
        return values
    index = np.arange(values.size)
    return np.interp(index, index[good], values[good])


def _hour_of_day(starts: NDArray[np.int64]) -> NDArray[np.int64]:
    return ((np.asarray(starts, dtype=np.int64) % SECONDS_PER_DAY) // 3600).astype(np.int64)


def _by_hour(errors: FloatArray, hours: NDArray[np.int64], level: float) -> FloatArray:
    """The ``level`` quantile of the errors of each hour of day; hours never seen take the overall one."""
    finite = np.isfinite(errors)
    overall = float(np.quantile(errors[finite], level)) if finite.any() else 0.0
    out = np.full(24, overall)
    for hour in range(24):
        chosen = errors[(hours == hour) & finite]
        if chosen.size:
            out[hour] = float(np.quantile(chosen, level))
    return out


def from_message(
    message: ForecastMessage, plan_starts: NDArray[np.int64], fallback: ChannelForecast | None
) -> ChannelForecast:
    """A bundle forecast on the plan's step grid in kW, completed by ``fallback`` where it does not reach.

    Raises :class:`ForecastUnavailableError` for a unit that is not a power, or when the bundle leaves steps
    uncovered and there is no fallback to fill them.
    """
    unit = message.unit or ""
    if unit not in KW_PER_UNIT:
        raise ForecastUnavailableError(f"forecast of {message.target} is in {unit!r}, not one of {sorted(KW_PER_UNIT)}")
    to_kw = KW_PER_UNIT[unit]
    origin = int(message.origin.timestamp())

    def on_grid(values: Sequence[float | None]) -> FloatArray:
        series = np.array([np.nan if v is None else v for v in values], dtype=np.float64) * to_kw
        starts = origin + message.step_s * np.arange(series.size)
        good = np.isfinite(series)
        if not good.any():
            return np.full(plan_starts.size, np.nan)
        inside = (plan_starts >= starts[0]) & (plan_starts <= starts[-1])
        return np.where(inside, np.interp(plan_starts, starts[good], series[good]), np.nan)

    p50 = on_grid(message.values)
    quantiles = {round(q.level, 6): on_grid(q.values) for q in (message.quantiles or [])}
    covered = np.isfinite(p50)
    if fallback is None:
        if not covered.all():
            raise ForecastUnavailableError(
                f"forecast of {message.target} covers {int(covered.sum())} of {plan_starts.size} plan steps "
                "and the baseline has too little history to fill the rest"
            )
        complete = {level: values for level, values in quantiles.items() if np.isfinite(values).all()}
        return ChannelForecast(p50=np.maximum(p50, 0.0), quantiles={k: np.maximum(v, 0.0) for k, v in complete.items()})
    merged_p50 = np.where(covered, p50, fallback.p50)
    paths = {level: merged_p50 + (path - fallback.p50) for level, path in fallback.paths.items()}
    merged: dict[float, FloatArray] = {}
    for level, baseline_values in fallback.quantiles.items():
        model_values = quantiles.get(round(level, 6))
        spread = baseline_values - fallback.p50
        own = np.where(covered, p50 + spread, baseline_values)
        merged[level] = np.where(np.isfinite(model_values), model_values, own) if model_values is not None else own
    return ChannelForecast(
        p50=np.maximum(merged_p50, 0.0),
        quantiles={k: np.maximum(v, 0.0) for k, v in merged.items()},
        paths={k: np.maximum(v, 0.0) for k, v in paths.items()},
    )
