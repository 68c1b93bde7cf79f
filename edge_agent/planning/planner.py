"""The planner: a mixed-integer dispatch over the forecast horizon, solved by HiGHS (``highspy``).

Decisions per step: battery charge/discharge, generator on/off (binary) and power, shed sheddable load,
grid import/export, PV curtailment, and the unserved critical load that is left when nothing else can
cover the demand. Hard limits are variable bounds and constraints, so they hold at every step: SoC window
with charge/discharge efficiencies, power limits, minimum run and rest times (carried over from the
measured state), grid limits, energy balance. The generator's minimum load is the one soft limit: a
generator the measured state holds on (its minimum run), meeting a full battery at night, has nowhere to
put that power, so running under it is priced at the fuel it would have burnt rather than making the plan
infeasible; wherever the solver itself runs the generator, the minimum load is hard.

Objective, lexicographic by weights: unserved critical load (``unserved_penalty_per_kwh``, far above any
price) first, then fuel, start and grid cost, then shedding (``shed_penalty_per_kwh``, kept below the fuel
cost), with tiny tie-breakers against curtailment and needless battery cycling, and stored energy left at
the horizon's end valued a little below what it saves later (otherwise every plan empties the battery).

Holding reserve against a bad day — a two-scenario formulation plus a soft reserve floor. The plan is
solved jointly for the nominal scenario (P50 load and PV) and a stress scenario (high load quantile, low
PV quantile, by default P90/P10): the forecast's bad-day paths when it has them (a P90 *day*: cumulative
deviation at each step is the P90 of the cumulative errors seen), else the quantile of every step — a
far worse day, since errors do not all peak together, which made the plan run the generator into a full
battery and curtail the PV that came after all. Both scenarios share what is
applied before the next plan (the generator's committed block and the committed shedding); after that,
battery, generator and shedding are recourse per scenario, as a grid-forming inverter and a running
generator really follow the load. Unserved load is priced far above fuel in *both* scenarios, so the
committed decisions and the battery's SoC must leave the bad day carriable: if the next hour would drain
the battery so far that a dark, heavy evening could not be covered even with the generator, the plan
starts it now or keeps energy in the battery. A fixed reserve SoC alone cannot do that: it is too much on
a sunny day and too little before a dark, heavy one; the forecast's own spread sizes that reserve. The
nominal scenario also pays ``reserve_shortfall_penalty_per_kwh_h`` for every kWh-hour it spends under
the battery's ``reserve_soc_fraction``: a buffer, priced above the fuel to refill it, for what even the
stress quantile misses before the next plan (a P90 is exceeded one step in ten).

The stress scenario's generator schedule after the committed block is relaxed to continuous on/off (its
capacity may be used in any share): the question it answers is "can the bad day still be carried", for
which the generator's capacity matters and its minimum load does not. Keeping it integer too tripled
the solve time on the reference site (the LP bound of a shared minimum-load schedule is weak) for a plan
that is replaced an hour later. Without quantiles the two scenarios coincide and a single one is solved.

:func:`plan_dispatch` never raises into the caller's loop: missing or non-finite forecasts, an infeasible
or failed solve all return the fallback rule's plan (``source="rule"``) with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edge_agent.planning.dispatch import (
    ChannelForecast,
    DispatchPlan,
    FloatArray,
    Forecast,
    SiteState,
    soc_bounds,
    tariff_per_step,
)
from edge_agent.planning.rule import rule_dispatch
from edge_agent.planning.site_model import SiteModel

log = logging.getLogger(__name__)

# Tie-breakers, in currency per kWh: small enough never to outweigh a real price, large enough to keep
# the solver from curtailing free PV or charging and discharging in the same step for nothing.
CURTAIL_TIEBREAK = 1e-3
CYCLING_TIEBREAK = 2e-3
# On top of the fuel a generator under its minimum load would have burnt: above curtailing PV (a running
# generator keeps its minimum load while PV is curtailed), below burning the surplus by cycling the battery
# (about 2 * CYCLING_TIEBREAK / (1 - round-trip efficiency) = 0.04 per kWh burnt at 95 % each way).
UNDERLOAD_TIEBREAK = 1e-2
# Stored energy at the horizon's end is worth this share of what a delivered kWh saves later.
TERMINAL_VALUE_SHARE = 0.9


# The LP relaxation's generator schedule is rounded up above each of these to seed the MIP.
ROUNDING_THRESHOLDS = (1e-3, 0.25, 0.5, 0.75, 0.99)


class PlanInputError(ValueError):
    """The forecast cannot be planned on (wrong length, NaN, negative capacity); the rule takes over."""


@dataclass(frozen=True)
class Scenario:
    """One load/PV trajectory with its weight in the objective."""

    name: str
    load_kw: FloatArray
    pv_kw: FloatArray
    weight: float


def scenarios_from(forecast: Forecast, site: SiteModel, steps: int) -> list[Scenario]:
    """Nominal (P50) and, when the forecast carries the stress quantiles, the bad-day scenario."""
    settings = site.planner
    load = _clean(forecast.load_kw.p50, steps, "load_kw P50", None)
    pv = _clean(forecast.pv_kw.p50, steps, "pv_kw P50", site.pv_rated_kw)
    load_high = _bad_day(forecast.load_kw, settings.stress_load_quantile)
    pv_low = _bad_day(forecast.pv_kw, settings.stress_pv_quantile)
    if (load_high is None and pv_low is None) or settings.stress_weight == 0:
        return [Scenario("nominal", load, pv, 1.0)]
    stress_load = load if load_high is None else np.maximum(_clean(load_high, steps, "load_kw high", None), load)
    stress_pv = pv if pv_low is None else np.minimum(_clean(pv_low, steps, "pv_kw low", site.pv_rated_kw), pv)
    return [
        Scenario("nominal", load, pv, 1.0 - settings.stress_weight),
        Scenario("stress", stress_load, stress_pv, settings.stress_weight),
    ]


def _bad_day(channel: ChannelForecast, level: float) -> FloatArray | None:
    """The channel's bad-day trajectory at ``level``: its path when it has one, else every step's quantile."""
    path = channel.paths.get(level)
    return path if path is not None else channel.quantiles.get(level)


def _clean(values: object, steps: int, name: str, cap_kw: float | None) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (steps,):
        raise PlanInputError(f"forecast {name} has shape {array.shape}, expected ({steps},)")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise PlanInputError(f"forecast {name} is not finite at {bad.size} step(s), first at step {int(bad[0])}")
    # A model may predict slightly negative power at night; physical power is not negative.
    return np.clip(array, 0.0, cap_kw if cap_kw is not None else np.inf)


@dataclass
class _Milp:
    """Columns and rows of a MILP built block by block (each block one variable per step)."""

    lower: list[FloatArray] = field(default_factory=list)
    upper: list[FloatArray] = field(default_factory=list)
    cost: list[FloatArray] = field(default_factory=list)
    integer: list[NDArray[np.int8]] = field(default_factory=list)
    rows: list[NDArray[np.int64]] = field(default_factory=list)
    cols: list[NDArray[np.int64]] = field(default_factory=list)
    vals: list[FloatArray] = field(default_factory=list)
    row_lo: list[FloatArray] = field(default_factory=list)
    row_hi: list[FloatArray] = field(default_factory=list)
    n_cols: int = 0
    n_rows: int = 0

    def variable(
        self, size: int, lo: object, hi: object, cost: object = 0.0, integer: bool = False
    ) -> NDArray[np.int64]:
        index = np.arange(self.n_cols, self.n_cols + size)
        self.n_cols += size
        self.lower.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (size,)).copy())
        self.upper.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (size,)).copy())
        self.cost.append(np.broadcast_to(np.asarray(cost, dtype=np.float64), (size,)).copy())
        self.integer.append(np.full(size, 1 if integer else 0, dtype=np.int8))
        return index

    def rows_of(self, terms: Sequence[tuple[NDArray[np.int64], object]], lo: object, hi: object) -> None:
        """Add len(terms[0][0]) rows; row i holds coefficient[i] at column index[i] of every term.

        A negative column index means "no term in this row" (a window reaching before step 0).
        """
        size = len(terms[0][0])
        row_index = np.arange(self.n_rows, self.n_rows + size)
        for index, coefficient in terms:
            coef = np.broadcast_to(np.asarray(coefficient, dtype=np.float64), (size,))
            keep = index >= 0
            self.rows.append(row_index[keep])
            self.cols.append(index[keep])
            self.vals.append(coef[keep])
        self.row_lo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (size,)).copy())
        self.row_hi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (size,)).copy())
        self.n_rows += size

    def solve(
        self,
        time_limit_s: float,
        mip_rel_gap: float,
        mip_abs_gap: float,
        acceptable: Callable[[FloatArray], bool] = lambda x: True,
    ) -> _Solution:
        """Solve with HiGHS (highspy), starting the MIP from the best rounding of its LP relaxation.

        HiGHS's own primal heuristics find a good schedule on this problem only in a sub-MIP after
        seconds; before that its incumbent can be a plan with unserved load (objective 100x the optimum),
        which is what a solve stopped at its time limit used to return. The LP relaxation's bound is
        within a few percent of the optimum here, so its generator schedule rounded (at 0.5, and up
        whenever the LP runs the generator at all), with the battery and flows re-solved as an LP for the
        fixed schedule, is a near-optimal plan found in a few LP solves (``ROUNDING_THRESHOLDS``). The
        cheapest wins; of equal ones, an ``acceptable`` one (a rounding forcing the generator above what
        the site can absorb balances only by charging and discharging at once). The best ``acceptable`` one of
        those roundings is handed to the MIP as its incumbent, so a time limit returns at worst that.
        """
        import highspy

        started = time.perf_counter()
        cost, lower, upper = np.concatenate(self.cost), np.concatenate(self.lower), np.concatenate(self.upper)
        integer = np.flatnonzero(np.concatenate(self.integer)).astype(np.int32)
        rows, cols, vals = np.concatenate(self.rows), np.concatenate(self.cols), np.concatenate(self.vals)
        order = np.lexsort((rows, cols))
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n_cols, self.n_rows
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, lower, upper
        lp.row_lower_, lp.row_upper_ = np.concatenate(self.row_lo), np.concatenate(self.row_hi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = self.n_cols, self.n_rows
        lp.a_matrix_.start_ = np.searchsorted(cols[order], np.arange(self.n_cols + 1)).astype(np.int32)
        lp.a_matrix_.index_ = rows[order].astype(np.int32)
        lp.a_matrix_.value_ = vals[order]
        highs = highspy.Highs()
        highs.setOptionValue("output_flag", False)
        highs.passModel(lp)
        highs.setOptionValue("time_limit", time_limit_s)
        highs.run()
        if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return _Solution(
                None, highs.modelStatusToString(highs.getModelStatus()), None, time.perf_counter() - started
            )
        relaxed = np.asarray(highs.getSolution().col_value)[integer]
        best: tuple[float, bool, list[float]] | None = None
        for rounded in {tuple((relaxed > threshold).astype(float)) for threshold in ROUNDING_THRESHOLDS}:
            fixed = np.asarray(rounded, dtype=np.float64)
            highs.changeColsBounds(integer.size, integer, fixed, fixed)
            highs.run()
            if highs.getModelStatus() == highspy.HighsModelStatus.kOptimal:
                values = list(highs.getSolution().col_value)
                candidate = (highs.getInfo().objective_function_value, not acceptable(np.asarray(values)), values)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        highs.changeColsBounds(integer.size, integer, lower[integer], upper[integer])
        highs.changeColsIntegrality(
            integer.size, integer, np.full(integer.size, int(highspy.HighsVarType.kInteger), dtype=np.uint8)
        )
        if best is not None:
            incumbent = highspy.HighsSolution()
            incumbent.col_value = best[2]
            incumbent.value_valid = True
            highs.setSolution(incumbent)
        # HiGHS counts its time limit over every run of this instance.
        highs.setOptionValue(
            "time_limit", highs.getRunTime() + max(time_limit_s - (time.perf_counter() - started), 0.05)
        )
        highs.setOptionValue("mip_rel_gap", mip_rel_gap)
        highs.setOptionValue("mip_abs_gap", mip_abs_gap)
        highs.run()
        status = highs.getModelStatus()
        elapsed = time.perf_counter() - started
        solution = highs.getSolution()
        if status == highspy.HighsModelStatus.kOptimal:
            return _Solution(
                np.asarray(solution.col_value), "optimal", highs.getInfo().objective_function_value, elapsed
            )
        if solution.value_valid and highs.getInfo().primal_solution_status == 2:  # 2: feasible
            value = highs.getInfo().objective_function_value
            return _Solution(np.asarray(solution.col_value), "time limit (best plan found)", value, elapsed)
        if best is not None:
            return _Solution(np.asarray(best[2]), "time limit (LP rounding)", best[0], elapsed)
        return _Solution(None, highs.modelStatusToString(status), None, elapsed)


@dataclass(frozen=True)
class _Solution:
    """What a solve gave: the column values (None without a plan), the status in words, objective, wall time."""

    x: FloatArray | None
    status: str
    objective: float | None
    solve_time_s: float


def _shifted(index: NDArray[np.int64], lag: int) -> NDArray[np.int64]:
    """index[t - lag] for each t, -1 where t - lag falls before the horizon."""
    shifted = np.full_like(index, -1)
    if lag < len(index):
        shifted[lag:] = index[: len(index) - lag]
    return shifted


def _stored_energy_value(site: SiteModel) -> float:
    """What one kWh left in the battery at the horizon's end is worth (per kWh stored)."""
    if site.generator is not None:
        price = site.generator.fuel_cost_per_kwh
    elif site.grid is not None:
        price = float(np.mean(tariff_per_step(site, np.arange(24) * 3600, "import")))
    else:
        price = site.loads.shed_penalty_per_kwh
    return TERMINAL_VALUE_SHARE * site.battery.discharge_efficiency * price


