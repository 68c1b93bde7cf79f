"""`gridedge agent ...`: run the agent, check a device, print the config schema."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

agent_app = typer.Typer(help="Run the on-device agent and check a device.", no_args_is_help=True)

CONFIG_OPTION = typer.Option(..., "--config", "-c", help="Agent config YAML (from `gridedge provision`).")
_MARKS = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "warn": "[yellow]WARN[/]", "skip": "[dim]SKIP[/]"}


@agent_app.command("run")
def run(config: Path = CONFIG_OPTION) -> None:
    """Read sensors, run the model and report until stopped (SIGTERM stops it cleanly)."""
    from edge_agent.runner import build_agent

    agent = build_agent(config)
    logging.getLogger().setLevel(agent.config.log_level)
    agent.start()
    agent.run()


@agent_app.command("doctor")
def doctor(
    config: Path = CONFIG_OPTION,
    broker_timeout: float = typer.Option(5.0, help="Seconds to wait for the MQTT broker."),
) -> None:
    """Check config, sensors, bundle, model and broker; print a checklist; exit 1 if anything failed."""
    from edge_agent.doctor import run_checks

    console = Console()
    table = Table(title=f"gridedge agent doctor — {config}", show_lines=False)
    table.add_column("check")
    table.add_column("result")
    table.add_column("details", overflow="fold")
    failed = 0
    for check in run_checks(config, broker_timeout):
        failed += check.verdict == "fail"
        table.add_row(check.name, _MARKS[check.verdict], check.detail)
    console.print(table)
    if failed:
        console.print(f"[bold red]{failed} check(s) failed[/]: fix them before leaving the site.")
        raise typer.Exit(1)
    console.print("[green]All checks passed[/]: this device is ready.")


@agent_app.command("schema")
def schema(
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of printing."),
) -> None:
    """Print (or write) the JSON schema of the agent config, as committed in firmware_configs/schema.json."""
    from edge_agent.config import config_json_schema
    from edge_agent.fsutil import atomic_write_text

    text = config_json_schema()
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        typer.echo(f"wrote {out}")
