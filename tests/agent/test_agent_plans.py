"""The whole agent plans: its own forecast drives the dispatch plan, solved off the sensor loop's thread.

A real exported W1 bundle forecasts the household load; the simulated site (real pymodbus server) gives
the meter, the PV inverter and the battery near empty. The loop never waits for the solver: the cycle
that starts a solve returns at once, and the next cycle after it finished reports the plan and writes the
battery setpoint the site's battery then follows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.reporting.base import MemoryReporter
from gridedge.datafiles import read_series
from gridedge.sim.site import BatteryParams, SimulatedSite, SiteServer
from gridedge.sites import site_values

pytestmark = [pytest.mark.modbus, pytest.mark.slow]
PERIOD = 900
SITE_MODEL = Path(__file__).resolve().parents[2] / "firmware_configs" / "sites" / "offgrid-household-site-model.yaml"


@pytest.fixture
def low_battery_site(make_clock: Any) -> Any:
    """The simulated site at 12 % SoC in the evening, served on a free port; the test moves its clock."""
    clock = make_clock()
    site = SimulatedSite(speed=1.0, start_offset_s=18 * 3600.0, battery=BatteryParams(initial_soc=12.0), clock=clock)
    server = SiteServer(site, port=0).start_in_thread()
    yield site, server, clock
    server.stop()


def planning_agent(tmp_path: Path, exported: Any, port: int) -> Agent:
    raw = site_values("simulated-household", port)
    raw["sensors"][0]["devices"] = [{**d, "timeout_s": 0.5} for d in raw["sensors"][0]["devices"]]
    config = AgentConfig.model_validate(
        {
            **raw,
            "state_dir": str(tmp_path / "state"),
            "bundle": {"path": str(exported.keras), "public_key": str(exported.keys / "bundle-signing.pub")},
            "runtime": {"type": "litert"},
            "planning": {
                "site_model_file": str(SITE_MODEL),
                "soc": {"source": "battery.soc", "scale": 0.01},
                "soc_max_age_s": 1800,
                "load": {
                    "measured": {"source": "meter.active_power", "scale": 0.001},
                    "forecast_target": "Global_active_power",
                },
                "pv": {"measured": {"source": "inverter.ac_power", "scale": 0.001}},
                "history_days": 2,
                "actuation": {
                    "setpoints": [
                        {
                            "quantity": "battery_power",
                            "source": "site",
                            "device": "battery",
                            "holding_register": "power_setpoint",
                            "scale": 1000,
                        }
                    ],
                    "timeout_s": 0.5,
                },
            },
        }
    )
    return Agent(config, MemoryReporter())


def seed_history(agent: Agent, now: float) -> None:
    """Two days of real W1 load and W2 PV (kW) before ``now`` in the planning history (its PV baseline)."""
    cycle = agent.planning
    assert cycle is not None
    steps = cycle.history.steps
    starts = (int(now) // PERIOD - steps + np.arange(steps)) * PERIOD
    _, load = read_series("w1_load_uci_15min")
    _, pv = read_series("w2_pv_system50_15min")
    i = 96 * 120
    values = np.stack(
        [load["Global_active_power"][i : i + steps], np.nan_to_num(pv["ac_power"][i : i + steps]) / 1000.0 * 5 / 3.4],
        axis=1,
    )
    cycle.history.seed(starts, values)


def test_the_agent_plans_from_its_own_forecast_without_holding_up_its_loop(
    tmp_path: Path, exported: Any, low_battery_site: Any
) -> None:
    site, server, clock = low_battery_site
    agent = planning_agent(tmp_path, exported, server.port)
    reporter = agent.reporter
    assert isinstance(reporter, MemoryReporter)
    planning = agent.planning
    assert planning is not None
    seed_history(agent, site.site_time)
    agent.start()
    try:
        # Until the model has a full window there is no load forecast: the rule decides and says why.
        agent.cycle()
        assert planning.latest is not None and planning.latest.source == "rule"
        assert "has not forecast Global_active_power" in (planning.latest.reason or "")
        solve_started_in: float | None = None
        for _ in range(200):
            clock.now += PERIOD
            began = time.perf_counter()
            agent.cycle()
            took = time.perf_counter() - began
            if planning.solving is not None:
                solve_started_in = took
                break
        assert solve_started_in is not None, "no solve started once the model forecast"
        solving = planning.solving
        assert solving is not None and solving.wait(60.0)
        plan = solving.result()
        assert plan is not None and plan.source == "planner", plan and plan.reason
        # The cycle that asked for the plan returned before the solver was done with it.
        assert solve_started_in < plan.solve_time_s
        writes_before = site.setpoint_writes
        clock.now += 60
        agent.cycle()
        state = planning.latest
        assert state is not None and state.source == "planner" and state.actuation == "written"
        assert site.setpoint_writes == writes_before + 1
        assert site.battery_setpoint_w == pytest.approx(state.battery_setpoint_kw * 1000, abs=0.5)
        battery = planning.site.battery
        assert -battery.discharge_power_max_kw <= state.battery_setpoint_kw <= battery.charge_power_max_kw
        agent.publish_summary()
        summary: Any = reporter.of_kind("summary")[-1]
        assert summary.plan is not None and summary.plan.source == "planner"
        assert summary.forecasts and summary.forecasts[0].target == "Global_active_power"
    finally:
        agent.close()
