"""Which class serves which sensor ``type``, imported only when a config names it.

The config models are light (pydantic only) and live next to their backend; the heavy libraries
(pymodbus, pyserial, pyarrow) are imported by the backends only when a source is built or read, so a
device never loads what its config does not use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from edge_agent.errors import ConfigError
from edge_agent.sensors.base import SensorSource
from edge_agent.sensors.modbus import MODBUS_RTU_KEY, MODBUS_TCP_KEY, ModbusRtuConfig, ModbusTcpConfig
from edge_agent.sensors.replay import REPLAY_KEY, ReplayConfig

SOURCE_CLASSES: dict[str, str] = {
    MODBUS_TCP_KEY: "edge_agent.sensors.modbus:ModbusTcpSource",
    MODBUS_RTU_KEY: "edge_agent.sensors.modbus:ModbusRtuSource",
    REPLAY_KEY: "edge_agent.sensors.replay:ReplaySource",
}

SensorConfig = Annotated[ModbusTcpConfig | ModbusRtuConfig | ReplayConfig, Field(discriminator="type")]
"""One sensor source's config; the agent config holds a list of these."""


def source_class(key: str) -> type[Any]:
    """Import and return the class registered for sensor type ``key``."""
    try:
        module_name, class_name = SOURCE_CLASSES[key].split(":")
    except KeyError as exc:
        raise ConfigError(f"unknown sensor type {key!r}; use one of {sorted(SOURCE_CLASSES)}") from exc
    module = importlib.import_module(module_name)
    cls: type[Any] = getattr(module, class_name)
    return cls


def build_source(
    config: ModbusTcpConfig | ModbusRtuConfig | ReplayConfig, base_dir: Path | None = None
) -> SensorSource:
    """Build the source a config describes; relative paths in it are resolved against ``base_dir``."""
    source: SensorSource = source_class(config.type)(config, base_dir)
    return source


def load_sensor_configs(path: Path) -> list[ModbusTcpConfig | ModbusRtuConfig | ReplayConfig]:
    """Sensor configs from a YAML file: its ``sensors:`` list (an agent config), a list, or one source."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read sensor config {path}: {exc}") from exc
    if isinstance(raw, dict) and "sensors" in raw:
        raw = raw["sensors"]
    elif isinstance(raw, dict):
        raw = [raw]
    try:
        return TypeAdapter(list[SensorConfig]).validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(f"sensor config {path} is invalid; fix these fields:\n{exc}") from exc
