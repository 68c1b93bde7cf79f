"""``gridedge fleet``: listen for device reports, show the fleet, export CSV, regenerate MQTT schemas."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

from gridedge.fleet.settings import CONFIG_ENV, DB_ENV, DEFAULT_DB, DSN_ENV, Retention, resolve_store

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent.transport import BrokerConfig
    from gridedge.fleet.rollouts import Rollout, RolloutRunner, Target
    from gridedge.fleet.store import FleetStore

app = typer.Typer(
    help="Fleet receiver: listen to devices over MQTT, store, show and export.", no_args_is_help=True
)

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help=f"SQLite file of the fleet store (else ${DB_ENV}, the config file, ./{DEFAULT_DB})."),
]
DsnOption = Annotated[
    str | None, typer.Option("--dsn", help=f"PostgreSQL DSN of the fleet store (else ${DSN_ENV} or the config file).")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"Fleet config file with db:/dsn: (else ${CONFIG_ENV} or ~/.config/gridedge/fleet.yaml).",
    ),
]


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


BROKER_PARAMETERS = tuple(
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (
        ("host", HostOption, "127.0.0.1"),
        ("port", PortOption, 1883),
        ("protocol", ProtocolOption, "5"),
        ("tls_ca", TlsCaOption, None),
        ("tls_cert", TlsCertOption, None),
        ("tls_key", TlsKeyOption, None),
        ("username_env", UsernameOption, None),
        ("password_env", PasswordOption, None),
    )
)


def with_broker_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a fleet command the broker options and call it with one validated ``broker`` (its first parameter).

    Every command that talks to the broker offers the same options, spelled once here.
    """
    own = inspect.signature(command)
    hints = get_type_hints(command, include_extras=True, localns={"BrokerConfig": object})
    shown = [p.replace(annotation=hints[p.name]) for p in own.parameters.values() if p.name != "broker"]

    @functools.wraps(command)
    def run(**options: Any) -> None:
        chosen = {p.name: options.pop(p.name) for p in BROKER_PARAMETERS}
        broker = broker_config(
            chosen["host"], chosen["port"], chosen["protocol"],
            (chosen["tls_ca"], chosen["tls_cert"], chosen["tls_key"]),
            chosen["username_env"], chosen["password_env"],
        )  # fmt: skip
        command(broker, **options)

    signature = own.replace(parameters=[*shown, *BROKER_PARAMETERS])
    run.__signature__ = signature  # type: ignore[attr-defined]  # what typer reads the options from
    run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return run


