"""Periodic reports: what happened since the last summary, and raw telemetry when it is enabled.

A summary carries per-channel aggregates, the latest forecast, anomaly counts, inference latency
percentiles, input drift against the training statistics, skipped inferences and the agent's health.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from edge_agent.decisions import Decision, finite_or_none
from edge_agent.features import NormalisationStats
from edge_agent.health import AgentHealth, LatencyStats
from edge_agent.messages import (
    AnomalyStats,
    ChannelAggregate,
    ChannelDrift,
    Forecast,
    HealthStats,
    PlanState,
    SummaryContent,
    TelemetryContent,
)
from edge_agent.model_manager import ModelManager
from edge_agent.reporting.base import Reporter
from edge_agent.sensing import Sweep
from edge_agent.window import Sample

DEFAULT_SUMMARY_INTERVAL_S = 300.0


@dataclass
class ChannelWindow:
    """Running aggregates of one channel over the current summary period."""

    unit: str | None = None
    count: int = 0
    missing: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    last: float | None = None

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            self.missing += 1
            return
        self.count += 1
        self.total += value
        self.low, self.high, self.last = min(self.low, value), max(self.high, value), value

    def aggregate(self) -> ChannelAggregate:
        if not self.count:
            return ChannelAggregate(count=0, missing=self.missing, unit=self.unit)
        return ChannelAggregate(
            count=self.count,
            missing=self.missing,
            mean=self.total / self.count,
            min=self.low,
            max=self.high,
            last=self.last,
            unit=self.unit,
        )


class SummaryPeriod:
    """The counters of one summary period, fed by sweeps and decisions."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.start_utc = datetime.now(UTC)
        self.channels: dict[str, ChannelWindow] = {}
        self.latency = LatencyStats(window=None)
        self.skipped = 0
        self.drift_samples: list[NDArray[np.float32]] = []
        self.anomaly_windows = 0
        self.anomalies = 0
        self.max_score: float | None = None
        self.threshold: float | None = None

    def add_sweep(self, sweep: Sweep) -> None:
        for reading in sweep.readings:
            for name, value in reading.channels.items():
                window = self.channels.setdefault(name, ChannelWindow(unit=value.unit))
                window.add(value.value if value.usable else math.nan)

    def add_decision(self, decision: Decision) -> None:
        self.drift_samples.append(decision.newest_sample)
        self.skipped += decision.skipped is not None
        if decision.prediction.latency_ms is not None:
            self.latency.add(decision.prediction.latency_ms)
        verdict = decision.verdict
        if verdict is None:
            return
        self.anomaly_windows += 1
        self.anomalies += verdict.over
        if verdict.score is not None:
            self.max_score = verdict.score if self.max_score is None else max(self.max_score, verdict.score)
        self.threshold = verdict.threshold


class PeriodicReports:
    """Sends a summary every ``interval_s`` (and on demand) and telemetry of every sweep when enabled."""

    def __init__(
        self,
        reporter: Reporter,
        models: ModelManager,
        health: AgentHealth,
        interval_s: float = DEFAULT_SUMMARY_INTERVAL_S,
        telemetry: bool = False,
        step_telemetry: bool = False,
    ) -> None:
        self.reporter = reporter
        self.models = models
        self.health = health
        self.interval_s = interval_s
        self.telemetry = telemetry
        self.step_telemetry = step_telemetry
        self.period = SummaryPeriod()

    def add_steps(self, channels: Sequence[str], period_s: int, samples: Sequence[Sample]) -> None:
        """Publish each closed model step as compact telemetry (when enabled): the fleet's training series."""
        if not (self.telemetry and self.step_telemetry):
            return
        for sample in samples:
            self.reporter.publish_telemetry(step_telemetry(channels, period_s, sample))

    def add_sweep(self, timestamp: float, sweep: Sweep) -> None:
        """Aggregate a sweep into the period; publish it as telemetry when raw telemetry is enabled."""
        self.period.add_sweep(sweep)
        if self.telemetry and not self.step_telemetry:
            self.reporter.publish_telemetry(
                TelemetryContent(
                    sample_ts=datetime.fromtimestamp(timestamp, UTC),
                    values={k: finite_or_none(v) for k, v in sweep.values.items()},
                )
            )

    def add_decision(self, decision: Decision) -> None:
        """Count a decision into the period."""
        self.period.add_decision(decision)

    @property
    def due(self) -> bool:
        """True when the period has lasted ``interval_s``."""
        return time.monotonic() - self.period.started >= self.interval_s

    def summary(self, forecasts: list[Forecast], plan: PlanState | None = None) -> SummaryContent:
        """What happened since the last summary: channel aggregates, forecast, anomalies, latency, drift."""
        period, supervisor, health = self.period, self.models.supervisor, self.health
        spec = self.models.spec
        return SummaryContent(
            window_start=period.start_utc,
            window_end=datetime.now(UTC),
            channels={name: w.aggregate() for name, w in sorted(period.channels.items())},
            forecasts=forecasts,
            anomaly=AnomalyStats(
                windows=period.anomaly_windows,
                anomalies=period.anomalies,
                max_score=period.max_score,
                threshold=period.threshold,
            )
            if spec is not None and not spec.is_forecast
            else None,
            model=self.models.model_info(),
            fallback_active=supervisor.degraded,
            latency=period.latency.summary(),
            drift=self._drift(),
            skipped_inferences=period.skipped,
            health=HealthStats(
                cycles=health.cycles,
                overruns=health.overruns,
                sensor_errors=health.sensor_errors,
                latency_moving_average_ms=health.latency.moving_average_ms,
            ),
            plan=plan,
        )

    def publish(self, forecasts: list[Forecast], plan: PlanState | None = None) -> None:
        """Send the summary of the period now ending (with the plan in force, if any) and start a new period."""
        self.reporter.publish_summary(self.summary(forecasts, plan))
        self.period = SummaryPeriod()

    def _drift(self) -> dict[str, ChannelDrift]:
        pipeline = self.models.supervisor.pipeline
        if not self.period.drift_samples or pipeline is None:
            return {}
        return channel_drift(pipeline.spec.past_channel_names, pipeline.stats, self.period.drift_samples)


def step_telemetry(channels: Sequence[str], period_s: int, sample: Sample) -> TelemetryContent:
    """One closed model step as telemetry: the channels' step means from the step's start."""
    return TelemetryContent(
        sample_ts=datetime.fromtimestamp(sample.start, UTC),
        values={name: finite_or_none(float(v)) for name, v in zip(channels, sample.values, strict=True)},
        step_s=period_s,
    )


def channel_drift(
    channels: Sequence[str], stats: NormalisationStats, samples: Sequence[NDArray[np.float32]]
) -> dict[str, ChannelDrift]:
    """Mean shift (in training standard deviations) and spread ratio of each model input channel."""
    values = np.asarray(samples, dtype=np.float64)
    drift = {}
    for i, name in enumerate(channels):
        column = values[:, i][np.isfinite(values[:, i])]
        j = stats.channels.index(name)
        if column.size == 0:
            drift[name] = ChannelDrift()
            continue
        z_mean = (column.mean() - stats.mean[j]) / stats.std[j]
        ratio = column.std() / stats.std[j] if column.size > 1 else None
        drift[name] = ChannelDrift(z_mean=float(z_mean), std_ratio=None if ratio is None else float(ratio))
    return drift
