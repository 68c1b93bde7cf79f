"""Runtime registry (one :class:`~edge_agent.plugins.BackendRegistry`): config key -> runtime class.

The runtime modules import their library (ai-edge-litert, onnxruntime) only when a model is created.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from edge_agent.bundle import Artefact, Bundle, Manifest
from edge_agent.plugins import BackendRegistry
from edge_agent.runtimes.base import ModelRuntime
from edge_agent.runtimes.litert import RUNTIME_KEY as LITERT_KEY
from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from edge_agent.runtimes.ort import RUNTIME_KEY as ORT_KEY
from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig
from edge_agent.runtimes.targets import choose_artefact

log = logging.getLogger(__name__)

RUNTIMES: BackendRegistry[type[Any]] = BackendRegistry("runtime", {LITERT_KEY: LiteRTRuntime, ORT_KEY: OnnxRuntime})
RuntimeConfig = Annotated[LiteRTConfig | OnnxRuntimeConfig, Field(discriminator="type")]


def create_runtime(
    model_path: Path,
    config: LiteRTConfig | OnnxRuntimeConfig,
    input_names: Sequence[str] = ("past",),
    shape_hints: Mapping[str, Sequence[int]] | None = None,
) -> ModelRuntime:
    """Load one model file with the backend ``config`` names."""
    runtime: ModelRuntime = RUNTIMES.get(config.type)(model_path, config, input_names, shape_hints)
    return runtime


def model_input_names(manifest: Manifest) -> tuple[str, ...]:
    """The contract's input names for this manifest: "past", plus "future" when it has future features."""
    return ("past", "future") if manifest.input.future_feature_names else ("past",)


def model_shape_hints(manifest: Manifest) -> dict[str, tuple[int, int]]:
    """Expected per-sample input shapes, used when a converter renamed the inputs."""
    spec = manifest.input
    hints = {"past": (spec.input_steps, len(spec.past_feature_names))}
    if spec.future_feature_names:
        hints["future"] = (spec.horizon_steps, len(spec.future_feature_names))
    return hints


def served_model_needs_onnxruntime(
    manifest: Manifest, artefact_file: str | None, config: LiteRTConfig | OnnxRuntimeConfig
) -> bool:
    """True when a LiteRT device that may hand over (``served_on_onnxruntime``), with no artefact pinned, is given
    a bundle whose served model only ONNX Runtime runs (LightGBM, or the blend of the network and LightGBM)."""
    if not isinstance(config, LiteRTConfig) or not config.served_on_onnxruntime:
        return False
    if artefact_file is not None or manifest.serving is None:
        return False
    kinds = {a.runtime for a in manifest.artefacts if a.family == manifest.serving.family}
    return kinds == {OnnxRuntime.ARTEFACT_RUNTIME}


def onnxruntime_for(config: LiteRTConfig) -> OnnxRuntimeConfig:
    """The ONNX Runtime settings a LiteRT device runs a served ONNX model with: its threads and precisions."""
    return OnnxRuntimeConfig(intra_op_threads=config.num_threads, prefer_precision=config.prefer_precision)


def load_model(
    bundle: Bundle, artefact_file: str | None, config: LiteRTConfig | OnnxRuntimeConfig
) -> tuple[Artefact, ModelRuntime]:
    """Load the bundle's artefact that suits the configured runtime; returns it with its entry.

    A LiteRT device runs a served model that only ONNX Runtime runs on onnxruntime when it is installed (see
    :func:`served_model_needs_onnxruntime`); without it, the network on LiteRT, with a warning.
    """
    manifest = bundle.manifest
    if (
        isinstance(config, LiteRTConfig)
        and served_model_needs_onnxruntime(manifest, artefact_file, config)
        and importlib.util.find_spec("onnxruntime") is not None
    ):
        log.info(
            "bundle %s %s serves its %s model, which LiteRT cannot run: running it on onnxruntime (installed)",
            manifest.name, manifest.version, manifest.serving.family if manifest.serving else "",
        )  # fmt: skip
        config = onnxruntime_for(config)
    backend = RUNTIMES.get(config.type)
    artefact = choose_artefact(
        bundle.manifest,
        backend.ARTEFACT_RUNTIME,
        backend.available_target(),
        artefact_file,
        prefer_precision=config.prefer_precision,
    )
    runtime = create_runtime(
        bundle.path_of(artefact), config, model_input_names(bundle.manifest), model_shape_hints(bundle.manifest)
    )
    return artefact, runtime
