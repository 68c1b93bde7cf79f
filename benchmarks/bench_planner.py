"""Solve time of one dispatch plan (24 h at 15 min, two scenarios) and the RSS the planner adds to a process.

Inputs vary like a real day does: each solve plans from a different quarter hour of the 14 real days the
closed-loop evaluation replays (W1 load, W2 PV scaled to the example site), with the seasonal-naive
forecaster's P10/P50/P90 and a SoC and generator state drawn at random. Measured, in one run:

* wall time of ``plan_dispatch`` (HiGHS through ``highspy``, seeded from rounded LP schedules) per solve:
  p50, p95, max, how many ended at the time limit, and the plan's objective;
* the same problems through ``scipy.optimize.milp`` (HiGHS without the seed), the solver used before:
  wall time and objective, so the choice is made on one machine state. An objective above 100 is a plan
  with unserved critical load (1000 per kWh): what a time-limited scipy solve returned;
* RSS of a fresh Python process: numpy only; the planner imported and one plan solved; scipy.optimize
  imported; and the agent (``edge_agent.agent``) with a planning cycle built from the example site model
  and one plan made.

Results: ``benchmarks/results/planner.json`` and ``.md``.

    python benchmarks/bench_planner.py [--solves 30]
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
from typing import Any

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
elif sys.argv[1] == "scipy":
    from scipy.optimize import milp
    print(base, rss(), rss())
elif sys.argv[1] == "agent":
    import tempfile
    from pathlib import Path
    import numpy as np
    from edge_agent.agent import Agent
    from edge_agent.health import HealthReasons
    from edge_agent.planning.cycle import PlanningCycle
    from edge_agent.planning.settings import PlanningSection
    from edge_agent.planning.site_model import load_site_model
    from edge_agent.reporting.base import MemoryReporter
    loaded = rss()
    section = PlanningSection.model_validate({"site_model_file": sys.argv[2], "soc": {"source": "battery.soc"},
        "load": {"measured": {"source": "load"}}, "pv": {"measured": {"source": "pv"}}, "history_days": 2})
    cycle = PlanningCycle(section, load_site_model(sys.argv[2]), MemoryReporter(), HealthReasons(),
                          Path(tempfile.mkdtemp()))
    t = 1_210_000_000 + 900 * np.arange(192)
    cycle.history.seed(t, np.stack([1.0 + 0.5 * np.sin(t / 13751.0), np.clip(np.sin(t / 13751.0), 0, None)], 1))
    cycle.add_sweep(float(t[-1] + 900), {"battery.soc": 0.5})
    cycle.run(float(t[-1] + 900), [], model_degraded=False)
    print(base, loaded, rss())
else:
    print(base, base, base)
"""


def rss_mb(mode: str) -> tuple[float, float, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, mode, str(SITE_MODEL)], capture_output=True, text=True, env=env, check=True
    )
    base, loaded, solved = (float(v) for v in out.stdout.splitlines()[-1].split())  # HiGHS prints a banner first
    return base, loaded, solved


