"""Closed-loop evaluation of the planner on replayed real data (central side: it never runs on a device).

One off-grid site is advanced step by step with :func:`edge_agent.planning.dispatch.balance_step` on
*actual* W1 household load (kW) and W2 PV (system 50, scaled to the site's ``pv_rated_kw``), under three
strategies that share that physics:

* ``plan``: every ``cadence_steps`` the planner solves 24 h ahead on a forecast, the first
  ``cadence_steps`` of its generator schedule and shedding are applied, the battery balances the rest;
  it replans at once when the SoC falls below the plan's bad-day trajectory (:func:`off_track`) or the
  running generator was pushed under its minimum load (a full battery), and a
  stopped generator starts at the backstop SoC whatever the plan says (:func:`backstop_start`), as the
  agent does between plans;
* ``rule``: the forecast-free fallback rule decides every step from the measured SoC;
* ``perfect``: the planner on the actual future (perfect foresight), same cadence: the bound the forecast
  costs us against.

Alignment of the two series (different places and years): each replayed day of the load file (its local
clock, UTC+1) is paired with the same month and day of the PV file (July–December 2012, January–June
2013, its local standard time MST), step by step on the local clock. So midday meets midday and the
season matches; the PV file's DST trap is already undone in ``data/`` (see data/README.md).

Forecasts: the plan uses the device's own baseline, which needs no training — seasonal naive (the same
step yesterday) for load and PV, with empirical P10/P90 from its own errors over the previous
``history_days`` days, by hour of day (:func:`edge_agent.planning.forecasts.baseline_forecast`). Any
object with a ``forecast(step, horizon)`` method (the :class:`Forecaster` protocol) plugs in instead,
e.g. a bundle's quantile model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import ConfigError
from edge_agent.planning.dispatch import (
    ChannelForecast,
    DispatchPlan,
    Forecast,
    SiteState,
    StepOutcome,
    balance_step,
    limit_violations,
    next_state,
    plan_from_outcomes,
)
from edge_agent.planning.forecasts import baseline_forecast
from edge_agent.planning.planner import plan_dispatch
from edge_agent.planning.rule import backstop_start, rule_decision
from edge_agent.planning.site_model import SiteModel
from gridedge.datafiles import read_series

STEPS_PER_DAY = 96
STEP_S = 900
LOAD_UTC_OFFSET_S = 3600  # the UCI clock, CET all year (data/README.md)
PV_UTC_OFFSET_S = -7 * 3600  # system 50 in local standard time (MST)
PV_SYSTEM50_KW = 3.4  # the array's AC rating, to scale it to the site's pv_rated_kw
QUANTILES = (0.1, 0.9)
STRATEGIES = ("plan", "rule", "perfect")
SOC_TRACKING_MARGIN = 0.02


@dataclass(frozen=True)
class Replay:
    """Aligned actual load and PV (kW) on the load's UTC clock; ``first`` is the first evaluated step."""

    timestamps_utc: NDArray[np.int64]
    load_kw: NDArray[np.float64]
    pv_kw: NDArray[np.float64]
    first: int
    steps: int


def _pv_date(day: date) -> date:
    year = 2012 if day.month >= 7 else 2013
    return date(year, day.month, min(day.day, 28) if day.month == 2 else day.day)


def load_replay(start: date, days: int, pv_rated_kw: float, history_days: int = 8) -> Replay:
    """``days`` of aligned real data from ``start`` (load calendar), with history before and a day after."""
    if days < 1:
        raise ConfigError(f"days must be >= 1, got {days}")
    load_t, load_cols = read_series("w1_load_uci_15min")
    pv_t, pv_cols = read_series("w2_pv_system50_15min")
    pv_w = pv_cols["ac_power"].astype(np.float64)
    good = np.isfinite(pv_w)
    pv_w = np.interp(np.arange(pv_w.size), np.flatnonzero(good), pv_w[good])  # 454 short gaps in the source
    first_day = start - timedelta(days=history_days)
    loads, pvs, stamps = [], [], []
    for offset in range(history_days + days + 1):
        day = first_day + timedelta(days=offset)
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        i = int(np.searchsorted(load_t, midnight - LOAD_UTC_OFFSET_S))
        pv_day = _pv_date(day)
        pv_midnight = int(datetime(pv_day.year, pv_day.month, pv_day.day, tzinfo=UTC).timestamp())
        j = int(np.searchsorted(pv_t, pv_midnight - PV_UTC_OFFSET_S))
        if i + STEPS_PER_DAY > load_t.size or load_t[i] != midnight - LOAD_UTC_OFFSET_S:
            raise ConfigError(f"no W1 load for {day} (the file covers 2007-01-01 to 2008-12-31, history included)")
        if j + STEPS_PER_DAY > pv_t.size or pv_t[j] != pv_midnight - PV_UTC_OFFSET_S:
            raise ConfigError(f"no W2 PV for {pv_day} (paired with {day})")
        stamps.append(load_t[i : i + STEPS_PER_DAY])
        loads.append(load_cols["Global_active_power"][i : i + STEPS_PER_DAY])
        pvs.append(pv_w[j : j + STEPS_PER_DAY])
    pv_kw = np.clip(np.concatenate(pvs) / 1000.0 * pv_rated_kw / PV_SYSTEM50_KW, 0.0, pv_rated_kw)
    return Replay(
        timestamps_utc=np.concatenate(stamps).astype(np.int64),
        load_kw=np.concatenate(loads).astype(np.float64),
        pv_kw=pv_kw,
        first=history_days * STEPS_PER_DAY,
        steps=days * STEPS_PER_DAY,
    )


