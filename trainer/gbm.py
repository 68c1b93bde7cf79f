"""LightGBM as a deployable model family: trained on the bundle's own model inputs, one booster per target.

The baseline LightGBM (:mod:`gridedge.trainer.baselines`) reads the raw series; a model the device runs must
read what the device's feature pipeline feeds every model, the normalised ``past`` and ``future`` tensors. So
the features here are a function of those tensors only, and :mod:`gridedge.export.gbm_onnx` computes the very
same function inside the ONNX graph (Gather/Slice/ReduceMean): no train/serve skew is possible.

Per window and horizon step, the features are: the step index; every ``future`` column at that step
(known-future channels, the seasonal-naive inputs and profile, the calendar at the target time); when the
input window holds a day, each target and each known-future channel it observes (e.g. clear-sky) at the same
time of day one day before; and per target its newest value and its mean over the newest day of the window.
These are the baseline LightGBM's features (:func:`gridedge.trainer.baselines._lgb_features`) as far as the
bundle's inputs carry them. Yesterday's measured weather is left out on purpose: on W2 it cost skill 0.22 ->
0.16 (the trees fit yesterday's clouds). Outputs are normalised targets, like a network's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edge_agent.arrays import FloatArray
from edge_agent.features import FeatureSpec
from gridedge.trainer.config import LightGBMConfig

FAMILY: Final = "lightgbm"
# onnxmltools converts regression objectives only; the median (quantile 0.5) is LightGBM's L1 by another name.
OBJECTIVE = {"objective": "quantile", "alpha": 0.5}


@dataclass(frozen=True)
class FeaturePlan:
    """The constant indices that turn ``past``/``future`` into one feature row per horizon step."""

    horizon: int
    future_columns: int
    yesterday_rows: NDArray[np.int64] | None
    """Per horizon step, the ``past`` row at the same time of day one day earlier; None if the window is shorter."""
    yesterday_columns: tuple[int, ...]
    """``past`` columns taken one day back: the targets and the known-future channels observed in the past."""
    target_columns: tuple[int, ...]
    recent_rows: int
    """Newest ``past`` rows whose mean is the recent level (a day, or the whole window if shorter)."""

    @property
    def names(self) -> tuple[str, ...]:
        names = ["step", *(f"future_{c}" for c in range(self.future_columns))]
        if self.yesterday_rows is not None:
            names += [f"yesterday_{c}" for c in self.yesterday_columns]
        names += [f"last_{c}" for c in self.target_columns] + [f"recent_mean_{c}" for c in self.target_columns]
        return tuple(names)


def feature_plan(spec: FeatureSpec) -> FeaturePlan:
    """The features a bundle with this spec can feed a tree model."""
    if not spec.is_forecast:
        raise ValueError("gradient-boosted models are forecasters; this spec has no horizon")
    day, steps = spec.day_steps, spec.input_steps
    phase = np.arange(spec.horizon_steps) % day
    past = spec.past_channel_names
    daily = [*spec.target_channels, *(c for c in spec.future_channel_names if c not in spec.target_channels)]
    return FeaturePlan(
        horizon=spec.horizon_steps,
        future_columns=len(spec.future_feature_names),
        yesterday_rows=(steps - day + phase).astype(np.int64) if steps >= day else None,
        yesterday_columns=tuple(past.index(c) for c in daily if c in past),
        target_columns=tuple(past.index(t) for t in spec.target_channels),
        recent_rows=min(steps, day),
    )


def gbm_features(plan: FeaturePlan, feeds: Mapping[str, FloatArray]) -> FloatArray:
    """Feature rows ``(N * horizon, features)`` (float32) from the model inputs, window-major."""
    past = np.asarray(feeds["past"], dtype=np.float32)
    n, h = past.shape[0], plan.horizon
    columns = [np.broadcast_to(np.arange(h, dtype=np.float32)[None, :, None], (n, h, 1))]
    if plan.future_columns:
        columns.append(np.asarray(feeds["future"], dtype=np.float32))
    if plan.yesterday_rows is not None:
        columns.append(past[:, plan.yesterday_rows][:, :, list(plan.yesterday_columns)])
    targets = past[:, :, list(plan.target_columns)]
    columns.append(np.broadcast_to(targets[:, -1:], (n, h, len(plan.target_columns))))
    recent = targets[:, -plan.recent_rows :].mean(axis=1, keepdims=True, dtype=np.float32)
    columns.append(np.broadcast_to(recent, (n, h, len(plan.target_columns))))
    return np.concatenate(columns, axis=-1).reshape(n * h, -1).astype(np.float32)


@dataclass
class GbmModel:
    """One LightGBM booster per target over :func:`gbm_features` of a bundle's inputs."""

    plan: FeaturePlan
    boosters: list[Any]  # lightgbm.Booster, one per target

    def predict(self, feeds: Mapping[str, FloatArray]) -> FloatArray:
        """Normalised forecasts ``(N, horizon, targets)``, as a network outputs them."""
        rows = gbm_features(self.plan, feeds)
        n = len(rows) // self.plan.horizon
        columns = [np.asarray(b.predict(rows)).reshape(n, self.plan.horizon) for b in self.boosters]
        return np.stack(columns, axis=-1).astype(np.float32)


def train_gbm(
    spec: FeatureSpec,
    feeds: Mapping[str, FloatArray],
    targets_normalised: NDArray[np.floating],
    config: LightGBMConfig,
    seed: int,
    threads: int,
) -> GbmModel:
    """Train on valid training windows: ``feeds`` as the pipeline built them, targets ``(N, horizon, targets)``."""
    import lightgbm as lgb

    plan = feature_plan(spec)
    rows = gbm_features(plan, feeds)
    params = {
        **OBJECTIVE,
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "seed": seed,
        "num_threads": threads,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    targets = np.asarray(targets_normalised, dtype=np.float64)
    boosters = []
    for t in range(targets.shape[-1]):
        y = targets[..., t].reshape(-1)
        keep = np.isfinite(y)
        data = lgb.Dataset(rows[keep], y[keep], feature_name=list(plan.names), free_raw_data=True)
        boosters.append(lgb.train(params, data, num_boost_round=config.n_estimators))
    return GbmModel(plan, boosters)

