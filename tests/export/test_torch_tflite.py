"""PyTorch -> TFLite through litert-torch in its own venv: parity, both TFLite targets, agent self-test.

The converter venv (.venvs/litert-torch, ~2 GB) is built by `python -m gridedge.export.compat_envs` in .ci/run;
the fixture builds it when missing, as the old-runtime venvs are.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.bundle import pack_archive, read_bundle, unpack_archive
from edge_agent.keys import load_private_key, load_public_key
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from gridedge.export import compat_envs
from gridedge.export.cli import app
from gridedge.export.errors import ConversionError
from gridedge.export.evaluate import predict_batched
from gridedge.export.pipeline import ExportOptions, ExportResult, export_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("litert", "tflite-runtime-2.14")
W1_CONFIG = REPO_ROOT / "configs" / "w1_load.yaml"


@pytest.fixture(scope="session")
def w1_torch_tflite(tmp_path_factory, signing_keys, w1_torch_source) -> ExportResult:
    compat_envs.ensure_torch_tflite_env()
    options = ExportOptions(name="w1-torch-tflite", targets=TARGETS, latency_runs=50)
    out = tmp_path_factory.mktemp("bundles") / "w1-torch-tflite"
    return export_bundle(w1_torch_source, out, load_private_key(signing_keys[0]), options)


@pytest.mark.slow
def test_fp32_and_int8_keep_parity_with_the_torch_model(w1_torch_tflite, w1_torch_source) -> None:
    artefacts = {a.precision: a for a in w1_torch_tflite.manifest.artefacts}
    assert set(artefacts) == {"fp32", "int8"}
    assert all(a.runtime == "tflite" for a in artefacts.values())
    assert artefacts["fp32"].metrics["max_abs_error"] < 1e-4
    assert artefacts["fp32"].metrics["mae_degradation"] < 1e-4
    assert artefacts["int8"].metrics["mae_degradation"] <= 0.02
    # Full-integer with int8 I/O (this model ends on a quantised Linear): the manifest records the parameters.
    assert set(artefacts["int8"].quantisation) == {"past", "future", "output"}
    assert all(q.scale > 0 for q in artefacts["int8"].quantisation.values())
    # Recomputed here against the torch float model, independently of the pipeline's own numbers.
    float_out = predict_batched(w1_torch_source.predict, w1_torch_source.test.feeds)
    for artefact in artefacts.values():
        path = w1_torch_tflite.bundle_dir / artefact.file
        runtime = LiteRTRuntime(path, LiteRTConfig(), w1_torch_source.input_names, w1_torch_source.input_shapes)
        out = predict_batched(runtime.run, w1_torch_source.test.feeds)
        assert float(np.max(np.abs(out - float_out))) == pytest.approx(artefact.metrics["max_abs_error"], rel=1e-5)


@pytest.mark.slow
def test_both_tflite_targets_ran_the_converted_files(w1_torch_tflite) -> None:
    for artefact in w1_torch_tflite.manifest.artefacts:
        assert set(artefact.compatibility_targets) == set(TARGETS), artefact.file
        assert artefact.min_runtime_versions["tflite-runtime-2.14"] == "2.14.0"
    assert any("litert-torch 0.10.0" in note for note in w1_torch_tflite.target_notes)


@pytest.mark.slow
def test_agent_loads_the_bundle_and_passes_the_self_test(w1_torch_tflite, signing_keys, tmp_path) -> None:
    archive = pack_archive(w1_torch_tflite.bundle_dir, tmp_path / "bundle.tar.gz")
    bundle = read_bundle(unpack_archive(archive, tmp_path / "device"), load_public_key(signing_keys[1]))
    assert bundle.manifest.source_framework == "torch"
    for artefact in bundle.manifest.artefacts:
        loaded, runtime = load_model(bundle, artefact.file, LiteRTConfig())
        assert run_self_test(runtime, bundle.manifest, loaded) <= loaded.self_test_atol


@pytest.fixture(scope="session")
def w1_tcn_run(tmp_path_factory: pytest.TempPathFactory, train_one_epoch) -> Path:
    """The trainer's W1 TCN (residual adds, calendar "future" input), one epoch of PyTorch."""
    return train_one_epoch(W1_CONFIG, "torch", tmp_path_factory.mktemp("runs") / "w1-torch")


@pytest.mark.slow
def test_cli_exports_a_trainer_tcn_run_to_int8_tflite(w1_tcn_run, signing_keys, tmp_path) -> None:
    compat_envs.ensure_torch_tflite_env()
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        app, [str(w1_tcn_run), "--key", str(signing_keys[0]), "--out", str(out), "--target", "litert"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bundle-report.json").read_text())
    assert report["metric"] == "mae"
    bundle = read_bundle(out, load_public_key(signing_keys[1]))
    int8 = next(a for a in bundle.manifest.artefacts if a.precision == "int8")
    fp32 = next(a for a in bundle.manifest.artefacts if a.precision == "fp32")
    # The residual adds are quantised too, so the output is int8 and the file stays small.
    assert set(int8.quantisation) == {"past", "future", "output"}
    assert int8.bytes <= 0.35 * fp32.bytes
    assert int8.metrics["mae_degradation"] <= 0.02
    loaded, runtime = load_model(bundle, None, LiteRTConfig())
    assert loaded.precision == "int8"
    assert run_self_test(runtime, bundle.manifest, loaded) <= loaded.self_test_atol


def test_missing_converter_venv_names_the_build_command(
    w1_torch_source, signing_keys, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(compat_envs.VENVS_ENV_VAR, str(tmp_path / "no-venvs"))
    options = ExportOptions(name="w1", targets=("litert",))
    with pytest.raises(ConversionError, match=r"python -m gridedge\.export\.compat_envs"):
        export_bundle(w1_torch_source, tmp_path / "b", load_private_key(signing_keys[0]), options)
    assert not (tmp_path / "b").exists()


def test_extra_documents_the_converter_venv_requirements() -> None:
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert tuple(extras["torch-tflite"]) == compat_envs.TORCH_TFLITE_REQUIREMENTS
    assert "torch-tflite" not in extras["all"][0]
