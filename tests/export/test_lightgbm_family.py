"""LightGBM as a second model family: exported to ONNX on the bundle's own inputs, served when validation says so.

A short run of the shipped W1 config (a few months of data, a tiny network, one epoch, 40 trees) exported for
``ort`` and ``ort-1.16``: the bundle carries the network's artefacts and ``<name>.lightgbm.onnx``, marks the
family the device serves (chosen on the validation windows), and the agent's own runtime loads and runs it.
The same run exported again with blend weights strictly between 0 and 1 serves the blend of both families,
``<name>.blend.int8.onnx``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edge_agent.bundle import (
    BLEND_FORMAT_VERSION,
    FAMILY_FORMAT_VERSION,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Serving,
    read_bundle,
)
from edge_agent.errors import BundleError, BundleFormatError, IntegrityError
from edge_agent.keys import load_private_key, load_public_key
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.runtimes.ort import OnnxRuntimeConfig
from edge_agent.runtimes.targets import choose_artefact
from gridedge.export.blend_choice import block_index, choose_share
from gridedge.export.evaluate import forecast_window_errors, predict_batched, task_metrics

pytestmark = pytest.mark.slow
# Float32 features and leaf sums against LightGBM's doubles: the thresholds themselves decide identically
# (written as the largest float32 not above LightGBM's threshold), so only summation rounding remains.
PARITY_ATOL = 1e-5
ORT = OnnxRuntimeConfig(providers=("CPUExecutionProvider",))


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Path, Path], small_shipped_config: Any
) -> dict[str, Any]:
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.report import write_report
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.api import train

    config = small_shipped_config("w1_load.yaml", "2007-01-01", "2007-04-30", epochs=1, trees=40)
    root = tmp_path_factory.mktemp("w1-gbm")
    train(config, "torch", root / "run", plots=False)
    source = load_source(root / "run")
    # One epoch on a tiny network: the int8 gate is exercised elsewhere (test_export.py); here it must not refuse.
    options = ExportOptions(name="w1-gbm", targets=("ort", "ort-1.16"), max_degradation=1.0, latency_runs=10)
    result = export_bundle(source, root / "bundle", load_private_key(signing_keys[0]), options)
    report = json.loads(write_report(result, root / "bundle-report")["json"].read_text())
    return {"source": source, "result": result, "report": report, "root": root}


@pytest.fixture(scope="module")
def blended(exported: dict[str, Any], signing_keys: tuple[Path, Path]) -> dict[str, Any]:
    """The same trained run exported with only blend weights to choose from, so the blend is what is served."""
    from gridedge.export.pipeline import ExportOptions, export_bundle

    options = ExportOptions(
        name="w1-blend", targets=("ort", "ort-1.16"), max_degradation=1.0, latency_runs=10,
        blend_weights=BLEND_GRID,
    )  # fmt: skip
    result = export_bundle(exported["source"], exported["root"] / "blend", load_private_key(signing_keys[0]), options)
    return {"source": exported["source"], "result": result}


BLEND_GRID = (0.25, 0.5, 0.75)


def _gbm_file(exported: dict[str, Any]) -> str:
    return next(a.file for a in exported["result"].manifest.artefacts if a.family == "lightgbm")


def _validation_grid(source: Any, booster: Any, weights: tuple[float, ...]) -> tuple[dict[float, float], float]:
    """Validation MAE of w·network + (1−w)·LightGBM per w, and the w the share rule picks from ``weights``."""
    validation = source.gbm.validation
    network = predict_batched(source.predict, validation.feeds)
    trees = predict_batched(booster.predict, validation.feeds)
    errors = {
        w: forecast_window_errors(w * network + (1 - w) * trees, validation, source.spec, source.output)
        for w in (0.0, 1.0, *weights)
    }
    maes = {w: float(np.mean(e)) for w, e in errors.items()}
    blend = task_metrics(0.5 * network + 0.5 * trees, validation, source.spec, source.output)["mae"]
    assert maes[0.5] == pytest.approx(blend, rel=1e-5)  # window errors average to the MAE the report gives
    return maes, choose_share(errors, block_index(validation.step_times), weights).weight


def test_bundle_carries_a_lightgbm_onnx_proven_on_both_ort_targets(exported, signing_keys) -> None:
    bundle = read_bundle(exported["result"].bundle_dir, load_public_key(signing_keys[1]))
    manifest = bundle.manifest
    assert manifest.format_version == FAMILY_FORMAT_VERSION
    entry = manifest.artefact(_gbm_file(exported))
    assert (entry.runtime, entry.precision, entry.file) == ("onnx", "fp32", "w1-gbm.lightgbm.onnx")
    assert set(entry.compatibility_targets) == {"ort", "ort-1.16"}
    assert entry.min_runtime_versions["ort-1.16"] == "1.16.3"
    model = onnx.load(str(bundle.path_of(entry)))
    opsets = {o.domain: o.version for o in model.opset_import}
    assert model.ir_version <= 9 and opsets[""] <= 17 and opsets["ai.onnx.ml"] <= 3
    # The graph takes the bundle's own inputs and gives the network's output shape.
    spec = manifest.input
    shapes = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes == {
        "past": ["batch", spec.input_steps, len(spec.past_feature_names)],
        "future": ["batch", spec.horizon_steps, len(spec.future_feature_names)],
    }


def test_agent_runtime_reproduces_the_booster(exported, signing_keys) -> None:
    """Train/serve parity: ONNX on the agent's ORT runtime vs the booster's own predict on the same windows."""
    bundle = read_bundle(exported["result"].bundle_dir, load_public_key(signing_keys[1]))
    artefact, runtime = load_model(bundle, _gbm_file(exported), ORT)
    run_self_test(runtime, bundle.manifest, artefact)
    feeds = exported["source"].test.feeds
    served = predict_batched(runtime.run, feeds)
    expected = exported["result"].gbm.predict(feeds)
    assert served.shape == (len(feeds["past"]), bundle.manifest.output.horizon_steps, 1)
    difference = float(np.max(np.abs(served - expected)))
    assert difference <= PARITY_ATOL, difference
    assert artefact.metrics["max_abs_error"] == pytest.approx(difference, abs=1e-7)


def test_served_family_is_chosen_on_validation_and_loaded_by_the_agent(exported, signing_keys) -> None:
    source, result = exported["source"], exported["result"]
    serving = result.manifest.serving
    assert serving is not None and serving.split == "val" and serving.metric == "mae"
    maes, weight = _validation_grid(source, result.gbm, (0.0, 0.25, 0.5, 0.75, 1.0))
    scores = {"network": maes[1.0], "lightgbm": maes[0.0], **{f"blend:{w:g}": maes[w] for w in (0.25, 0.5, 0.75)}}
    assert serving.scores == pytest.approx(scores)
    assert serving.family == {1.0: "network", 0.0: "lightgbm"}.get(weight, "blend")
    assert serving.network_weight == (weight if serving.family == "blend" else None)
    bundle = read_bundle(result.bundle_dir, load_public_key(signing_keys[1]))
    artefact, _runtime = load_model(bundle, None, ORT)
    assert artefact.family == serving.family
    skill = exported["report"]["skill"]
    assert skill["served"]["onnx"]["file"] == artefact.file
    assert skill["serving"]["family"] == serving.family
    # Either family can be the one served: a device picks within the marked family whichever wins.
    for family in ("network", "lightgbm"):
        marked = bundle.manifest.model_copy(update={"serving": Serving(family=family, metric="mae", scores=scores)})
        assert choose_artefact(marked, "onnx", "ort").family == family


def test_a_tflite_device_runs_the_network_when_lightgbm_is_served(exported, caplog) -> None:
    manifest = exported["result"].manifest
    # The network's artefacts as a LiteRT device would see them (only their runtime matters to the choice).
    network = [a.model_copy(update={"runtime": "tflite"}) for a in manifest.artefacts if a.family == "network"]
    marked = manifest.model_copy(
        update={"serving": Serving(family="lightgbm", metric="mae", scores={}), "artefacts": network}
    )
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtimes.targets"):
        chosen = choose_artefact(marked, "tflite", "litert")
    assert chosen.family == "network"
    assert "serves its lightgbm model, which has no tflite artefact: running its network model" in caplog.text


def _resign(bundle_dir: Path, raw: dict[str, Any], private_key: Path) -> None:
    payload = (json.dumps(raw, sort_keys=True, indent=1) + "\n").encode()
    (bundle_dir / MANIFEST_NAME).write_bytes(payload)
    (bundle_dir / SIGNATURE_NAME).write_bytes(load_private_key(private_key).sign(payload))


def test_bundle_whose_served_artefact_is_missing_is_refused(exported, signing_keys, tmp_path) -> None:
    bundle_dir = shutil.copytree(exported["result"].bundle_dir, tmp_path / "bundle")
    gbm = _gbm_file(exported)
    (bundle_dir / gbm).unlink()
    with pytest.raises(IntegrityError, match=re.escape(f"file '{gbm}' listed in the manifest is missing")):
        read_bundle(bundle_dir, load_public_key(signing_keys[1]))
    # A manifest that marks the LightGBM model but no longer lists it is refused before anything runs.
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    raw["serving"] = {"family": "lightgbm", "metric": "mae", "scores": {}}
    raw["artefacts"] = [a for a in raw["artefacts"] if a["file"] != gbm]
    _resign(bundle_dir, raw, signing_keys[0])
    with pytest.raises(BundleFormatError, match=r"serving\.family is 'lightgbm' but the bundle lists no lightgbm"):
        read_bundle(bundle_dir, load_public_key(signing_keys[1]))


def _blend_file(result: Any) -> str:
    return next(a.file for a in result.manifest.artefacts if a.family == "blend")


def test_blend_weight_is_the_one_the_share_rule_picks_on_validation(blended, signing_keys) -> None:
    source, result = blended["source"], blended["result"]
    maes, weight = _validation_grid(source, result.gbm, BLEND_GRID)
    serving = result.manifest.serving
    assert serving is not None and serving.family == "blend"
    assert serving.network_weight == weight
    assert serving.scores[f"blend:{weight:g}"] == pytest.approx(maes[weight])
    bundle = read_bundle(result.bundle_dir, load_public_key(signing_keys[1]))
    assert bundle.manifest.format_version == BLEND_FORMAT_VERSION
    assert bundle.manifest.serving == serving
    entry = bundle.manifest.artefact(_blend_file(result))
    assert (entry.file, entry.runtime, entry.precision) == ("w1-blend.blend.int8.onnx", "onnx", "int8")
    # The blend's own parity gate: against the float blend of the network and the booster on the test windows.
    feeds = source.test.feeds
    network, trees = predict_batched(source.predict, feeds), predict_batched(result.gbm.predict, feeds)
    float_blend = weight * network + (1 - weight) * trees
    float_mae = task_metrics(float_blend, source.test, source.spec, source.output)["mae"]
    assert entry.metrics["mae_degradation"] == pytest.approx((entry.metrics["mae"] - float_mae) / float_mae, abs=1e-6)


def test_agent_serves_the_blend_and_it_weighs_the_two_artefacts(blended, signing_keys, caplog) -> None:
    result = blended["result"]
    bundle = read_bundle(result.bundle_dir, load_public_key(signing_keys[1]))
    manifest = bundle.manifest
    weight = manifest.serving.network_weight
    artefact, runtime = load_model(bundle, None, ORT)
    assert artefact.file == _blend_file(result)
    run_self_test(runtime, manifest, artefact)
    network_file = next(a.file for a in manifest.artefacts if a.family == "network" and a.precision == "int8")
    _, network = load_model(bundle, network_file, ORT)
    _, trees = load_model(bundle, _gbm_file(blended), ORT)
    feeds = blended["source"].test.feeds
    served = predict_batched(runtime.run, feeds)
    parts = weight * predict_batched(network.run, feeds) + (1 - weight) * predict_batched(trees.run, feeds)
    assert served.shape == parts.shape
    np.testing.assert_allclose(served, parts, rtol=1e-6, atol=1e-6 * (1 + float(np.max(np.abs(parts)))))
    # Proven on JetPack 5's runtime too, and within what it reads.
    assert set(artefact.compatibility_targets) == {"ort", "ort-1.16"}
    assert artefact.min_runtime_versions["ort-1.16"] == "1.16.3"
    model = onnx.load(str(bundle.path_of(artefact)))
    opsets = {o.domain: o.version for o in model.opset_import}
    assert model.ir_version <= 9 and opsets[""] <= 17
    # A LiteRT device cannot run it: it runs the network, and says so.
    network_only = [a.model_copy(update={"runtime": "tflite"}) for a in manifest.artefacts if a.family == "network"]
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtimes.targets"):
        chosen = choose_artefact(manifest.model_copy(update={"artefacts": network_only}), "tflite", "litert")
    assert chosen.family == "network"
    assert "serves its blend model, which has no tflite artefact: running its network model" in caplog.text


def test_a_litert_device_runs_the_served_blend_on_onnxruntime(blended, signing_keys, caplog) -> None:
    """A Pi (LiteRT configured, onnxruntime installed beside it) runs the blend the bundle serves, not the network."""
    bundle = read_bundle(blended["result"].bundle_dir, load_public_key(signing_keys[1]))
    with caplog.at_level(logging.INFO, logger="edge_agent.runtimes.registry"):
        artefact, runtime = load_model(bundle, None, LiteRTConfig(num_threads=2))
    assert artefact.file == _blend_file(blended["result"])
    assert runtime.info.name == "onnxruntime"
    assert "serves its blend model, which LiteRT cannot run: running it on onnxruntime (installed)" in caplog.text
    run_self_test(runtime, bundle.manifest, artefact)
    # Told not to hand over, the device runs what LiteRT can: this PyTorch bundle has no LiteRT artefact at all.
    with pytest.raises(BundleError, match="has no tflite artefact"):
        load_model(bundle, None, LiteRTConfig(served_on_onnxruntime=False))


def test_provisioning_a_pi_for_a_served_blend_checks_it_on_the_profiles_onnxruntime(
    blended, signing_keys, tmp_path
) -> None:
    from gridedge.provision import provision
    from gridedge.sites import EXAMPLE_SITE, site_file

    config, artefact = provision(
        "raspberry-pi-4", site_file(EXAMPLE_SITE), blended["result"].bundle_dir, signing_keys[1], tmp_path / "pi4"
    )
    assert config.runtime.type == "litert"
    assert artefact == _blend_file(blended["result"])
    notes = (tmp_path / "pi4" / "INSTALL.md").read_text()
    assert f"artefact `{artefact}`\nproven on `ort`." in notes
