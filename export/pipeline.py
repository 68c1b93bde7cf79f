"""The export pipeline: convert, evaluate against the float model, prove compatibility targets, sign.

``export_bundle`` takes an :class:`ExportSource` (a float model plus the data it is judged on) so the
same path serves a trainer run folder (see :mod:`export.run_loader`) and the models tests build.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.arrays import FloatArray
from edge_agent.bundle import (
    BLEND_FORMAT_VERSION,
    FAMILY_FORMAT_VERSION,
    Artefact,
    Family,
    Latency,
    Manifest,
    OutputSpec,
    Precision,
    Provenance,
    Runtime,
    Serving,
    Task,
    TensorQuantisation,
    TestVector,
    describe_file,
    write_bundle,
)
from edge_agent.features import FeatureSpec
from edge_agent.runtimes.base import ModelRuntime
from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig
from edge_agent.runtimes.targets import COMPATIBILITY_TARGETS
from gridedge.export import compat_envs, converters
from gridedge.export.blend_choice import block_index, choose_share
from gridedge.export.blend_onnx import blend_onnx
from gridedge.export.errors import CompatibilityError, ExportError, ParityError
from gridedge.export.evaluate import (
    TestSplit,
    degradation,
    forecast_window_errors,
    measure_latency,
    predict_batched,
    primary_metric,
    quantile_parity,
    task_metrics,
)
from gridedge.export.gbm_onnx import gbm_to_onnx
from gridedge.trainer.backends import Framework, FrameworkBackend, backend
from gridedge.trainer.config import LightGBMConfig
from gridedge.trainer.gbm import FAMILY as GBM_FAMILY
from gridedge.trainer.gbm import GbmModel, train_gbm

DEFAULT_TARGETS: dict[Framework, tuple[str, ...]] = {"keras": ("litert", "ort"), "torch": ("ort",)}
TEST_VECTOR_COUNT = 3
LATENCY_RUNS = 300
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
BLEND_FAMILY: Family = "blend"


@dataclass
class GbmCandidate:
    """What export needs to train the LightGBM candidate: the network's training windows, its targets
    (normalised) and the validation windows the served family is chosen on."""

    train_feeds: dict[str, FloatArray]
    train_targets: FloatArray
    validation: TestSplit
    config: LightGBMConfig
    seed: int
    threads: int


@dataclass
class ExportSource:
    """A trained float model and the data export needs: calibration windows and the labelled test split."""

    framework: Framework
    model: Any
    task: Task
    spec: FeatureSpec
    output: OutputSpec
    calibration: dict[str, FloatArray]
    test: TestSplit
    provenance: Provenance
    reference_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    origin: str = ""  # where the model came from (its run folder), recorded in the export report
    gbm: GbmCandidate | None = None  # train a LightGBM candidate beside the network (point forecasts, ONNX)

    @property
    def backend(self) -> FrameworkBackend:
        return backend(self.framework)

    def predict(self, feeds: Mapping[str, FloatArray]) -> FloatArray:
        """The float model's output on ``feeds`` (normalised units)."""
        return self.backend.predict(self.model, {n: np.asarray(feeds[n]) for n in self.input_names})

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("past", "future") if self.spec.future_feature_names else ("past",)

    @property
    def input_shapes(self) -> dict[str, tuple[int, int]]:
        shapes = {"past": (self.spec.input_steps, len(self.spec.past_feature_names))}
        if self.spec.future_feature_names:
            shapes["future"] = (self.spec.horizon_steps, len(self.spec.future_feature_names))
        return shapes


