"""Export report: the parity/size/latency table as JSON, markdown and a PNG plot.

Changes of the task metric against the float model are signed like the metric itself (artefact minus
float, relative) and always say whether that is better or worse, because "+" means worse for MAE and
better for F1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_agent.bundle import Manifest
from edge_agent.errors import BundleError
from edge_agent.fsutil import atomic_write_text
from edge_agent.runtimes.targets import choose_artefact
from gridedge.export.evaluate import primary_metric
from gridedge.export.pipeline import ExportResult
from gridedge.trainer.quantiles import level_label

# Relative changes smaller than this print as 0.00 % and are neither better nor worse.
SAME = 5e-5


def relative_change(value: float, reference: float) -> float:
    """(value - reference) / |reference|: the sign follows the metric, whichever way is better."""
    return (value - reference) / max(abs(reference), 1e-12)


def describe_change(change: float, higher_is_better: bool) -> str:
    """``+0.50 % (worse)`` for an MAE half a percent above the float model's; ``(better)``/``(same)`` likewise."""
    if abs(change) < SAME:
        return "+0.00 % (same)"
    better = (change > 0) == higher_is_better
    return f"{100 * change:+.2f} % ({'better' if better else 'worse'})"


# The current runtime of each artefact kind: the one the device's default pick is shown for.
DEVICE_TARGETS = {"tflite": "litert", "onnx": "ort"}


def served_artefacts(manifest: Manifest) -> dict[str, str]:
    """Per artefact kind (tflite, onnx), the file a device with that runtime loads by default.

    The device's own rule (:func:`~edge_agent.runtimes.targets.choose_artefact`): the served family, then
    precision. A kind the served family has no artefact of is left out (such a device refuses the bundle).
    """
    served: dict[str, str] = {}
    for kind in dict.fromkeys(a.runtime for a in manifest.artefacts):
        try:
            served[kind] = choose_artefact(manifest, kind, DEVICE_TARGETS[kind]).file
        except BundleError:
            continue
    return served


