"""Read time-series CSV files (optionally gzip-compressed) with the standard library and numpy only.

The device's replay source reads recordings with it, and the central side reads gridedge's data slices
(the simulator through :mod:`gridedge.datafiles`) through it, so both see identical numbers. A file has one time column,
either ``timestamp_utc`` (ISO 8601 with an offset) or ``timestamp`` (a naive local clock whose fixed UTC
offset the caller declares), and numeric columns. Timestamps come back as UTC epoch seconds, values as
float32 with NaN for empty cells.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import FeatureError


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
            raise FeatureError("naive timestamps need a declared UTC offset; write ISO 8601 times with an offset")
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
            raise FeatureError(f"{path} is empty; expected a header row and samples") from exc
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
