"""Pure decoding of register maps from word fixtures: no I/O."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from edge_agent.sensors.base import ChannelStatus
from edge_agent.sensors.registers import (
    DTYPES,
    ReadBlock,
    RegisterMap,
    RegisterSpec,
    decode_registers,
    decode_words,
    encode_value,
    load_register_map,
    plan_blocks,
    raw_from_engineering,
    register_map_path,
    shipped_register_maps_dir,
)

# (dtype, value, words as a big-endian device sends them: most significant word first, bytes AB)
BIG_ENDIAN_FIXTURES = [
    ("int16", -2, [0xFFFE]),
    ("int16", 1234, [0x04D2]),
    ("uint16", 65534, [0xFFFE]),
    ("int32", -123456, [0xFFFE, 0x1DC0]),
    ("uint32", 3_000_000_000, [0xB2D0, 0x5E00]),
    ("int64", -2, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
    ("uint64", 2**63 + 5, [0x8000, 0x0000, 0x0000, 0x0005]),
    ("float32", 1.0, [0x3F80, 0x0000]),
    ("float32", -2.5, [0xC020, 0x0000]),
]


def _swap_bytes(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


@pytest.mark.parametrize(("dtype", "value", "words"), BIG_ENDIAN_FIXTURES)
def test_decode_every_dtype_in_every_word_and_byte_order(dtype: str, value: float, words: list[int]) -> None:
    assert decode_words(words, dtype, "big", "big") == value
    assert decode_words(list(reversed(words)), dtype, "little", "big") == value
    assert decode_words([_swap_bytes(w) for w in words], dtype, "big", "little") == value
    assert decode_words([_swap_bytes(w) for w in reversed(words)], dtype, "little", "little") == value


@pytest.mark.parametrize(("dtype", "value", "words"), BIG_ENDIAN_FIXTURES)
def test_encode_matches_the_fixtures(dtype: str, value: float, words: list[int]) -> None:
    assert encode_value(value, dtype, "big", "big") == words
    assert encode_value(value, dtype, "little", "little") == [_swap_bytes(w) for w in reversed(words)]


def test_float32_cdab_fixture_from_a_device_manual() -> None:
    # 123.456 as float32 is 0x42F6E979; a CDAB (little word order) device sends E979 first.
    assert decode_words([0xE979, 0x42F6], "float32", "little", "big") == pytest.approx(123.456, rel=1e-7)


@given(
    st.sampled_from(sorted(DTYPES)),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
    st.integers(min_value=0, max_value=2**64 - 1),
)
def test_encode_then_decode_round_trips(dtype: str, word_order: str, byte_order: str, seed: int) -> None:
    layout = DTYPES[dtype]
    bits = 16 * layout.words
    if dtype == "float32":
        value: float = struct.unpack(">f", struct.pack(">I", seed % 2**32))[0]
        if not math.isfinite(value):
            return
    elif dtype.startswith("uint"):
        value = seed % 2**bits
    else:
        value = seed % 2**bits - 2 ** (bits - 1)
    words = encode_value(value, dtype, word_order, byte_order)  # type: ignore[arg-type]
    assert len(words) == layout.words and all(0 <= w <= 0xFFFF for w in words)
    assert decode_words(words, dtype, word_order, byte_order) == value  # type: ignore[arg-type]


def test_encode_rejects_a_value_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit in int16"):
        encode_value(40000, "int16")


def _map(**overrides: object) -> RegisterMap:
    rows = [
        {
            "name": "power",
            "address": 10,
            "dtype": "int16",
            "scale_factor": "power_sf",
            "unit": "W",
            "min_value": -100,
            "max_value": 5000,
        },
        {"name": "power_sf", "address": 11, "dtype": "int16", "kind": "scale_factor"},
        {"name": "energy", "address": 12, "dtype": "uint32", "unit": "Wh", "scale": 0.1},
        {
            "name": "temp",
            "address": 20,
            "function": "input",
            "dtype": "int16",
            "scale": 0.1,
            "offset": -40,
            "unit": "degC",
            "min_value": -40,
            "max_value": 90,
        },
    ]
    return RegisterMap.model_validate({"name": "test", "registers": rows, "sunspec_sentinels": True, **overrides})


def test_decode_applies_scale_offset_and_sunspec_scale_factor() -> None:
    words = {
        ("holding", 10): 28412,
        ("holding", 11): encode_value(-1, "int16")[0],
        ("holding", 12): 0x0001,
        ("holding", 13): 0x0000,
        ("input", 20): 650,
    }
    decoded = decode_registers(_map(), words, timestamp=1.0, prefix="inv.")
    assert set(decoded) == {"inv.power", "inv.energy", "inv.temp"}  # the scale factor is not a channel
    assert decoded["inv.power"].value == 2841.2
    assert decoded["inv.power"].unit == "W" and decoded["inv.power"].timestamp == 1.0
    assert decoded["inv.energy"].value == pytest.approx(6553.6)
    assert decoded["inv.temp"].value == pytest.approx(25.0)
    assert all(v.status is ChannelStatus.OK for v in decoded.values())


def test_out_of_range_is_flagged_and_kept_visible() -> None:
    words = {("holding", 10): 9000, ("holding", 11): 0, ("holding", 12): 0, ("holding", 13): 0, ("input", 20): 0}
    power = decode_registers(_map(), words)["power"]
    assert power.status is ChannelStatus.OUT_OF_RANGE and power.value == 9000
    assert "above the physical maximum 5000" in power.detail
    assert not power.usable


def test_sentinels_missing_words_and_corrupt_scale_factors_read_as_missing() -> None:
    sentinel = encode_value(-0x8000, "int16")[0]
    decoded = decode_registers(_map(), {("holding", 10): sentinel, ("holding", 11): 0, ("input", 20): 5})
    assert decoded["power"].status is ChannelStatus.MISSING and "not implemented" in decoded["power"].detail
    assert decoded["energy"].status is ChannelStatus.MISSING and decoded["energy"].detail == "not read"
    assert math.isnan(decoded["energy"].value)
    corrupt = decode_registers(_map(), {("holding", 10): 100, ("holding", 11): 0x7FFF})
    assert corrupt["power"].status is ChannelStatus.MISSING
    assert "not a plausible exponent" in corrupt["power"].detail


def test_nan_float_reads_as_missing() -> None:
    register_map = RegisterMap.model_validate(
        {"name": "f", "registers": [{"name": "x", "address": 0, "dtype": "float32"}]}
    )
    nan_words = encode_value(float("nan"), "float32")
    assert (
        decode_registers(register_map, dict(zip([("holding", 0), ("holding", 1)], nan_words, strict=True)))["x"].status
        is ChannelStatus.MISSING
    )


def test_per_register_word_order_overrides_the_map() -> None:
    register_map = RegisterMap.model_validate(
        {
            "name": "mixed",
            "word_order": "big",
            "registers": [
                {"name": "a", "address": 0, "dtype": "uint32"},
                {"name": "b", "address": 2, "dtype": "uint32", "word_order": "little"},
            ],
        }
    )
    words = {("holding", 0): 1, ("holding", 1): 2, ("holding", 2): 1, ("holding", 3): 2}
    decoded = decode_registers(register_map, words)
    assert decoded["a"].value == 0x0001_0002
    assert decoded["b"].value == 0x0002_0001


def test_plan_blocks_groups_contiguous_registers_per_table() -> None:
    assert plan_blocks(_map()) == [ReadBlock("holding", 10, 4), ReadBlock("input", 20, 1)]


def test_plan_blocks_reads_across_small_holes_only_when_allowed_and_splits_at_the_size_limit() -> None:
    rows = [{"name": f"r{i}", "address": a} for i, a in enumerate([0, 1, 5, 6, 40])]
    contiguous = RegisterMap.model_validate({"name": "m", "registers": rows})
    assert plan_blocks(contiguous) == [
        ReadBlock("holding", 0, 2),
        ReadBlock("holding", 5, 2),
        ReadBlock("holding", 40, 1),
    ]
    gapped = RegisterMap.model_validate({"name": "m", "registers": rows, "max_gap": 4})
    assert plan_blocks(gapped) == [ReadBlock("holding", 0, 7), ReadBlock("holding", 40, 1)]
    small = RegisterMap.model_validate({"name": "m", "registers": rows, "max_gap": 100, "max_block_registers": 4})
    assert plan_blocks(small) == [
        ReadBlock("holding", 0, 2),
        ReadBlock("holding", 5, 2),
        ReadBlock("holding", 40, 1),
    ]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"name": "a", "address": 0}, {"name": "a", "address": 1}], "appears twice"),
        ([{"name": "a", "address": 0, "dtype": "uint32"}, {"name": "b", "address": 1}], "overlap"),
        ([{"name": "a", "address": 0, "scale_factor": "nope"}], "not a scale_factor register"),
        ([{"name": "sf", "address": 0, "dtype": "uint16", "kind": "scale_factor"}], "must have dtype int16"),
        ([{"name": "a", "address": 0, "min_value": 5, "max_value": 1}], "swap them"),
        ([{"name": "a", "address": 0, "dtype": "float64"}], "dtype"),
    ],
)
def test_invalid_maps_are_refused_with_the_reason(rows: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegisterMap.model_validate({"name": "bad", "registers": rows})


def test_shipped_register_maps_load_and_plan_few_requests(register_dir: Path) -> None:
    maps = {path.stem: load_register_map(path) for path in sorted(register_dir.glob("*.yaml"))}
    assert set(maps) == {"inverter_sunspec", "battery_bms", "load_meter"}
    assert len(plan_blocks(maps["inverter_sunspec"])) == 2
    assert len(plan_blocks(maps["battery_bms"])) == 1
    assert len(plan_blocks(maps["load_meter"])) == 1
    units = {spec.name: spec.unit for spec in maps["battery_bms"].channel_specs("battery.")}
    assert units["battery.soc"] == "%" and units["battery.power"] == "W"


def test_load_register_map_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read register map"):
        load_register_map(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nregisters:\n  - {name: a, address: -1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is invalid"):
        load_register_map(bad)


def test_raw_from_engineering_inverts_decoding() -> None:
    spec = RegisterSpec(name="v", address=0, dtype="uint16", scale=0.1, offset=-40)
    raw = raw_from_engineering(spec, 25.0)
    assert raw == 650


def test_a_bare_name_is_a_shipped_map_and_anything_else_a_path_from_the_naming_file(
    tmp_path: Path, register_dir: Path
) -> None:
    shipped = register_map_path(Path("load_meter"), tmp_path)
    assert shipped.read_bytes() == (register_dir / "load_meter.yaml").read_bytes()
    assert sorted(p.name for p in shipped_register_maps_dir().glob("*.yaml")) == sorted(
        p.name for p in register_dir.glob("*.yaml")
    )
    assert register_map_path(Path("maps/mine.yaml"), tmp_path) == tmp_path / "maps" / "mine.yaml"
    assert register_map_path(Path("mine.yaml"), tmp_path) == tmp_path / "mine.yaml"
    assert register_map_path(Path("/etc/mine.yaml"), tmp_path) == Path("/etc/mine.yaml")
    with pytest.raises(ConfigError, match=r"register_map 'load_metre' is not a shipped register map; name one of "
                       r"\['battery_bms', 'inverter_sunspec', 'load_meter'\]"):
        register_map_path(Path("load_metre"), tmp_path)
