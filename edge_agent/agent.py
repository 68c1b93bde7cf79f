"""The on-device agent: sensors -> sample window -> model (or fallback) -> decisions -> reports.

:class:`Agent` only composes parts that each own one job (and their own state):

* :class:`~edge_agent.sensing.SensorSweeper` reads every source, with one alert latch per sensor concern;
* :class:`~edge_agent.site_clock.SiteClock` labels each sweep with the site's time;
* :class:`~edge_agent.stall.DecisionStallWatch` alerts once when no sample period closes any more;
* :class:`~edge_agent.decisions.DecisionStep` keeps the window and decides on it (forecast, or anomaly
  verdict with hysteresis through :class:`~edge_agent.decisions.AnomalyJudge`);
* :class:`~edge_agent.summary.PeriodicReports` sends summaries (aggregates, latency, drift) and telemetry;
* :class:`~edge_agent.model_manager.ModelManager` owns the supervised model, the bundle store, probation and
  rollback, and :class:`~edge_agent.model_manager.ModelAnnouncer` publishes its state;
* :class:`~edge_agent.planning.cycle.PlanningCycle` (when ``planning`` is configured) plans the battery,
  generator and shedding every planning interval, reports the plan and writes the setpoints allowed;
* :class:`~edge_agent.scheduler.LoopScheduler` runs cycles on the cadence until SIGTERM.

The remote commands act on the :class:`AgentCore` (model manager, counters, config in force), which is
built before the reporter that carries those commands; the agent is built from it afterwards.
Nothing a sensor or the model does can stop the loop: failures become missing channels, fallbacks,
"degraded" status and alerts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.config import AgentConfig
from edge_agent.decisions import AnomalyJudge, AnomalyVerdict, DecisionStep
from edge_agent.health import AgentHealth, HealthReasons
from edge_agent.live_config import LiveConfig
from edge_agent.messages import AlertContent, Forecast, ModelInfo
from edge_agent.model_manager import ModelAnnouncer, ModelManager
from edge_agent.planning.cycle import PlanningCycle, build_planning
from edge_agent.reporting.base import Reporter
from edge_agent.scheduler import LoopScheduler
from edge_agent.sensing import SensorSweeper
from edge_agent.sensors.base import SensorSource
from edge_agent.sensors.registry import build_source
from edge_agent.site_clock import SiteClock
from edge_agent.stall import DecisionStallWatch
from edge_agent.state_files import take_quarantined
from edge_agent.summary import DEFAULT_SUMMARY_INTERVAL_S, PeriodicReports
from edge_agent.supervisor import ModelSupervisor, Prediction
from edge_agent.systemd import notify
from edge_agent.window import WindowBuffer

# Without a configured limit, a site is stalled after this many sample periods of its model without one.
STALL_PERIODS = 3


@dataclass(frozen=True)
class AgentCore:
    """What the agent shares with its remote commands: the config in force, the model manager, the counters."""

    live: LiveConfig
    models: ModelManager
    health: AgentHealth
    reasons: HealthReasons

    @classmethod
    def from_config(cls, config: AgentConfig) -> AgentCore:
        return cls(LiveConfig(config), ModelManager(config), AgentHealth(), HealthReasons())


class Agent:
    """One device's agent. Build it from a config, :meth:`start` it, then :meth:`run` or :meth:`cycle`.

    ``core`` is given when remote commands share it (see :func:`edge_agent.runner.build_agent`); it must
    have been built from ``config``.
    """

    def __init__(
        self,
        config: AgentConfig,
        reporter: Reporter,
        sources: list[SensorSource] | None = None,
        clock: Callable[[], float] = time.time,
        core: AgentCore | None = None,
    ) -> None:
        self.core = core or AgentCore.from_config(config)
        if self.core.live.config is not config:
            raise ValueError("the agent core was built from another config")
        self.reporter = reporter
        self.models = self.core.models
        self.health = self.core.health
        self._sources_given = sources
        self.sources: list[SensorSource] = []
        self.sensors = SensorSweeper([], reporter, self.health)
        self.site_clock = SiteClock(config.clock, clock)
        self.judge = AnomalyJudge(reporter, config.anomaly)
        self.decisions = DecisionStep(
            self.models, self.health, self.judge, config.state_dir / "window.npz", config.channel_link
        )
        interval = config.mqtt.summary_interval_s if config.mqtt else DEFAULT_SUMMARY_INTERVAL_S
        telemetry = bool(config.mqtt and config.mqtt.telemetry.enabled)
        at_step = bool(config.mqtt and config.mqtt.telemetry.model_step)
        self.reports = PeriodicReports(reporter, self.models, self.health, interval, telemetry, at_step)
        self.announcer = ModelAnnouncer(reporter, self.models, self.core.reasons)
        self.scheduler = LoopScheduler(config.loop, self.health)
        self.stall = DecisionStallWatch(reporter, self._stall_limit(), self.core.reasons)
        self.planning: PlanningCycle | None = build_planning(config, reporter, self.core.reasons)
        self.core.live.subscribe(self._take_settings)

    def _take_settings(self, config: AgentConfig) -> None:
        """A reloaded config: each part takes its section (sections needing a restart cannot change)."""
        self.models.supervisor.policy = config.loop
        self.scheduler.settings = config.loop
        self.judge.settings = config.anomaly
        self.site_clock.settings = config.clock
        self.decisions.channel_link = config.channel_link

    def _stall_limit(self) -> float:
        configured = self.config.loop.stall_after_s
        if configured is not None:
            return configured
        spec = self.models.spec
        return STALL_PERIODS * (spec.sample_period_s if spec else DEFAULT_SUMMARY_INTERVAL_S)

    @property
    def config(self) -> AgentConfig:
        return self.core.live.config

    @property
    def supervisor(self) -> ModelSupervisor:
        return self.models.supervisor

    @property
    def buffer(self) -> WindowBuffer | None:
        return self.decisions.buffer

    @property
    def latest_forecasts(self) -> list[Forecast]:
        return self.decisions.latest_forecasts

    @property
    def latest_prediction(self) -> Prediction | None:
        return self.decisions.latest_prediction

    @property
    def latest_anomaly(self) -> AnomalyVerdict | None:
        return self.decisions.latest_anomaly

    def model_info(self) -> ModelInfo:
        return self.models.model_info()

    def start(self) -> None:
        """Open the sensor sources, verify and self-test the model, announce the state, decide at once
        when a saved window is full."""
        self.health.started_at = time.monotonic()
        self.sources = self._sources_given or [build_source(c, self.config.base_dir) for c in self.config.sensors]
        self.sensors.sources = self.sources
        with self.models.lock:
            self.models.start()
            self.announcer.announce()
        notify("READY=1")
        self.decide_now()
        self._announce_quarantines()

    def decide_now(self) -> Prediction | None:
        """Decide on the current window right away (after a restart with a restored window)."""
        with self.models.lock:
            decision = self.decisions.decide_if_full()
            if decision is None:
                return None
            self.reports.add_decision(decision)
            self.announcer.announce()
            return decision.prediction

    def cycle(self) -> list[Prediction]:
        """One loop iteration: read, aggregate, decide for every closed sample period, report if due."""
        with self.models.lock:
            self.health.cycles += 1
            sweep = self.sensors.read()
            timestamp = self.site_clock.time_of(sweep)
            if self.site_clock.take_step():
                self.decisions.restart_periods(timestamp)
            closed_before = self.decisions.periods_closed
            decisions = self.decisions.add(timestamp, sweep.values)
            self._watch_progress(closed_before)
            for decision in decisions:
                self.reports.add_decision(decision)
            if self.decisions.aggregator is not None:
                aggregator = self.decisions.aggregator
                self.reports.add_steps(aggregator.channels, aggregator.period_s, self.decisions.last_closed)
            self._plan(timestamp, sweep.values)  # before announcing: a fallback shows in this cycle's status
            self.announcer.announce()
            self._announce_quarantines()
            self.reports.add_sweep(timestamp, sweep)
            if self.reports.due:
                self.publish_summary()
            return [decision.prediction for decision in decisions]

    def _plan(self, timestamp: float, values: dict[str, float]) -> None:
        """Feed the planning cycle; it solves on its own thread and the loop applies what it finished."""
        if self.planning is None:
            return
        self.planning.add_sweep(timestamp, values)
        self.planning.tick(timestamp, self.latest_forecasts, self.supervisor.degraded)

    def _announce_quarantines(self) -> None:
        """One alert per damaged state file that was set aside (outbox, window, sequence mark)."""
        for notice in take_quarantined():
            kept = f"kept as {notice.kept_as.name}" if notice.kept_as else "nothing was left to keep"
            message = f"{notice.original} was damaged ({notice.reason}); {kept}, a fresh one is in use"
            alert = AlertContent(severity="critical", code="state-file-quarantined", message=message)
            self.reporter.publish_alert(alert)

    def _watch_progress(self, closed_before: int) -> None:
        if self.decisions.periods_closed != closed_before:
            self.stall.progress()
            return
        self.stall.limit_s = self._stall_limit()
        rejected = self.site_clock.rejected
        self.stall.check(f"{rejected} site clock reading(s) refused as implausible" if rejected else "")

    def publish_summary(self) -> None:
        """Send the summary of the period now ending and start a new period."""
        self.reports.publish(self.latest_forecasts, self.planning.latest if self.planning else None)

    def run(self) -> None:
        """Cycle at the configured cadence until SIGTERM/SIGINT, :meth:`stop` or ``loop.max_cycles``."""
        try:
            self.scheduler.run(self.cycle)
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the current cycle."""
        self.scheduler.stop()

    def close(self) -> None:
        """Final summary, goodbye status, release sensors; pending reports stay in the outbox."""
        notify("STOPPING=1")
        try:
            self.announcer.announce()
            self.publish_summary()
        finally:
            self.sensors.close()
            if self.planning is not None:
                self.planning.close()
            self.reporter.close()
