"""Anomaly scoring shared by the trainer and the device, numpy only.

A reconstruction model returns its input window, normalised; the anomaly score of a window is the mean
absolute reconstruction error over its newest ``score_steps`` samples (the device judges the latest
readings, so the score must not depend on samples it has not seen yet). The threshold is calibrated on
validation data as a high quantile of normal scores. Two rule detectors serve as the device's fallback and
the trainer's baselines: a rolling z-score (spikes) and a stale-value rule (a frozen sensor).

A reconstruction model cannot see a frozen sensor: a flat line is the easiest shape to reconstruct. The
shipped detector therefore combines the model's score with the stale-value rule when the bundle asks for
it (``AnomalySpec.stale_run_steps``): the trainer scores series with ``detector_flags``, the exporter and the
agent apply ``stale_value_flags`` to each window's raw target, so all three judge a frozen sensor alike.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge_agent.arrays import FloatArray
from edge_agent.errors import FeatureError

BoolArray = NDArray[np.bool_]


def reconstruction_scores(
    inputs: NDArray[np.floating], reconstruction: NDArray[np.floating], score_steps: int
) -> FloatArray:
    """Mean absolute error over the last ``score_steps`` samples of each window ``(N, W, C)`` -> ``(N,)``."""
    x = np.asarray(inputs, dtype=np.float32)
    r = np.asarray(reconstruction, dtype=np.float32)
    if x.shape != r.shape or x.ndim != 3:
        raise FeatureError(f"inputs {x.shape} and reconstruction {r.shape} must both be (batch, window, channels)")
    if not 0 < score_steps <= x.shape[1]:
        raise FeatureError(f"score_steps must be in [1, {x.shape[1]}] (the window), got {score_steps}")
    error = np.abs(x[:, -score_steps:, :] - r[:, -score_steps:, :])
    return error.mean(axis=(1, 2)).astype(np.float32)


def calibrate_threshold(validation_scores: NDArray[np.floating], quantile: float) -> float:
    """The ``quantile`` of finite validation scores: the highest score still called normal."""
    scores = np.asarray(validation_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise FeatureError("no finite validation scores to calibrate the threshold on; check the data")
    if not 0.0 < quantile < 1.0:
        raise FeatureError(f"threshold quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(scores, quantile))


def flag(scores: NDArray[np.floating], threshold: float) -> BoolArray:
    """Scores above the threshold are anomalies; NaN (no usable window) is never flagged."""
    s = np.asarray(scores, dtype=np.float64)
    return np.isfinite(s) & (s > threshold)


def rolling_zscore_flags(values: NDArray[np.floating], window: int, z_threshold: float) -> BoolArray:
    """Flag samples more than ``z_threshold`` standard deviations from the mean of the preceding window."""
    x = np.asarray(values, dtype=np.float64)
    flags = np.zeros(x.shape, dtype=bool)
    if x.ndim != 1 or window < 2:
        raise FeatureError(f"rolling z-score needs a 1-D series and window >= 2 (got {x.shape}, {window})")
    if x.size <= window:
        return flags
    previous = np.lib.stride_tricks.sliding_window_view(x, window)[:-1]
    finite = np.isfinite(previous)
    count = finite.sum(axis=1)
    clean = np.where(finite, previous, 0.0)
    mean = clean.sum(axis=1) / np.maximum(count, 1)
    squared = np.where(finite, previous - mean[:, None], 0.0) ** 2
    spread = np.sqrt(squared.sum(axis=1) / np.maximum(count, 1))
    current = x[window:]
    # Fewer than half the window observed gives no trustworthy spread: such samples are not judged.
    judged = (count >= window // 2) & np.isfinite(current)
    z = np.abs(np.where(judged, current, 0.0) - mean) / np.maximum(spread, 1e-6)
    flags[window:] = judged & (z > z_threshold)
    return flags


def stale_value_flags(values: NDArray[np.floating], run_steps: int, tolerance: float = 1e-9) -> BoolArray:
    """Flag samples that equal (within ``tolerance``) each of the ``run_steps - 1`` samples before them.

    Exact zeros are left alone: a PV inverter legitimately reports 0 all night.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or run_steps < 2:
        raise FeatureError(f"stale rule needs a 1-D series and run_steps >= 2 (got {x.shape}, {run_steps})")
    same = np.zeros(x.shape, dtype=bool)
    same[1:] = np.abs(np.diff(x)) <= tolerance
    run = np.zeros(x.shape, dtype=np.int64)
    for i in range(1, x.size):
        run[i] = run[i - 1] + 1 if same[i] else 0
    return (run >= run_steps - 1) & np.isfinite(x) & (x != 0)


def detector_flags(
    scores: NDArray[np.floating], values: NDArray[np.floating], threshold: float, stale_run_steps: int | None
) -> BoolArray:
    """The shipped detector per sample: model score over the threshold, or (if enabled) a frozen sensor.

    ``scores`` and ``values`` are aligned per sample (the score of the window ending at it, the raw value).
    """
    flags = flag(scores, threshold)
    if stale_run_steps is not None:
        flags |= stale_value_flags(values, stale_run_steps)
    return flags
