"""Modbus RTU over a serial link: two pseudo-terminals joined like a null-modem cable.

A pty pair is master<->slave, and pyserial can open only the slave side by name; so two pairs are
opened and a thread copies bytes between their masters, making the two slave ends the two ends of
one serial line. The server and the client are the real pymodbus RTU server and client.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sensors.base import ChannelStatus
from edge_agent.sensors.modbus import ModbusRtuConfig, ModbusRtuSource
from gridedge.sim.site import SITE_DEVICES, SimulatedSite, SiteServer

pytestmark = pytest.mark.modbus
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
BAUD = 115200


@pytest.fixture
def serial_line() -> Iterator[tuple[str, str]]:
    """Two serial device paths connected to each other."""
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    stop = threading.Event()

    def relay() -> None:
        pairs = {master_a: master_b, master_b: master_a}
        while not stop.is_set():
            ready, _, _ = select.select(list(pairs), [], [], 0.05)
            for fd in ready:
                try:
                    os.write(pairs[fd], os.read(fd, 4096))
                except OSError:
                    return

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    yield os.ttyname(slave_a), os.ttyname(slave_b)
    stop.set()
    thread.join(2)
    for fd in (master_a, slave_a, master_b, slave_b):
        os.close(fd)


def test_rtu_reads_every_device_on_the_line_and_survives_a_silent_one(
    serial_line: tuple[str, str], register_dir: Path
) -> None:
    server_end, client_end = serial_line
    site = SimulatedSite(data_dir=DATA_DIR, speed=60, start_offset_s=12 * 3600)
    # Asked every read (no back-off): the test heals the silent device and expects the next read to see it.
    devices = [
        {
            "name": name,
            "unit_id": unit_id,
            "register_map": str(register_dir / file),
            "timeout_s": 0.3,
            "backoff_max_s": 0,
        }
        for name, (unit_id, file) in SITE_DEVICES.items()
    ]
    config = ModbusRtuConfig.model_validate(
        {"type": "modbus_rtu", "port": client_end, "baudrate": BAUD, "devices": devices}
    )
    server = SiteServer(site).start_in_thread(serial_port=server_end, baudrate=BAUD)
    try:
        with ModbusRtuSource(config) as source:
            reading = source.read()
            assert reading.device_errors == {}, reading.device_errors
            assert reading.flagged() == {}
            assert 10 <= reading.values()["battery.soc"] <= 95
            site.set_fault("battery", "hang")
            started = time.monotonic()
            faulty = source.read()
            elapsed = time.monotonic() - started
            site.set_fault("battery", "none")
            recovered = source.read()
    finally:
        server.stop()
    assert set(faulty.device_errors) == {"battery"}
    assert elapsed < 2.5
    assert faulty.channels["battery.soc"].status is ChannelStatus.MISSING
    assert faulty.channels["meter.active_power"].status is ChannelStatus.OK
    assert recovered.device_errors == {}


def test_a_missing_serial_port_is_reported_per_device(tmp_path: Path, register_dir: Path) -> None:
    config = ModbusRtuConfig.model_validate(
        {
            "type": "modbus_rtu",
            "port": str(tmp_path / "ttyUSB9"),
            "devices": [{"name": "bms", "register_map": str(register_dir / "battery_bms.yaml"), "timeout_s": 0.1}],
        }
    )
    with ModbusRtuSource(config) as source:
        reading = source.read()
    assert "cannot connect" in reading.device_errors["bms"]
    assert reading.channels["bms.soc"].status is ChannelStatus.MISSING
