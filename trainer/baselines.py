"""Baselines scored on exactly the model's evaluation windows.

The naive forecasters and the anomaly rules are edge_agent's own functions (the device's fallback);
LightGBM on lag + calendar features is what a data scientist would reach for instead of a neural net.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent import anomaly as anomaly_rules
from edge_agent import baselines as naive
from edge_agent.features import calendar_features
from gridedge.trainer.metrics import detection_metrics, forecast_metrics
from gridedge.trainer.tasks import LabelledEvaluation, PreparedTask, Split, origin_candidates

WEEK_DAYS = 7


def _target_columns(prepared: PreparedTask) -> list[int]:
    names = prepared.spec.past_channel_names
    return [names.index(t) for t in prepared.spec.target_channels]


def _history(prepared: PreparedTask, origins: NDArray[np.int64], steps: int, values: NDArray[np.float32]) -> Any:
    rows = origins[:, None] + np.arange(-steps, 0)[None, :]
    return values[rows]


def naive_forecasts(prepared: PreparedTask, split: Split) -> dict[str, NDArray[np.float32]]:
    """Persistence, seasonal-naive (yesterday, last week) and, for PV, clear-sky-scaled persistence."""
    day = prepared.day_steps
    h = prepared.spec.horizon_steps
    targets = prepared.series.past[:, _target_columns(prepared)]
    history = _history(prepared, split.origins, WEEK_DAYS * day, targets)
    forecasts = {
        "persistence": naive.persistence(history, h),
        "seasonal_naive_day": naive.seasonal_naive(history, h, day),
        "seasonal_naive_week": naive.seasonal_naive(history, h, WEEK_DAYS * day),
    }
    clear_name = prepared.config.baselines.clear_sky_channel
    if clear_name is not None and prepared.series.future is not None:
        column = prepared.spec.future_channel_names.index(clear_name)
        clear = prepared.series.future[:, column]
        clear_history = _history(prepared, split.origins, day, clear)
        future_rows = split.origins[:, None] + np.arange(h)[None, :]
        forecasts["clear_sky_persistence"] = naive.clear_sky_scaled_persistence(
            history[:, -day:, :], clear_history, clear[future_rows], day
        )
    return forecasts


def _lgb_features(prepared: PreparedTask, origins: NDArray[np.int64], target: NDArray[np.float32]) -> Any:
    """Rows (origin, step) -> features: step, target-time calendar, seasonal lags, recent level, known future."""
    day, h = prepared.day_steps, prepared.spec.horizon_steps
    steps = np.arange(h)
    rows = origins[:, None] + steps[None, :]
    phase = steps % day

    def lag(days: int) -> NDArray[np.float64]:
        idx = origins[:, None] + phase[None, :] - days * day
        return np.where(idx >= 0, target[np.clip(idx, 0, None)], np.nan)

    last_day = target[origins[:, None] + np.arange(-day, 0)[None, :]]
    with warnings.catch_warnings():
        # A day or week with no reading averages to NaN, which LightGBM treats as missing: that is intended.
        warnings.simplefilter("ignore", RuntimeWarning)
        week_mean = np.nanmean(np.stack([lag(k) for k in range(1, WEEK_DAYS + 1)]), axis=0)
        last_day_mean = np.nanmean(last_day, axis=1)
    columns = [
        np.broadcast_to(steps[None, :], rows.shape).astype(np.float64),
        lag(1),
        lag(2),
        lag(WEEK_DAYS),
        week_mean,
        np.broadcast_to(target[origins - 1][:, None], rows.shape),
        np.broadcast_to(last_day_mean[:, None], rows.shape),
    ]
    calendar = calendar_features(prepared.series.timestamps[rows], prepared.spec.timezone)
    columns += [calendar[..., i] for i in range(calendar.shape[-1])]
    if prepared.series.future is not None:
        for c in range(prepared.series.future.shape[1]):
            known = prepared.series.future[:, c]
            columns.append(known[rows])
            columns.append(known[np.clip(origins[:, None] + phase[None, :] - day, 0, None)])
    return np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=-1).reshape(-1, len(columns))


def lightgbm_forecasts(prepared: PreparedTask, splits: list[Split]) -> list[NDArray[np.float32]]:
    """Train one LightGBM model per target on training origins and forecast every origin of ``splits``."""
    import lightgbm as lgb

    cfg = prepared.config.baselines.lightgbm
    h = prepared.spec.horizon_steps
    start, stop = prepared.series.split_rows["train"]
    history = WEEK_DAYS * prepared.day_steps
    aligned = origin_candidates(
        prepared.series.timestamps,
        prepared.spec.timezone,
        prepared.config.protocol.origin_hour,
        cfg.train_stride,
        "baselines.lightgbm.train_stride",
    )
    origins = aligned[(aligned >= max(start, history)) & (aligned <= stop - h)]
    filled = prepared.series.upstream_filled
    if filled.any():
        cumulative = np.concatenate([[0], np.cumsum(filled)])
        origins = origins[cumulative[origins + h] - cumulative[origins] == 0]
    outputs = [np.zeros((len(s), h, len(prepared.spec.target_channels)), dtype=np.float32) for s in splits]
    for t, column in enumerate(_target_columns(prepared)):
        target = prepared.series.past[:, column]
        features = _lgb_features(prepared, origins, target)
        y = target[origins[:, None] + np.arange(h)[None, :]].reshape(-1)
        keep = np.isfinite(y)
        params = {
            "objective": "l1",
            "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.num_leaves,
            "seed": prepared.config.seed,
            "num_threads": prepared.config.training.threads,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        model = lgb.train(params, lgb.Dataset(features[keep], y[keep]), num_boost_round=cfg.n_estimators)
        for out, split in zip(outputs, splits, strict=True):
            predicted = np.asarray(model.predict(_lgb_features(prepared, split.origins, target)))
            out[..., t] = predicted.reshape(len(split), h)
    return outputs


def forecast_baselines(prepared: PreparedTask) -> dict[str, dict[str, Any]]:
    """Every forecast baseline's metrics on the validation, test and (if configured) rolling test origins."""
    splits = {"val": prepared.val, "test": prepared.test}
    if prepared.test_rolling is not None:
        splits["test_rolling"] = prepared.test_rolling
    # The device decodes its fallback within the same physical bounds as its model; so are they scored.
    per_split = {
        name: {method: prepared.bounded(f, split) for method, f in naive_forecasts(prepared, split).items()}
        for name, split in splits.items()
    }
    results: dict[str, dict[str, Any]] = {
        method: {name: forecast_metrics(per_split[name][method], split.targets) for name, split in splits.items()}
        for method in per_split["test"]
    }
    if prepared.config.baselines.lightgbm.enabled:
        predicted = lightgbm_forecasts(prepared, list(splits.values()))
        results["lightgbm"] = {
            name: forecast_metrics(prepared.bounded(forecast, split), split.targets)
            for (name, split), forecast in zip(splits.items(), predicted, strict=True)
        }
    return results


def rule_flags(prepared: PreparedTask, item: LabelledEvaluation) -> dict[str, NDArray[np.bool_]]:
    """The rolling z-score and stale-value rules applied to a labelled series."""
    cfg, steps = prepared.config.anomaly, prepared.anomaly_steps
    assert cfg is not None and steps is not None
    return {
        "rolling_zscore": anomaly_rules.rolling_zscore_flags(item.values, steps.zscore_window, cfg.zscore_threshold),
        "stale_value": anomaly_rules.stale_value_flags(item.values, steps.stale_run),
    }


def rule_metrics(prepared: PreparedTask) -> dict[str, dict[str, dict[str, float | int]]]:
    """Per rule, per labelled series: precision, recall, F1."""
    results: dict[str, dict[str, dict[str, float | int]]] = {}
    for item in prepared.labelled:
        for rule, flags in rule_flags(prepared, item).items():
            results.setdefault(rule, {})[item.name] = detection_metrics(flags, item.labels)
    return results
