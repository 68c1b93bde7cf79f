"""The trainer's public Python API, used by the exporter and by notebooks.

* :func:`prepare_task` — a validated config -> FeatureSpec with fitted normalisation and time-ordered
  train/val/test splits (model inputs, raw targets, origins);
* :func:`train` — train a config in Keras or PyTorch and write the run folder;
* :func:`load_run` — reopen a run folder: its typed description (:class:`RunFolder`), the model itself
  and a framework-neutral ``predict(feeds)`` returning normalised outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.bundle import OutputSpec
from edge_agent.features import FeaturePipeline, FeatureSpec
from gridedge.trainer.backends import Feeds, Framework, backend
from gridedge.trainer.config import TaskConfig
from gridedge.trainer.run_folder import RunFolder
from gridedge.trainer.tasks import LabelledEvaluation, PreparedTask, Split, forecast_step_times, prepare_task
from gridedge.trainer.training import train

__all__ = [
    "LabelledEvaluation",
    "PreparedTask",
    "RunFolder",
    "Split",
    "TrainedRun",
    "forecast_step_times",
    "load_run",
    "prepare_task",
    "train",
]


@dataclass
class TrainedRun:
    """A finished run folder, reopened, with its model loaded."""

    folder: RunFolder
    model: Any  # keras.Model or torch.nn.Module (inference mode)

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def config(self) -> TaskConfig:
        return self.folder.config

    @property
    def spec(self) -> FeatureSpec:
        return self.folder.spec

    @property
    def output(self) -> OutputSpec:
        return self.folder.output

    @property
    def framework(self) -> Framework:
        return self.folder.framework

    @property
    def report(self) -> dict[str, Any]:
        return self.folder.report.model_dump(mode="json")

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The architecture + hyperparameters file a backend keeps beside the weights (PyTorch), if any."""
        described = [name for name in self.folder.model_files if name.endswith(".json")]
        return json.loads((self.run_dir / described[0]).read_text()) if described else None

    @property
    def pipeline(self) -> FeaturePipeline:
        return FeaturePipeline(self.spec)

    def predict(self, feeds: Feeds) -> NDArray[np.float32]:
        """Normalised outputs for named feeds ``{"past": ..., "future": ...}`` (decode with the pipeline)."""
        return backend(self.framework).predict(self.model, feeds)


def load_run(run_dir: str | Path) -> TrainedRun:
    """Reopen a run folder written by ``gridedge train`` (see :mod:`gridedge.trainer.run_folder`)."""
    folder = RunFolder.read(run_dir)
    return TrainedRun(folder=folder, model=folder.load_model())
