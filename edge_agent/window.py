"""From raw readings to the model's input window.

Readings arrive at the loop cadence (seconds); models work on samples of ``sample_period_s`` (minutes).
:class:`SampleAggregator` averages the usable readings of each sample period on the *site's* clock, so a
window built on the device holds the same numbers as the training data (period means, labelled with the
start of the period). :class:`WindowBuffer` keeps the newest ``window_steps`` samples per channel on a
regular grid: a period without readings becomes a row of NaN that the gap policy then fills or refuses.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.arrays import FloatArray
from edge_agent.fsutil import atomic_write_bytes
from edge_agent.state_files import quarantine


@dataclass(frozen=True)
class Sample:
    """One closed sample period: its start (UTC s) and the mean of each channel (NaN if none usable)."""

    start: int
    values: FloatArray


class SampleAggregator:
    """Averages readings into sample periods aligned to multiples of ``period_s`` since the epoch."""

    def __init__(self, channels: Sequence[str], period_s: int) -> None:
        self.channels = tuple(channels)
        self.period_s = int(period_s)
        self._start: int | None = None
        self._sum = np.zeros(len(self.channels), dtype=np.float64)
        self._count = np.zeros(len(self.channels), dtype=np.int64)

    def add(self, timestamp: float, values: Mapping[str, float]) -> list[Sample]:
        """Add one reading; returns the sample periods it closed (empty while the period is open).

        A reading older than the open period (a clock step backwards) is ignored rather than
        rewriting history that was already fed to the model.
        """
        start = int(timestamp // self.period_s) * self.period_s
        closed: list[Sample] = []
        if self._start is None:
            self._start = start
        elif start < self._start:
            return closed
        elif start > self._start:
            closed.append(self._close())
            self._start = start
        row = np.array([values.get(c, np.nan) for c in self.channels], dtype=np.float64)
        usable = np.isfinite(row)
        self._sum[usable] += row[usable]
        self._count[usable] += 1
        return closed

    def _close(self) -> Sample:
        assert self._start is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(self._count > 0, self._sum / np.maximum(self._count, 1), np.nan)
        sample = Sample(self._start, means.astype(np.float32))
        self._sum[:] = 0
        self._count[:] = 0
        return sample


class WindowBuffer:
    """Ring buffer of the newest ``steps`` samples of every channel, on a regular time grid."""

    def __init__(self, channels: Sequence[str], steps: int, period_s: int) -> None:
        self.channels = tuple(channels)
        self.steps = steps
        self.period_s = period_s
        self._values = np.full((steps, len(self.channels)), np.nan, dtype=np.float32)
        self._starts = np.zeros(steps, dtype=np.int64)
        self._filled = 0
        self._newest: int | None = None

    def __len__(self) -> int:
        return self._filled

    @property
    def full(self) -> bool:
        return self._filled >= self.steps

    @property
    def newest_start(self) -> int | None:
        return self._newest

    def append(self, sample: Sample) -> None:
        """Append a sample; periods skipped since the previous one are appended as missing rows."""
        if self._newest is not None:
            if sample.start <= self._newest:
                return
            skipped = (sample.start - self._newest) // self.period_s - 1
            for k in range(1, min(skipped, self.steps) + 1):
                gap_start = sample.start - (min(skipped, self.steps) - k + 1) * self.period_s
                self._push(gap_start, np.full(len(self.channels), np.nan, dtype=np.float32))
        self._push(sample.start, sample.values)

    def _push(self, start: int, values: FloatArray) -> None:
        self._values = np.roll(self._values, -1, axis=0)
        self._starts = np.roll(self._starts, -1)
        self._values[-1] = values
        self._starts[-1] = start
        self._filled = min(self._filled + 1, self.steps)
        self._newest = start

    def window(self) -> tuple[FloatArray, NDArray[np.int64]]:
        """The newest ``steps`` samples (oldest first) and their period starts (UTC s)."""
        return self._values.copy(), self._starts.copy()

    def save(self, path: Path) -> None:
        """Persist the window (atomically) so that a restart after a power cut decides at once."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            values=self._values,
            starts=self._starts,
            filled=np.int64(self._filled),
            channels=np.array(self.channels),
            period_s=np.int64(self.period_s),
        )
        atomic_write_bytes(path, buffer.getvalue())

    def restore(self, path: Path) -> bool:
        """Load a window saved by :meth:`save` if it was kept for the same channels, length and period.

        A damaged file (cut short, garbage, impossible contents) is quarantined and the window starts
        empty: a power cut on a bad card must cost the saved samples, not the agent.
        """
        if not path.exists():
            return False
        try:
            with np.load(path, allow_pickle=False) as saved:
                channels = tuple(str(c) for c in saved["channels"])
                period_s = int(saved["period_s"])
                values = saved["values"].astype(np.float32)
                starts = saved["starts"].astype(np.int64)
                filled = int(saved["filled"])
        except Exception as exc:  # a damaged zip raises anything: BadZipFile, NotImplementedError, RuntimeError ...
            quarantine(path, f"the saved window cannot be read: {exc}")
            return False
        if channels != self.channels or period_s != self.period_s or values.shape != self._values.shape:
            return False  # another model's window: a model update will take it
        problem = _window_problem(values, starts, filled, self.steps, self.period_s)
        if problem:
            quarantine(path, f"the saved window is inconsistent: {problem}")
            return False
        self._values, self._starts, self._filled = values, starts, filled
        self._newest = int(self._starts[-1]) if self._filled else None
        return True

    def seed(self, starts: NDArray[np.int64], values: FloatArray) -> None:
        """Fill the buffer from history (e.g. the replayed days before the agent started)."""
        for start, row in zip(starts, values, strict=True):
            self.append(Sample(int(start), np.asarray(row, dtype=np.float32)))


def _window_problem(
    values: FloatArray, starts: NDArray[np.int64], filled: int, steps: int, period_s: int
) -> str | None:
    """What makes a saved window impossible (None when it is a window :meth:`WindowBuffer.save` could write)."""
    if starts.shape != (steps,):
        return f"{starts.shape} period starts for {steps} steps"
    if not 0 <= filled <= steps:
        return f"{filled} samples filled of {steps}"
    kept = starts[steps - filled :]
    if filled and np.any(np.diff(kept) != period_s):
        return f"period starts not {period_s} s apart"
    if np.isinf(values).any():
        return "infinite values"
    return None
