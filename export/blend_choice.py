"""Which network share w of ``w·network + (1−w)·LightGBM`` the device serves.

Taking the share with the lowest validation MAE chases whatever the validation months happened to hold: on
the shipped W1 a three-week holiday (August 2008, a flat load the network follows and the trees do not)
moved that choice to w = 0.75 in every run, while the test months favour 0.25–0.5 and w = 0.75 lost to
LightGBM there. Equal shares are the robust default of forecast combination (estimated weights rarely beat
them out of sample: the "forecast combination puzzle", Smith & Wallis 2009), so the share nearest ½ is served
unless another share beats it on validation by more than two standard errors. The error is of the mean
paired difference over week-long blocks of validation windows: neighbouring windows overlap and a regime
lasts days, so windows are not independent draws, and a week also holds the weekly cycle once. Too few
blocks to tell (fewer than two) keep the equal shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.arrays import FloatArray

EQUAL_SHARE = 0.5
BLOCK_SECONDS = 7 * 86_400
STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class ShareChoice:
    """The served share, the share it was measured against, and each share's case against it."""

    weight: float
    anchor: float
    differences: dict[float, tuple[float, float]]
    """Per other share: mean over blocks of (its window error − the anchor's) and that mean's standard error."""
    blocks: int

    def describe(self) -> str:
        """One line for the export report: the rule and the numbers it decided on."""
        cases = ", ".join(
            f"w={w:g} {mean:+.4g} ± {error:.2g}" for w, (mean, error) in sorted(self.differences.items(), reverse=True)
        )
        return (
            f"w={self.anchor:g} unless another share beats it on validation by more than {STANDARD_ERRORS:g} standard "
            f"errors of the paired difference over {self.blocks} week-long blocks ({cases or 'no other share'})"
        )


def block_index(step_times: NDArray[np.int64]) -> NDArray[np.int64]:
    """The week-long block each window falls in, by the time of its first forecast step (UTC seconds)."""
    first = np.asarray(step_times)[:, 0].astype(np.int64)
    return (first - first.min()) // BLOCK_SECONDS


def choose_share(
    window_errors: Mapping[float, FloatArray], blocks: NDArray[np.int64], weights: Sequence[float]
) -> ShareChoice:
    """The share to serve from ``weights``, given each share's error per validation window (``window_errors``)."""
    anchor = min(weights, key=lambda w: (abs(w - EQUAL_SHARE), -w))
    labels, block_of_window = np.unique(blocks, return_inverse=True)
    counts = np.bincount(block_of_window, minlength=len(labels))
    differences: dict[float, tuple[float, float]] = {}
    for weight in weights:
        if weight == anchor:
            continue
        paired = np.asarray(window_errors[weight], dtype=np.float64) - np.asarray(window_errors[anchor])
        per_block = np.bincount(block_of_window, weights=paired, minlength=len(labels)) / counts
        error = float(np.std(per_block, ddof=1) / np.sqrt(len(per_block))) if len(per_block) > 1 else float("inf")
        differences[weight] = (float(np.mean(per_block)), error)
    better = [w for w, (mean, error) in differences.items() if mean + STANDARD_ERRORS * error < 0]
    mae = {w: float(np.mean(window_errors[w])) for w in (anchor, *better)}
    # Ties go to the simpler end: a single family, the network first.
    weight = min(mae, key=lambda w: (mae[w], min(w, 1 - w), -w))
    return ShareChoice(weight=weight, anchor=anchor, differences=differences, blocks=len(labels))
