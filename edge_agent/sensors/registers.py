"""Register maps as data, and their pure decoding from raw 16-bit words (no I/O here).

A register map is a YAML file of rows ``(name, address, function, dtype, scale, unit, range)`` plus the
device's word and byte order. Decoding turns the words a device returned into engineering values:

* dtypes int16/uint16/int32/uint32/int64/uint64/float32 spanning 1, 2 or 4 registers;
* word order (which register holds the most significant word) and byte order within a register;
* ``value = raw * scale * 10**sf + offset`` where ``sf`` is an optional SunSpec-style scale-factor
  register (an int16 exponent served next to the value);
* SunSpec "not implemented" sentinels (0x8000 for int16, 0xFFFF for uint16, ...) read as missing;
* values outside the physical ``min_value``/``max_value`` range are flagged, never passed on silently.

:func:`encode_value` is the exact inverse, used by the simulated site and by the tests' word fixtures.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edge_agent.errors import ConfigError
from edge_agent.features import ChannelSpec
from edge_agent.ranges import PlausibleRange
from edge_agent.sensors.base import ChannelStatus, ChannelValue, checked_value
from edge_agent.yamlconfig import StrictModel, load_yaml_model

DTypeName = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32"]
Order = Literal["big", "little"]
FunctionName = Literal["holding", "input"]
# The Modbus PDU caps one read at 125 registers.
MAX_REGISTERS_PER_READ = 125
# SunSpec scale factors are small exponents; anything beyond this is a corrupt register, not a scale.
MAX_SCALE_EXPONENT = 10
NOT_READ = "not read"
# Inside this package: a link to firmware_configs/registers/, packaged into the wheel.
SHIPPED_MAPS_FOLDER = "register_maps"


@dataclass(frozen=True, slots=True)
class DType:
    """How one value is laid out: struct code (big-endian), register count, SunSpec sentinel."""

    struct_code: str
    words: int
    sentinel: int | None

    def unpack(self, data: bytes) -> int | float:
        value: int | float = struct.unpack(">" + self.struct_code, data)[0]
        return value


DTYPES: dict[str, DType] = {
    "int16": DType("h", 1, -0x8000),
    "uint16": DType("H", 1, 0xFFFF),
    "int32": DType("i", 2, -0x8000_0000),
    "uint32": DType("I", 2, 0xFFFF_FFFF),
    "int64": DType("q", 4, -0x8000_0000_0000_0000),
    "uint64": DType("Q", 4, 0xFFFF_FFFF_FFFF_FFFF),
    "float32": DType("f", 2, None),
}


class RegisterSpec(PlausibleRange, frozen=True):
    """One row of a register map: where a value lives and how to turn its words into units."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", title="Name")
    """Channel name."""
    address: int = Field(ge=0, le=0xFFFF, title="Address")
    """Zero-based address of the first word."""
    function: FunctionName = Field(default="holding", title="Register table")
    """holding (function code 3) or input (function code 4) registers."""
    dtype: DTypeName = Field(default="uint16", title="Data type")
    """How the words encode the value."""
    kind: Literal["measurement", "scale_factor", "setpoint"] = Field(default="measurement", title="Kind")
    """measurement becomes a channel; scale_factor is a SunSpec exponent used by others; setpoint is a holding register
    a controller writes (the planner's actuation), never read."""
    scale: float = Field(default=1.0, title="Scale")
    """Multiplier applied to the raw integer."""
    offset: float = Field(default=0.0, title="Offset")
    """Added after scaling."""
    scale_factor: str | None = Field(default=None, title="Scale-factor register")
    """Name of the int16 scale_factor register whose power of ten multiplies this value."""
    word_order: Order | None = Field(default=None, title="Word order")
    """Overrides the map's word order for this register (big: first word most significant)."""
    unit: str = Field(default="", title="Unit")
    """Engineering unit after scaling, e.g. W, %, V."""
    description: str = Field(default="", title="Description")
    """What the value measures."""

    @property
    def words(self) -> int:
        """Number of 16-bit registers this value spans."""
        return DTYPES[self.dtype].words

    @model_validator(mode="after")
    def _consistent(self) -> RegisterSpec:
        if self.address + self.words - 1 > 0xFFFF:
            raise ValueError(f"register {self.name!r} runs past address 65535; lower its address")
        if self.kind == "setpoint" and self.function != "holding":
            raise ValueError(f"setpoint register {self.name!r} must be a holding register (only those are written)")
        if self.kind == "scale_factor" and self.dtype != "int16":
            raise ValueError(f"scale_factor register {self.name!r} must have dtype int16 (SunSpec sunssf)")
        return self


