"""Readings at the loop cadence become the same period means the model was trained on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent.state_files import take_quarantined
from edge_agent.window import Sample, SampleAggregator, WindowBuffer


def test_readings_average_into_periods_labelled_by_their_start() -> None:
    agg = SampleAggregator(["p"], period_s=900)
    closed: list[Sample] = []
    for t, v in [(900, 1.0), (1000, 3.0), (1799, float("nan")), (1800, 10.0), (2699, 20.0), (2700, 0.0)]:
        closed += agg.add(t, {"p": v})
    assert [s.start for s in closed] == [900, 1800]
    np.testing.assert_allclose([s.values[0] for s in closed], [2.0, 15.0])


def test_a_period_without_usable_readings_is_missing_not_zero() -> None:
    agg = SampleAggregator(["p", "q"], period_s=60)
    agg.add(0, {"p": float("nan")})
    (sample,) = agg.add(60, {"p": 1.0, "q": 2.0})
    assert np.isnan(sample.values).all()


def test_a_clock_step_backwards_does_not_rewrite_history() -> None:
    agg = SampleAggregator(["p"], period_s=60)
    agg.add(120, {"p": 1.0})
    assert agg.add(30, {"p": 100.0}) == []
    (sample,) = agg.add(180, {"p": 5.0})
    assert sample.start == 120 and sample.values[0] == 1.0


def test_buffer_keeps_the_newest_steps_on_a_regular_grid_with_gaps_as_nan() -> None:
    buffer = WindowBuffer(["p"], steps=4, period_s=60)
    for start, value in [(0, 0.0), (60, 1.0), (240, 4.0), (300, 5.0)]:
        buffer.append(Sample(start, np.array([value], dtype=np.float32)))
    values, starts = buffer.window()
    assert buffer.full
    np.testing.assert_array_equal(starts, [120, 180, 240, 300])
    assert np.isnan(values[:2, 0]).all()
    np.testing.assert_array_equal(values[2:, 0], [4.0, 5.0])


def test_buffer_ignores_duplicates_and_a_long_outage_resets_the_window() -> None:
    buffer = WindowBuffer(["p"], steps=3, period_s=60)
    buffer.append(Sample(0, np.array([1.0], dtype=np.float32)))
    buffer.append(Sample(0, np.array([9.0], dtype=np.float32)))
    buffer.append(Sample(60 * 100, np.array([2.0], dtype=np.float32)))
    values, starts = buffer.window()
    np.testing.assert_array_equal(starts, [60 * 98, 60 * 99, 60 * 100])
    assert np.isnan(values[:2, 0]).all() and values[2, 0] == 2.0


def test_window_survives_a_restart_and_refuses_another_model_shape(tmp_path: Path) -> None:
    buffer = WindowBuffer(["p", "q"], steps=3, period_s=60)
    for k in range(4):
        buffer.append(Sample(60 * k, np.array([k, -k], dtype=np.float32)))
    buffer.save(tmp_path / "window.npz")
    restored = WindowBuffer(["p", "q"], steps=3, period_s=60)
    assert restored.restore(tmp_path / "window.npz") and restored.full
    for got, want in zip(restored.window(), buffer.window(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert restored.newest_start == 180
    assert not WindowBuffer(["p"], steps=3, period_s=60).restore(tmp_path / "window.npz")
    assert not WindowBuffer(["p", "q"], steps=4, period_s=60).restore(tmp_path / "window.npz")
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 half a file")
    assert not WindowBuffer(["p", "q"], steps=3, period_s=60).restore(tmp_path / "torn.npz")


def _saved_window(path: Path) -> WindowBuffer:
    buffer = WindowBuffer(("a", "b"), 4, 60)
    for start in range(0, 300, 60):
        buffer.append(Sample(start, np.array([start, 1.0], dtype=np.float32)))
    buffer.save(path)
    return buffer


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: b"",  # the case: cut to 0 bytes -> exit 1 with only "Aborted."
        lambda raw: raw[: len(raw) // 2],
        lambda raw: b"\x93NUMPY garbage" + raw[14:],
        lambda raw: raw[:40] + bytes(64) + raw[104:],
    ],
    ids=["empty", "cut-in-half", "garbage-header", "garbage-inside"],
)
def test_a_damaged_saved_window_is_quarantined_and_the_window_starts_empty(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    """Issue 12 item 7: a damaged window.npz must not stop the agent; it is kept for inspection."""
    path = tmp_path / "window.npz"
    _saved_window(path)
    path.write_bytes(damage(path.read_bytes()))
    take_quarantined()
    fresh = WindowBuffer(("a", "b"), 4, 60)
    assert fresh.restore(path) is False
    assert len(fresh) == 0
    assert not path.exists()
    assert [n.original for n in take_quarantined()] == [path]


def test_a_missing_or_foreign_window_is_not_quarantined(tmp_path: Path) -> None:
    take_quarantined()
    assert WindowBuffer(("a", "b"), 4, 60).restore(tmp_path / "window.npz") is False
    _saved_window(tmp_path / "window.npz")
    assert WindowBuffer(("a", "c"), 4, 60).restore(tmp_path / "window.npz") is False  # another model's
    assert take_quarantined() == [] and (tmp_path / "window.npz").exists()
