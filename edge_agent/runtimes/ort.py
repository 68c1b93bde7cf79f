"""ONNX Runtime: CPU everywhere, CUDA or TensorRT execution providers on a Jetson when present.

(The module is not called ``onnx.py`` so it can never shadow the ``onnx`` package.)
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edge_agent.arrays import FloatArray
from edge_agent.errors import ConfigError, ModelLoadError, missing_extra
from edge_agent.runtimes.base import RuntimeInfo, RuntimeSettings, check_feeds
from edge_agent.runtimes.matching import match_inputs

RUNTIME_KEY = "onnxruntime"
ARTEFACT_RUNTIME = "onnx"
# Fastest first; "auto" keeps those this onnxruntime build offers.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeConfig(RuntimeSettings, frozen=True):
    """Run ``.onnx`` artefacts with ONNX Runtime."""

    type: Literal["onnxruntime"] = Field(default="onnxruntime", title="Runtime")
    """ONNX Runtime."""
    providers: tuple[str, ...] | Literal["auto"] = Field(default="auto", title="Execution providers")
    """'auto' uses TensorRT, then CUDA, then CPU, whichever this build offers; or list them."""
    graph_optimization: Literal["all", "extended", "basic", "disabled"] = Field(
        default="all", title="Graph optimisation"
    )
    """ORT graph optimisation level; 'basic' avoids the int8 QDQ fusions of 'extended'/'all'."""
    intra_op_threads: int = Field(default=1, ge=0, le=64, title="Intra-op threads")
    """Threads inside one operator; 0 = ORT default."""


def _onnxruntime():  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise missing_extra("onnxruntime", "edge") from exc


def target_of_version(version: str) -> str:
    """The compatibility target an onnxruntime version satisfies (``ort`` from 1.17, else e.g. ``ort-1.16``)."""
    major, minor = (int(v) for v in version.split(".")[:2])
    return "ort" if (major, minor) >= (1, 17) else f"ort-{major}.{minor}"


def available_target() -> str:
    """The compatibility target of the onnxruntime installed here (``ort`` or e.g. ``ort-1.16``)."""
    return target_of_version(str(_onnxruntime().__version__))


def resolve_providers(config: OnnxRuntimeConfig, available: Sequence[str]) -> list[str]:
    """The providers to ask for: the configured ones (each must exist) or the best available."""
    if config.providers == "auto":
        return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)
    unknown = [p for p in config.providers if p not in available]
    if unknown:
        raise ConfigError(
            f"onnxruntime here offers {list(available)}, not {unknown}; fix runtime.providers or use 'auto'"
        )
    return list(config.providers)


class OnnxRuntime:
    """An ``.onnx`` model behind the :class:`~edge_agent.runtimes.base.ModelRuntime` protocol."""

    ARTEFACT_RUNTIME = ARTEFACT_RUNTIME
    available_target = staticmethod(available_target)

    def __init__(
        self,
        model_path: Path,
        config: OnnxRuntimeConfig | None = None,
        input_names: Sequence[str] = ("past",),
        shape_hints: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        config = config or OnnxRuntimeConfig()
        ort = _onnxruntime()
        path = Path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel,
            "ORT_DISABLE_ALL" if config.graph_optimization == "disabled"
            else f"ORT_ENABLE_{config.graph_optimization.upper()}",
        )
        providers = resolve_providers(config, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph exceptions
            raise ModelLoadError(f"{path.name}: ONNX Runtime cannot load this model ({exc}); re-export it") from exc
        model_inputs = self._session.get_inputs()
        not_float = [i.name for i in model_inputs if i.type != "tensor(float)"]
        if not_float:
            raise ModelLoadError(
                f"{path.name}: inputs {not_float} are not float32; gridedge ONNX artefacts keep float "
                "inputs and quantise inside the graph (QDQ)"
            )
        shapes = {i.name: [d if isinstance(d, int) else -1 for d in i.shape] for i in model_inputs}
        self._mapping = match_inputs(shapes, input_names, shape_hints, path.name)
        self._names = tuple(input_names)
        self._output_name = self._session.get_outputs()[0].name
        self._info = RuntimeInfo(
            name="onnxruntime",
            version=str(ort.__version__),
            artefact=path.name,
            input_names=self._names,
            input_shapes={n: tuple(shapes[self._mapping[n]][1:]) for n in input_names},
        )
        self.providers = tuple(self._session.get_providers())

    @property
    def info(self) -> RuntimeInfo:
        return self._info

    def run(self, feeds: Mapping[str, FloatArray]) -> FloatArray:
        """One inference on a batch of windows; float32 in and out, normalised units."""
        arrays = check_feeds(feeds, self._names, self._info.artefact)
        outputs = self._session.run(
            [self._output_name], {self._mapping[n]: arrays[n] for n in self._names}
        )
        return np.asarray(outputs[0], dtype=np.float32)
