"""``gridedge fleet``: listen for device reports, show the fleet, export CSV, regenerate MQTT schemas."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from gridedge.fleet.store import FleetStore

app = typer.Typer(
    help="Fleet receiver: listen to devices over MQTT, store, show and export.", no_args_is_help=True
)

DbOption = Annotated[
    Path, typer.Option("--db", help="SQLite file of the fleet store (used unless --dsn is given).")
]
DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn", envvar="GRIDEDGE_FLEET_DSN", help="PostgreSQL DSN; stores there instead of SQLite."
    ),
]
DEFAULT_DB = Path("fleet.sqlite3")


def open_store(db: Path, dsn: str | None, *, existing: bool = False) -> FleetStore:
    """The PostgreSQL store when a DSN is given, else the SQLite file (which must exist if ``existing``)."""
    import sqlite3

    from edge_agent.errors import FleetError
    from gridedge.fleet.store import FleetStore

    if dsn:
        return FleetStore(dsn=dsn)
    if existing and not db.is_file():
        raise FleetError(f"fleet store {db} not found; pass --db with the file `gridedge fleet listen` writes")
    try:
        return FleetStore(path=db)
    except sqlite3.Error as exc:
        raise FleetError(f"cannot open the fleet store {db}: {exc}; pass --db with a fleet SQLite file") from exc


@app.command()
def listen(
    host: Annotated[str, typer.Option(help="Broker host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Broker port.")] = 1883,
    protocol: Annotated[str, typer.Option(help="MQTT protocol: 5 or 3.1.1.")] = "5",
    group: Annotated[
        str, typer.Option(help="Shared-subscription group; receivers in one group split the fleet.")
    ] = "gridedge-fleet",
    no_share: Annotated[bool, typer.Option("--no-share", help="Subscribe without a shared group.")] = False,
    name: Annotated[str | None, typer.Option(help="Receiver name (recorded with each message).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA file: connect with TLS.")] = None,
    username_env: Annotated[str | None, typer.Option(help="Variable holding the username.")] = None,
    password_env: Annotated[str | None, typer.Option(help="Variable holding the password.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    db: DbOption = DEFAULT_DB,
    dsn: DsnOption = None,
) -> None:
    """Subscribe to every device's reports and store them, deduplicated on message id."""
    from rich.console import Console

    from edge_agent.transport import BrokerConfig, TlsConfig
    from edge_agent.yamlconfig import validate_data
    from gridedge.fleet.receiver import FleetReceiver

    broker = validate_data(
        {
            "host": host,
            "port": port,
            "protocol": protocol,
            "tls": TlsConfig(ca_file=tls_ca) if tls_ca else None,
            "username_env": username_env,
            "password_env": password_env,
        },
        BrokerConfig,
        "broker options",
    )
    store = open_store(db, dsn)
    receiver = FleetReceiver(broker, store, group=None if no_share else group, name=name)
    console = Console(stderr=True)
    console.print(f"[bold]{receiver.name}[/] listening on {host}:{port}, storing in {store.location}")
    started = time.monotonic()
    receiver.run(duration)
    elapsed = time.monotonic() - started
    stats = receiver.stats
    console.print(
        f"received {stats.received}, stored {stats.stored}, duplicates {stats.duplicates}, "
        f"invalid {stats.invalid} in {elapsed:.1f} s"
    )
    store.close()


@app.command()
def status(
    db: DbOption = DEFAULT_DB,
    dsn: DsnOption = None,
    stale_after: Annotated[
        float, typer.Option(help="Seconds without news after which an online device is flagged.")
    ] = 900.0,
) -> None:
    """Print the fleet table: state, last seen, model, alerts, drift, outbox depth."""
    from rich.console import Console
    from rich.table import Table

    store = open_store(db, dsn, existing=True)
    devices = store.devices()
    store.close()
    table = Table(title=f"gridedge fleet ({len(devices)} devices)")
    columns = ("site", "device", "state", "last seen", "model", "alerts", "drift |z|", "outbox", "dropped")
    for column in columns:
        table.add_column(column)
    now = time.time()
    colours = {"online": "green", "degraded": "yellow", "offline": "red"}
    for row in devices:
        state = row["state"] or "unknown"
        age = now - row["last_seen"]
        label = f"[{colours.get(state, 'white')}]{state}[/]"
        if state != "offline" and age > stale_after:
            label += " [red](silent)[/]"
        model = " ".join(str(part) for part in (row["model_name"], row["model_version"]) if part) or "-"
        table.add_row(
            row["site"],
            row["device"],
            label,
            f"{_age(age)} ago",
            model,
            str(row["alerts"]),
            "-" if row["drift_max"] is None else f"{row['drift_max']:.2f}",
            "-" if row["outbox_depth"] is None else str(row["outbox_depth"]),
            "-" if row["dropped"] is None else str(row["dropped"]),
        )
    Console().print(table)


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="CSV file to write.")],
    what: Annotated[str, typer.Option(help="devices or messages.")] = "devices",
    db: DbOption = DEFAULT_DB,
    dsn: DsnOption = None,
) -> None:
    """Write the device table or every stored message as CSV."""
    import csv

    if what not in ("devices", "messages"):
        raise typer.BadParameter("use --what devices or --what messages", param_hint="--what")
    store = open_store(db, dsn, existing=True)
    rows = store.devices() if what == "devices" else store.messages()
    store.close()
    from gridedge.fleet.store import DEVICE_COLUMNS, MESSAGE_COLUMNS

    columns = DEVICE_COLUMNS if what == "devices" else MESSAGE_COLUMNS
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    typer.echo(f"wrote {len(rows)} {what} to {out}")


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schemas.")] = Path("docs/mqtt/schemas"),
) -> None:
    """Regenerate the JSON Schemas of every MQTT payload from the pydantic models."""
    from edge_agent.messages import write_json_schemas

    for path in write_json_schemas(out):
        typer.echo(f"wrote {path}")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
