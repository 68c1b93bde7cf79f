"""Health metrics the agent reports: inference latency (moving average, percentiles), overruns, errors."""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyStats:
    """Recent inference latencies: an exponential moving average and percentiles over a sliding window."""

    def __init__(self, window: int = 512, smoothing: float = 0.1) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self._smoothing = smoothing
        self.moving_average_ms: float | None = None

    def add(self, milliseconds: float) -> None:
        self._recent.append(milliseconds)
        if self.moving_average_ms is None:
            self.moving_average_ms = milliseconds
        else:
            self.moving_average_ms += self._smoothing * (milliseconds - self.moving_average_ms)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) of recent latencies, None before the first inference."""
        return float(np.percentile(np.fromiter(self._recent, float), q)) if self._recent else None

    def __len__(self) -> int:
        return len(self._recent)
