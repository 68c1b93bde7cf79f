"""The one seam between gridedge and a training framework (Keras or PyTorch).

Everything that differs between the frameworks sits behind :class:`FrameworkBackend`: building, fitting,
predicting, saving and loading a model, and the two export hooks (ONNX and TFLite). Training, the
run folder and the exporter ask :func:`backend` for one by key and never branch on the framework name.
Each backend lives in its own module (``models_keras``, ``models_torch``) and is imported only when
asked for, so choosing PyTorch never imports TensorFlow and the other way round.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import numpy as np
from numpy.typing import NDArray

from edge_agent.bundle import Precision
from edge_agent.errors import ConfigError

if TYPE_CHECKING:
    from gridedge.trainer.config import TaskConfig
    from gridedge.trainer.tasks import PreparedTask

Framework = Literal["keras", "torch"]
FRAMEWORKS: tuple[Framework, ...] = get_args(Framework)
Feeds = dict[str, NDArray[np.float32]]
# key -> module holding that framework's BACKEND; imported on first use only.
_MODULES: dict[str, str] = {
    "keras": "gridedge.trainer.models_keras",
    "torch": "gridedge.trainer.models_torch",
}
# The files each backend saves into a run folder, known without importing the framework (export checks
# a folder before loading anything).
MODEL_FILES: dict[Framework, tuple[str, ...]] = {
    "keras": ("model.keras",),
    "torch": ("model.pt", "model_config.json"),
}


@dataclass
class FitResult:
    """A trained model and how its training went (the best epoch's weights are the ones kept)."""

    model: Any
    epochs_run: int
    epochs_max: int
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float

    @property
    def stopped_early(self) -> bool:
        return self.epochs_run < self.epochs_max

    def summary(self) -> str:
        """One line saying how training ended, e.g. ``stopped early at epoch 15/40 (best epoch 9, ...)``."""
        best_loss = self.history[self.best_epoch - 1]["val_loss"] if self.history else float("nan")
        how = "stopped early" if self.stopped_early else "trained"
        return (
            f"{how} at epoch {self.epochs_run}/{self.epochs_max} "
            f"(best epoch {self.best_epoch}, val loss {best_loss:.4f})"
        )


class FrameworkBackend(Protocol):
    """What gridedge needs from a training framework; one implementation per framework."""

    key: Framework
    model_files: tuple[str, ...]  # files ``save`` writes into a run folder
    library_packages: tuple[str, ...]  # distributions whose versions the provenance records

    def build(self, hp: dict[str, Any]) -> Any:
        """A fresh model described by ``hp`` (see :func:`gridedge.trainer.metrics.hyperparameters`)."""
        ...

    def fit(self, config: TaskConfig, prepared: PreparedTask, hp: dict[str, Any]) -> FitResult:
        """Train on the prepared splits with early stopping on validation loss."""
        ...

    def predict(self, model: Any, feeds: Feeds) -> NDArray[np.float32]:
        """Normalised outputs for named feeds ``{"past": ..., "future": ...}`` (any model of this framework)."""
        ...

    def save(self, model: Any, hp: dict[str, Any], run_dir: Path) -> None:
        """Write the model files into ``run_dir``."""
        ...

    def load(self, run_dir: Path) -> Any:
        """Rebuild the model ``save`` wrote, in inference mode."""
        ...

    def count_params(self, model: Any) -> int: ...

    def to_onnx(self, model: Any, path: Path, example: Feeds) -> Path:
        """Export hook: one self-contained ONNX file with inputs named like ``example``'s keys."""
        ...

    def to_tflite(
        self, model: Any, calibration: Sequence[Feeds], workdir: Path, stem: str, notes: list[str]
    ) -> dict[Precision, Path]:
        """Export hook: TFLite files by precision (int8 calibrated on ``calibration``), notes appended."""
        ...


def backend(framework: str) -> FrameworkBackend:
    """The backend for ``framework``, importing its module (and only its framework) on first use."""
    if framework not in _MODULES:
        raise ConfigError(f"unknown framework {framework!r}; use one of {list(FRAMEWORKS)}")
    found: FrameworkBackend = importlib.import_module(_MODULES[framework]).BACKEND
    return found
