"""The site model: what the planner may do with the site's battery, generator, grid and loads.

One strict pydantic tree (``extra="forbid"``, every field titled and described, units in the field names)
that becomes a section of the agent config. Everything a plan must respect is here and validated at load:
a zero capacity, a SoC window upside down or a negative power limit is refused with the field named, so a
bad file fails at start-up rather than as an infeasible plan at night.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field, model_validator

from edge_agent.yamlconfig import StrictModel, load_yaml_model, validate_data

HOURS_PER_DAY = 24


class _Section(StrictModel, frozen=True):
    """A frozen section: a plan is made against one unchanging site model."""


class BatteryModel(_Section):
    """The battery: size, usable state-of-charge window, power limits and efficiencies."""

    capacity_kwh: float = Field(gt=0, title="Capacity")
    """Nameplate energy capacity in kWh."""
    soc_min_fraction: float = Field(default=0.1, ge=0, le=1, title="Lowest SoC")
    """Lowest usable state of charge (0..1)."""
    soc_max_fraction: float = Field(default=0.95, ge=0, le=1, title="Highest SoC")
    """Highest usable state of charge (0..1)."""
    charge_power_max_kw: float = Field(ge=0, title="Charge limit")
    """Largest charge power in kW."""
    discharge_power_max_kw: float = Field(ge=0, title="Discharge limit")
    """Largest discharge power in kW."""
    charge_efficiency: float = Field(default=0.95, gt=0, le=1, title="Charge efficiency")
    """Share of the charging power that ends up stored; round trip = charge x discharge."""
    discharge_efficiency: float = Field(default=0.95, gt=0, le=1, title="Discharge efficiency")
    """Delivered power per unit of stored power drawn while discharging."""
    initial_soc_fraction: float = Field(default=0.5, ge=0, le=1, title="Initial SoC")
    """State of charge a replay starts from (0..1)."""
    reserve_soc_fraction: float = Field(default=0.3, ge=0, le=1, title="Reserve SoC")
    """State of charge held for the critical load: the fallback rule starts the generator below it; the planner's
    nominal scenario pays a penalty for time spent below it."""

    @property
    def round_trip_efficiency(self) -> float:
        return self.charge_efficiency * self.discharge_efficiency

    @model_validator(mode="after")
    def _window_in_order(self) -> BatteryModel:
        if self.soc_min_fraction >= self.soc_max_fraction:
            raise ValueError(
                f"soc_min_fraction {self.soc_min_fraction} must be below soc_max_fraction {self.soc_max_fraction}"
            )
        if not self.soc_min_fraction <= self.reserve_soc_fraction <= self.soc_max_fraction:
            raise ValueError(
                f"reserve_soc_fraction {self.reserve_soc_fraction} must lie in the SoC window "
                f"[{self.soc_min_fraction}, {self.soc_max_fraction}]"
            )
        return self


class GeneratorModel(_Section):
    """A dispatchable generator (diesel, gas): power range, run/rest times and costs."""

    rated_power_kw: float = Field(gt=0, title="Rated power")
    """Largest output power in kW."""
    min_load_fraction: float = Field(default=0.3, ge=0, le=1, title="Minimum load")
    """Lowest output while running, as a share of rated power (engines wet-stack below it). Plans never schedule less;
    in operation a load below it is counted, not hidden."""
    min_run_minutes: float = Field(default=60.0, ge=0, title="Minimum run time")
    """Once started it runs at least this long."""
    min_rest_minutes: float = Field(default=30.0, ge=0, title="Minimum rest time")
    """Once stopped it stays off at least this long."""
    fuel_cost_per_kwh: float = Field(ge=0, title="Fuel cost")
    """Fuel cost per kWh of electricity produced (currency/kWh)."""
    start_cost: float = Field(default=0.0, ge=0, title="Start cost")
    """Cost of one start (wear, starter fuel), in currency."""

    @property
    def min_power_kw(self) -> float:
        return self.min_load_fraction * self.rated_power_kw


Tariff = float | list[float]


class GridModel(_Section):
    """A grid connection: power limits and tariffs (flat, or 24 hourly time-of-use values)."""

    import_limit_kw: float = Field(ge=0, title="Import limit")
    """Largest import power in kW."""
    export_limit_kw: float = Field(default=0.0, ge=0, title="Export limit")
    """Largest export in kW."""
    import_tariff_per_kwh: Tariff = Field(title="Import tariff")
    """Price of imported energy (currency/kWh): one value, or 24 values by local hour of day."""
    export_tariff_per_kwh: Tariff = Field(default=0.0, title="Export tariff")
    """Price paid for exported energy (currency/kWh): one value or 24 by local hour; never above the import tariff of
    the same hour (that would pay the plan to cycle the grid)."""

    @model_validator(mode="after")
    def _tariffs_sane(self) -> GridModel:
        imports = hourly(self.import_tariff_per_kwh, "import_tariff_per_kwh")
        exports = hourly(self.export_tariff_per_kwh, "export_tariff_per_kwh")
        for hour, (paid, earned) in enumerate(zip(imports, exports, strict=True)):
            if earned > paid:
                raise ValueError(f"export_tariff_per_kwh {earned} exceeds import_tariff_per_kwh {paid} at hour {hour}")
        return self


def hourly(tariff: Tariff, field: str) -> list[float]:
    """A tariff as 24 hourly values, refusing other lengths, negatives and non-finite prices."""
    values = [float(tariff)] * HOURS_PER_DAY if isinstance(tariff, int | float) else list(tariff)
    if len(values) != HOURS_PER_DAY:
        raise ValueError(f"{field} needs one value or {HOURS_PER_DAY} hourly values, got {len(values)}")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"{field} values must be finite and >= 0, got {values}")
    return values


class LoadClasses(_Section):
    """How the measured load splits: the sheddable share may be switched off, the rest is critical."""

    sheddable_fraction: float = Field(default=0.0, ge=0, le=1, title="Sheddable share")
    """Share of the load on circuits the controller may switch off (water heater, pumps)."""
    shed_penalty_per_kwh: float = Field(default=0.1, ge=0, title="Shed penalty")
    """Cost the plan charges per kWh shed. Priorities are lexicographic (unserved critical load, then fuel/import cost,
    then shedding), so keep it below the fuel cost."""

    @property
    def critical_fraction(self) -> float:
        return 1.0 - self.sheddable_fraction


class PlannerSettings(_Section):
    """How the planner weighs and solves; the defaults suit a 24 h horizon at 15 minutes."""

    horizon_steps: int = Field(default=96, ge=1, title="Horizon")
    """Steps planned ahead."""
    unserved_penalty_per_kwh: float = Field(default=1000.0, gt=0, title="Unserved penalty")
    """Cost per kWh of critical load left unserved; far above every price so that it ranks first."""
    stress_load_quantile: float = Field(default=0.9, gt=0, lt=1, title="Stress load quantile")
    """Load quantile of the bad-day scenario."""
    stress_pv_quantile: float = Field(default=0.1, gt=0, lt=1, title="Stress PV quantile")
    """PV quantile of the bad-day scenario."""
    reserve_shortfall_penalty_per_kwh_h: float = Field(default=1.0, ge=0, title="Reserve shortfall penalty")
    """Cost per kWh-hour the nominal plan keeps the battery under its reserve SoC (currency); above the fuel cost of
    refilling, far below the unserved penalty."""
    stress_weight: float = Field(default=0.3, ge=0, le=1, title="Stress weight")
    """Weight of the bad-day scenario in the objective (the nominal P50 one gets the rest)."""
    committed_steps: int = Field(default=4, ge=1, title="Committed steps")
    """Leading steps whose shedding both scenarios share (the steps applied before the next plan)."""
    commitment_block_steps: int = Field(default=4, ge=1, title="Commitment block")
    """The generator's on/off schedule is decided per block of this many steps (4 x 15 min = 1 h): fewer binaries, a
    solve in tens of milliseconds, and no 15-minute generator runs."""
    time_limit_s: float = Field(default=2.0, gt=0, title="Solver time limit")
    """Wall-clock budget of one solve in seconds."""
    mip_rel_gap: float = Field(default=0.02, ge=0, title="MIP gap")
    """Relative optimality gap at which the solver stops."""
    backstop_margin_fraction: float = Field(default=0.05, ge=0, le=1, title="Generator backstop margin")
    """Between plans, a stopped generator is started (after its minimum rest) when the measured SoC falls to within
    this margin above the battery's lowest SoC: the backstop for a load the bad-day scenario did not foresee; the next
    plan is made at once from the running generator."""
    mip_abs_gap: float = Field(default=0.05, ge=0, title="MIP absolute gap")
    """Absolute optimality gap (currency) at which the solver stops: a relative gap means little when stored energy's
    value brings the objective near zero."""


class FallbackRuleSettings(_Section):
    """Thresholds of the conservative rule used without forecasts or with a degraded model.

    The rule starts the generator below the battery's ``reserve_soc_fraction`` (that is how it holds the
    reserve) and stops it at ``generator_stop_soc_fraction``.
    """

    generator_stop_soc_fraction: float = Field(default=0.8, ge=0, le=1, title="Generator stop SoC")
    """Stop it at or above this SoC (after its minimum run time)."""
    shed_below_soc_fraction: float = Field(default=0.25, ge=0, le=1, title="Shed below SoC")
    """Shed the sheddable load below this SoC."""
    restore_above_soc_fraction: float = Field(default=0.4, ge=0, le=1, title="Restore above SoC")
    """Restore shed load at or above this SoC."""

    @model_validator(mode="after")
    def _hysteresis(self) -> FallbackRuleSettings:
        if self.shed_below_soc_fraction >= self.restore_above_soc_fraction:
            raise ValueError("shed_below_soc_fraction must be below restore_above_soc_fraction")
        return self


class SiteModel(_Section):
    """One site's controllable assets and the limits every plan must hold."""

    step_minutes: float = Field(default=15.0, gt=0, title="Step")
    """Length of one plan step in minutes."""
    utc_offset_hours: float = Field(default=0.0, ge=-14, le=14, title="UTC offset")
    """Local standard time minus UTC, in hours: places hourly tariffs on the local clock."""
    pv_rated_kw: float | None = Field(default=None, ge=0, title="PV rating")
    """AC rating of the PV system in kW; forecasts are clipped to it."""
    battery: BatteryModel = Field(title="Battery")
    generator: GeneratorModel | None = Field(default=None, title="Generator")
    """None: no generator."""
    grid: GridModel | None = Field(default=None, title="Grid")
    """None: off-grid."""
    loads: LoadClasses = Field(default_factory=LoadClasses, title="Load classes")
    planner: PlannerSettings = Field(default_factory=PlannerSettings, title="Planner")
    fallback: FallbackRuleSettings = Field(default_factory=FallbackRuleSettings, title="Fallback rule")

    @model_validator(mode="after")
    def _stop_above_reserve(self) -> SiteModel:
        if self.fallback.generator_stop_soc_fraction <= self.battery.reserve_soc_fraction:
            raise ValueError(
                f"fallback.generator_stop_soc_fraction {self.fallback.generator_stop_soc_fraction} must be above "
                f"battery.reserve_soc_fraction {self.battery.reserve_soc_fraction} (where the rule starts it)"
            )
        return self

    @property
    def step_hours(self) -> float:
        return self.step_minutes / 60.0

    def steps(self, minutes: float) -> int:
        """Whole steps needed to cover ``minutes`` (a 40-minute minimum run needs 3 steps of 15)."""
        return math.ceil(minutes / self.step_minutes - 1e-9)

    @property
    def min_run_steps(self) -> int:
        return self.steps(self.generator.min_run_minutes) if self.generator else 0

    @property
    def min_rest_steps(self) -> int:
        return self.steps(self.generator.min_rest_minutes) if self.generator else 0

    @property
    def backstop_soc_fraction(self) -> float:
        """SoC at or below which a stopped generator is started between plans (never above the reserve)."""
        battery = self.battery
        return min(battery.soc_min_fraction + self.planner.backstop_margin_fraction, battery.reserve_soc_fraction)


def parse_site_model(raw: object, source: str = "site model") -> SiteModel:
    """Validate a mapping as a site model; problems raise ConfigError naming each field."""
    return validate_data(raw, SiteModel, source)


def load_site_model(path: str | Path) -> SiteModel:
    """Read and validate a site-model YAML file."""
    return load_yaml_model(Path(path), SiteModel, what="site model")
