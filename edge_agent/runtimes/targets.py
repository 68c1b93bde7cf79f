"""The one table of compatibility targets, and the rule that picks the artefact a device runs.

A compatibility target names a runtime *version* a bundle's artefact was proven on (loaded and run by
export). Export reads this table to know which artefact kind a target needs and which isolated venv proves
it; provision checks a device profile's target against it; the agent ranks a bundle's artefacts with
:func:`choose_artefact`. Names and pins live here only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.errors import BundleError, ConfigError

if TYPE_CHECKING:  # the table itself stays importable by `--help` texts without pydantic or numpy
    from edge_agent.bundle import Artefact, Manifest, Precision

log = logging.getLogger(__name__)

# By default the smallest model that passed export's parity gate is the one to run. A device profile may
# order them otherwise (runtime.prefer_precision) where measurements show int8 is slower, e.g. ORT on x86.
PRECISION_PREFERENCE: tuple[Precision, ...] = ("int8", "dynamic-int8", "fp16", "fp32")


@dataclass(frozen=True)
class CompatibilityTarget:
    """A runtime version artefacts are proven on, and what it takes to install it."""

    name: str
    backend: str
    """Runtime backend key of the agent config (``runtime.type``) that runs it."""
    artefact_runtime: str
    """Kind of artefact it loads: ``tflite`` or ``onnx``."""
    package: str
    version: str
    """pip version constraint of ``package``."""
    numpy: str
    """pip version constraint of numpy it needs, empty when any current numpy works."""
    isolated: bool
    """True when it cannot share gridedge's environment (numpy<2): export proves it in its own venv."""
    notes: str

    @property
    def requirements(self) -> tuple[str, ...]:
        """The pip requirements that install exactly this runtime."""
        runtime = f"{self.package}{self.version}"
        return (runtime, f"numpy{self.numpy}") if self.numpy else (runtime,)


# name, backend, artefact, package, version, numpy, isolated, notes (more in DESIGN.md "Runtimes")
_ROWS = (
    ("litert", "litert", "tflite", "ai-edge-litert", ">=2.0", "", False, "LiteRT; x86_64/aarch64, no armv7"),
    ("tflite-runtime-2.14", "litert", "tflite", "tflite-runtime", "==2.14.0", "<2", True, "Pi images; armv7 too"),
    ("ort", "onnxruntime", "onnx", "onnxruntime", ">=1.17", "", False, "current ONNX Runtime"),
    ("ort-1.16", "onnxruntime", "onnx", "onnxruntime", "==1.16.3", "<2", True, "JetPack 5; IR<=9, opset<=17"),
)
COMPATIBILITY_TARGETS: dict[str, CompatibilityTarget] = {row[0]: CompatibilityTarget(*row) for row in _ROWS}


def compatibility_target(name: str) -> CompatibilityTarget:
    """The table row of target ``name``, or a ConfigError listing the known targets."""
    if name not in COMPATIBILITY_TARGETS:
        raise ConfigError(f"unknown compatibility target {name!r}; choose one of {sorted(COMPATIBILITY_TARGETS)}")
    return COMPATIBILITY_TARGETS[name]


def choose_artefact(
    manifest: Manifest,
    artefact_runtime: str,
    target: str,
    file: str | None = None,
    *,
    proven_only: bool = False,
    prefer_precision: tuple[str, ...] = PRECISION_PREFERENCE,
) -> Artefact:
    """Pick the artefact to run: ``file`` if given, else the best-ranked one proven on ``target``.

    A bundle that marks a served model family (``manifest.serving``, chosen at export on validation skill:
    the network, LightGBM or the blend of both in one ONNX file) is served from that family when the runtime
    has it, else from the family it has (with a warning); a pinned ``file`` overrides the mark.

    Artefacts proven on ``target`` come first; among them the order of ``prefer_precision`` decides
    (by default int8 beats dynamic-int8, fp16 and fp32), precisions it omits come last. With
    ``proven_only`` (provisioning a device folder) an artefact not proven on ``target`` is refused.
    """
    candidates = [a for a in manifest.artefacts if a.runtime == artefact_runtime]
    if file is None and manifest.serving is not None:
        family = manifest.serving.family
        served = [a for a in candidates if a.family == family]
        if served:
            candidates = served
        elif candidates:
            # A device that cannot run the served family (LiteRT has no tree ensembles) keeps deciding with
            # the best model it can run, and says so.
            log.warning(
                "bundle %s %s serves its %s model, which has no %s artefact: running its %s model instead; "
                "install onnxruntime (a LiteRT device then runs the served model on it) or configure that runtime",
                manifest.name, manifest.version, family, artefact_runtime, candidates[0].family,
            )  # fmt: skip
    if file is not None:
        artefact = manifest.artefact(file)
        if artefact.runtime != artefact_runtime:
            raise ConfigError(
                f"artefact {file!r} is a {artefact.runtime} model but the configured runtime runs "
                f"{artefact_runtime} models; pick a matching artefact or runtime"
            )
        candidates = [artefact]
    if proven_only:
        candidates = [a for a in candidates if target in a.compatibility_targets]
    if not candidates:
        have = {a.file: list(a.compatibility_targets) for a in manifest.artefacts}
        proven = f" proven on {target!r}" if proven_only else ""
        raise BundleError(
            f"bundle {manifest.name} {manifest.version} has no {artefact_runtime} artefact{proven} (it has "
            f"{have}); re-export with `gridedge export --target {target}` or configure the other runtime"
        )

    def rank(artefact: Artefact) -> tuple[int, int]:
        unproven = 0 if target in artefact.compatibility_targets else 1
        order = prefer_precision.index(artefact.precision) if artefact.precision in prefer_precision else 99
        return (unproven, order)

    return min(candidates, key=rank)
