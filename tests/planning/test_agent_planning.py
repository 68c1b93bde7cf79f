"""The planning cycle against the simulated site over real Modbus TCP: SoC read, plan, report, setpoint written.

The site's battery obeys the holding-register setpoint the cycle writes; a degraded model, a stale SoC
reading or a refused write never leads to a planner setpoint, and every value written is clamped.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edge_agent.config import AgentConfig, load_config
from edge_agent.doctor import _planning_check
from edge_agent.errors import ConfigError
from edge_agent.health import HealthReasons
from edge_agent.messages import Forecast as ForecastMessage
from edge_agent.messages import SummaryContent
from edge_agent.planning import cycle as cycle_module
from edge_agent.planning.actuation import SetpointWriter, setpoint_values
from edge_agent.planning.cycle import BackgroundSolve, PlanningCycle, PlanRequest, build_planning
from edge_agent.planning.dispatch import DispatchPlan
from edge_agent.planning.settings import ActuationSection
from edge_agent.planning.site_model import SiteModel
from edge_agent.reporting.base import MemoryReporter
from edge_agent.sensors.modbus import ModbusTcpSource
from gridedge.datafiles import read_series
from gridedge.sim.site import BatteryParams, SimulatedSite, SiteServer

from .conftest import EXAMPLE, example_raw

pytestmark = pytest.mark.modbus
REGISTERS = EXAMPLE.parents[1] / "registers"
STEP = 900
HORIZON = 32  # 8 h keeps each solve short; the agent plans 24 h


class SiteClock:
    """The simulated site's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served() -> Any:
    """A simulated site at 12 % SoC (the battery near empty: the plan must start the generator) on a free port."""
    clock = SiteClock()
    site = SimulatedSite(speed=1.0, start_offset_s=18 * 3600.0, battery=BatteryParams(initial_soc=12.0), clock=clock)
    server = SiteServer(site).start_in_thread()
    yield site, server, clock
    server.stop()


def planning_raw(port: int, **overrides: Any) -> dict[str, Any]:
    site = example_raw()
    site["planner"]["horizon_steps"] = HORIZON
    raw: dict[str, Any] = {
        "site": "s1",
        "device": "d1",
        "bundle": {"path": "bundle", "public_key": "key.pem"},
        "runtime": {"type": "onnxruntime"},
        "sensors": [
            {
                "type": "modbus_tcp",
                "name": "site_bus",
                "port": port,
                "devices": [
                    {"name": "inverter", "unit_id": 1, "register_map": "inverter_sunspec", "timeout_s": 0.5},
                    {"name": "battery", "unit_id": 2, "register_map": "battery_bms", "timeout_s": 0.5},
                    {"name": "meter", "unit_id": 3, "register_map": "load_meter", "timeout_s": 0.5},
                ],
            }
        ],
        "planning": {
            "site_model": site,
            "soc": {"source": "battery.soc", "scale": 0.01},
            "soc_max_age_s": 300,
            "load": {"measured": {"source": "meter.active_power", "scale": 0.001}},
            "pv": {"measured": {"source": "inverter.ac_power", "scale": 0.001}},
            "history_days": 2,
            "actuation": {
                "setpoints": [
                    {
                        "quantity": "battery_power",
                        "source": "site_bus",
                        "device": "battery",
                        "holding_register": "power_setpoint",
                        "scale": 1000,
                    }
                ],
                "retries": 1,
                "timeout_s": 0.5,
            },
        },
    }
    raw["planning"].update(overrides)
    return raw


def config_of(raw: dict[str, Any], tmp_path: Path) -> AgentConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_config(path)