def report_rows(result: ExportResult) -> list[dict[str, Any]]:
    """One row per artefact: size (and ratio to the float32 file of its runtime), metric, latency, targets."""
    fp32_size = {
        a.runtime: a.bytes for a in result.manifest.artefacts if a.precision == "fp32" and a.family == "network"
    }
    served = set(served_artefacts(result.manifest).values())
    rows = []
    for artefact in result.manifest.artefacts:
        reference = fp32_size.get(artefact.runtime) if artefact.family == "network" else None
        rows.append(
            {
                "file": artefact.file,
                "family": artefact.family,
                "served": artefact.file in served,
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


SEASONAL_NAIVE = ("baseline:seasonal_naive_day", "baseline:seasonal_naive_week")


def skill_summary(result: ExportResult) -> dict[str, Any] | None:
    """Forecast skill, 1 − MAE / best seasonal-naive MAE, of the float model, each artefact and LightGBM.

    All on the same test windows (the trainer scored the baselines on them); None for anomaly models or
    a run without seasonal-naive baselines.
    """
    metrics = result.manifest.metrics
    naive = [metrics[name]["mae"] for name in SEASONAL_NAIVE if "mae" in metrics.get(name, {})]
    if result.manifest.output.anomaly is not None or not naive:
        return None
    reference = min(naive)

    def skill(mae: float) -> float:
        return 1.0 - mae / reference

    lightgbm = metrics.get("baseline:lightgbm", {}).get("mae")
    return {
        "definition": "1 - MAE / MAE of the better seasonal naive (yesterday or last week), same test windows",
        "best_seasonal_naive_mae": reference,
        "float": skill(result.float_metrics["mae"]),
        "lightgbm": None if lightgbm is None else skill(lightgbm),
        "artefacts": {a.file: skill(a.metrics["mae"]) for a in result.manifest.artefacts},
        "served": {
            kind: {"file": file, "skill": skill(result.manifest.artefact(file).metrics["mae"])}
            for kind, file in served_artefacts(result.manifest).items()
        },
        "serving": None if result.manifest.serving is None else result.manifest.serving.model_dump(mode="json"),
    }


def _skill_lines(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        return []
    lightgbm = summary["lightgbm"]
    lines = [
        "",
        f"Skill, {summary['definition']} (best seasonal-naive MAE {summary['best_seasonal_naive_mae']:.4g}): "
        f"float model {summary['float']:.3f}" + ("" if lightgbm is None else f", LightGBM {lightgbm:.3f}") + ".",
        "",
        "| artefact | skill | vs LightGBM |",
        "|---|---:|---|",
    ]
    served = {entry["file"]: kind for kind, entry in summary["served"].items()}
    for file, value in summary["artefacts"].items():
        verdict = "—" if lightgbm is None else ("at least as good" if value >= lightgbm else "worse")
        mark = f" (served on {served[file]} devices)" if file in served else ""
        lines.append(f"| {file}{mark} | {value:.3f} | {verdict} |")
    serving = summary["serving"]
    if serving is not None:
        scores = ", ".join(f"{family} {value:.4g}" for family, value in serving["scores"].items())
        weight = serving.get("network_weight")
        family = serving["family"] if weight is None else f"blend w={weight:g} (w·network + (1−w)·lightgbm)"
        lines += [
            "",
            f"Served family: {family}, chosen on the {serving['split']} split ({serving['metric']}: "
            f"{scores}); the test split above only reports.",
        ]
    return lines


def write_report(result: ExportResult, out_prefix: Path) -> dict[str, Path]:
    """Write ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png``; returns their paths."""
    manifest = result.manifest
    metric, higher_is_better = primary_metric(manifest.output)
    rows = report_rows(result)
    float_value = result.float_metrics[metric]
    skill = skill_summary(result)
    for row in rows:
        row[f"{metric}_change_vs_float"] = relative_change(row["metrics"][metric], float_value)
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
        "source": result.origin,
        "skill": skill,
    }
    paths = {
        "json": out_prefix.with_suffix(".json"),
        "md": out_prefix.with_suffix(".md"),
        "png": out_prefix.with_suffix(".png"),
    }
    atomic_write_text(paths["json"], json.dumps(payload, indent=1) + "\n")

    lines = [
        f"# Export report: {manifest.name} {manifest.version} ({manifest.task}, {manifest.source_framework})",
        "",
        *([f"Trained in: {result.origin}.", ""] if result.origin else []),
        f"Float model test {metric}: {float_value:.4g} ({'higher' if higher_is_better else 'lower'} is better); "
        f"each artefact's {metric} change vs float is (artefact − float) / float.",
        "",
        f"| artefact | precision | KiB | size vs fp32 | {metric} | {metric} change vs float | max abs err | "
        "p50 µs | p99 µs | targets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        m = row["metrics"]
        ratio = f"{100 * row['size_vs_fp32']:.1f} %" if row["size_vs_fp32"] else "—"
        lines.append(
            f"| {row['file']} | {row['precision']} | {row['bytes'] / 1024:.1f} | {ratio} | {m[metric]:.4g} | "
            f"{describe_change(row[f'{metric}_change_vs_float'], higher_is_better)} | {m['max_abs_error']:.3g} | "
            f"{row['p50_us']:.1f} | {row['p99_us']:.1f} | {', '.join(row['targets'])} |"
        )
    lines += _skill_lines(skill)
    lines += _onnx_int8_comparison(rows, metric, higher_is_better)
    lines += _quantile_table(rows, manifest.output.quantiles, result.float_metrics)
    if result.target_notes:
        lines += ["", "Notes (quantisation scheme, targets):", *[f"- {note}" for note in result.target_notes]]
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    _plot(rows, metric, higher_is_better, float_value, paths["png"])
    return paths


def _quantile_table(
    rows: list[dict[str, Any]], levels: tuple[float, ...], float_metrics: dict[str, float]
) -> list[str]:
    """Every quantile level of every artefact next to the float model: the parity gate's view of them."""
    if not levels:
        return []
    labels = [level_label(level) for level in levels]
    header = " | ".join(f"{label.upper()} pinball (change) | {label.upper()} coverage" for label in labels)
    lines = ["", "Quantile outputs on the test split (each level gated like the point forecast):", "",
             f"| artefact | {header} | interval coverage | interval width |",
             "|---" * (3 + 2 * len(labels)) + "|"]  # fmt: skip
    float_row = {"file": "float model", "metrics": float_metrics}
    for row in [float_row, *rows]:
        m = row["metrics"]
        cells = []
        for label in labels:
            change = m.get(f"pinball_{label}_degradation")
            shown = "" if change is None else f" ({describe_change(change, higher_is_better=False)})"
            cells.append(f"{m[f'pinball_{label}']:.4g}{shown} | {m[f'coverage_{label}']:.1%}")
        lines.append(
            f"| {row['file']} | {' | '.join(cells)} | {m['interval_coverage']:.1%} | {m['interval_width']:.4g} |"
        )
    return lines


def _onnx_int8_comparison(rows: list[dict[str, Any]], metric: str, higher_is_better: bool) -> list[str]:
    """Static vs dynamic int8 ONNX next to fp32, when both were written: the numbers behind the choice."""
    onnx = {r["precision"]: r for r in rows if r["runtime"] == "onnx" and r["family"] == "network"}
    if not {"fp32", "int8", "dynamic-int8"} <= set(onnx):
        return []
    fp32, static, dynamic = onnx["fp32"], onnx["int8"], onnx["dynamic-int8"]
    lines = ["", "ONNX int8, static QDQ vs dynamic (batch 1, this machine):"]
    for label, row in (("static QDQ", static), ("dynamic", dynamic)):
        lines.append(
            f"- {label}: {100 * row['size_vs_fp32']:.1f} % of fp32, p50 {row['p50_us']:.1f} µs "
            f"({row['p50_us'] / fp32['p50_us']:.2f}x fp32), {metric} "
            f"{describe_change(row[f'{metric}_change_vs_float'], higher_is_better)} vs float"
        )
    return lines


def _plot(rows: list[dict[str, Any]], metric: str, higher_is_better: bool, float_value: float, path: Path) -> None:
    """Size, latency and the metric's change vs float per artefact.

    Quantised artefacts differ from the float model by fractions of a percent, invisible on an axis from
    zero; the third panel plots the relative change around zero instead, each bar annotated with its value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["file"].split(".", 1)[1] for r in rows]
    colours = ["#4C72B0" if "tflite" in label else "#DD8452" for label in labels]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (title, values) in zip(
        axes[:2],
        [("size (KiB)", [r["bytes"] / 1024 for r in rows]), ("latency p50 (µs, batch 1)", [r["p50_us"] for r in rows])],
        strict=True,
    ):
        ax.bar(labels, values, color=colours)
        ax.set_title(title)
    changes = [100 * r[f"{metric}_change_vs_float"] for r in rows]
    worse = [(c > 0) != higher_is_better and abs(c) >= 100 * SAME for c in changes]
    ax = axes[2]
    bars = ax.bar(labels, changes, color=["#C44E52" if w else "#55A868" for w in worse])
    ax.axhline(0, color="black", linewidth=0.8)
    span = max([abs(c) for c in changes] + [0.01])
    ax.set_ylim(-1.35 * span, 1.35 * span)
    for bar, change, row in zip(bars, changes, rows, strict=True):
        ax.annotate(
            f"{describe_change(change / 100, higher_is_better).split(' (')[0]}\n{row['metrics'][metric]:.4g}",
            (bar.get_x() + bar.get_width() / 2, change),
            xytext=(0, 3 if change >= 0 else -3),
            textcoords="offset points",
            ha="center",
            va="bottom" if change >= 0 else "top",
            fontsize=8,
        )
    direction = "+ = better" if higher_is_better else "+ = worse"
    ax.set_title(f"test {metric} change vs float ({float_value:.4g}), % ({direction})")
    ax.set_ylabel("%")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
