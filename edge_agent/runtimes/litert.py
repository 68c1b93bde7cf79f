"""LiteRT (TFLite) runtime: ai-edge-litert, else the older tflite-runtime; never full TensorFlow."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edge_agent.arrays import FloatArray
from edge_agent.errors import ModelLoadError, missing_extra
from edge_agent.runtimes.base import AffineQuantiser, RuntimeInfo, RuntimeSettings, check_feeds
from edge_agent.runtimes.matching import match_inputs

RUNTIME_KEY = "litert"
ARTEFACT_RUNTIME = "tflite"


class LiteRTConfig(RuntimeSettings, frozen=True):
    """Run ``.tflite`` artefacts with LiteRT."""

    type: Literal["litert"] = Field(default="litert", title="Runtime")
    """LiteRT / TFLite."""
    num_threads: int = Field(default=1, ge=1, le=64, title="Threads")
    """CPU threads for one inference; 1 suits tiny models."""
    served_on_onnxruntime: bool = Field(default=True, title="Run a served ONNX-only model on ONNX Runtime")
    """When the bundle serves a model LiteRT cannot run (LightGBM, or the blend of the network and LightGBM) and
    onnxruntime is installed (the Pi 4 and Pi 5 profiles install both), run that model on onnxruntime with these
    threads and precisions; off, or without onnxruntime, the device runs the bundle's network on LiteRT."""


def _interpreter_module() -> tuple[ModuleType, str, str]:
    """The interpreter module, its package version and the compatibility target it satisfies."""
    try:
        module = importlib.import_module("ai_edge_litert.interpreter")
        version = _package_version("ai-edge-litert")
        return module, version, "litert"
    except ImportError:
        pass
    try:
        module = importlib.import_module("tflite_runtime.interpreter")
    except ImportError as exc:
        raise missing_extra("ai-edge-litert", "edge") from exc
    version = _package_version("tflite-runtime")
    return module, version, f"tflite-runtime-{'.'.join(version.split('.')[:2])}"


def _package_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def available_target() -> str:
    """The compatibility target of the LiteRT flavour installed here (e.g. ``litert``)."""
    return _interpreter_module()[2]


class _Tensor:
    __slots__ = ("dtype", "index", "quantiser", "scale", "zero_point")

    def __init__(self, detail: Mapping[str, Any]) -> None:
        self.index: int = int(detail["index"])
        self.dtype = np.dtype(detail["dtype"])
        scale, zero_point = detail.get("quantization", (0.0, 0))
        self.scale, self.zero_point = float(scale), int(zero_point)
        quantised = self.dtype != np.float32 and self.scale > 0
        self.quantiser = AffineQuantiser(self.scale, self.zero_point, self.dtype) if quantised else None


class LiteRTRuntime:
    """A ``.tflite`` model behind the :class:`~edge_agent.runtimes.base.ModelRuntime` protocol."""

    ARTEFACT_RUNTIME = ARTEFACT_RUNTIME
    available_target = staticmethod(available_target)

    def __init__(
        self,
        model_path: Path,
        config: LiteRTConfig | None = None,
        input_names: Sequence[str] = ("past",),
        shape_hints: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        config = config or LiteRTConfig()
        module, version, self.target = _interpreter_module()
        path = Path(model_path)
        try:
            self._interpreter = module.Interpreter(model_path=str(path), num_threads=config.num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path.name}: LiteRT cannot load this model ({exc}); re-export it") from exc
        signatures = self._interpreter.get_signature_list()
        if signatures:
            runner = self._interpreter.get_signature_runner(next(iter(signatures)))
            inputs = dict(runner.get_input_details())
            outputs = list(runner.get_output_details().values())
            # A live signature runner holds tensor references that forbid resizing the inputs.
            del runner
        else:
            inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
            outputs = list(self._interpreter.get_output_details())
        if len(outputs) != 1:
            raise ModelLoadError(f"{path.name}: expected one output tensor, the model has {len(outputs)}")
        shapes = {name: [int(v) for v in d["shape_signature"]] for name, d in inputs.items()}
        mapping = match_inputs(shapes, input_names, shape_hints, path.name)
        self._inputs = {name: _Tensor(inputs[mapping[name]]) for name in input_names}
        self._output = _Tensor(outputs[0])
        self._names = tuple(input_names)
        self._batch = 0
        # Models converted from PyTorch (litert-torch) have a fixed batch of 1: batches run window by window.
        self._window_by_window = shapes[mapping[self._names[0]]][:1] == [1]
        self._info = RuntimeInfo(
            name="ai-edge-litert" if self.target == "litert" else "tflite-runtime",
            version=version,
            artefact=path.name,
            input_names=self._names,
            input_shapes={name: tuple(shapes[mapping[name]][1:]) for name in input_names},
        )

    @property
    def info(self) -> RuntimeInfo:
        return self._info

    @property
    def input_quantisation(self) -> dict[str, tuple[float, int]]:
        """Scale and zero point of each quantised input (empty for float models)."""
        return {n: (t.scale, t.zero_point) for n, t in self._inputs.items() if t.quantiser}

    @property
    def output_quantisation(self) -> tuple[float, int] | None:
        """Scale and zero point of the output when it is quantised."""
        out = self._output
        return (out.scale, out.zero_point) if out.quantiser else None

    def _resize(self, batch: int, arrays: Mapping[str, FloatArray]) -> None:
        for name, tensor in self._inputs.items():
            self._interpreter.resize_tensor_input(tensor.index, [batch, *arrays[name].shape[1:]])
        self._interpreter.allocate_tensors()
        self._batch = batch

    def run(self, feeds: Mapping[str, FloatArray]) -> FloatArray:
        """One inference on a batch of windows; float32 in and out, normalised units."""
        arrays = check_feeds(feeds, self._names, self._info.artefact)
        batch = arrays[self._names[0]].shape[0]
        if self._window_by_window and batch != 1:
            return np.concatenate([self.run({n: a[i : i + 1] for n, a in arrays.items()}) for i in range(batch)])
        if batch != self._batch:
            self._resize(batch, arrays)
        for name, tensor in self._inputs.items():
            value = arrays[name]
            self._interpreter.set_tensor(
                tensor.index, tensor.quantiser.quantise(value) if tensor.quantiser else value
            )
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output.index)
        if self._output.quantiser:
            return self._output.quantiser.dequantise(out)
        return np.asarray(out, dtype=np.float32)
