"""Modbus TCP and RTU sensor sources (pymodbus sync clients, imported only when a source is built).

Each device is a register map (data) plus an address: TCP devices get one kept-open connection each,
RTU devices share their serial line (a bus has one master). A read fetches each map's registers in as
few block requests as possible, with the device's own timeout and retries; a device that times out,
refuses or answers with a Modbus exception gets its channels marked missing and its error recorded,
and the other devices are read all the same. A broken TCP connection is closed and reopened on the
next attempt, so a device that rebooted or a gateway that dropped us comes back without a restart.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field, model_validator

from edge_agent.errors import missing_extra
from edge_agent.features import ChannelSpec
from edge_agent.sensors.base import ChannelValue, Reading
from edge_agent.sensors.registers import (
    NOT_READ,
    ReadBlock,
    RegisterMap,
    decode_registers,
    load_register_map,
    plan_blocks,
    register_map_path,
)
from edge_agent.transport import backoff_delay
from edge_agent.yamlconfig import StrictModel

if TYPE_CHECKING:
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient

MODBUS_TCP_KEY = "modbus_tcp"
MODBUS_RTU_KEY = "modbus_rtu"
DEVICE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MODBUS_EXCEPTIONS = {
    1: "illegal function: the device does not serve this register table",
    2: "illegal data address: check the register map against the device manual",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}


class ModbusDeviceConfig(StrictModel, frozen=True):
    """One Modbus device: its unit id, register map and how patiently to ask it."""

    name: str = Field(pattern=DEVICE_NAME_PATTERN, title="Device name")
    """Prefix of the device's channels: channel 'soc' of device 'battery' is 'battery.soc'."""
    unit_id: int = Field(default=1, ge=0, le=247, title="Unit id")
    """Modbus unit (slave) id of the device."""
    register_map: Path | RegisterMap = Field(title="Register map")
    """A shipped register map by name (e.g. load_meter), the path of a register map YAML (relative to the config file),
    or the map inline."""
    timeout_s: float = Field(default=1.0, gt=0, le=60, title="Timeout (s)")
    """How long to wait for each answer before counting the attempt as failed."""
    retries: int = Field(default=1, ge=0, le=10, title="Retries")
    """Extra attempts per block after a timeout or a broken connection."""
    backoff_max_s: float = Field(default=30.0, ge=0, le=3600, title="Longest back-off (s)")
    """After the device stops answering, skip it for a jittered 1, 2, 4 … s up to this long and then ask it once (no
    retries), so a dead or hung device does not cost a timeout every cycle; 0 asks it every cycle."""


class ModbusTcpDeviceConfig(ModbusDeviceConfig):
    """A Modbus TCP device; host and port default to the source's (a gateway serving several units)."""

    host: str | None = Field(default=None, title="Host")
    """Device address; the source's host when omitted."""
    port: int | None = Field(default=None, ge=1, le=65535, title="Port")
    """TCP port; the source's port when omitted."""


def _unique_device_names(devices: list[Any]) -> None:
    names = [device.name for device in devices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"device names must be unique, {duplicates} repeat; rename one of them")


class ModbusTcpConfig(StrictModel, frozen=True):
    """Modbus TCP devices, each read over its own kept-open connection."""

    type: Literal["modbus_tcp"] = Field(title="Type")
    """Selects the Modbus TCP source."""
    name: str = Field(default="modbus_tcp", min_length=1, title="Name")
    """Name of this source."""
    host: str = Field(default="127.0.0.1", title="Host")
    """Default host of the devices."""
    port: int = Field(default=502, ge=1, le=65535, title="Port")
    """Default TCP port of the devices."""
    devices: list[ModbusTcpDeviceConfig] = Field(min_length=1, title="Devices")
    """The devices to read, each with its register map."""

    @model_validator(mode="after")
    def _names(self) -> ModbusTcpConfig:
        _unique_device_names(self.devices)
        return self


