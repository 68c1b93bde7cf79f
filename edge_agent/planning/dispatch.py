"""What a plan is made of: forecasts in, site state in, a :class:`DispatchPlan` out, and the limits it obeys.

A ``DispatchPlan`` is used for three things with one shape: the planner's schedule, the fallback rule's
schedule, and the trace of what a (simulated) site actually did. So one function,
:func:`limit_violations`, checks every hard limit at every step of any of them, and :func:`balance_step`
is the physics both the rule's projection and the central replay advance a site with.

Sign conventions: all powers are kW and >= 0; the energy balance of every step is
``pv - curtailed + generator + discharge - charge + import - export = load - shed - unserved``.
SoC values are fractions of the battery capacity at the *end* of each step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from edge_agent.planning.site_model import SiteModel, hourly

FloatArray = NDArray[np.float64]
TOLERANCE_KW = 1e-5
TOLERANCE_SOC = 1e-6


@dataclass(frozen=True)
class ChannelForecast:
    """One channel's forecast in kW: the median, any quantiles (``{0.1: P10, 0.9: P90}``) and bad-day paths.

    ``quantiles`` hold each step's own quantile; a trajectory through the P90 of every step is far worse
    than a P90 day (errors do not all peak together). ``paths`` hold, per level, a trajectory whose
    cumulative deviation from the P50 at every step is that quantile of the cumulative errors seen: what
    the planner's bad-day scenario uses when present.
    """

    p50: FloatArray
    quantiles: Mapping[float, FloatArray] = field(default_factory=dict)
    paths: Mapping[float, FloatArray] = field(default_factory=dict)


@dataclass(frozen=True)
class Forecast:
    """Load and PV forecasts over the horizon, step starts in UTC epoch seconds."""

    timestamps_utc: NDArray[np.int64]
    load_kw: ChannelForecast
    pv_kw: ChannelForecast


@dataclass(frozen=True)
class SiteState:
    """What the controller measured at the start of a planning cycle."""

    soc_fraction: float
    generator_on: bool = False
    # Steps the generator has been in its current on/off state; carries minimum run/rest across plans.
    generator_steps_in_state: int = 10**6
    shedding: bool = False
    measured_load_kw: float | None = None
    measured_pv_kw: float | None = None


PlanSource = Literal["planner", "rule", "measured"]


@dataclass(frozen=True)
class DispatchPlan:
    """Per-step setpoints (or, for a trace, per-step outcomes) over a horizon, with how they were made."""

    timestamps_utc: NDArray[np.int64]
    step_hours: float
    load_kw: FloatArray
    pv_kw: FloatArray
    battery_charge_kw: FloatArray
    battery_discharge_kw: FloatArray
    soc_fraction: FloatArray
    generator_on: NDArray[np.bool_]
    generator_kw: FloatArray
    shed_kw: FloatArray
    unserved_kw: FloatArray
    grid_import_kw: FloatArray
    grid_export_kw: FloatArray
    curtailed_kw: FloatArray
    source: PlanSource
    status: str
    reason: str | None = None
    solve_time_s: float = 0.0
    objective: float | None = None
    # Unserved critical load and SoC of the bad-day scenario, when the planner had quantiles.
    stress_unserved_kw: FloatArray | None = None
    stress_soc_fraction: FloatArray | None = None

    @property
    def steps(self) -> int:
        return len(self.timestamps_utc)

    @property
    def battery_power_kw(self) -> FloatArray:
        """Net battery power, discharge positive."""
        return self.battery_discharge_kw - self.battery_charge_kw

    @property
    def generator_starts(self) -> NDArray[np.bool_]:
        """Steps at which the generator starts (not counting one already running before step 0)."""
        on = self.generator_on.astype(bool)
        return on & ~np.concatenate([[False], on[:-1]])

    def totals(self, site: SiteModel, generator_was_on: bool = False) -> dict[str, float]:
        """Energy and cost totals: kWh of each flow, generator hours/starts and the money spent."""
        h = self.step_hours
        starts = int(self.generator_starts.sum()) - int(generator_was_on and bool(self.generator_on[:1].any()))
        generator_kwh = float(self.generator_kw.sum() * h)
        fuel_cost = 0.0
        if site.generator is not None:
            fuel_cost = generator_kwh * site.generator.fuel_cost_per_kwh + starts * site.generator.start_cost
        import_cost = 0.0
        if site.grid is not None:
            import_cost = float(
                np.sum(self.grid_import_kw * tariff_per_step(site, self.timestamps_utc, "import")) * h
                - np.sum(self.grid_export_kw * tariff_per_step(site, self.timestamps_utc, "export")) * h
            )
        return {
            "load_kwh": float(self.load_kw.sum() * h),
            "pv_kwh": float(self.pv_kw.sum() * h),
            "unserved_kwh": float(self.unserved_kw.sum() * h),
            "shed_kwh": float(self.shed_kw.sum() * h),
            "curtailed_kwh": float(self.curtailed_kw.sum() * h),
            "generator_kwh": generator_kwh,
            "generator_hours": float(self.generator_on.sum() * h),
            "generator_starts": float(starts),
            "fuel_cost": fuel_cost,
            "grid_import_kwh": float(self.grid_import_kw.sum() * h),
            "grid_export_kwh": float(self.grid_export_kw.sum() * h),
            "grid_cost": import_cost,
            "battery_throughput_kwh": float((self.battery_charge_kw + self.battery_discharge_kw).sum() * h),
            "final_soc_fraction": float(self.soc_fraction[-1]) if self.steps else float("nan"),
        }


def tariff_per_step(site: SiteModel, timestamps_utc: NDArray[np.int64], direction: str) -> FloatArray:
    """Import or export price of each step, from the site's flat or hourly time-of-use tariff."""
    if site.grid is None:
        return np.zeros(len(timestamps_utc))
    tariff = site.grid.import_tariff_per_kwh if direction == "import" else site.grid.export_tariff_per_kwh
    prices = np.asarray(hourly(tariff, f"{direction}_tariff_per_kwh"))
    local_hour = ((np.asarray(timestamps_utc) / 3600.0 + site.utc_offset_hours) % 24).astype(int)
    return prices[local_hour]


