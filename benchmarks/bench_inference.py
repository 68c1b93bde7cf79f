"""Batch-1 inference latency, size and accuracy of every artefact kind, W1 and W3, side by side in one run.

For each workload, a Keras and a PyTorch model go through the real export pipeline (TFLite from Keras;
ONNX fp32, static QDQ int8 and dynamic int8 from PyTorch). One window is then timed through LiteRT
int8/fp32, ORT int8/dynamic-int8/fp32 and, for W1, Keras ``model.predict``, a direct Keras call and torch
eager. The runtimes are timed in interleaved blocks, so load from other processes on this shared machine
spreads over all of them instead of skewing one. Writes JSON, markdown and a PNG to ``benchmarks/results/``.

By default the small W1/W3-shaped models of the export tests are built; pass trainer run folders to
measure the reference models (``gridedge train configs/w1_load.yaml ...``):

    python benchmarks/bench_inference.py [--runs 3000] [--w1-keras-run DIR --w1-torch-run DIR]
        [--w3-keras-run DIR --w3-torch-run DIR] [--emulated-arm64]

``--emulated-arm64`` (root, qemu-user-static, debootstrap) also times the same files inside the emulated
Pi 4 userland of the tests (QEMU_CPU=cortex-a72, and cortex-a76 for the Pi 5's dot-product instructions).
Emulation is 50-200x slower than the hardware, so those rows report only ratios (int8 vs fp32 per runtime).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig
from gridedge.export.evaluate import primary_metric
from gridedge.export.pipeline import ExportOptions, ExportResult, ExportSource, export_bundle

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = 100
# Slow baselines get this many timed calls at most (Keras predict takes ~0.2 s a call).
SLOW_RUNS = 100


def _fixtures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("export_fixtures", ROOT / "tests" / "export" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _time_interleaved(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, dict[str, float]]:
    """p50/p99 of each call over ``runs`` timed calls, run in alternating blocks after a warm-up."""
    timings: dict[str, list[int]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(50):
            call()
    for block in range(-(-runs // BLOCK)):
        for name, call in calls.items():
            for _ in range(min(BLOCK, runs - block * BLOCK)):
                start = time.perf_counter_ns()
                call()
                timings[name].append(time.perf_counter_ns() - start)
        print(f"  timed {min(runs, (block + 1) * BLOCK)}/{runs} calls per runtime", end="\r", flush=True)
    print()
    return {
        name: {"p50_us": float(np.percentile(t, 50) / 1e3), "p99_us": float(np.percentile(t, 99) / 1e3)}
        for name, t in timings.items()
    }


def _time_slow(call: Callable[[], object], runs: int) -> dict[str, float]:
    for _ in range(3):
        call()
    timings = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        call()
        timings[i] = time.perf_counter_ns() - start
    return {"p50_us": float(np.percentile(timings, 50) / 1e3), "p99_us": float(np.percentile(timings, 99) / 1e3)}


def _runner(runtime: Any, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: runtime.run(feeds)


def _artefact_rows(result: ExportResult, framework: str) -> list[dict[str, Any]]:
    """Size vs the fp32 file of the same runtime and the test-metric change of every network artefact."""
    metric, _ = primary_metric(result.manifest.output)
    networks = [a for a in result.manifest.artefacts if a.family == "network"]
    fp32 = {a.runtime: a.bytes for a in networks if a.precision == "fp32"}
    return [
        {
            "file": a.file,
            "framework": framework,
            "runtime": a.runtime,
            "precision": a.precision,
            "bytes": a.bytes,
            "size_vs_fp32": a.bytes / fp32[a.runtime],
            "metric": metric,
            "value": a.metrics[metric],
            "float_value": result.float_metrics[metric],
            "degradation": a.metrics[f"{metric}_degradation"],
        }
        for a in networks
    ]


def _emulated_ratios(paths: dict[str, Path], feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, Any]:
    """int8 / fp32 p50 ratios per runtime of the same files inside the emulated arm64 userland, per CPU model."""
    import shutil

    from gridedge.emulation import install_working_tree, run_in_userland

    ratios: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        install_working_tree(case)
        files = {}
        for name, path in paths.items():
            shutil.copyfile(path, case / path.name)
            files[name] = path.name
        (case / "artefacts.json").write_text(json.dumps({"artefacts": files, "input_names": list(names)}))
        np.savez(case / "feeds.npz", **feeds)
        for cpu in ("cortex-a72", "cortex-a76"):
            os.environ["QEMU_CPU"] = cpu
            timing = ["/opt/edge/bin/python", "/src/benchmarks/arm64_timing.py", "/case", "500"]
            done = run_in_userland(case, timing, 1800)
            del os.environ["QEMU_CPU"]
            if done.returncode != 0:
                raise RuntimeError(f"emulated timing failed:\n{done.stderr[-3000:]}")
            p50 = json.loads(done.stdout.strip().splitlines()[-1])
            ratios[cpu] = {
                "LiteRT int8 / fp32": p50["LiteRT int8"] / p50["LiteRT fp32"],
                "ORT int8 (static QDQ) / fp32": p50["ORT int8 (static QDQ)"] / p50["ORT fp32"],
                "ORT dynamic int8 / fp32": p50["ORT dynamic int8"] / p50["ORT fp32"],
            }
    return ratios


def _workload(
    label: str,
    keras_source: ExportSource,
    torch_source: ExportSource,
    runs: int,
    baselines: bool,
    emulated: bool = False,
) -> dict[str, Any]:
    """Export both models of one workload and time every artefact (and, if asked, the framework calls)."""
    import torch

    key = Ed25519PrivateKey.generate()
    names = keras_source.input_names
    # Measurement, not a gate: the parity table reports every artefact, including ones the gate refuses.
    common = {"onnx_dynamic_int8": True, "max_degradation": 1e9, "latency_runs": 10}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{label}: exporting the Keras model (LiteRT)")
        keras = export_bundle(
            keras_source, Path(tmp) / "k", key, ExportOptions(name=f"{label}-keras", targets=("litert",), **common)
        )
        print(f"{label}: exporting the PyTorch model (ORT)")
        torch_bundle = export_bundle(
            torch_source, Path(tmp) / "t", key, ExportOptions(name=f"{label}-torch", targets=("ort",), **common)
        )
        feeds = {k: np.ascontiguousarray(v[:1]) for k, v in keras_source.test.feeds.items()}
        ort_config = OnnxRuntimeConfig(providers=("CPUExecutionProvider",))
        paths = {
            "LiteRT int8": keras.bundle_dir / f"{label}-keras.int8.tflite",
            "LiteRT fp32": keras.bundle_dir / f"{label}-keras.fp32.tflite",
            "ORT int8 (static QDQ)": torch_bundle.bundle_dir / f"{label}-torch.int8.onnx",
            "ORT dynamic int8": torch_bundle.bundle_dir / f"{label}-torch.dynamic-int8.onnx",
            "ORT fp32": torch_bundle.bundle_dir / f"{label}-torch.fp32.onnx",
        }
        runtimes: dict[str, Any] = {
            name: LiteRTRuntime(path, LiteRTConfig(), names)
            if path.suffix == ".tflite"
            else OnnxRuntime(path, ort_config, names)
            for name, path in paths.items()
        }
        print(f"{label}: timing {len(runtimes)} runtimes, batch 1, 1 thread")
        latency = _time_interleaved({name: _runner(rt, feeds) for name, rt in runtimes.items()}, runs)
        rows = _artefact_rows(keras, "keras") + _artefact_rows(torch_bundle, "torch")
        emulated_ratios = _emulated_ratios(paths, feeds, names) if emulated else None
    if baselines:
        torch_args = [torch.from_numpy(feeds[n]) for n in names]

        def torch_eager() -> None:
            with torch.no_grad():
                torch_source.model(*torch_args)

        model = keras_source.model
        print(f"{label}: timing framework baselines")
        latency["torch eager"] = _time_slow(torch_eager, max(SLOW_RUNS, runs // 4))
        latency["Keras direct call"] = _time_slow(lambda: model(feeds, training=False), SLOW_RUNS)
        latency["Keras model.predict"] = _time_slow(lambda: model.predict(feeds, verbose=0), SLOW_RUNS)
        for name in ("LiteRT int8", "ORT int8 (static QDQ)"):
            latency[name]["x_vs_keras_predict"] = latency["Keras model.predict"]["p50_us"] / latency[name]["p50_us"]
            latency[name]["x_vs_torch_eager"] = latency["torch eager"]["p50_us"] / latency[name]["p50_us"]
    result: dict[str, Any] = {"latency": latency, "artefacts": rows}
    if emulated_ratios is not None:
        result["emulated_arm64_ratios"] = emulated_ratios
    return result


def _markdown(payload: dict[str, Any]) -> list[str]:
    lines = [f"Batch 1, 1 thread, {payload['runs']} timed calls per runtime, interleaved; load average "
             f"{payload['load_average']} at start; {payload['cpu']}.", ""]
    for label, work in payload["workloads"].items():
        lines += [f"## {label}: {work['model']}", "",
                  "| runtime | p50 µs | p99 µs | × vs Keras predict | × vs torch eager |", "|---|---:|---:|---:|---:|"]
        for name, row in work["latency"].items():
            ratios = [row.get("x_vs_keras_predict"), row.get("x_vs_torch_eager")]
            shown = [f"{r:.0f}" if r and r >= 100 else f"{r:.1f}" if r else "—" for r in ratios]
            lines.append(f"| {name} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | {shown[0]} | {shown[1]} |")
        lines += ["", "| artefact | framework | size vs fp32 | KiB | test metric | vs float |",
                  "|---|---|---:|---:|---:|---:|"]
        for row in work["artefacts"]:
            lines.append(
                f"| {row['file']} | {row['framework']} | {100 * row['size_vs_fp32']:.1f} % | "
                f"{row['bytes'] / 1024:.1f} | "
                f"{row['metric']} {row['value']:.4g} (float {row['float_value']:.4g}) | "
                f"{-100 * row['degradation']:+.2f} % |"
            )
        lines += ["", *_findings(work), ""]
        if "emulated_arm64_ratios" in work:
            x86 = {name: row["p50_us"] for name, row in work["latency"].items()}
            lines += ["| p50 ratio (lower: int8 pays) | x86 (this machine) | "
                      + " | ".join(f"emulated arm64, qemu {cpu}" for cpu in work["emulated_arm64_ratios"]) + " |",
                      "|---|---:|" + "---:|" * len(work["emulated_arm64_ratios"])]
            for ratio, (int8, fp32) in {
                "LiteRT int8 / fp32": ("LiteRT int8", "LiteRT fp32"),
                "ORT int8 (static QDQ) / fp32": ("ORT int8 (static QDQ)", "ORT fp32"),
                "ORT dynamic int8 / fp32": ("ORT dynamic int8", "ORT fp32"),
            }.items():
                emulated = " | ".join(f"{cpu[ratio]:.2f}" for cpu in work["emulated_arm64_ratios"].values())
                lines.append(f"| {ratio} | {x86[int8] / x86[fp32]:.2f} | {emulated} |")
            lines += ["", "Emulated rows are ratios of files timed side by side under qemu-user (EMULATED, 50-200x "
                      "slower than the hardware); they show the kernels' relative cost, not a Pi's µs.", ""]
    return lines


def _findings(work: dict[str, Any]) -> list[str]:
    """The ratios a runtime/precision choice rests on, read off the tables above."""
    latency = {name: row["p50_us"] for name, row in work["latency"].items()}
    size = {(r["framework"], r["file"].split(".", 1)[1]): r for r in work["artefacts"]}
    static, dynamic = size[("torch", "int8.onnx")], size[("torch", "dynamic-int8.onnx")]
    return [
        f"- ORT dynamic int8: p50 {latency['ORT dynamic int8'] / latency['ORT fp32']:.2f}x ORT fp32 and "
        f"{latency['ORT dynamic int8'] / latency['ORT int8 (static QDQ)']:.2f}x static int8; file "
        f"{100 * dynamic['size_vs_fp32']:.1f} % of fp32 (static {100 * static['size_vs_fp32']:.1f} %); "
        f"{dynamic['metric']} {-100 * dynamic['degradation']:+.2f} % vs float (static "
        f"{-100 * static['degradation']:+.2f} %).",
        f"- ORT static int8: p50 {latency['ORT int8 (static QDQ)'] / latency['ORT fp32']:.2f}x ORT fp32; "
        f"LiteRT int8: p50 {latency['LiteRT int8'] / latency['LiteRT fp32']:.2f}x LiteRT fp32.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    for workload in ("w1", "w3"):
        for framework in ("keras", "torch"):
            parser.add_argument(
                f"--{workload}-{framework}-run", type=Path,
                help=f"{workload.upper()} run folder trained with {framework} (gridedge train).",
            )
    parser.add_argument("--emulated-arm64", action="store_true", help="Add emulated-arm64 ratio rows (W1).")
    args = parser.parse_args()
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    import torch

    torch.set_num_threads(1)
    fixtures = _fixtures()
    workloads: dict[str, Any] = {}
    for label in ("w1", "w3"):
        keras_run, torch_run = getattr(args, f"{label}_keras_run"), getattr(args, f"{label}_torch_run")
        if keras_run and torch_run:
            from gridedge.export.run_loader import load_source

            keras_source, torch_source = load_source(keras_run), load_source(torch_run)
            model = f"trainer runs {keras_run} / {torch_run}"
        else:
            prepared = fixtures.prepare_w1() if label == "w1" else fixtures.prepare_w3()
            keras_source = fixtures.make_source(prepared, "keras", fixtures.keras_model(prepared))
            torch_source = fixtures.make_source(prepared, "torch", fixtures.torch_model(prepared))
            model = f"{label.upper()}-shaped conv/dense model (tests/export fixture)"
        workloads[label.upper()] = {"model": model, **_workload(label, keras_source, torch_source, args.runs,
                                                                baselines=label == "w1",
                                                                emulated=args.emulated_arm64 and label == "w1")}
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = "x86 AVX2 without VNNI" if "avx2" in flags and "vnni" not in flags else "see /proc/cpuinfo"
    payload = {"runs": args.runs, "load_average": load_at_start, "cpu": cpu,
               "workloads": workloads}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inference.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = _markdown(payload)
    (RESULTS / "inference.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(workloads), figsize=(7 * len(workloads), 4))
    for ax, (label, work) in zip(np.atleast_1d(axes), workloads.items(), strict=True):
        ax.barh(list(work["latency"]), [r["p50_us"] for r in work["latency"].values()], log=True)
        ax.set_xlabel("p50 latency, µs (log)")
        ax.set_title(f"{label}, batch 1")
    fig.tight_layout()
    fig.savefig(RESULTS / "inference.png", dpi=100)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