def open_store(
    db: Path | None, dsn: str | None, *, existing: bool = True, config: Path | None = None, read_only: bool = False
) -> FleetStore:
    """The fleet store named by the options, environment or config file (``gridedge.fleet.settings``).

    A missing SQLite file is an error when ``existing`` (every command but ``listen``).
    """
    import sqlite3

    from edge_agent.errors import FleetError
    from gridedge.fleet.store import FleetStore

    location = resolve_store(db, dsn, config, must_exist=existing)
    if location.dsn is not None:
        return FleetStore(dsn=location.dsn, read_only=read_only)
    assert location.path is not None
    try:
        return FleetStore(path=location.path, read_only=read_only)
    except sqlite3.Error as exc:
        raise FleetError(
            f"cannot open the fleet store {location.describe()}: {exc}; pass --db with a fleet SQLite file"
        ) from exc


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
    retention_days: Annotated[
        float | None,
        typer.Option(help="Drop stored messages older than this many days (default: the config file's, else keep)."),
    ] = None,
    series_retention_days: Annotated[
        float | None,
        typer.Option(
            help="Drop model-step telemetry (retraining data) older than this many days (default: the config "
            "file's, else keep)."
        ),
    ] = None,
    rollout_key: Annotated[
        Path | None,
        typer.Option(help="Operator key: also drive the active rollouts (devices get updates when they return)."),
    ] = None,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Subscribe to every device's reports and store them, deduplicated on message id.

    Exits 1 with the cause (refused certificate, unreachable broker, refused login) when it cannot
    connect; messages it cannot store go to the dead letters (`gridedge fleet dead-letters`). With
    --rollout-key, it also drives every active rollout (give it to one listener of a group).
    """
    from rich.console import Console

    from gridedge.fleet.receiver import FleetReceiver, tune_gc

    console = Console(stderr=True)
    broker = broker_config(
        host, port, protocol, (cafile, cert, key), username_env, password_env, reconnect_max=reconnect_max
    )
    location = resolve_store(db, dsn, config, must_exist=False)
    store = open_store(db, dsn, config=config, existing=False)
    receiver = FleetReceiver(
        broker, store, group=None if no_share else group, name=name,
        retention=Retention(
            retention_days if retention_days is not None else location.retention.messages_days,
            series_retention_days if series_retention_days is not None else location.retention.series_days,
        ),
    )
    console.print(f"[bold]{receiver.name}[/] listening on {host}:{port}, storing in {store.location}")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        if rollout_key is not None:
            _drive_rollouts(stack, broker, rollout_key, db, dsn, config)
        tune_gc()
        # Said once subscribed (the writer process starts first, ~1 s): scripts may wait for this line.
        receiver.run(duration, connect_timeout_s=connect_timeout, on_subscribed=lambda: console.print("subscribed"))
    elapsed = time.monotonic() - started
    stats = receiver.stats
    console.print(
        f"received {stats.received}, stored {stats.stored}, duplicates {stats.duplicates}, "
        f"invalid {stats.invalid}, dead letters {stats.dead_letters} in {elapsed:.1f} s"
    )


def _drive_rollouts(
    stack: contextlib.ExitStack, broker: BrokerConfig, key: Path, db: Path | None, dsn: str | None,
    config: Path | None,
) -> None:
    """Run a rollout runner beside the receiver, on its own store connection, until the stack closes."""
    import threading

    from edge_agent.keys import load_private_key
    from gridedge.fleet.rollouts import RolloutRunner, drive_in_background

    private_key = load_private_key(key)
    store = open_store(db, dsn, config=config)
    stack.callback(store.close)
    runner = stack.enter_context(RolloutRunner(broker, store, private_key))
    stop = threading.Event()
    thread = drive_in_background(runner, stop)

    def halt() -> None:
        stop.set()
        thread.join(60)

    stack.callback(halt)


@app.command()
def status(
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
    stale_after: Annotated[
        float, typer.Option(help="Seconds without news after which an online device is flagged.")
    ] = 900.0,
) -> None:
    """Print the fleet table: state, last seen, model, alerts, drift, outbox depth, sequence gaps."""
    from rich.console import Console

    from gridedge.fleet.views import TABLE_LEGEND, fleet_rows, fleet_table

    store = open_store(db, dsn, config=config, read_only=True)
    try:
        rows = fleet_rows(store, time.time(), stale_after)
        dead_letters = store.dead_letter_count()
        latest_dead = store.dead_letters(limit=1)
    finally:
        store.close()
    console = Console()
    console.print(fleet_table(rows))
    console.print(TABLE_LEGEND, style="dim")
    for row in rows:
        if row.gap_ranges:
            console.print(
                f"seq gaps of {row.site}/{row.device}: {row.missing} missing ({row.gap_ranges})", markup=False
            )
    line = f"dead letters: {dead_letters}"
    if latest_dead:
        line += f" (latest: {latest_dead[0]['topic']}: {latest_dead[0]['reason'][:120]})"
    console.print(line, markup=False)


@app.command("dead-letters")
def dead_letters(
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 50,
) -> None:
    """List messages that failed validation or could not be stored: topic, reason, payload start."""
    from rich.console import Console
    from rich.table import Table

    from gridedge.fleet.views import iso_utc

    store = open_store(db, dsn, config=config, read_only=True)
    try:
        rows = store.dead_letters(limit)
        total = store.dead_letter_count()
    finally:
        store.close()
    table = Table(title=f"dead letters ({total} in all, newest {len(rows)} shown)")
    for column in ("received (UTC)", "receiver", "topic", "reason", "bytes", "payload"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            iso_utc(row["received_at"], "seconds"),
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
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Write the device table or every stored message as CSV; times are ISO 8601 UTC."""
    import csv

    from gridedge.fleet.store import DEVICE_COLUMNS, MESSAGE_COLUMNS
    from gridedge.fleet.views import TIME_COLUMNS, iso_utc

    if what not in ("devices", "messages"):
        raise typer.BadParameter("use --what devices or --what messages", param_hint="--what")
    store = open_store(db, dsn, config=config, read_only=True)
    try:
        rows = store.devices() if what == "devices" else store.messages()
    finally:
        store.close()
    for row in rows:
        for column in TIME_COLUMNS.intersection(row):
            row[column] = iso_utc(row[column])
    columns = DEVICE_COLUMNS if what == "devices" else MESSAGE_COLUMNS
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    typer.echo(f"wrote {len(rows)} {what} to {out}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps the page on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    auth_token_env: Annotated[
        str | None,
        typer.Option(help="Variable holding a token every request must carry (Authorization: Bearer, or ?token=)."),
    ] = None,
    stale_after: Annotated[
        float, typer.Option(help="Seconds without news after which an online device is flagged.")
    ] = 900.0,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the fleet as read-only web pages (fleet table, device pages with forecast vs measured).

    Put authentication in front with a reverse proxy (docs/fleet.md) or --auth-token-env.
    """
    import os

    import uvicorn

    from gridedge.fleet.web import create_app

    token = None
    if auth_token_env is not None:
        token = os.environ.get(auth_token_env)
        if not token:
            raise typer.BadParameter(f"${auth_token_env} is empty or unset", param_hint="--auth-token-env")
    store = open_store(db, dsn, config=config, read_only=True)
    typer.echo(f"fleet page on http://{host}:{port}/ (store {store.location if store.path else 'PostgreSQL'})")
    try:
        uvicorn.run(create_app(store, auth_token=token, stale_after_s=stale_after), host=host, port=port,
                    log_level="warning")
    finally:
        store.close()


@app.command()
@with_broker_options
def command(
    broker: BrokerConfig,
    target: Annotated[str, typer.Argument(help="SITE/DEVICE the command is for.")],
    name: Annotated[str, typer.Argument(help="Command: ping, status, rollback, reload-config, replay ...")],
    key: OperatorKeyOption,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Argument key=value (value read as JSON when it is); repeat.")
    ] = None,
    archive: Annotated[
        Path | None, typer.Option(help="For model-update: the signed bundle archive (.tar.gz) to send.")
    ] = None,
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
    with CommandClient(broker, timeout_s=timeout) as client:
        results = [client.send(site, device, name, request) for request in requests]
    result = results[-1]
    typer.echo(json.dumps(result, indent=2))
    if result["outcome"] == "error":
        raise typer.Exit(1)


def _deploy_targets(
    store: FleetStore, sites: list[str], devices: list[str], groups: list[str], config: Path | None
) -> list[Target]:
    """The devices named by --site (every device the store knows there), --device and --group."""
    from fnmatch import fnmatchcase

    from gridedge.fleet.rollouts import Target
    from gridedge.fleet.settings import fleet_groups

    known = [Target(row["site"], row["device"]) for row in store.devices()]
    chosen = {target for target in known if target.site in sites}
    for site in sites:
        if not any(target.site == site for target in known):
            raise typer.BadParameter(f"the fleet store knows no device of site {site!r}", param_hint="--site")
    chosen.update(Target.parse(text) for text in devices)
    defined = fleet_groups(config) if groups else {}
    for group in groups:
        if group not in defined:
            raise typer.BadParameter(
                f"no group {group!r} in the fleet config file (groups: {', '.join(sorted(defined)) or 'none'})",
                param_hint="--group",
            )
        chosen.update(t for t in known if any(fnmatchcase(str(t), pattern) for pattern in defined[group]))
    if not chosen:
        raise typer.BadParameter("name the devices with --site, --device SITE/DEVICE or --group", param_hint="--site")
    return sorted(chosen)


def _bundle_archive(bundle: Path) -> bytes:
    """The bytes of a bundle archive, packing a bundle folder in memory first."""
    import tempfile

    from edge_agent.bundle import pack_archive

    if bundle.is_dir():
        with tempfile.TemporaryDirectory() as folder:
            return pack_archive(bundle, Path(folder) / "bundle.tar.gz").read_bytes()
    if not bundle.is_file():
        raise typer.BadParameter(f"{bundle} does not exist; give a bundle archive (.tar.gz) or folder",
                                 param_hint="BUNDLE")
    return bundle.read_bytes()


def _drive(runner: RolloutRunner, rollout_id: str, timeout: float | None) -> Rollout:
    """Run one rollout, printing a line whenever its progress changes; returns its last state."""
    from gridedge.fleet.views import outcome_counts_label

    shown = ""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        rollout = runner.run([rollout_id], timeout_s=runner.poll_s * 4)[0]
        line = (
            f"{rollout.state}, stage {rollout.stage + 1}/{rollout.stages}: {outcome_counts_label(rollout.counts())}"
        )
        if line != shown:
            typer.echo(f"{time.strftime('%H:%M:%S')} {line}")
            shown = line
        if rollout.settled or (deadline is not None and time.monotonic() >= deadline):
            return rollout


def _drive_and_show(
    broker: BrokerConfig,
    store: FleetStore,
    private_key: Ed25519PrivateKey,
    rollout_id: str,
    timeouts: tuple[float | None, float],
) -> Rollout:
    """Drive one rollout (``timeouts``: the whole run, each device reply), then print it device by device."""
    from rich.console import Console

    from gridedge.fleet.rollouts import RolloutRunner
    from gridedge.fleet.views import rollout_devices_table

    timeout, command_timeout = timeouts
    with RolloutRunner(broker, store, private_key, timeout_s=command_timeout) as runner:
        rollout = _drive(runner, rollout_id, timeout)
    Console().print(rollout_devices_table(rollout, time.time()))
    return rollout


@app.command()
@with_broker_options
def deploy(
    broker: BrokerConfig,
    bundle: Annotated[Path, typer.Argument(help="Signed bundle archive (.tar.gz) or bundle folder.")],
    key: OperatorKeyOption,
    site: Annotated[list[str] | None, typer.Option("--site", help="Every known device of this site; repeat.")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="One device, SITE/DEVICE; repeat.")] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="A group of the fleet config file (groups:); repeat.")
    ] = None,
    canaries: Annotated[int, typer.Option(help="Devices updated first; the rest wait for their probation.")] = 1,
    max_failure_ratio: Annotated[
        float, typer.Option(help="Halt when more than this share of the started devices failed.")
    ] = 0.2,
    allow_downgrade: Annotated[
        bool, typer.Option(help="Let devices install a lower version of the model they run (signed).")
    ] = False,
    probation_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a device may stay on probation after the install before it counts as failed "
            "(probation-timeout). Default: probation_timeout_s of the config file, else 3600.",
            min=1,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Drive the rollout until it ends (or --timeout); else only record it.")
    ] = True,
    timeout: Annotated[
        float | None, typer.Option(help="Stop waiting after this many seconds; the rollout stays active.")
    ] = None,
    command_timeout: Annotated[float, typer.Option(help="Seconds to wait for each device reply.")] = 30.0,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Roll a signed model bundle out to devices in stages: canaries first, the rest once every canary
    passed its probation; halts when too many fail. Every device's outcome is kept in the fleet store.

    Devices offline now get the update when they come back, while a runner runs: this command with
    --wait, or `gridedge fleet listen --rollout-key`. Exits 1 when the rollout halted."""
    from edge_agent.keys import load_private_key
    from gridedge.fleet.rollouts import DEFAULT_PROBATION_TIMEOUT_S, HALTED, create_rollout
    from gridedge.fleet.settings import fleet_file_config

    private_key = load_private_key(key)
    archive = _bundle_archive(bundle)
    if probation_timeout is None:
        probation_timeout = fleet_file_config(config).probation_timeout_s or DEFAULT_PROBATION_TIMEOUT_S
    with contextlib.closing(open_store(db, dsn, config=config)) as store:
        targets = _deploy_targets(store, site or [], device or [], group or [], config)
        rollout = create_rollout(
            store, archive, targets, canaries=canaries, max_failure_ratio=max_failure_ratio,
            allow_downgrade=allow_downgrade, probation_timeout_s=probation_timeout,
        )
        typer.echo(
            f"rollout {rollout.rollout_id}: {rollout.bundle_name} {rollout.bundle_version} to {len(targets)} "
            f"devices, {min(canaries, len(targets))} canaries first"
        )
        if not wait:
            typer.echo("recorded; `gridedge fleet listen --rollout-key ...` or `fleet deploy --wait` drives it")
            return
        rollout = _drive_and_show(broker, store, private_key, rollout.rollout_id, (timeout, command_timeout))
    if rollout.reason:
        typer.echo(f"{rollout.state}: {rollout.reason}")
    if rollout.state == HALTED:
        raise typer.Exit(1)


