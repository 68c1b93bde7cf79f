"""Export report: the parity/size/latency table as JSON, markdown and a PNG bar plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_text
from gridedge.export.evaluate import primary_metric
from gridedge.export.pipeline import ExportResult


def report_rows(result: ExportResult) -> list[dict[str, Any]]:
    """One row per artefact: size (and ratio to the float32 file of its runtime), metric, latency, targets."""
    fp32_size = {a.runtime: a.bytes for a in result.manifest.artefacts if a.precision == "fp32"}
    rows = []
    for artefact in result.manifest.artefacts:
        reference = fp32_size.get(artefact.runtime)
        rows.append(
            {
                "file": artefact.file,
                "runtime": artefact.runtime,
                "precision": artefact.precision,
                "bytes": artefact.bytes,
                "size_vs_fp32": artefact.bytes / reference if reference else None,
                "metrics": artefact.metrics,
                "p50_us": artefact.latency.p50_us if artefact.latency else None,
                "p99_us": artefact.latency.p99_us if artefact.latency else None,
                "targets": list(artefact.compatibility_targets),
                "runtime_versions": artefact.min_runtime_versions,
                "self_test_atol": artefact.self_test_atol,
            }
        )
    return rows


def write_report(result: ExportResult, out_prefix: Path) -> dict[str, Path]:
    """Write ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png``; returns their paths."""
    manifest = result.manifest
    metric, higher_is_better = primary_metric(manifest.output)
    rows = report_rows(result)
    payload = {
        "name": manifest.name,
        "version": manifest.version,
        "task": manifest.task,
        "source_framework": manifest.source_framework,
        "metric": metric,
        "float_metrics": result.float_metrics,
        "reference_metrics": manifest.metrics,
        "artefacts": rows,
        "target_notes": result.target_notes,
    }
    paths = {"json": out_prefix.with_suffix(".json"), "md": out_prefix.with_suffix(".md"),
             "png": out_prefix.with_suffix(".png")}
    atomic_write_text(paths["json"], json.dumps(payload, indent=1) + "\n")

    lines = [
        f"# Export report: {manifest.name} {manifest.version} ({manifest.task}, {manifest.source_framework})",
        "",
        f"Float model test {metric}: {result.float_metrics[metric]:.4g} "
        f"({'higher' if higher_is_better else 'lower'} is better).",
        "",
        f"| artefact | precision | KiB | size vs fp32 | {metric} | {metric} vs float | max abs err | "
        "p50 µs | p99 µs | targets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        m = row["metrics"]
        ratio = f"{100 * row['size_vs_fp32']:.1f} %" if row["size_vs_fp32"] else "—"
        lines.append(
            f"| {row['file']} | {row['precision']} | {row['bytes'] / 1024:.1f} | {ratio} | {m[metric]:.4g} | "
            f"{-100 * m[f'{metric}_degradation']:+.2f} % | {m['max_abs_error']:.3g} | "
            f"{row['p50_us']:.1f} | {row['p99_us']:.1f} | {', '.join(row['targets'])} |"
        )
    lines += _onnx_int8_comparison(rows, metric)
    if result.target_notes:
        lines += ["", "Notes (quantisation scheme, targets):", *[f"- {note}" for note in result.target_notes]]
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    _plot(rows, metric, paths["png"])
    return paths


def _onnx_int8_comparison(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """Static vs dynamic int8 ONNX next to fp32, when both were written: the numbers behind the choice."""
    onnx = {r["precision"]: r for r in rows if r["runtime"] == "onnx"}
    if not {"fp32", "int8", "dynamic-int8"} <= set(onnx):
        return []
    fp32, static, dynamic = onnx["fp32"], onnx["int8"], onnx["dynamic-int8"]
    lines = ["", "ONNX int8, static QDQ vs dynamic (batch 1, this machine):"]
    for label, row in (("static QDQ", static), ("dynamic", dynamic)):
        lines.append(
            f"- {label}: {100 * row['size_vs_fp32']:.1f} % of fp32, p50 {row['p50_us']:.1f} µs "
            f"({row['p50_us'] / fp32['p50_us']:.2f}x fp32), {metric} "
            f"{-100 * row['metrics'][f'{metric}_degradation']:+.2f} % vs float"
        )
    return lines


def _plot(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["file"].split(".", 1)[1] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [
        ("size (KiB)", [r["bytes"] / 1024 for r in rows]),
        ("latency p50 (µs, batch 1)", [r["p50_us"] for r in rows]),
        (f"test {metric}", [r["metrics"][metric] for r in rows]),
    ]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(labels, values, color=["#4C72B0" if "tflite" in lab else "#DD8452" for lab in labels])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
