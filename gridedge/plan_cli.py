"""``gridedge plan``: replay real data through the planner, the fallback rule and perfect foresight.

Prints a table of the three strategies, writes ``plan_replay.json`` and ``plan_replay.png`` (SoC, battery
power, generator, shed load, load/PV forecast bands against actuals) into ``--out``.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edge_agent.errors import ConfigError

ROWS = (
    ("unserved_critical_kwh", "unserved critical kWh"),
    ("shed_kwh", "shed kWh"),
    ("generator_hours", "generator hours"),
    ("generator_starts", "generator starts"),
    ("generator_kwh", "generator (fuel) kWh"),
    ("fuel_cost", "fuel + start cost"),
    ("fuel_cost_soc_adjusted", "cost adjusted for final SoC"),
    ("curtailed_kwh", "PV curtailed kWh"),
    ("battery_throughput_kwh", "battery throughput kWh"),
    ("final_soc_fraction", "final SoC"),
    ("generator_low_load_steps", "generator under min load (steps)"),
)


def plan_command(
    site_model: Path = typer.Option(
        ..., "--site-model", help="Site-model YAML (e.g. firmware_configs/sites/offgrid-household-site-model.yaml)."
    ),
    start: str = typer.Option(
        "2008-05-01", "--start", help="First replayed day of the W1 load (2007-01-09 .. 2008-12-30)."
    ),
    days: int = typer.Option(14, "--days", min=1, help="Days to replay."),
    cadence_steps: int = typer.Option(4, "--cadence-steps", min=1, help="Steps between plans (4 = hourly at 15 min)."),
    out: Path = typer.Option(Path("runs/plan"), "--out", help="Folder for plan_replay.json and plan_replay.png."),
) -> None:
    """Closed-loop replay of real load and PV: forecast-driven plan vs no-forecast rule vs perfect foresight."""
    from edge_agent.planning.site_model import load_site_model
    from gridedge.planning_eval import STRATEGIES, compare, load_replay, summary

    site = load_site_model(site_model)
    pv_rated_kw = site.pv_rated_kw
    if pv_rated_kw is None:
        raise ConfigError(f"{site_model}: set pv_rated_kw, the replay scales the measured PV to it")
    try:
        first_day = date.fromisoformat(start)
    except ValueError as exc:
        raise ConfigError(f"--start {start!r} is not a date like 2008-05-01") from exc
    site = site.model_copy(update={"planner": site.planner.model_copy(update={"committed_steps": cadence_steps})})
    replay = load_replay(first_day, days, pv_rated_kw)
    console = Console()
    with Progress(console=console) as progress:
        tasks = {name: progress.add_task(f"{name:>8}", total=replay.steps) for name in STRATEGIES}
        results = compare(
            site, replay, cadence_steps, progress=lambda name, steps: progress.advance(tasks[name], steps)
        )
    strategies = summary(results)
    report = {
        "site_model": str(site_model),
        "start": start,
        "days": days,
        "cadence_steps": cadence_steps,
        "strategies": strategies,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan_replay.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_replay(results, out / "plan_replay.png")
    console.print(comparison_table(strategies, days))
    for name, result in results.items():
        if result.violations:
            console.print(f"[bold red]{name} broke limits:[/] {result.violations}")
    console.print(f"wrote {out / 'plan_replay.json'} and {out / 'plan_replay.png'}")


def comparison_table(strategies: dict[str, Any], days: int) -> Table:
    """The three strategies side by side, one row per metric."""
    table = Table(title=f"Closed loop over {days} replayed days (off-grid)")
    table.add_column("metric")
    for name in strategies:
        table.add_column(name, justify="right")
    for key, label in ROWS:
        table.add_row(label, *(f"{strategies[name]['totals'].get(key, float('nan')):.2f}" for name in strategies))
    if "perfect" in strategies and all("fuel_cost_soc_adjusted" in s["totals"] for s in strategies.values()):
        # How far each strategy stays from perfect foresight: its operating cost (fuel, starts, shedding)
        # adjusted for the SoC it ends with, over the perfect plan's.
        costs = {
            name: s["totals"]["fuel_cost_soc_adjusted"] + s["totals"]["shed_cost"] for name, s in strategies.items()
        }
        table.add_row("cost / perfect foresight's", *(f"{costs[name] / costs['perfect']:.2f}" for name in strategies))
    table.add_row("plans (fallbacks)", *(f"{s['plans']} ({len(s['fallbacks'])})" for s in strategies.values()))
    table.add_row(
        "solve s p50 / p95",
        *(f"{s['solve_time_s_p50']} / {s['solve_time_s_p95']}" if s["plans"] else "-" for s in strategies.values()),
    )
    return table


def plot_replay(results: dict[str, Any], path: Path) -> None:
    """Five stacked panels over the replay: load and PV with forecast bands, SoC, battery, generator, shed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plan = results["plan"]
    hours = (plan.trace.timestamps_utc - plan.trace.timestamps_utc[0]) / 3600.0
    days = hours / 24.0
    colours = {"plan": "tab:blue", "rule": "tab:orange", "perfect": "tab:green"}
    fig, axes = plt.subplots(5, 1, figsize=(14, 13), sharex=True)
    bands = plan.used_forecast
    for ax, channel, colour in ((axes[0], "load", "tab:red"), (axes[0], "pv", "goldenrod")):
        actual = plan.trace.load_kw if channel == "load" else plan.trace.pv_kw
        ax.fill_between(days, bands[f"{channel}_p10"], bands[f"{channel}_p90"], color=colour, alpha=0.2,
                        label=f"{channel} forecast P10–P90")  # fmt: skip
        ax.plot(days, bands[f"{channel}_p50"], color=colour, lw=0.8, ls="--", label=f"{channel} forecast P50")
        ax.plot(days, actual, color=colour, lw=0.9, label=f"{channel} actual")
    axes[0].set_ylabel("kW")
    axes[0].set_title("Load and PV: actual vs the forecast the plan used")
    for name, result in results.items():
        trace = result.trace
        axes[1].plot(days, 100 * trace.soc_fraction, color=colours[name], lw=1, label=name)
        axes[2].plot(days, trace.battery_power_kw, color=colours[name], lw=0.7, label=name)
        axes[3].plot(days, trace.generator_kw, color=colours[name], lw=0.9, label=name)
        axes[4].plot(
            days, trace.shed_kw + trace.unserved_kw, color=colours[name], lw=0.9, label=f"{name} shed+unserved"
        )
    site_window = np.nanmin(100 * plan.trace.soc_fraction)
    axes[1].set_ylabel("SoC %")
    axes[1].set_title(f"Battery state of charge (lowest under the plan: {site_window:.0f} %)")
    axes[2].set_ylabel("kW")
    axes[2].set_title("Battery power (discharge > 0)")
    axes[3].set_ylabel("kW")
    axes[3].set_title("Generator output")
    axes[4].set_ylabel("kW")
    axes[4].set_title("Load shed (planned + relays) and unserved")
    axes[4].set_xlabel("days from the start of the replay")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
