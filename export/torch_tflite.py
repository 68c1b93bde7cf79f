"""PyTorch -> TFLite (fp32 and full-integer int8) through litert-torch in its own venv.

litert-torch cannot live in gridedge's environment (its chain pins typing-extensions<4.13, which
forces an older pydantic, and pulls jax and transformers), so the model crosses over as a
``torch.export`` program: traced here at batch 1 with keyword inputs "past" (and "future"), saved as
``.pt2``, and loaded by the same pinned torch in the converter venv. That serves any
``forward(past, future=None)`` module, not only the trainer's, without importing gridedge there.
:mod:`export.torch_tflite_runner` quantises (PT2E, calibrated on training windows) and converts.

The files have a fixed batch of 1: litert-torch 0.10 cannot lower a symbolic batch through Conv1d.
LiteRT runs batches on them window by window (edge_agent.runtimes.litert); a device runs one anyway.
The int8 file takes int8 inputs and gives an int8 output (quantisation parameters in the file, read by
the runtime); a model ending on an op litert-torch cannot quantise would keep a float output.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_agent.arrays import FloatArray
from gridedge.export import compat_envs
from gridedge.export.errors import ConversionError

TorchTflitePrecision = Literal["fp32", "int8"]
_RUNNER = compat_envs.runner_script("torch_tflite_runner.py")
BUILD_COMMAND = "python -m gridedge.export.compat_envs"


@dataclass(frozen=True)
class TorchTfliteResult:
    """What the converter venv wrote: one file per precision, its library versions and timings."""

    files: dict[TorchTflitePrecision, Path]
    versions: dict[str, str]
    seconds: dict[str, float]


def converter_python() -> Path:
    """The converter venv's python; a clear error naming the build command when it is missing."""
    python = compat_envs.torch_tflite_python()
    if python is None:
        env_dir = compat_envs.venvs_root() / compat_envs.TORCH_TFLITE_ENV
        raise ConversionError(
            f"PyTorch -> TFLite needs the litert-torch converter venv at {env_dir}, which is missing or "
            f"was built with other requirements; build it with `{BUILD_COMMAND}` (a few minutes, ~2 GB), "
            "or export this model for --target ort / ort-1.16 only"
        )
    return python


def _export_program(module: Any, example: dict[str, FloatArray], path: Path) -> None:
    import torch

    kwargs = {name: torch.from_numpy(np.ascontiguousarray(value[:1])) for name, value in example.items()}
    try:
        with torch.no_grad():
            program = torch.export.export(module.eval(), (), kwargs)
    except Exception as exc:  # torch.export raises UserError, GuardOnDataDependent and more
        raise ConversionError(f"torch.export could not trace the model for TFLite conversion: {exc}") from exc
    torch.export.save(program, str(path))


def torch_to_tflite(
    module: Any,
    calibration: Sequence[dict[str, FloatArray]],
    workdir: Path,
    stem: str,
    precisions: Sequence[TorchTflitePrecision] = ("fp32", "int8"),
) -> TorchTfliteResult:
    """Convert ``module`` to ``{workdir}/{stem}.{precision}.tflite``, int8 calibrated on ``calibration``.

    ``calibration`` is a list of single-window feed dicts (see converters.calibration_batches); the
    first window also serves as the tracing example.
    """
    python = converter_python()
    if not calibration:
        raise ConversionError("PyTorch -> TFLite needs calibration windows from the training split")
    names = list(calibration[0])
    staging = workdir / "torch-tflite"
    staging.mkdir(parents=True, exist_ok=True)
    program = staging / "model.pt2"
    _export_program(module, calibration[0], program)
    windows = staging / "calibration.npz"
    stacked: dict[str, Any] = {n: np.concatenate([w[n] for w in calibration]).astype(np.float32) for n in names}
    np.savez(windows, **stacked)
    result_path = staging / "result.json"
    request = staging / "request.json"
    request.write_text(
        json.dumps(
            {
                "program": str(program),
                "calibration": str(windows),
                "out_dir": str(workdir),
                "stem": stem,
                "precisions": list(precisions),
                "result": str(result_path),
            }
        )
    )
    completed = subprocess.run(
        [str(python), str(_RUNNER), str(request)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0 or not result_path.is_file():
        raise ConversionError(
            f"litert-torch conversion failed in {python.parent.parent} (exit {completed.returncode}): "
            f"{completed.stderr.strip()[-1500:]}. If the venv is broken, delete that folder and rebuild it "
            f"with `{BUILD_COMMAND}`"
        )
    answer = json.loads(result_path.read_text())
    return TorchTfliteResult(
        files={precision: workdir / answer["files"][precision] for precision in precisions},
        versions=answer["versions"],
        seconds=answer["seconds"],
    )
