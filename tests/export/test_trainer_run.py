"""`gridedge export` on a real run folder written by the trainer (W3 config, one epoch, Keras)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.bundle import read_bundle
from edge_agent.keys import load_public_key
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.runtimes.litert import LiteRTConfig
from gridedge.cli import app

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "w3_anomaly.yaml"


@pytest.fixture(scope="session")
def w3_run(tmp_path_factory: pytest.TempPathFactory, train_one_epoch) -> Path:
    return train_one_epoch(CONFIG, "keras", tmp_path_factory.mktemp("runs") / "w3-keras")


def test_cli_exports_a_trainer_run_into_a_verified_bundle(w3_run, signing_keys, tmp_path) -> None:
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        # One epoch, six labelled outliers: F1 moves in ~10 % steps, so the bound here is loose; the
        # gate itself is tested in test_export.py.
        app, ["export", str(w3_run), "--key", str(signing_keys[0]), "--out", str(out), "--target", "litert",
              "--max-degradation", "0.3"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bundle.tar.gz").is_file()
    report = json.loads((tmp_path / "bundle-report.json").read_text())
    assert report["metric"] == "f1"
    bundle = read_bundle(out, load_public_key(signing_keys[1]))
    assert bundle.manifest.task == "anomaly" and bundle.manifest.output.anomaly is not None
    # Named after the task config and framework; the run folder is provenance in the report only.
    assert bundle.manifest.name == "w3-inverter-anomaly-keras"
    markdown = (tmp_path / "bundle-report.md").read_text()
    assert f"Trained in: run folder {w3_run.resolve()}." in markdown
    assert report["source"] == f"run folder {w3_run.resolve()}"
    artefact, runtime = load_model(bundle, None, LiteRTConfig())
    assert artefact.precision == "int8"
    run_self_test(runtime, bundle.manifest, artefact)


def test_model_config_mismatch_is_named(w3_run, signing_keys, tmp_path) -> None:
    edited = shutil.copytree(w3_run, tmp_path / "edited")
    spec = json.loads((edited / "feature_spec.json").read_text())
    spec["input_steps"] = spec["input_steps"] * 2
    (edited / "feature_spec.json").write_text(json.dumps(spec))
    arguments = ["export", str(edited), "--key", str(signing_keys[0]), "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2
    assert "feature_spec.json differs" in result.output


def test_export_report_gives_the_skill_of_each_artefact_next_to_lightgbm(
    signing_keys, tmp_path, small_shipped_config
) -> None:
    """A small W2 PV run: the export scores artefacts within the PV bounds, as the trainer scored the float
    model and the baselines, and reports every skill on the same test windows."""
    from edge_agent.keys import load_private_key
    from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig
    from gridedge.export.evaluate import predict_batched
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.report import write_report
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.api import train

    config = small_shipped_config("w2_pv.yaml", "2013-05-01", "2013-07-10", epochs=2, trees=20)
    trained = train(config, "torch", tmp_path / "run", plots=False)
    options = ExportOptions(name="w2-skill", targets=("ort",), max_degradation=1.0, latency_runs=10)
    source = load_source(tmp_path / "run")
    result = export_bundle(source, tmp_path / "bundle", load_private_key(signing_keys[0]), options)
    assert result.float_metrics["mae"] == pytest.approx(trained["metrics"]["test"]["mae"], rel=1e-4)
    paths = write_report(result, tmp_path / "bundle-report")
    skill = json.loads(paths["json"].read_text())["skill"]
    naive = min(trained["baselines"][m]["test"]["mae"] for m in ("seasonal_naive_day", "seasonal_naive_week"))
    assert skill["best_seasonal_naive_mae"] == pytest.approx(naive)
    assert skill["lightgbm"] == pytest.approx(1 - trained["baselines"]["lightgbm"]["test"]["mae"] / naive)
    assert skill["float"] == pytest.approx(1 - trained["metrics"]["test"]["mae"] / naive, rel=1e-4)
    for artefact in result.manifest.artefacts:
        assert skill["artefacts"][artefact.file] == pytest.approx(1 - artefact.metrics["mae"] / naive)
    assert "LightGBM" in paths["md"].read_text() and "w2-skill.int8.onnx" in paths["md"].read_text()
    # The LightGBM family on PV inputs (known-future clear-sky, its value a day back, the seasonal inputs), all
    # computed inside the ONNX graph: ORT reproduces the booster to float32 rounding.
    gbm = result.manifest.artefact("w2-skill.lightgbm.onnx")
    assert gbm.metrics["max_abs_error"] <= 1e-5
    runtime = OnnxRuntime(result.bundle_dir / gbm.file, OnnxRuntimeConfig(), ("past", "future"))
    served = predict_batched(runtime.run, source.test.feeds)
    assert float(np.max(np.abs(served - result.gbm.predict(source.test.feeds)))) <= 1e-5
