"""The human-readable side of a run: report.md and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gridedge.trainer.tasks import PreparedTask

FORECAST_DAYS_PLOTTED = 4


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """A short markdown summary: headline metric next to every baseline."""
    lines = [
        f"# {report['name']} — {report['task']} ({report['framework']})",
        "",
        f"- protocol: {report['protocol']}",
        f"- seed {report['seed']}, {report['n_params']:,} parameters, trained {report['train_seconds']:.1f} s: "
        f"{report['training_summary']}",
        f"- samples: train {report['samples']['train']}, val {report['samples']['val']}, "
        f"test {report['samples']['test']}",
        f"- data: `{report['data']['path']}` sha256 `{report['data']['fingerprint_sha256'][:16]}…`"
        + "".join(f"; {key} {report['data'][key]}" for key in ("source", "licence") if report["data"].get(key)),
        *(f"- {name} origins: {text}" for name, text in report["data"].get("origins", {}).items()),
        "",
    ]
    test = report["metrics"]["test"]
    if "mae" in test:
        lines += ["| model | test MAE | test RMSE | model's MAE relative to it |", "|---|---|---|---|"]
        lines.append(f"| **{report['framework']} model** | {_fmt(test['mae'])} | {_fmt(test['rmse'])} | — |")
        for name, result in report["baselines"].items():
            base = result["test"]
            relative = test["mae"] / base["mae"] - 1 if base["mae"] else float("nan")
            lines.append(f"| {name} | {_fmt(base['mae'])} | {_fmt(base['rmse'])} | {relative:+.1%} |")
        lines += _quantile_lines(test.get("quantiles"))
        rolling = report["metrics"].get("test_rolling")
        if rolling is not None:
            lines += [
                "",
                f"Rolling intraday origins ({report['samples']['test_rolling']} test origins):",
                "",
                "| model | MAE | RMSE | model's MAE relative to it |",
                "|---|---|---|---|",
                f"| **{report['framework']} model** | {_fmt(rolling['mae'])} | {_fmt(rolling['rmse'])} | — |",
            ]
            for name, result in report["baselines"].items():
                base = result["test_rolling"]
                relative = rolling["mae"] / base["mae"] - 1 if base["mae"] else float("nan")
                lines.append(f"| {name} | {_fmt(base['mae'])} | {_fmt(base['rmse'])} | {relative:+.1%} |")
    else:
        lines += ["| detector | F1 (mean) | precision | recall | pooled F1 |", "|---|---|---|---|---|"]
        alone = report["metrics"].get("test_model_only")
        combined = alone is not None and alone != test
        label = "autoencoder + stale rule (shipped detector)" if combined else "autoencoder"
        rows = [(f"**{report['framework']} {label}**", test)]
        if combined:
            rows.append((f"{report['framework']} autoencoder alone", alone))
        rows += [(name, result["test"]) for name, result in report["baselines"].items()]
        for name, m in rows:
            lines.append(
                f"| {name} | {_fmt(m['f1'])} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | "
                f"{_fmt(m['pooled']['f1'])} |"
            )
        lines += ["", "Per labelled series (shipped detector): "]
        for series, m in test["per_series"].items():
            lines.append(
                f"- `{series}`: F1 {_fmt(m['f1'])}, precision {_fmt(m['precision'])}, "
                f"recall {_fmt(m['recall'])} (tp {m['tp']}, fp {m['fp']}, fn {m['fn']})"
            )
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def quantile_versions(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The raw and the recalibrated levels' metrics, raw first, the shipped one labelled so."""
    versions = sorted([metrics, metrics["other"]], key=lambda m: bool(m["recalibrated"]))
    return [
        (("recalibrated" if m["recalibrated"] else "raw model") + (" (shipped)" if m is metrics else ""), m)
        for m in versions
    ]


def _quantile_lines(metrics: dict[str, Any] | None) -> list[str]:
    """Calibration on the test split: coverage and pinball loss per level, the outermost interval;
    before and after recalibration when there was one."""
    if metrics is None:
        return []
    versions = quantile_versions(metrics)
    interval = metrics["interval"]
    span = f"P{interval['lower'] * 100:g}–P{interval['upper'] * 100:g}"
    levels = metrics["levels"]
    lines = [
        "",
        "Quantile calibration on the test split (coverage = share of actual values at or below the level):",
        "",
        "| quantiles | " + " | ".join(f"P{q * 100:g} coverage" for q in levels)
        + f" | {span} coverage (nominal {interval['nominal']:.0%}) | mean {span} width | mean pinball |",
        "|---" * (len(levels) + 4) + "|",
    ]
    for label, m in versions:
        lines.append(
            f"| {label} | "
            + " | ".join(f"{c:.1%}" for c in m["coverage"])
            + f" | {m['interval']['coverage']:.1%} | {_fmt(m['interval']['mean_width'])} | {_fmt(m['pinball_mean'])} |"
        )
    return lines


