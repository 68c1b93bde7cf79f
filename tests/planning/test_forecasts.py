"""The planner's forecasts: the on-device seasonal baseline with its residual spread, and bundle forecasts."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from edge_agent.messages import Forecast as ForecastMessage
from edge_agent.planning.forecasts import ForecastUnavailableError, baseline_forecast, from_message

STEP = 900
DAY = 96
T0 = 1_210_032_000  # a UTC midnight


def history(days: int, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    profile = 1.0 + np.sin(np.arange(DAY) / DAY * 2 * np.pi)
    values = np.tile(profile, days) + rng.normal(0.0, noise, days * DAY)
    return values, T0 + STEP * np.arange(days * DAY, dtype=np.int64)


def test_baseline_repeats_yesterday_and_spreads_by_its_own_errors() -> None:
    values, starts = history(4, noise=0.2)
    targets = starts[-1] + STEP * np.arange(1, 33)
    forecast = baseline_forecast(values, starts, STEP, targets, (0.1, 0.9))
    assert forecast.p50 == pytest.approx(np.maximum(values[-DAY:][:32], 0.0))
    assert (forecast.quantiles[0.9] >= forecast.p50).all() and (forecast.quantiles[0.1] <= forecast.p50).all()
    width = float(np.mean(forecast.quantiles[0.9] - forecast.quantiles[0.1]))
    # Day-to-day errors of N(0, 0.2) noise have sd 0.28: P10..P90 spans about 2.56 sd.
    assert 0.4 < width < 1.1


def test_targets_after_a_gap_take_the_same_time_of_day() -> None:
    values, starts = history(2)
    targets = starts[-1] + STEP * (1 + 10 + np.arange(4))  # ten periods were never measured
    forecast = baseline_forecast(values, starts, STEP, targets, ())
    assert forecast.p50 == pytest.approx(values[10:14])


def test_too_little_history_is_no_forecast() -> None:
    values, starts = history(1)
    with pytest.raises(ForecastUnavailableError, match="95 of the 96"):
        baseline_forecast(values[1:], starts[1:], STEP, starts[-1:] + STEP, ())
    values[-30:] = np.nan
    with pytest.raises(ForecastUnavailableError, match="only 66 of the last 96"):
        baseline_forecast(values, starts, STEP, starts[-1:] + STEP, ())


def message(unit: str, values: list[float], quantiles: dict[float, list[float]] | None = None) -> ForecastMessage:
    return ForecastMessage.model_validate(
        {
            "target": "load",
            "unit": unit,
            "origin": datetime.fromtimestamp(T0, UTC),
            "step_s": STEP,
            "values": values,
            "quantiles": [{"level": q, "values": v} for q, v in (quantiles or {}).items()] or None,
        }
    )


def test_bundle_forecast_in_watts_completed_by_the_baseline() -> None:
    values, starts = history(3, noise=0.1)
    plan = T0 + STEP * np.arange(8, dtype=np.int64)
    baseline = baseline_forecast(values, starts - 3 * DAY * STEP, STEP, plan, (0.1, 0.9))
    bundle = message("W", [500.0] * 4, {0.9: [900.0] * 4})
    merged = from_message(bundle, plan, baseline)
    assert merged.p50[:4] == pytest.approx(np.full(4, 0.5))
    assert merged.p50[4:] == pytest.approx(baseline.p50[4:])
    assert merged.quantiles[0.9][:4] == pytest.approx(np.full(4, 0.9))
    # P10 the bundle does not carry: the baseline's spread around the bundle's P50.
    spread = baseline.quantiles[0.1][:4] - baseline.p50[:4]
    assert merged.quantiles[0.1][:4] == pytest.approx(np.maximum(0.5 + spread, 0.0))


def test_bundle_forecast_alone_must_cover_the_plan_and_be_a_power() -> None:
    plan = T0 + STEP * np.arange(8, dtype=np.int64)
    assert from_message(message("kW", [1.0] * 8), plan, None).p50 == pytest.approx(np.ones(8))
    with pytest.raises(ForecastUnavailableError, match="covers 4 of 8"):
        from_message(message("kW", [1.0] * 4), plan, None)
    with pytest.raises(ForecastUnavailableError, match="'degC'"):
        from_message(message("degC", [1.0] * 8), plan, None)


def test_bad_day_path_is_a_p90_day_not_p90_at_every_step() -> None:
    """With independent errors the P90 of a day's cumulative error grows like sqrt(steps): far below the sum
    of every step's P90, which is what made a stress scenario through per-step quantiles so costly."""
    values, starts = history(8, noise=0.3, seed=3)
    targets = starts[-1] + STEP * np.arange(1, DAY + 1)
    forecast = baseline_forecast(values, starts, STEP, targets, (0.1, 0.9))
    path_excess = float(np.sum(forecast.paths[0.9] - forecast.p50))
    per_step_excess = float(np.sum(forecast.quantiles[0.9] - forecast.p50))
    assert 0 < path_excess < 0.5 * per_step_excess
    assert (forecast.paths[0.9] >= forecast.p50).all() and (forecast.paths[0.1] <= forecast.p50 + 1e-12).all()
