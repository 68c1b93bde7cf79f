"""Train tiny versions of every task in both frameworks; check the run folder contract and determinism."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edge_agent.features import FeatureSpec
from edge_agent.solar import sun_down
from gridedge.cli import app
from gridedge.trainer.api import forecast_step_times, load_run, prepare_task
from gridedge.trainer.config import TaskConfig
from gridedge.trainer.metrics import forecast_metrics
from gridedge.trainer.training import Framework, train

pytestmark = pytest.mark.slow
FORECAST_BASELINES = {"persistence", "seasonal_naive_day", "seasonal_naive_week", "lightgbm"}


def _check_forecast_report(report: dict[str, Any], framework: str) -> None:
    assert report["framework"] == framework
    for split in ("val", "test"):
        assert report["metrics"][split]["mae"] > 0
        assert report["metrics"][split]["rmse"] >= report["metrics"][split]["mae"]
    assert set(report["baselines"]) >= FORECAST_BASELINES
    for result in report["baselines"].values():
        assert result["test"]["n_origins"] == report["metrics"]["test"]["n_origins"]
        # Rolling intraday origins: every 6 h, so about four times the day-ahead origins, same windows for all.
        assert result["test_rolling"]["n_origins"] == report["metrics"]["test_rolling"]["n_origins"]
    assert report["metrics"]["test_rolling"]["n_origins"] > 3 * report["metrics"]["test"]["n_origins"]
    assert report["samples"]["test_rolling"] == report["metrics"]["test_rolling"]["n_origins"]
    assert "rolling" in report["protocol"]
    assert len(report["data"]["fingerprint_sha256"]) == 64
    # Tiny configs run 2 epochs with patience 2: training ends by the epoch limit and says so.
    assert report["training_summary"].startswith(f"trained at epoch {report['epochs_run']}/2 (best epoch")
    assert report["n_params"] > 0
    assert "day-ahead" in report["protocol"]


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_tiny_w1_run_folder_contract(framework: Framework, tiny: Callable[..., TaskConfig], tmp_path: Path) -> None:
    report = train(tiny("w1_load"), framework, tmp_path)
    _check_forecast_report(report, framework)
    model_files = {"keras": ["model.keras"], "torch": ["model.pt", "model_config.json"]}[framework]
    for name in [
        "task.yaml",
        "feature_spec.json",
        "output_spec.json",
        "report.json",
        "report.md",
        "forecast_vs_actual.png",
        "error_by_horizon.png",
        *model_files,
    ]:
        assert (tmp_path / name).is_file(), name
    output_spec = json.loads((tmp_path / "output_spec.json").read_text())
    assert output_spec == {
        "kind": "forecast",
        "horizon_steps": 96,
        "target_channels": ["Global_active_power"],
        "target_units": ["kW"],
        "anomaly": None,
        "bounds": [{"min_value": 0.0, "max_value": 12.0, "zero_when_sun_down": False}],
    }
    spec = FeatureSpec.model_validate_json((tmp_path / "feature_spec.json").read_text())
    assert spec.normalisation is not None

    # Reopening the run reproduces the reported test MAE through the public API.
    run = load_run(tmp_path)
    prepared = prepare_task(run.config)
    outputs = run.predict(prepared.test.inputs.as_feeds())
    assert outputs.shape == (len(prepared.test), 96, 1)
    mae = forecast_metrics(prepared.decode(outputs, prepared.test), prepared.test.targets)["mae"]
    assert mae == pytest.approx(report["metrics"]["test"]["mae"], rel=1e-4)


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_tiny_w2_pv_has_clear_sky_baseline(
    framework: Framework, tiny: Callable[..., TaskConfig], tmp_path: Path
) -> None:
    report = train(tiny("w2_pv"), framework, tmp_path, plots=False)
    _check_forecast_report(report, framework)
    assert "clear_sky_persistence" in report["baselines"]
    run = load_run(tmp_path)
    # PV physical limits: the rating (features.past max_value) and zero while the sun is down, applied to
    # what the report scores exactly as the device decodes.
    assert json.loads((tmp_path / "output_spec.json").read_text())["bounds"] == [
        {"min_value": 0.0, "max_value": 3500.0, "zero_when_sun_down": True}
    ]
    prepared = prepare_task(run.config)
    raw = run.pipeline.decode(run.predict(prepared.test.inputs.as_feeds()))
    forecast = prepared.decode(run.predict(prepared.test.inputs.as_feeds()), prepared.test)
    assert forecast.min() >= 0 and forecast.max() <= 3500
    dark = sun_down(forecast_step_times(prepared, prepared.test), 900, 39.742, -105.179)
    assert dark.any() and np.all(forecast[dark] == 0) and np.any(raw[dark] != 0)
    mae = forecast_metrics(forecast, prepared.test.targets)["mae"]
    assert mae == pytest.approx(report["metrics"]["test"]["mae"], rel=1e-4)
    if framework == "keras":
        assert [t.name for t in run.model.inputs] == ["past", "future"]
        assert not any(type(layer).__name__ == "Lambda" for layer in run.model.layers)
    else:
        assert run.model_config is not None
        assert run.model_config["architecture"] == "tcn_forecaster"


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_tiny_w3_anomaly(framework: Framework, tiny: Callable[..., TaskConfig], tmp_path: Path) -> None:
    report = train(tiny("w3_anomaly"), framework, tmp_path)
    test = report["metrics"]["test"]
    for key in ("f1", "precision", "recall"):
        assert 0.0 <= test[key] <= 1.0
    assert set(test["per_series"]) == {"w3_inv7539_outliers", "w3_inv2173_stale"}
    assert set(report["baselines"]) == {"rolling_zscore", "stale_value"}
    output_spec = json.loads((tmp_path / "output_spec.json").read_text())
    assert output_spec["kind"] == "reconstruction"
    assert output_spec["anomaly"]["threshold"] > 0
    assert output_spec["anomaly"]["score_steps"] == 1
    assert output_spec["anomaly"]["stale_run_steps"] == 4
    assert (tmp_path / "anomaly_scores.png").is_file()
    # The shipped detector adds the stale rule to the model: it finds every frozen run the rule finds, and
    # the model alone is reported next to it.
    alone = report["metrics"]["test_model_only"]["per_series"]["w3_inv2173_stale"]
    combined = test["per_series"]["w3_inv2173_stale"]
    rule = report["baselines"]["stale_value"]["test"]["per_series"]["w3_inv2173_stale"]
    assert combined["tp"] >= max(rule["tp"], alone["tp"]) and combined["tp"] > 0
    assert "stale-value rule" in report["protocol"]
    run = load_run(tmp_path)
    past = prepare_task(run.config).val.inputs.past[:3]
    assert run.predict({"past": past}).shape == (3, 16, 1)


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_same_seed_same_metrics(framework: Framework, tiny: Callable[..., TaskConfig], tmp_path: Path) -> None:
    config = tiny("w3_anomaly")
    first = train(config, framework, tmp_path / "a", plots=False)
    second = train(config, framework, tmp_path / "b", plots=False)
    assert [h["val_loss"] for h in first["history"]] == pytest.approx(
        [h["val_loss"] for h in second["history"]], rel=1e-5
    )
    assert first["metrics"]["test"]["f1"] == pytest.approx(second["metrics"]["test"]["f1"], abs=1e-9)
    threshold = json.loads((tmp_path / "a" / "output_spec.json").read_text())["anomaly"]["threshold"]
    again = json.loads((tmp_path / "b" / "output_spec.json").read_text())["anomaly"]["threshold"]
    assert threshold == pytest.approx(again, rel=1e-5)
    if framework == "torch":  # the seed matters (checked once: another Keras run costs more seconds)
        other = train(config.model_copy(update={"seed": config.seed + 1}), framework, tmp_path / "c", plots=False)
        assert other["history"][0]["val_loss"] != pytest.approx(first["history"][0]["val_loss"], rel=1e-6)


def test_cli_trains_and_reports_config_errors(tmp_path: Path, tiny_dict: Callable[..., dict[str, Any]]) -> None:
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_dict("w3_anomaly")))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config_path), "--framework", "torch", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.pt").is_file()
    bad = tiny_dict("w3_anomaly")
    bad["features"]["past"][0]["column"] = "ac_powr"
    config_path.write_text(yaml.safe_dump(bad))
    result = runner.invoke(app, ["train", str(config_path), "--framework", "torch", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2
    assert "features.past[0].column" in result.output
    assert not (tmp_path / "bad" / "model.pt").exists()
    assert np.isfinite(json.loads((tmp_path / "run" / "report.json").read_text())["train_seconds"])
