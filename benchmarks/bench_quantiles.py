"""Quantile calibration of the reference workloads: W1 and W2 trained with P10/P50/P90, test-split coverage.

Trains ``configs/w1_load.yaml`` and ``configs/w2_pv.yaml`` with ``model.quantiles: [0.1, 0.5, 0.9]`` (the
shipped settings otherwise; ``--epochs`` caps training on a busy machine) and reports, on the test split,
the coverage of each level and of the P10–P90 interval, its mean width and the pinball loss, before and
after the validation recalibration, next to the median's MAE and LightGBM's. ``--reuse`` evaluates run
folders trained earlier into ``--runs`` with the current code instead of training again. The calibration
plots of each run are copied next to the results.

    python benchmarks/bench_quantiles.py --frameworks torch keras --runs runs/quantiles
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from benchreport import RESULTS, markdown_table, publish

from gridedge.trainer.config import load_config
from gridedge.trainer.training import train

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = {"w1": REPO / "configs" / "w1_load.yaml", "w2": REPO / "configs" / "w2_pv.yaml"}
LEVELS = [0.1, 0.5, 0.9]
PLOTS = ("quantile_coverage.png", "quantile_fan.png")


def _train(config_path: Path, framework: str, out: Path, epochs: int | None) -> None:
    config = load_config(config_path)
    updates: dict[str, Any] = {"model": config.model.model_copy(update={"quantiles": config.model.quantiles or LEVELS})}
    if epochs is not None:
        updates["training"] = config.training.model_copy(update={"epochs": epochs})
    train(config.model_copy(update=updates), framework, out)  # type: ignore[arg-type]


def _evaluate(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's report and its test metrics, recomputed from the saved model with the current code (raw
    and recalibrated levels alike)."""
    from edge_agent.bundle import OutputSpec
    from gridedge.trainer.api import load_run, prepare_task
    from gridedge.trainer.training import _evaluate_forecast

    trained = load_run(run)
    prepared = prepare_task(trained.config)
    output = OutputSpec.model_validate({**trained.output.model_dump(), "quantile_scales": ()})
    metrics, _, _ = _evaluate_forecast(trained.predict, prepared, output)
    return trained.report, metrics["test"]


def _row(key: str, report: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    versions = sorted([test["quantiles"], test["quantiles"]["other"]], key=lambda m: bool(m["recalibrated"]))
    lightgbm = report["baselines"].get("lightgbm", {}).get("test", {}).get("mae")
    return {
        "workload": key,
        "framework": report["framework"],
        "epochs": f"{report['epochs_run']}/{report['epochs_max']}",
        "train_s": round(report["train_seconds"]),
        "median_mae": test["mae"],
        "lightgbm_mae": lightgbm,
        **{
            name: {k: m[k] for k in ("coverage", "pinball_mean", "interval")}
            for name, m in zip(("raw", "recalibrated"), versions, strict=True)
        },
    }


def _cells(row: dict[str, Any], version: str) -> list[object]:
    m = row[version]
    interval = m["interval"]
    return [
        row["workload"], row["framework"], version, *(f"{c:.1%}" for c in m["coverage"]),
        f"**{interval['coverage']:.1%}**", f"{interval['mean_width']:.4g}", f"{m['pinball_mean']:.4g}",
        f"{row['median_mae']:.4g}", "—" if row["lightgbm_mae"] is None else f"{row['lightgbm_mae']:.4g}",
        row["epochs"], row["train_s"],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", choices=("keras", "torch"), default=["torch", "keras"])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quantiles", help="Folder of the run folders.")
    parser.add_argument("--epochs", type=int, default=None, help="Cap on training epochs (default: the config's).")
    parser.add_argument("--reuse", action="store_true", help="Summarise existing run folders, do not train.")
    args = parser.parse_args()

    rows = []
    for framework in args.frameworks:
        for key, config_path in WORKLOADS.items():
            run = args.runs / f"{key}-{framework}"
            if not args.reuse:
                _train(config_path, framework, run, args.epochs)
            report, test = _evaluate(run)
            rows.append(_row(key, report, test))
            for plot in PLOTS:
                shutil.copyfile(run / plot, RESULTS / f"quantiles_{key}_{framework}_{plot.removeprefix('quantile_')}")
    load = os.getloadavg()[0]
    intro = (
        f"Test split, day-ahead origins; P10/P50/P90 trained with the pinball loss, the median is the point "
        f"forecast; 'recalibrated' scales each level's distance from the median to nominal validation coverage. "
        f"Target: P10–P90 covers 75–85 %. {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; 1-minute load average {load:.1f} when this summary was written (training "
        "times are wall-clock seconds on a shared machine). Plots: `quantiles_<workload>_<framework>_*.png`."
    )
    header = ["workload", "framework", "quantiles", "P10 cov.", "P50 cov.", "P90 cov.", "P10–P90 cov.",
              "P10–P90 width", "pinball", "median MAE", "LightGBM MAE", "epochs", "train s"]  # fmt: skip
    table = markdown_table(header, [_cells(row, version) for row in rows for version in ("raw", "recalibrated")])
    payload = {"levels": LEVELS, "load_average_1min": load, "runs": rows}
    publish("quantiles", payload, "Quantile calibration", intro, table)


if __name__ == "__main__":
    main()