class RegisterMap(StrictModel, frozen=True):
    """A device's register map: byte/word order and the rows to read."""

    name: str = Field(min_length=1, title="Name")
    """Device model this map describes."""
    description: str = Field(default="", title="Description")
    """Where the map comes from."""
    word_order: Order = Field(default="big", title="Word order")
    """big: the first register holds the most significant word (ABCD); little: CDAB."""
    byte_order: Order = Field(default="big", title="Byte order")
    """Byte order inside each 16-bit register; Modbus is big-endian, a few devices swap."""
    sunspec_sentinels: bool = Field(default=False, title="SunSpec sentinels")
    """Treat SunSpec 'not implemented' values (0x8000, 0xFFFF, ...) as missing."""
    max_block_registers: int = Field(
        default=MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ, title="Largest block"
    )
    """Most registers fetched in one request; some devices accept fewer than 125."""
    max_gap: int = Field(default=0, ge=0, le=MAX_REGISTERS_PER_READ, title="Largest hole read through")
    """Merge reads across up to this many unused registers. Only for devices that answer for every address in the span
    (SunSpec models do); others reject the whole block."""
    registers: list[RegisterSpec] = Field(min_length=1, title="Registers")
    """The values to read, one row each."""

    @model_validator(mode="after")
    def _references_and_overlaps(self) -> RegisterMap:
        by_name: dict[str, RegisterSpec] = {}
        for spec in self.registers:
            if spec.name in by_name:
                raise ValueError(f"register name {spec.name!r} appears twice in map {self.name!r}")
            by_name[spec.name] = spec
        for spec in self.registers:
            if spec.scale_factor is None:
                continue
            target = by_name.get(spec.scale_factor)
            if target is None or target.kind != "scale_factor":
                raise ValueError(
                    f"register {spec.name!r} names scale_factor {spec.scale_factor!r}, which is not a "
                    "scale_factor register of this map; add it or fix the name"
                )
        for function in ("holding", "input"):
            rows = sorted((s for s in self.registers if s.function == function), key=lambda s: s.address)
            for first, second in itertools.pairwise(rows):
                if second.address < first.address + first.words:
                    raise ValueError(
                        f"registers {first.name!r} and {second.name!r} overlap at {function} address {second.address}"
                    )
        return self

    def measurements(self) -> list[RegisterSpec]:
        """The rows that become channels (scale-factor rows excluded)."""
        return [spec for spec in self.registers if spec.kind == "measurement"]

    def channel_specs(self, prefix: str = "") -> list[ChannelSpec]:
        """Channel specs (name, unit, range) of the measurements, names prefixed with ``prefix``."""
        return [
            ChannelSpec(name=prefix + spec.name, unit=spec.unit, min_value=spec.min_value, max_value=spec.max_value)
            for spec in self.measurements()
        ]


def shipped_register_maps_dir() -> Path:
    """The folder of the register maps shipped with gridedge (``firmware_configs/registers/``).

    Wheels install unpacked, so the packaged folder is a real one.
    """
    from importlib.resources import files

    return Path(str(files("edge_agent.sensors").joinpath(SHIPPED_MAPS_FOLDER)))


def register_map_path(reference: Path, base_dir: Path | None) -> Path:
    """The file a ``register_map`` entry points at.

    A bare name without a suffix (``load_meter``) is the map shipped with gridedge, so a site file works
    wherever it is copied; anything else is a path, taken relative to ``base_dir`` (the folder of the file
    that names it).
    """
    if len(reference.parts) == 1 and not reference.suffix:
        shipped = shipped_register_maps_dir() / f"{reference}.yaml"
        if not shipped.is_file():
            names = sorted(p.stem for p in shipped_register_maps_dir().glob("*.yaml"))
            raise ConfigError(
                f"register_map {str(reference)!r} is not a shipped register map; name one of {names} "
                "or give the path of a .yaml file"
            )
        return shipped
    return reference if reference.is_absolute() or base_dir is None else base_dir / reference


