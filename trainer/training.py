"""Train one task in one framework, evaluate it next to its baselines, and write the run folder.

Run folder contract (the exporter builds on it): ``task.yaml``, ``feature_spec.json``,
``output_spec.json``, ``model.keras`` (Keras) or ``model.pt`` + ``model_config.json`` (PyTorch),
``report.json``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edge_agent import anomaly as anomaly_scores
from edge_agent.errors import ConfigError
from gridedge.trainer import report as reporting
from gridedge.trainer.baselines import forecast_baselines, rule_metrics
from gridedge.trainer.config import TaskConfig, dump_config
from gridedge.trainer.metrics import detection_metrics, forecast_metrics, hyperparameters, summarise_detection
from gridedge.trainer.tasks import PreparedTask, Split, prepare_task

Framework = Literal["keras", "torch"]
FRAMEWORKS: tuple[Framework, ...] = ("keras", "torch")


class _Model:
    """The trained model of either framework behind one predict call."""

    def __init__(self, framework: Framework, model: Any) -> None:
        self.framework, self.model = framework, model

    def predict(self, feeds: dict[str, NDArray[np.float32]]) -> NDArray[np.float32]:
        if self.framework == "keras":
            from gridedge.trainer import models_keras

            return models_keras.predict(self.model, feeds)
        from gridedge.trainer import models_torch

        return models_torch.predict(self.model, feeds)


def _versions(framework: Framework) -> dict[str, str]:
    packages = ["numpy", "pandas", "lightgbm", "pydantic"]
    packages += ["tensorflow", "keras"] if framework == "keras" else ["torch"]
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _decoded(model: _Model, prepared: PreparedTask, split: Split) -> NDArray[np.float32]:
    return prepared.pipeline.decode(model.predict(split.inputs.as_feeds()))


def _window_scores(model: _Model, prepared: PreparedTask, split: Split) -> NDArray[np.float32]:
    """Anomaly score per window (NaN where the window was unusable)."""
    assert prepared.config.anomaly is not None
    scores = np.full(len(split), np.nan, dtype=np.float32)
    valid = split.inputs.valid
    if valid.any():
        feeds = {"past": split.inputs.past[valid]}
        reconstruction = model.predict(feeds)
        scores[valid] = anomaly_scores.reconstruction_scores(
            split.targets_normalised[valid], reconstruction, prepared.config.anomaly.score_steps
        )
    return scores


def _evaluate_forecast(model: _Model, prepared: PreparedTask) -> tuple[dict[str, Any], dict[str, Any]]:
    splits = {"val": prepared.val, "test": prepared.test}
    if prepared.test_rolling is not None:
        splits["test_rolling"] = prepared.test_rolling
    predictions = {name: _decoded(model, prepared, split) for name, split in splits.items()}
    metrics = {name: forecast_metrics(predictions[name], split.targets) for name, split in splits.items()}
    return metrics, predictions


def _evaluate_anomaly(
    model: _Model, prepared: PreparedTask
) -> tuple[dict[str, Any], dict[str, NDArray[np.float32]], dict[str, NDArray[np.bool_]], float]:
    """F1 of the shipped detector (and of the model alone) on the labelled series; threshold from validation."""
    cfg = prepared.config.anomaly
    assert cfg is not None
    stale_steps = cfg.stale_run_steps if cfg.stale_rule_in_detector else None
    val_scores = _window_scores(model, prepared, prepared.val)
    threshold = anomaly_scores.calibrate_threshold(val_scores, cfg.threshold_quantile)
    test_scores = _window_scores(model, prepared, prepared.test)
    per_series: dict[str, dict[str, float | int]] = {}
    model_only: dict[str, dict[str, float | int]] = {}
    series_scores: dict[str, NDArray[np.float32]] = {}
    series_flags: dict[str, NDArray[np.bool_]] = {}
    for item in prepared.labelled:
        scores = _per_sample(_window_scores(model, prepared, item.split), item.split, len(item.values))
        series_scores[item.name] = scores
        flags = anomaly_scores.detector_flags(scores, item.values, threshold, stale_steps)
        series_flags[item.name] = flags
        per_series[item.name] = detection_metrics(flags, item.labels)
        model_only[item.name] = detection_metrics(anomaly_scores.flag(scores, threshold), item.labels)
    # The stale rule runs along the contiguous series; each test window takes the flag of its newest sample.
    target = prepared.series.past[:, _target_column(prepared)]
    test_samples = _per_sample(test_scores, prepared.test, len(target))
    test_flags = anomaly_scores.detector_flags(test_samples, target, threshold, stale_steps)
    normal_flags = test_flags[prepared.test.origins - 1]
    metrics = {
        "test": summarise_detection(per_series),
        "test_model_only": summarise_detection(model_only),
        "val": {"flagged_fraction": float(np.mean(anomaly_scores.flag(val_scores, threshold)))},
        "normal_test_flagged_fraction": float(np.mean(normal_flags)),
    }
    return metrics, series_scores, series_flags, threshold


def _per_sample(window_scores: NDArray[np.float32], split: Split, length: int) -> NDArray[np.float32]:
    """A sample's score is that of the window ending at it; samples that end no window get NaN."""
    scores = np.full(length, np.nan, dtype=np.float32)
    scores[split.origins - 1] = window_scores
    return scores