class Forecaster(Protocol):
    """Anything that forecasts load and PV for ``horizon`` steps from step ``step`` of a replay."""

    def forecast(self, step: int, horizon: int) -> Forecast: ...


@dataclass
class SeasonalNaiveForecaster:
    """The device's baseline (:func:`edge_agent.planning.forecasts.baseline_forecast`) on the replay.

    Yesterday's same step as P50; P10/P90 from yesterday-vs-today errors of the last ``history_days`` days
    by hour of day. Uses only data before ``step`` (what a device would have measured): an honest forecast.
    """

    replay: Replay
    history_days: int = 7

    def _channel(self, series: NDArray[np.float64], step: int, horizon: int) -> ChannelForecast:
        past = slice(max(0, step - (self.history_days + 1) * STEPS_PER_DAY), step)
        targets = self.replay.timestamps_utc[step : step + horizon]
        return baseline_forecast(series[past], self.replay.timestamps_utc[past], STEP_S, targets, QUANTILES)

    def forecast(self, step: int, horizon: int) -> Forecast:
        return Forecast(
            timestamps_utc=self.replay.timestamps_utc[step : step + horizon],
            load_kw=self._channel(self.replay.load_kw, step, horizon),
            pv_kw=self._channel(self.replay.pv_kw, step, horizon),
        )


@dataclass
class PerfectForecaster:
    """The actual future: the perfect-foresight bound."""

    replay: Replay

    def forecast(self, step: int, horizon: int) -> Forecast:
        window = slice(step, step + horizon)
        return Forecast(
            timestamps_utc=self.replay.timestamps_utc[window],
            load_kw=ChannelForecast(p50=self.replay.load_kw[window]),
            pv_kw=ChannelForecast(p50=self.replay.pv_kw[window]),
        )


@dataclass
class ClosedLoopResult:
    """What one strategy did over the replay: the step trace, its totals and how the plans went."""

    strategy: str
    trace: DispatchPlan
    totals: dict[str, float]
    violations: list[str]
    solve_times_s: list[float] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    replans_on_deviation: int = 0
    backstop_starts: int = 0
    # The forecast in force at each step (P10, P50, P90 of load and PV), for the plot.
    used_forecast: dict[str, NDArray[np.float64]] = field(default_factory=dict)


