"""Agent footprint on this machine, per runtime: RSS, CPU share at a 1 s cadence, time to first inference.

For each runtime (LiteRT with the Keras-trained int8 TFLite model, ONNX Runtime with the PyTorch-trained
int8 ONNX model) the benchmark:

1. trains and exports a W1 bundle (the demo's quick config), unless --bundles points at earlier ones;
2. warms the agent up against the simulated site at high speed, so its input window is full and saved;
3. starts `gridedge agent run` afresh at a 1 s cadence reading the meter and the battery BMS (19
   channels, 31 registers) over Modbus TCP, and samples the agent process from /proc: RSS, peak RSS and
   CPU time once its start-up is over; the agent logs when its first inference happened.

Targets (DESIGN.md): <= 60 MB RSS with LiteRT, <= 90 MB with ORT; first inference <= 2 s after start;
<= 1 % of one core at a 1 s cadence with 20 registers. Results: benchmarks/results/agent.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from benchreport import markdown_table, publish

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def build_bundles(workdir: Path) -> dict[str, Path]:
    from edge_agent.bundle import pack_archive
    from edge_agent.keys import load_private_key, new_keypair
    from gridedge.demo import w1_task_config
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.training import train

    private, _ = new_keypair(workdir / "keys", overwrite=True)
    bundles = {}
    for framework, runtime, target in (("keras", "litert", "litert"), ("torch", "onnxruntime", "ort")):
        print(f"[bench_agent] training and exporting the {framework} W1 model", flush=True)
        run = workdir / f"run-{framework}"
        train(w1_task_config(quick=True), framework, run, plots=False)  # type: ignore[arg-type]
        result = export_bundle(
            load_source(run), workdir / f"bundle-{framework}", load_private_key(private),
            ExportOptions(name=f"w1-{framework}", targets=(target,)),
        )  # fmt: skip
        pack_archive(result.bundle_dir, workdir / f"bundle-{framework}.tar.gz")
        bundles[runtime] = result.bundle_dir
    return bundles


def agent_config(workdir: Path, bundle: Path, runtime: str, port: int, cadence: float, cycles: int) -> Path:
    from gridedge.sites import site_values

    raw = site_values("simulated-household", port, devices=("meter", "battery"))
    raw.update(
        {
            "site": "bench",
            "device": runtime,
            "state_dir": str(workdir / f"state-{runtime}"),
            "bundle": {"path": str(bundle), "public_key": str(workdir / "keys" / "bundle-signing.pub")},
            "runtime": {"type": runtime},
            "loop": {"cadence_s": cadence, "max_cycles": cycles},
        }
    )
    path = workdir / f"agent-{runtime}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def proc_sample(pid: int) -> tuple[float, float, float] | None:
    """(CPU seconds, RSS MB, peak RSS MB) of a running process, None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    return cpu, rss, peak


def run_agent(config: Path, settle_s: float) -> dict[str, Any]:
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "gridedge.cli", "agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    samples: list[tuple[float, float, float, float]] = []
    while process.poll() is None:
        sample = proc_sample(process.pid)
        if sample is not None:
            samples.append((time.monotonic() - started, *sample))
        time.sleep(0.5)
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"agent failed: {stderr[-2000:]}")
    first = re.search(r"first inference ([\d.]+) s after start \((\w+)\)", stderr)
    steady = [s for s in samples if s[0] >= settle_s]
    cpu_share = None
    if len(steady) >= 2:
        cpu_share = 100 * (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
    return {
        "wall_s": time.monotonic() - started,
        "first_inference_s": float(first.group(1)) if first else None,
        "first_inference_by": first.group(2) if first else None,
        "rss_mb": steady[-1][2] if steady else None,
        "peak_rss_mb": max(s[3] for s in samples) if samples else None,
        "cpu_percent_of_one_core": cpu_share,
        "samples": len(steady),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench-agent")
    parser.add_argument("--bundles", type=Path, help="A workdir of an earlier run to reuse its bundles.")
    parser.add_argument("--seconds", type=int, default=60, help="Measured run at 1 s cadence (after 10 s).")
    args = parser.parse_args()

    from gridedge.sim.site import SimulatedSite, SiteServer

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.bundles:
        bundles = {"litert": args.bundles / "bundle-keras", "onnxruntime": args.bundles / "bundle-torch"}
    else:
        bundles = build_bundles(workdir)
    results: dict[str, Any] = {}
    for runtime, bundle in bundles.items():
        print(f"[bench_agent] {runtime}: warm-up (fills and saves the window)", flush=True)
        with SiteServer(SimulatedSite(speed=18_000.0), port=0).start_in_thread() as site:
            warm = agent_config(workdir, bundle, runtime, site.port, cadence=0.05, cycles=200)
            run_agent(warm, settle_s=0)
        saved = np.load(workdir / f"state-{runtime}" / "window.npz")
        newest = int(saved["starts"][-1])
        sim = SimulatedSite(speed=1.0)
        offset = newest - sim.load.t0 + 900 + 60  # one minute into the period after the saved window
        print(f"[bench_agent] {runtime}: {args.seconds} s at a 1 s cadence", flush=True)
        with SiteServer(SimulatedSite(speed=1.0, start_offset_s=offset), port=0).start_in_thread() as site:
            measured = agent_config(workdir, bundle, runtime, site.port, cadence=1.0, cycles=args.seconds + 10)
            results[runtime] = run_agent(measured, settle_s=10.0)
        print(f"[bench_agent] {runtime}: {json.dumps(results[runtime])}", flush=True)

    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "channels": 19,
        "registers": 31,
        "targets": {"rss_mb": {"litert": 60, "onnxruntime": 90}, "first_inference_s": 2, "cpu_percent": 1},
    }
    header = ["runtime", "RSS MB", "peak RSS MB", "CPU % of a core", "first inference s"]
    rows = [
        [
            runtime,
            f"{r['rss_mb']:.1f}",
            f"{r['peak_rss_mb']:.1f}",
            f"{r['cpu_percent_of_one_core']:.2f}",
            r["first_inference_s"],
        ]
        for runtime, r in results.items()
    ]
    intro = (
        f"`gridedge agent run` at a 1 s cadence reading 19 channels (31 registers) over Modbus TCP from the "
        f"simulated site; Python {meta['python']}, {meta['machine']}, {meta['cores']} cores, 1-minute load "
        f"average {meta['load_average_1m']:.2f}. Targets: RSS <= 60 MB (LiteRT) / 90 MB (ORT), first "
        "inference <= 2 s, CPU <= 1 % of one core."
    )
    publish("agent", {"meta": meta, "results": results}, "Agent footprint", intro, markdown_table(header, rows))


if __name__ == "__main__":
    main()
