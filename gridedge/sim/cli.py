"""``gridedge sim site``: the simulated site served over real Modbus, for demos, tests and a technician
without hardware. Central-side: the device package holds no simulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sim_app = typer.Typer(help="Simulated devices served over real Modbus.", no_args_is_help=True)


@sim_app.command("site")
def sim_site(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(5020, "--port", help="Modbus TCP port (0 picks a free one)."),
    speed: float = typer.Option(1.0, "--speed", help="Time acceleration: 60 plays one minute per second."),
    start_hour: float = typer.Option(0.0, "--start-hour", help="Hours into the data to start from."),
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="gridedge's data/ folder (default: the shipped one).")
    ] = None,
    status_every: float = typer.Option(10.0, "--status-every", help="Seconds between status lines (0: none)."),
) -> None:
    """Serve a PV inverter (unit 1), a battery (unit 2) and a load meter (unit 3) from real data."""
    import asyncio
    import logging

    from gridedge.sim.site import SITE_DEVICES, SimulatedSite, SiteServer

    # Injected faults make pymodbus log tracebacks and packet dumps; the site reports its own state.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    site = SimulatedSite(data_dir=data_dir, speed=speed, start_offset_s=start_hour * 3600.0)
    server = SiteServer(site, host=host, port=port)

    async def serve() -> None:
        await server.start_tcp()
        typer.echo(f"simulated site on {host}:{server.port}, speed x{speed:g}")
        for device, (unit_id, register_file) in SITE_DEVICES.items():
            typer.echo(f"  unit {unit_id}: {device:9s} register_map: {Path(register_file).stem}")
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

    from gridedge.sim.site import SimulatedSite

    assert isinstance(site, SimulatedSite)
    values = site.values()
    when = datetime.fromtimestamp(site.site_time, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{when}  pv {values['inverter']['ac_power']:7.0f} W  load {values['meter']['active_power']:7.0f} W  "
        f"battery {values['battery']['power']:7.0f} W soc {values['battery']['soc']:5.1f} %  "
        f"grid {values['meter']['grid_power']:7.0f} W"
    )
