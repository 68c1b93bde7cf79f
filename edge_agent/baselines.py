"""Baseline forecasters, numpy only: the device's fallback when its model fails, and the trainer's yardstick.

All take a batch of histories ``(N, T, C)`` in physical units (most recent sample last) and return
forecasts ``(N, horizon, C)``. The trainer scores exactly these functions, so the fallback a device runs
is the baseline its model was shown to beat.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge_agent.arrays import FloatArray
from edge_agent.errors import FeatureError

# Below this clear-sky irradiance (W/m2) a ratio of two clear-sky values is noise (dawn, dusk, night).
MIN_CLEAR_SKY = 20.0


def _history(values: NDArray[np.floating], name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1] == 0:
        raise FeatureError(f"{name}: expected a (batch, time, channels) history, got {array.shape}")
    return array


def persistence(history: NDArray[np.floating], horizon: int) -> FloatArray:
    """Repeat the last observed value over the horizon."""
    past = _history(history, "persistence")
    return np.repeat(past[:, -1:, :], horizon, axis=1)


def seasonal_naive(history: NDArray[np.floating], horizon: int, period_steps: int) -> FloatArray:
    """Forecast each step with the value one season (e.g. a day, a week) earlier."""
    past = _history(history, "seasonal_naive")
    if past.shape[1] < period_steps:
        raise FeatureError(
            f"seasonal_naive needs {period_steps} samples of history (one season), got {past.shape[1]}; "
            "keep a longer history buffer or use a shorter period"
        )
    season = past[:, past.shape[1] - period_steps :, :]
    reps = -(-horizon // period_steps)
    return np.tile(season, (1, reps, 1))[:, :horizon, :]


def clear_sky_scaled_persistence(
    history: NDArray[np.floating],
    history_clear_sky: NDArray[np.floating],
    future_clear_sky: NDArray[np.floating],
    period_steps: int,
) -> FloatArray:
    """PV: yesterday's production at the same time, scaled by today's over yesterday's clear-sky irradiance.

    ``history_clear_sky`` ``(N, T)`` aligns with ``history``; ``future_clear_sky`` ``(N, horizon)``. Where
    either clear-sky value is below :data:`MIN_CLEAR_SKY` the unscaled seasonal-naive value is kept.
    """
    horizon = np.asarray(future_clear_sky).shape[-1]
    naive = seasonal_naive(history, horizon, period_steps)
    past_clear = _history(np.asarray(history_clear_sky, dtype=np.float32)[..., np.newaxis], "clear sky")
    clear_then = seasonal_naive(past_clear, horizon, period_steps)[..., 0]
    clear_now = np.asarray(future_clear_sky, dtype=np.float32).reshape(clear_then.shape)
    usable = (clear_then >= MIN_CLEAR_SKY) & (clear_now >= MIN_CLEAR_SKY)
    ratio = np.where(usable, clear_now / np.where(usable, clear_then, 1.0), 1.0).astype(np.float32)
    return (naive * ratio[..., np.newaxis]).astype(np.float32)
