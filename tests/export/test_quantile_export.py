"""A quantile forecaster (the trainer's TCN with a P10/P50/P90 head, tiny) through export in both
frameworks: every level gated and recorded, int8 levels still ordered, the bundle self-tests on the device."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle import QUANTILE_FORMAT_VERSION, OutputSpec, read_bundle
from edge_agent.features import FeaturePipeline
from edge_agent.keys import load_private_key, load_public_key
from edge_agent.quantiles import decode_forecast, split_levels
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig
from gridedge.export.converters import onnx_output_scale
from gridedge.export.evaluate import predict_batched, quantile_parity
from gridedge.export.pipeline import ExportOptions, ExportResult, ExportSource, export_bundle
from gridedge.trainer import quantiles
from gridedge.trainer.backends import backend

from .conftest import Prepared, make_source

LEVELS = (0.1, 0.5, 0.9)
EPOCHS = 3


def _hp(prepared: Prepared) -> dict[str, Any]:
    spec = prepared.spec
    return {
        "architecture": "tcn_forecaster",
        "input_steps": spec.input_steps,
        "horizon_steps": spec.horizon_steps,
        "past_features": len(spec.past_feature_names),
        "future_features": len(spec.future_feature_names),
        "n_targets": 1,
        "filters": 8,
        "kernel_size": 5,
        "hidden": 16,
        "decoder_channels": 2,
        "latent_channels": 2,
        "dropout": 0.0,
        "quantiles": list(LEVELS),
    }


def _train(prepared: Prepared, framework: str) -> Any:
    """The trainer's own model and pinball loss, a few epochs on the W1 windows of the export fixtures."""
    stats = prepared.spec.normalisation
    assert stats is not None
    valid = prepared.train.valid
    feeds = {k: v[valid] for k, v in prepared.train.as_feeds().items()}
    targets = stats.transform(prepared.train_targets, prepared.spec.target_channels)[valid]
    model = backend(framework).build(_hp(prepared))
    if framework == "keras":
        import keras

        from gridedge.trainer.models_keras import pinball_loss

        keras.utils.set_random_seed(0)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=pinball_loss(LEVELS))
        model.fit(feeds, targets, epochs=EPOCHS, batch_size=64, verbose=0)
        return model
    import torch

    from gridedge.trainer.models_torch import pinball_loss

    torch.manual_seed(0)
    loss_fn = pinball_loss(LEVELS)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    target = torch.from_numpy(targets)
    for _ in range(EPOCHS):
        for start in range(0, len(target), 64):
            optimiser.zero_grad()
            out = model(*[tensors[n][start : start + 64] for n in ("past", "future") if n in tensors])
            loss_fn(out, target[start : start + 64]).backward()
            optimiser.step()
    return model.eval()


def _source(prepared: Prepared, framework: str) -> ExportSource:
    source = make_source(prepared, framework, _train(prepared, framework))
    output = OutputSpec.model_validate({**prepared.output.model_dump(), "quantiles": LEVELS})
    raw = source.predict(source.calibration)
    stats = prepared.spec.normalisation
    assert stats is not None
    targets = stats.transform(prepared.train_targets, prepared.spec.target_channels)[prepared.train.valid]
    scales = quantiles.spread_scales(split_levels(raw, output), targets, LEVELS)
    source.output = OutputSpec.model_validate({**output.model_dump(), "quantile_scales": scales})
    return source


@pytest.fixture(scope="module")
def quantile_exports(tmp_path_factory, signing_keys, w1_prepared) -> dict[str, tuple[ExportSource, ExportResult]]:
    root = tmp_path_factory.mktemp("quantile-bundles")
    key = load_private_key(signing_keys[0])
    exports = {}
    for framework, targets in (("keras", ("litert", "ort")), ("torch", ("ort",))):
        source = _source(w1_prepared, framework)
        options = ExportOptions(name=f"w1q-{framework}", targets=targets, latency_runs=20)
        exports[framework] = (source, export_bundle(source, root / framework, key, options))
    return exports