def _target_column(prepared: PreparedTask) -> int:
    return prepared.spec.past_channel_names.index(prepared.spec.target_channels[0])


def train(
    config: TaskConfig,
    framework: Framework,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Train ``config`` in ``framework``, write the run folder ``out_dir`` and return the report."""
    if framework not in FRAMEWORKS:
        raise ConfigError(f"unknown framework {framework!r}; use one of {list(FRAMEWORKS)}")
    prepared = prepare_task(config, data_dir)  # every config/data error surfaces here, before training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hp = hyperparameters(prepared)

    if framework == "keras":
        from gridedge.trainer import models_keras

        fitted_k = models_keras.fit(config, prepared, hp)
        model = _Model("keras", fitted_k.model)
        fit_info = (fitted_k.epochs_run, fitted_k.best_epoch, fitted_k.history, fitted_k.seconds)
        n_params = models_keras.count_params(fitted_k.model)
        models_keras.save(fitted_k.model, out)
    else:
        from gridedge.trainer import models_torch

        fitted_t = models_torch.fit(config, prepared, hp)
        model = _Model("torch", fitted_t.model)
        fit_info = (fitted_t.epochs_run, fitted_t.best_epoch, fitted_t.history, fitted_t.seconds)
        n_params = models_torch.count_params(fitted_t.model)
        models_torch.save(fitted_t.model, hp, out)
    epochs_run, best_epoch, history, seconds = fit_info

    output_spec = dict(prepared.output_spec)
    plot_data: dict[str, Any]
    if prepared.spec.is_forecast:
        metrics, predictions = _evaluate_forecast(model, prepared)
        baselines = forecast_baselines(prepared)
        plot_data = {"predictions": predictions}
        protocol = (
            f"day-ahead: one origin per day at {config.protocol.origin_hour:02d}:00 local "
            f"({prepared.spec.timezone}), input the past {prepared.spec.input_steps} steps, horizon "
            f"{prepared.spec.horizon_steps} steps; MAE/RMSE over all test origins and steps"
            + (
                "; days containing upstream-filled copies excluded from targets"
                if config.data.exclude_upstream_filled
                else ""
            )
            + (
                f"; rolling: origins every {config.protocol.rolling_every_hours} h local in the test split "
                f"({len(prepared.test_rolling)} origins), same horizon, in metrics.test_rolling"
                if prepared.test_rolling is not None
                else ""
            )
        )
    else:
        assert config.anomaly is not None
        metrics, series_scores, detector_flags, threshold = _evaluate_anomaly(model, prepared)
        output_spec["anomaly"] = {
            "threshold": threshold,
            "score_steps": config.anomaly.score_steps,
            "stale_run_steps": config.anomaly.stale_run_steps if config.anomaly.stale_rule_in_detector else None,
        }
        per_rule = rule_metrics(prepared)
        baselines = {rule: {"test": summarise_detection(per)} for rule, per in per_rule.items()}
        plot_data = {
            "scores": series_scores,
            "threshold": threshold,
            "detector_flags": detector_flags,
        }
        protocol = (
            f"reconstruction of {prepared.spec.input_steps}-step windows; score = mean |error| of the newest "
            f"{config.anomaly.score_steps} step(s), normalised units; threshold = "
            f"{config.anomaly.threshold_quantile} quantile of validation scores (normal data); F1/precision/"
            "recall = mean over the labelled series (each fault type counts once), pooled counts alongside"
            + (
                f"; shipped detector = model score OR stale-value rule ({config.anomaly.stale_run_steps} equal "
                "non-zero samples), the model alone in metrics.test_model_only"
                if config.anomaly.stale_rule_in_detector
                else ""
            )
        )

    report: dict[str, Any] = {
        "task": config.task,
        "name": config.name,
        "framework": framework,
        "seed": config.seed,
        "protocol": protocol,
        "metrics": metrics,
        "baselines": baselines,
        "train_seconds": seconds,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "history": history,
        "n_params": n_params,
        "hyperparameters": hp,
        "samples": {
            "train": len(prepared.train),
            "val": len(prepared.val),
            "test": len(prepared.test),
            **({"test_rolling": len(prepared.test_rolling)} if prepared.test_rolling is not None else {}),
        },
        "split_times_utc": {
            name: [int(prepared.series.timestamps[a]), int(prepared.series.timestamps[b - 1])]
            for name, (a, b) in prepared.series.split_rows.items()
        },
        "data": {"slice": config.data.slice, "fingerprint_sha256": prepared.data_fingerprint},
        "library_versions": _versions(framework),
    }
    (out / "task.yaml").write_text(dump_config(config))
    (out / "feature_spec.json").write_text(prepared.spec.model_dump_json(indent=2) + "\n")
    (out / "output_spec.json").write_text(json.dumps(output_spec, indent=2) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if plots:
        report["plots"] = reporting.plot(prepared, plot_data, out)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(reporting.markdown(report))
    return report
