"""Turn a trainer run folder into an :class:`~gridedge.export.pipeline.ExportSource`.

A run folder holds ``task.yaml``, ``feature_spec.json``, ``output_spec.json``, the model (Keras
``model.keras`` or PyTorch ``model.pt`` + ``model_config.json``) and ``report.json``. The data splits are
rebuilt from the task config with the trainer's own ``prepare_task`` so export judges the model on
exactly the windows it was tested on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.anomaly import stale_value_flags
from edge_agent.bundle import OutputSpec, Provenance
from edge_agent.features import FeatureSpec
from gridedge.export.errors import TrainingRunError
from gridedge.export.evaluate import TestSplit
from gridedge.export.pipeline import ExportSource

REQUIRED_FILES = ("task.yaml", "feature_spec.json", "output_spec.json")
MODEL_FILES = {"keras": ("model.keras",), "torch": ("model.pt", "model_config.json")}


def check_run_dir(run_dir: Path) -> str:
    """Check the folder has what export needs; returns the framework ("keras" or "torch")."""
    if not run_dir.is_dir():
        raise TrainingRunError(f"training folder {run_dir} does not exist; pass the folder `gridedge train` wrote")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise TrainingRunError(
            f"{run_dir} lacks {missing}; it is not a complete training run — re-run `gridedge train`"
        )
    found = [fw for fw, files in MODEL_FILES.items() if all((run_dir / f).is_file() for f in files)]
    if len(found) != 1:
        raise TrainingRunError(
            f"{run_dir} must hold exactly one model: model.keras, or model.pt with model_config.json "
            f"(found {[p.name for p in run_dir.iterdir() if p.name.startswith('model')]})"
        )
    return found[0]


def _valid_feeds(inputs: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    valid = np.asarray(inputs.valid, dtype=bool)
    return {k: np.asarray(v)[valid] for k, v in inputs.as_feeds().items()}, valid


def _anomaly_split(prepared: Any) -> TestSplit:
    """Windows of every labelled series; each labelled by the sample it ends at (trainer's protocol)."""
    stale_steps = prepared.config.anomaly.stale_run_steps
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


def load_source(run_dir: Path) -> ExportSource:
    """Load a trained run and rebuild its calibration (training) and test windows."""
    run_dir = Path(run_dir)
    framework = check_run_dir(run_dir)
    try:
        from gridedge.trainer.api import load_run, prepare_task
    except ImportError as exc:
        raise TrainingRunError(
            "the trainer package is not importable; install gridedge with the `train` extra"
        ) from exc
    spec = FeatureSpec.model_validate_json((run_dir / "feature_spec.json").read_text())
    output = OutputSpec.model_validate_json((run_dir / "output_spec.json").read_text())
    run = load_run(run_dir)
    prepared = prepare_task(run.config)
    if prepared.spec.model_dump(exclude={"normalisation"}) != spec.model_dump(exclude={"normalisation"}):
        raise TrainingRunError(
            f"{run_dir}: feature_spec.json differs from the spec task.yaml produces now; the config or "
            "the data changed after training — retrain"
        )
    calibration, _ = _valid_feeds(prepared.train.inputs)
    if output.anomaly is not None:
        split = _anomaly_split(prepared)
    else:
        test_feeds, valid = _valid_feeds(prepared.test.inputs)
        split = TestSplit(feeds=test_feeds, targets=np.asarray(prepared.test.targets, dtype=np.float32)[valid])
    _check_model_matches(framework, run.model, spec, run_dir, split.feeds)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    reference = {
        f"baseline:{name}": _numbers(entry.get("test", {}))
        for name, entry in report.get("baselines", {}).items()
        if isinstance(entry, dict)
    }
    reference["trainer_float"] = _numbers(report.get("metrics", {}).get("test", {}))
    provenance = Provenance(
        data_fingerprint=str(report.get("data", {}).get("fingerprint_sha256") or prepared.data_fingerprint),
        config=run.config.model_dump(mode="json"),
        seed=int(report.get("seed", run.config.seed)),
        library_versions={k: str(v) for k, v in report.get("library_versions", {}).items()},
    )
    return ExportSource(
        framework=framework,  # type: ignore[arg-type]
        model=run.model,
        task=run.config.task,
        spec=spec,
        output=output,
        calibration=calibration,
        test=split,
        provenance=provenance,
        reference_metrics=reference,
    )


def _numbers(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _check_model_matches(
    framework: str, model: Any, spec: FeatureSpec, run_dir: Path, feeds: dict[str, np.ndarray]
) -> None:
    """Refuse a model whose inputs or output disagree with the run's feature spec."""
    steps = spec.horizon_steps or spec.input_steps
    expected = (steps, len(spec.target_channels))
    source = ExportSource(
        framework=framework,  # type: ignore[arg-type]
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
            f"{run_dir}: the model outputs {tuple(out.shape[1:])} per window but feature_spec.json implies "
            f"{expected}; model and config do not match — retrain or fix the spec"
        )
