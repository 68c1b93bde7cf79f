"""Writing the plan's next-step setpoints over Modbus TCP: only the registers configured, always clamped.

Every value goes through :func:`setpoint_values` (the site model's hard limits, with the measured SoC) and
then the register's own ``min_value``/``max_value``; there is no other path to a write, so a retry, a
fallback or an error can never send an unclamped value.

What is written when (decided here, documented in docs/planning.md):

* the planner's plan, SoC fresh: every configured setpoint, clamped;
* the rule replaces the planner (no forecast, degraded model, solver) and the SoC is fresh: the battery
  setpoint is released (NaN: the device goes back to its own rule, which is the rule's battery behaviour),
  the rule's generator and shed decisions are written, clamped (they come from the measured SoC alone);
* the SoC is stale: only the release of the battery setpoint; the rule cannot decide without a SoC.

``on_fallback: nothing`` writes nothing in the last two cases: the device's setpoint timeout expires.
A failed write is retried on a fresh connection, then reported (alert, ``failed``); the next plan
writes again, from its own clamped values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.alerts import AlertLatch
from edge_agent.planning.dispatch import DispatchPlan
from edge_agent.planning.settings import ActuationSection, SetpointQuantity, SetpointWrite
from edge_agent.planning.site_model import SiteModel
from edge_agent.reporting.base import Reporter
from edge_agent.sensors.modbus import MODBUS_EXCEPTIONS, ModbusTcpConfig, resolve_register_map
from edge_agent.sensors.registers import DTYPES, RegisterMap, RegisterSpec, encode_value, raw_from_engineering

log = logging.getLogger(__name__)
RELEASE = math.nan


def setpoint_values(plan: DispatchPlan, site: SiteModel, soc_fraction: float | None) -> dict[SetpointQuantity, float]:
    """The next step's setpoints clamped to the site model's hard limits.

    Battery power (kW, positive charging) within the charge/discharge limits, and never further out of the
    SoC window: no discharge at or below the lowest SoC, no charge at or above the highest. Generator run
    only when the site has one; shed 0 or 1.
    """
    battery = site.battery
    power = float(plan.battery_charge_kw[0] - plan.battery_discharge_kw[0])
    power = min(max(power, -battery.discharge_power_max_kw), battery.charge_power_max_kw)
    if soc_fraction is not None and soc_fraction <= battery.soc_min_fraction:
        power = max(power, 0.0)
    if soc_fraction is not None and soc_fraction >= battery.soc_max_fraction:
        power = min(power, 0.0)
    return {
        "battery_power": power if math.isfinite(power) else 0.0,
        "generator_run": 1.0 if site.generator is not None and bool(plan.generator_on[0]) else 0.0,
        "shed": 1.0 if float(plan.shed_kw[0]) > 1e-6 else 0.0,
    }


@dataclass(frozen=True)
class WriteOutcome:
    """What one actuation round did: the summary's ``actuation`` state and its detail."""

    state: str
    detail: str | None


@dataclass(frozen=True)
class _Target:
    row: SetpointWrite
    host: str
    port: int
    unit_id: int
    register_map: RegisterMap
    spec: RegisterSpec

    def words(self, value: float) -> list[int]:
        """Register words for a plan value: scaled, clamped to the register's range, encoded (NaN releases)."""
        spec = self.spec
        engineering = value * self.row.scale
        if math.isfinite(engineering):
            if spec.min_value is not None:
                engineering = max(engineering, spec.min_value)
            if spec.max_value is not None:
                engineering = min(engineering, spec.max_value)
        raw = raw_from_engineering(spec, engineering) if math.isfinite(engineering) else math.nan
        order = spec.word_order or self.register_map.word_order
        return encode_value(raw, spec.dtype, order, self.register_map.byte_order)

    @property
    def releasable(self) -> bool:
        """Only a float register can say "no setpoint" (NaN); integer ones are left to the device's timeout."""
        return DTYPES[self.spec.dtype].sentinel is None


class SetpointWriter:
    """Writes configured setpoints to Modbus TCP holding registers, with retries and one alert per failure."""

    def __init__(
        self, section: ActuationSection, sources: list[Any], base_dir: Path | None, reporter: Reporter
    ) -> None:
        self.section = section
        self.targets: dict[SetpointQuantity, _Target] = {}
        by_name = {source.name: source for source in sources}
        for row in section.setpoints:
            source: ModbusTcpConfig = by_name[row.source]
            device = next(d for d in source.devices if d.name == row.device)
            register_map = resolve_register_map(device.register_map, base_dir)
            spec = next(r for r in register_map.registers if r.name == row.holding_register)
            self.targets[row.quantity] = _Target(
                row, device.host or source.host, device.port or source.port, device.unit_id, register_map, spec
            )
        self._clients: dict[tuple[str, int], Any] = {}
        self.latch = AlertLatch(reporter, "setpoint-write-failed", "setpoint-write-recovered", "critical")
        self.writes = 0

    def _client(self, target: _Target) -> Any:
        from pymodbus.client import ModbusTcpClient

        key = (target.host, target.port)
        if key not in self._clients:
            self._clients[key] = ModbusTcpClient(
                target.host, port=target.port, timeout=self.section.timeout_s, retries=0
            )
        return self._clients[key]

    def apply(self, values: dict[SetpointQuantity, float]) -> WriteOutcome:
        """Write each configured quantity present in ``values`` (NaN releases a float register)."""
        written, failed = [], []
        for quantity, target in self.targets.items():
            if quantity not in values:
                continue
            value = values[quantity]
            if math.isnan(value) and not target.releasable:
                continue
            error = self._write(target, target.words(value))
            label = f"{target.row.device}.{target.row.holding_register}"
            if error is None:
                written.append(f"{label}={'none' if math.isnan(value) else f'{value * target.row.scale:g}'}")
                self.latch.clear_once(label, f"setpoint {label} written again")
            else:
                failed.append(f"{label}: {error}")
                self.latch.raise_once(label, f"setpoint {label} could not be written: {error}")
        if failed:
            return WriteOutcome("failed", "; ".join(failed + written))
        released = all(math.isnan(values[q]) for q in values if q in self.targets)
        state = "released" if released and written else "written" if written else "held"
        return WriteOutcome(state, ", ".join(written) or "nothing configured for these setpoints")

    def _write(self, target: _Target, words: list[int]) -> str | None:
        """One write with retries on a fresh connection; the reason of the last failure, None when written."""
        from pymodbus.exceptions import ModbusException

        client = self._client(target)
        reason = "not attempted"
        for _ in range(self.section.retries + 1):
            try:
                if not client.connect():
                    reason = "cannot connect"
                    client.close()
                    continue
                response = client.write_registers(target.spec.address, words, device_id=target.unit_id)
            except (ModbusException, OSError) as exc:
                reason = f"no answer ({exc})"
                client.close()
                continue
            if response.isError():
                code = getattr(response, "exception_code", 0)
                reason = f"device answered Modbus exception {code} ({MODBUS_EXCEPTIONS.get(code, 'unknown')})"
                continue
            self.writes += 1
            return None
        log.warning("setpoint %s not written: %s", target.row.holding_register, reason)
        return f"{reason} after {self.section.retries + 1} attempt(s)"

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
