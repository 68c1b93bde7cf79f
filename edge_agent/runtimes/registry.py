"""Runtime registry: config key -> "module:Class", importing only the backend a config names."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

from pydantic import Field

from edge_agent.bundle import Artefact, Bundle, Manifest
from edge_agent.errors import ConfigError
from edge_agent.runtimes.base import ModelRuntime
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.runtimes.ort import OnnxRuntimeConfig

RUNTIME_BACKENDS: dict[str, str] = {
    "litert": "edge_agent.runtimes.litert:LiteRTRuntime",
    "onnxruntime": "edge_agent.runtimes.ort:OnnxRuntime",
}
# The config modules hold no runtime import; the runtime library is imported when a model is created.
RuntimeConfig = Annotated[LiteRTConfig | OnnxRuntimeConfig, Field(discriminator="type")]
# On a device the smallest model that passed export's parity gate is the one to run.
PRECISION_PREFERENCE = ("int8", "dynamic-int8", "fp16", "fp32")


def _backend(key: str):  # type: ignore[no-untyped-def]
    if key not in RUNTIME_BACKENDS:
        raise ConfigError(f"unknown runtime {key!r}; choose one of {sorted(RUNTIME_BACKENDS)}")
    module_name, class_name = RUNTIME_BACKENDS[key].split(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, class_name)


def create_runtime(
    model_path: Path,
    config: LiteRTConfig | OnnxRuntimeConfig,
    input_names: Sequence[str] = ("past",),
    shape_hints: Mapping[str, Sequence[int]] | None = None,
) -> ModelRuntime:
    """Load one model file with the backend ``config`` names."""
    _, runtime_class = _backend(config.type)
    runtime: ModelRuntime = runtime_class(model_path, config, input_names, shape_hints)
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


def choose_artefact(manifest: Manifest, artefact_runtime: str, target: str, file: str | None = None) -> Artefact:
    """Pick the artefact to run: ``file`` if given, else the most compact one proven on ``target``.

    Artefacts proven on the installed runtime's compatibility target come first; among them int8
    beats dynamic-int8, fp16 and fp32.
    """
    if file is not None:
        artefact = manifest.artefact(file)
        if artefact.runtime != artefact_runtime:
            raise ConfigError(
                f"artefact {file!r} is a {artefact.runtime} model but the configured runtime runs "
                f"{artefact_runtime} models; pick a matching artefact or runtime"
            )
        return artefact
    candidates = [a for a in manifest.artefacts if a.runtime == artefact_runtime]
    if not candidates:
        raise ConfigError(
            f"bundle {manifest.name} {manifest.version} has no {artefact_runtime} artefact (it has "
            f"{[a.file for a in manifest.artefacts]}); configure the other runtime or re-export with it"
        )

    def rank(artefact: Artefact) -> tuple[int, int]:
        return (0 if target in artefact.compatibility_targets else 1,
                PRECISION_PREFERENCE.index(artefact.precision))

    return min(candidates, key=rank)


def load_model(
    bundle: Bundle, artefact_file: str | None, config: LiteRTConfig | OnnxRuntimeConfig
) -> tuple[Artefact, ModelRuntime]:
    """Load the bundle's artefact that suits the configured runtime; returns it with its entry."""
    module, _ = _backend(config.type)
    artefact = choose_artefact(bundle.manifest, module.ARTEFACT_RUNTIME, module.available_target(), artefact_file)
    runtime = create_runtime(
        bundle.path_of(artefact), config, model_input_names(bundle.manifest), model_shape_hints(bundle.manifest)
    )
    return artefact, runtime
