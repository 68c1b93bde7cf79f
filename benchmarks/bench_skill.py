"""Forecast skill of the model the device runs, next to LightGBM's, on the shipped W1 and W2, over seeds.

For every workload x framework x seed, the shipped config (seed replaced) is trained by gridedge's trainer
and exported through the real pipeline: Keras to LiteRT int8 and ORT, PyTorch to ORT. The export also writes
the LightGBM candidate (ONNX) and marks the family a device serves, chosen on validation; "served" is the
artefact a device loads by that mark (the LightGBM model, the network's int8, or the blend w·network int8 +
(1−w)·LightGBM as one ONNX file), on ONNX Runtime: ORT devices, and Pis configured for LiteRT, which run a
served ONNX-only model on the onnxruntime their profile installs.
Skill is 1 - MAE / MAE of the better seasonal naive (yesterday or last week) on the same test windows, read
from each export report (``skill``), where LightGBM's skill is computed on those windows too. Each run is a
separate process (``--jobs`` at a time, one thread each); its wall time and the load average are recorded,
because this machine is shared; a finished run is reused when the script runs again on the same
``--workdir``. Writes ``results/skill.json`` and ``results/skill.md``:

    python benchmarks/bench_skill.py [--seeds 7 8 9] [--jobs 2] [--workdir runs/skill]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchreport import RESULTS, markdown_table, publish

from gridedge.export.errors import ExportError

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"w1_load": "W1 load", "w2_pv": "W2 PV"}
# Compatibility targets per framework: LiteRT (raspberry-pi-4) for Keras, and ORT, where LightGBM can be served.
DEVICE_TARGETS = {"keras": ("litert", "ort"), "torch": ("ort",)}
# The int8 network artefact reported per framework (Keras: the LiteRT file a Pi runs).
INT8_RUNTIME = {"keras": "tflite", "torch": "onnx"}
# Each finished run leaves its row here; a rerun with the same --workdir reuses it (delete it to remeasure).
ROW_FILE = "skill-row.json"


def measure(workload: str, framework: str, seed: int, workdir: Path) -> dict[str, Any]:
    """Train and export one combination; returns its skills, MAEs and timings."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.report import skill_summary, write_report
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.config import load_config
    from gridedge.trainer.training import train

    run_dir = workdir / f"{workload}-{framework}-{seed}"
    saved = run_dir / ROW_FILE
    if saved.is_file():
        kept: dict[str, Any] = json.loads(saved.read_text())
        return kept
    load_before = os.getloadavg()[0]
    if (run_dir / "report.json").is_file():
        # Trained by an earlier, interrupted measurement: export it (the training time is in its report).
        report = json.loads((run_dir / "report.json").read_text())
        train_wall = None
    else:
        config = load_config(ROOT / "configs" / f"{workload}.yaml").model_copy(update={"seed": seed})
        started = time.perf_counter()
        report = train(config, framework, run_dir, plots=False, progress=lambda _line: None)  # type: ignore[arg-type]
        train_wall = time.perf_counter() - started
    private_key = Ed25519PrivateKey.generate()  # a throwaway signing key: the bundle is only measured
    options = ExportOptions(
        name=f"{workload}-{framework}-{seed}".replace("_", "-"),
        targets=DEVICE_TARGETS[framework],
        latency_runs=20,
    )
    result = export_bundle(load_source(run_dir), run_dir / "bundle", private_key, options)
    write_report(result, run_dir / "export-report")
    skill = skill_summary(result)
    assert skill is not None
    int8 = next(
        a for a in result.manifest.artefacts if a.precision == "int8" and a.runtime == INT8_RUNTIME[framework]
    )
    served = result.manifest.artefact(skill["served"]["onnx"]["file"])
    row = {
        "workload": workload,
        "framework": framework,
        "seed": seed,
        "float_skill": skill["float"],
        "int8_skill": skill["artefacts"][int8.file],
        "int8_file": int8.file,
        "lightgbm_skill": skill["lightgbm"],
        "served_file": served.file,
        "served_family": served.family,
        "served_weight": result.manifest.serving.network_weight if result.manifest.serving else None,
        "served_skill": skill["served"]["onnx"]["skill"],
        "validation_mae": result.manifest.serving.scores if result.manifest.serving else None,
        "best_seasonal_naive_mae": skill["best_seasonal_naive_mae"],
        "int8_mae": int8.metrics["mae"],
        "float_mae": result.float_metrics["mae"],
        "test_origins": report["metrics"]["test"]["n_origins"],
        "train_seconds": report["train_seconds"],
        "train_wall_seconds": train_wall,
        "epochs_run": report["epochs_run"],
        "best_epoch": report["best_epoch"],
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    saved.write_text(json.dumps(row, indent=1) + "\n")
    return row


def _served(row: dict[str, Any]) -> str:
    """The served model's name: its family, or the blend with its network share."""
    weight = row.get("served_weight")
    return f"blend w={weight:g}" if row["served_family"] == "blend" and weight is not None else row["served_family"]


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--frameworks", nargs="+", default=["keras", "torch"], choices=["keras", "torch"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "skill")
    parser.add_argument(
        "--saved-only", action="store_true", help="Publish the runs already finished in --workdir; measure none."
    )
    args = parser.parse_args()

    # Seed by seed, so that an interrupted run has every workload and framework for the seeds it finished.
    combos = [(w, f, s) for s in args.seeds for w in args.workloads for f in args.frameworks]
    if args.saved_only:
        combos = [(w, f, s) for w, f, s in combos if (args.workdir / f"{w}-{f}-{s}" / ROW_FILE).is_file()]
    started = time.perf_counter()
    load_start = os.getloadavg()
    context = multiprocessing.get_context("spawn")  # TensorFlow and torch do not survive a fork
    with ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(measure, w, f, s, args.workdir) for w, f, s in combos]
        rows: list[dict[str, Any]] = []
        failed: list[str] = []
        for done, (future, (workload, framework, seed)) in enumerate(zip(futures, combos, strict=True), 1):
            try:
                row = future.result()
            except ExportError as exc:
                # A refused export (e.g. an artefact over the parity bound) is a result too: the others still count.
                failed.append(f"{workload} {framework} seed {seed}: {exc}")
                print(f"[{done}/{len(combos)}] {failed[-1]}", flush=True)
                _publish(rows, args.jobs, load_start, time.perf_counter() - started, done == len(combos), failed)
                continue
            rows.append(row)
            print(
                f"[{done}/{len(combos)}] {row['workload']} {row['framework']} seed {row['seed']}: int8 skill "
                f"{row['int8_skill']:.3f} (float {row['float_skill']:.3f}), served {_served(row)} "
                f"{row['served_skill']:.3f}, LightGBM {row['lightgbm_skill']:.3f}, "
                f"fit in {row['train_seconds']:.0f} s",
                flush=True,
            )
            # Published after every run: the results so far survive an interrupted measurement.
            _publish(rows, args.jobs, load_start, time.perf_counter() - started, done == len(combos), failed)


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload and framework: mean ± standard deviation over the seeds measured."""
    summary = []
    for workload, framework in dict.fromkeys((r["workload"], r["framework"]) for r in rows):
        mine = [r for r in rows if r["workload"] == workload and r["framework"] == framework]
        summary.append(
            {
                "workload": workload,
                "framework": framework,
                "seeds": [r["seed"] for r in mine],
                "int8_skill": _spread([r["int8_skill"] for r in mine]),
                "float_skill": _spread([r["float_skill"] for r in mine]),
                "lightgbm_skill": _spread([r["lightgbm_skill"] for r in mine]),
                "served_skill": _spread([r["served_skill"] for r in mine]) if all("served_skill" in r for r in mine)
                else "—",
                "served_lightgbm": sum(r.get("served_family") == "lightgbm" for r in mine),
                "served_blend": sum(r.get("served_family") == "blend" for r in mine),
                "served_at_least_lightgbm": all(r.get("served_skill", -1.0) >= r["lightgbm_skill"] for r in mine),
                "int8_at_least_lightgbm": all(r["int8_skill"] >= r["lightgbm_skill"] for r in mine),
                "train_seconds_max": max(r["train_seconds"] for r in mine),
            }
        )
    return summary


def _publish(
    rows: list[dict[str, Any]], jobs: int, load_start: tuple[float, ...], wall: float, final: bool, failed: list[str]
) -> None:
    if not rows:
        return  # nothing measured yet (the first runs were refused): keep the published results as they are
    load_end = os.getloadavg()
    loads = [value for r in rows for value in r["load_average_1min"]]
    summary = _summary(rows)
    payload = {
        "complete": final and not failed,
        "failed": failed,
        "rows": rows,
        "summary": summary,
        "jobs": jobs,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "cpu_count": os.cpu_count(),
        "wall_seconds": wall,
    }
    table = markdown_table(
        ["workload", "framework", "seed", "float skill", "int8 skill", "served on ORT (skill)", "LightGBM skill",
         "fit s", "epochs"],
        [
            (
                WORKLOADS[r["workload"]],
                r["framework"],
                r["seed"],
                f"{r['float_skill']:.3f}",
                f"{r['int8_skill']:.3f}",
                f"{_served(r)} ({r['served_skill']:.3f})" if "served_skill" in r else "—",
                f"{r['lightgbm_skill']:.3f}",
                f"{r['train_seconds']:.0f}",
                f"{r['best_epoch']}/{r['epochs_run']}",
            )
            for r in rows
        ],
    )
    table += ["", "Mean ± standard deviation over the seeds:", ""]
    table += markdown_table(
        ["workload", "framework", "seeds", "int8 skill", "float skill", "served skill (ORT)", "LightGBM served",
         "blend served", "LightGBM skill", "int8 ≥ LightGBM every seed", "served ≥ LightGBM every seed"],
        [
            (
                WORKLOADS[s["workload"]],
                s["framework"],
                len(s["seeds"]),
                s["int8_skill"],
                s["float_skill"],
                s["served_skill"],
                f"{s['served_lightgbm']}/{len(s['seeds'])}",
                f"{s['served_blend']}/{len(s['seeds'])}",
                s["lightgbm_skill"],
                "yes" if s["int8_at_least_lightgbm"] else "no",
                "yes" if s["served_at_least_lightgbm"] else "no",
            )
            for s in summary
        ],
    )
    intro = (
        "Skill = 1 − MAE / MAE of the better seasonal naive (yesterday or last week), on each run's test windows "
        "(one origin per local midnight), from the export report. int8 = the network's int8 artefact (Keras: "
        "LiteRT int8; PyTorch: ORT static int8). Served = what a device loads: the family the bundle marks (LightGBM, "
        "the network, or blend w = w·network int8 + (1−w)·LightGBM as one ONNX file; w ∈ {0, 0.25, 0.5, 0.75, 1} "
        "by the share rule on validation, never test: ½ unless another share beats it by more than two standard "
        "errors over week-long blocks), run on ONNX Runtime, also by a Pi configured for LiteRT, which hands a "
        "served ONNX-only model to the onnxruntime its profile installs. "
        "Shipped configs, seed replaced. "
        f"Runs in parallel processes, one thread each, at nice 10, on {os.cpu_count()} cores; the 1-minute load "
        f"average seen at the start and end of the runs ranged {min(loads):.1f}-{max(loads):.1f} (a shared "
        "machine: fit times are longer than on an idle one; per-run values in the JSON)."
        + ("" if final else " Measurement still running or interrupted: not every run is in yet.")
        + "".join(f" Refused at export, no row: {reason}" for reason in failed)
    )
    table += ["", "![skill per seed](skill.png)"]
    publish("skill", payload, "Forecast skill of the device's model vs LightGBM", intro, table)
    _plot(rows)


def _plot(rows: list[dict[str, Any]]) -> None:
    """Per workload and framework, each seed's skill: the network's int8 artefact, the served model, LightGBM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["workload"], r["framework"]) for r in rows))
    series = (("int8_skill", "network int8", "o"), ("served_skill", "served", "s"), ("lightgbm_skill", "LightGBM", "_"))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, (key, label, marker) in zip((-0.2, 0.0, 0.2), series, strict=True):
        xs = [i + offset for i, g in enumerate(groups) for r in rows if (r["workload"], r["framework"]) == g]
        ys = [r[key] for g in groups for r in rows if (r["workload"], r["framework"]) == g]
        ax.scatter(xs, ys, marker=marker, s=60, label=label)
    ax.set_xticks(range(len(groups)), [f"{WORKLOADS[w]}\n{f}" for w, f in groups])
    ax.set_ylabel("skill (1 − MAE / best seasonal naive)")
    ax.set_title("Test skill per seed")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "skill.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
