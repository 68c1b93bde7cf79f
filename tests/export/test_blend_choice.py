"""The network share the device serves: equal shares unless validation shows another share is clearly better."""

from __future__ import annotations

import numpy as np
import pytest

from gridedge.export.blend_choice import BLOCK_SECONDS, block_index, choose_share

GRID = (1.0, 0.75, 0.5, 0.25, 0.0)
WINDOWS_PER_BLOCK = 28  # a week of windows every 6 h


def _blocks(weeks: int) -> np.ndarray:
    return np.repeat(np.arange(weeks), WINDOWS_PER_BLOCK)


def _errors(per_block_offset: dict[float, np.ndarray], seed: int = 0) -> dict[float, np.ndarray]:
    """Window errors: a common noisy level per window plus, per share, its offset in each block."""
    rng = np.random.default_rng(seed)
    weeks = len(next(iter(per_block_offset.values())))
    level = rng.gamma(4.0, 0.1, size=weeks * WINDOWS_PER_BLOCK)
    return {
        w: level + np.repeat(offset, WINDOWS_PER_BLOCK) + rng.normal(0, 0.002, level.size)
        for w, offset in per_block_offset.items()
    }


def test_a_share_clearly_better_in_every_week_is_served() -> None:
    weeks = 12
    offsets = {w: np.full(weeks, 0.05 * abs(w - 0.25)) for w in GRID}  # w = 0.25 best, steadily
    choice = choose_share(_errors(offsets), _blocks(weeks), GRID)
    assert (choice.weight, choice.anchor, choice.blocks) == (0.25, 0.5, weeks)
    mean, error = choice.differences[0.25]
    assert mean == pytest.approx(-0.0125, abs=2e-3) and mean + 2 * error < 0


def test_one_unusual_week_does_not_move_the_served_share() -> None:
    """A holiday week where the network is far better, against eleven ordinary weeks where it is slightly worse:
    the pooled validation MAE favours w = 1, but one week is no evidence that it will keep doing so."""
    weeks = 12
    ordinary = {w: np.full(weeks, 0.01 * abs(w - 0.5)) for w in GRID}
    holiday = {w: offset.copy() for w, offset in ordinary.items()}
    for w in GRID:
        holiday[w][7] -= 0.4 * w  # the network's share wins big in week 7 only
    errors = _errors(holiday)
    pooled = {w: float(np.mean(e)) for w, e in errors.items()}
    assert min(pooled, key=pooled.__getitem__) == 1.0
    choice = choose_share(errors, _blocks(weeks), GRID)
    assert choice.weight == 0.5
    mean, error = choice.differences[1.0]
    assert mean < 0 and mean + 2 * error >= 0


def test_too_few_blocks_keep_equal_shares() -> None:
    offsets = {w: np.full(1, 0.05 * w) for w in GRID}  # LightGBM alone looks far better, within one week
    choice = choose_share(_errors(offsets), _blocks(1), GRID)
    assert choice.weight == 0.5 and choice.blocks == 1
    assert all(error == float("inf") for _mean, error in choice.differences.values())


def test_the_anchor_is_the_grid_share_nearest_a_half() -> None:
    weeks = 8
    flat = {w: np.zeros(weeks) for w in GRID}
    errors = _errors(flat)
    assert choose_share(errors, _blocks(weeks), (1.0, 0.0)).anchor == 1.0  # a tie goes to the network
    assert choose_share(errors, _blocks(weeks), (0.0, 0.25, 1.0)).anchor == 0.25
    assert choose_share(errors, _blocks(weeks), (0.0,)).weight == 0.0


def test_rule_is_stated_with_its_numbers() -> None:
    weeks = 6
    choice = choose_share(_errors({w: np.zeros(weeks) for w in GRID}), _blocks(weeks), GRID)
    text = choice.describe()
    assert text.startswith("w=0.5 unless another share beats it on validation by more than 2 standard errors")
    assert "over 6 week-long blocks" in text and "w=1 " in text and "w=0 " in text


def test_blocks_are_weeks_from_the_first_window() -> None:
    start = 1_700_000_000
    first_steps = start + np.array([0, 3600, BLOCK_SECONDS - 1, BLOCK_SECONDS, 3 * BLOCK_SECONDS + 5])
    step_times = np.stack([first_steps, first_steps + 900], axis=1)
    assert block_index(step_times).tolist() == [0, 0, 0, 1, 3]
