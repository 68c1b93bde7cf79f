"""Runtime registry (one :class:`~edge_agent.plugins.BackendRegistry`): config key -> runtime class.

The runtime modules import their library (ai-edge-litert, onnxruntime) only when a model is created.
"""

from __future__ import annotations

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


def load_model(
    bundle: Bundle, artefact_file: str | None, config: LiteRTConfig | OnnxRuntimeConfig
) -> tuple[Artefact, ModelRuntime]:
    """Load the bundle's artefact that suits the configured runtime; returns it with its entry."""
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