def soc_bounds(site: SiteModel, soc_start: float) -> tuple[float, float]:
    """The SoC window a plan starting at ``soc_start`` must hold.

    A battery already outside its window (a deep discharge before the controller started) may not move
    further out, but is not asked to jump back in at once: the bound widens to include where it is.
    """
    battery = site.battery
    return min(battery.soc_min_fraction, soc_start), max(battery.soc_max_fraction, soc_start)


@dataclass(frozen=True)
class StepOutcome:
    """What one step of the site did: the flows of the energy balance and the SoC at its end."""

    charge_kw: float
    discharge_kw: float
    generator_kw: float
    shed_kw: float
    unserved_kw: float
    grid_import_kw: float
    grid_export_kw: float
    curtailed_kw: float
    soc_fraction: float


def balance_step(
    site: SiteModel,
    soc_fraction: float,
    load_kw: float,
    pv_kw: float,
    generator_on: bool,
    generator_setpoint_kw: float,
    shed_request_kw: float,
) -> StepOutcome:
    """Advance the site one step: the grid-forming battery inverter balances whatever the setpoints leave.

    Order of recourse, as in an off-grid hybrid system: the battery within its power and SoC limits, then a
    running generator moves within its range, then the grid, then sheddable circuits are dropped
    (deficit) or PV is curtailed (surplus). A deficit left after that is unserved critical load. Only a
    generator forced under its minimum load by a full battery and no PV to curtail is left below it
    (counted by the caller, never above rated power).
    """
    battery, generator, grid, h = site.battery, site.generator, site.grid, site.step_hours
    lo, hi = soc_bounds(site, soc_fraction)
    sheddable = site.loads.sheddable_fraction * load_kw
    shed = min(max(shed_request_kw, 0.0), sheddable)
    g_min = generator.min_power_kw if generator and generator_on else 0.0
    g_max = generator.rated_power_kw if generator and generator_on else 0.0
    gen = min(max(generator_setpoint_kw, g_min), g_max)
    import_max = grid.import_limit_kw if grid else 0.0
    export_max = grid.export_limit_kw if grid else 0.0
    charge = discharge = unserved = grid_import = grid_export = curtailed = 0.0
    net = load_kw - shed - pv_kw - gen
    if net > 0:
        energy_kwh = max(0.0, soc_fraction - lo) * battery.capacity_kwh
        discharge = min(net, battery.discharge_power_max_kw, energy_kwh * battery.discharge_efficiency / h)
        net -= discharge
        raise_gen = min(net, g_max - gen)
        gen, net = gen + raise_gen, net - raise_gen
        grid_import = min(net, import_max)
        net -= grid_import
        extra_shed = min(net, sheddable - shed)
        shed, net = shed + extra_shed, net - extra_shed
        unserved = max(net, 0.0)
    else:
        surplus = -net
        room_kwh = max(0.0, hi - soc_fraction) * battery.capacity_kwh
        charge = min(surplus, battery.charge_power_max_kw, room_kwh / (battery.charge_efficiency * h))
        surplus -= charge
        lower_gen = min(surplus, gen - g_min)
        gen, surplus = gen - lower_gen, surplus - lower_gen
        grid_export = min(surplus, export_max)
        surplus -= grid_export
        curtailed = min(surplus, pv_kw)
        surplus -= curtailed
        gen = max(gen - surplus, 0.0)  # a generator can only deliver what is taken from it
    soc = soc_fraction + (battery.charge_efficiency * charge - discharge / battery.discharge_efficiency) * h / (
        battery.capacity_kwh
    )
    return StepOutcome(
        charge_kw=charge,
        discharge_kw=discharge,
        generator_kw=gen,
        shed_kw=shed,
        unserved_kw=unserved,
        grid_import_kw=grid_import,
        grid_export_kw=grid_export,
        curtailed_kw=curtailed,
        soc_fraction=min(max(soc, lo), hi),
    )


