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
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder holding the data slices (default: the repository's data/).")
    ] = None,
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
    report = train(task, framework.value, out, data_dir=data_dir, progress=console.print)
    test = report["metrics"]["test"]
    headline = (
        f"test MAE {test['mae']:.4f}" if "mae" in test else f"test F1 {test['f1']:.3f} (mean over labelled series)"
    )
    console.print(f"{task.name} ({framework.value}): {headline}; report in {out / 'report.md'}")