def _scipy_solve(problem: Any, time_limit_s: float, mip_rel_gap: float) -> tuple[float, float | None]:
    """The same MILP through scipy.optimize.milp (unseeded HiGHS): wall time and objective (None: no plan)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    matrix = csr_array(
        (np.concatenate(problem.vals), (np.concatenate(problem.rows), np.concatenate(problem.cols))),
        shape=(problem.n_rows, problem.n_cols),
    )
    started = time.perf_counter()
    result = milp(
        c=np.concatenate(problem.cost),
        integrality=np.concatenate(problem.integer),
        bounds=Bounds(np.concatenate(problem.lower), np.concatenate(problem.upper)),
        constraints=LinearConstraint(matrix, np.concatenate(problem.row_lo), np.concatenate(problem.row_hi)),
        options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap, "disp": False},
    )
    return time.perf_counter() - started, (float(result.fun) if result.x is not None else None)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {
        "ms_p50": round(float(np.percentile(ms, 50)), 1),
        "ms_p95": round(float(np.percentile(ms, 95)), 1),
        "ms_max": round(float(ms.max()), 1),
    }


def solve_times(solves: int) -> dict[str, Any]:
    from edge_agent.planning import planner
    from edge_agent.planning.dispatch import SiteState
    from edge_agent.planning.site_model import load_site_model
    from gridedge.planning_eval import STEPS_PER_DAY, SeasonalNaiveForecaster, load_replay

    site = load_site_model(SITE_MODEL)
    assert site.pv_rated_kw is not None
    replay = load_replay(date(2008, 5, 1), 14, site.pv_rated_kw)
    forecaster = SeasonalNaiveForecaster(replay)
    rng = np.random.default_rng(0)
    built: list[Any] = []
    original = planner._Milp.solve

    def keep(problem: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(problem)
        return original(problem, *args, **kwargs)

    planner._Milp.solve = keep  # type: ignore[method-assign]
    times, objectives, limited, fallbacks, scipy_times, scipy_objectives = [], [], 0, 0, [], []
    for i in range(solves):
        step = replay.first + int(rng.integers(0, replay.steps - STEPS_PER_DAY))
        state = SiteState(
            soc_fraction=float(rng.uniform(0.1, 0.95)),
            generator_on=bool(rng.integers(0, 2)),
            generator_steps_in_state=int(rng.integers(1, 12)),
        )
        started = time.perf_counter()
        plan = planner.plan_dispatch(site, state, forecaster.forecast(step, 96), int(replay.timestamps_utc[step]))
        times.append(time.perf_counter() - started)
        limited += plan.status.startswith("time limit")
        fallbacks += plan.source != "planner"
        objectives.append(plan.objective if plan.objective is not None else float("nan"))
        seconds, objective = _scipy_solve(built[-1], site.planner.time_limit_s, site.planner.mip_rel_gap)
        scipy_times.append(seconds)
        scipy_objectives.append(objective if objective is not None else float("nan"))
        print(
            f"[bench_planner] solve {i + 1}/{solves}: highspy {times[-1]:.3f} s {plan.status} "
            f"objective {objectives[-1]:.2f}; scipy {seconds:.3f} s objective {scipy_objectives[-1]:.2f}",
            flush=True,
        )
    planner._Milp.solve = original  # type: ignore[method-assign]
    ours, theirs = np.array(objectives), np.array(scipy_objectives)
    return {
        "solves": solves,
        "highspy": {
            **_percentiles(times),
            "time_limited": limited,
            "fallbacks": fallbacks,
            "objective_median": round(float(np.nanmedian(ours)), 3),
            "plans_with_unserved_penalty": int(np.sum(ours > 100)),
        },
        "scipy": {
            **_percentiles(scipy_times),
            "objective_median": round(float(np.nanmedian(theirs)), 3),
            "plans_with_unserved_penalty": int(np.sum(theirs > 100)),
        },
        "highspy_objective_not_worse": int(np.sum(ours <= theirs + 1e-6)),
        "time_limit_s": site.planner.time_limit_s,
        "mip_rel_gap": site.planner.mip_rel_gap,
        "mip_abs_gap": site.planner.mip_abs_gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solves", type=int, default=30, help="plans to solve")
    args = parser.parse_args()
    numpy_only = rss_mb("numpy")
    _, planner_loaded, planner_solved = rss_mb("planner")
    _, scipy_loaded, _ = rss_mb("scipy")
    _, agent_loaded, agent_planned = rss_mb("agent")
    timing = solve_times(args.solves)
    from importlib.metadata import version

    report = {
        "benchmark": "planner",
        "problem": "24 h at 15 min (96 steps), nominal P50 + P90/P10 stress scenario, hourly generator blocks",
        "highspy": version("highspy"),
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        # The machine is shared: wall times move with its load.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "results": {
            **timing,
            "rss_mb_numpy_only": round(numpy_only[0], 1),
            "rss_mb_planner_imported": round(planner_loaded, 1),
            "rss_mb_planner_after_one_solve": round(planner_solved, 1),
            "rss_mb_scipy_optimize_imported": round(scipy_loaded, 1),
            "rss_mb_agent_imported": round(agent_loaded, 1),
            "rss_mb_agent_after_one_plan": round(agent_planned, 1),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "planner.json").write_text(json.dumps(report, indent=2) + "\n")
    r = report["results"]
    ours, theirs = r["highspy"], r["scipy"]
    lines = [
        "# Planner benchmark",
        "",
        f"{report['problem']}; highspy {report['highspy']}, scipy {report['scipy']}, numpy {report['numpy']}, "
        f"Python {report['python']}, {report['machine']}, 1-minute load average {report['load_average_1min']} at "
        f"the end of the run. Solver limits: {r['time_limit_s']} s, relative gap {r['mip_rel_gap']}, absolute "
        f"gap {r['mip_abs_gap']}. Objective above 100: the plan leaves critical load unserved.",
        "",
        "| solver | solves | p50 ms | p95 ms | max ms | median objective | plans with unserved penalty |",
        "|---|---|---|---|---|---|---|",
        f"| highspy, LP-rounding seed | {r['solves']} | {ours['ms_p50']} | {ours['ms_p95']} | {ours['ms_max']} | "
        f"{ours['objective_median']} | {ours['plans_with_unserved_penalty']} |",
        f"| scipy.optimize.milp | {r['solves']} | {theirs['ms_p50']} | {theirs['ms_p95']} | {theirs['ms_max']} | "
        f"{theirs['objective_median']} | {theirs['plans_with_unserved_penalty']} |",
        "",
        f"highspy's plan as cheap or cheaper on {r['highspy_objective_not_worse']} of {r['solves']} problems; "
        f"it ended at the time limit {ours['time_limited']} times, fell back {ours['fallbacks']} times.",
        "",
        "| RSS MB | numpy only | planner imported | planner after a solve | scipy.optimize imported | agent imported "
        "| agent after one plan |",
        "|---|---|---|---|---|---|---|",
        f"| | {r['rss_mb_numpy_only']} | {r['rss_mb_planner_imported']} | {r['rss_mb_planner_after_one_solve']} | "
        f"{r['rss_mb_scipy_optimize_imported']} | {r['rss_mb_agent_imported']} | {r['rss_mb_agent_after_one_plan']} |",
    ]
    (RESULTS / "planner.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
