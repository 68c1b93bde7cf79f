"""Parity evaluation: every artefact next to the float model on the test split, and the latency probe."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.anomaly import reconstruction_scores
from edge_agent.arrays import FloatArray
from edge_agent.bundle import AnomalySpec, Latency, OutputSpec
from edge_agent.features import FeaturePipeline, FeatureSpec
from edge_agent.quantiles import decode_forecast
from edge_agent.runtimes.base import ModelRuntime
from gridedge.export.errors import ParityError
from gridedge.trainer.quantiles import flat_quantile_metrics, level_label, quantile_metrics

Predict = Callable[[Mapping[str, FloatArray]], FloatArray]


@dataclass(frozen=True)
class TestSplit:
    """The test windows an artefact is judged on: normalised feeds plus what the task metric needs.

    ``targets`` are raw physical values (forecasts), ``step_times`` the UTC seconds of each forecast step
    (the physical output bounds need them: PV is zero while the sun is down). Anomaly tasks give
    ``labels`` (one bool per window, the label of the window's newest sample), ``groups`` (which
    labelled series each window comes from; F1 is the mean over series, as the trainer reports it),
    ``unscored_positives`` (labelled samples per series with no usable window: always missed) and
    ``frozen`` (per window, whether its newest sample ends a frozen run of the raw target: the
    stale-rule half of the shipped detector, independent of the artefact).
    """

    feeds: dict[str, FloatArray]
    targets: FloatArray
    labels: NDArray[np.bool_] | None = None
    groups: NDArray[np.int64] | None = None
    unscored_positives: tuple[int, ...] = ()
    normalised_targets: FloatArray | None = None
    frozen: NDArray[np.bool_] | None = None
    step_times: NDArray[np.int64] | None = None  # forecasts: UTC seconds of each step, for output bounds

    def __len__(self) -> int:
        return len(self.feeds["past"])


def predict_batched(predict: Predict, feeds: Mapping[str, FloatArray], batch: int = 256) -> FloatArray:
    """Run ``predict`` over ``feeds`` in batches, concatenating the outputs."""
    count = len(feeds["past"])
    parts = [predict({k: v[start : start + batch] for k, v in feeds.items()}) for start in range(0, count, batch)]
    return np.concatenate(parts, axis=0).astype(np.float32)


def anomaly_scores(reconstruction: FloatArray, past: FloatArray, spec: FeatureSpec, anomaly: AnomalySpec) -> FloatArray:
    """The device's score (edge_agent.anomaly) of each window: the targets are the normalised inputs."""
    columns = [spec.past_feature_names.index(t) for t in spec.target_channels]
    return reconstruction_scores(past[:, :, columns], reconstruction, anomaly.score_steps)


def f1_score(predicted: NDArray[np.bool_], labels: NDArray[np.bool_], missed: int = 0) -> float:
    """F1 of the positive (anomalous) class, ``missed`` extra positives never scored; 0 if nothing to find."""
    true_pos = float(np.sum(predicted & labels))
    denominator = float(np.sum(predicted) + np.sum(labels) + missed)
    return 0.0 if denominator == 0 else 2 * true_pos / denominator


def mean_series_f1(predicted: NDArray[np.bool_], split: TestSplit) -> float:
    """F1 per labelled series, averaged (each fault type counts once)."""
    assert split.labels is not None
    groups = split.groups if split.groups is not None else np.zeros(len(predicted), dtype=np.int64)
    scores = []
    for group in np.unique(groups):
        mask = groups == group
        missed = split.unscored_positives[group] if group < len(split.unscored_positives) else 0
        scores.append(f1_score(predicted[mask], split.labels[mask], missed))
    return float(np.mean(scores))


