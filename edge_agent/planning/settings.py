"""The ``planning`` section of the agent config: site model, cadence, measured channels and actuation.

Advisory by default: without ``actuation`` the plan is only reported. Each setpoint written must be listed
with the Modbus TCP source, device and holding register it goes to; anything not listed is never written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edge_agent.planning.site_model import SiteModel, load_site_model
from edge_agent.yamlconfig import StrictModel


class MeasuredChannel(StrictModel, frozen=True):
    """A sensor channel converted to the planner's unit (kW, or a 0..1 fraction for SoC): source * scale + offset."""

    source: str = Field(min_length=1, title="Sensor channel")
    """Sensor channel, e.g. meter.active_power."""
    scale: float = Field(default=1.0, title="Scale")
    """Multiplier, e.g. 0.001 for W to kW, 0.01 for %."""
    offset: float = Field(default=0.0, title="Offset")
    """Added after scaling."""

    def convert(self, value: float) -> float:
        return value * self.scale + self.offset


class ForecastChannel(StrictModel, frozen=True):
    """A planned power (load or PV): where it is measured and which bundle target forecasts it, if any."""

    measured: MeasuredChannel = Field(title="Measured")
    """The sensor channel in kW after conversion; feeds the on-device baseline."""
    forecast_target: str | None = Field(default=None, title="Bundle target")
    """Target channel of the bundle whose forecast to use (its unit W, kW or MW); None: the on-device seasonal baseline
    over the measured history."""


SetpointQuantity = Literal["battery_power", "generator_run", "shed"]


class SetpointWrite(StrictModel, frozen=True):
    """One setpoint the agent may write: plan quantity -> holding register of a Modbus TCP device."""

    quantity: SetpointQuantity = Field(title="Quantity")
    """battery_power: next step's battery power, kW positive charging (clamped to the battery's power limits and SoC
    window); generator_run: 1 run / 0 stop; shed: 1 shed / 0 restore."""
    source: str = Field(min_length=1, title="Sensor source")
    """Name of the modbus_tcp sensor source."""
    device: str = Field(min_length=1, title="Device")
    """Device of that source (its unit id and map)."""
    holding_register: str = Field(min_length=1, title="Register")
    """Holding register of the device's register map; its dtype, scale and min/max range apply."""
    scale: float = Field(default=1.0, title="Scale")
    """Register engineering units per plan unit (1000 writes a battery power in W)."""


class ActuationSection(StrictModel, frozen=True):
    """Writing the plan's setpoints over Modbus, only those listed."""

    setpoints: list[SetpointWrite] = Field(min_length=1, title="Setpoints")
    """Each setpoint the agent may write, one row each."""
    retries: int = Field(default=2, ge=0, le=10, title="Retries")
    """Extra attempts per failed write."""
    timeout_s: float = Field(default=1.0, gt=0, le=60, title="Timeout (s)")
    """Wait per write attempt."""
    on_fallback: Literal["release", "nothing"] = Field(default="release", title="On fallback")
    """When the planner is replaced (degraded model, stale SoC, missing forecast, solver): release writes 'no setpoint'
    (NaN) so the device returns to its own rule; nothing writes nothing and lets the device's setpoint timeout
    expire."""

    @model_validator(mode="after")
    def _one_row_per_quantity(self) -> ActuationSection:
        quantities = [row.quantity for row in self.setpoints]
        repeated = sorted({q for q in quantities if quantities.count(q) > 1})
        if repeated:
            raise ValueError(f"setpoints repeat quantity {repeated}; write each quantity to one register")
        return self


class PlanningSection(StrictModel):
    """Planning on the device: every ``interval_minutes`` a dispatch plan over the site model's horizon."""

    site_model: SiteModel | None = Field(default=None, title="Site model")
    """The site model inline (or give site_model_file)."""
    site_model_file: Path | None = Field(default=None, title="Site model file")
    """Path of the site model's YAML file (relative to the agent config), instead of site_model."""
    interval_minutes: float = Field(default=15.0, gt=0, le=1440, title="Planning interval")
    """Minutes of site time between plans."""
    soc: MeasuredChannel = Field(title="State of charge")
    """Sensor channel of the battery SoC, converted to 0..1 (scale 0.01 for %)."""
    soc_max_age_s: float = Field(default=120.0, gt=0, title="Oldest usable SoC (s)")
    """A SoC reading older than this (site seconds) is stale: the rule plans and nothing is written."""
    load: ForecastChannel = Field(title="Load")
    """The site's load in kW."""
    pv: ForecastChannel = Field(title="PV")
    """The site's PV production in kW."""
    history_days: int = Field(default=4, ge=1, le=14, title="History (days)")
    """Days of measured load and PV kept for the baseline: one for its P50, the others for its spread."""
    actuation: ActuationSection | None = Field(default=None, title="Actuation")
    """None (the default): advisory only, nothing is written."""

    @model_validator(mode="after")
    def _one_site_model(self) -> PlanningSection:
        if (self.site_model is None) == (self.site_model_file is None):
            raise ValueError("give exactly one of site_model (inline) and site_model_file")
        return self

    def resolved_site_model(self, base_dir: Path | None) -> SiteModel:
        """The site model, read from its file when the section names one."""
        if self.site_model is not None:
            return self.site_model
        path = self.site_model_file
        assert path is not None
        return load_site_model(path if path.is_absolute() or base_dir is None else base_dir / path)
