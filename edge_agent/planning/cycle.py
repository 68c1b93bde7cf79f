"""The planning cycle of the agent: every ``interval_minutes`` of site time, a dispatch plan from what it knows.

Each sweep feeds the measured load and PV (kW) into a history on the site model's step (kept on disk
like the model's window, so a restart keeps its baseline) and the SoC reading with its time. When a plan
is due, the forecasts are put together (:mod:`edge_agent.planning.forecasts`): the bundle's forecast of a
channel where the config names its target, the seasonal baseline over the measured history otherwise.

The rule replaces the planner, with the reason in the summary, the device status (``planning`` concern)
and one alert, when the SoC reading is stale, when a channel forecast by the bundle comes from a degraded
model, when no forecast can be made, or when the solver fails. A plan that expects unserved critical load
or starts the generator raises an alert (once, until a plan without it clears it). With actuation
configured, :class:`~edge_agent.planning.actuation.SetpointWriter` writes what
:mod:`~edge_agent.planning.actuation` allows.

In the agent the solve (up to the solver's time limit, seconds on a Pi) runs on a thread of its own
(:meth:`PlanningCycle.tick`): the sensor loop keeps its cadence, and the finished plan is reported and
written by the loop's next cycle. A solve that has not returned long after its time limit is replaced by
the rule, so the site is never left without a decision. Between plans, a stopped generator is started
when the SoC falls to the backstop level (:func:`~edge_agent.planning.rule.backstop_start`), and the next
plan is made at once around it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from edge_agent.alerts import AlertLatch
from edge_agent.config import AgentConfig
from edge_agent.health import HealthReasons
from edge_agent.messages import MAX_PLAN_POINTS, PlanState
from edge_agent.messages import Forecast as ForecastMessage
from edge_agent.planning.actuation import RELEASE, SetpointWriter, WriteOutcome, setpoint_values
from edge_agent.planning.dispatch import ChannelForecast, DispatchPlan, Forecast, SiteState
from edge_agent.planning.forecasts import ForecastUnavailableError, baseline_forecast, from_message
from edge_agent.planning.planner import plan_dispatch
from edge_agent.planning.rule import backstop_start, rule_dispatch
from edge_agent.planning.settings import ForecastChannel, PlanningSection
from edge_agent.planning.site_model import SiteModel
from edge_agent.reporting.base import Reporter
from edge_agent.window import SampleAggregator, WindowBuffer

log = logging.getLogger(__name__)
CHANNELS = ("load_kw", "pv_kw")
HISTORY_FILE = "planning_window.npz"
STATUS_CONCERN = "planning"
# Below this a predicted unserved energy is rounding, not a warning.
UNSERVED_ALERT_KWH = 1e-3
# A background solve still running this many times past the solver's time limit (plus a floor for a slow
# device) is given up: the rule decides until it returns.
OVERDUE_FACTOR = 5.0
OVERDUE_FLOOR_S = 30.0


@dataclass(frozen=True)
class PlanRequest:
    """What one solve needs, taken on the loop's thread: the solve itself touches nothing else."""

    timestamp: float
    start: int
    state: SiteState
    forecast: Forecast


class BackgroundSolve:
    """One solve on a daemon thread: the loop polls :meth:`result` and never waits for it."""

    def __init__(self, solve: Callable[[], DispatchPlan], request: PlanRequest) -> None:
        self.request = request
        self.started = time.monotonic()
        self.error: BaseException | None = None
        self.superseded = False  # the rule stood in while it ran: its plan is dropped when it ends
        self._plan: DispatchPlan | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(solve,), name="planner", daemon=True)
        self._thread.start()

    def _run(self, solve: Callable[[], DispatchPlan]) -> None:
        try:
            self._plan = solve()
        except BaseException as exc:  # plan_dispatch catches solver errors; this is the thread's last guard
            log.exception("planner thread failed")
            self.error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> DispatchPlan | None:
        """The finished plan; None while the solver runs or when it failed (see :attr:`error`)."""
        return self._plan

    def wait(self, timeout_s: float) -> bool:
        """Block until the solve ends (tests and shutdown); True when it did."""
        return self._done.wait(timeout_s)

    def running_s(self) -> float:
        return time.monotonic() - self.started


