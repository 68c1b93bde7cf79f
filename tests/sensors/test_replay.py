"""Replay of the shipped data files, with time acceleration, loop/stop at the end, CSV and Parquet."""

from __future__ import annotations

import gzip
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.csvseries import read_csv_series
from edge_agent.errors import ConfigError, MissingExtraError
from edge_agent.sensors.base import ChannelStatus
from edge_agent.sensors.replay import ReplayConfig, ReplaySource
from gridedge.datafiles import read_series

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
LOAD = {"name": "load", "column": "Global_active_power", "unit": "W", "scale": 1000, "min_value": 0, "max_value": 15000}


@pytest.fixture(scope="module")
def load_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 days of the shipped UCI load slice (the full file takes ~1 s to parse per source)."""
    folder = tmp_path_factory.mktemp("replay")
    with gzip.open(DATA_DIR / "w1_load_uci_15min.csv.gz", "rt") as full:
        lines = [next(full) for _ in range(1 + 40 * 96)]
    (folder / "load.csv").write_text("".join(lines))
    return folder


def _config(**overrides: Any) -> ReplayConfig:
    base: dict[str, Any] = {
        "type": "replay",
        "name": "house",
        "path": "load.csv",
        "naive_utc_offset_s": 3600,
        "channels": [LOAD, {"name": "volts", "column": "Voltage", "unit": "V", "min_value": 230, "max_value": 250}],
    }
    return ReplayConfig.model_validate(base | overrides)


class Clock:
    """A settable clock for exact replay positions (the wall clock is tested separately below)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_replay_plays_the_latest_sample_accelerated(load_dir: Path) -> None:
    times, columns = read_csv_series(load_dir / "load.csv", 3600)
    clock = Clock()
    source = ReplaySource(_config(speed=900), load_dir, clock=clock)
    first = source.read()
    assert first.timestamp == times[0]
    assert first.channels["house.load"].value == pytest.approx(columns["Global_active_power"][0] * 1000)
    assert first.channels["house.load"].unit == "W"
    clock.now += 2.5  # 2250 s of data at 900x: the third sample (index 2) is the latest one
    later = source.read()
    assert later.channels["house.load"].timestamp == times[2]
    assert later.channels["house.load"].value == pytest.approx(columns["Global_active_power"][2] * 1000)
    assert later.timestamp == times[0] + 2250


def test_replay_on_the_wall_clock_moves_with_the_speed(load_dir: Path) -> None:
    source = ReplaySource(_config(speed=3600), load_dir)
    start = source.read().timestamp
    time.sleep(0.3)
    elapsed = source.read().timestamp - start
    assert 0.3 * 3600 <= elapsed < 3.0 * 3600


def test_replay_flags_out_of_range_values(load_dir: Path) -> None:
    reading = ReplaySource(_config(), load_dir, clock=Clock()).read()
    volts = reading.channels["house.volts"]
    # The first sample is 241.9 V: inside 230..250.
    assert volts.status is ChannelStatus.OK
    narrow = _config(channels=[{"name": "volts", "column": "Voltage", "unit": "V", "max_value": 200}])
    flagged = ReplaySource(narrow, load_dir, clock=Clock()).read()
    assert flagged.channels["house.volts"].status is ChannelStatus.OUT_OF_RANGE
    assert math.isnan(flagged.values()["house.volts"])


def test_replay_stops_or_loops_at_the_end_of_the_data(load_dir: Path) -> None:
    times, _ = read_csv_series(load_dir / "load.csv", 3600)
    span = float(times[-1] - times[0]) + 900
    clock = Clock()
    stop = ReplaySource(_config(speed=span), load_dir, clock=clock)
    loop = ReplaySource(_config(speed=span, at_end="loop"), load_dir, clock=clock)
    clock.now += 1.0 + 1800 / span  # one full span plus two samples
    ended = stop.read()
    assert ended.channels["house.load"].status is ChannelStatus.MISSING
    assert ended.channels["house.load"].detail == "replay reached the end"
    assert loop.read().channels["house.load"].timestamp == times[2]


def test_replay_can_start_at_a_chosen_time(load_dir: Path) -> None:
    source = ReplaySource(_config(start="2007-01-02T11:00:00+00:00"), load_dir, clock=Clock())
    assert source.read().channels["house.load"].timestamp == datetime(2007, 1, 2, 11, tzinfo=UTC).timestamp()
    naive_means_utc = ReplaySource(_config(start="2007-01-02T11:00:00"), load_dir, clock=Clock())
    assert naive_means_utc.read().timestamp == datetime(2007, 1, 2, 11, tzinfo=UTC).timestamp()


def test_replay_of_parquet_matches_the_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    times, columns = read_series("w2_pv_system50_15min", DATA_DIR)
    table = pa.table(
        {
            "measured_on": pa.array(times[:200].astype("datetime64[s]"), type=pa.timestamp("s", tz="UTC")),
            "ac_power": pa.array(columns["ac_power"][:200]),
        }
    )
    pq.write_table(table, tmp_path / "pv.parquet")
    channels = [{"name": "pv", "column": "ac_power", "unit": "W", "min_value": 0, "max_value": 4000}]
    parquet = ReplayConfig.model_validate(
        {"type": "replay", "name": "pv", "path": "pv.parquet", "channels": channels, "speed": 900}
    )
    csv = ReplayConfig.model_validate(
        {"type": "replay", "name": "pv", "path": "w2_pv_system50_15min.csv.gz", "channels": channels, "speed": 900}
    )
    clock = Clock()
    from_parquet = ReplaySource(parquet, tmp_path, clock=clock)
    from_csv = ReplaySource(csv, DATA_DIR, clock=clock)
    for _ in range(60):
        clock.now += 1.0
        assert from_parquet.read() == from_csv.read()


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    config = _config(path="x.parquet")
    with pytest.raises(MissingExtraError, match=r"gridedge\[train\]"):
        ReplaySource(config, tmp_path)


def test_replay_config_errors_say_what_to_fix(tmp_path: Path, load_dir: Path) -> None:
    with pytest.raises(ConfigError, match="has no column"):
        ReplaySource(_config(channels=[{"name": "x", "column": "nope"}]), load_dir)
    with pytest.raises(ConfigError, match="cannot read replay file"):
        ReplaySource(_config(path="absent.csv"), tmp_path)
    with pytest.raises(ValueError, match="greater than 0"):
        _config(speed=0)