def task_metrics(outputs: FloatArray, split: TestSplit, spec: FeatureSpec, output: OutputSpec) -> dict[str, float]:
    """Test metrics of one set of model outputs: MAE in units for forecasts, F1 for anomaly models."""
    if output.anomaly is not None:
        if split.labels is None:
            raise ParityError("an anomaly model needs labelled test windows to compute F1")
        if split.normalised_targets is not None:
            scores = reconstruction_scores(split.normalised_targets, outputs, output.anomaly.score_steps)
        else:
            scores = anomaly_scores(outputs, split.feeds["past"], spec, output.anomaly)
        flags = scores > output.anomaly.threshold
        if output.anomaly.stale_run_steps is not None:
            if split.frozen is None:
                raise ParityError("the detector includes the stale rule but the test split carries no frozen flags")
            flags |= split.frozen
        return {"f1": mean_series_f1(flags, split)}
    decoded = decode_forecast(outputs, output, FeaturePipeline(spec), split.step_times)
    metrics = {"mae": float(np.mean(np.abs(decoded.point - split.targets)))}
    if decoded.quantiles is not None:
        metrics.update(flat_quantile_metrics(quantile_metrics(decoded.quantiles, split.targets, decoded.levels)))
    return metrics


def forecast_window_errors(outputs: FloatArray, split: TestSplit, spec: FeatureSpec, output: OutputSpec) -> FloatArray:
    """Each window's absolute error in the targets' units, averaged over its steps and targets (MAE is their mean)."""
    decoded = decode_forecast(outputs, output, FeaturePipeline(spec), split.step_times)
    return np.abs(decoded.point - split.targets).reshape(len(split.targets), -1).mean(axis=1)


def quantile_parity(
    metrics: dict[str, float],
    float_metrics: Mapping[str, float],
    spec: FeatureSpec,
    output: OutputSpec,
    max_degradation: float,
    output_step: float,
) -> list[str]:
    """The gate on every quantile output: records each level's pinball degradation in ``metrics`` and
    returns the levels refused.

    A level is refused when its pinball loss is worse than the float model's by more than
    ``max_degradation`` (relative) and by more than rounding the output to the artefact's quantisation
    step (``output_step``, normalised units; 0 when the output is not quantised) can explain: pinball
    loss moves by at most max(level, 1 - level) times the change of the forecast, and rounding changes
    it by half a step, times the target's std in units.
    """
    stats = spec.normalisation
    assert stats is not None
    std = max(stats.std[stats.channels.index(t)] for t in spec.target_channels)
    refused = []
    for level in output.quantiles:
        key = f"pinball_{level_label(level)}"
        worse = degradation(metrics[key], float_metrics[key], higher_is_better=False)
        metrics[f"{key}_degradation"] = worse
        rounding = max(level, 1 - level) * output_step / 2 * std
        if worse > max_degradation and metrics[key] - float_metrics[key] > rounding:
            refused.append(
                f"{key} {metrics[key]:.4g} vs float {float_metrics[key]:.4g} ({100 * worse:.2f} % worse, more "
                f"than the output's rounding explains: {rounding:.3g})"
            )
    return refused


def primary_metric(output: OutputSpec) -> tuple[str, bool]:
    """Name of the metric the gate watches and whether higher is better."""
    return ("f1", True) if output.anomaly is not None else ("mae", False)


def degradation(artefact_value: float, float_value: float, higher_is_better: bool) -> float:
    """Relative loss of the artefact against the float model (positive = worse)."""
    if higher_is_better:
        return (float_value - artefact_value) / max(abs(float_value), 1e-12)
    return (artefact_value - float_value) / max(abs(float_value), 1e-12)


def measure_latency(runtime: ModelRuntime, feeds: Mapping[str, FloatArray], runs: int = 300) -> Latency:
    """Single-window inference latency (p50/p99 over ``runs`` timed calls after a warm-up)."""
    one = {k: np.ascontiguousarray(v[:1]) for k, v in feeds.items()}
    for _ in range(20):
        runtime.run(one)
    timings = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        runtime.run(one)
        timings[i] = time.perf_counter_ns() - start
    return Latency(p50_us=float(np.percentile(timings, 50) / 1e3), p99_us=float(np.percentile(timings, 99) / 1e3))