class PlanningCycle:
    """History, SoC and plans of one site; :meth:`add_sweep` every cycle, :meth:`run` when :meth:`due`."""

    def __init__(
        self,
        section: PlanningSection,
        site: SiteModel,
        reporter: Reporter,
        reasons: HealthReasons,
        state_dir: Path,
        writer: SetpointWriter | None = None,
    ) -> None:
        self.section = section
        self.site = site
        self.reasons = reasons
        self.writer = writer
        self.step_s = round(site.step_minutes * 60)
        self.aggregator = SampleAggregator(CHANNELS, self.step_s)
        self.history = WindowBuffer(CHANNELS, section.history_days * 86_400 // self.step_s, self.step_s)
        self.history_path = state_dir / HISTORY_FILE
        self.history.restore(self.history_path)
        self.soc: float | None = None
        self.soc_at: float | None = None
        self.next_plan_at: float | None = None
        self.plan: DispatchPlan | None = None
        self.latest: PlanState | None = None
        self.plans = 0
        self.solving: BackgroundSolve | None = None
        self._generator_on = False
        self._generator_since: float | None = None
        self._shedding = False
        self._last_load_kw: float | None = None
        self._last_pv_kw: float | None = None
        self.unserved_latch = AlertLatch(reporter, "plan-unserved-critical", "plan-unserved-cleared", "critical")
        self.start_latch = AlertLatch(reporter, "plan-generator-start", "plan-generator-start-cleared", "warning")
        self.fallback_latch = AlertLatch(reporter, "plan-fallback", "plan-restored", "warning")
        self.backstop_latch = AlertLatch(reporter, "generator-backstop-start", "generator-backstop-cleared", "warning")

    def add_sweep(self, timestamp: float, values: dict[str, float]) -> None:
        """Take one sweep: load and PV into the history, the SoC with its time."""
        load = self.section.load.measured
        pv = self.section.pv.measured
        row = {
            "load_kw": load.convert(values.get(load.source, math.nan)),
            "pv_kw": pv.convert(values.get(pv.source, math.nan)),
        }
        self._last_load_kw = row["load_kw"] if math.isfinite(row["load_kw"]) else self._last_load_kw
        self._last_pv_kw = row["pv_kw"] if math.isfinite(row["pv_kw"]) else self._last_pv_kw
        closed = self.aggregator.add(timestamp, row)
        for sample in closed:
            self.history.append(sample)
        if closed:
            self.history.save(self.history_path)
        soc = self.section.soc.convert(values.get(self.section.soc.source, math.nan))
        if math.isfinite(soc):
            self.soc, self.soc_at = min(max(soc, 0.0), 1.0), timestamp

    def due(self, timestamp: float) -> bool:
        """True when the planning interval (site time) has passed since the last plan, or none was made."""
        return self.next_plan_at is None or timestamp >= self.next_plan_at

    def run(self, timestamp: float, forecasts: list[ForecastMessage], model_degraded: bool) -> PlanState:
        """Make the plan for now, report and (when configured) actuate it; never raises for bad inputs."""
        prepared = self.prepare(timestamp, forecasts, model_degraded)
        if isinstance(prepared, PlanRequest):
            return self.apply(self.solve(prepared), prepared.timestamp, soc_fresh=True)
        return self.apply(prepared, timestamp, soc_fresh=self._stale_reason(timestamp) is None)

    def tick(self, timestamp: float, forecasts: list[ForecastMessage], model_degraded: bool) -> PlanState | None:
        """The agent loop's call: apply a finished background solve, start the next one when due.

        Returns the plan state applied in this call, if any. The rule's plans (stale SoC, no forecast) are
        cheap and applied at once; a solve that overruns its time limit many times over is replaced by the
        rule until it returns.
        """
        applied: PlanState | None = None
        self._backstop(timestamp)
        solving = self.solving
        if solving is not None:
            if solving.done and solving.superseded:
                self.solving, self.next_plan_at = None, None  # made for a moment the rule has taken: plan anew
            elif solving.done:
                self.solving = None
                plan = solving.result()
                if plan is None:
                    reason = f"planner thread failed: {solving.error!r}"
                    plan = rule_dispatch(self.site, solving.request.state, self._starts(timestamp), reason=reason)
                applied = self._apply_finished(plan, solving.request, timestamp, model_degraded)
            elif solving.running_s() > self.overdue_s and self.due(timestamp):
                solving.superseded = True
                self.next_plan_at = self._next_slot(timestamp)
                reason = f"the solver has not returned for {solving.running_s():.0f} s"
                stand_in = rule_dispatch(self.site, self._state(timestamp), self._starts(timestamp), reason=reason)
                return self.apply(stand_in, timestamp, soc_fresh=self._stale_reason(timestamp) is None)
        if self.solving is None and self.due(timestamp):
            prepared = self.prepare(timestamp, forecasts, model_degraded)
            if isinstance(prepared, PlanRequest):
                self.solving = BackgroundSolve(partial(self.solve, prepared), prepared)
            else:
                applied = self.apply(prepared, timestamp, soc_fresh=self._stale_reason(timestamp) is None)
        return applied

    def _backstop(self, timestamp: float) -> None:
        """Start a stopped generator at the backstop SoC, then plan at once around it running.

        A solve in flight was made with the generator stopped: it is dropped (it would stop it again).
        """
        if self._stale_reason(timestamp) is not None or not backstop_start(self.site, self._state(timestamp)):
            return
        self._generator_on, self._generator_since = True, timestamp
        if self.solving is not None:
            self.solving.superseded = True
            self.solving = None
        self.next_plan_at = None
        if self.writer is not None:
            self.writer.apply({"generator_run": 1.0})
        soc, level = self.soc or 0.0, self.site.backstop_soc_fraction
        message = f"SoC {soc:.0%} reached the backstop level {level:.0%}: generator started, replanning around it"
        self.backstop_latch.raise_once("plan", message, value=soc)

    def _apply_finished(
        self, plan: DispatchPlan, request: PlanRequest, timestamp: float, model_degraded: bool
    ) -> PlanState:
        """Apply a background plan unless what it was made from went bad while it was solved."""
        stale = self._stale_reason(timestamp)
        follows_model = any(c.forecast_target is not None for c in (self.section.load, self.section.pv))
        if stale is None and not (model_degraded and follows_model):
            return self.apply(plan, request.timestamp, soc_fresh=True)
        reason = stale or "model degraded while the plan was solved: its forecast is not followed"
        stand_in = rule_dispatch(self.site, self._state(timestamp), self._starts(timestamp), reason=reason)
        return self.apply(stand_in, timestamp, soc_fresh=stale is None)

    @property
    def overdue_s(self) -> float:
        """How long a background solve may run before the rule stands in."""
        return max(OVERDUE_FACTOR * self.site.planner.time_limit_s, OVERDUE_FLOOR_S)

    def prepare(
        self, timestamp: float, forecasts: list[ForecastMessage], model_degraded: bool
    ) -> DispatchPlan | PlanRequest:
        """Everything a plan needs, taken now: the rule's plan when it replaces the planner, else a solve request."""
        self.next_plan_at = self._next_slot(timestamp)
        start = int(timestamp // self.step_s) * self.step_s
        state = self._state(timestamp)
        starts = self._starts(timestamp)
        stale = self._stale_reason(timestamp)
        if stale is not None:
            return rule_dispatch(self.site, state, starts, reason=stale)
        forecast, reason = self._forecast(starts, forecasts, model_degraded)
        if forecast is None:
            return rule_dispatch(self.site, state, starts, reason=reason or "no forecast")
        return PlanRequest(timestamp=timestamp, start=start, state=state, forecast=forecast)

    def solve(self, request: PlanRequest) -> DispatchPlan:
        """The dispatch plan of ``request``: touches nothing of the cycle, so it may run on another thread."""
        return plan_dispatch(self.site, request.state, request.forecast, request.start)

    def apply(self, plan: DispatchPlan, timestamp: float, soc_fresh: bool) -> PlanState:
        """Take ``plan`` (made at ``timestamp``) into force: remember it, actuate, report."""
        self.plan = plan
        self.plans += 1
        was_on = self._generator_on
        self._remember(plan, timestamp)
        outcome = self._actuate(plan, soc_fresh)
        self._report(plan, was_on)
        if soc_fresh and self.soc is not None and self.soc > self.site.backstop_soc_fraction:
            self.backstop_latch.clear_once("plan", "SoC above the backstop level again")
        self.latest = plan_state(plan, self.soc if soc_fresh else None, outcome)
        return self.latest

    def _next_slot(self, timestamp: float) -> float:
        interval_s = self.section.interval_minutes * 60.0
        return (math.floor(timestamp / interval_s) + 1) * interval_s

    def _starts(self, timestamp: float) -> np.ndarray:
        start = int(timestamp // self.step_s) * self.step_s
        return start + self.step_s * np.arange(self.site.planner.horizon_steps, dtype=np.int64)

    def _state(self, timestamp: float) -> SiteState:
        steps = 10**6 if self._generator_since is None else int((timestamp - self._generator_since) // self.step_s) + 1
        # Without a usable SoC the rule plans from the lowest one: it assumes the worst.
        soc = self.soc if self.soc is not None else self.site.battery.soc_min_fraction
        return SiteState(
            soc_fraction=soc,
            generator_on=self._generator_on,
            generator_steps_in_state=steps,
            shedding=self._shedding,
            measured_load_kw=self._last_load_kw,
            measured_pv_kw=self._last_pv_kw,
        )

    def _stale_reason(self, timestamp: float) -> str | None:
        if self.soc_at is None:
            return f"no SoC reading from {self.section.soc.source} yet"
        age = timestamp - self.soc_at
        if age > self.section.soc_max_age_s:
            limit = self.section.soc_max_age_s
            return f"SoC reading of {self.section.soc.source} is stale ({age:.0f} s old, limit {limit:g} s)"
        return None

    def _forecast(
        self, starts: np.ndarray, forecasts: list[ForecastMessage], model_degraded: bool
    ) -> tuple[Forecast | None, str | None]:
        """Load and PV forecasts on the plan's steps, or None with the reason."""
        values, history_starts = self.history.window()
        filled = len(self.history)
        channels: list[ChannelForecast] = []
        settings = self.site.planner
        levels = sorted({settings.stress_load_quantile, settings.stress_pv_quantile, 0.1, 0.9})
        for column, (name, config) in enumerate((("load", self.section.load), ("pv", self.section.pv))):
            baseline: ChannelForecast | None = None
            baseline_reason = ""
            try:
                kept = slice(values.shape[0] - filled, None)
                baseline = baseline_forecast(values[kept, column], history_starts[kept], self.step_s, starts, levels)
            except ForecastUnavailableError as exc:
                baseline_reason = f"{name} baseline: {exc}"
            try:
                channels.append(self._channel(name, config, starts, forecasts, model_degraded, baseline))
            except ForecastUnavailableError as exc:
                return None, f"{exc}; {baseline_reason}" if baseline_reason else str(exc)
        return Forecast(timestamps_utc=starts, load_kw=channels[0], pv_kw=channels[1]), None

    def _channel(
        self,
        name: str,
        config: ForecastChannel,
        starts: np.ndarray,
        forecasts: list[ForecastMessage],
        model_degraded: bool,
        baseline: ChannelForecast | None,
    ) -> ChannelForecast:
        target = config.forecast_target
        if target is None:
            if baseline is None:
                raise ForecastUnavailableError(f"no {name} forecast")
            return baseline
        if model_degraded:
            raise ForecastUnavailableError(f"model degraded: its {name} forecast ({target}) is not followed")
        message = next((f for f in forecasts if f.target == target), None)
        if message is None:
            raise ForecastUnavailableError(f"the bundle has not forecast {target} yet")
        return from_message(message, starts, baseline)

    def _remember(self, plan: DispatchPlan, timestamp: float) -> None:
        """Carry the generator's run/rest time and the shedding latch into the next plan."""
        on = bool(plan.generator_on[0])
        if on != self._generator_on or self._generator_since is None:
            self._generator_on, self._generator_since = on, timestamp
        self._shedding = float(plan.shed_kw[0]) > 1e-6

    def _actuate(self, plan: DispatchPlan, soc_fresh: bool) -> WriteOutcome:
        writer = self.writer
        if writer is None:
            return WriteOutcome("advisory", None)
        if plan.source == "planner":
            return writer.apply(setpoint_values(plan, self.site, self.soc))
        if writer.section.on_fallback == "nothing":
            return WriteOutcome("held", f"rule in force ({plan.reason}); on_fallback is nothing")
        values = setpoint_values(plan, self.site, self.soc) if soc_fresh else {}
        values.pop("battery_power", None)
        return writer.apply({"battery_power": RELEASE, **values})

    def _report(self, plan: DispatchPlan, generator_was_on: bool) -> None:
        if plan.source == "planner":
            self.reasons.clear(STATUS_CONCERN)
            self.fallback_latch.clear_once("plan", "the planner is in force again")
        else:
            reason = f"rule replaces the planner: {plan.reason}"
            self.reasons.set(STATUS_CONCERN, reason)
            self.fallback_latch.raise_once("plan", reason)
        unserved_kwh = float(plan.unserved_kw.sum() * plan.step_hours)
        if unserved_kwh > UNSERVED_ALERT_KWH:
            first = int(np.flatnonzero(plan.unserved_kw > 0)[0])
            self.unserved_latch.raise_once(
                "plan",
                f"the plan expects {unserved_kwh:.2f} kWh of critical load unserved, from {_clock(plan, first)}",
                value=unserved_kwh,
            )
        else:
            self.unserved_latch.clear_once("plan", "the plan serves all critical load again")
        starts = np.flatnonzero(plan.generator_starts)
        if generator_was_on:
            starts = starts[starts > 0]  # running already: step 0 is no start
        if starts.size:
            self.start_latch.raise_once("plan", f"the plan starts the generator at {_clock(plan, int(starts[0]))}")
        else:
            self.start_latch.clear_once("plan", "the plan no longer starts the generator")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_planning(config: AgentConfig, reporter: Reporter, reasons: HealthReasons) -> PlanningCycle | None:
    """The planning cycle a config asks for (None without a ``planning`` section)."""
    section = config.planning
    if section is None:
        return None
    site = section.resolved_site_model(config.base_dir)
    writer = None
    if section.actuation is not None:
        writer = SetpointWriter(section.actuation, list(config.sensors), config.base_dir, reporter)
    return PlanningCycle(section, site, reporter, reasons, config.state_dir, writer)


def _clock(plan: DispatchPlan, step: int) -> str:
    return datetime.fromtimestamp(int(plan.timestamps_utc[step]), UTC).strftime("%Y-%m-%d %H:%M UTC")


def plan_state(plan: DispatchPlan, soc: float | None, outcome: WriteOutcome) -> PlanState:
    """The summary's view of a plan: next-step setpoints, predictions and a SoC trajectory of <= 48 points."""
    stride = max(1, math.ceil(plan.steps / MAX_PLAN_POINTS))
    trajectory = [round(float(v), 4) for v in plan.soc_fraction[stride - 1 :: stride]]
    h = plan.step_hours
    stress = plan.stress_unserved_kw
    return PlanState(
        source="planner" if plan.source == "planner" else "rule",
        reason=plan.reason,
        made_at=datetime.fromtimestamp(int(plan.timestamps_utc[0]), UTC),
        step_s=h * 3600.0,
        steps=plan.steps,
        solver_status=plan.status if plan.source == "planner" else None,
        solve_time_ms=round(plan.solve_time_s * 1000.0, 1) if plan.source == "planner" else None,
        soc=soc,
        battery_setpoint_kw=round(float(plan.battery_charge_kw[0] - plan.battery_discharge_kw[0]), 4),
        generator_on=bool(plan.generator_on[0]),
        shed_kw=round(float(plan.shed_kw[0]), 4),
        generator_starts=int(plan.generator_starts.sum()),
        unserved_critical_kwh=round(float(plan.unserved_kw.sum() * h), 4),
        stress_unserved_critical_kwh=None if stress is None else round(float(stress.sum() * h), 4),
        soc_trajectory=trajectory,
        soc_trajectory_step_s=h * 3600.0 * stride,
        actuation=outcome.state,
        actuation_detail=outcome.detail,
    )
