"""Fixtures for the sensor tests: a real simulated site on a loopback port, register maps, configs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.sensors.modbus import ModbusTcpConfig
from gridedge.sim.site import SITE_DEVICES, SimulatedSite, SiteServer

REPO = Path(__file__).resolve().parents[2]
REGISTER_DIR = REPO / "firmware_configs" / "registers"
DATA_DIR = REPO / "data"
# Fast enough that the battery visibly moves within a test, slow enough that one read sees one instant.
SITE_SPEED = 600.0
NOON = 12 * 3600.0


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> None:
    # Injected faults make pymodbus log packet dumps; the assertions say what matters.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture(scope="session")
def site_server() -> Iterator[SiteServer]:
    """One simulated site for the session, started at noon on 1 January, 600x real time."""
    site = SimulatedSite(data_dir=DATA_DIR, speed=SITE_SPEED, start_offset_s=NOON)
    server = SiteServer(site).start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def site(site_server: SiteServer) -> Iterator[SimulatedSite]:
    """The session's site, with every fault cleared before and after the test."""
    for device in SITE_DEVICES:
        site_server.site.set_fault(device, "none")
    yield site_server.site
    for device in SITE_DEVICES:
        site_server.site.set_fault(device, "none")


@pytest.fixture
def register_dir() -> Path:
    """The shipped register maps (firmware_configs/registers)."""
    return REGISTER_DIR


@pytest.fixture
def make_tcp_config() -> Callable[..., ModbusTcpConfig]:
    """Build a Modbus TCP config reading the three simulated devices (plus extra devices by name)."""

    def build(
        port: int, timeout_s: float = 0.3, retries: int = 1, backoff_max_s: float | None = None, **extra_devices: Any
    ) -> ModbusTcpConfig:
        devices: list[dict[str, Any]] = [
            {
                "name": name,
                "unit_id": unit_id,
                "register_map": str(REGISTER_DIR / file),
                "timeout_s": timeout_s,
                "retries": retries,
                **({} if backoff_max_s is None else {"backoff_max_s": backoff_max_s}),
            }
            for name, (unit_id, file) in SITE_DEVICES.items()
        ]
        devices += [{"name": name, **spec} for name, spec in extra_devices.items()]
        return ModbusTcpConfig.model_validate({"type": "modbus_tcp", "name": "site", "port": port, "devices": devices})

    return build
