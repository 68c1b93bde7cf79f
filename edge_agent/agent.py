"""The on-device control loop: sensors -> sample window -> model (or fallback) -> decisions -> reports.

One :meth:`Agent.cycle` reads every sensor source once, averages the readings into sample periods on the
site clock, and each time a period closes builds the model input with the bundle's feature pipeline and
decides: a forecast for forecast models, an anomaly verdict (with hysteresis) for reconstruction models.
:meth:`Agent.run` repeats cycles on a monotonic schedule (no drift; late cycles are counted as overruns,
never bunched up), pings the systemd watchdog, sends periodic summaries and stops cleanly on SIGTERM.
Nothing a sensor or the model does can stop the loop: failures become missing channels, fallbacks,
"degraded" status and alerts.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import numpy as np
from numpy.typing import NDArray

from edge_agent.anomaly import reconstruction_scores, rolling_zscore_flags, stale_value_flags
from edge_agent.baselines import persistence, seasonal_naive
from edge_agent.bundle import Bundle
from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError, ConfigError
from edge_agent.features import DERIVED_CHANNELS, FeaturePipeline, derive_channels, fill_gaps
from edge_agent.health import LatencyStats
from edge_agent.messages import (
    AlertContent,
    AnomalyStats,
    ChannelAggregate,
    ChannelDrift,
    Forecast,
    HealthStats,
    ModelInfo,
    SummaryContent,
    TelemetryContent,
)
from edge_agent.messages import LatencyStats as LatencySummary
from edge_agent.reporting.base import Reporter
from edge_agent.reporting.commands import UpdateOutcome
from edge_agent.sensors.base import Reading, SensorSource
from edge_agent.sensors.registry import build_source
from edge_agent.supervisor import FallbackPredictor, ModelSupervisor, Prediction, SupervisorPolicy
from edge_agent.systemd import notify
from edge_agent.updates import BundleStore
from edge_agent.window import SampleAggregator, WindowBuffer

logger = logging.getLogger(__name__)
SECONDS_PER_DAY = 86_400
DEFAULT_SUMMARY_INTERVAL_S = 300.0
# Rule fallback of anomaly models: spikes beyond this many sigmas, or a value frozen this many samples.
FALLBACK_Z_THRESHOLD = 4.0
FALLBACK_STALE_STEPS = 8


def baseline_for(bundle: Bundle) -> FallbackPredictor:
    """The predictor that replaces the model when it misbehaves, shaped like the model's output.

    Forecasts fall back to the seasonal-naive forecast of the previous day when the window holds a day,
    else to persistence. Reconstruction models get the (filled) input back, so their score is zero and
    the agent judges the window with the rule detectors instead.
    """
    spec = bundle.manifest.input
    pipeline = FeaturePipeline(spec)
    targets = [spec.past_channel_names.index(t) for t in spec.target_channels]
    day_steps = SECONDS_PER_DAY // spec.sample_period_s

    def predict(raw_window: NDArray[np.float32], starts: NDArray[np.int64]) -> NDArray[np.float32]:
        history = fill_gaps(raw_window[:, targets], spec.gap_policy)
        history = _last_resort_fill(history, pipeline, spec.target_channels)
        if not spec.is_forecast:
            return pipeline.normalise_targets(history)[np.newaxis]
        if len(history) >= day_steps:
            forecast = seasonal_naive(history, spec.horizon_steps, day_steps)
        else:
            forecast = persistence(history, spec.horizon_steps)
        return pipeline.normalise_targets(forecast)

    return predict


def _last_resort_fill(
    history: NDArray[np.float32], pipeline: FeaturePipeline, channels: tuple[str, ...]
) -> NDArray[np.float32]:
    """Gaps too long to fill take the training mean, so the fallback always yields a number."""
    means = pipeline.stats.inverse(np.zeros((1, len(channels)), dtype=np.float32), channels)[0]
    return np.where(np.isfinite(history), history, means).astype(np.float32)


@dataclass
class _ChannelWindow:
    """Running aggregates of one channel over the current summary period."""

    unit: str | None = None
    count: int = 0
    missing: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    last: float | None = None

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            self.missing += 1
            return
        self.count += 1
        self.total += value
        self.total_sq += value * value
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


@dataclass(frozen=True)
class AnomalyVerdict:
    """The anomaly judgement of the newest window: its score (None for the rule fallback) and verdict."""

    score: float | None
    over: bool
    detector: str


@dataclass
class AgentHealth:
    """Counters the agent keeps for summaries and `agent doctor`."""

    cycles: int = 0
    overruns: int = 0
    sensor_errors: int = 0
    inferences: int = 0
    skipped_inferences: int = 0
    last_skip_reason: str | None = None
    first_inference_s: float | None = None
    latency: LatencyStats = field(default_factory=LatencyStats)


class Agent:
    """One device's agent. Build it from a config, :meth:`start` it, then :meth:`run` or :meth:`cycle`."""

    def __init__(
        self,
        config: AgentConfig,
        reporter: Reporter,
        sources: list[SensorSource] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.reporter = reporter
        self._sources_given = sources
        self.sources: list[SensorSource] = []
        self._wall_clock = clock
        self.supervisor = ModelSupervisor(
            config.bundle.path,
            config.bundle.public_key,
            config.runtime,
            baseline_for,
            config.bundle.artefact,
            SupervisorPolicy(
                latency_budget_ms=config.loop.latency_budget_ms,
                latency_strikes=config.loop.latency_strikes,
                retry_every=config.loop.retry_every,
                recover_after=config.loop.recover_after,
            ),
        )
        self.health = AgentHealth()
        self.stop_event = threading.Event()
        # Held for a whole cycle and for every change of model or config made by remote commands.
        self.lock = threading.Lock()
        self._probation = 0
        self._fallback_bundle: Path | None = None
        self._last_site_clock: tuple[float, float] | None = None
        self.latest_forecasts: list[Forecast] = []
        self.latest_prediction: Prediction | None = None
        self.latest_anomaly: AnomalyVerdict | None = None
        self.anomaly_active = False
        self._started_at = time.monotonic()
        self._state: str | None = None
        self._flagged_channels: set[str] = set()
        self._max_score: float | None = None
        self._threshold: float | None = None
        self._over_threshold = 0
        self._under_threshold = 0
        self._reset_summary_window()

    @property
    def summary_interval_s(self) -> float:
        return self.config.mqtt.summary_interval_s if self.config.mqtt else DEFAULT_SUMMARY_INTERVAL_S

    def start(self) -> None:
        """Open the sensor sources, verify and self-test the model, announce the state.

        A bundle installed by an earlier model update (``state_dir/bundles/current``) wins over the
        provisioned one, so an update survives a restart.
        """
        self._started_at = time.monotonic()
        self.sources = self._sources_given or [build_source(c, self.config.base_dir) for c in self.config.sensors]
        installed = BundleStore(self.config.state_dir).current()
        if installed is not None:
            self.supervisor.bundle_dir = installed
        self._load_model()
        notify("READY=1")
        self.decide_now()

    def _load_model(self) -> None:
        self.supervisor.load()
        if self.supervisor.bundle is None:
            raise ConfigError(
                f"cannot run without a verified bundle: {self.supervisor.degraded_reason}. Copy a bundle "
                "signed with the fleet key into bundle.path (see `gridedge agent doctor`)"
            )
        spec = self.supervisor.bundle.manifest.input
        if not spec.future_is_derivable:
            raise ConfigError(
                f"the model needs known-future channels {list(spec.future_channel_names)} that the device "
                f"cannot compute (it derives {sorted(DERIVED_CHANNELS)}); deploy a model without them"
            )
        channels = spec.past_channel_names
        self.aggregator = SampleAggregator(channels, spec.sample_period_s)
        self.buffer = WindowBuffer(channels, spec.input_steps, spec.sample_period_s)
        if self.buffer.restore(self.window_path):
            logger.info("window of %d samples restored from %s", len(self.buffer), self.window_path)
        self._announce()

    @property
    def window_path(self) -> Path:
        return self.config.state_dir / "window.npz"

    def decide_now(self) -> Prediction | None:
        """Decide on the current window right away (after a restart with a restored window)."""
        with self.lock:
            return self._decide() if self.buffer.full else None

    def reload_model(self) -> None:
        """Load the bundle again (after a model update or rollback); the window is rebuilt if it changed."""
        old = self.supervisor.bundle.manifest.input if self.supervisor.bundle else None
        buffer, aggregator = getattr(self, "buffer", None), getattr(self, "aggregator", None)
        self._load_model()
        assert self.supervisor.bundle is not None
        if old == self.supervisor.bundle.manifest.input and buffer is not None and aggregator is not None:
            self.buffer, self.aggregator = buffer, aggregator

    def switch_bundle(self, path: Path, probation: int, fallback_to: Path | None) -> None:
        """Run the bundle at ``path`` from the next cycle; roll back to ``fallback_to`` if it degrades
        within its first ``probation`` inferences. Call with :attr:`lock` held."""
        self.supervisor.bundle_dir = path
        self.reload_model()
        self._probation = probation
        self._fallback_bundle = fallback_to
        if self.supervisor.degraded:
            self._end_probation_with_rollback()

    def rollback(self, reason: str) -> UpdateOutcome:
        """Return to the previous bundle (call with :attr:`lock` held); raises when there is none."""
        store = BundleStore(self.config.state_dir)
        previous = store.previous()
        if previous is None or not previous.exists():
            raise BundleError("no previous bundle to roll back to on this device")
        failed = self.supervisor.bundle
        current = self.supervisor.bundle_dir
        store.activate(previous, current)
        self.supervisor.bundle_dir = previous
        self._probation = 0
        self.reload_model()
        restored = self.supervisor.bundle
        message = f"rolled back to {_describe(restored)} ({reason})"
        self.reporter.publish_alert(AlertContent(severity="warning", code="model-rollback", message=message))
        return UpdateOutcome(
            active=ModelInfo(name=restored.manifest.name, version=restored.manifest.version)
            if restored
            else ModelInfo(),
            previous=ModelInfo(name=failed.manifest.name, version=failed.manifest.version) if failed else None,
            message=message,
        )

    def _end_probation_with_rollback(self) -> None:
        reason = f"new model failed during its first inferences: {self.supervisor.degraded_reason}"
        logger.error(reason)
        self.rollback(reason)

    def apply_config(self, config: AgentConfig) -> str:
        """Take over loop, anomaly, channel and clock settings of a re-read config (lock held).

        Identity, sensors, runtime and bundle need a restart; a change there is refused by name.
        """
        fixed = ("site", "device", "sensors", "runtime", "bundle", "mqtt", "state_dir", "commands")
        changed = [name for name in fixed if getattr(config, name) != getattr(self.config, name)]
        if changed:
            raise ConfigError(f"changes to {changed} need an agent restart (systemctl restart gridedge-agent)")
        self.config = config
        policy = self.supervisor.policy
        policy.latency_budget_ms = config.loop.latency_budget_ms
        policy.latency_strikes = config.loop.latency_strikes
        policy.retry_every = config.loop.retry_every
        policy.recover_after = config.loop.recover_after
        return "loop, anomaly, channel and clock settings applied"

    def model_info(self) -> ModelInfo:
        """Name, version, runtime and precision of what is deciding now."""
        bundle, artefact = self.supervisor.bundle, self.supervisor.artefact
        if bundle is None:
            return ModelInfo()
        runtime = artefact.runtime if artefact and not self.supervisor.degraded else "baseline"
        return ModelInfo(
            name=bundle.manifest.name,
            version=bundle.manifest.version,
            runtime=runtime,
            precision=artefact.precision if artefact and not self.supervisor.degraded else None,
        )

    def _announce(self) -> None:
        """Publish the state when it changes; entering "degraded" also raises one alert."""
        state = "degraded" if self.supervisor.degraded else "online"
        if state == self._state:
            return
        reason = self.supervisor.degraded_reason
        self.reporter.publish_status(state, reason, self.model_info())  # type: ignore[arg-type]
        if state == "degraded":
            self.reporter.publish_alert(
                AlertContent(
                    severity="critical",
                    code="model-fallback",
                    message=f"model replaced by the baseline predictor: {reason}",
                )
            )
            notify(f"STATUS=degraded: {reason}")
        elif self._state == "degraded":
            self.reporter.publish_alert(
                AlertContent(severity="info", code="model-recovered", message="model trusted again")
            )
            notify("STATUS=online")
        logger.log(logging.WARNING if state == "degraded" else logging.INFO, "state %s (%s)", state, reason)
        self._state = state

    # ----------------------------------------------------------------------------------------------
    def read_sensors(self) -> tuple[float, dict[str, float]]:
        """Read every source once; returns the site timestamp and the merged channel values."""
        merged: dict[str, float] = {}
        readings: list[Reading] = []
        for source in self.sources:
            try:
                reading = source.read()
            except Exception as exc:  # a source that breaks its no-raise contract must not stop the loop
                logger.exception("sensor source %s raised", getattr(source, "name", source))
                self.health.sensor_errors += 1
                self._alert_once(f"source:{getattr(source, 'name', '?')}", f"sensor source failed: {exc}")
                continue
            readings.append(reading)
            self.health.sensor_errors += len(reading.device_errors)
            merged.update(reading.values())
            for name, cv in reading.channels.items():
                window = self._channel_windows.setdefault(name, _ChannelWindow(unit=cv.unit))
                window.add(cv.value if cv.usable else math.nan)
            self._watch_flags(reading)
        if self.config.clock.source == "reading" and readings:
            return readings[0].timestamp, merged
        return self._site_time(merged), merged

    def _site_time(self, values: dict[str, float]) -> float:
        """The time that labels this reading: the device clock, or the site clock a sensor serves.

        While the clock sensor is unreadable the site clock is carried forward on the monotonic clock
        from its last good value; jumping to the device clock instead would put readings into another
        period (or another year) and stall the window.
        """
        if self.config.clock.source != "sensor":
            return self._wall_clock()
        assert self.config.clock.channel is not None
        stamp = values.get(self.config.clock.channel, math.nan)
        now = time.monotonic()
        if math.isfinite(stamp) and stamp > 0 and self._plausible_clock(stamp):
            self._last_site_clock = (stamp, now)
            return stamp
        if self._last_site_clock is None:
            logger.warning("clock channel %s unreadable; using the device clock", self.config.clock.channel)
            return self._wall_clock()
        stamp, read_at = self._last_site_clock
        return stamp + (now - read_at)

    def _plausible_clock(self, stamp: float) -> bool:
        if self._last_site_clock is None:
            return True
        last, _ = self._last_site_clock
        plausible = last <= stamp <= last + self.config.clock.max_jump_s
        if not plausible:
            logger.warning("ignoring implausible site clock %.0f (last good %.0f)", stamp, last)
        return plausible

    def _watch_flags(self, reading: Reading) -> None:
        flagged = reading.flagged()
        for name, why in flagged.items():
            if name not in self._flagged_channels and "out_of_range" in why:
                self.reporter.publish_alert(
                    AlertContent(
                        severity="warning",
                        code="sensor-out-of-range",
                        message=f"{name} {why}; the value is kept away from the model",
                        channel=name,
                        value=_finite_or_none(reading.channels[name].value),
                    )
                )
        self._flagged_channels = {n for n, why in flagged.items() if "out_of_range" in why}

    def _alert_once(self, key: str, message: str) -> None:
        if key in self._flagged_channels:
            return
        self._flagged_channels.add(key)
        self.reporter.publish_alert(AlertContent(severity="warning", code="sensor-failure", message=message))

    # ----------------------------------------------------------------------------------------------
    def cycle(self) -> list[Prediction]:
        """One loop iteration: read, aggregate, decide for every closed sample period, report if due."""
        with self.lock:
            return self._cycle()

    def _cycle(self) -> list[Prediction]:
        self.health.cycles += 1
        timestamp, values = self.read_sensors()
        model_values = {c: self._model_value(c, values) for c in self.aggregator.channels}
        predictions = []
        closed = self.aggregator.add(timestamp, model_values)
        for sample in closed:
            self.buffer.append(sample)
            if self.buffer.full:
                prediction = self._decide()
                if prediction is not None:
                    predictions.append(prediction)
        if closed:
            self.buffer.save(self.window_path)
        if self.config.mqtt and self.config.mqtt.telemetry.enabled:
            self.reporter.publish_telemetry(
                TelemetryContent(
                    sample_ts=datetime.fromtimestamp(timestamp, UTC),
                    values={k: _finite_or_none(v) for k, v in values.items()},
                )
            )
        if time.monotonic() - self._summary_started >= self.summary_interval_s:
            self.publish_summary()
        return predictions

    def _model_value(self, channel: str, values: dict[str, float]) -> float:
        link = self.config.channel_link(channel)
        return values.get(link.source, math.nan) * link.scale + link.offset

    def _decide(self) -> Prediction | None:
        assert self.supervisor.pipeline is not None and self.supervisor.bundle is not None
        spec = self.supervisor.pipeline.spec
        raw, starts = self.buffer.window()
        derived = spec.derived_past_channels
        if derived:
            columns = [spec.past_channel_names.index(name) for name in derived]
            raw[:, columns] = derive_channels(derived, starts, spec.location)
        self._drift_samples.append(raw[-1])
        future_ts = future = None
        if spec.is_forecast:
            future_ts = (starts[-1] + spec.sample_period_s * np.arange(1, spec.horizon_steps + 1))[np.newaxis]
            if spec.known_future_channels:
                future = derive_channels(spec.future_channel_names, future_ts, spec.location)
        inputs = self.supervisor.pipeline.build(raw, starts, future, future_ts)
        if not inputs.valid[0]:
            # The model cannot see this window, but the site still needs a decision: the baseline
            # (with its last-resort fill) makes it, and the skip is counted with its reason.
            self.health.skipped_inferences += 1
            self._summary_skipped += 1
            self.health.last_skip_reason = inputs.reasons[0]
            logger.info("model skipped, baseline decides: %s", inputs.reasons[0])
            prediction = self.supervisor.baseline(raw, starts, inputs.reasons[0])
        else:
            prediction = self.supervisor.predict(inputs, raw, starts)
        self.latest_prediction = prediction
        self.health.inferences += 1
        if self.health.first_inference_s is None:
            self.health.first_inference_s = time.monotonic() - self._started_at
            logger.warning("first inference %.3f s after start (%s)", self.health.first_inference_s, prediction.source)
        if prediction.latency_ms is not None:
            self.health.latency.add(prediction.latency_ms)
            self._summary_latencies.append(prediction.latency_ms)
        if self._probation > 0:
            if self.supervisor.degraded and self._fallback_bundle is not None:
                self._end_probation_with_rollback()
                return prediction
            self._probation -= 1
        self._announce()
        if spec.is_forecast:
            self._record_forecast(prediction, int(starts[-1]))
        else:
            self._judge_anomaly(prediction, inputs.past, raw)
        return prediction

    def _record_forecast(self, prediction: Prediction, last_start: int) -> None:
        assert self.supervisor.pipeline is not None and self.supervisor.bundle is not None
        output = self.supervisor.bundle.manifest.output
        decoded = self.supervisor.pipeline.decode(prediction.output[0])
        step = self.supervisor.pipeline.spec.sample_period_s
        self.latest_forecasts = [
            Forecast(
                target=name,
                unit=unit,
                origin=datetime.fromtimestamp(last_start + step, UTC),
                step_s=step,
                values=[_finite_or_none(v) for v in decoded[:, i]],
            )
            for i, (name, unit) in enumerate(zip(output.target_channels, output.target_units, strict=True))
        ]

    def _judge_anomaly(self, prediction: Prediction, past: NDArray[np.float32], raw: NDArray[np.float32]) -> None:
        assert self.supervisor.bundle is not None and self.supervisor.pipeline is not None
        manifest = self.supervisor.bundle.manifest
        anomaly = manifest.output.anomaly
        threshold = anomaly.threshold if anomaly else None
        target = raw[:, manifest.input.past_channel_names.index(manifest.input.target_channels[0])]
        detector: str = prediction.source
        if prediction.source == "model" and anomaly is not None:
            targets = [manifest.input.past_channel_names.index(t) for t in manifest.input.target_channels]
            score = float(reconstruction_scores(past[..., targets], prediction.output, anomaly.score_steps)[0])
            over = score > anomaly.threshold
            if not over and anomaly.stale_run_steps is not None:
                # The bundle's detector includes the stale rule: a frozen sensor the model reconstructs well.
                over = bool(stale_value_flags(target, anomaly.stale_run_steps)[-1])
                detector = "stale-rule" if over else detector
        else:
            score = math.nan
            over = bool(
                rolling_zscore_flags(target, len(target) - 1, FALLBACK_Z_THRESHOLD)[-1]
                or stale_value_flags(target, FALLBACK_STALE_STEPS)[-1]
            )
        self.latest_anomaly = AnomalyVerdict(score=_finite_or_none(score), over=over, detector=detector)
        self._anomaly_windows += 1
        self._anomaly_count += int(over)
        if math.isfinite(score):
            self._max_score = score if self._max_score is None else max(self._max_score, score)
        self._threshold = threshold
        self._over_threshold = self._over_threshold + 1 if over else 0
        self._under_threshold = 0 if over else self._under_threshold + 1
        if not self.anomaly_active and self._over_threshold >= self.config.anomaly.raise_after:
            self.anomaly_active = True
            self.reporter.publish_alert(
                AlertContent(
                    severity="warning",
                    code="anomaly",
                    message=f"anomalous behaviour of {list(manifest.input.target_channels)} "
                    f"({detector} detector)",
                    channel=manifest.input.target_channels[0],
                    value=_finite_or_none(score),
                    threshold=threshold,
                )
            )
        elif self.anomaly_active and self._under_threshold >= self.config.anomaly.clear_after:
            self.anomaly_active = False
            self.reporter.publish_alert(
                AlertContent(severity="info", code="anomaly-cleared", message="behaviour back to normal")
            )

    # ----------------------------------------------------------------------------------------------
    def _reset_summary_window(self) -> None:
        self._summary_started = time.monotonic()
        self._summary_start_utc = datetime.now(UTC)
        self._channel_windows: dict[str, _ChannelWindow] = {}
        self._summary_latencies: list[float] = []
        self._summary_skipped = 0
        self._drift_samples: list[NDArray[np.float32]] = []
        self._anomaly_windows = 0
        self._anomaly_count = 0
        self._max_score = None
        self._threshold = None

    def summary(self) -> SummaryContent:
        """What happened since the last summary: channel aggregates, forecast, anomalies, latency, drift."""
        latencies = np.asarray(self._summary_latencies, dtype=np.float64)
        latency = LatencySummary(count=len(latencies))
        if len(latencies):
            p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
            latency = LatencySummary(
                count=len(latencies), p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=float(latencies.max())
            )
        is_anomaly_model = self.supervisor.bundle is not None and not self.supervisor.bundle.manifest.input.is_forecast
        return SummaryContent(
            window_start=self._summary_start_utc,
            window_end=datetime.now(UTC),
            channels={name: w.aggregate() for name, w in sorted(self._channel_windows.items())},
            forecasts=self.latest_forecasts,
            anomaly=AnomalyStats(
                windows=self._anomaly_windows,
                anomalies=self._anomaly_count,
                max_score=self._max_score,
                threshold=self._threshold,
            )
            if is_anomaly_model
            else None,
            model=self.model_info(),
            fallback_active=self.supervisor.degraded,
            latency=latency,
            drift=self._drift(),
            skipped_inferences=self._summary_skipped,
            health=HealthStats(
                cycles=self.health.cycles,
                overruns=self.health.overruns,
                sensor_errors=self.health.sensor_errors,
                latency_moving_average_ms=self.health.latency.moving_average_ms,
            ),
        )

    def _drift(self) -> dict[str, ChannelDrift]:
        """Mean shift (in training standard deviations) and spread ratio of each model input channel."""
        if not self._drift_samples or self.supervisor.pipeline is None:
            return {}
        samples = np.asarray(self._drift_samples, dtype=np.float64)
        stats = self.supervisor.pipeline.stats
        drift = {}
        for i, name in enumerate(self.aggregator.channels):
            column = samples[:, i][np.isfinite(samples[:, i])]
            j = stats.channels.index(name)
            if column.size == 0:
                drift[name] = ChannelDrift()
                continue
            z_mean = (column.mean() - stats.mean[j]) / stats.std[j]
            ratio = column.std() / stats.std[j] if column.size > 1 else None
            drift[name] = ChannelDrift(z_mean=float(z_mean), std_ratio=None if ratio is None else float(ratio))
        return drift

    def publish_summary(self) -> None:
        """Send the summary of the period now ending and start a new period."""
        self.reporter.publish_summary(self.summary())
        self._reset_summary_window()

    # ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Cycle at the configured cadence until SIGTERM/SIGINT, ``stop()`` or ``loop.max_cycles``."""
        cadence = self.config.loop.cadence_s
        installed = self._install_signal_handlers()
        next_tick = time.monotonic()
        try:
            while not self.stop_event.is_set():
                try:
                    self.cycle()
                except Exception:  # the loop must outlive any bug in one cycle; the log keeps the trace
                    logger.exception("cycle %d failed", self.health.cycles)
                notify("WATCHDOG=1")
                if self.config.loop.max_cycles and self.health.cycles >= self.config.loop.max_cycles:
                    break
                next_tick += cadence
                now = time.monotonic()
                if now > next_tick:
                    missed = int((now - next_tick) // cadence) + 1
                    self.health.overruns += missed
                    next_tick += missed * cadence
                self.stop_event.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            if installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.close()

    def _install_signal_handlers(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False

        def stop(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: stopping after this cycle", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        return True

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the current cycle."""
        self.stop_event.set()

    def close(self) -> None:
        """Final summary, goodbye status, release sensors; pending reports stay in the outbox."""
        notify("STOPPING=1")
        try:
            self.publish_summary()
        finally:
            for source in self.sources:
                source.close()
            self.reporter.close()


def _describe(bundle: Bundle | None) -> str:
    return f"{bundle.manifest.name} {bundle.manifest.version}" if bundle else "no bundle"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
