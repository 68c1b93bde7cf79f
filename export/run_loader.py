"""Turn a trainer run folder into an :class:`~gridedge.export.pipeline.ExportSource`.

The folder is read through the trainer's :class:`~gridedge.trainer.run_folder.RunFolder` (the one
description of its files); the data splits are rebuilt from the task config with the trainer's own
``prepare_task`` so export judges the model on exactly the windows it was tested on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.anomaly import stale_value_flags
from edge_agent.bundle import OutputSpec, Provenance
from edge_agent.errors import ConfigError
from edge_agent.features import FeatureSpec
from gridedge.export.errors import TrainingRunError
from gridedge.export.evaluate import TestSplit
from gridedge.export.pipeline import ExportSource, GbmCandidate

if TYPE_CHECKING:
    from gridedge.trainer.backends import Framework
    from gridedge.trainer.run_folder import RunFolder


def read_run(run_dir: Path) -> RunFolder:
    """Read and check the run folder (no framework is imported); a TrainingRunError names what is wrong."""
    from gridedge.trainer.run_folder import RunFolder

    try:
        return RunFolder.read(run_dir)
    except ConfigError as exc:
        raise TrainingRunError(str(exc)) from exc


def _valid_feeds(inputs: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    valid = np.asarray(inputs.valid, dtype=bool)
    return {k: np.asarray(v)[valid] for k, v in inputs.as_feeds().items()}, valid


def _anomaly_split(prepared: Any) -> TestSplit:
    """Windows of every labelled series; each labelled by the sample it ends at (trainer's protocol)."""
    stale_steps = prepared.anomaly_steps.stale_run
    feeds: list[dict[str, np.ndarray]] = []
    labels, groups, unscored, references, frozen = [], [], [], [], []
    for index, item in enumerate(prepared.labelled):
        item_feeds, valid = _valid_feeds(item.split.inputs)
        window_labels = np.asarray(item.labels, dtype=bool)[np.asarray(item.split.origins) - 1]
        feeds.append(item_feeds)
        labels.append(window_labels[valid])
        references.append(np.asarray(item.split.targets_normalised, dtype=np.float32)[valid])
        ends = np.asarray(item.split.origins) - 1
        frozen.append(stale_value_flags(item.values, stale_steps)[ends][valid])
        groups.append(np.full(int(valid.sum()), index, dtype=np.int64))
        unscored.append(int(np.sum(item.labels)) - int(np.sum(window_labels[valid])))
    if not feeds:
        raise TrainingRunError("the anomaly task has no labelled series to evaluate F1 on; add anomaly.labelled")
    return TestSplit(
        feeds={k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]},
        targets=np.zeros(0, dtype=np.float32),
        labels=np.concatenate(labels),
        groups=np.concatenate(groups),
        unscored_positives=tuple(unscored),
        normalised_targets=np.concatenate(references),
        frozen=np.concatenate(frozen),
    )


def default_bundle_name(run: RunFolder) -> str:
    """A bundle is named after what it is (config name + framework), not after the folder it came from."""
    return f"{run.config.name}-{run.framework}"


def load_source(run_dir: Path) -> ExportSource:
    """Load a trained run and rebuild its calibration (training) and test windows."""
    run = read_run(Path(run_dir))
    try:
        from gridedge.trainer.api import forecast_step_times, prepare_task
    except ImportError as exc:
        raise TrainingRunError(
            "the trainer package is not importable; install gridedge with the `train` extra"
        ) from exc

    prepared = prepare_task(run.config)
    if prepared.spec.model_dump(exclude={"normalisation"}) != run.spec.model_dump(exclude={"normalisation"}):
        raise TrainingRunError(
            f"{run.path}: feature_spec.json differs from the spec task.yaml produces now; the config or "
            "the data changed after training — retrain"
        )
    calibration, _ = _valid_feeds(prepared.train.inputs)
    gbm: GbmCandidate | None = None
    if run.output.anomaly is not None:
        split = _anomaly_split(prepared)
    else:
        split = _forecast_split(prepared, prepared.test, forecast_step_times)
        if run.config.baselines.lightgbm.enabled:
            train_valid = np.asarray(prepared.train.inputs.valid, dtype=bool)
            gbm = GbmCandidate(
                train_feeds=calibration,
                train_targets=np.asarray(prepared.train.targets_normalised, dtype=np.float32)[train_valid],
                validation=_forecast_split(prepared, prepared.val, forecast_step_times),
                config=run.config.baselines.lightgbm,
                seed=run.config.seed,
                threads=run.config.training.threads,
            )
    model = run.load_model()
    _check_model_matches(run.framework, model, run.spec, run.output, run.path, split.feeds)
    report = run.report
    reference = {
        f"baseline:{name}": _numbers(entry.get("test", {}))
        for name, entry in report.baselines.items()
        if isinstance(entry, dict)
    }
    reference["trainer_float"] = _numbers(report.metrics.get("test", {}))
    provenance = Provenance(
        data_fingerprint=report.data_fingerprint or prepared.data_fingerprint,
        config=run.config.model_dump(mode="json"),
        seed=report.seed,
        library_versions=report.library_versions,
        lineage=report.lineage,
    )
    return ExportSource(
        framework=run.framework,
        model=model,
        task=run.config.task,
        spec=run.spec,
        output=run.output,
        calibration=calibration,
        test=split,
        provenance=provenance,
        reference_metrics=reference,
        origin=f"run folder {run.path.resolve()}",
        gbm=gbm,
    )


def _forecast_split(prepared: Any, split: Any, step_times: Any) -> TestSplit:
    """The valid windows of a forecast split, with raw targets and step times (for the output bounds)."""
    feeds, valid = _valid_feeds(split.inputs)
    return TestSplit(
        feeds=feeds,
        targets=np.asarray(split.targets, dtype=np.float32)[valid],
        step_times=step_times(prepared, split)[valid],
    )


def _numbers(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _check_model_matches(
    framework: Framework,
    model: Any,
    spec: FeatureSpec,
    output: OutputSpec,
    run_dir: Path,
    feeds: dict[str, np.ndarray],
) -> None:
    """Refuse a model whose inputs or output disagree with the run's feature and output specs."""
    steps = spec.horizon_steps or spec.input_steps
    expected = (steps, output.output_channels)
    source = ExportSource(
        framework=framework,
        model=model,
        task="load_forecast",
        spec=spec,
        output=OutputSpec(kind="forecast", horizon_steps=0, target_channels=("x",), target_units=("x",)),
        calibration={},
        test=TestSplit(feeds, np.zeros(0, dtype=np.float32)),
        provenance=Provenance(data_fingerprint="", config={}, seed=0, library_versions={}),
    )
    try:
        out = source.predict({k: v[:1] for k, v in feeds.items()})
    except Exception as exc:  # any framework error here means the model does not fit the spec
        raise TrainingRunError(
            f"{run_dir}: the model does not accept inputs shaped by feature_spec.json "
            f"({ {k: v.shape[1:] for k, v in feeds.items()} }): {exc}; model and config do not match"
        ) from exc
    if tuple(out.shape[1:]) != expected:
        raise TrainingRunError(
            f"{run_dir}: the model outputs {tuple(out.shape[1:])} per window but feature_spec.json and "
            "output_spec.json imply "
            f"{expected}; model and config do not match — retrain or fix the spec"
        )
