"""Quantile forecasts in the trainer: pinball loss and non-crossing in both frameworks, calibration metrics,
recalibration on validation, the config fields, and a tiny quantile training run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle import OutputSpec
from edge_agent.errors import ConfigError, FeatureError
from edge_agent.features import ChannelSpec, FeaturePipeline, FeatureSpec, NormalisationStats
from edge_agent.quantiles import decode_forecast, split_levels
from gridedge.trainer import quantiles
from gridedge.trainer.config import TaskConfig, parse_config
from gridedge.trainer.training import Framework, train

LEVELS = [0.1, 0.5, 0.9]
TINY_HP: dict[str, Any] = {
    "architecture": "tcn_forecaster",
    "input_steps": 32,
    "horizon_steps": 8,
    "past_features": 3,
    "future_features": 2,
    "n_targets": 2,
    "filters": 4,
    "kernel_size": 3,
    "hidden": 8,
    "decoder_channels": 2,
    "latent_channels": 2,
    "dropout": 0.0,
    "quantiles": LEVELS,
}


def _feeds(seed: int = 0, count: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "past": rng.normal(size=(count, 32, 3)).astype(np.float32),
        "future": rng.normal(size=(count, 8, 2)).astype(np.float32),
    }


def _raw_and_targets(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(5, 8, 2 * 3)).astype(np.float32), rng.normal(size=(5, 8, 2)).astype(np.float32)


def test_numpy_pinball_matches_the_definition() -> None:
    # Actual 1 against levels 0.1/0.5/0.9 forecast at 0: under-forecast costs level * 1.
    forecast = np.zeros((1, 3, 1, 1))
    assert quantiles.pinball_by_level(forecast, np.ones((1, 1, 1)), LEVELS) == pytest.approx([0.1, 0.5, 0.9])
    # Over-forecast by 2 costs (1 - level) * 2.
    assert quantiles.pinball_by_level(forecast + 2, np.zeros((1, 1, 1)), LEVELS) == pytest.approx([1.8, 1.0, 0.2])


def test_keras_pinball_loss_matches_numpy() -> None:
    from gridedge.trainer.models_keras import pinball_loss

    raw, targets = _raw_and_targets()
    per_window = np.asarray(pinball_loss(LEVELS)(targets, raw))
    assert per_window.shape == (5,)
    assert float(per_window.mean()) == pytest.approx(quantiles.pinball_raw(raw, targets, LEVELS), rel=1e-5)


def test_torch_pinball_loss_matches_numpy() -> None:
    import torch

    from gridedge.trainer.models_torch import pinball_loss

    raw, targets = _raw_and_targets()
    loss = pinball_loss(LEVELS)(torch.from_numpy(raw), torch.from_numpy(targets))
    assert float(loss) == pytest.approx(quantiles.pinball_raw(raw, targets, LEVELS), rel=1e-5)


def test_mixing_matrix_adds_gaps_outwards_from_the_median() -> None:
    matrix = quantiles.mixing_matrix([0.05, 0.25, 0.5, 0.75, 0.95], n_targets=1)
    median, gaps = 10.0, np.array([1.0, 2.0, 3.0, 4.0])
    assert np.concatenate([[median], gaps]) @ matrix == pytest.approx([7.0, 8.0, 10.0, 13.0, 17.0])


def _assert_non_crossing(raw: np.ndarray) -> None:
    levels = raw.reshape(*raw.shape[:-1], TINY_HP["n_targets"], len(LEVELS))
    assert raw.shape == (16, 8, 6)
    assert (np.diff(levels, axis=-1) >= 0).all()
    assert (np.diff(levels, axis=-1) > 0).any()


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_quantile_head_cannot_cross_for_any_weights(framework: Framework) -> None:
    from gridedge.trainer.backends import backend

    chosen = backend(framework)
    for seed in (0, 1):
        model = chosen.build(TINY_HP | {"kernel_size": 3 + 2 * seed})
        _assert_non_crossing(chosen.predict(model, _feeds(seed)))


def test_point_model_output_is_unchanged_without_quantiles() -> None:
    from gridedge.trainer.backends import backend

    model = backend("torch").build(TINY_HP | {"quantiles": []})
    assert backend("torch").predict(model, _feeds()).shape == (16, 8, 2)


def test_coverage_interval_and_width_are_counted_per_level() -> None:
    actual = np.arange(10, dtype=np.float64).reshape(10, 1, 1)  # 0..9
    bands = np.broadcast_to(np.array([1.5, 4.5, 7.5]).reshape(1, 3, 1, 1), (10, 3, 1, 1))
    metrics = quantiles.quantile_metrics(bands, actual, (0.1, 0.5, 0.9))
    assert metrics["coverage"] == pytest.approx([0.2, 0.5, 0.8])  # values <= 1.5, 4.5, 7.5
    assert metrics["interval"]["coverage"] == pytest.approx(0.6)  # 2..7 inside [1.5, 7.5]
    assert metrics["interval"]["mean_width"] == pytest.approx(6.0)
    assert metrics["interval"]["nominal"] == pytest.approx(0.8)
    assert metrics["pinball_mean"] == pytest.approx(float(np.mean(metrics["pinball"])))
    flat = quantiles.flat_quantile_metrics(metrics)
    assert flat["coverage_p10"] == pytest.approx(0.2) and flat["interval_width"] == pytest.approx(6.0)


def test_recalibration_scales_a_too_narrow_spread_to_nominal_coverage() -> None:
    rng = np.random.default_rng(3)
    n, h = 400, 24
    actual = rng.normal(size=(n, h, 1))
    # The model's P10/P90 sit at half the true distance from the median: it is overconfident.
    z = 1.2816
    raw = np.stack([np.full((n, h), -z / 2), np.zeros((n, h)), np.full((n, h), z / 2)], axis=-1)[:, :, np.newaxis]
    scales = quantiles.spread_scales(raw, actual, (0.1, 0.5, 0.9))
    assert scales[0][1] == 1.0
    assert scales[0][0] == pytest.approx(2.0, rel=0.06) and scales[0][2] == pytest.approx(2.0, rel=0.06)
    test = rng.normal(size=(n, h, 1))
    calibrated = raw * np.asarray(scales[0])
    coverage = np.mean(test[..., 0][..., np.newaxis] <= calibrated[:, :, 0, :], axis=(0, 1))
    assert coverage[0] == pytest.approx(0.1, abs=0.02) and coverage[2] == pytest.approx(0.9, abs=0.02)


def test_decode_scales_sorts_and_lets_the_baseline_through() -> None:
    spec = FeatureSpec(
        sample_period_s=900,
        input_steps=4,
        horizon_steps=2,
        past_channels=(ChannelSpec(name="p", unit="kW"),),
        target_channels=("p",),
        normalisation=NormalisationStats(channels=("p",), mean=(1.0,), std=(2.0,)),
    )
    output = OutputSpec(
        kind="forecast", horizon_steps=2, target_channels=("p",), target_units=("kW",),
        quantiles=(0.1, 0.5, 0.9), quantile_scales=((2.0, 1.0, 0.5),),
    )  # fmt: skip
    pipeline = FeaturePipeline(spec)
    # Step 0 well ordered; step 1 crossed (P10 above the median, as a rounded artefact might give).
    raw = np.array([[[-1.0, 0.0, 1.0], [0.5, 0.0, 1.0]]], dtype=np.float32)
    decoded = decode_forecast(raw, output, pipeline)
    assert decoded.quantiles is not None and decoded.quantiles.shape == (1, 3, 2, 1)
    # Step 0: -1 scaled by 2 -> -2 -> 1 + 2 * -2 = -3; median 1; 1 * 0.5 -> 0.5 -> 2.
    assert decoded.quantiles[0, :, 0, 0] == pytest.approx([-3.0, 1.0, 2.0])
    assert (np.diff(decoded.quantiles, axis=1) >= 0).all()
    assert decoded.point[0, :, 0] == pytest.approx(decoded.quantiles[0, 1, :, 0])
    baseline = decode_forecast(np.zeros((1, 2, 1), np.float32), output, pipeline)
    assert baseline.quantiles is None and baseline.point[0, :, 0] == pytest.approx([1.0, 1.0])
    with pytest.raises(FeatureError, match="2 channels; the bundle's output spec needs 3"):
        split_levels(np.zeros((1, 2, 2)), output)


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([0.1, 0.9], "must include 0.5"),
        ([0.5, 0.1, 0.9], "strictly increasing"),
        ([0.0, 0.5], "strictly between 0 and 1"),
    ],
)
def test_bad_quantile_levels_are_refused_naming_the_field(
    tiny_dict: Callable[..., dict[str, Any]], levels: list[float], message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"model\.quantiles.*{message}"):
        parse_config(tiny_dict("w1_load", model={"quantiles": levels}))


def test_anomaly_task_refuses_quantiles(tiny_dict: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match=r"model\.quantiles are for forecasts"):
        parse_config(tiny_dict("w3_anomaly", model={"quantiles": LEVELS}))


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_tiny_quantile_run_reports_calibration_and_ships_the_levels(
    framework: Framework, tiny: Callable[..., TaskConfig], tmp_path: Path
) -> None:
    config = tiny("w1_load", model={"quantiles": LEVELS}, baselines={"lightgbm": {"enabled": False}})
    report = train(config, framework, tmp_path)
    test = report["metrics"]["test"]["quantiles"]
    assert test["levels"] == LEVELS and len(test["coverage"]) == 3
    assert test["interval"]["lower"] == 0.1 and test["interval"]["upper"] == 0.9
    assert test["recalibrated"] is False and test["other"]["recalibrated"] is True
    assert len(test["interval"]["coverage_by_step"]) == 96
    for name in ("quantile_fan.png", "quantile_coverage.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "Quantile calibration on the test split" in (tmp_path / "report.md").read_text()
    output = OutputSpec.model_validate_json((tmp_path / "output_spec.json").read_text())
    assert output.quantiles == tuple(LEVELS) and output.quantile_scales == ()

    from gridedge.trainer.api import load_run, prepare_task

    run = load_run(tmp_path)
    prepared = prepare_task(run.config)
    raw = run.predict(prepared.test.inputs.as_feeds())
    assert raw.shape == (len(prepared.test), 96, 3)
    assert (np.diff(raw, axis=-1) >= 0).all()
    decoded = decode_forecast(raw, output, run.pipeline)
    assert float(np.mean(np.abs(decoded.point - prepared.test.targets))) == pytest.approx(
        report["metrics"]["test"]["mae"], rel=1e-4
    )
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]["test"]["quantiles"] == test
