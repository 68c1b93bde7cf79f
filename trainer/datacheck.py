"""``gridedge data check``: what is in the data a task config names, before any training.

The report says what a person can act on: the step and span found, duplicate timestamps, gaps by length,
daylight-saving artefacts of a naive clock, sentinel and out-of-range counts, upstream-filled days, and
how many forecast origins each split keeps and why the others were dropped, in the words training uses
when it refuses. Written as JSON, markdown and a coverage plot (PNG); printed as a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gridedge.trainer import datasets
from gridedge.trainer.config import TaskConfig, duration_seconds
from gridedge.trainer.tasks import PreparedTask, prepare_task

# Upper bounds (seconds) of the gap-length buckets, and their labels.
GAP_BUCKETS = ((3600, "<= 1 h"), (6 * 3600, "1-6 h"), (86_400, "6 h-1 d"), (7 * 86_400, "1-7 d"), (None, "> 7 d"))


def gap_histogram(frame: pd.DataFrame, step_s: int) -> dict[str, int]:
    """Number of gaps (runs of rows with no value in any column) per length bucket."""
    missing = frame.isna().all(axis=1).to_numpy()
    padded = np.concatenate([[0], missing.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    lengths = (edges[1::2] - edges[::2]) * step_s
    counts = dict.fromkeys((label for _, label in GAP_BUCKETS), 0)
    lower = 0
    for upper, label in GAP_BUCKETS:
        inside = lengths > lower if upper is None else (lengths > lower) & (lengths <= upper)
        counts[label] = int(inside.sum())
        lower = upper or lower
    return counts


def check(config: TaskConfig) -> tuple[dict[str, Any], PreparedTask]:
    """The data-quality report of ``config``'s data (a JSON-ready mapping) and the screened task."""
    prepared = prepare_task(config, strict=False)
    loaded = datasets.load(config.data)
    frame, log = loaded.frame, loaded.log
    timezone = config.data.site_timezone
    _, copied_days = datasets.upstream_filled_days(
        frame, timezone, log.step_s, duration_seconds(config.data.upstream_copy_min)
    )
    usable = {name: screen.kept for name, screen in prepared.screens.items()}
    problems = [f"{name} split has no usable origin" for name, kept in usable.items() if kept == 0]
    if prepared.spec.is_forecast and 0 < usable.get("val", 0) < config.protocol.min_val_origins:
        problems.append(f"val split has {usable['val']} usable origins, fewer than protocol.min_val_origins")
    report = {
        "config": config.name,
        "file": log.path,
        "source": config.data.source,
        "licence": config.data.licence,
        "rows_read": log.rows_read,
        "span_utc": [str(frame.index[0]), str(frame.index[-1])] if len(frame) else [],
        "timezone": timezone,
        "detected_step_s": log.detected_step_s,
        "step_s": log.step_s,
        "aggregation": config.data.aggregation if config.data.step else None,
        "duplicates": log.duplicates,
        "dst": {
            "repeated_local_times": log.ambiguous_local,
            "missing_local_times": log.nonexistent_local,
            "dropped": log.dropped_clock,
            "policy": {"ambiguous": config.data.ambiguous, "nonexistent": config.data.nonexistent},
        },
        "missing_values": {str(c): int(n) for c, n in frame.isna().sum().items()},
        "gaps": gap_histogram(frame, log.step_s),
        "sentinels": log.sentinels,
        "out_of_range": log.out_of_range,
        "channel_out_of_range": prepared.channel_out_of_range,
        "night_filled": log.night_filled,
        "upstream_filled_days": copied_days,
        "upstream_filled_excluded": config.data.exclude_upstream_filled,
        "origins": {
            name: {"when": s.when, "candidates": s.candidates, "usable": s.kept, "dropped": s.dropped}
            for name, s in prepared.screens.items()
        },
        "problems": problems,
    }
    return report, prepared


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report as (what, finding) rows, shared by the table and the markdown."""

    def counts(mapping: dict[str, int]) -> str:
        shown = [f"{k} {v}" for k, v in mapping.items() if v]
        return ", ".join(shown) or "none"

    dst = report["dst"]
    out: list[tuple[str, str]] = [
        ("file", report["file"]),
        ("source / licence", f"{report['source'] or '-'} / {report['licence'] or '-'}"),
        ("rows read", str(report["rows_read"])),
        ("span (UTC)", " -> ".join(report["span_utc"])),
        (
            "step",
            f"detected {report['detected_step_s']} s, used {report['step_s']} s"
            + (f" ({report['aggregation']})" if report["aggregation"] else ""),
        ),
        ("duplicate timestamps", f"{report['duplicates']} (first kept)"),
        (
            "DST artefacts",
            f"{dst['repeated_local_times']} repeated local times, {dst['missing_local_times']} "
            f"missing local times, {dst['dropped']} dropped (ambiguous: {dst['policy']['ambiguous']}, "
            f"nonexistent: {dst['policy']['nonexistent']})",
        ),
        ("gaps by length", counts(report["gaps"])),
        ("missing values", counts(report["missing_values"])),
        ("sentinels", counts(report["sentinels"])),
        ("out of range", counts(report["out_of_range"])),
        ("channel out of range", counts(report["channel_out_of_range"])),
        ("night filled with 0", counts(report["night_filled"])),
        (
            "upstream-filled days",
            f"{len(report['upstream_filled_days'])}"
            + (f": {', '.join(report['upstream_filled_days'][:8])}" if report["upstream_filled_days"] else "")
            + (" (excluded from targets)" if report["upstream_filled_excluded"] else " (kept)"),
        ),
    ]
    for name, o in report["origins"].items():
        out.append((f"{name} origins", f"{o['usable']} of {o['candidates']} usable ({o['when']}); dropped: "
                                       f"{counts(o['dropped'])}"))  # fmt: skip
    out.append(("verdict", "; ".join(report["problems"]) or "ready to train"))
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Data check: {report['config']}", "", "| what | finding |", "|---|---|"]
    lines += [f"| {what} | {finding.replace('|', '/')} |" for what, finding in rows(report)]
    return "\n".join(lines) + "\n"


def plot_coverage(prepared: PreparedTask, path: Path) -> Path:
    """A PNG: share of present samples per local day and channel, with the split boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = prepared.series
    names = [c.name for c in prepared.spec.past_channels]
    day = pd.DatetimeIndex(pd.to_datetime(series.timestamps, unit="s", utc=True)).tz_convert(prepared.spec.timezone)
    present = pd.DataFrame(np.isfinite(series.past), columns=names, index=day.normalize())
    if series.upstream_filled.any():
        present["upstream-filled"] = ~series.upstream_filled
    share = present.groupby(level=0).mean()
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.35 * len(share.columns)))
    ax.imshow(share.T.to_numpy(dtype=float), aspect="auto", cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(share.columns)), list(share.columns))
    ticks = np.linspace(0, len(share) - 1, num=min(8, len(share)), dtype=int)
    ax.set_xticks(ticks, [share.index[i].strftime("%Y-%m-%d") for i in ticks])
    for name, (start, _) in series.split_rows.items():
        if name != "train" and start < len(day):
            x = int(np.searchsorted(share.index, day[start].normalize()))
            ax.axvline(x - 0.5, color="black", linewidth=1.5)
            ax.text(x, -0.45, f" {name}", fontsize=8, color="white", va="top")
    ax.set_title("share of samples present per local day (green = complete)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(report: dict[str, Any], prepared: PreparedTask, out_dir: Path) -> dict[str, Path]:
    """Write data_check.json, data_check.md and coverage.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "data_check.json", "markdown": out_dir / "data_check.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(markdown(report))
    paths["plot"] = plot_coverage(prepared, out_dir / "coverage.png")
    return paths