def _runtime(path: Path, source: ExportSource) -> Any:
    if path.suffix == ".tflite":
        return LiteRTRuntime(path, LiteRTConfig(), source.input_names, source.input_shapes)
    return OnnxRuntime(path, OnnxRuntimeConfig(providers=("CPUExecutionProvider",)), source.input_names)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_every_quantile_output_is_gated_and_stays_ordered_in_int8(quantile_exports, framework) -> None:
    source, result = quantile_exports[framework]
    manifest = result.manifest
    assert manifest.format_version == QUANTILE_FORMAT_VERSION
    assert manifest.output.quantiles == LEVELS and manifest.output.quantile_scales == source.output.quantile_scales
    float_out = predict_batched(source.predict, source.test.feeds)
    assert float_out.shape[1:] == (96, 3)
    runtimes = {"keras": {"tflite", "onnx"}, "torch": {"onnx"}}[framework]
    int8 = [a for a in manifest.artefacts if a.precision == "int8"]
    assert {a.runtime for a in int8} == runtimes
    for artefact in manifest.artefacts:
        for level in ("p10", "p50", "p90"):
            # Recorded by the gate, which judged every level of this artefact (the export was not refused).
            assert f"pinball_{level}_degradation" in artefact.metrics, artefact.file
            assert 0 <= artefact.metrics[f"coverage_{level}"] <= 1
        assert artefact.metrics["mae_degradation"] <= 0.02, artefact.file
        if artefact.precision == "int8":
            # The gate's allowance for rounding comes from this step, read from the artefact itself.
            path = result.bundle_dir / artefact.file
            step = artefact.quantisation["output"].scale if artefact.runtime == "tflite" else onnx_output_scale(path)
            assert step is not None and 0 < step < 0.1, artefact.file
        assert 0 < artefact.metrics["interval_coverage"] <= 1 and artefact.metrics["interval_width"] > 0
        out = predict_batched(_runtime(result.bundle_dir / artefact.file, source).run, source.test.feeds)
        # The recorded parity error covers all three levels of every step.
        assert float(np.max(np.abs(out - float_out))) == pytest.approx(artefact.metrics["max_abs_error"], rel=1e-5)
        # The fixed 0/±1 mixing weights are exact in int8: the artefact's levels do not cross either.
        assert (np.diff(split_levels(out, manifest.output), axis=-1) >= 0).all(), artefact.file
        decoded = decode_forecast(out, manifest.output, FeaturePipeline(source.spec))
        assert decoded.quantiles is not None
        assert float(np.mean(np.abs(decoded.point - source.test.targets))) == pytest.approx(
            artefact.metrics["mae"], rel=1e-5
        )


@pytest.mark.slow
@pytest.mark.parametrize(("framework", "config"), [("keras", LiteRTConfig()), ("keras", OnnxRuntimeConfig()),
                                                   ("torch", OnnxRuntimeConfig())])  # fmt: skip
def test_quantile_bundle_self_tests_on_the_device(quantile_exports, signing_keys, framework, config) -> None:
    _, result = quantile_exports[framework]
    bundle = read_bundle(result.bundle_dir, load_public_key(signing_keys[1]))
    artefact, runtime = load_model(bundle, None, config)
    assert artefact.precision == "int8"
    assert run_self_test(runtime, bundle.manifest, artefact) <= artefact.self_test_atol


def _metrics(p10: float) -> dict[str, float]:
    return {"pinball_p10": p10, "pinball_p50": 0.5, "pinball_p90": 0.2}


def test_quantile_gate_refuses_a_level_worse_than_its_rounding_explains(w1_prepared) -> None:
    output = OutputSpec.model_validate({**w1_prepared.output.model_dump(), "quantiles": LEVELS})
    reference = _metrics(0.1)
    stats = w1_prepared.spec.normalisation
    assert stats is not None
    std = stats.std[0]
    # P10 5 % worse: refused for a float output and for a step too fine to explain it ...
    worse = _metrics(0.105)
    assert quantile_parity(dict(worse), reference, w1_prepared.spec, output, 0.02, 0.0)[0].startswith("pinball_p10")
    fine_step = 0.001 / std
    assert len(quantile_parity(dict(worse), reference, w1_prepared.spec, output, 0.02, fine_step)) == 1
    # ... accepted when half an output step, at the level's slope 0.9, moves the loss that much.
    coarse_step = 2 * 0.006 / (0.9 * std)
    recorded = dict(worse)
    assert quantile_parity(recorded, reference, w1_prepared.spec, output, 0.02, coarse_step) == []
    assert recorded["pinball_p10_degradation"] == pytest.approx(0.05)
    # Within the relative bound: accepted whatever the step.
    assert quantile_parity(_metrics(0.1015), reference, w1_prepared.spec, output, 0.02, 0.0) == []


@pytest.mark.slow
def test_export_report_lists_every_level_of_every_artefact(quantile_exports, tmp_path) -> None:
    from gridedge.export.report import write_report

    _, result = quantile_exports["keras"]
    markdown = write_report(result, tmp_path / "report")["md"].read_text()
    assert "| artefact | P10 pinball (change) | P10 coverage | P50 pinball" in markdown
    for artefact in result.manifest.artefacts:
        # The artefact's last row is in the quantile table: a pinball change for each of the three levels.
        row = [line for line in markdown.splitlines() if line.startswith(f"| {artefact.file} |")][-1]
        assert len(re.findall(r"\(([+-]\d+\.\d\d % \((better|worse|same)\))\)", row)) == 3, row
    assert "| float model |" in markdown