@app.command()
def rollouts(
    rollout: Annotated[str | None, typer.Argument(help="Show this rollout's devices (id or unique prefix).")] = None,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """List the rollouts (bundle, state, stage, devices per outcome), or one rollout device by device."""
    from rich.console import Console

    from gridedge.fleet.rollouts import RolloutStore
    from gridedge.fleet.views import rollout_devices_table, rollouts_table

    store = open_store(db, dsn, config=config, read_only=True)
    try:
        recorded = RolloutStore(store)
        console = Console()
        if rollout is None:
            console.print(rollouts_table(recorded.list_rollouts(), time.time()))
            return
        shown = recorded.get(rollout)
    finally:
        store.close()
    console.print(rollout_devices_table(shown, time.time()))
    if shown.reason:
        console.print(f"{shown.state}: {shown.reason}", markup=False)


@app.command()
@with_broker_options
def rollback(
    broker: BrokerConfig,
    rollout: Annotated[str, typer.Argument(help="The rollout to undo (id or unique prefix).")],
    key: OperatorKeyOption,
    wait: Annotated[bool, typer.Option(help="Send the rollbacks now (until done or --timeout).")] = True,
    timeout: Annotated[float | None, typer.Option(help="Stop waiting after this many seconds.")] = None,
    command_timeout: Annotated[float, typer.Option(help="Seconds to wait for each device reply.")] = 30.0,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Undo a rollout: every device it installed gets a signed `rollback` (back to its previous bundle);
    devices not yet sent are skipped. Offline devices are rolled back when they return."""

    from edge_agent.keys import load_private_key
    from gridedge.fleet.rollouts import rollback_rollout

    private_key = load_private_key(key)
    with contextlib.closing(open_store(db, dsn, config=config)) as store:
        marked = rollback_rollout(store, rollout)
        typer.echo(f"rolling back {marked.rollout_id}: {marked.counts().get('revert-waiting', 0)} devices to revert")
        if not wait:
            return
        marked = _drive_and_show(broker, store, private_key, marked.rollout_id, (timeout, command_timeout))
    if marked.counts().get("revert-failed"):
        raise typer.Exit(1)


@app.command("replay-gaps")
@with_broker_options
def replay_gaps(
    broker: BrokerConfig,
    key: OperatorKeyOption,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device (with --site).")] = None,
    timeout: TimeoutOption = 30.0,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Ask devices to replay the sequence gaps of the fleet store (signed `replay` commands); ranges a
    device no longer holds are marked unavailable. A running `fleet listen` stores what is replayed."""
    from edge_agent.keys import load_private_key
    from gridedge.fleet.commands import CommandClient
    from gridedge.fleet.commands import replay_gaps as replay

    private_key = load_private_key(key)
    store = open_store(db, dsn, config=config)
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


def _lineage_and_retraining() -> None:
    from gridedge.fleet.retrain_cli import register

    register(app)


_lineage_and_retraining()
