"""The shipped series the simulated site, the demo and the device-side tests replay, read without pandas.

Only file names and clocks, in one place: what a series means (units, ranges, provenance, licence) is
declared by the task configs that train on it (``configs/*.yaml``, ``data:`` section) and by
data/README.md. Files are read by :func:`edge_agent.csvseries.read_csv_series`, the reader the device's
replay source uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.csvseries import read_csv_series
from edge_agent.errors import FeatureError
from gridedge.resources import resource_path

DATA_DIR = resource_path("data")
MST = -7 * 3600

# Series name -> (file in data/, UTC offset of its naive ``timestamp`` clock in seconds, None for true UTC).
SHIPPED_SERIES: dict[str, tuple[str, int | None]] = {
    # The UCI source clock has no DST jumps; taken as CET standard time all year (data/README.md).
    "w1_load_uci_15min": ("w1_load_uci_15min.csv.gz", 3600),
    "w2_pv_system50_15min": ("w2_pv_system50_15min.csv.gz", None),
    # No zone in the source; assumed MST (Golden CO in January, no daylight saving then).
    "w3_rsf2_inverter": ("w3_rsf2_inverter.csv", MST),
    "w3_serf_west_inverter": ("w3_serf_west_inverter.csv", MST),
    "w3_inv7539_outliers": ("w3_inv7539_outliers.csv", None),
    "w3_inv2173_stale": ("w3_inv2173_stale.csv", None),
    "w3_inv2173_interpolated": ("w3_inv2173_interpolated.csv", None),
}
# The columns of the UCI household load slice, in file order (data/make_slices.py writes them).
UCI_LOAD_COLUMNS = (
    "Global_active_power",
    "Global_reactive_power",
    "Voltage",
    "Global_intensity",
    "Sub_metering_1",
    "Sub_metering_2",
    "Sub_metering_3",
)


def series_path(name: str, data_dir: str | Path | None = None) -> Path:
    """The file of shipped series ``name`` (``w1_load_uci_15min`` or its file name) in ``data_dir``."""
    stem = name.removesuffix(".gz").removesuffix(".csv")
    if stem not in SHIPPED_SERIES:
        raise FeatureError(f"unknown shipped series {name!r}; choose one of {sorted(SHIPPED_SERIES)}")
    path = (Path(data_dir) if data_dir is not None else DATA_DIR) / SHIPPED_SERIES[stem][0]
    if not path.is_file():
        raise FeatureError(
            f"data file {path} not found; pass data_dir pointing at gridedge's data/ folder "
            "(rebuild it with data/make_slices.py if it was removed)"
        )
    return path


def read_series(
    name: str, data_dir: str | Path | None = None
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float32]]]:
    """Read a shipped series by name: (UTC epoch seconds int64, {column: float32 values})."""
    path = series_path(name, data_dir)
    return read_csv_series(path, SHIPPED_SERIES[path.name.removesuffix(".gz").removesuffix(".csv")][1])
