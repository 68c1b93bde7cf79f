"""The decision step: sample periods close into the window, and every full window gets a decision.

Each closed period goes into the window (saved to disk, so a restart decides at once). A full window is
turned into the model input by the bundle's feature pipeline and decided by the model manager's
supervisor: a forecast for forecast models, an anomaly verdict with hysteresis for reconstruction models.
A window the model cannot see (a gap too long to fill) is decided by the baseline, and the skip counted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.alerts import AlertLatch
from edge_agent.anomaly import reconstruction_scores, rolling_zscore_flags, stale_value_flags
from edge_agent.bundle import Manifest
from edge_agent.config import AnomalySection, ChannelLink
from edge_agent.features import FeatureSpec, derive_channels
from edge_agent.health import AgentHealth
from edge_agent.messages import Forecast, QuantileForecast
from edge_agent.model_manager import ModelManager
from edge_agent.quantiles import decode_forecast
from edge_agent.reporting.base import Reporter
from edge_agent.supervisor import Prediction
from edge_agent.window import Sample, SampleAggregator, WindowBuffer

logger = logging.getLogger(__name__)
# Rule fallback of anomaly models: spikes beyond this many sigmas, or a value frozen this many samples.
FALLBACK_Z_THRESHOLD = 4.0
FALLBACK_STALE_STEPS = 8


def finite_or_none(value: float) -> float | None:
    """A number for the wire: None (null) for NaN and inf, never a made-up 0."""
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class AnomalyVerdict:
    """The anomaly judgement of the newest window: its score (None for the rule fallback) and verdict."""

    score: float | None
    over: bool
    detector: str
    threshold: float | None = None


@dataclass(frozen=True)
class Decision:
    """One decision: the prediction, the newest raw sample (for drift), why the model was skipped, if it was,
    and the anomaly verdict of anomaly models."""

    prediction: Prediction
    newest_sample: NDArray[np.float32]
    skipped: str | None = None
    verdict: AnomalyVerdict | None = None


class AnomalyJudge:
    """Scores each window of an anomaly model and alerts with hysteresis (``settings``: raise/clear after N)."""

    def __init__(self, reporter: Reporter, settings: AnomalySection) -> None:
        self.settings = settings
        self.latch = AlertLatch(reporter, "anomaly", "anomaly-cleared")
        self._over_in_a_row = 0
        self._under_in_a_row = 0

    @property
    def active(self) -> bool:
        """True while an anomaly alert is raised and not yet cleared."""
        return bool(self.latch.raised)

    def judge(
        self, manifest: Manifest, prediction: Prediction, past: NDArray[np.float32], raw: NDArray[np.float32]
    ) -> AnomalyVerdict:
        """The verdict on the newest window; raises or clears the alert when the hysteresis says so."""
        verdict = self._score(manifest, prediction, past, raw)
        self._over_in_a_row = self._over_in_a_row + 1 if verdict.over else 0
        self._under_in_a_row = 0 if verdict.over else self._under_in_a_row + 1
        targets = manifest.input.target_channels
        if self._over_in_a_row >= self.settings.raise_after:
            self.latch.raise_once(
                "anomaly",
                f"anomalous behaviour of {list(targets)} ({verdict.detector} detector)",
                channel=targets[0],
                value=verdict.score,
                threshold=verdict.threshold,
            )
        elif self._under_in_a_row >= self.settings.clear_after:
            self.latch.clear_once("anomaly", "behaviour back to normal")
        return verdict

    @staticmethod
    def _score(
        manifest: Manifest, prediction: Prediction, past: NDArray[np.float32], raw: NDArray[np.float32]
    ) -> AnomalyVerdict:
        anomaly = manifest.output.anomaly
        threshold = anomaly.threshold if anomaly else None
        spec = manifest.input
        target = raw[:, spec.past_channel_names.index(spec.target_channels[0])]
        if prediction.source == "model" and anomaly is not None:
            targets = [spec.past_channel_names.index(t) for t in spec.target_channels]
            score = finite_or_none(reconstruction_scores(past[..., targets], prediction.output, anomaly.score_steps)[0])
            if score is not None and score > anomaly.threshold:
                return AnomalyVerdict(score, True, "model", threshold)
            # The bundle's detector includes the stale rule: a frozen sensor the model reconstructs well.
            if anomaly.stale_run_steps is not None and stale_value_flags(target, anomaly.stale_run_steps)[-1]:
                return AnomalyVerdict(score, True, "stale-rule", threshold)
            return AnomalyVerdict(score, False, "model", threshold)
        over = bool(
            rolling_zscore_flags(target, len(target) - 1, FALLBACK_Z_THRESHOLD)[-1]
            or stale_value_flags(target, FALLBACK_STALE_STEPS)[-1]
        )
        return AnomalyVerdict(None, over, prediction.source, threshold)


class DecisionStep:
    """Keeps the window of the model in use and decides on it every time a sample period closes."""

    def __init__(
        self,
        models: ModelManager,
        health: AgentHealth,
        judge: AnomalyJudge,
        window_path: Path,
        channel_link: Callable[[str], ChannelLink],
    ) -> None:
        self.models = models
        self.health = health
        self.judge = judge
        self.window_path = window_path
        self.channel_link = channel_link
        self.spec: FeatureSpec | None = None
        self.aggregator: SampleAggregator | None = None
        self.buffer: WindowBuffer | None = None
        self.latest_prediction: Prediction | None = None
        self.latest_forecasts: list[Forecast] = []
        self.latest_anomaly: AnomalyVerdict | None = None
        self.periods_closed = 0
        self.last_closed: list[Sample] = []  # the model steps the latest sweep closed (step telemetry)

    def restart_periods(self, timestamp: float) -> None:
        """The site clock stepped to ``timestamp``: drop the open period, and the window when it lies ahead
        of the new time (it was labelled by a clock now known to be wrong)."""
        spec = self.spec
        if spec is None or self.aggregator is None or self.buffer is None:
            return
        self.aggregator = SampleAggregator(spec.past_channel_names, spec.sample_period_s)
        newest = self.buffer.newest_start
        if newest is not None and newest > timestamp:
            logger.warning("site clock stepped back before the window's newest sample: the window starts again")
            self.buffer = WindowBuffer(spec.past_channel_names, spec.window_steps, spec.sample_period_s)

    def follow_model(self) -> None:
        """Rebuild the window when the model in use needs another one (first start, an update, a rollback),
        starting from the saved window when it fits."""
        spec = self.models.spec
        if spec is None or spec == self.spec:
            return
        self.spec = spec
        self.aggregator = SampleAggregator(spec.past_channel_names, spec.sample_period_s)
        self.buffer = WindowBuffer(spec.past_channel_names, spec.window_steps, spec.sample_period_s)
        if self.buffer.restore(self.window_path):
            logger.info("window of %d samples restored from %s", len(self.buffer), self.window_path)

    def add(self, timestamp: float, values: dict[str, float]) -> list[Decision]:
        """Add one sweep of sensor values taken at ``timestamp``; decide for every period that closed."""
        self.follow_model()
        assert self.aggregator is not None and self.buffer is not None
        model_values = {channel: self._model_value(channel, values) for channel in self.aggregator.channels}
        closed = self.aggregator.add(timestamp, model_values)
        self.periods_closed += len(closed)
        self.last_closed = closed
        decisions = []
        for sample in closed:
            self.buffer.append(sample)
            if self.buffer.full:
                decisions.append(self.decide())
        if closed:
            self.buffer.save(self.window_path)
        return decisions

    def decide_if_full(self) -> Decision | None:
        """Decide on the current window right away when it is full (after a restart with a saved window)."""
        self.follow_model()
        return self.decide() if self.buffer is not None and self.buffer.full else None

    def _model_value(self, channel: str, values: dict[str, float]) -> float:
        link = self.channel_link(channel)
        return values.get(link.source, math.nan) * link.scale + link.offset

    def decide(self) -> Decision:
        """Build the model input from the full window and decide on it."""
        supervisor = self.models.supervisor
        assert supervisor.pipeline is not None and supervisor.bundle is not None and self.buffer is not None
        spec = supervisor.pipeline.spec
        raw, starts = self.buffer.window()
        derived = spec.derived_past_channels
        if derived:
            columns = [spec.past_channel_names.index(name) for name in derived]
            raw[:, columns] = derive_channels(derived, starts, spec.location)
        future_ts = future = None
        if spec.is_forecast:
            future_ts = (starts[-1] + spec.sample_period_s * np.arange(1, spec.horizon_steps + 1))[np.newaxis]
            if spec.known_future_channels:
                future = derive_channels(spec.future_channel_names, future_ts, spec.location)
        inputs = supervisor.pipeline.build(raw, starts, future, future_ts)
        skipped = None if inputs.valid[0] else inputs.reasons[0]
        if skipped is not None:
            # The model cannot see this window, but the site still needs a decision: the baseline
            # (with its last-resort fill) makes it, and the skip is counted with its reason.
            self.health.skipped_inferences += 1
            self.health.last_skip_reason = skipped
            logger.info("model skipped, baseline decides: %s", skipped)
            prediction = supervisor.baseline(raw, starts, skipped)
        else:
            prediction = supervisor.predict(inputs, raw, starts)
        self._count(prediction)
        decision = Decision(prediction, raw[-1], skipped)
        manifest = supervisor.bundle.manifest
        if self.models.after_inference():
            return decision  # rolled back: this window's result belongs to the failed model
        if spec.is_forecast:
            self.latest_forecasts = self._forecasts(prediction, int(starts[-1]))
            return decision
        self.latest_anomaly = self.judge.judge(manifest, prediction, inputs.past, raw)
        return Decision(prediction, raw[-1], skipped, self.latest_anomaly)

    def _count(self, prediction: Prediction) -> None:
        self.latest_prediction = prediction
        self.health.inferences += 1
        if self.health.first_inference_s is None:
            self.health.first_inference_s = time.monotonic() - self.health.started_at
            logger.warning("first inference %.3f s after start (%s)", self.health.first_inference_s, prediction.source)
        if prediction.latency_ms is not None:
            self.health.latency.add(prediction.latency_ms)

    def _forecasts(self, prediction: Prediction, last_start: int) -> list[Forecast]:
        supervisor = self.models.supervisor
        assert supervisor.pipeline is not None and supervisor.bundle is not None
        output = supervisor.bundle.manifest.output
        step = supervisor.pipeline.spec.sample_period_s
        step_times = last_start + step * np.arange(1, output.horizon_steps + 1)
        decoded = decode_forecast(prediction.output[0], output, supervisor.pipeline, step_times)
        return [
            Forecast(
                target=name,
                unit=unit,
                origin=datetime.fromtimestamp(last_start + step, UTC),
                step_s=step,
                values=_wire(decoded.point[:, i]),
                quantiles=None
                if decoded.quantiles is None
                else [
                    QuantileForecast(level=level, values=_wire(decoded.quantiles[q, :, i]))
                    for q, level in enumerate(decoded.levels)
                ],
            )
            for i, (name, unit) in enumerate(zip(output.target_channels, output.target_units, strict=True))
        ]


def _wire(values: NDArray[np.float32]) -> list[float | None]:
    return [finite_or_none(v) for v in values]