def run_closed_loop(
    site: SiteModel,
    replay: Replay,
    strategy: str,
    cadence_steps: int = 4,
    forecaster: Forecaster | None = None,
    progress: Callable[[int], None] | None = None,
) -> ClosedLoopResult:
    """Advance the site through the replay under ``strategy`` (plan, rule or perfect); see the module doc."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "plan" and forecaster is None:
        forecaster = SeasonalNaiveForecaster(replay)
    if strategy == "perfect":
        forecaster = PerfectForecaster(replay)
    horizon = site.planner.horizon_steps
    start = SiteState(soc_fraction=site.battery.initial_soc_fraction)
    state = start
    outcomes: list[StepOutcome] = []
    on_flags: list[bool] = []
    result = ClosedLoopResult(strategy=strategy, trace=None, totals={}, violations=[])  # type: ignore[arg-type]
    bands = {
        name: np.full(replay.steps, np.nan)
        for name in ("load_p10", "load_p50", "load_p90", "pv_p10", "pv_p50", "pv_p90")
    }
    plan: DispatchPlan | None = None
    planned_at = 0
    low_kw = site.generator.min_power_kw if site.generator else 0.0
    underloaded = False
    for n in range(replay.steps):
        k = replay.first + n
        measured = SiteState(
            soc_fraction=state.soc_fraction,
            generator_on=state.generator_on,
            generator_steps_in_state=state.generator_steps_in_state,
            shedding=state.shedding,
            measured_load_kw=float(replay.load_kw[k - 1]),
            measured_pv_kw=float(replay.pv_kw[k - 1]),
        )
        if strategy == "rule":
            decision = rule_decision(site, measured)
            on, setpoint = decision.generator_on, decision.generator_setpoint_kw
            shed = site.loads.sheddable_fraction * replay.load_kw[k] if decision.shedding else 0.0
            shedding = decision.shedding
        else:
            j = n - planned_at
            if plan is None or j >= cadence_steps or off_track(plan, j, state.soc_fraction) or underloaded:
                j, planned_at = 0, n
                assert forecaster is not None
                forecast = forecaster.forecast(k, horizon)
                plan = plan_dispatch(site, measured, forecast, int(replay.timestamps_utc[k]))
                result.solve_times_s.append(plan.solve_time_s)
                if plan.source != "planner":
                    result.fallbacks.append(f"step {n}: {plan.reason}")
                _record_bands(bands, forecast, n, min(cadence_steps, replay.steps - n))
                if n % cadence_steps:
                    result.replans_on_deviation += 1
            assert plan is not None
            on, setpoint, shed = bool(plan.generator_on[j]), float(plan.generator_kw[j]), float(plan.shed_kw[j])
            shedding = shed > 0
            if not on and backstop_start(site, measured):
                assert site.generator is not None
                on, setpoint, plan = True, site.generator.rated_power_kw, None  # next step replans around it
                result.backstop_starts += 1
        outcome = balance_step(
            site, state.soc_fraction, float(replay.load_kw[k]), float(replay.pv_kw[k]), on, setpoint, shed
        )
        outcomes.append(outcome)
        on_flags.append(on)
        # A running generator pushed under its minimum load (battery full, PV curtailed): replan at once.
        underloaded = on and outcome.generator_kw < low_kw - 1e-6
        state = next_state(state, outcome, on, shedding)
        if progress is not None:
            progress(1)
    window = slice(replay.first, replay.first + replay.steps)
    trace = plan_from_outcomes(
        replay.timestamps_utc[window],
        site.step_hours,
        replay.load_kw[window],
        replay.pv_kw[window],
        np.asarray(on_flags, dtype=bool),
        outcomes,
        source="measured",
        status=strategy,
    )
    result.trace = trace
    result.totals = trace.totals(site)
    result.totals["generator_low_load_steps"] = float(np.sum(trace.generator_on & (trace.generator_kw < low_kw - 1e-6)))
    result.totals["unserved_critical_kwh"] = result.totals.pop("unserved_kwh")
    if site.generator is not None:
        # Strategies end with different SoC: price the energy left behind (or borrowed) at what the generator
        # would pay to store it, so fuel is compared on equal terms.
        borrowed_kwh = (start.soc_fraction - result.totals["final_soc_fraction"]) * site.battery.capacity_kwh
        per_stored_kwh = site.generator.fuel_cost_per_kwh / site.battery.charge_efficiency
        result.totals["fuel_cost_soc_adjusted"] = result.totals["fuel_cost"] + borrowed_kwh * per_stored_kwh
    result.totals["shed_cost"] = result.totals["shed_kwh"] * site.loads.shed_penalty_per_kwh
    result.violations = limit_violations(trace, site, start, enforce_min_load=False)
    if strategy != "rule":
        result.used_forecast = bands
    return result


def off_track(plan: DispatchPlan, step: int, soc_fraction: float) -> bool:
    """Event-triggered replanning: the measured SoC fell below what the plan expected even on the bad day.

    Between two plans the battery absorbs the forecast's errors; when they exceed the stress scenario (or,
    without quantiles, the nominal SoC by more than SOC_TRACKING_MARGIN), waiting for the next cycle would
    spend the reserve blind, so the controller replans at once.
    """
    expected = plan.stress_soc_fraction if plan.stress_soc_fraction is not None else plan.soc_fraction
    return step > 0 and soc_fraction < float(expected[step - 1]) - SOC_TRACKING_MARGIN


def _record_bands(bands: dict[str, NDArray[np.float64]], forecast: Forecast, n: int, count: int) -> None:
    for channel, name in ((forecast.load_kw, "load"), (forecast.pv_kw, "pv")):
        bands[f"{name}_p50"][n : n + count] = channel.p50[:count]
        for q, label in ((0.1, "p10"), (0.9, "p90")):
            values = channel.quantiles.get(q)
            if values is not None:
                bands[f"{name}_{label}"][n : n + count] = values[:count]


def compare(
    site: SiteModel,
    replay: Replay,
    cadence_steps: int = 4,
    forecaster: Forecaster | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, ClosedLoopResult]:
    """Run the three strategies on the same replay; ``progress(strategy, steps_done)`` reports as it goes."""
    results = {}
    for strategy in STRATEGIES:
        started = time.perf_counter()

        def tick(steps: int, name: str = strategy) -> None:
            if progress is not None:
                progress(name, steps)

        results[strategy] = run_closed_loop(site, replay, strategy, cadence_steps, forecaster, tick)
        results[strategy].totals["wall_time_s"] = time.perf_counter() - started
    return results


def summary(results: dict[str, ClosedLoopResult]) -> dict[str, Any]:
    """JSON-ready comparison: totals per strategy, solve-time percentiles, fallbacks and limit checks."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        times = np.asarray(result.solve_times_s) if result.solve_times_s else None
        out[name] = {
            "totals": {k: round(v, 4) if math.isfinite(v) else None for k, v in result.totals.items()},
            "plans": len(result.solve_times_s),
            "replans_on_deviation": result.replans_on_deviation,
            "backstop_starts": result.backstop_starts,
            "solve_time_s_p50": round(float(np.percentile(times, 50)), 4) if times is not None else None,
            "solve_time_s_p95": round(float(np.percentile(times, 95)), 4) if times is not None else None,
            "fallbacks": result.fallbacks,
            "limit_violations": result.violations,
        }
    return out
