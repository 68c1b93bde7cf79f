"""Rebuild the small data slices in this folder from the full measured files.

Run from the repository root: ``python data/make_slices.py /path/to/shared/data``. The full sources are
not shipped (see data/README.md for provenance and licences); this script documents exactly how each
slice was cut, resampled and time-aligned, and reproduces the committed files byte for byte.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from gridedge.datafiles import UCI_LOAD_COLUMNS

HERE = Path(__file__).resolve().parent
UCI_START, UCI_END = "2007-01-01 00:00", "2008-12-31 23:45"
# One year of the PV site, July to June in its local standard time (MST, UTC-07:00), expressed in UTC:
# time-ordered splits then train on every season and test on late spring rather than snowy December.
PV_START_UTC, PV_END_UTC = "2012-07-01 07:00", "2013-07-01 06:45"
PV_WEATHER = ["ghi", "ghi_clear", "dni_clear", "dhi_clear", "temp_air"]
ISO_UTC = "%Y-%m-%dT%H:%M:%S+00:00"


def _write(frame: pd.DataFrame, name: str) -> None:
    path = HERE / name
    # mtime=0 keeps the gzip header stable so a rebuild gives identical bytes.
    compression = {"method": "gzip", "mtime": 0} if name.endswith(".gz") else None
    frame.to_csv(path, index=False, float_format="%.4f", compression=compression, lineterminator="\n")


def uci_load(source: Path) -> None:
    """15-minute means of all seven UCI household columns, on the source's naive local clock."""
    minutes = pd.read_parquet(source / "load" / "uci_household_power_1min.parquet")
    quarter = minutes.astype("float64").resample("15min").mean().loc[UCI_START:UCI_END]
    quarter.index = quarter.index.strftime("%Y-%m-%dT%H:%M:%S")
    out = quarter[list(UCI_LOAD_COLUMNS)].rename_axis("timestamp").reset_index()
    _write(out, "w1_load_uci_15min.csv.gz")


def pv_system50(source: Path) -> None:
    """System 50 AC power on a true-UTC 15-minute grid with its PSM3 weather interpolated onto it."""
    power = pd.read_parquet(source / "pv" / "system_50_ac_power_2_full_DST.parquet")
    # The -07:00 tag is wrong for half the year: the clock is Denver local time WITH daylight saving.
    wall_clock = power["measured_on"].dt.tz_localize(None)
    # Spring-forward rows 02:00-02:45 do not exist on that clock (and hold NaN); the repeated fall-back
    # hour appears only once, taken as its first (daylight-time) pass; the second pass becomes a gap.
    local = wall_clock.dt.tz_localize("America/Denver", nonexistent="NaT", ambiguous=True)
    keep = local.notna()
    ac = pd.Series(power.loc[keep, "ac_power_2"].to_numpy("float64"), index=local[keep].dt.tz_convert("UTC"))
    grid = pd.date_range(PV_START_UTC, PV_END_UTC, freq="15min", tz="UTC")
    frame = pd.DataFrame({"ac_power": ac.reindex(grid)}, index=grid)

    weather = pd.read_parquet(source / "pv" / "system_50_ac_power_2_full_DST_psm3.parquet")
    # PSM3 is in true MST all year, so its -07:00 tag converts to UTC directly.
    weather = weather.set_index(weather["index"].dt.tz_convert("UTC"))[PV_WEATHER].astype("float64")
    dense = weather.reindex(weather.index.union(grid)).interpolate(method="time", limit_direction="both")
    frame = frame.join(dense.reindex(grid))
    frame.index = frame.index.strftime(ISO_UTC)
    _write(frame.rename_axis("timestamp_utc").reset_index(), "w2_pv_system50_15min.csv.gz")


def inverter_streams(source: Path) -> None:
    """Copies of the inverter streams; zone-tagged timestamps become ``timestamp_utc``."""
    folder = source / "inverter"
    naive = [
        ("nrel_RSF_II.csv", "w3_rsf2_inverter.csv"),
        ("serf_west_15min.csv", "w3_serf_west_inverter.csv"),
    ]
    for src, dst in naive:
        frame = pd.read_csv(folder / src, index_col=0)
        # No zone in the source: keep the naive local clock under a name that says so.
        frame.index = pd.to_datetime(frame.index).strftime("%Y-%m-%dT%H:%M:%S")
        frame = frame.rename_axis("timestamp").reset_index()
        frame.to_csv(HERE / dst, index=False, lineterminator="\n")
    for src, dst in [
        ("ac_power_inv_7539_outliers.csv", "w3_inv7539_outliers.csv"),
        ("ac_power_inv_2173_stale_data.csv", "w3_inv2173_stale.csv"),
        ("ac_power_inv_2173_interpolated_data.csv", "w3_inv2173_interpolated.csv"),
    ]:
        frame = pd.read_csv(folder / src)
        label = frame.columns[2]
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.strftime(ISO_UTC)
        frame[label] = frame[label].astype(str).str.lower().map({"true": 1, "false": 0}).astype("int8")
        frame = frame.rename(columns={"timestamp": "timestamp_utc"})
        frame.to_csv(HERE / dst, index=False, lineterminator="\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path, help="folder holding load/, pv/ and inverter/")
    args = parser.parse_args()
    uci_load(args.source)
    pv_system50(args.source)
    inverter_streams(args.source)


if __name__ == "__main__":
    main()
