"""Train one task in one framework, evaluate it next to its baselines, and write the run folder.

The framework is reached only through its :class:`~gridedge.trainer.backends.FrameworkBackend`; the
folder's contents are described by :class:`~gridedge.trainer.run_folder.RunFolder`.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent import anomaly as anomaly_scores
from edge_agent.bundle import OutputSpec
from edge_agent.quantiles import decode_forecast, split_levels
from gridedge.trainer import quantiles
from gridedge.trainer import report as reporting
from gridedge.trainer.backends import FRAMEWORKS, Feeds, Framework, backend
from gridedge.trainer.baselines import forecast_baselines, rule_metrics
from gridedge.trainer.config import TaskConfig
from gridedge.trainer.lineage import lineage
from gridedge.trainer.metrics import detection_metrics, forecast_metrics, hyperparameters, summarise_detection
from gridedge.trainer.run_folder import RunFolder, RunReport
from gridedge.trainer.tasks import PreparedTask, Split, forecast_step_times, prepare_task

__all__ = ["FRAMEWORKS", "Framework", "train"]
Predict = Callable[[Feeds], NDArray[np.float32]]


def _versions(library_packages: tuple[str, ...]) -> dict[str, str]:
    packages = ["numpy", "pandas", "lightgbm", "pydantic", *library_packages]
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _window_scores(predict: Predict, prepared: PreparedTask, split: Split) -> NDArray[np.float32]:
    """Anomaly score per window (NaN where the window was unusable)."""
    assert prepared.anomaly_steps is not None
    scores = np.full(len(split), np.nan, dtype=np.float32)
    valid = split.inputs.valid
    if valid.any():
        feeds = {"past": split.inputs.past[valid]}
        reconstruction = predict(feeds)
        scores[valid] = anomaly_scores.reconstruction_scores(
            split.targets_normalised[valid], reconstruction, prepared.anomaly_steps.score
        )
    return scores


def _evaluate_forecast(
    predict: Predict, prepared: PreparedTask, output: OutputSpec
) -> tuple[dict[str, Any], dict[str, Any], OutputSpec]:
    """Metrics per split of the point forecast (the median of a quantile model) and of the quantiles.

    A quantile model's levels are measured raw and recalibrated on validation; the config chooses which
    one ships (the returned output spec carries the scales when it is the recalibrated one), and the
    other is reported beside it under ``quantiles.other``.
    """
    splits = {"val": prepared.val, "test": prepared.test}
    if prepared.test_rolling is not None:
        splits["test_rolling"] = prepared.test_rolling
    raw = {name: predict(split.inputs.as_feeds()) for name, split in splits.items()}
    other = output
    if output.quantiles:
        scales = quantiles.spread_scales(
            split_levels(raw["val"], output), prepared.val.targets_normalised, output.quantiles
        )
        recalibrated = OutputSpec.model_validate({**output.model_dump(), "quantile_scales": scales})
        if prepared.config.model.recalibrate_quantiles:
            output, other = recalibrated, output
        else:
            other = recalibrated
    times = {name: forecast_step_times(prepared, split) for name, split in splits.items()}
    decoded = {name: decode_forecast(raw[name], output, prepared.pipeline, times[name]) for name in splits}
    metrics = {name: forecast_metrics(decoded[name].point, split.targets) for name, split in splits.items()}
    predictions: dict[str, Any] = {name: decoded[name].point for name in splits}
    for name, split in splits.items():
        shipped, alternative = decoded[name], decode_forecast(raw[name], other, prepared.pipeline, times[name])
        if shipped.quantiles is None or alternative.quantiles is None:
            continue
        metrics[name]["quantiles"] = {
            **quantiles.quantile_metrics(shipped.quantiles, split.targets, output.quantiles),
            "recalibrated": bool(output.quantile_scales),
            "other": {
                **quantiles.quantile_metrics(alternative.quantiles, split.targets, output.quantiles),
                "recalibrated": bool(other.quantile_scales),
            },
        }
        predictions[f"{name}_quantiles"] = shipped.quantiles
    return metrics, predictions, output


def _evaluate_anomaly(
    predict: Predict, prepared: PreparedTask
) -> tuple[dict[str, Any], dict[str, NDArray[np.float32]], dict[str, NDArray[np.bool_]], float]:
    """F1 of the shipped detector (and of the model alone) on the labelled series; threshold from validation."""
    cfg, steps = prepared.config.anomaly, prepared.anomaly_steps
    assert cfg is not None and steps is not None
    stale_steps = steps.detector_stale_run
    val_scores = _window_scores(predict, prepared, prepared.val)
    threshold = anomaly_scores.calibrate_threshold(val_scores, cfg.threshold_quantile)
    test_scores = _window_scores(predict, prepared, prepared.test)
    per_series: dict[str, dict[str, float | int]] = {}
    model_only: dict[str, dict[str, float | int]] = {}
    series_scores: dict[str, NDArray[np.float32]] = {}
    series_flags: dict[str, NDArray[np.bool_]] = {}
    for item in prepared.labelled:
        scores = _per_sample(_window_scores(predict, prepared, item.split), item.split, len(item.values))
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
    plots: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``config`` in ``framework``, write the run folder ``out_dir`` and return the report.

    ``progress`` receives one line when training ends (how many epochs, whether early stopping ended it).
    """
    chosen = backend(framework)  # an unknown framework is refused before any data is read
    prepared = prepare_task(config)  # every config/data error surfaces here, before training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hp = hyperparameters(prepared)

    fitted = chosen.fit(config, prepared, hp)
    progress(f"{chosen.key} {config.name}: {fitted.summary()}")
    chosen.save(fitted.model, hp, out)

    def predict(feeds: Feeds) -> NDArray[np.float32]:
        return chosen.predict(fitted.model, feeds)

    output_spec = dict(prepared.output_spec)
    plot_data: dict[str, Any]
    if prepared.spec.is_forecast:
        metrics, predictions, output = _evaluate_forecast(predict, prepared, OutputSpec.model_validate(output_spec))
        output_spec = output.model_dump()
        baselines = forecast_baselines(prepared)
        plot_data = {"predictions": predictions, "metrics": metrics}
        protocol = (
            f"day-ahead: one origin per day at {config.protocol.origin_hour:02d}:00 local "
            f"({prepared.spec.timezone}), input the past {prepared.spec.input_steps} steps, horizon "
            f"{prepared.spec.horizon_steps} steps; MAE/RMSE over all test origins and steps; training origins at "
            f"{config.protocol.origin_hour:02d}:00 local and every {config.protocol.train_stride} after it "
            f"({len(prepared.train)}); validation (epoch choice) origins every {config.protocol.val_stride} "
            f"({len(prepared.val)}, minimum {config.protocol.min_val_origins})"
            + (
                "; days containing upstream-filled copies excluded from targets"
                if config.data.exclude_upstream_filled
                else ""
            )
            + (
                f"; quantiles {list(config.model.quantiles)} trained with the pinball loss, the median is the "
                "point forecast"
                + "; shipped levels "
                + ("recalibrated" if config.model.recalibrate_quantiles else "raw")
                + " (metrics.*.quantiles.other: the levels with each distance from the median rescaled to nominal "
                "validation coverage, or raw)"
                if config.model.quantiles
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
        steps = prepared.anomaly_steps
        assert config.anomaly is not None and steps is not None
        metrics, series_scores, detector_flags, threshold = _evaluate_anomaly(predict, prepared)
        output_spec["anomaly"] = {
            "threshold": threshold,
            "score_steps": steps.score,
            "stale_run_steps": steps.detector_stale_run,
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
            f"{steps.score} step(s), normalised units; threshold = "
            f"{config.anomaly.threshold_quantile} quantile of validation scores (normal data); F1/precision/"
            "recall = mean over the labelled series (each fault type counts once), pooled counts alongside"
            + (
                f"; shipped detector = model score OR stale-value rule ({steps.stale_run} equal "
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
        "train_seconds": fitted.seconds,
        "epochs_run": fitted.epochs_run,
        "epochs_max": fitted.epochs_max,
        "stopped_early": fitted.stopped_early,
        "best_epoch": fitted.best_epoch,
        "training_summary": fitted.summary(),
        "history": fitted.history,
        "n_params": chosen.count_params(fitted.model),
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
        "data": {
            "path": config.data.path,
            "source_of_series": config.data.describe(),
            "source": config.data.source,
            "licence": config.data.licence,
            "fingerprint_sha256": prepared.data_fingerprint,
            "load": prepared.load_log.as_dict() if prepared.load_log else None,
            "channel_out_of_range": prepared.channel_out_of_range,
            "upstream_filled_days": prepared.upstream_filled_days,
            "origins": {name: screen.explain() for name, screen in prepared.screens.items()},
        },
        "library_versions": _versions(chosen.library_packages),
        "lineage": lineage(
            config,
            int(prepared.series.timestamps[0]),
            int(prepared.series.timestamps[-1]),
            prepared.load_log.content_sha256 if prepared.load_log else "",
        ).model_dump(mode="json"),
    }
    if plots:
        report["plots"] = reporting.plot(prepared, plot_data, out)
    run = RunFolder(
        path=out,
        config=config,
        spec=prepared.spec,
        output=OutputSpec.model_validate(output_spec),
        report=RunReport.model_validate(report),
    )
    run.write()
    (out / "report.md").write_text(reporting.markdown(report))
    return report
