"""Read gridedge's shipped data slices (``data/``) with the standard library and numpy only.

The device-side replay source and the simulated Modbus site replay real measurements without pandas.
Every slice is a CSV (optionally gzip-compressed) with one time column and numeric columns: either
``timestamp_utc`` (ISO 8601 with an offset) or ``timestamp`` (a naive local clock whose fixed UTC offset
is recorded in :data:`SLICES`, as documented in data/README.md). Timestamps come back as UTC epoch
seconds, values as float32 with NaN for empty cells.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import FeatureError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
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
    """The file of slice ``name`` inside ``data_dir`` (default: the repository's ``data/``)."""
    folder = Path(data_dir) if data_dir is not None else DATA_DIR
    path = folder / slice_info(name).file
    if not path.is_file():
        raise FeatureError(
            f"data slice {path} not found; pass data_dir pointing at gridedge's data/ folder "
            "(rebuild it with data/make_slices.py if it was removed)"
        )
    return path


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def parse_timestamps(texts: list[str], naive_utc_offset_s: int | None) -> NDArray[np.int64]:
    """ISO timestamps to UTC epoch seconds; naive ones are shifted by their declared offset."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    clock = np.array([t[:19] for t in texts], dtype="datetime64[s]").astype(np.int64)
    suffixes = {t[19:] for t in texts}
    if suffixes == {""}:
        if naive_utc_offset_s is None:
            raise FeatureError("naive timestamps need a declared UTC offset; add it to SLICES")
        return clock - naive_utc_offset_s
    offsets = np.array([_offset_seconds(t[19:]) for t in texts], dtype=np.int64)
    return clock - offsets


def _offset_seconds(suffix: str) -> int:
    if suffix in ("Z", "+00:00"):
        return 0
    if len(suffix) != 6 or suffix[0] not in "+-" or suffix[3] != ":":
        raise FeatureError(f"cannot read the UTC offset {suffix!r}; write timestamps as ISO 8601")
    sign = 1 if suffix[0] == "+" else -1
    return sign * (int(suffix[1:3]) * 3600 + int(suffix[4:6]) * 60)


def read_csv_series(
    path: str | Path, naive_utc_offset_s: int | None = None
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float32]]]:
    """Read one slice file: (UTC epoch seconds int64, {column: float32 values}) in file order."""
    path = Path(path)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration as exc:
            raise FeatureError(f"{path} is empty; rebuild it with data/make_slices.py") from exc
        if not header or header[0] not in ("timestamp_utc", "timestamp"):
            raise FeatureError(f"{path}: first column must be 'timestamp_utc' or 'timestamp', found {header[:1]}")
        rows = list(reader)
    times = parse_timestamps([row[0] for row in rows], naive_utc_offset_s)
    columns: dict[str, NDArray[np.float32]] = {}
    for i, name in enumerate(header[1:], start=1):
        try:
            columns[name] = np.array([row[i] if row[i] else "nan" for row in rows], dtype=np.float32)
        except ValueError as exc:
            raise FeatureError(f"{path}: column {name!r} holds a non-numeric value ({exc})") from exc
    return times, columns


def read_series(
    name: str, data_dir: str | Path | None = None
) -> tuple[NDArray[np.int64], dict[str, NDArray[np.float32]]]:
    """Read a shipped slice by name: (UTC epoch seconds int64, {column: float32 values})."""
    info = slice_info(name)
    return read_csv_series(slice_path(name, data_dir), info.naive_utc_offset_s)