def load_register_map(path: Path) -> RegisterMap:
    """Read and validate a register map YAML file."""
    return load_yaml_model(path, RegisterMap, "register map", missing_hint="check the path in the sensor config")


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: ``count`` contiguous registers from ``start`` in one register table."""

    function: FunctionName
    start: int
    count: int


def plan_blocks(register_map: RegisterMap) -> list[ReadBlock]:
    """Group the map's registers into as few requests as possible.

    Registers are merged when contiguous, or separated by at most ``max_gap`` unused registers: reading
    across a hole could hit an address the device rejects with "illegal data address", losing the block.
    Setpoint registers are written, never read.
    """
    blocks: list[ReadBlock] = []
    read = [s for s in register_map.registers if s.kind != "setpoint"]
    for function in ("holding", "input"):
        rows = sorted((s for s in read if s.function == function), key=lambda s: s.address)
        start = end = -1
        for spec in rows:
            spec_end = spec.address + spec.words
            near = spec.address - end <= register_map.max_gap
            if start >= 0 and near and spec_end - start <= register_map.max_block_registers:
                end = spec_end
                continue
            if start >= 0:
                blocks.append(ReadBlock(function, start, end - start))
            start, end = spec.address, spec_end
        if start >= 0:
            blocks.append(ReadBlock(function, start, end - start))
    return blocks


def decode_words(words: Sequence[int], dtype: str, word_order: Order = "big", byte_order: Order = "big") -> int | float:
    """Decode the registers of one value into its raw integer or float."""
    layout = DTYPES[dtype]
    if len(words) != layout.words:
        raise ValueError(f"{dtype} needs {layout.words} registers, got {len(words)}")
    ordered = words if word_order == "big" else list(reversed(words))
    # Words are now most-significant first; each word's bytes come out in data order.
    data = b"".join(int(word).to_bytes(2, byte_order) for word in ordered)
    return layout.unpack(data)


def encode_value(value: int | float, dtype: str, word_order: Order = "big", byte_order: Order = "big") -> list[int]:
    """Encode a raw integer or float into registers; the inverse of :func:`decode_words`."""
    layout = DTYPES[dtype]
    try:
        data = struct.pack(">" + layout.struct_code, value)
    except struct.error as exc:
        raise ValueError(f"{value!r} does not fit in {dtype}: {exc}") from exc
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order == "little":
        words = [((word & 0xFF) << 8) | (word >> 8) for word in words]
    return words if word_order == "big" else list(reversed(words))


def raw_from_engineering(spec: RegisterSpec, value: float, scale_exponent: int = 0) -> int | float:
    """The raw register value a device would send for ``value`` (used by the simulated site)."""
    raw = (value - spec.offset) / (spec.scale * 10.0**scale_exponent)
    if spec.dtype == "float32":
        return raw
    return round(raw)


def _words_of(spec: RegisterSpec, words: Mapping[tuple[str, int], int]) -> list[int] | None:
    wanted = [(spec.function, spec.address + i) for i in range(spec.words)]
    if any(key not in words for key in wanted):
        return None
    return [words[key] for key in wanted]


def _raw_value(
    spec: RegisterSpec, register_map: RegisterMap, words: Mapping[tuple[str, int], int]
) -> tuple[int | float | None, str]:
    """The raw value of one register, or None with the reason it is missing."""
    registers = _words_of(spec, words)
    if registers is None:
        return None, NOT_READ
    order = spec.word_order or register_map.word_order
    raw = decode_words(registers, spec.dtype, order, register_map.byte_order)
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, f"device sent {raw}"
    if register_map.sunspec_sentinels and raw == DTYPES[spec.dtype].sentinel:
        return None, "not implemented (SunSpec sentinel)"
    return raw, ""


def decode_registers(
    register_map: RegisterMap,
    words: Mapping[tuple[str, int], int],
    timestamp: float = math.nan,
    prefix: str = "",
) -> dict[str, ChannelValue]:
    """Decode every measurement of a map from the words read, keyed ``(function, address)``.

    Registers absent from ``words`` (their block failed) decode as missing; values outside the physical
    range are flagged ``out_of_range``; a corrupt scale-factor register makes its dependants missing.
    """
    by_name = {spec.name: spec for spec in register_map.registers}
    decoded: dict[str, ChannelValue] = {}
    for spec in register_map.measurements():
        name = prefix + spec.name
        raw, reason = _raw_value(spec, register_map, words)
        exponent = 0
        if raw is not None and spec.scale_factor is not None:
            sf_raw, sf_reason = _raw_value(by_name[spec.scale_factor], register_map, words)
            if sf_raw is None:
                raw, reason = None, f"scale factor {spec.scale_factor}: {sf_reason}"
            elif abs(int(sf_raw)) > MAX_SCALE_EXPONENT:
                raw, reason = None, f"scale factor {spec.scale_factor} = {sf_raw} is not a plausible exponent"
            else:
                exponent = int(sf_raw)
        if raw is None:
            decoded[name] = ChannelValue(math.nan, spec.unit, ChannelStatus.MISSING, reason, timestamp)
            continue
        value = _scaled(float(raw), spec, exponent)
        decoded[name] = checked_value(value, spec.unit, spec, timestamp)
    return decoded


def _scaled(raw: float, spec: RegisterSpec, exponent: int) -> float:
    # Dividing by a power of ten keeps 28412 with sf -1 at exactly 2841.2 (multiplying by 0.1 does not).
    scale = spec.scale * 10.0**exponent if exponent >= 0 else spec.scale / 10.0**-exponent
    if 0 < abs(scale) < 1:
        inverse = 1.0 / scale
        if inverse == round(inverse):
            return raw / inverse + spec.offset
    return raw * scale + spec.offset
