"""Modbus TCP source against the real simulated site with injected faults: one device never stops the rest."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from edge_agent.sensors.base import ChannelStatus, Reading
from edge_agent.sensors.modbus import ModbusTcpConfig, ModbusTcpSource
from edge_agent.sensors.registers import ReadBlock
from gridedge.sim.site import SimulatedSite, SiteServer

pytestmark = pytest.mark.modbus


@pytest.fixture
def read_with_garbage(site: SimulatedSite, site_server: SiteServer, make_tcp_config) -> Callable[[str], Reading]:
    """One read of the whole site while ``device`` answers every register with garbage."""

    def read(device: str) -> Reading:
        site.set_fault(device, "garbage")
        with ModbusTcpSource(make_tcp_config(site_server.port)) as source:
            return source.read()

    return read


def _channels_of(reading, device: str) -> dict:
    return {name: value for name, value in reading.channels.items() if name.startswith(device + ".")}


def test_a_device_that_stops_answering_times_out_and_the_others_are_still_read(
    site: SimulatedSite, site_server: SiteServer, make_tcp_config
) -> None:
    config = make_tcp_config(site_server.port, timeout_s=0.2, retries=1, backoff_max_s=0.0)  # asked every read
    with ModbusTcpSource(config) as source:
        assert source.read().device_errors == {}
        site.set_fault("battery", "hang")
        started = time.monotonic()
        reading = source.read()
        elapsed = time.monotonic() - started
        # Two attempts of 0.2 s for the one block of the silent device, plus the healthy reads.
        assert 0.35 < elapsed < 1.5
        assert set(reading.device_errors) == {"battery"}
        assert "no answer within 0.2 s after 2 attempt(s)" in reading.device_errors["battery"]
        battery = _channels_of(reading, "battery")
        assert battery and all(v.status is ChannelStatus.MISSING for v in battery.values())
        assert all(math.isnan(v) for k, v in reading.values().items() if k.startswith("battery."))
        assert "no answer" in battery["battery.soc"].detail
        others = {k: v for k, v in reading.channels.items() if not k.startswith("battery.")}
        assert others and all(v.status is ChannelStatus.OK for v in others.values())
        site.set_fault("battery", "none")
        recovered = source.read()
    assert recovered.device_errors == {} and recovered.flagged() == {}


def test_garbage_values_are_flagged_out_of_range_and_hidden_from_the_model(
    read_with_garbage: Callable[[str], Reading],
) -> None:
    reading = read_with_garbage("meter")
    assert reading.device_errors == {}  # the device answered; what it said is nonsense
    meter = _channels_of(reading, "meter")
    # The current register (mA) decodes garbage as 32.767 A, a plausible household current: no range check
    # can catch it, so it is not listed here.
    for name in ("meter.active_power", "meter.voltage", "meter.grid_power"):
        assert meter[name].status is ChannelStatus.OUT_OF_RANGE, name
        assert "physical maximum" in meter[name].detail
        assert math.isnan(reading.values()[name])
        assert not math.isnan(meter[name].value)  # kept visible for a technician
    assert reading.channels["battery.soc"].status is ChannelStatus.OK


def test_garbage_from_a_sunspec_inverter_makes_scaled_values_missing(
    read_with_garbage: Callable[[str], Reading],
) -> None:
    reading = read_with_garbage("inverter")
    assert reading.channels["inverter.ac_power"].status is ChannelStatus.MISSING
    assert "not a plausible exponent" in reading.channels["inverter.ac_power"].detail
    assert reading.channels["inverter.ghi"].status is ChannelStatus.OUT_OF_RANGE


def test_a_dropped_connection_is_reopened_on_a_later_read(
    site: SimulatedSite, site_server: SiteServer, make_tcp_config
) -> None:
    with ModbusTcpSource(make_tcp_config(site_server.port)) as source:
        assert source.read().device_errors == {}
        before = site_server.connections
        site_server.drop_connections()
        time.sleep(0.05)
        readings = [source.read() for _ in range(2)]
    assert readings[-1].device_errors == {} and readings[-1].flagged() == {}
    assert site_server.connections >= before + 3  # every device opened a new connection


def test_connections_are_kept_open_between_reads(site: SimulatedSite, site_server: SiteServer, make_tcp_config) -> None:
    with ModbusTcpSource(make_tcp_config(site_server.port)) as source:
        source.read()
        opened = site_server.connections
        for _ in range(5):
            source.read()
    assert site_server.connections == opened


def test_an_absent_unit_id_stays_silent_and_costs_only_its_timeout(
    site: SimulatedSite, site_server: SiteServer, make_tcp_config, register_dir
) -> None:
    ghost = {"unit_id": 9, "register_map": str(register_dir / "load_meter.yaml"), "timeout_s": 0.15, "retries": 0}
    with ModbusTcpSource(make_tcp_config(site_server.port, ghost=ghost)) as source:
        started = time.monotonic()
        reading = source.read()
        elapsed = time.monotonic() - started
    assert set(reading.device_errors) == {"ghost"}
    assert elapsed < 1.0
    assert reading.channels["meter.active_power"].status is ChannelStatus.OK


def test_an_unreachable_host_is_reported_not_raised(register_dir) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = ModbusTcpConfig.model_validate(
        {
            "type": "modbus_tcp",
            "port": closed_port,
            "devices": [{"name": "bms", "register_map": str(register_dir / "battery_bms.yaml"), "timeout_s": 0.2}],
        }
    )
    with ModbusTcpSource(config) as source:
        reading = source.read()
    assert "cannot connect" in reading.device_errors["bms"]
    assert reading.channels["bms.soc"].status is ChannelStatus.MISSING


def test_device_names_must_be_unique(register_dir) -> None:
    device = {"name": "bms", "register_map": str(register_dir / "battery_bms.yaml")}
    with pytest.raises(ValueError, match="must be unique"):
        ModbusTcpConfig.model_validate({"type": "modbus_tcp", "devices": [device, device]})


def test_an_address_the_device_rejects_loses_only_its_own_block(site: SimulatedSite, site_server: SiteServer) -> None:
    register_map = {
        "name": "bms_with_a_typo",
        "word_order": "little",
        "registers": [
            {"name": "soc", "address": 0, "dtype": "float32", "unit": "%"},
            {"name": "typo", "address": 500, "dtype": "uint16"},
        ],
    }
    config = ModbusTcpConfig.model_validate(
        {
            "type": "modbus_tcp",
            "port": site_server.port,
            "devices": [{"name": "bms", "unit_id": 2, "register_map": register_map, "timeout_s": 0.3}],
        }
    )
    with ModbusTcpSource(config) as source:
        reading = source.read()
    assert reading.channels["bms.soc"].status is ChannelStatus.OK
    assert reading.channels["bms.typo"].status is ChannelStatus.MISSING
    assert "exception 2 (illegal data address" in reading.channels["bms.typo"].detail
    assert source.read_plan() == {"bms": [ReadBlock("holding", 0, 2), ReadBlock("holding", 500, 1)]}


def test_a_dead_device_is_backed_off_so_it_does_not_cost_a_timeout_every_read(
    site: SimulatedSite, site_server: SiteServer, register_dir
) -> None:
    bms = {
        "name": "bms",
        "unit_id": 2,
        "register_map": str(register_dir / "battery_bms.yaml"),
        "timeout_s": 0.2,
        "retries": 0,
        "backoff_max_s": 0.5,
    }
    config = ModbusTcpConfig.model_validate({"type": "modbus_tcp", "port": site_server.port, "devices": [bms]})
    site.set_fault("battery", "hang")
    with ModbusTcpSource(config) as source:
        assert "no answer" in source.read().device_errors["bms"]
        site.set_fault("battery", "none")
        started = time.monotonic()
        skipped = source.read()
        assert time.monotonic() - started < 0.1  # not asked at all while backing off
        assert "not asked" in skipped.device_errors["bms"]
        assert "not asked" in skipped.channels["bms.soc"].detail
        time.sleep(0.55)
        assert source.read().device_errors == {}


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A real TCP socket that accepts connections and never answers a byte (a hung meter)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def _cycles_in(source: ModbusTcpSource, duration: float, cadence: float, failing: set[str]) -> tuple[int, int]:
    """Read on a cadence for ``duration`` s; every device outside ``failing`` must answer every time.

    Returns the number of cycles and how many of them asked a failing device (and waited for it).
    """
    cycles = asked = 0
    started = time.monotonic()
    while time.monotonic() - started < duration:
        tick = time.monotonic()
        reading = source.read()
        cycles += 1
        assert set(reading.device_errors) == failing, reading.device_errors
        assert reading.channels["meter.active_power"].status is ChannelStatus.OK
        asked += sum("not asked" not in error for error in reading.device_errors.values())
        time.sleep(max(0.0, cadence - (time.monotonic() - tick)))
    return cycles, asked


def test_a_hung_meter_is_backed_off_so_the_loop_keeps_its_cadence_and_reads_the_others(
    site: SimulatedSite, site_server: SiteServer, make_tcp_config, register_dir, hung_port: int
) -> None:
    """Issue 12 item 9: a meter that accepts TCP and never answers slowed a 20 cycle/s loop to 1 cycle/s."""
    hung = {
        "unit_id": 1,
        "register_map": str(register_dir / "load_meter.yaml"),
        "port": hung_port,
        "timeout_s": 0.2,
        "retries": 1,
    }
    cadence, duration = 0.05, 5.0
    with ModbusTcpSource(make_tcp_config(site_server.port, timeout_s=0.2, retries=1)) as source:
        healthy, _ = _cycles_in(source, duration, cadence, set())
    with ModbusTcpSource(make_tcp_config(site_server.port, timeout_s=0.2, retries=1, hung=hung)) as source:
        with_hung, asked = _cycles_in(source, duration, cadence, {"hung"})
    # Asked at once (two attempts), then probed once after each jittered back-off of 1-2, 2-4 s ...
    assert asked <= 4, f"the hung meter was asked in {asked} of {with_hung} cycles"
    # ... so the loop keeps most of its cadence (a loose bound: the machine running CI is shared).
    assert with_hung >= 0.5 * healthy, f"{with_hung} cycles with a hung meter, {healthy} without, in {duration} s"
