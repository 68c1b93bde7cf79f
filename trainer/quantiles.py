"""Quantile forecasts on the central side: the non-crossing output head, pinball loss, calibration.

Both frameworks build the same head: the point path gives the median, a ReLU path gives one non-negative
gap per pair of neighbouring levels, and a fixed (not trained) matrix, :func:`mixing_matrix`, adds the
gaps outwards from the median. Each level is then the median plus or minus a sum of non-negative gaps,
so the levels cannot cross; the fixed weights are 0 and ±1, exact in int8.

Calibration is measured on the test split (coverage of each level and of the outermost interval, its
mean width, pinball loss). :func:`spread_scales` recalibrates on validation: it scales each level's
distance from the median until that level's validation coverage is nominal. Scaling the distance (not
shifting the level) keeps intervals that the model made narrow, such as PV at night, narrow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

# Bounds of the recalibration factor; past 50 the model's spread carries no information worth scaling.
MAX_SCALE = 50.0
BISECTION_STEPS = 40
GAP_BIAS = 0.1  # initial gap between neighbouring levels (normalised units), so no gap starts dead


def level_label(level: float) -> str:
    """``0.1`` -> ``p10``: the name of a level in metric keys."""
    return f"p{level * 100:g}"


def gap_count(levels: tuple[float, ...] | list[float]) -> int:
    """Gaps the head predicts per target: one between each pair of neighbouring levels."""
    return len(levels) - 1


def mixing_matrix(levels: tuple[float, ...] | list[float], n_targets: int) -> NDArray[np.float32]:
    """The fixed ``(n_targets * (1 + gaps), n_targets * levels)`` map from [medians, gaps] to levels.

    Input channels: the median of each target, then each target's gaps (gap ``g`` lies between levels
    ``g`` and ``g + 1``). Output channel ``t * Q + q`` is level ``q`` of target ``t`` (target-major).
    """
    q_count, gaps = len(levels), gap_count(levels)
    middle = list(levels).index(0.5)
    matrix = np.zeros((n_targets * (1 + gaps), n_targets * q_count), dtype=np.float32)
    for t in range(n_targets):
        for q in range(q_count):
            column = t * q_count + q
            matrix[t, column] = 1.0
            for g in range(gaps):
                row = n_targets + t * gaps + g
                if middle <= g < q:
                    matrix[row, column] = 1.0
                elif q <= g < middle:
                    matrix[row, column] = -1.0
    return matrix


def pinball_by_level(
    quantiles: NDArray[np.floating], actual: NDArray[np.floating], levels: tuple[float, ...] | list[float]
) -> NDArray[np.float64]:
    """Mean pinball loss of each level: ``quantiles`` ``(N, Q, H, T)``, ``actual`` ``(N, H, T)``."""
    tau = np.asarray(levels, dtype=np.float64).reshape(1, -1, 1, 1)
    diff = np.asarray(actual, dtype=np.float64)[:, np.newaxis] - np.asarray(quantiles, dtype=np.float64)
    return np.asarray(np.mean(np.maximum(tau * diff, (tau - 1) * diff), axis=(0, 2, 3)))


def pinball_raw(outputs: NDArray[np.floating], targets: NDArray[np.floating], levels: list[float]) -> float:
    """Mean pinball loss of a quantile model's raw output ``(N, H, T * Q)`` against ``(N, H, T)``
    (normalised units): the training objective, as both frameworks compute it."""
    array = np.asarray(outputs, dtype=np.float64)
    split = array.reshape(*array.shape[:-1], -1, len(levels))
    return float(np.mean(pinball_by_level(np.moveaxis(split, -1, 1), targets, levels)))


def quantile_metrics(
    quantiles: NDArray[np.floating], actual: NDArray[np.floating], levels: tuple[float, ...]
) -> dict[str, Any]:
    """Coverage and pinball loss of each level, and coverage and mean width of the outermost interval.

    ``quantiles`` ``(N, Q, H, T)`` and ``actual`` ``(N, H, T)`` in units; coverage of a level is the share
    of actual values at or below it (nominal: the level itself).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    coverage = np.mean(y[:, np.newaxis] <= q, axis=(0, 2, 3))
    pinball = pinball_by_level(q, y, levels)
    lower, upper = q[:, 0], q[:, -1]
    inside = (y >= lower) & (y <= upper)
    return {
        "levels": list(levels),
        "coverage": [float(c) for c in coverage],
        "pinball": [float(p) for p in pinball],
        "pinball_mean": float(np.mean(pinball)),
        "interval": {
            "lower": levels[0],
            "upper": levels[-1],
            "nominal": levels[-1] - levels[0],
            "coverage": float(np.mean(inside)),
            "mean_width": float(np.mean(upper - lower)),
            "coverage_by_step": [float(c) for c in np.mean(inside, axis=(0, 2))],
        },
    }


def flat_quantile_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of :func:`quantile_metrics` under flat keys (``pinball_p10``...), as artefacts record them."""
    flat = {"pinball": metrics["pinball_mean"]}
    for level, coverage, pinball in zip(metrics["levels"], metrics["coverage"], metrics["pinball"], strict=True):
        flat[f"coverage_{level_label(level)}"] = coverage
        flat[f"pinball_{level_label(level)}"] = pinball
    flat["interval_coverage"] = metrics["interval"]["coverage"]
    flat["interval_width"] = metrics["interval"]["mean_width"]
    return flat


def spread_scales(
    levels_out: NDArray[np.floating], targets: NDArray[np.floating], levels: tuple[float, ...]
) -> tuple[tuple[float, ...], ...]:
    """Per target and level, the factor on a level's distance from the median that makes its coverage on
    these (validation) windows nominal.

    ``levels_out`` ``(N, H, T, Q)`` is the model's output split by level, ``targets`` ``(N, H, T)``, both
    normalised. Coverage is monotone in the factor (rising for levels above the median, falling below),
    so bisection over [0, :data:`MAX_SCALE`] finds it; the median keeps factor 1.
    """
    out = np.sort(np.asarray(levels_out, dtype=np.float64), axis=-1)
    y = np.asarray(targets, dtype=np.float64)
    middle = levels.index(0.5)
    rows = []
    for t in range(out.shape[-2]):
        median = out[..., t, middle].ravel()
        actual = y[..., t].ravel() - median
        row = []
        for q, level in enumerate(levels):
            if q == middle:
                row.append(1.0)
                continue
            distance = out[..., t, q].ravel() - median
            low, high = 0.0, MAX_SCALE
            for _ in range(BISECTION_STEPS):
                scale = (low + high) / 2
                covered = float(np.mean(actual <= scale * distance))
                # Above the median a larger factor covers more; below it, less.
                if (covered < level) == (q > middle):
                    low = scale
                else:
                    high = scale
            row.append(round((low + high) / 2, 6))
        rows.append(tuple(row))
    return tuple(rows)
