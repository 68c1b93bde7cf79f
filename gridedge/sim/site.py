"""A simulated off-grid site served by a real pymodbus server, built from measured data.

Three Modbus devices answer on one TCP port (or one serial line), as behind a Modbus gateway:

* unit 1, a PV inverter (``inverter_sunspec.yaml``): AC power of the NREL system 50 array, irradiance
  and air temperature from its PSM3 weather, lifetime energy integrated from the power;
* unit 2, a battery BMS (``battery_bms.yaml``): no measured battery data exists, so the battery is a
  physical coulomb-counting model: it absorbs the PV surplus and covers the deficit within its power
  limits, with charge/discharge efficiencies, and stops at its state-of-charge limits. A controller may
  write its ``power_setpoint`` register (``kind: setpoint`` in the map, the only writable kind; any
  other write is refused with "illegal data address"): while that setpoint is fresh
  (``setpoint_timeout_s`` of site time) the battery follows it within the same limits, and the grid
  connection takes the difference;
* unit 3, the household meter (``load_meter.yaml``): active/reactive power, voltage and current of the
  UCI household, plus the grid connection power and import/export energy counters that follow from it,
  and its clock (UTC epoch seconds of the simulated time, so an accelerated agent can label samples).

Both measured series are played from their first sample (local midnight on 1 January) so seasons and
time of day line up, looping at their end, ``speed`` times faster than the wall clock. Values between
two 15-minute samples are linearly interpolated; a gap in the data is served as the SunSpec
"not implemented" sentinel, exactly what a device does when it has no value.

Fault injection for tests and demos: :meth:`SimulatedSite.set_fault` makes a device stop answering
(``hang``) or answer nonsense (``garbage``); :meth:`SiteServer.drop_connections` closes every client
connection, like a gateway reboot.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import ConfigError, ServiceError
from edge_agent.sensors.registers import (
    DTYPES,
    RegisterMap,
    RegisterSpec,
    decode_words,
    encode_value,
    load_register_map,
    raw_from_engineering,
    shipped_register_maps_dir,
)
from gridedge.datafiles import UCI_LOAD_COLUMNS, read_series

if TYPE_CHECKING:
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

SITE_DEVICES: dict[str, tuple[int, str]] = {
    "inverter": (1, "inverter_sunspec.yaml"),
    "battery": (2, "battery_bms.yaml"),
    "meter": (3, "load_meter.yaml"),
}
# The battery and the energy counters are integrated in steps no longer than this (site seconds).
MAX_STEP_S = 60.0
GARBAGE_WORD = 0x7FFF
# Below this the inverter reports itself sleeping (night-time readings are a few tens of mW).
MPPT_THRESHOLD_W = 1.0
SUNSPEC_ID = (0x5375, 0x6E53)  # "SunS"
SUNSPEC_BASE = 40000


class Fault(StrEnum):
    """Misbehaviour a simulated device can be switched into."""

    NONE = "none"
    HANG = "hang"
    GARBAGE = "garbage"
    BAD_CLOCK = "bad-clock"


# What a meter's RTC answered before it settled (0x7FFF7FFF, in 2038): a clock a device must not anchor on.
BAD_CLOCK_SECONDS = 2_147_450_879.0


@dataclass(frozen=True, slots=True)
class BatteryParams:
    """Size, limits and efficiencies of the simulated battery."""

    capacity_wh: float = 10_000.0
    max_charge_w: float = 5_000.0
    max_discharge_w: float = 5_000.0
    soc_min: float = 10.0
    soc_max: float = 95.0
    charge_efficiency: float = 0.96
    discharge_efficiency: float = 0.96
    initial_soc: float = 50.0
    # A written setpoint lapses after this much site time: a controller that stopped writing hands back control.
    setpoint_timeout_s: float = 1800.0


class BatteryModel:
    """Coulomb-counting battery: state of charge integrated from power, within power and SoC limits."""

    def __init__(self, params: BatteryParams) -> None:
        self.params = params
        self.soc = params.initial_soc
        self.power_w = 0.0

    def step(self, requested_w: float, dt_s: float) -> float:
        """Apply ``requested_w`` (positive charges) for ``dt_s`` seconds; return the power actually taken."""
        p = self.params
        if dt_s <= 0 or not math.isfinite(requested_w):
            self.power_w = 0.0
            return 0.0
        hours = dt_s / 3600.0
        if requested_w >= 0:
            headroom_wh = max(0.0, (p.soc_max - self.soc) / 100.0 * p.capacity_wh)
            power = min(requested_w, p.max_charge_w, headroom_wh / (p.charge_efficiency * hours))
            self.soc += power * p.charge_efficiency * hours / p.capacity_wh * 100.0
        else:
            available_wh = max(0.0, (self.soc - p.soc_min) / 100.0 * p.capacity_wh)
            power = -min(-requested_w, p.max_discharge_w, available_wh * p.discharge_efficiency / hours)
            self.soc += power / p.discharge_efficiency * hours / p.capacity_wh * 100.0
        self.soc = min(max(self.soc, p.soc_min), p.soc_max)
        self.power_w = power
        return power

    @property
    def state(self) -> int:
        """BMS state code: 0 idle, 1 charging, 2 discharging, 3 full, 4 empty."""
        if self.power_w > 0.5:
            return 1
        if self.power_w < -0.5:
            return 2
        if self.soc >= self.params.soc_max - 1e-6:
            return 3
        if self.soc <= self.params.soc_min + 1e-6:
            return 4
        return 0


class _Series:
    """A measured series played from its first sample, looping, linearly interpolated."""

    def __init__(self, timestamps: NDArray[np.int64], columns: dict[str, NDArray[np.float32]]) -> None:
        self.t0 = int(timestamps[0])
        self.step = int(timestamps[1] - timestamps[0])
        self.span = self.step * len(timestamps)
        self.columns = {name: values.astype(np.float64) for name, values in columns.items()}

    def at(self, elapsed_s: float, column: str) -> float:
        values = self.columns[column]
        position = (elapsed_s % self.span) / self.step
        index = int(position)
        frac = position - index
        after = values[(index + 1) % len(values)]
        return float(values[index] + (after - values[index]) * frac)


@lru_cache(maxsize=2)
def _site_series(data_dir: Path | None) -> tuple[_Series, _Series]:
    """The PV and load series (parsed once per process: several sites in one test run share them)."""
    pv_times, pv_columns = read_series("w2_pv_system50_15min", data_dir)
    load_times, load_columns = read_series("w1_load_uci_15min", data_dir)
    pv = _Series(pv_times, {k: pv_columns[k] for k in ("ac_power", "ghi", "temp_air")})
    return pv, _Series(load_times, {k: load_columns[k] for k in UCI_LOAD_COLUMNS})


class SimulatedSite:
    """The physical state of the site (PV, load, battery, meter counters) at the simulated time.

    Thread-safe: the Modbus server reads it on its own thread while a test changes faults.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        speed: float = 1.0,
        start_offset_s: float = 0.0,
        battery: BatteryParams | None = None,
        register_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ConfigError(f"speed must be positive (got {speed}); 1 is real time, 60 a minute per second")
        self.pv, self.load = _site_series(data_dir)
        self.speed = speed
        self.battery = BatteryModel(battery or BatteryParams())
        folder = register_dir or shipped_register_maps_dir()
        self.maps: dict[str, RegisterMap] = {
            device: load_register_map(folder / file) for device, (_, file) in SITE_DEVICES.items()
        }
        self.faults: dict[str, Fault] = dict.fromkeys(SITE_DEVICES, Fault.NONE)
        self._clock = clock
        self._wall_start = clock()
        self._start_offset = start_offset_s
        self._elapsed = start_offset_s
        self._pv_energy_wh = 0.0
        self._import_wh = 0.0
        self._export_wh = 0.0
        self._grid_w = 0.0
        self._setpoint_w = math.nan
        self._setpoint_at = -math.inf
        self.setpoint_writes = 0
        self._lock = threading.Lock()

    @property
    def site_time(self) -> float:
        """Current simulated time as UTC epoch seconds on the PV data's clock."""
        self.advance()
        return self.pv.t0 + self._elapsed

    def set_fault(self, device: str, fault: Fault | str) -> None:
        """Switch a device into a fault (``hang``, ``garbage``, ``bad-clock``) or back to ``none``."""
        if device not in self.faults:
            raise ConfigError(f"unknown device {device!r}; the site has {sorted(self.faults)}")
        self.faults[device] = Fault(fault)

    def advance(self) -> None:
        """Integrate battery and energy counters up to the current simulated time."""
        with self._lock:
            target = self._start_offset + (self._clock() - self._wall_start) * self.speed
            while self._elapsed < target:
                dt = min(MAX_STEP_S, target - self._elapsed)
                self._integrate(self._elapsed + dt / 2.0, dt)
                self._elapsed += dt

    def write_setpoint(self, watts: float) -> None:
        """A controller wrote the battery power setpoint (positive charging; NaN hands control back)."""
        self.advance()
        with self._lock:
            self._setpoint_w = watts
            self._setpoint_at = self._elapsed
            self.setpoint_writes += 1

    @property
    def battery_setpoint_w(self) -> float:
        """The setpoint the battery follows now, NaN when none is fresh."""
        self.advance()
        with self._lock:
            return self._fresh_setpoint(self._elapsed)

    def _fresh_setpoint(self, elapsed: float) -> float:
        if elapsed - self._setpoint_at > self.battery.params.setpoint_timeout_s:
            return math.nan
        return self._setpoint_w

    def _integrate(self, elapsed_mid: float, dt_s: float) -> None:
        pv_w = _zero_if_nan(self.pv.at(elapsed_mid, "ac_power"))
        load_w = _zero_if_nan(self.load.at(elapsed_mid, "Global_active_power") * 1000.0)
        setpoint = self._fresh_setpoint(elapsed_mid)
        battery_w = self.battery.step(setpoint if math.isfinite(setpoint) else pv_w - load_w, dt_s)
        self._grid_w = load_w - pv_w + battery_w
        hours = dt_s / 3600.0
        self._pv_energy_wh += max(pv_w, 0.0) * hours
        self._import_wh += max(self._grid_w, 0.0) * hours
        self._export_wh += max(-self._grid_w, 0.0) * hours

    def values(self) -> dict[str, dict[str, float]]:
        """Engineering values of every device at the current simulated time (NaN where data is missing)."""
        self.advance()
        with self._lock:
            t = self._elapsed
            pv_w = self.pv.at(t, "ac_power")
            b = self.battery
            return {
                "inverter": {
                    "ac_power": pv_w,
                    "ac_energy": self._pv_energy_wh,
                    "operating_state": 4.0 if pv_w > MPPT_THRESHOLD_W else 2.0,
                    "ghi": self.pv.at(t, "ghi"),
                    "temp_air": self.pv.at(t, "temp_air"),
                    "clock": self.pv.t0 + t,
                },
                "battery": {
                    "soc": b.soc,
                    "power": b.power_w,
                    "capacity": b.params.capacity_wh,
                    "max_charge_power": b.params.max_charge_w,
                    "max_discharge_power": b.params.max_discharge_w,
                    "soc_min": b.params.soc_min,
                    "soc_max": b.params.soc_max,
                    "state": float(b.state),
                },
                "meter": {
                    "active_power": self.load.at(t, "Global_active_power") * 1000.0,
                    "reactive_power": self.load.at(t, "Global_reactive_power") * 1000.0,
                    "voltage": self.load.at(t, "Voltage"),
                    "current": self.load.at(t, "Global_intensity"),
                    "grid_power": self._grid_w,
                    "import_energy": self._import_wh,
                    "export_energy": self._export_wh,
                    "sub_metering_1": self.load.at(t, "Sub_metering_1"),
                    "sub_metering_2": self.load.at(t, "Sub_metering_2"),
                    "sub_metering_3": self.load.at(t, "Sub_metering_3"),
                    # The meter's clock follows the household data it serves, so a load model sees the
                    # calendar of the measurements (the PV series is a different year and zone).
                    "clock": self.load.t0 + t,
                },
            }

    def registers(self, device: str) -> dict[tuple[str, int], int]:
        """The words a device serves now, keyed ``(function, address)``."""
        register_map = self.maps[device]
        values = self.values()[device]
        if self.faults[device] is Fault.BAD_CLOCK and "clock" in values:
            values = {**values, "clock": BAD_CLOCK_SECONDS}
        words: dict[tuple[str, int], int] = {}
        for spec in register_map.measurements():
            exponent = 0
            if spec.scale_factor is not None:
                sf_spec = next(s for s in register_map.registers if s.name == spec.scale_factor)
                exponent = _finest_exponent(spec, values[spec.name])
                words.update(_encode(register_map, sf_spec, exponent))
            words.update(_encode_engineering(register_map, spec, values[spec.name], exponent))
        return words

    def sim_devices(self) -> list[Any]:
        """pymodbus ``SimDevice`` definitions of the three devices, answering through this site."""
        from pymodbus.simulator import DataType, SimData, SimDevice

        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        devices = []
        for device, (unit_id, _) in SITE_DEVICES.items():
            tables: dict[str, list[Any]] = {"holding": [], "input": []}
            for function, start, words in _served_spans(self.maps[device]):
                tables[function].append(SimData(start, values=words, datatype=DataType.REGISTERS))
            for rows in tables.values():
                if not rows:
                    rows.append(_invalid())
            devices.append(
                SimDevice(
                    id=unit_id,
                    simdata=(bits, list(bits), tables["holding"], tables["input"]),
                    action=self._action_for(device),
                )
            )
        # Unit id 0 catches every other id; like an RS-485 bus, an absent device stays silent.
        devices.append(
            SimDevice(
                id=0,
                simdata=(bits, list(bits), [_invalid()], [_invalid()]),
                action=self._silent,
            )
        )
        return devices

    async def _silent(self, *_request: object) -> None:
        from pymodbus.exceptions import NoSuchIdException

        raise NoSuchIdException("no simulated device has this unit id")

    def _action_for(self, device: str) -> Callable[..., Any]:
        from pymodbus.exceptions import NoSuchIdException

        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | None,
        ) -> None:
            fault = self.faults[device]
            if fault is Fault.HANG:
                # The server is built with ignore_missing_devices=True: this request gets no answer at all.
                raise NoSuchIdException(f"simulated device {device} does not answer")
            if set_values:
                return self._take_write(device, address, list(set_values))
            function = "input" if function_code == 4 else "holding"
            for (table, reg_address), word in self.registers(device).items():
                offset = reg_address - start_address
                if table == function and 0 <= offset < len(registers):
                    registers[offset] = GARBAGE_WORD if fault is Fault.GARBAGE else word

        return action

    def _take_write(self, device: str, address: int, words: list[int]) -> Any:
        """A holding-register write: only whole setpoint registers are taken, anything else is refused."""
        from pymodbus.constants import ExcCodes

        register_map = self.maps[device]
        spec = next((s for s in register_map.registers if s.kind == "setpoint" and s.address == address), None)
        if spec is None or len(words) != spec.words:
            return ExcCodes.ILLEGAL_ADDRESS
        order = spec.word_order or register_map.word_order
        raw = decode_words(words, spec.dtype, order, register_map.byte_order)
        value = float(raw) * spec.scale + spec.offset
        if math.isfinite(value) and not spec.min_value <= value <= spec.max_value:  # type: ignore[operator]
            return ExcCodes.ILLEGAL_VALUE
        self.write_setpoint(value)
        return None


