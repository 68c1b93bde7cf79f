"""The simulated site: battery physics, data-driven values, and what it serves over real Modbus TCP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pymodbus.client import ModbusTcpClient

from edge_agent.sensors.base import ChannelStatus
from edge_agent.sensors.modbus import ModbusTcpSource
from edge_agent.sensors.registers import decode_registers
from gridedge.datafiles import read_series
from gridedge.sim.site import BatteryModel, BatteryParams, SimulatedSite, SiteServer

pytestmark = pytest.mark.modbus
DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def test_battery_charges_at_most_its_limit_and_stops_at_soc_max() -> None:
    params = BatteryParams(capacity_wh=1000, max_charge_w=500, soc_max=90, initial_soc=80, charge_efficiency=0.9)
    battery = BatteryModel(params)
    taken = battery.step(2000, 60)  # asks for 2 kW for a minute: limited to 500 W
    assert taken == 500
    assert battery.soc == pytest.approx(80 + 500 * 0.9 / 60 / 1000 * 100)
    for _ in range(100):
        battery.step(2000, 60)
    assert battery.soc == pytest.approx(90)
    assert battery.step(2000, 60) == pytest.approx(0, abs=1e-6)
    assert battery.state == 3


def test_battery_discharge_respects_soc_min_and_efficiency() -> None:
    params = BatteryParams(capacity_wh=1000, max_discharge_w=400, soc_min=20, initial_soc=21, discharge_efficiency=0.8)
    battery = BatteryModel(params)
    # 1 % of 1000 Wh is 10 Wh stored, i.e. 8 Wh deliverable at 80 %: 400 W for 72 s, not the full hour.
    delivered = battery.step(-1000, 3600)
    assert delivered == pytest.approx(-8.0)
    assert battery.soc == pytest.approx(20)
    assert battery.step(-1000, 60) == pytest.approx(0, abs=1e-9)
    assert battery.state == 4


def test_site_replays_the_measured_series_from_local_midnight() -> None:
    frozen = SimulatedSite(data_dir=DATA_DIR, speed=1, start_offset_s=12 * 3600 + 7 * 60, clock=lambda: 0.0)
    pv_times, pv = read_series("w2_pv_system50_15min", DATA_DIR)
    load_times, load = read_series("w1_load_uci_15min", DATA_DIR)
    values = frozen.values()
    # 12:07 local lies 7/15 of the way from the 12:00 sample to the 12:15 sample of each series.
    noon = 48
    expected_pv = pv["ac_power"][noon] + (pv["ac_power"][noon + 1] - pv["ac_power"][noon]) * 7 / 15
    expected_load = (
        load["Global_active_power"][noon]
        + (load["Global_active_power"][noon + 1] - load["Global_active_power"][noon]) * 7 / 15
    )
    assert values["inverter"]["ac_power"] == pytest.approx(float(expected_pv), rel=1e-5)
    assert values["meter"]["active_power"] == pytest.approx(float(expected_load) * 1000, rel=1e-5)
    assert frozen.site_time == pv_times[0] + 12 * 3600 + 7 * 60
    assert int(load_times[0]) % 86400 == 23 * 3600  # 00:00 CET


def test_a_gap_in_the_pv_data_is_served_as_the_sunspec_sentinel() -> None:
    _, pv = read_series("w2_pv_system50_15min", DATA_DIR)
    gap = int(np.flatnonzero(np.isnan(pv["ac_power"]))[0])
    frozen = SimulatedSite(data_dir=DATA_DIR, speed=1, start_offset_s=gap * 900.0, clock=lambda: 0.0)
    decoded = decode_registers(frozen.maps["inverter"], frozen.registers("inverter"))
    assert decoded["ac_power"].status is ChannelStatus.MISSING
    assert "not implemented" in decoded["ac_power"].detail
    assert decoded["ghi"].status is ChannelStatus.OK


def test_site_energy_balance_over_a_simulated_day() -> None:
    now = [0.0]
    site = SimulatedSite(data_dir=DATA_DIR, speed=1, clock=lambda: now[0])
    socs = []
    for hour in range(1, 25):
        now[0] = hour * 3600.0
        values = site.values()
        socs.append(values["battery"]["soc"])
        battery, meter, inverter = values["battery"], values["meter"], values["inverter"]
        assert 10.0 <= battery["soc"] <= 95.0
    assert max(socs) - min(socs) > 5  # a January day still moves the battery
    assert meter["import_energy"] >= 0 and meter["export_energy"] >= 0
    assert inverter["ac_energy"] > 0


def test_modbus_tcp_read_of_the_site_is_physically_consistent(make_tcp_config) -> None:
    # Its own site, so the test knows the moment: day 2 at 08:00, when the PV surplus charges the battery.
    noon_site = SimulatedSite(data_dir=DATA_DIR, speed=600, start_offset_s=128 * 900)
    with SiteServer(noon_site).start_in_thread() as server, ModbusTcpSource(make_tcp_config(server.port)) as source:
        first = source.read()
        time.sleep(0.3)  # 180 s of site time at 600x
        second = source.read()
    assert first.device_errors == {} and second.device_errors == {}
    assert first.flagged() == {}
    units = first.units()
    assert units["inverter.ac_power"] == "W" and units["battery.soc"] == "%" and units["meter.voltage"] == "V"
    values, later = first.values(), second.values()
    assert 10.0 <= values["battery.soc"] <= 95.0
    assert 180 <= values["meter.voltage"] <= 280
    assert values["battery.capacity"] == 10_000
    # The meter's grid power is what the household draws, less PV, plus what the battery takes.
    balance = values["meter.active_power"] - values["inverter.ac_power"] + values["battery.power"]
    assert values["meter.grid_power"] == pytest.approx(balance, abs=25.0)
    # The state of charge follows the power: up while charging, by power x efficiency x time / capacity.
    power = (values["battery.power"] + later["battery.power"]) / 2
    assert power > 50
    elapsed_h = (second.timestamp - first.timestamp) * 600 / 3600
    delta_soc = later["battery.soc"] - values["battery.soc"]
    assert delta_soc == pytest.approx(power * 0.96 * elapsed_h / 10_000 * 100, rel=0.5)
    assert later["inverter.ac_energy"] > values["inverter.ac_energy"]
    # The meter's clock serves the time of the load data it plays, from that offset on, running 600x.
    assert values["meter.clock"] >= noon_site.load.t0 + 128 * 900
    wall = second.channels["meter.clock"].timestamp - first.channels["meter.clock"].timestamp
    # Each value is stamped when its device answered; allow 60 ms of scheduling jitter on a busy machine.
    assert later["meter.clock"] - values["meter.clock"] == pytest.approx(wall * 600, abs=0.06 * 600 + 2)


def test_the_inverter_carries_the_sunspec_marker(site: SimulatedSite, site_server: SiteServer) -> None:
    client = ModbusTcpClient("127.0.0.1", port=site_server.port, timeout=1, retries=0)
    try:
        response = client.read_holding_registers(40000, count=2, device_id=1)
    finally:
        client.close()
    assert b"".join(w.to_bytes(2, "big") for w in response.registers) == b"SunS"