def seeded_cycle(config: AgentConfig, reporter: MemoryReporter, reasons: HealthReasons, now: float) -> PlanningCycle:
    """The config's planning cycle with two days of real W1 load and W2 PV (kW) before ``now`` in its history."""
    cycle = build_planning(config, reporter, reasons)
    assert cycle is not None
    steps = cycle.history.steps
    starts = (int(now) // STEP - steps + np.arange(steps)) * STEP
    _, load = read_series("w1_load_uci_15min")
    _, pv = read_series("w2_pv_system50_15min")
    i, j = 96 * 120, 96 * 120  # two days in early May of each file
    values = np.stack(
        [load["Global_active_power"][i : i + steps], np.nan_to_num(pv["ac_power"][j : j + steps]) / 1000.0 * 5 / 3.4],
        axis=1,
    )
    cycle.history.seed(starts, values)
    return cycle


def ready_cycle(site: SimulatedSite, config: AgentConfig) -> tuple[PlanningCycle, MemoryReporter, HealthReasons, float]:
    """A seeded cycle that took the site's sweep now; its reporter, health reasons and the time."""
    reporter, reasons = MemoryReporter(), HealthReasons()
    now = site.site_time
    cycle = seeded_cycle(config, reporter, reasons, now)
    cycle.add_sweep(now, sweep(config))
    return cycle, reporter, reasons, now


def alert_codes(reporter: MemoryReporter) -> list[str]:
    return [getattr(alert, "code", "") for alert in reporter.of_kind("alert")]


def sweep(config: AgentConfig) -> dict[str, float]:
    """One real read of the site, as the agent's sweep gives it (NaN where unusable)."""
    source = ModbusTcpSource(config.sensors[0])  # type: ignore[arg-type]
    with source:
        return source.read().values()


def test_plan_is_written_clamped_and_the_battery_follows_it(served: Any, tmp_path: Path) -> None:
    site, server, clock = served
    config = config_of(planning_raw(server.port), tmp_path)
    cycle, reporter, reasons, now = ready_cycle(site, config)
    assert cycle.soc == pytest.approx(0.12, abs=0.01)
    state = cycle.run(now, [], model_degraded=False)
    assert state.source == "planner", state.reason
    assert state.actuation == "written", state.actuation_detail
    battery = cycle.site.battery
    assert -battery.discharge_power_max_kw <= state.battery_setpoint_kw <= battery.charge_power_max_kw
    assert site.battery_setpoint_w == pytest.approx(state.battery_setpoint_kw * 1000, abs=0.5)
    # Near empty, the plan starts the generator: one alert, repeated plans do not repeat it.
    assert state.generator_on
    codes = alert_codes(reporter)
    assert codes.count("plan-generator-start") == 1
    clock.now += 900
    cycle.add_sweep(site.site_time, sweep(config))
    assert cycle.run(site.site_time, [], model_degraded=False).source == "planner"
    assert alert_codes(reporter).count("plan-generator-start") == 1
    # The plan travels in the summary, its SoC trajectory bounded.
    summary = SummaryContent.model_validate(
        {"window_start": "2026-01-01T00:00:00Z", "window_end": "2026-01-01T00:05:00Z", "plan": state.model_dump()}
    )
    assert summary.plan is not None and 0 < len(summary.plan.soc_trajectory) <= 48
    assert "planning" not in reasons


def test_the_loop_solves_in_the_background_and_applies_the_plan_when_it_is_done(served: Any, tmp_path: Path) -> None:
    site, server, clock = served
    config = config_of(planning_raw(server.port), tmp_path)
    cycle, _, reasons, now = ready_cycle(site, config)
    assert cycle.tick(now, [], model_degraded=False) is None  # solving: nothing applied, nothing written yet
    solving = cycle.solving
    assert solving is not None and site.setpoint_writes == 0
    assert solving.wait(30.0)
    clock.now += 60
    later = site.site_time
    cycle.add_sweep(later, sweep(config))
    state = cycle.tick(later, [], model_degraded=False)
    assert state is not None and state.source == "planner", state
    assert state.actuation == "written" and site.setpoint_writes == 1
    assert state.made_at.timestamp() == pytest.approx(int(now) // STEP * STEP)  # the plan is the one asked at `now`
    assert cycle.solving is None and "planning" not in reasons


def test_the_backstop_starts_the_generator_between_plans_and_replans_around_it(served: Any, tmp_path: Path) -> None:
    site, server, clock = served
    raw = planning_raw(server.port)
    raw["planning"]["site_model"]["planner"]["backstop_margin_fraction"] = 0.0
    config = config_of(raw, tmp_path)
    cycle, reporter, _, now = ready_cycle(site, config)
    # A plan made above the backstop level with the generator stopped ...
    planned = cycle.tick(now, [], model_degraded=False)
    assert planned is None and cycle.solving is not None and cycle.solving.wait(30.0)
    assert not cycle.solving.request.state.generator_on
    in_flight = cycle.solving
    # ... then the SoC reaches the backstop (the site model's margin raised to where it is now).
    cycle.site = cycle.site.model_copy(
        update={"planner": cycle.site.planner.model_copy(update={"backstop_margin_fraction": 0.05})}
    )
    assert cycle.soc is not None and cycle.soc <= cycle.site.backstop_soc_fraction
    clock.now += 60
    cycle.add_sweep(site.site_time, sweep(config))
    assert cycle.tick(site.site_time, [], model_degraded=False) is None
    assert in_flight.superseded  # made with the generator stopped: never applied
    assert alert_codes(reporter).count("generator-backstop-start") == 1
    replan = cycle.solving
    assert replan is not None and replan is not in_flight and replan.request.state.generator_on
    assert replan.wait(30.0)
    state = cycle.tick(site.site_time, [], model_degraded=False)
    assert state is not None and state.source == "planner" and state.generator_on
    assert cycle.plan is not None and cycle.plan.generator_on[: cycle.site.min_run_steps].all()  # its minimum run


def test_a_solver_that_does_not_return_is_replaced_by_the_rule(
    served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, server, clock = served
    raw = planning_raw(server.port)
    raw["planning"]["site_model"]["planner"]["time_limit_s"] = 0.05
    raw["planning"]["site_model"].pop("generator")  # battery only: no backstop start between the plans here
    config = config_of(raw, tmp_path)
    monkeypatch.setattr(cycle_module, "OVERDUE_FLOOR_S", 0.0)
    cycle, reporter, reasons, now = ready_cycle(site, config)
    request = cycle.prepare(now, [], model_degraded=False)
    assert isinstance(request, PlanRequest)
    release = threading.Event()

    def hung_solver() -> DispatchPlan:  # a solver stuck in native code: the thread cannot be interrupted
        release.wait()
        return cycle.solve(request)

    hung = cycle.solving = BackgroundSolve(hung_solver, request)
    time.sleep(cycle.overdue_s + 0.05)
    clock.now += 900
    later = site.site_time
    cycle.add_sweep(later, sweep(config))
    state = cycle.tick(later, [], model_degraded=False)
    assert state is not None and state.source == "rule" and "has not returned" in (state.reason or "")
    assert state.actuation == "released" and math.isnan(site.battery_setpoint_w)
    assert "planning" in reasons and alert_codes(reporter).count("plan-fallback") == 1
    # When it returns at last, its plan (made for a moment long gone) is dropped and a fresh solve starts.
    release.set()
    assert hung.wait(30.0)
    clock.now += 60
    cycle.add_sweep(site.site_time, sweep(config))
    assert cycle.tick(site.site_time, [], model_degraded=False) is None
    fresh = cycle.solving
    assert fresh is not None and fresh is not hung and fresh.wait(30.0)
    state = cycle.tick(site.site_time, [], model_degraded=False)
    assert state is not None and state.source == "planner" and state.actuation == "written"
    assert "planning" not in reasons


def test_a_degraded_model_is_not_followed(served: Any, tmp_path: Path) -> None:
    site, server, _ = served
    raw = planning_raw(server.port)
    raw["planning"]["load"]["forecast_target"] = "Global_active_power"
    config = config_of(raw, tmp_path)
    cycle, reporter, reasons, now = ready_cycle(site, config)
    state = cycle.run(now, [], model_degraded=True)
    assert state.source == "rule" and "model degraded" in (state.reason or "")
    assert state.actuation == "released"
    assert math.isnan(site.battery_setpoint_w)  # the battery runs on its own rule, no planner setpoint
    assert "planning" in reasons and "model degraded" in reasons.state()[1]  # type: ignore[operator]
    assert alert_codes(reporter).count("plan-fallback") == 1


def test_a_bundle_forecast_in_watts_drives_the_plan(served: Any, tmp_path: Path) -> None:
    site, server, _ = served
    raw = planning_raw(server.port)
    raw["planning"]["load"]["forecast_target"] = "Global_active_power"
    config = config_of(raw, tmp_path)
    cycle = seeded_cycle(config, MemoryReporter(), HealthReasons(), site.site_time)
    now = site.site_time
    cycle.add_sweep(now, sweep(config))
    origin = int(now) // STEP * STEP
    message = ForecastMessage.model_validate(
        {
            "target": "Global_active_power",
            "unit": "W",
            "origin": origin,
            "step_s": STEP,
            "values": [800.0] * 8,
            "quantiles": [{"level": 0.1, "values": [500.0] * 8}, {"level": 0.9, "values": [1500.0] * 8}],
        }
    )
    state = cycle.run(now, [message], model_degraded=False)
    assert state.source == "planner", state.reason
    assert cycle.plan is not None
    assert cycle.plan.load_kw[:8] == pytest.approx(np.full(8, 0.8))


def test_a_stale_soc_reading_writes_no_plan_setpoint(served: Any, tmp_path: Path) -> None:
    site, server, clock = served
    config = config_of(planning_raw(server.port), tmp_path)
    reporter = MemoryReporter()
    now = site.site_time
    cycle = seeded_cycle(config, reporter, HealthReasons(), now)
    cycle.add_sweep(now, sweep(config))
    assert cycle.run(now, [], model_degraded=False).actuation == "written"
    site.set_fault("battery", "hang")
    clock.now += 600  # ten site minutes without a SoC: older than soc_max_age_s
    later = site.site_time
    values = sweep(config)
    assert math.isnan(values["battery.soc"])
    cycle.add_sweep(later, values)
    site.set_fault("battery", "none")
    writes_before = site.setpoint_writes
    state = cycle.run(later, [], model_degraded=False)
    assert state.source == "rule" and "stale" in (state.reason or "")
    assert state.soc is None
    assert state.actuation == "released"
    assert site.setpoint_writes == writes_before + 1 and math.isnan(site.battery_setpoint_w)


def test_a_refused_write_is_retried_alerted_and_never_unclamped(served: Any, tmp_path: Path) -> None:
    site, server, _ = served
    raw = planning_raw(server.port)
    # A map whose setpoint register sits where the BMS has none: the device answers "illegal data address".
    bms = yaml.safe_load((REGISTERS / "battery_bms.yaml").read_text(encoding="utf-8"))
    next(row for row in bms["registers"] if row["name"] == "power_setpoint")["address"] = 300
    raw["sensors"][0]["devices"][1]["register_map"] = bms
    config = config_of(raw, tmp_path)
    reporter = MemoryReporter()
    now = site.site_time
    cycle = seeded_cycle(config, reporter, HealthReasons(), now)
    cycle.add_sweep(now, sweep(config))
    state = cycle.run(now, [], model_degraded=False)
    assert state.actuation == "failed"
    assert "exception 2" in (state.actuation_detail or "") and "after 2 attempt(s)" in (state.actuation_detail or "")
    assert site.setpoint_writes == 0 and math.isnan(site.battery_setpoint_w)
    cycle.run(now + 900, [], model_degraded=False)
    assert alert_codes(reporter).count("setpoint-write-failed") == 1


def test_an_out_of_range_plan_is_clamped_to_the_site_and_the_register(served: Any, tmp_path: Path) -> None:
    site, server, _ = served
    config = config_of(planning_raw(server.port), tmp_path)
    model = config.planning.site_model  # type: ignore[union-attr]
    assert model is not None
    huge = _one_step_plan(charge_kw=50.0, discharge_kw=0.0)
    values = setpoint_values(huge, model, soc_fraction=0.5)
    assert values["battery_power"] == model.battery.charge_power_max_kw
    assert setpoint_values(_one_step_plan(0.0, 50.0), model, 0.5)["battery_power"] == -5.0
    # At the SoC limits the battery may not be pushed further out of its window.
    assert setpoint_values(_one_step_plan(0.0, 3.0), model, 0.1)["battery_power"] == 0.0
    assert setpoint_values(_one_step_plan(3.0, 0.0), model, 0.95)["battery_power"] == 0.0
    # A scale that would overrun the register is held at the register's max_value (10 kW).
    section = ActuationSection.model_validate(
        {"setpoints": [{"quantity": "battery_power", "source": "site_bus", "device": "battery",
                        "holding_register": "power_setpoint", "scale": 5000}]}
    )  # fmt: skip
    writer = SetpointWriter(section, list(config.sensors), None, MemoryReporter())
    assert writer.apply({"battery_power": 4.0}).state == "written"
    writer.close()
    assert site.battery_setpoint_w == pytest.approx(10_000.0)


def _one_step_plan(charge_kw: float, discharge_kw: float) -> DispatchPlan:
    one = np.ones(1)
    return DispatchPlan(
        timestamps_utc=np.zeros(1, dtype=np.int64),
        step_hours=0.25,
        load_kw=one,
        pv_kw=one,
        battery_charge_kw=np.array([charge_kw]),
        battery_discharge_kw=np.array([discharge_kw]),
        soc_fraction=one * 0.5,
        generator_on=np.zeros(1, dtype=bool),
        generator_kw=np.zeros(1),
        shed_kw=np.zeros(1),
        unserved_kw=np.zeros(1),
        grid_import_kw=np.zeros(1),
        grid_export_kw=np.zeros(1),
        curtailed_kw=np.zeros(1),
        source="planner",
        status="optimal",
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["planning"]["site_model"]["battery"].update(capacity_kwh=0),
         "planning.site_model.battery.capacity_kwh"),
        (lambda r: r["planning"].update(interval_minutes=-5), "planning.interval_minutes"),
        (lambda r: r["planning"]["actuation"]["setpoints"][0].update(source="nope"), "setpoints.0.source 'nope'"),
        (lambda r: r["planning"]["actuation"]["setpoints"][0].update(device="pump"), "setpoints.0.device 'pump'"),
        (lambda r: r["planning"]["actuation"]["setpoints"][0].update(holding_register="soc_typo"),
         "setpoints.0.holding_register 'soc_typo'"),
        (lambda r: r["planning"]["actuation"]["setpoints"][0].update(holding_register="soc_min"),
         "setpoints.0.holding_register 'soc_min' is not a setpoint register"),
    ],
)  # fmt: skip
def test_bad_planning_sections_are_refused_naming_the_field(tmp_path: Path, edit: Any, message: str) -> None:
    raw = planning_raw(1502)
    edit(raw)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_of(raw, tmp_path)


def test_site_model_file_is_read_and_validated_at_load(tmp_path: Path) -> None:
    raw = planning_raw(1502)
    del raw["planning"]["site_model"]
    raw["planning"]["site_model_file"] = str(EXAMPLE)
    config = config_of(raw, tmp_path)
    assert isinstance(config.planning.site_model, SiteModel)  # type: ignore[union-attr]
    raw["planning"]["site_model_file"] = "absent-site.yaml"
    with pytest.raises(ConfigError, match=r"absent-site\.yaml"):
        config_of(raw, tmp_path)


def test_doctor_says_which_planning_input_is_missing(tmp_path: Path) -> None:
    config = config_of(planning_raw(1502), tmp_path)
    missing = _planning_check(config, {"battery.soc": 50.0, "meter.active_power": 800.0})
    assert missing.verdict == "fail" and "'PV': 'inverter.ac_power'" in missing.detail
    ok = _planning_check(config, {"battery.soc": 50.0, "meter.active_power": 800.0, "inverter.ac_power": 0.0})
    assert ok.verdict == "pass"
    assert "SoC 50%" in ok.detail and "battery_power -> battery.power_setpoint" in ok.detail
