"""Solve time of one dispatch plan (24 h at 15 min, two scenarios) and the RSS the planner adds to a process.

Inputs vary like a real day does: each solve plans from a different quarter hour of the 14 real days the
closed-loop evaluation replays (W1 load, W2 PV scaled to the example site), with the seasonal-naive
forecaster's P10/P50/P90 and a SoC and generator state drawn at random. Measured:

* wall time of ``plan_dispatch`` (HiGHS MILP through scipy) per solve: p50, p95, max, and how many
  solves ended at the time limit with their best plan instead of a proven optimum;
* RSS of a fresh Python process after ``import edge_agent.planning.planner`` (numpy + scipy.optimize),
  and after one solve, against a bare interpreter with numpy only.

Results: ``benchmarks/results/planner.json`` and ``.md``.

    python benchmarks/bench_planner.py [--solves 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import scipy

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SITE_MODEL = REPO / "firmware_configs" / "sites" / "offgrid-household-site-model.yaml"

RSS_PROBE = """
import re, sys
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
import numpy
base = rss()
if sys.argv[1] == "planner":
    import numpy as np
    from edge_agent.planning.dispatch import ChannelForecast, Forecast, SiteState
    from edge_agent.planning.planner import plan_dispatch
    from edge_agent.planning.site_model import load_site_model
    loaded = rss()
    site = load_site_model(sys.argv[2])
    t = 1_210_000_000 + 900 * np.arange(96)
    load = np.full(96, 1.5)
    plan_dispatch(site, SiteState(0.4), Forecast(t, ChannelForecast(load, {0.9: load * 1.5}),
                  ChannelForecast(np.zeros(96))), int(t[0]))
    print(base, loaded, rss())
else:
    print(base, base, base)
"""


def rss_mb(mode: str) -> tuple[float, float, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, mode, str(SITE_MODEL)], capture_output=True, text=True, env=env, check=True
    )
    base, loaded, solved = (float(v) for v in out.stdout.split())
    return base, loaded, solved


def solve_times(solves: int) -> dict[str, float]:
    from edge_agent.planning.dispatch import SiteState
    from edge_agent.planning.planner import plan_dispatch
    from edge_agent.planning.site_model import load_site_model
    from gridedge.planning_eval import STEPS_PER_DAY, SeasonalNaiveForecaster, load_replay

    site = load_site_model(SITE_MODEL)
    assert site.pv_rated_kw is not None
    replay = load_replay(date(2008, 5, 1), 14, site.pv_rated_kw)
    forecaster = SeasonalNaiveForecaster(replay)
    rng = np.random.default_rng(0)
    times, limited, fallbacks = [], 0, 0
    for i in range(solves):
        step = replay.first + int(rng.integers(0, replay.steps - STEPS_PER_DAY))
        state = SiteState(
            soc_fraction=float(rng.uniform(0.1, 0.95)),
            generator_on=bool(rng.integers(0, 2)),
            generator_steps_in_state=int(rng.integers(1, 12)),
        )
        started = time.perf_counter()
        plan = plan_dispatch(site, state, forecaster.forecast(step, 96), int(replay.timestamps_utc[step]))
        times.append(time.perf_counter() - started)
        limited += plan.status.startswith("time limit")
        fallbacks += plan.source != "planner"
        print(f"[bench_planner] solve {i + 1}/{solves}: {times[-1]:.3f} s {plan.status}", flush=True)
    ms = np.array(times) * 1000
    return {
        "solves": solves,
        "solve_ms_p50": round(float(np.percentile(ms, 50)), 1),
        "solve_ms_p95": round(float(np.percentile(ms, 95)), 1),
        "solve_ms_max": round(float(ms.max()), 1),
        "time_limited": limited,
        "fallbacks": fallbacks,
        "time_limit_s": site.planner.time_limit_s,
        "mip_rel_gap": site.planner.mip_rel_gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solves", type=int, default=50, help="plans to solve")
    args = parser.parse_args()
    numpy_only = rss_mb("numpy")
    base, loaded, solved = rss_mb("planner")
    timing = solve_times(args.solves)
    report = {
        "benchmark": "planner",
        "problem": "24 h at 15 min (96 steps), nominal P50 + P90/P10 stress scenario, hourly generator blocks",
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        # The machine is shared: wall times move with its load.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "results": {
            **timing,
            "rss_mb_numpy_only": round(numpy_only[0], 1),
            "rss_mb_planner_imported": round(loaded, 1),
            "rss_mb_after_one_solve": round(solved, 1),
            "rss_mb_added_by_planner": round(solved - base, 1),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "planner.json").write_text(json.dumps(report, indent=2) + "\n")
    r = report["results"]
    lines = [
        "# Planner benchmark",
        "",
        f"{report['problem']}; scipy {report['scipy']} (HiGHS), numpy {report['numpy']}, "
        f"Python {report['python']}, "
        f"{report['machine']}, 1-minute load average {report['load_average_1min']} at the end of the run. "
        f"Solver limits: {r['time_limit_s']} s, relative gap {r['mip_rel_gap']}.",
        "",
        "| solves | p50 ms | p95 ms | max ms | ended at time limit | fallbacks | RSS numpy only MB | RSS planner "
        "imported MB | RSS after a solve MB |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['solves']} | {r['solve_ms_p50']} | {r['solve_ms_p95']} | {r['solve_ms_max']} | "
        f"{r['time_limited']} | {r['fallbacks']} | {r['rss_mb_numpy_only']} | {r['rss_mb_planner_imported']} | "
        f"{r['rss_mb_after_one_solve']} |",
    ]
    (RESULTS / "planner.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
