"""``gridedge fleet``: listen for device reports, show the fleet, export CSV, regenerate MQTT schemas."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from edge_agent.transport import BrokerConfig
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


HostOption = Annotated[str, typer.Option(help="Broker host.")]
PortOption = Annotated[int, typer.Option(help="Broker port.")]
ProtocolOption = Annotated[str, typer.Option(help="MQTT protocol: 5 or 3.1.1.")]
UsernameOption = Annotated[str | None, typer.Option(help="Variable holding the username.")]
PasswordOption = Annotated[str | None, typer.Option(help="Variable holding the password.")]
TlsCaOption = Annotated[Path | None, typer.Option("--tls-ca", help="CA file of the broker: connect with TLS.")]
TlsCertOption = Annotated[Path | None, typer.Option("--tls-cert", help="Client certificate (PEM) for mutual TLS.")]
TlsKeyOption = Annotated[Path | None, typer.Option("--tls-key", help="Private key (PEM) of the client certificate.")]
OperatorKeyOption = Annotated[
    Path, typer.Option("--key", help="The fleet operator's private key (gridedge keys new --kind operator).")
]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait for each reply.")]


def broker_config(
    host: str,
    port: int,
    protocol: str,
    tls_files: tuple[Path | None, Path | None, Path | None],
    username_env: str | None,
    password_env: str | None,
    reconnect_max: float = 2.0,
) -> BrokerConfig:
    """The broker settings of a fleet command line; a bad combination is a usage error naming it."""
    from edge_agent.transport import BrokerConfig
    from edge_agent.yamlconfig import validate_data

    ca_file, cert_file, key_file = tls_files
    tls = None
    if ca_file or cert_file or key_file:
        tls = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    return validate_data(
        {
            "host": host,
            "port": port,
            "protocol": protocol,
            "tls": tls,
            "username_env": username_env,
            "password_env": password_env,
            "reconnect_min_s": min(0.5, reconnect_max),
            "reconnect_max_s": reconnect_max,
        },
        BrokerConfig,
        "broker options",
    )


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
    cafile: Annotated[
        Path | None, typer.Option("--cafile", "--tls-ca", help="CA file of the broker: connect with TLS.")
    ] = None,
    cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")] = None,
    key: Annotated[Path | None, typer.Option(help="Private key (PEM) of the client certificate.")] = None,
    reconnect_max: Annotated[
        float, typer.Option(help="Longest wait between reconnect attempts, seconds (a broker restart costs this).")
    ] = 2.0,
    connect_timeout: Annotated[
        float, typer.Option(help="Give up (exit 1) when the first connection fails for this long, seconds.")
    ] = 10.0,
    username_env: Annotated[str | None, typer.Option(help="Variable holding the username.")] = None,
    password_env: Annotated[str | None, typer.Option(help="Variable holding the password.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    db: DbOption = DEFAULT_DB,
    dsn: DsnOption = None,
) -> None:
    """Subscribe to every device's reports and store them, deduplicated on message id.

    Exits 1 with the cause (refused certificate, unreachable broker, refused login) when it cannot
    connect; messages it cannot store go to the dead letters (`gridedge fleet dead-letters`).
    """
    from rich.console import Console

    from gridedge.fleet.receiver import FleetReceiver

    console = Console(stderr=True)
    broker = broker_config(
        host, port, protocol, (cafile, cert, key), username_env, password_env, reconnect_max=reconnect_max
    )
    store = open_store(db, dsn)
    receiver = FleetReceiver(broker, store, group=None if no_share else group, name=name)
    console.print(f"[bold]{receiver.name}[/] listening on {host}:{port}, storing in {store.location}")
    started = time.monotonic()
    try:
        receiver.run(duration, connect_timeout_s=connect_timeout)
    finally:
        store.close()
    elapsed = time.monotonic() - started
    stats = receiver.stats
    console.print(
        f"received {stats.received}, stored {stats.stored}, duplicates {stats.duplicates}, "
        f"invalid {stats.invalid}, dead letters {stats.dead_letters} in {elapsed:.1f} s"
    )


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
    gaps = store.gaps()
    dead_letters = store.dead_letter_count()
    latest_dead = store.dead_letters(limit=1)
    store.close()
    table = Table(title=f"gridedge fleet ({len(devices)} devices)")
    columns = (
        "site", "device", "state", "last seen", "model", "alerts", "drift |z|", "outbox", "dropped", "seq gaps"
    )
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
            _gap_label(gaps.get((row["site"], row["device"]), [])),
        )
    console = Console()
    console.print(table)
    line = f"dead letters: {dead_letters}"
    if latest_dead:
        line += f" (latest: {latest_dead[0]['topic']}: {latest_dead[0]['reason'][:120]})"
    console.print(line, markup=False)


@app.command("dead-letters")
def dead_letters(
    db: DbOption = DEFAULT_DB,
    dsn: DsnOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 50,
) -> None:
    """List messages that failed validation or could not be stored: topic, reason, payload start."""
    from rich.console import Console
    from rich.table import Table

    store = open_store(db, dsn)
    rows = store.dead_letters(limit)
    total = store.dead_letter_count()
    store.close()
    table = Table(title=f"dead letters ({total} in all, newest {len(rows)} shown)")
    for column in ("received", "receiver", "topic", "reason", "bytes", "payload"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["received_at"])),
            row["receiver"],
            row["topic"],
            row["reason"][:300],
            str(row["payload_bytes"]),
            row["payload"][:200],
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
def command(
    target: Annotated[str, typer.Argument(help="SITE/DEVICE the command is for.")],
    name: Annotated[str, typer.Argument(help="Command: ping, status, rollback, reload-config, replay ...")],
    key: OperatorKeyOption,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Argument key=value (value read as JSON when it is); repeat.")
    ] = None,
    archive: Annotated[
        Path | None, typer.Option(help="For model-update: the signed bundle archive (.tar.gz) to send.")
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 1883,
    protocol: ProtocolOption = "5",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    username_env: UsernameOption = None,
    password_env: PasswordOption = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Sign a command with the operator key, send it to one device and print its result.

    Exits 1 when the device answers with an error (refused, bad arguments ...), 2 when it cannot be
    reached."""
    from edge_agent.keys import load_private_key
    from edge_agent.reporting.commands import model_update_requests
    from gridedge.fleet.commands import CommandClient, parse_arg, sign_command, sign_request

    site, slash, device = target.partition("/")
    if not slash or not site or not device or "/" in device:
        raise typer.BadParameter("give the target as SITE/DEVICE", param_hint="TARGET")
    try:
        args = dict(parse_arg(text) for text in arg or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--arg") from exc
    private_key = load_private_key(key)
    if name == "model-update":
        if archive is None:
            raise typer.BadParameter("model-update needs --archive", param_hint="--archive")
        allow_downgrade = bool(args.pop("allow_downgrade", False))
        requests = [
            sign_request(private_key, site, device, name, request)
            for request in model_update_requests(archive.read_bytes(), allow_downgrade=allow_downgrade)
        ]
    else:
        requests = [sign_command(private_key, site, device, name, args)]
    broker = broker_config(host, port, protocol, (tls_ca, tls_cert, tls_key), username_env, password_env)
    with CommandClient(broker, timeout_s=timeout) as client:
        results = [client.send(site, device, name, request) for request in requests]
    result = results[-1]
    typer.echo(json.dumps(result, indent=2))
    if result["outcome"] == "error":
        raise typer.Exit(1)


@app.command("replay-gaps")
def replay_gaps(
    key: OperatorKeyOption,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device (with --site).")] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 1883,
    protocol: ProtocolOption = "5",
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    username_env: UsernameOption = None,
    password_env: PasswordOption = None,
    timeout: TimeoutOption = 30.0,
    db: DbOption = DEFAULT_DB,
    dsn: DsnOption = None,
) -> None:
    """Ask devices to replay the sequence gaps of the fleet store (signed `replay` commands); ranges a
    device no longer holds are marked unavailable. A running `fleet listen` stores what is replayed."""
    from edge_agent.keys import load_private_key
    from gridedge.fleet.commands import CommandClient
    from gridedge.fleet.commands import replay_gaps as replay

    private_key = load_private_key(key)
    broker = broker_config(host, port, protocol, (tls_ca, tls_cert, tls_key), username_env, password_env)
    store = open_store(db, dsn, existing=True)
    try:
        with CommandClient(broker, timeout_s=timeout) as client:
            reports = replay(store, client, private_key, site, device)
    finally:
        store.close()
    for report in reports:
        line = (
            f"{report.site}/{report.device}: asked {_gap_label(report.requested)}, replayed {report.replayed}, "
            f"unavailable {_gap_label(report.unavailable)}"
        )
        typer.echo(line + (f", error: {report.error}" if report.error else ""))
    if not reports:
        typer.echo("no sequence gaps")
    if any(report.error for report in reports):
        raise typer.Exit(1)


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schemas.")] = Path("docs/mqtt/schemas"),
) -> None:
    """Regenerate the JSON Schemas of every MQTT payload from the pydantic models."""
    from edge_agent.messages import write_json_schemas

    for path in write_json_schemas(out):
        typer.echo(f"wrote {path}")


def _gap_label(gaps: list[tuple[int, int]]) -> str:
    if not gaps:
        return "-"
    missing = sum(last - first + 1 for first, last in gaps)
    shown = ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in gaps[:3])
    return f"{missing} missing ({shown}{', ...' if len(gaps) > 3 else ''})"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
