"""``gridedge sim site`` and ``gridedge sensors read``: light at import, libraries loaded per command.

Register with ``app.add_typer(sim_app, name="sim")`` and ``app.add_typer(sensors_app, name="sensors")``,
or mount :data:`app`, which holds both groups.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Sensor sources and the simulated site.", no_args_is_help=True)
sim_app = typer.Typer(help="Simulated devices served over real Modbus.", no_args_is_help=True)
sensors_app = typer.Typer(help="Read the configured sensors.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")
app.add_typer(sensors_app, name="sensors")


@sim_app.command("site")
def sim_site(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(5020, "--port", help="Modbus TCP port (0 picks a free one)."),
    speed: float = typer.Option(1.0, "--speed", help="Time acceleration: 60 plays one minute per second."),
    start_hour: float = typer.Option(0.0, "--start-hour", help="Hours into the data to start from."),
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="gridedge's data/ folder (default: the bundled one).")
    ] = None,
    status_every: float = typer.Option(10.0, "--status-every", help="Seconds between status lines (0: none)."),
) -> None:
    """Serve a PV inverter (unit 1), a battery (unit 2) and a load meter (unit 3) from real data."""
    import asyncio
    import logging

    from edge_agent.sensors.simulated_site import SITE_DEVICES, SimulatedSite, SiteServer

    # Injected faults make pymodbus log tracebacks and packet dumps; the site reports its own state.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    site = SimulatedSite(data_dir=data_dir, speed=speed, start_offset_s=start_hour * 3600.0)
    server = SiteServer(site, host=host, port=port)

    async def serve() -> None:
        await server.start_tcp()
        typer.echo(f"simulated site on {host}:{server.port}, speed x{speed:g}")
        for device, (unit_id, register_file) in SITE_DEVICES.items():
            typer.echo(f"  unit {unit_id}: {device:9s} register map firmware_configs/registers/{register_file}")
        while True:
            await asyncio.sleep(status_every if status_every > 0 else 3600.0)
            if status_every > 0:
                typer.echo(_status_line(site))

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        typer.echo("stopped")


def _status_line(site: object) -> str:
    from datetime import UTC, datetime

    from edge_agent.sensors.simulated_site import SimulatedSite

    assert isinstance(site, SimulatedSite)
    values = site.values()
    when = datetime.fromtimestamp(site.site_time, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{when}  pv {values['inverter']['ac_power']:7.0f} W  load {values['meter']['active_power']:7.0f} W  "
        f"battery {values['battery']['power']:7.0f} W soc {values['battery']['soc']:5.1f} %  "
        f"grid {values['meter']['grid_power']:7.0f} W"
    )


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
