"""The trainer's public Python API, used by the exporter and by notebooks.

* :func:`prepare_task` — a validated config -> FeatureSpec with fitted normalisation and time-ordered
  train/val/test splits (model inputs, raw targets, origins);
* :func:`train` — train a config in Keras or PyTorch and write the run folder;
* :func:`load_run` — reopen a run folder: config, spec, output spec, framework, the model itself and a
  framework-neutral ``predict(feeds)`` returning normalised outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import ConfigError
from edge_agent.features import FeaturePipeline, FeatureSpec
from gridedge.trainer.config import TaskConfig, load_config
from gridedge.trainer.tasks import LabelledEvaluation, PreparedTask, Split, prepare_task
from gridedge.trainer.training import FRAMEWORKS, Framework, train

__all__ = [
    "LabelledEvaluation",
    "PreparedTask",
    "Split",
    "TrainedRun",
    "load_run",
    "prepare_task",
    "train",
]


@dataclass
class TrainedRun:
    """A finished run folder, reopened."""

    run_dir: Path
    config: TaskConfig
    spec: FeatureSpec
    output_spec: dict[str, Any]
    framework: Framework
    model: Any  # keras.Model or torch.nn.Module (eval mode)
    report: dict[str, Any]
    model_config: dict[str, Any] | None = None  # PyTorch only: architecture + hyperparameters

    @property
    def pipeline(self) -> FeaturePipeline:
        return FeaturePipeline(self.spec)

    def predict(self, feeds: dict[str, NDArray[np.float32]]) -> NDArray[np.float32]:
        """Normalised outputs for named feeds ``{"past": ..., "future": ...}`` (decode with the pipeline)."""
        if self.framework == "keras":
            from gridedge.trainer import models_keras

            return models_keras.predict(self.model, feeds)
        from gridedge.trainer import models_torch

        return models_torch.predict(self.model, feeds)


def load_run(run_dir: str | Path) -> TrainedRun:
    """Reopen a run folder written by ``gridedge train`` (see trainer.training for its contents)."""
    folder = Path(run_dir)
    needed = ["task.yaml", "feature_spec.json", "output_spec.json", "report.json"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a complete training run (missing {missing}); run `gridedge train`")
    report = json.loads((folder / "report.json").read_text())
    framework = report["framework"]
    if framework not in FRAMEWORKS:
        raise ConfigError(f"{folder}/report.json names unknown framework {framework!r}")
    spec = FeatureSpec.model_validate_json((folder / "feature_spec.json").read_text())
    output_spec = json.loads((folder / "output_spec.json").read_text())
    model_config = None
    if framework == "keras":
        from gridedge.trainer import models_keras

        model = models_keras.load(folder)
    else:
        from gridedge.trainer import models_torch

        model = models_torch.load(folder)
        model_config = json.loads((folder / models_torch.CONFIG_FILE).read_text())
    return TrainedRun(
        run_dir=folder,
        config=load_config(folder / "task.yaml"),
        spec=spec,
        output_spec=output_spec,
        framework=framework,
        model=model,
        report=report,
        model_config=model_config,
    )
