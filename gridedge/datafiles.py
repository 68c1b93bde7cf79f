"""The catalogue of gridedge's shipped data slices (``data/``, packaged as ``gridedge.resources``).

The trainer, the simulated Modbus site and the demo read real measurements by slice name. Every slice is
a CSV (optionally gzip-compressed) read by :func:`edge_agent.csvseries.read_csv_series`, the reader the
device's replay source uses: either ``timestamp_utc`` (ISO 8601 with an offset) or ``timestamp`` (a naive
local clock whose fixed UTC offset is recorded in :data:`SLICES`, as documented in data/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.csvseries import read_csv_series
from edge_agent.errors import FeatureError
from gridedge.resources import resource_path

DATA_DIR = resource_path("data")
MST = -7 * 3600


@dataclass(frozen=True)
class SliceInfo:
    """Where a slice lives and how to read its clock."""

    file: str
    site_timezone: str
    # Offset of a naive ``timestamp`` column from UTC, in seconds; None when the file holds true UTC.
    naive_utc_offset_s: int | None = None


SLICES: dict[str, SliceInfo] = {
    # The UCI source clock has no DST jumps; taken as CET standard time all year (data/README.md).
    "w1_load_uci_15min": SliceInfo("w1_load_uci_15min.csv.gz", "Etc/GMT-1", naive_utc_offset_s=3600),
    "w2_pv_system50_15min": SliceInfo("w2_pv_system50_15min.csv.gz", "America/Denver"),
    # No zone in the source; assumed MST (Golden CO in January, no daylight saving then).
    "w3_rsf2_inverter": SliceInfo("w3_rsf2_inverter.csv", "Etc/GMT+7", naive_utc_offset_s=MST),
    "w3_serf_west_inverter": SliceInfo("w3_serf_west_inverter.csv", "Etc/GMT+7", naive_utc_offset_s=MST),
    "w3_inv7539_outliers": SliceInfo("w3_inv7539_outliers.csv", "UTC"),
    "w3_inv2173_stale": SliceInfo("w3_inv2173_stale.csv", "UTC"),
    "w3_inv2173_interpolated": SliceInfo("w3_inv2173_interpolated.csv", "UTC"),
}


def slice_info(name: str) -> SliceInfo:
    """Look a slice up by name (``w1_load_uci_15min``) or file name (``w1_load_uci_15min.csv.gz``)."""
    stem = name.removesuffix(".gz").removesuffix(".csv")
    if stem not in SLICES:
        raise FeatureError(f"unknown data slice {name!r}; choose one of {sorted(SLICES)}")
    return SLICES[stem]


def slice_path(name: str, data_dir: str | Path | None = None) -> Path:
    """The file of slice ``name`` inside ``data_dir`` (default: the shipped ``data/``)."""
    folder = Path(data_dir) if data_dir is not None else DATA_DIR
    path = folder / slice_info(name).file
    if not path.is_file():
        raise FeatureError(
            f"data slice {path} not found; pass data_dir pointing at gridedge's data/ folder "
            "(rebuild it with data/make_slices.py if it was removed)"
        )
    return path


def read_series(
    name: str, data_dir: str | Path | None = None
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float32]]]:
    """Read a shipped slice by name: (UTC epoch seconds int64, {column: float32 values})."""
    info = slice_info(name)
    return read_csv_series(slice_path(name, data_dir), info.naive_utc_offset_s)