def plan_from_outcomes(
    timestamps_utc: NDArray[np.int64],
    step_hours: float,
    load_kw: FloatArray,
    pv_kw: FloatArray,
    generator_on: NDArray[np.bool_],
    outcomes: list[StepOutcome],
    source: PlanSource,
    status: str,
    reason: str | None = None,
) -> DispatchPlan:
    """Gather step outcomes (a projection or a site's trace) into the plan shape."""

    def column(name: str) -> FloatArray:
        return np.asarray([getattr(outcome, name) for outcome in outcomes], dtype=np.float64)

    return DispatchPlan(
        timestamps_utc=np.asarray(timestamps_utc, dtype=np.int64),
        step_hours=step_hours,
        load_kw=np.asarray(load_kw, dtype=np.float64),
        pv_kw=np.asarray(pv_kw, dtype=np.float64),
        battery_charge_kw=column("charge_kw"),
        battery_discharge_kw=column("discharge_kw"),
        soc_fraction=column("soc_fraction"),
        generator_on=np.asarray(generator_on, dtype=bool),
        generator_kw=column("generator_kw"),
        shed_kw=column("shed_kw"),
        unserved_kw=column("unserved_kw"),
        grid_import_kw=column("grid_import_kw"),
        grid_export_kw=column("grid_export_kw"),
        curtailed_kw=column("curtailed_kw"),
        source=source,
        status=status,
        reason=reason,
    )


def next_state(state: SiteState, outcome: StepOutcome, generator_on: bool, shedding: bool) -> SiteState:
    """The site state after one step: new SoC, generator run/rest counter, shedding latch."""
    same = generator_on == state.generator_on
    return SiteState(
        soc_fraction=outcome.soc_fraction,
        generator_on=generator_on,
        generator_steps_in_state=state.generator_steps_in_state + 1 if same else 1,
        shedding=shedding,
        measured_load_kw=state.measured_load_kw,
        measured_pv_kw=state.measured_pv_kw,
    )


