"""Metrics for forecasts and detectors, and the model hyperparameters shared by both frameworks."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gridedge.trainer.tasks import PreparedTask


def hyperparameters(prepared: PreparedTask) -> dict[str, Any]:
    """Architecture name and sizes; the same dict builds the Keras and the PyTorch model."""
    spec, model = prepared.spec, prepared.config.model
    return {
        "architecture": model.architecture,
        "input_steps": spec.input_steps,
        "horizon_steps": spec.horizon_steps,
        "past_features": len(spec.past_feature_names),
        "future_features": len(spec.future_feature_names),
        "n_targets": len(spec.target_channels),
        "filters": model.filters,
        "kernel_size": model.kernel_size,
        "hidden": model.hidden,
        "decoder_channels": model.decoder_channels,
        "latent_channels": model.latent_channels,
        "dropout": model.dropout,
        "quantiles": list(model.quantiles),
    }


def forecast_metrics(forecast: NDArray[np.floating], actual: NDArray[np.floating]) -> dict[str, Any]:
    """MAE and RMSE over every origin, step and target (in the targets' units), plus MAE per step."""
    error = np.asarray(forecast, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae_by_step": [float(v) for v in np.mean(np.abs(error), axis=(0, 2))],
        "n_origins": int(error.shape[0]),
    }


def detection_metrics(flags: NDArray[np.bool_], labels: NDArray[np.bool_]) -> dict[str, float | int]:
    """Precision, recall and F1 of per-sample flags against labels."""
    f = np.asarray(flags, dtype=bool)
    y = np.asarray(labels, dtype=bool)
    tp = int(np.sum(f & y))
    fp = int(np.sum(f & ~y))
    fn = int(np.sum(~f & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}


def summarise_detection(per_series: dict[str, dict[str, float | int]]) -> dict[str, Any]:
    """Headline = mean of each labelled series' F1/precision/recall (each fault type counts once);
    pooled counts over all series are kept alongside."""
    names = list(per_series)
    tp = sum(int(per_series[n]["tp"]) for n in names)
    fp = sum(int(per_series[n]["fp"]) for n in names)
    fn = sum(int(per_series[n]["fn"]) for n in names)
    pooled_p = tp / (tp + fp) if tp + fp else 0.0
    pooled_r = tp / (tp + fn) if tp + fn else 0.0
    pooled_f1 = 2 * pooled_p * pooled_r / (pooled_p + pooled_r) if pooled_p + pooled_r else 0.0
    return {
        "f1": float(np.mean([per_series[n]["f1"] for n in names])),
        "precision": float(np.mean([per_series[n]["precision"] for n in names])),
        "recall": float(np.mean([per_series[n]["recall"] for n in names])),
        "pooled": {"f1": pooled_f1, "precision": pooled_p, "recall": pooled_r, "tp": tp, "fp": fp, "fn": fn},
        "per_series": per_series,
    }
