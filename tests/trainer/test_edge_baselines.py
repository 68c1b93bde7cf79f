"""edge_agent's numpy baselines and anomaly rules: the device's fallback and the trainer's yardstick."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent import anomaly, baselines
from edge_agent.errors import FeatureError


def test_persistence_repeats_last_value() -> None:
    history = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    out = baselines.persistence(history, 3)
    assert out.shape == (1, 3, 2)
    np.testing.assert_array_equal(out[0], [[10, 11]] * 3)


@given(period=st.integers(1, 8), horizon=st.integers(1, 20), extra=st.integers(0, 5))
def test_seasonal_naive_copies_one_season_back(period: int, horizon: int, extra: int) -> None:
    history = np.random.default_rng(period).normal(size=(2, period + extra, 1)).astype(np.float32)
    out = baselines.seasonal_naive(history, horizon, period)
    full = np.concatenate([history, out], axis=1)
    t = history.shape[1]
    for step in range(horizon):
        np.testing.assert_array_equal(full[:, t + step], full[:, t + step - period])


def test_seasonal_naive_needs_a_full_season() -> None:
    with pytest.raises(FeatureError, match="history buffer"):
        baselines.seasonal_naive(np.zeros((1, 5, 1)), 4, 7)


def test_clear_sky_scaling_follows_the_sky_and_ignores_night() -> None:
    history = np.array([[[0.0], [100.0], [200.0]]], dtype=np.float32)
    clear_then = np.array([[0.0, 500.0, 1000.0]], dtype=np.float32)
    clear_now = np.array([[10.0, 250.0, 1000.0]], dtype=np.float32)
    out = baselines.clear_sky_scaled_persistence(history, clear_then, clear_now, period_steps=3)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 50.0, 200.0])


def test_reconstruction_scores_use_newest_steps() -> None:
    x = np.zeros((2, 4, 1), dtype=np.float32)
    r = x.copy()
    r[0, 0, 0] = 5.0  # old sample: not scored
    r[1, -1, 0] = 2.0
    scores = anomaly.reconstruction_scores(x, r, score_steps=1)
    np.testing.assert_allclose(scores, [0.0, 2.0])
    with pytest.raises(FeatureError, match="score_steps"):
        anomaly.reconstruction_scores(x, r, score_steps=5)


def test_threshold_and_flags() -> None:
    scores = np.concatenate([np.linspace(0, 1, 1001), [np.nan]])
    threshold = anomaly.calibrate_threshold(scores, 0.99)
    assert threshold == pytest.approx(0.99)
    flags = anomaly.flag(np.array([0.5, 1.0, np.nan]), threshold)
    assert flags.tolist() == [False, True, False]
    with pytest.raises(FeatureError, match="no finite"):
        anomaly.calibrate_threshold(np.array([np.nan]), 0.9)


def test_rolling_zscore_catches_a_spike_only() -> None:
    values = np.random.default_rng(0).normal(size=400)
    values[120] = 8.0
    flags = anomaly.rolling_zscore_flags(values, window=16, z_threshold=4.0)
    assert flags[120]
    assert flags.sum() <= 2


def test_stale_rule_flags_frozen_runs_but_not_night_zeros() -> None:
    values = np.array([0, 0, 0, 0, 0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4], dtype=float)
    flags = anomaly.stale_value_flags(values, run_steps=4)
    assert np.flatnonzero(flags).tolist() == [10, 11]