class ExportOptions(BaseModel):
    """What to export and how strictly to judge it."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """Bundle name, e.g. w1-load-keras."""
    version: str = Field(default="0.1.0")
    """Semantic version of this bundle."""
    targets: tuple[str, ...] | None = Field(default=None)
    """Compatibility targets; default litert+ort (Keras) or ort (PyTorch)."""
    max_degradation: float = Field(default=0.02, ge=0)
    """Largest relative loss of the task metric an artefact may show; one over it is left out of the bundle (see
    ``require_all_artefacts``)."""
    onnx_dynamic_int8: bool = Field(default=False)
    """Also write a dynamic-int8 ONNX artefact."""
    fault_margin_std: float = Field(default=4.0, gt=0)
    """Anomaly models: int8 ranges cover spikes this many standard deviations past the training range (normalised
    units), so the quantised detector does not clip the faults it looks for."""
    level_margin_std: float = Field(default=0.0, ge=0)
    """Forecasters: int8 ranges also cover the targets shifted in level this many standard deviations past the
    training range (normalised units, within the channel's physical range), for a model that will serve data which
    moved. Off by default: on in-distribution data the wider ranges cost resolution (shipped W1, Keras, ORT int8:
    +0.8 % MAE at 0, +5.9 % at 2, over the 2 % gate). `fleet retrain` uses 2, its default drift threshold."""
    latency_runs: int = Field(default=LATENCY_RUNS, ge=10)
    require_all_artefacts: bool = Field(default=False)
    """Refuse the export when any artefact fails the parity gate; by default a failing artefact is left out (the
    report says why) as long as every target and the served family keep one that passed."""
    blend_weights: tuple[Annotated[float, Field(ge=0, le=1)], ...] = Field(default=BLEND_WEIGHTS, min_length=1)
    """Network shares w the device may serve as w·network + (1−w)·LightGBM when a LightGBM candidate exists: the
    share nearest ½, unless another beats it on the validation windows by more than two standard errors
    (:mod:`gridedge.export.blend_choice`). 1 serves the network, 0 LightGBM, a share between them the blend of the
    network's int8 and LightGBM as one ONNX file. Leave 0 and 1 out to always serve a blend."""


@dataclass
class ArtefactResult:
    """One artefact through the pipeline: its file, runtime, measurements and proven targets."""

    file: str
    path: Path
    runtime: Runtime
    precision: Precision
    quantisation: dict[str, TensorQuantisation] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    latency: Latency | None = None
    targets: list[str] = field(default_factory=list)
    runtime_versions: dict[str, str] = field(default_factory=dict)
    test_outputs: list[FloatArray] = field(default_factory=list)
    cross_runtime_error: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    family: Family = "network"


@dataclass
class ExportResult:
    manifest: Manifest
    bundle_dir: Path
    artefacts: list[ArtefactResult]
    float_metrics: dict[str, float]
    target_notes: list[str]
    origin: str = ""  # the run folder (or other source) the model came from
    gbm: GbmModel | None = None  # the LightGBM candidate's booster(s), when one was trained


def _check_targets(source: ExportSource, targets: Sequence[str]) -> list[str]:
    unknown = [t for t in targets if t not in COMPATIBILITY_TARGETS]
    if unknown:
        raise ExportError(f"unknown compatibility target(s) {unknown}; choose from {sorted(COMPATIBILITY_TARGETS)}")
    return list(dict.fromkeys(targets))


def _convert(
    source: ExportSource, targets: Sequence[str], workdir: Path, options: ExportOptions, notes: list[str]
) -> list[ArtefactResult]:
    calibration = converters.calibration_batches(source.calibration)
    if source.output.anomaly is not None:
        columns = [source.spec.past_feature_names.index(t) for t in source.spec.target_channels]
        faults = converters.fault_windows(source.calibration, columns, options.fault_margin_std)
        calibration += faults
        notes.append(
            f"int8 calibration: {len(calibration)} windows, of which {len(faults)} training windows carry one spike "
            f"{options.fault_margin_std:g} std past the training range, so int8 ranges cover the faults to detect"
        )
    elif options.level_margin_std > 0:
        shifted = converters.shifted_windows(source.calibration, level_channels(source.spec), options.level_margin_std)
        calibration += shifted
        notes.append(
            f"int8 calibration: {len(calibration)} windows, of which {len(shifted)} training windows have their "
            f"targets shifted in level {options.level_margin_std:g} std past the training range (within the physical "
            "range), so int8 ranges do not clip a site whose level moved"
        )
    stem = options.name
    results: list[ArtefactResult] = []
    if any(COMPATIBILITY_TARGETS[t].artefact_runtime == "tflite" for t in targets):
        converted = source.backend.to_tflite(source.model, calibration, workdir, stem, notes)
        results += [ArtefactResult(p.name, p, "tflite", precision) for precision, p in converted.items()]
    if any(COMPATIBILITY_TARGETS[t].artefact_runtime == "onnx" for t in targets):
        fp32 = workdir / f"{stem}.fp32.onnx"
        source.backend.to_onnx(source.model, fp32, {n: source.test.feeds[n][:1] for n in source.input_names})
        results.append(ArtefactResult(fp32.name, fp32, "onnx", "fp32"))
        int8 = converters.quantise_onnx(fp32, workdir / f"{stem}.int8.onnx", "static", calibration, notes)
        results.append(ArtefactResult(int8.name, int8, "onnx", "int8"))
        if options.onnx_dynamic_int8:
            dyn = converters.quantise_onnx(fp32, workdir / f"{stem}.dynamic-int8.onnx", "dynamic")
            results.append(ArtefactResult(dyn.name, dyn, "onnx", "dynamic-int8"))
    for result in results:
        if result.runtime == "onnx":
            result.details.update(converters.onnx_description(result.path))
    return results


def level_channels(spec: FeatureSpec) -> list[converters.LevelChannel]:
    """The targets (whose level a new load or array moves), with their seasonal-naive forecasts and physical
    range in normalised units; calendar, known-future and other observed inputs keep their training range."""
    future = spec.future_feature_names
    seasonal = list(zip(spec.seasonal_feature_names, spec.seasonal_feature_targets, strict=True))
    stats = spec.normalisation

    def normalised(value: float | None, target: str, unbounded: float) -> float:
        if value is None:
            return unbounded
        return value if stats is None else float(stats.transform(np.array([[value]]), [target])[0, 0])

    channels = []
    for target in spec.target_channels:
        info = next(c for c in spec.past_channels if c.name == target)
        channels.append(
            converters.LevelChannel(
                column=spec.past_feature_names.index(target),
                future_columns=tuple(future.index(name) for name, of in seasonal if of == target),
                low=normalised(info.min_value, target, -np.inf),
                high=normalised(info.max_value, target, np.inf),
            )
        )
    return channels


def _gbm_candidate(
    source: ExportSource, targets: Sequence[str], workdir: Path, stem: str, notes: list[str],
    progress: Callable[[str], None],
) -> tuple[ArtefactResult, GbmModel] | None:
    """Train the LightGBM candidate on the network's training windows and write it as ONNX, when it applies."""
    if source.gbm is None:
        return None
    if source.output.kind != "forecast" or source.output.quantiles:
        notes.append("LightGBM candidate: only for point forecasts (this output has quantiles or no horizon)")
        return None
    if not any(COMPATIBILITY_TARGETS[t].artefact_runtime == "onnx" for t in targets):
        notes.append("LightGBM candidate: not written, no ONNX compatibility target was asked for")
        return None
    candidate = source.gbm
    progress(f"training the LightGBM candidate on {len(candidate.train_targets)} windows")
    model = train_gbm(
        source.spec, candidate.train_feeds, candidate.train_targets, candidate.config, candidate.seed, candidate.threads
    )
    path = gbm_to_onnx(model, source.spec, workdir / f"{stem}.{GBM_FAMILY}.onnx")
    result = ArtefactResult(path.name, path, "onnx", "fp32", family=GBM_FAMILY)
    result.details.update(converters.onnx_description(path))
    return result, model


def _blend_key(weight: float) -> str:
    """Name of network share ``weight`` in ``Serving.scores``: a family alone, or ``blend:<w>``."""
    return "network" if weight == 1 else GBM_FAMILY if weight == 0 else f"{BLEND_FAMILY}:{weight:g}"


def _choose_serving(
    source: ExportSource, gbm: GbmModel | None, metric: str, weights: Sequence[float], notes: list[str]
) -> Serving | None:
    """What the device serves: w·network + (1−w)·LightGBM (floats), w chosen on the VALIDATION windows by
    :func:`~gridedge.export.blend_choice.choose_share` (equal shares unless another share is clearly better).

    w = 1 is the network, w = 0 LightGBM.
    """
    if gbm is None or source.gbm is None:
        return None
    validation = source.gbm.validation
    network = predict_batched(source.predict, validation.feeds)
    booster = predict_batched(gbm.predict, validation.feeds)
    # Each family alone is scored too, for the record, even when the grid leaves it out.
    errors = {
        w: forecast_window_errors(w * network + (1 - w) * booster, validation, source.spec, source.output)
        for w in sorted({1.0, 0.0, *weights}, reverse=True)
    }
    scores = {_blend_key(w): float(np.mean(e)) for w, e in errors.items()}
    steps = validation.step_times
    blocks = np.zeros(len(validation), dtype=np.int64) if steps is None else block_index(steps)
    choice = choose_share(errors, blocks, weights)
    weight = choice.weight
    family: Family = "network" if weight == 1 else GBM_FAMILY if weight == 0 else BLEND_FAMILY
    listed = ", ".join(f"{key} {value:.4g}" for key, value in scores.items())
    chosen = f"blend w={weight:g} (w·network + (1−w)·{GBM_FAMILY})" if family == BLEND_FAMILY else family
    notes.append(
        f"served model: {chosen}, chosen on {len(validation)} validation windows ({metric} {listed}) by the rule "
        f"{choice.describe()}; the test split only reports"
    )
    return Serving(
        family=family, metric=metric, scores=scores, network_weight=weight if family == BLEND_FAMILY else None
    )


def _blend_candidate(
    results: Sequence[ArtefactResult], gbm: ArtefactResult, weight: float, workdir: Path, stem: str
) -> ArtefactResult:
    """The served blend as one ONNX file: the network's static-int8 ONNX artefact and the LightGBM graph."""
    network = next(r for r in results if r.runtime == "onnx" and r.precision == "int8" and r.family == "network")
    path = blend_onnx(network.path, gbm.path, weight, workdir / f"{stem}.{BLEND_FAMILY}.int8.onnx")
    result = ArtefactResult(path.name, path, "onnx", "int8", family=BLEND_FAMILY)
    result.details.update(converters.onnx_description(path))
    return result


def _open(result: ArtefactResult, source: ExportSource) -> ModelRuntime:
    if result.runtime == "tflite":
        runtime = LiteRTRuntime(result.path, LiteRTConfig(), source.input_names, source.input_shapes)
        result.quantisation = {
            name: TensorQuantisation(dtype="int8", scale=scale, zero_point=zero)
            for name, (scale, zero) in runtime.input_quantisation.items()
        }
        if runtime.output_quantisation is not None:
            scale, zero = runtime.output_quantisation
            result.quantisation["output"] = TensorQuantisation(dtype="int8", scale=scale, zero_point=zero)
        return runtime
    return OnnxRuntime(result.path, OnnxRuntimeConfig(providers=("CPUExecutionProvider",)), source.input_names)


def _output_step(result: ArtefactResult) -> float:
    """The quantisation step of the artefact's output (normalised units); 0 for a float output."""
    if "output" in result.quantisation:
        return result.quantisation["output"].scale
    if result.runtime == "onnx" and result.precision == "int8":
        return converters.onnx_output_scale(result.path) or 0.0
    return 0.0


def _self_test_atol(result: ArtefactResult, outputs: Sequence[FloatArray]) -> float:
    """Tolerance a device gets on the test vectors: float rounding, int8 steps, measured runtime spread."""
    magnitude = 1.0 + max(float(np.max(np.abs(o))) for o in outputs)
    base = {"fp32": 1e-4, "fp16": 1e-3, "dynamic-int8": 2e-2, "int8": 2e-2}[result.precision] * magnitude
    if "output" in result.quantisation:
        base = max(base, 3 * result.quantisation["output"].scale)
    return float(max(base, 3 * result.cross_runtime_error))


def _prove_targets(
    result: ArtefactResult,
    targets: Sequence[str],
    vectors: list[dict[str, FloatArray]],
    here: tuple[str, str],
    notes: list[str],
) -> list[str]:
    """Run the artefact in every requested target of its kind; returns the failures."""
    problems: list[str] = []
    for target in targets:
        if COMPATIBILITY_TARGETS[target].artefact_runtime != result.runtime:
            continue
        if target == "ort-1.16" and result.precision == "dynamic-int8":
            notes.append(f"{result.file}: not offered for ort-1.16, which gets static QDQ int8 only")
            continue
        if target == here[0]:
            # Evaluated in-process with the very runtime the device uses for this target.
            result.runtime_versions[target] = here[1]
            result.targets.append(target)
            continue
        try:
            version, outputs = compat_envs.run_in_env(target, result.path, vectors)
        except CompatibilityError as exc:
            problems.append(str(exc))
            continue
        spread = max(
            float(np.max(np.abs(o - e))) for o, e in zip(outputs, result.test_outputs, strict=True)
        )
        result.cross_runtime_error = max(result.cross_runtime_error, spread)
        result.runtime_versions[target] = version
        result.targets.append(target)
    return problems


def _library_versions() -> dict[str, str]:
    versions = {}
    for dist in (
        "ai-edge-litert", "onnxruntime", "tensorflow", "keras", "torch", "onnx", "tf2onnx", "lightgbm", "onnxmltools",
        "numpy",
    ):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def export_bundle(
    source: ExportSource,
    out_dir: Path,
    private_key: Ed25519PrivateKey,
    options: ExportOptions,
    progress: Callable[[str], None] = lambda _message: None,
) -> ExportResult:
    """Convert, evaluate, gate, prove and sign; raises ParityError (after writing nothing) when the gate leaves
    the bundle nothing to run."""
    targets = _check_targets(source, options.targets or DEFAULT_TARGETS[source.framework])
    if not targets:
        raise ExportError("no compatibility target given; pass at least one --target")
    metric, higher_is_better = primary_metric(source.output)
    float_outputs = predict_batched(source.predict, source.test.feeds)
    float_metrics = task_metrics(float_outputs, source.test, source.spec, source.output)
    valid_rows = np.linspace(0, len(source.test) - 1, num=min(TEST_VECTOR_COUNT, len(source.test))).astype(int)
    vectors = [{n: source.test.feeds[n][i : i + 1] for n in source.input_names} for i in valid_rows]

    workdir = Path(tempfile.mkdtemp(prefix="gridedge-export-"))
    try:
        progress(f"converting for targets {targets}")
        notes: list[str] = []
        results = _convert(source, targets, workdir, options, notes)
        gbm = _gbm_candidate(source, targets, workdir, options.name, notes, progress)
        references = {"network": (float_outputs, float_metrics)}
        serving = _choose_serving(source, gbm[1] if gbm else None, metric, options.blend_weights, notes)
        if gbm is not None:
            results.append(gbm[0])
            gbm_outputs = predict_batched(gbm[1].predict, source.test.feeds)
            references[GBM_FAMILY] = (gbm_outputs, task_metrics(gbm_outputs, source.test, source.spec, source.output))
        if gbm is not None and serving is not None and serving.network_weight is not None:
            w = serving.network_weight
            progress(f"composing the served blend, network share {w:g}")
            results.append(_blend_candidate(results, gbm[0], w, workdir, options.name))
            blend_outputs = w * float_outputs + (1 - w) * gbm_outputs
            references[BLEND_FAMILY] = (
                blend_outputs, task_metrics(blend_outputs, source.test, source.spec, source.output)
            )
        refused: dict[str, list[str]] = {}
        problems: list[str] = []
        for result in results:
            progress(f"evaluating {result.file}")
            runtime = _open(result, source)
            outputs = predict_batched(runtime.run, source.test.feeds)
            # Each artefact is gated against the float model of its own family (the network, the booster, or the
            # float blend of the two with the served weight).
            reference_outputs, reference_metrics = references[result.family]
            result.metrics = task_metrics(outputs, source.test, source.spec, source.output)
            result.metrics["max_abs_error"] = float(np.max(np.abs(outputs - reference_outputs)))
            result.metrics[f"{metric}_degradation"] = degradation(
                result.metrics[metric], reference_metrics[metric], higher_is_better
            )
            if result.metrics[f"{metric}_degradation"] > options.max_degradation:
                refused.setdefault(result.file, []).append(
                    f"test {metric} {result.metrics[metric]:.4g} vs its float model "
                    f"{reference_metrics[metric]:.4g} ({100 * result.metrics[f'{metric}_degradation']:.2f} % worse, "
                    f"bound {100 * options.max_degradation:.2f} %)"
                )
            if source.output.quantiles:
                levels_refused = quantile_parity(
                    result.metrics,
                    float_metrics,
                    source.spec,
                    source.output,
                    options.max_degradation,
                    _output_step(result),
                )
                if levels_refused:
                    refused.setdefault(result.file, []).extend(levels_refused)
            result.latency = measure_latency(runtime, source.test.feeds, options.latency_runs)
            result.test_outputs = [runtime.run(v) for v in vectors]
            progress(f"proving {result.file} on its targets")
            here = (_in_process_target(result.runtime), runtime.info.version)
            problems += _prove_targets(result, targets, vectors, here, notes)
        missing = [t for t in targets if not any(t in r.targets for r in results)]
        if problems or missing:
            raise CompatibilityError(
                f"compatibility targets not proven (no bundle written){f'; none runs {missing}' if missing else ''}: "
                + "; ".join(problems or ["nothing converted"])
            )
        results = _leave_out_refused(results, refused, targets, serving, options.require_all_artefacts, notes)
        if gbm is not None:
            notes.append(
                f"{gbm[0].file}: LightGBM on the bundle's own inputs, features computed in the graph; max abs "
                f"difference from the booster on the test windows {gbm[0].metrics['max_abs_error']:.3g} "
                "(normalised units)"
            )
        manifest = _manifest(source, options, results, float_metrics, vectors, serving)
        progress("signing and writing the bundle")
        bundle_dir = write_bundle(out_dir, manifest, {r.file: r.path for r in results}, private_key)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for result in results:
        result.path = bundle_dir / result.file
    return ExportResult(manifest, bundle_dir, results, float_metrics, notes, source.origin, gbm[1] if gbm else None)


def _leave_out_refused(
    results: list[ArtefactResult],
    refused: Mapping[str, list[str]],
    targets: Sequence[str],
    serving: Serving | None,
    require_all: bool,
    notes: list[str],
) -> list[ArtefactResult]:
    """The artefacts that passed the parity gate; refuses the export when one failed and ``require_all`` is set,
    or when what passed leaves a target, or the served family, without an artefact.

    One variant over the bound (say the Keras model's static-int8 ONNX on data whose ranges int8 resolves badly)
    need not cost the device every other variant that passed: it is left out and the report says why.
    """
    if not refused:
        return results
    kept = [r for r in results if r.file not in refused]
    bare = [t for t in targets if not any(t in r.targets for r in kept)]
    served_missing = serving is not None and not any(r.family == serving.family for r in kept)
    reasons = "; ".join(f"{file}: {reason}" for file, failed in refused.items() for reason in failed)
    why = ""
    if require_all:
        why = "every artefact must pass (--require-all-artefacts)"
    elif bare:
        why = f"nothing that passed runs on {bare}"
    elif served_missing and serving is not None:
        why = f"nothing that passed is of the served family {serving.family}"
    if why:
        raise ParityError(
            f"parity gate refused the export (no bundle written; {why}): {reasons}. Retrain, use more calibration "
            "data, or raise --max-degradation knowingly"
        )
    for file, failed in refused.items():
        notes.append(f"{file}: left out of the bundle by the parity gate: {'; '.join(failed)}")
    return kept


def _in_process_target(runtime: Runtime) -> str:
    from edge_agent.runtimes import litert, ort

    return litert.available_target() if runtime == "tflite" else ort.available_target()


def _manifest(
    source: ExportSource,
    options: ExportOptions,
    results: Sequence[ArtefactResult],
    float_metrics: dict[str, float],
    vectors: Sequence[dict[str, FloatArray]],
    serving: Serving | None = None,
) -> Manifest:
    float_vector_outputs = [source.predict(v) for v in vectors]
    artefacts = []
    for result in results:
        digest, size = describe_file(result.path)
        artefacts.append(
            Artefact(
                file=result.file,
                runtime=result.runtime,
                precision=result.precision,
                sha256=digest,
                bytes=size,
                quantisation=result.quantisation,
                compatibility_targets=tuple(result.targets),
                min_runtime_versions=result.runtime_versions,
                metrics=result.metrics,
                latency=result.latency,
                self_test_atol=_self_test_atol(result, result.test_outputs),
                family=result.family,
            )
        )
    test_vectors = tuple(
        TestVector(
            inputs={n: v[n].tolist() for n in v},
            float_output=float_vector_outputs[i].tolist(),
            artefact_outputs={r.file: r.test_outputs[i].tolist() for r in results},
        )
        for i, v in enumerate(vectors)
    )
    provenance = source.provenance.model_copy(
        update={"library_versions": {**source.provenance.library_versions, **_library_versions()}}
    )
    families = {r.family for r in results}
    family_version = FAMILY_FORMAT_VERSION if serving or families != {"network"} else 0
    return Manifest(
        format_version=max(
            source.output.format_version, BLEND_FORMAT_VERSION if BLEND_FAMILY in families else family_version
        ),
        name=options.name,
        version=options.version,
        task=source.task,
        source_framework=source.framework,
        input=source.spec,
        output=source.output,
        artefacts=tuple(artefacts),
        metrics={**source.reference_metrics, "float": float_metrics},
        provenance=provenance,
        test_vectors=test_vectors,
        serving=serving,
    )