def plot(prepared: PreparedTask, data: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the task's PNG plots into ``out_dir`` and return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []
    if prepared.spec.is_forecast:
        test = prepared.test
        predicted = data["predictions"]["test"]
        unit = prepared.output_spec["target_units"][0]
        target = prepared.spec.target_channels[0]
        picks = np.linspace(0, len(test) - 1, min(FORECAST_DAYS_PLOTTED, len(test))).astype(int)
        fig, axes = plt.subplots(len(picks), 1, figsize=(9, 2.2 * len(picks)), squeeze=False)
        for ax, i in zip(axes[:, 0], picks, strict=True):
            start = np.datetime64(int(test.origin_times[i]), "s")
            ax.plot(test.targets[i, :, 0], label="actual", color="black")
            ax.plot(predicted[i, :, 0], label="forecast", color="tab:blue")
            ax.set_title(f"origin {start} UTC", fontsize=9)
            ax.set_ylabel(unit)
        axes[0, 0].legend(loc="upper right")
        axes[-1, 0].set_xlabel("horizon step")
        fig.suptitle(f"{target}: forecast vs actual (test days)")
        fig.tight_layout()
        fig.savefig(out_dir / "forecast_vs_actual.png", dpi=90)
        plt.close(fig)
        files.append("forecast_vs_actual.png")

        error = np.abs(predicted - test.targets).mean(axis=(0, 2))
        fig, ax = plt.subplots(figsize=(8, 3.2))
        ax.plot(np.arange(1, len(error) + 1), error, label="model")
        ax.set_xlabel("horizon step")
        ax.set_ylabel(f"MAE ({unit})")
        ax.set_title("test error by horizon step")
        fig.tight_layout()
        fig.savefig(out_dir / "error_by_horizon.png", dpi=90)
        plt.close(fig)
        files.append("error_by_horizon.png")
        if "test_quantiles" in data["predictions"]:
            files += _plot_quantiles(prepared, data, out_dir, picks, unit)
        return files

    threshold = data["threshold"]
    items = prepared.labelled
    fig, axes = plt.subplots(len(items), 1, figsize=(10, 2.8 * len(items)), squeeze=False)
    for ax, item in zip(axes[:, 0], items, strict=True):
        scores = data["scores"][item.name]
        x = np.arange(len(item.values))
        ax.plot(x, scores, color="tab:blue", lw=0.8, label="score")
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label="threshold")
        labelled = np.flatnonzero(item.labels)
        ax.scatter(labelled, np.full(len(labelled), threshold), color="tab:orange", s=8, label="labelled", zorder=3)
        flagged = np.flatnonzero(data["detector_flags"][item.name])
        ax.scatter(flagged, np.full(len(flagged), threshold * 0.5), color="tab:red", s=6, marker="|", label="flagged")
        twin = ax.twinx()
        twin.plot(x, item.values, color="grey", lw=0.5, alpha=0.6)
        twin.set_ylabel("value")
        ax.set_yscale("symlog", linthresh=max(threshold, 1e-3))
        ax.set_title(item.name, fontsize=9)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "anomaly_scores.png", dpi=90)
    plt.close(fig)
    files.append("anomaly_scores.png")
    return files


def _plot_quantiles(
    prepared: PreparedTask, data: dict[str, Any], out_dir: Path, picks: np.ndarray, unit: str
) -> list[str]:
    """A forecast fan on test days, and coverage of each level and of the outermost interval."""
    import matplotlib.pyplot as plt

    test = prepared.test
    bands = data["predictions"]["test_quantiles"]  # (N, Q, H, T)
    metrics = data["metrics"]["test"]["quantiles"]
    levels = metrics["levels"]
    fig, axes = plt.subplots(len(picks), 1, figsize=(9, 2.2 * len(picks)), squeeze=False)
    steps = np.arange(bands.shape[2])
    for ax, i in zip(axes[:, 0], picks, strict=True):
        for q in range(len(levels) // 2):
            ax.fill_between(
                steps, bands[i, q, :, 0], bands[i, -1 - q, :, 0], color="tab:blue", alpha=0.15 + 0.15 * q,
                lw=0, label=f"P{levels[q] * 100:g}–P{levels[-1 - q] * 100:g}",
            )
        ax.plot(test.targets[i, :, 0], color="black", lw=1, label="actual")
        ax.plot(data["predictions"]["test"][i, :, 0], color="tab:blue", lw=1, label="median")
        ax.set_title(f"origin {np.datetime64(int(test.origin_times[i]), 's')} UTC", fontsize=9)
        ax.set_ylabel(unit)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("horizon step")
    fig.suptitle(f"{prepared.spec.target_channels[0]}: forecast fan (test days)")
    fig.tight_layout()
    fig.savefig(out_dir / "quantile_fan.png", dpi=90)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="nominal")
    for label, m in quantile_versions(metrics):
        left.plot(levels, m["coverage"], marker="o", label=label)
        right.plot(np.arange(1, len(steps) + 1), m["interval"]["coverage_by_step"], label=label)
    left.set_xlabel("quantile level")
    left.set_ylabel("test coverage")
    left.legend(fontsize=8)
    interval = metrics["interval"]
    right.axhline(interval["nominal"], color="grey", ls="--", lw=1, label="nominal")
    right.set_xlabel("horizon step")
    right.set_ylabel(f"P{interval['lower'] * 100:g}–P{interval['upper'] * 100:g} coverage")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    fig.suptitle("quantile calibration on the test split")
    fig.tight_layout()
    fig.savefig(out_dir / "quantile_coverage.png", dpi=90)
    plt.close(fig)
    return ["quantile_fan.png", "quantile_coverage.png"]
