"""Health metrics the agent reports: inference latency (moving average, percentiles), overruns, errors."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_agent.messages import DeviceState
from edge_agent.messages import LatencyStats as LatencySummary


class LatencyStats:
    """Recent inference latencies: an exponential moving average and percentiles over a sliding window.

    ``window=None`` keeps every latency added (a summary period); the wire format of the percentiles is
    :class:`edge_agent.messages.LatencyStats`, made by :meth:`summary`.
    """

    def __init__(self, window: int | None = 512, smoothing: float = 0.1) -> None:
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

    def summary(self) -> LatencySummary:
        """Count, p50/p95/p99 and worst latency of the kept latencies, as published in summaries."""
        if not self._recent:
            return LatencySummary(count=0)
        latencies = np.fromiter(self._recent, float)
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        return LatencySummary(count=len(latencies), p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=float(latencies.max()))

    def __len__(self) -> int:
        return len(self._recent)


@dataclass
class AgentHealth:
    """Counters the agent keeps since it started, for summaries, the ``status`` command and `agent doctor`."""

    cycles: int = 0
    overruns: int = 0
    sensor_errors: int = 0
    inferences: int = 0
    skipped_inferences: int = 0
    last_skip_reason: str | None = None
    first_inference_s: float | None = None
    latency: LatencyStats = field(default_factory=LatencyStats)
    started_at: float = field(default_factory=time.monotonic)


class HealthReasons:
    """Why the device is degraded, by concern (model, disk, a worker thread ...): ``degraded`` while any.

    Each concern sets and clears only its own reason, so one recovering never hides another still broken.
    Listeners are called (outside the lock) whenever the set changes, e.g. to republish the status.
    """

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def set(self, concern: str, reason: str) -> None:
        """Record (or update) the reason ``concern`` degrades the device."""
        with self._lock:
            changed = self._reasons.get(concern) != reason
            self._reasons[concern] = reason
        if changed:
            self._notify()

    def clear(self, concern: str) -> None:
        """``concern`` is healthy again."""
        with self._lock:
            changed = self._reasons.pop(concern, None) is not None
        if changed:
            self._notify()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every change."""
        self._listeners.append(listener)

    def state(self) -> tuple[DeviceState, str | None]:
        """``("degraded", "concern: reason; ...")`` while any reason is set, else ``("online", None)``."""
        with self._lock:
            reasons = sorted(self._reasons.items())
        if not reasons:
            return "online", None
        return "degraded", "; ".join(f"{concern}: {reason}" for concern, reason in reasons)

    def __contains__(self, concern: object) -> bool:
        with self._lock:
            return concern in self._reasons

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