def limit_violations(plan: DispatchPlan, site: SiteModel, start: SiteState, enforce_min_load: bool = True) -> list[str]:
    """Every hard limit broken by ``plan`` starting from ``start``, one message per kind (empty: all held).

    Checked at every step: energy balance, SoC window and SoC arithmetic (efficiencies), battery power
    limits and no simultaneous charge and discharge beyond rounding, generator off/at most rated (and at
    least its minimum load when ``enforce_min_load``, unless the battery could take no more), minimum run
    and rest times carried over from
    ``start``, grid limits (zero off-grid), shed within the sheddable share, curtailment within PV, and
    no negative flow.
    """
    b, g, tol = site.battery, site.generator, TOLERANCE_KW
    problems: list[str] = []

    def check(ok: NDArray[np.bool_], what: str) -> None:
        bad = np.flatnonzero(~ok)
        if bad.size:
            problems.append(f"{what} at {bad.size} step(s), first at step {int(bad[0])}")

    flows = {
        "battery_charge_kw": plan.battery_charge_kw,
        "battery_discharge_kw": plan.battery_discharge_kw,
        "generator_kw": plan.generator_kw,
        "shed_kw": plan.shed_kw,
        "unserved_kw": plan.unserved_kw,
        "grid_import_kw": plan.grid_import_kw,
        "grid_export_kw": plan.grid_export_kw,
        "curtailed_kw": plan.curtailed_kw,
    }
    for name, values in flows.items():
        check(np.isfinite(values) & (values >= -tol), f"{name} negative or not finite")
    supply = (
        plan.pv_kw
        - plan.curtailed_kw
        + plan.generator_kw
        + plan.battery_discharge_kw
        - plan.battery_charge_kw
        + plan.grid_import_kw
        - plan.grid_export_kw
    )
    check(np.abs(supply - (plan.load_kw - plan.shed_kw - plan.unserved_kw)) <= 1e-4, "energy balance broken")
    lo, hi = soc_bounds(site, start.soc_fraction)
    check((plan.soc_fraction >= lo - TOLERANCE_SOC) & (plan.soc_fraction <= hi + TOLERANCE_SOC), "SoC outside window")
    previous = np.concatenate([[start.soc_fraction], plan.soc_fraction[:-1]])
    expected = (
        previous
        + (b.charge_efficiency * plan.battery_charge_kw - plan.battery_discharge_kw / b.discharge_efficiency)
        * plan.step_hours
        / b.capacity_kwh
    )
    check(np.abs(plan.soc_fraction - expected) <= 1e-5, "SoC does not follow the battery flows")
    check(plan.battery_charge_kw <= b.charge_power_max_kw + tol, "charge above its limit")
    check(plan.battery_discharge_kw <= b.discharge_power_max_kw + tol, "discharge above its limit")
    check(np.minimum(plan.battery_charge_kw, plan.battery_discharge_kw) <= 1e-3, "charge and discharge together")
    check(plan.shed_kw <= site.loads.sheddable_fraction * plan.load_kw + tol, "shed above the sheddable share")
    check(plan.curtailed_kw <= plan.pv_kw + tol, "curtailment above PV")
    check(plan.unserved_kw <= plan.load_kw - plan.shed_kw + tol, "unserved above the load")
    import_max = site.grid.import_limit_kw if site.grid else 0.0
    export_max = site.grid.export_limit_kw if site.grid else 0.0
    check(plan.grid_import_kw <= import_max + tol, "grid import above its limit")
    check(plan.grid_export_kw <= export_max + tol, "grid export above its limit")
    on = plan.generator_on.astype(bool)
    if g is None:
        check(~on & (plan.generator_kw <= tol), "generator used but the site has none")
        return problems
    check(plan.generator_kw <= np.where(on, g.rated_power_kw, 0.0) + tol, "generator above rated or on while off")
    if enforce_min_load:
        # Under its minimum load only where the battery could take no more: at the top of its window (or above
        # it, on its way down), or charging at its limit.
        top = plan.soc_fraction >= b.soc_max_fraction - 1e-4
        full = top | (plan.battery_charge_kw >= b.charge_power_max_kw - tol)
        loaded = plan.generator_kw >= np.where(on, g.min_power_kw, 0.0) - tol
        check(loaded | full, "generator below its minimum load with room in the battery")
    problems.extend(_run_rest_violations(on, site, start))
    return problems


def _run_rest_violations(on: NDArray[np.bool_], site: SiteModel, start: SiteState) -> list[str]:
    """Runs shorter than the minimum run time and rests shorter than the minimum rest time."""
    problems: list[str] = []
    state, length = start.generator_on, start.generator_steps_in_state
    for step, now in enumerate(on):
        if now == state:
            length += 1
            continue
        needed = site.min_run_steps if state else site.min_rest_steps
        if length < needed:
            kind = "run" if state else "rest"
            problems.append(f"generator {kind} of {length} step(s) ended at step {step}, minimum is {needed}")
        state, length = bool(now), 1
    return problems