def _invalid() -> Any:
    from pymodbus.simulator import DataType, SimData

    return SimData(0, count=1, datatype=DataType.INVALID)


def _zero_if_nan(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _finest_exponent(spec: RegisterSpec, value: float) -> int:
    """The smallest SunSpec exponent (finest resolution) at which ``value`` fits the register."""
    if not math.isfinite(value):
        return 0
    layout = DTYPES[spec.dtype]
    limit = 2 ** (16 * layout.words - (1 if spec.dtype.startswith("int") else 0)) - 2
    for exponent in (-2, -1, 0, 1, 2, 3):
        if abs(raw_from_engineering(spec, value, exponent)) <= limit:
            return exponent
    return 3


def _encode(register_map: RegisterMap, spec: RegisterSpec, raw: int | float) -> dict[tuple[str, int], int]:
    order = spec.word_order or register_map.word_order
    words = encode_value(raw, spec.dtype, order, register_map.byte_order)
    return {(spec.function, spec.address + i): word for i, word in enumerate(words)}


def _encode_engineering(
    register_map: RegisterMap, spec: RegisterSpec, value: float, exponent: int
) -> dict[tuple[str, int], int]:
    if not math.isfinite(value):
        sentinel = DTYPES[spec.dtype].sentinel
        return _encode(register_map, spec, math.nan if sentinel is None else sentinel)
    raw = raw_from_engineering(spec, value, exponent)
    if spec.dtype.startswith("uint") and isinstance(raw, int):
        raw = max(raw, 0)
    return _encode(register_map, spec, raw)


def _served_spans(register_map: RegisterMap) -> list[tuple[str, int, list[int]]]:
    """Address spans a device implements, with their initial words.

    A SunSpec device answers for every address of its model (unused points hold the sentinel 0xFFFF)
    and carries the "SunS" marker at 40000; other devices implement only their registers' addresses.
    """
    spans: list[tuple[str, int, list[int]]] = []
    for function in ("holding", "input"):
        rows = sorted((s for s in register_map.registers if s.function == function), key=lambda s: s.address)
        start = end = -1
        for spec in rows:
            if start >= 0 and spec.address - end <= register_map.max_gap:
                end = max(end, spec.address + spec.words)
                continue
            if start >= 0:
                spans.append((function, start, [0xFFFF] * (end - start)))
            start, end = spec.address, spec.address + spec.words
        if start >= 0:
            spans.append((function, start, [0xFFFF] * (end - start)))
    if register_map.sunspec_sentinels:
        spans.append(("holding", SUNSPEC_BASE, list(SUNSPEC_ID)))
    return spans


class SiteServer:
    """A pymodbus server for a :class:`SimulatedSite`, run in a background thread or in asyncio.

    ``port=0`` binds a free port; :attr:`port` tells which after :meth:`start`.
    """

    def __init__(self, site: SimulatedSite, host: str = "127.0.0.1", port: int = 0) -> None:
        self.site = site
        self.host = host
        self.port = port
        self.connections = 0
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _count_connection(self, connected: bool) -> None:
        if connected:
            self.connections += 1

    async def start_tcp(self) -> None:
        """Start listening for Modbus TCP on the current event loop (returns once listening)."""
        from pymodbus.server import ModbusTcpServer

        server = ModbusTcpServer(
            self.site.sim_devices(),
            address=(self.host, self.port),
            ignore_missing_devices=True,
            trace_connect=self._count_connection,
        )
        await server.serve_forever(background=True)
        self._server = server
        self._loop = asyncio.get_running_loop()
        listener: Any = server.transport
        self.port = int(listener.sockets[0].getsockname()[1])

    async def start_rtu(self, serial_port: str, baudrate: int = 19200) -> None:
        """Start answering Modbus RTU on a serial port (a real line or a pseudo-terminal)."""
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusSerialServer

        server = ModbusSerialServer(
            self.site.sim_devices(),
            framer=FramerType.RTU,
            port=serial_port,
            baudrate=baudrate,
            ignore_missing_devices=True,
        )
        await server.serve_forever(background=True)
        self._server = server
        self._loop = asyncio.get_running_loop()

    async def stop_async(self) -> None:
        """Stop the server and close its connections."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def drop_connections(self) -> None:
        """Close every client connection now, like a gateway reboot (clients must reconnect)."""
        if self._loop is None or self._server is None:
            raise ServiceError("the simulated site server is not running; start it first")
        server = self._server

        def drop() -> None:
            for connection in list(server.active_connections.values()):
                connection.close()

        if self._thread is not None:
            done = threading.Event()

            def drop_and_signal() -> None:
                drop()
                done.set()

            self._loop.call_soon_threadsafe(drop_and_signal)
            done.wait(5.0)
        else:
            drop()

    def start_in_thread(self, serial_port: str | None = None, baudrate: int = 19200) -> SiteServer:
        """Run the server on its own event loop in a daemon thread; returns once it is listening."""
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                if serial_port is None:
                    loop.run_until_complete(self.start_tcp())
                else:
                    loop.run_until_complete(self.start_rtu(serial_port, baudrate))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._thread = threading.Thread(target=run, name="gridedge-sim-site", daemon=True)
        self._thread.start()
        if not ready.wait(10.0):
            raise ServiceError("the simulated site did not start listening within 10 s")
        if failure:
            raise ServiceError(f"the simulated site could not start: {failure[0]}") from failure[0]
        return self

    def stop(self) -> None:
        """Stop a server started with :meth:`start_in_thread` and wait for its thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._thread = None

    def __enter__(self) -> SiteServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
