"""``gridedge train``: train one task config in Keras or PyTorch.

Kept light at import time: the frameworks load only inside the command.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Train gridedge models from a task config.", no_args_is_help=True)


class FrameworkChoice(StrEnum):
    keras = "keras"
    torch = "torch"


@app.callback()
def main() -> None:
    """Train gridedge models (Keras or PyTorch) from one task config."""


@app.command("train")
def train_command(
    config: Annotated[Path, typer.Argument(help="Task config YAML, e.g. configs/w1_load.yaml.")],
    framework: Annotated[FrameworkChoice, typer.Option(help="Training framework.")] = FrameworkChoice.keras,
    out: Annotated[Path, typer.Option(help="Run folder to write (model, specs, report, plots).")] = Path("runs/latest"),
    seed: Annotated[int | None, typer.Option(help="Override the config's random seed.")] = None,
) -> None:
    """Train CONFIG in the chosen framework and write the run folder OUT."""
    from rich.console import Console

    from gridedge.trainer.config import load_config
    from gridedge.trainer.training import train

    console = Console(stderr=True)
    task = load_config(config)
    if seed is not None:
        task = task.model_copy(update={"seed": seed})
    report = train(task, framework.value, out, progress=console.print)
    test = report["metrics"]["test"]
    headline = (
        f"test MAE {test['mae']:.4f}" if "mae" in test else f"test F1 {test['f1']:.3f} (mean over labelled series)"
    )
    console.print(f"{task.name} ({framework.value}): {headline}; report in {out / 'report.md'}")


data_app = typer.Typer(help="Check the data a task config names, before training.", no_args_is_help=True)


@data_app.command("check")
def data_check_command(
    config: Annotated[Path, typer.Argument(help="Task config YAML whose data section to check.")],
    out: Annotated[Path, typer.Option(help="Folder for data_check.json, data_check.md and coverage.png.")] = Path(
        "data_check"
    ),
) -> None:
    """Report step, span, duplicates, gaps, DST artefacts, sentinels, ranges, copied days and usable origins.

    Exits 1 when a split would have no usable origin (training would refuse), 0 otherwise.
    """
    from rich.console import Console
    from rich.table import Table

    from gridedge.trainer import datacheck
    from gridedge.trainer.config import load_config

    report, prepared = datacheck.check(load_config(config))
    table = Table(title=f"data check: {report['config']}", show_lines=False)
    table.add_column("what", style="bold")
    table.add_column("finding", overflow="fold")
    for what, finding in datacheck.rows(report):
        table.add_row(what, finding)
    console = Console()
    console.print(table)
    paths = datacheck.write(report, prepared, out)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}")
    if report["problems"]:
        raise typer.Exit(1)
