"""Which class serves which sensor ``type`` (one :class:`~edge_agent.plugins.BackendRegistry`).

The config models are light (pydantic only) and live next to their backend; the heavy libraries
(pymodbus, pyserial, pyarrow) are imported by the backends only when a source is built or read, so a
device never loads what its config does not use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from edge_agent.plugins import BackendRegistry
from edge_agent.sensors.base import SensorSource
from edge_agent.sensors.modbus import (
    MODBUS_RTU_KEY,
    MODBUS_TCP_KEY,
    ModbusRtuConfig,
    ModbusRtuSource,
    ModbusTcpConfig,
    ModbusTcpSource,
)
from edge_agent.sensors.replay import REPLAY_KEY, ReplayConfig, ReplaySource
from edge_agent.yamlconfig import read_yaml, validate_data

SENSOR_SOURCES: BackendRegistry[type[Any]] = BackendRegistry(
    "sensor type", {MODBUS_TCP_KEY: ModbusTcpSource, MODBUS_RTU_KEY: ModbusRtuSource, REPLAY_KEY: ReplaySource}
)

SensorConfig = Annotated[ModbusTcpConfig | ModbusRtuConfig | ReplayConfig, Field(discriminator="type")]
"""One sensor source's config; the agent config holds a list of these."""


def build_source(
    config: ModbusTcpConfig | ModbusRtuConfig | ReplayConfig, base_dir: Path | None = None
) -> SensorSource:
    """Build the source a config describes; relative paths in it are resolved against ``base_dir``."""
    source: SensorSource = SENSOR_SOURCES.get(config.type)(config, base_dir)
    return source


def load_sensor_configs(path: Path) -> list[ModbusTcpConfig | ModbusRtuConfig | ReplayConfig]:
    """Sensor configs from a YAML file: its ``sensors:`` list (an agent config), a list, or one source."""
    raw = read_yaml(path, "sensor config")
    if isinstance(raw, dict) and "sensors" in raw:
        raw = raw["sensors"]
    elif isinstance(raw, dict):
        raw = [raw]
    return validate_data(raw, TypeAdapter(list[SensorConfig]), f"sensor config {path}", "fix these fields")