class ModbusRtuConfig(StrictModel, frozen=True):
    """Modbus RTU devices sharing one serial line (RS-485)."""

    type: Literal["modbus_rtu"] = Field(title="Type")
    """Selects the Modbus RTU source."""
    name: str = Field(default="modbus_rtu", min_length=1, title="Name")
    """Name of this source."""
    port: str = Field(min_length=1, title="Serial port")
    """Serial device, e.g. /dev/ttyUSB0."""
    baudrate: int = Field(default=19200, gt=0, title="Baud rate")
    """Line speed in bit/s."""
    parity: Literal["N", "E", "O"] = Field(default="N", title="Parity")
    """N none, E even, O odd (Modbus's default is E)."""
    stopbits: Literal[1, 2] = Field(default=1, title="Stop bits")
    """Stop bits per character."""
    bytesize: Literal[7, 8] = Field(default=8, title="Data bits")
    """Data bits per character."""
    devices: list[ModbusDeviceConfig] = Field(min_length=1, title="Devices")
    """The devices on this line, each with its register map."""

    @model_validator(mode="after")
    def _names(self) -> ModbusRtuConfig:
        _unique_device_names(self.devices)
        return self


def resolve_register_map(register_map: Path | RegisterMap, base_dir: Path | None) -> RegisterMap:
    """A device's register map: given inline, or read from a shipped name or a path."""
    if isinstance(register_map, RegisterMap):
        return register_map
    return load_register_map(register_map_path(register_map, base_dir))


def _pymodbus() -> Any:
    try:
        import pymodbus.client
        import pymodbus.exceptions
    except ImportError as exc:
        raise missing_extra("pymodbus", "edge") from exc
    return pymodbus


@dataclass
class _BlockFailure:
    reason: str
    # True when the device did not answer at all: its remaining blocks are skipped this cycle so that
    # one dead device costs one timeout budget, not one per block.
    unreachable: bool


class _Device:
    """A device's map, its planned block reads, and the retry policy around them."""

    def __init__(self, config: ModbusDeviceConfig, base_dir: Path | None) -> None:
        self.config = config
        self.map = resolve_register_map(config.register_map, base_dir)
        self.blocks = plan_blocks(self.map)
        self.prefix = config.name + "."
        self._failures = 0
        self._skip_until = 0.0

    def channels(self) -> list[ChannelSpec]:
        return self.map.channel_specs(self.prefix)

    def read(self, client: Any, on_failure: Callable[[], None]) -> tuple[dict[str, ChannelValue], str | None]:
        """Read every block; return the decoded channels and an error summary (None when all went well)."""
        words: dict[tuple[str, int], int] = {}
        errors: list[str] = []
        wait = self._skip_until - time.monotonic()
        if wait > 0:
            errors.append(f"not asked: no answer in {self._failures} read(s), next attempt in {wait:.1f} s")
        else:
            unreachable = False
            for block in self.blocks:
                result = self._read_block(client, block, on_failure)
                if isinstance(result, _BlockFailure):
                    errors.append(f"{block.function} {block.start}+{block.count}: {result.reason}")
                    unreachable = result.unreachable
                    if unreachable:
                        break
                    continue
                words.update({(block.function, block.start + i): word for i, word in enumerate(result)})
            self._note_outcome(unreachable)
        channels = decode_registers(self.map, words, time.time(), self.prefix)
        summary = "; ".join(errors) or None
        if summary:
            # Say why a channel is missing: the device's failure, not just "not read".
            channels = {
                name: replace(value, detail=summary) if value.detail == NOT_READ else value
                for name, value in channels.items()
            }
        return channels, summary

    def _note_outcome(self, unreachable: bool) -> None:
        if not unreachable:
            self._failures = 0
            return
        self._failures += 1
        longest = self.config.backoff_max_s
        if longest > 0:
            self._skip_until = time.monotonic() + backoff_delay(self._failures - 1, min(1.0, longest), longest)

    def _read_block(self, client: Any, block: ReadBlock, on_failure: Callable[[], None]) -> list[int] | _BlockFailure:
        exceptions = _pymodbus().exceptions
        unit = self.config.unit_id
        # A device that stopped answering is probed once: its retries would only stretch the cycle.
        attempts = 1 if self._failures else self.config.retries + 1
        reason = ""
        for _ in range(attempts):
            try:
                if not client.connect():
                    raise exceptions.ConnectionException("connection refused or unreachable")
                request = client.read_holding_registers if block.function == "holding" else client.read_input_registers
                response = request(block.start, count=block.count, device_id=unit)
            except exceptions.ConnectionException as exc:
                reason = f"cannot connect ({exc})"
                client.close()
                continue
            except (exceptions.ModbusException, OSError):
                reason = f"no answer within {self.config.timeout_s:g} s"
                on_failure()
                continue
            if response.isError():
                code = getattr(response, "exception_code", 0)
                meaning = MODBUS_EXCEPTIONS.get(code, "unknown exception")
                return _BlockFailure(f"device answered Modbus exception {code} ({meaning})", unreachable=False)
            registers = list(response.registers)[: block.count]
            if len(registers) < block.count:
                return _BlockFailure(f"short answer: {len(registers)} of {block.count} registers", False)
            return registers
        return _BlockFailure(f"{reason} after {attempts} attempt(s)", unreachable=True)


