"""Batch-1 inference latency of a W1 forecaster in every runtime, measured side by side in one run.

By default builds the W1-shaped conv/dense forecaster of the export tests (one day of 15-min household
power in, the next day out) in Keras and PyTorch, exports it through the real export pipeline (LiteRT int8,
ONNX Runtime int8/fp32), then times one window through: LiteRT int8, ORT int8, ORT fp32, Keras
``model.predict``, a direct Keras call, and torch eager. Writes JSON, a markdown table and a PNG to
``benchmarks/results/``. Pass the trainer's W1 run folders to measure the reference model instead:

    python benchmarks/bench_inference.py [--runs 2000] [--keras-run RUN_DIR --torch-run RUN_DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig
from export.pipeline import ExportOptions, export_bundle

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _fixtures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("export_fixtures", ROOT / "tests" / "export" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _time(call: Callable[[], object], runs: int) -> dict[str, float]:
    for _ in range(min(50, runs)):
        call()
    timings = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        call()
        timings[i] = time.perf_counter_ns() - start
    return {"p50_us": float(np.percentile(timings, 50) / 1e3), "p99_us": float(np.percentile(timings, 99) / 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--keras-run", type=Path, help="W1 run folder trained with Keras (gridedge train).")
    parser.add_argument("--torch-run", type=Path, help="W1 run folder trained with PyTorch.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.keras_run and args.torch_run:
        from export.run_loader import load_source

        keras_source, torch_source = load_source(args.keras_run), load_source(args.torch_run)
        model_name = f"trainer runs {args.keras_run.name} / {args.torch_run.name}"
    else:
        fixtures = _fixtures()
        prepared = fixtures.prepare_w1()
        keras_source = fixtures.make_source(prepared, "keras", fixtures.keras_model(prepared))
        torch_source = fixtures.make_source(prepared, "torch", fixtures.torch_model(prepared))
        model_name = "W1-shaped conv/dense forecaster (tests/export fixture)"
    keras_model, torch_model = keras_source.model, torch_source.model
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        keras_options = ExportOptions(name="w1-keras", targets=("litert",))
        torch_options = ExportOptions(name="w1-torch", targets=("ort",))
        keras_bundle = export_bundle(keras_source, Path(tmp) / "k", key, keras_options)
        torch_bundle = export_bundle(torch_source, Path(tmp) / "t", key, torch_options)
        feeds = {k: v[:1].copy() for k, v in keras_source.test.feeds.items()}
        names = ("past", "future")
        litert = LiteRTRuntime(keras_bundle.bundle_dir / "w1-keras.int8.tflite", LiteRTConfig(), names)
        ort_int8 = OnnxRuntime(torch_bundle.bundle_dir / "w1-torch.int8.onnx", OnnxRuntimeConfig(), names)
        ort_fp32 = OnnxRuntime(torch_bundle.bundle_dir / "w1-torch.fp32.onnx", OnnxRuntimeConfig(), names)
        torch_args = [torch.from_numpy(feeds[n]) for n in names]

        def torch_eager() -> None:
            with torch.no_grad():
                torch_model(*torch_args)

        slow_runs = max(50, args.runs // 20)
        results = {
            "LiteRT int8": _time(lambda: litert.run(feeds), args.runs),
            "ORT int8 (QDQ)": _time(lambda: ort_int8.run(feeds), args.runs),
            "ORT fp32": _time(lambda: ort_fp32.run(feeds), args.runs),
            "torch eager": _time(torch_eager, args.runs // 4),
            "Keras direct call": _time(lambda: keras_model(feeds, training=False), slow_runs),
            "Keras model.predict": _time(lambda: keras_model.predict(feeds, verbose=0), slow_runs),
        }
        sizes = {
            "tflite int8 / fp32": keras_bundle.manifest.artefact("w1-keras.int8.tflite").bytes
            / keras_bundle.manifest.artefact("w1-keras.fp32.tflite").bytes,
            "onnx int8 / fp32": torch_bundle.manifest.artefact("w1-torch.int8.onnx").bytes
            / torch_bundle.manifest.artefact("w1-torch.fp32.onnx").bytes,
        }
        tflite_int8 = keras_bundle.manifest.artefact("w1-keras.int8.tflite")
        onnx_int8 = torch_bundle.manifest.artefact("w1-torch.int8.onnx")
        mae = {
            "tflite int8 mae degradation": tflite_int8.metrics["mae_degradation"],
            "onnx int8 mae degradation": onnx_int8.metrics["mae_degradation"],
        }
    predict = results["Keras model.predict"]["p50_us"]
    eager = results["torch eager"]["p50_us"]
    for name in ("LiteRT int8", "ORT int8 (QDQ)"):
        results[name]["x_vs_keras_predict"] = predict / results[name]["p50_us"]
        results[name]["x_vs_torch_eager"] = eager / results[name]["p50_us"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"runs": args.runs, "latency": results, "size_ratio": sizes, "quality": mae,
               "model": f"{model_name}, batch 1, 1 thread"}
    (RESULTS / "inference.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = ["| runtime | p50 µs | p99 µs | × vs Keras predict | × vs torch eager |", "|---|---:|---:|---:|---:|"]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | "
            f"{row.get('x_vs_keras_predict', float('nan')):.0f} | {row.get('x_vs_torch_eager', float('nan')):.1f} |"
        )
    lines += ["", *[f"- {k}: {v:.3f}" for k, v in {**sizes, **mae}.items()]]
    (RESULTS / "inference.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(list(results), [r["p50_us"] for r in results.values()], log=True)
    ax.set_xlabel("p50 latency, µs (log)")
    ax.set_title("W1 forecaster, batch 1")
    fig.tight_layout()
    fig.savefig(RESULTS / "inference.png", dpi=100)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