def _held_on_steps(site: SiteModel, state: SiteState) -> int:
    """Leading steps the measured state keeps the generator on (its minimum run, in whole commitment blocks)."""
    if site.generator is None or not state.generator_on:
        return 0
    block = site.planner.commitment_block_steps
    return -(-max(site.min_run_steps - state.generator_steps_in_state, 0) // block) * block


def _commitment(
    problem: _Milp, site: SiteModel, state: SiteState, steps: int, integer: bool, start_weight: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """A generator on/off schedule per block of steps: the "on" column of every step and of every block.

    Per block (an hour by default) because the binaries are what makes the problem hard, and a generator
    is not started for 15 minutes anyway. Start and stop are continuous in [0, 1]; the constraints make
    them integral once "on" is. Minimum run and rest count in whole blocks, carried over from the state.
    """
    generator, block = site.generator, site.planner.commitment_block_steps
    blocks = -(-steps // block)
    on_lower = np.zeros(blocks)
    on_upper = np.ones(blocks) if generator is not None else np.zeros(blocks)
    held_steps = (site.min_run_steps if state.generator_on else site.min_rest_steps) - state.generator_steps_in_state
    held = -(-max(held_steps, 0) // block)
    if generator is not None and state.generator_on:
        on_lower[:held] = 1.0
    else:
        on_upper[:held] = 0.0
    on_block = problem.variable(blocks, on_lower, on_upper, integer=integer)
    start = problem.variable(blocks, 0.0, 1.0, start_weight * generator.start_cost if generator else 0.0)
    stop = problem.variable(blocks, 0.0, 1.0)
    was_on = 1.0 if state.generator_on else 0.0
    on_before = _shifted(on_block, 1)
    first_block = np.arange(blocks) == 0
    problem.rows_of([(start, 1.0), (on_block, -1.0), (on_before, 1.0)], np.where(first_block, -was_on, 0.0), np.inf)
    problem.rows_of([(stop, 1.0), (on_block, 1.0), (on_before, -1.0)], np.where(first_block, was_on, 0.0), np.inf)
    run_blocks = max(-(-site.min_run_steps // block), 1)
    rest_blocks = max(-(-site.min_rest_steps // block), 1)
    problem.rows_of([(_shifted(start, k), 1.0) for k in range(run_blocks)] + [(on_block, -1.0)], -np.inf, 0.0)
    problem.rows_of([(_shifted(stop, k), 1.0) for k in range(rest_blocks)] + [(on_block, 1.0)], -np.inf, 1.0)
    return on_block[np.arange(steps) // block], on_block


def _solve(site: SiteModel, state: SiteState, timestamps: NDArray[np.int64], scenarios: list[Scenario]) -> DispatchPlan:
    battery, generator, grid, settings = site.battery, site.generator, site.grid, site.planner
    steps, h = len(timestamps), site.step_hours
    problem = _Milp()
    lo_soc, hi_soc = soc_bounds(site, state.soc_fraction)

    first = np.arange(steps) == 0

    import_price = tariff_per_step(site, timestamps, "import") * h
    export_price = tariff_per_step(site, timestamps, "export") * h
    terminal = np.zeros(steps)
    terminal[-1] = -_stored_energy_value(site) * battery.capacity_kwh
    shed_by_scenario = []
    on_blocks: list[NDArray[np.int64]] = []
    on_steps: list[NDArray[np.int64]] = []
    flows_by_scenario = []
    for scenario in scenarios:
        w = scenario.weight
        sheddable = site.loads.sheddable_fraction * scenario.load_kw
        on, on_block = _commitment(problem, site, state, steps, integer=scenario.name == "nominal", start_weight=w)
        on_blocks.append(on_block)
        on_steps.append(on)
        charge = problem.variable(steps, 0.0, battery.charge_power_max_kw, w * CYCLING_TIEBREAK * h)
        discharge = problem.variable(steps, 0.0, battery.discharge_power_max_kw, w * CYCLING_TIEBREAK * h)
        soc = problem.variable(steps, lo_soc, hi_soc, w * terminal)
        if scenario.name == "nominal":
            # Soft floor at the reserve SoC: the battery's buffer against what the forecast misses before the
            # next plan (spikes above even the stress quantile). The stress scenario may use the reserve:
            # carrying the bad day is what it is for.
            shortfall = problem.variable(steps, 0.0, np.inf, w * settings.reserve_shortfall_penalty_per_kwh_h * h)
            problem.rows_of(
                [(soc, battery.capacity_kwh), (shortfall, 1.0)],
                battery.reserve_soc_fraction * battery.capacity_kwh,
                np.inf,
            )
        gen = problem.variable(
            steps,
            0.0,
            generator.rated_power_kw if generator else 0.0,
            w * generator.fuel_cost_per_kwh * h if generator else 0.0,
        )
        shed = problem.variable(steps, 0.0, sheddable, w * site.loads.shed_penalty_per_kwh * h)
        unserved = problem.variable(steps, 0.0, scenario.load_kw, w * settings.unserved_penalty_per_kwh * h)
        grid_import = problem.variable(steps, 0.0, grid.import_limit_kw if grid else 0.0, w * import_price)
        grid_export = problem.variable(steps, 0.0, grid.export_limit_kw if grid else 0.0, -w * export_price)
        curtailed = problem.variable(steps, 0.0, scenario.pv_kw, w * CURTAIL_TIEBREAK * h)
        # Energy balance: every kW of load is supplied, shed or (last resort) unserved.
        problem.rows_of(
            [
                (curtailed, -1.0), (gen, 1.0), (discharge, 1.0), (charge, -1.0),
                (grid_import, 1.0), (grid_export, -1.0), (shed, 1.0), (unserved, 1.0),
            ],
            scenario.load_kw - scenario.pv_kw,
            scenario.load_kw - scenario.pv_kw,
        )  # fmt: skip
        problem.rows_of([(shed, 1.0), (unserved, 1.0)], -np.inf, scenario.load_kw)
        # SoC follows the flows through the efficiencies; the window is the variable's bounds.
        per_kwh = h / battery.capacity_kwh
        problem.rows_of(
            [
                (soc, 1.0), (_shifted(soc, 1), -1.0),
                (charge, -battery.charge_efficiency * per_kwh), (discharge, per_kwh / battery.discharge_efficiency),
            ],
            np.where(first, state.soc_fraction, 0.0),
            np.where(first, state.soc_fraction, 0.0),
        )  # fmt: skip
        if generator is not None:
            problem.rows_of([(gen, 1.0), (on, -generator.rated_power_kw)], -np.inf, 0.0)
            # Minimum load, with a slack while the measured state holds the generator on (its minimum run): with
            # the battery full and nothing else to take power it runs under it, and the plan says so instead of
            # failing. Anywhere else the solver chose to run it, so the limit is hard. Each kW missing
            # costs the fuel it would have burnt (a genset at low load burns nearly its minimum-load fuel), so
            # storing the minimum load is always cheaper when the battery has room, and burning it by charging
            # and discharging at once (which no inverter does) is dearer.
            underload_cost = w * (generator.fuel_cost_per_kwh + UNDERLOAD_TIEBREAK) * h
            held = np.arange(steps) < _held_on_steps(site, state)  # elsewhere the minimum load stays hard
            underload = problem.variable(steps, 0.0, np.where(held, generator.min_power_kw, 0.0), underload_cost)
            problem.rows_of([(gen, 1.0), (underload, 1.0), (on, -generator.min_power_kw)], 0.0, np.inf)
        shed_by_scenario.append(shed)
        flows_by_scenario.append(
            (charge, discharge, soc, gen, shed, unserved, grid_import, grid_export, curtailed, scenario)
        )
    if len(scenarios) > 1:
        committed = np.arange(steps) < settings.committed_steps
        nominal_shed, stress_shed = shed_by_scenario[0][committed], shed_by_scenario[1][committed]
        problem.rows_of([(nominal_shed, 1.0), (stress_shed, -1.0)], 0.0, 0.0)
        shared = np.arange(len(on_blocks[0])) < -(-settings.committed_steps // settings.commitment_block_steps)
        problem.rows_of([(on_blocks[0][shared], 1.0), (on_blocks[1][shared], -1.0)], 0.0, 0.0)

    nominal_charge, nominal_discharge = flows_by_scenario[0][0], flows_by_scenario[0][1]

    def one_way(x: FloatArray) -> bool:
        """No step charges and discharges at once (an LP may burn surplus that way when nothing else can)."""
        return bool(np.all(np.minimum(x[nominal_charge], x[nominal_discharge]) <= 1e-3))

    solution = problem.solve(settings.time_limit_s, settings.mip_rel_gap, settings.mip_abs_gap, one_way)
    if solution.x is None:
        raise PlanInputError(f"solver found no plan (HiGHS: {solution.status.lower()})")
    x = solution.x

    def values(index: NDArray[np.int64]) -> FloatArray:
        return np.maximum(x[index], 0.0)

    charge, discharge, soc, gen, shed, unserved, grid_import, grid_export, curtailed, nominal = flows_by_scenario[0]
    stress = flows_by_scenario[-1] if len(scenarios) > 1 else None
    return DispatchPlan(
        timestamps_utc=timestamps,
        step_hours=h,
        load_kw=nominal.load_kw,
        pv_kw=nominal.pv_kw,
        battery_charge_kw=values(charge),
        battery_discharge_kw=values(discharge),
        soc_fraction=np.clip(x[soc], lo_soc, hi_soc),
        generator_on=x[on_steps[0]] > 0.5,
        generator_kw=values(gen),
        shed_kw=values(shed),
        unserved_kw=values(unserved),
        grid_import_kw=values(grid_import),
        grid_export_kw=values(grid_export),
        curtailed_kw=values(curtailed),
        source="planner",
        status=solution.status,
        solve_time_s=solution.solve_time_s,
        objective=solution.objective,
        stress_unserved_kw=values(stress[5]) if stress else None,
        stress_soc_fraction=np.clip(x[stress[2]], lo_soc, hi_soc) if stress else None,
    )


def plan_dispatch(site: SiteModel, state: SiteState, forecast: Forecast | None, start_utc: int) -> DispatchPlan:
    """Plan the horizon from ``start_utc``; falls back to the rule (with the reason) instead of raising.

    ``forecast`` None means no usable model output (missing, or the model is degraded).
    """
    steps = site.planner.horizon_steps
    default_times = start_utc + np.arange(steps, dtype=np.int64) * int(site.step_minutes * 60)
    if forecast is None:
        return rule_dispatch(site, state, default_times, reason="no forecast (model missing or degraded)")
    timestamps = np.asarray(forecast.timestamps_utc, dtype=np.int64)[:steps]
    try:
        if timestamps.size == 0:
            raise PlanInputError("forecast has no steps")
        scenarios = scenarios_from(_truncated(forecast, timestamps.size), site, timestamps.size)
        return _solve(site, state, timestamps, scenarios)
    except PlanInputError as exc:
        log.warning("planner falls back to the rule: %s", exc)
        return rule_dispatch(site, state, timestamps if timestamps.size else default_times, reason=str(exc))
    except Exception as exc:  # the control loop must keep running whatever the solver does
        log.exception("planner failed; falling back to the rule")
        return rule_dispatch(
            site, state, timestamps if timestamps.size else default_times, reason=f"planner error: {exc}"
        )


def _truncated(forecast: Forecast, steps: int) -> Forecast:
    """The forecast cut to the planning horizon (a model may forecast further than the site plans)."""

    def cut(values: FloatArray) -> FloatArray:
        array = np.asarray(values, dtype=np.float64)
        return array[:steps] if array.ndim == 1 and array.size >= steps else array

    channels = []
    for channel in (forecast.load_kw, forecast.pv_kw):
        channels.append(
            ChannelForecast(
                p50=cut(channel.p50),
                quantiles={q: cut(v) for q, v in channel.quantiles.items()},
                paths={q: cut(v) for q, v in channel.paths.items()},
            )
        )
    return Forecast(timestamps_utc=forecast.timestamps_utc[:steps], load_kw=channels[0], pv_kw=channels[1])