class _ModbusSource(ABC):
    """What the TCP and RTU sources share: devices, channels, and a read that never raises for a device."""

    def __init__(self, name: str, devices: list[_Device]) -> None:
        self.name = name
        self._devices = devices

    def channels(self) -> list[ChannelSpec]:
        """Channels of every device, named ``device.register``."""
        return [spec for device in self._devices for spec in device.channels()]

    def read_plan(self) -> dict[str, list[ReadBlock]]:
        """The block requests each device gets per read (for diagnostics and benchmarks)."""
        return {device.config.name: list(device.blocks) for device in self._devices}

    @abstractmethod
    def _client_for(self, device: _Device) -> Any:
        """The client that talks to ``device``, set up for it."""

    @abstractmethod
    def _after_timeout(self, client: Any) -> None:
        """What to do with a client whose request went unanswered."""

    def read(self) -> Reading:
        """Read every device once; a failing device gives missing channels and an error, never raises."""
        started = time.time()
        channels: dict[str, ChannelValue] = {}
        errors: dict[str, str] = {}
        for device in self._devices:
            client = self._client_for(device)
            values, error = device.read(client, on_failure=partial(self._after_timeout, client))
            channels.update(values)
            if error:
                errors[device.config.name] = error
        return Reading(self.name, started, channels, errors)

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ModbusTcpSource(_ModbusSource):
    """Reads Modbus TCP devices, one kept-open connection per device."""

    def __init__(self, config: ModbusTcpConfig, base_dir: Path | None = None) -> None:
        super().__init__(config.name, [_Device(device, base_dir) for device in config.devices])
        client_class = _pymodbus().client.ModbusTcpClient
        # Constructing a client does no I/O: each connects on its first read and stays open.
        self._clients: dict[str, ModbusTcpClient] = {
            device.name: client_class(
                device.host or config.host,
                port=device.port or config.port,
                timeout=device.timeout_s,
                # Retries are ours (per block, reconnecting in between), not pymodbus's.
                retries=0,
            )
            for device in config.devices
        }

    def _client_for(self, device: _Device) -> ModbusTcpClient:
        return self._clients[device.config.name]

    def _after_timeout(self, client: ModbusTcpClient) -> None:
        # The TCP stream may still deliver the late answer; the next attempt starts on a fresh connection
        # so that answer cannot be taken for the answer to a later request.
        client.close()

    def close(self) -> None:
        """Close every connection (a later read reconnects)."""
        for client in self._clients.values():
            client.close()


class ModbusRtuSource(_ModbusSource):
    """Reads Modbus RTU devices on one serial line, each with its own timeout and retries."""

    def __init__(self, config: ModbusRtuConfig, base_dir: Path | None = None) -> None:
        super().__init__(config.name, [_Device(device, base_dir) for device in config.devices])
        try:
            import serial  # noqa: F401  (pymodbus needs pyserial for RTU; say which extra brings it)
        except ImportError as exc:
            raise missing_extra("pyserial", "edge") from exc
        from pymodbus.framer import FramerType

        self._line: ModbusSerialClient = _pymodbus().client.ModbusSerialClient(
            config.port,
            framer=FramerType.RTU,
            baudrate=config.baudrate,
            parity=config.parity,
            stopbits=config.stopbits,
            bytesize=config.bytesize,
            timeout=max(device.timeout_s for device in config.devices),
            retries=0,
        )

    def _client_for(self, device: _Device) -> ModbusSerialClient:
        # The line is shared, so each device's patience is set on it just before asking that device.
        self._line.comm_params.timeout_connect = device.config.timeout_s
        return self._line

    def _after_timeout(self, client: ModbusSerialClient) -> None:
        # Keep the port open: pymodbus flushes a late answer from the line before the next request.
        return

    def close(self) -> None:
        """Close the serial port (a later read reopens it)."""
        self._line.close()
