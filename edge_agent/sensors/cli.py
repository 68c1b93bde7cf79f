"""``gridedge sensors read``: light at import, libraries loaded per command.

Register with ``app.add_typer(sensors_app, name="sensors")``, or mount :data:`app`, which holds the group.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Sensor sources.", no_args_is_help=True)
sensors_app = typer.Typer(help="Read the configured sensors.", no_args_is_help=True)
app.add_typer(sensors_app, name="sensors")


def _shown(value: float) -> str:
    if math.isnan(value):
        return "—"
    # Counters and clocks are whole numbers too large for 6 significant digits.
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"


@sensors_app.command("read")
def sensors_read(
    config: Annotated[Path, typer.Option("--config", exists=True, dir_okay=False, help="Agent or sensor config YAML.")],
) -> None:
    """Read every configured sensor once and print its values with units; exit 1 if a device failed."""
    import logging

    from rich.console import Console
    from rich.table import Table

    from edge_agent.sensors.registry import build_source, load_sensor_configs

    # pymodbus logs every timeout with a packet dump; the table below already says what failed.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    console = Console()
    failed = False
    for source_config in load_sensor_configs(config):
        source = build_source(source_config, config.parent)
        try:
            reading = source.read()
        finally:
            source.close()
        table = Table(title=f"{source.name} ({source_config.type})")
        for column in ("channel", "value", "unit", "status"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for name, channel in reading.channels.items():
            shown = _shown(channel.value)
            status = channel.status.value + (f": {channel.detail}" if channel.detail else "")
            table.add_row(name, shown, channel.unit, status)
        console.print(table)
        for device, error in reading.device_errors.items():
            failed = True
            console.print(f"[bold red]{device}[/]: {error}", highlight=False)
    if failed:
        raise typer.Exit(1)
