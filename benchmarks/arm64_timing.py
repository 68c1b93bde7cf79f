"""Time artefacts inside the emulated arm64 userland; run there by bench_inference.py --emulated-arm64.

    python arm64_timing.py CASE_DIR RUNS      (CASE_DIR/artefacts.json names files, inputs and feeds.npz)

Prints one JSON object: p50 µs per name. Under qemu-user these are 50-200x a Pi's times, so the caller
reports only ratios between artefacts timed here side by side.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig

BLOCK = 50


def main() -> None:
    case, runs = Path(sys.argv[1]), int(sys.argv[2])
    spec = json.loads((case / "artefacts.json").read_text())
    feeds = dict(np.load(case / "feeds.npz"))
    names = tuple(spec["input_names"])
    runtimes = {
        name: LiteRTRuntime(case / file, LiteRTConfig(), names)
        if file.endswith(".tflite")
        else OnnxRuntime(case / file, OnnxRuntimeConfig(providers=("CPUExecutionProvider",)), names)
        for name, file in spec["artefacts"].items()
    }
    timings: dict[str, list[int]] = {name: [] for name in runtimes}
    for runtime in runtimes.values():
        for _ in range(20):
            runtime.run(feeds)
    for _ in range(-(-runs // BLOCK)):  # interleaved blocks, as on x86
        for name, runtime in runtimes.items():
            for _ in range(BLOCK):
                started = time.perf_counter_ns()
                runtime.run(feeds)
                timings[name].append(time.perf_counter_ns() - started)
    print(json.dumps({name: float(np.percentile(t, 50)) / 1e3 for name, t in timings.items()}))


if __name__ == "__main__":
    main()
