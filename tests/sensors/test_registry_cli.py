"""The registry's lazy imports, config loading, and the ``sim site`` / ``sensors read`` commands."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edge_agent.errors import ConfigError
from edge_agent.sensors.base import SensorSource
from edge_agent.sensors.cli import app
from edge_agent.sensors.modbus import ModbusTcpSource
from edge_agent.sensors.registry import SENSOR_SOURCES, build_source, load_sensor_configs
from edge_agent.sensors.replay import ReplaySource
from gridedge.sim.site import SimulatedSite, SiteServer

REPO = Path(__file__).resolve().parents[2]


def test_importing_the_registries_and_the_config_loads_no_backend_library() -> None:
    # The config union imports every backend module; each must leave its library to the class it builds.
    libraries = ("pymodbus", "serial", "pyarrow", "pandas", "tensorflow", "torch", "onnxruntime", "ai_edge_litert",
                 "tflite_runtime", "paho")  # fmt: skip
    code = (
        "import sys, edge_agent.sensors.registry, edge_agent.sensors.cli, edge_agent.runtimes, edge_agent.config\n"
        f"heavy = [m for m in {libraries!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_every_registered_class_satisfies_the_protocol() -> None:
    for key in SENSOR_SOURCES:
        cls = SENSOR_SOURCES.get(key)
        assert all(hasattr(cls, attribute) for attribute in ("read", "close", "channels")), key
    with pytest.raises(ConfigError, match="unknown sensor type 'mqtt'"):
        SENSOR_SOURCES.get("mqtt")


def _agent_yaml(tmp_path: Path, port: int) -> Path:
    registers = REPO / "firmware_configs" / "registers"
    config = {
        "sensors": [
            {
                "type": "modbus_tcp",
                "name": "site",
                "port": port,
                "devices": [
                    {"name": "battery", "unit_id": 2, "register_map": str(registers / "battery_bms.yaml")},
                    {"name": "meter", "unit_id": 3, "register_map": str(registers / "load_meter.yaml")},
                ],
            },
            {
                "type": "replay",
                "name": "pv",
                "path": str(REPO / "data" / "w2_pv_system50_15min.csv.gz"),
                "channels": [{"name": "ghi_clear", "column": "ghi_clear", "unit": "W/m2"}],
            },
        ]
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_load_sensor_configs_builds_each_source(tmp_path: Path) -> None:
    configs = load_sensor_configs(_agent_yaml(tmp_path, 5020))
    assert [c.type for c in configs] == ["modbus_tcp", "replay"]
    sources = [build_source(c, tmp_path) for c in configs]
    assert isinstance(sources[0], ModbusTcpSource) and isinstance(sources[1], ReplaySource)
    assert all(isinstance(s, SensorSource) for s in sources)
    assert [spec.name for spec in sources[0].channels()][:2] == ["battery.soc", "battery.power"]
    for source in sources:
        source.close()


def test_load_sensor_configs_names_the_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("type: modbus_tcp\ndevices: [{name: x, register_map: m.yaml, timout_s: 1}]\n")
    with pytest.raises(ConfigError, match="timout_s"):
        load_sensor_configs(path)


@pytest.mark.modbus
def test_sensors_read_prints_values_with_units_and_fails_on_a_dead_device(
    site: SimulatedSite, site_server: SiteServer, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["sensors", "read", "--config", str(_agent_yaml(tmp_path, site_server.port))])
    assert result.exit_code == 0, result.output
    assert "battery.soc" in result.output and "%" in result.output and "pv.ghi_clear" in result.output
    site.set_fault("meter", "hang")
    failed = CliRunner().invoke(app, ["sensors", "read", "--config", str(_agent_yaml(tmp_path, site_server.port))])
    assert failed.exit_code == 1
    assert "meter: input 0+21: no answer" in " ".join(failed.output.split())


@pytest.mark.modbus
def test_sim_site_command_serves_the_site_from_a_subprocess(make_tcp_config) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "gridedge.cli"]
    args = ["sim", "site", "--port", str(port), "--speed", "60", "--status-every", "0"]
    process = subprocess.Popen(command + args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert "simulated site on" in process.stdout.readline()
        deadline = time.monotonic() + 10
        with ModbusTcpSource(make_tcp_config(port)) as source:
            reading = source.read()
            while reading.device_errors and time.monotonic() < deadline:
                time.sleep(0.1)
                reading = source.read()
        assert reading.device_errors == {} and reading.flagged() == {}
    finally:
        process.terminate()
        process.wait(10)
