"""A user's own file, trained from a config alone: clock, cleaning, data check, protocol by local time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from edge_agent.features import local_seconds
from gridedge.cli import app
from gridedge.trainer.config import load_config
from gridedge.trainer.tasks import prepare_task

ConfigWriter = Callable[[Path, str], Path]


def _planted(frame: pd.DataFrame) -> pd.DataFrame:
    """The user's export with one of each fault planted, counts known."""
    rows = frame.copy()
    rows.loc[[1000, 2000, 3000], "load_kw"] = -1_000_000.0  # 3 sentinels
    rows.loc[4000, "load_kw"] = 55.0  # 1 out of range (max 12 kW)
    day = rows["time"].str[:10]
    copied = (day == "2007-06-13").to_numpy()
    rows.loc[copied, ["load_kw", "volts"]] = rows.loc[(day == "2007-06-12").to_numpy(), ["load_kw", "volts"]].to_numpy()
    gap = (rows["time"] >= "2007-07-10") & (rows["time"] < "2007-07-13")  # 1 long gap of 3 days
    rows = rows[~gap]
    skipped = pd.DataFrame({"time": ["2007-03-25 02:15:00", "2007-03-25 02:30:00"], "load_kw": 1.0, "volts": 240.0})
    duplicate = rows.iloc[[5000]]  # 1 duplicate timestamp
    return pd.concat([rows, skipped, duplicate]).reset_index(drop=True)


def test_data_check_names_every_planted_fault_with_its_count(
    own_load_frame: pd.DataFrame, own_data_config: ConfigWriter, tmp_path: Path
) -> None:
    _planted(own_load_frame).to_csv(tmp_path / "house.csv", index=False)
    config = own_data_config(tmp_path, "house.csv")
    result = CliRunner().invoke(app, ["data", "check", str(config), "--out", str(tmp_path / "check")],
                                env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "check" / "data_check.json").read_text())
    assert report["sentinels"] == {"load_kw": 3}
    assert report["out_of_range"] == {"load_kw": 1}
    assert report["duplicates"] == 1
    assert report["dst"]["missing_local_times"] == 2 and report["dst"]["dropped"] == 2
    assert report["dst"]["repeated_local_times"] == 8  # 02:00-02:45 twice on 2007-10-28
    assert report["gaps"]["1-7 d"] == 1
    # The planted copy, and the source's own (data/README.md) which survive in the user's export.
    assert report["upstream_filled_days"] == ["2007-04-28", "2007-04-29", "2007-04-30", "2007-06-13"]
    for words in ("sentinels", "load_kw 3", "duplicate timestamps", "1-7 d 1", "2 missing local times",
                  "upstream-filled days", "2007-06-13", "val origins", "ready to train"):  # fmt: skip
        assert words in result.output, words
    markdown = (tmp_path / "check" / "data_check.md").read_text()
    assert "| duplicate timestamps | 1 (first kept) |" in markdown
    assert (tmp_path / "check" / "coverage.png").stat().st_size > 5000


def test_origins_fall_at_origin_hour_local_and_sentinels_stay_out_of_the_statistics(
    own_load_frame: pd.DataFrame, own_data_config: ConfigWriter, tmp_path: Path
) -> None:
    planted = _planted(own_load_frame)
    planted.to_csv(tmp_path / "house.csv", index=False)
    prepared = prepare_task(load_config(own_data_config(tmp_path, "house.csv")))
    for split, hours in ((prepared.train, {0, 6, 12, 18}), (prepared.val, {0, 6, 12, 18}), (prepared.test, {6})):
        local = local_seconds(split.origin_times, "Europe/Paris") % 86_400
        assert set((local // 3600).tolist()) == hours and not (local % 3600).any(), split.name
    stats = prepared.spec.normalisation
    assert stats is not None
    clean = own_load_frame["load_kw"].to_numpy()
    assert stats.mean[0] == pytest.approx(np.nanmean(clean[: len(clean) * 3 // 4]), rel=0.1)
    assert abs(stats.mean[0]) < 3 and stats.std[0] < 3  # a -1,000,000 sentinel would make them huge


def test_naive_clock_without_zone_or_offset_is_refused(
    own_load_frame: pd.DataFrame, own_data_config: ConfigWriter, tmp_path: Path
) -> None:
    own_load_frame.to_csv(tmp_path / "house.csv", index=False)
    path = own_data_config(tmp_path, "house.csv")
    path.write_text(path.read_text().replace("  timezone: Europe/Paris\n", ""))
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "data.timezone" in result.output and "data.utc_offset" in result.output


def test_night_omitted_pv_export_is_filled_and_resampled(tmp_path: Path) -> None:
    from gridedge.trainer import datasets
    from gridedge.trainer.config import DataConfig

    times = pd.date_range("2024-06-01", "2024-06-03", freq="5min", tz="America/Denver", inclusive="left")
    hours = times.hour + times.minute / 60
    day = (hours >= 6) & (hours < 20)
    frame = pd.DataFrame({"time": times[day].strftime("%Y-%m-%dT%H:%M:%S%z"), "pv_w": 1000.0})
    frame.to_parquet(tmp_path / "pv.parquet")
    data = DataConfig(
        path=str(tmp_path / "pv.parquet"), timezone="America/Denver", step="15min", aggregation="mean",
        fill_night_with_zero=["pv_w"], location={"latitude": 39.742, "longitude": -105.179},
    )  # fmt: skip
    loaded = datasets.load(data)
    assert loaded.log.detected_step_s == 300 and loaded.log.step_s == 900
    assert loaded.log.night_filled["pv_w"] > 0
    local = loaded.frame.index.tz_convert("America/Denver")
    assert (loaded.frame["pv_w"][local.hour == 1] == 0).all()
    assert loaded.frame["pv_w"].isna().sum() < 16  # only twilight, where the sun is up but the export is silent
