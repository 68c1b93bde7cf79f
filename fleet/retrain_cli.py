"""``gridedge fleet models | register-model | series | retrain``: lineage and retraining from the fleet store."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from gridedge.fleet.cli import ConfigOption, DbOption, DsnOption, open_store

TABLE_WIDTH = 80


class SelectChoice(StrEnum):
    all = "all"
    group = "group"
    drift = "drift"
    error = "error"


def models(db: DbOption = None, dsn: DsnOption = None, config: ConfigOption = None) -> None:
    """What runs where and where it came from: each device's model, its training data and code version."""
    from rich.console import Console
    from rich.table import Table

    from gridedge.fleet.models import MODEL_COLUMNS, models_table_rows, running_models

    store = open_store(db, dsn, config=config, read_only=True)
    try:
        rows = models_table_rows(running_models(store))
    finally:
        store.close()
    table = Table(
        title="models running in the fleet", title_justify="left", pad_edge=False, box=None, collapse_padding=True
    )
    for column in MODEL_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=TABLE_WIDTH).print(table)
    if not rows:
        typer.echo("no device has reported yet")


def register_model(
    bundle: Annotated[list[Path], typer.Argument(help="Bundle folder(s) to verify and register.")],
    public_key: Annotated[Path, typer.Option("--public-key", help="The fleet's bundle-signing public key.")],
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Verify bundles (signature, hashes) and record them with their lineage, so devices running them
    show where they came from and retraining can use them as champions."""
    from edge_agent.keys import load_public_key
    from gridedge.fleet.models import register_bundle

    key = load_public_key(public_key)
    store = open_store(db, dsn, config=config)
    try:
        for folder in bundle:
            manifest = register_bundle(store, folder, key)
            typer.echo(f"registered {manifest.name}@{manifest.version} from {folder}")
    finally:
        store.close()


def series(
    prune_days: Annotated[
        float | None, typer.Option(help="First forget model-step telemetry received more than this many days ago.")
    ] = None,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Model-step telemetry kept per device (what `data.fleet` trains from), and its retention."""
    from datetime import UTC, datetime

    store = open_store(db, dsn, config=config, read_only=prune_days is None)
    try:
        if prune_days is not None:
            typer.echo(f"forgot {store.apply_series_retention(prune_days)} rows older than {prune_days:g} days")
        rows = store.series_coverage()
    finally:
        store.close()
    for row in rows:
        first, last = (datetime.fromtimestamp(row[k], UTC).strftime("%Y-%m-%d %H:%M") for k in ("first_s", "last_s"))
        typer.echo(f"{row['site']}/{row['device']}: {row['steps']} steps of {row['step_s']} s, {first} .. {last}")
    if not rows:
        typer.echo("no model-step telemetry stored (devices need mqtt.telemetry.enabled and model_step)")


def retrain(
    plan_file: Annotated[Path, typer.Argument(help="Retrain plan YAML: sites, task configs, rules.")],
    key: Annotated[Path, typer.Option("--key", help="Bundle-signing private key (PEM) for the winners.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for runs, bundles, the report and deploy.json.")] = Path(
        "retrain"
    ),
    select: Annotated[
        SelectChoice, typer.Option(help="Which sites: all, a --group, drift or live error over the plan's thresholds.")
    ] = SelectChoice.drift,
    group: Annotated[str | None, typer.Option(help="The group for --select group.")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address (tcp://host:8786); default a local cluster.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes of the local cluster.")] = 2,
    db: DbOption = None,
    dsn: DsnOption = None,
    config: ConfigOption = None,
) -> None:
    """Retrain the selected sites on their own recent data, keep only challengers that beat the running model.

    Exits 1 when a site's job failed (the others still ran and are in the report).
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edge_agent.errors import ConfigError
    from gridedge.fleet import retrain as core
    from gridedge.fleet.engine import run_jobs

    if select == SelectChoice.group and not group:
        raise ConfigError("--select group needs --group NAME")
    plan, folder = core.load_plan(plan_file)
    console = Console(stderr=True)
    store = open_store(db, dsn, config=config)
    try:
        sites, skipped = core.select_sites(plan, store, select.value, group)
        jobs = core.make_jobs(plan, folder, sites, store, key, out)
    finally:
        store.close()
    console.print(f"selected {len(jobs)} of {len(plan.sites)} sites ({select.value})")
    started = time.monotonic()
    outcomes: list[core.SiteOutcome] = []
    engine = "none (no site selected)"
    if jobs:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as progress:
            rows = {job.site: progress.add_task(f"{job.site}: queued", total=1) for job in jobs}

            def show(site: str, state: str) -> None:
                progress.update(
                    rows[site], description=f"{site}: {state}", completed=state in ("ship", "keep", "failed")
                )

            outcomes, info = run_jobs(jobs, scheduler, workers, show)
        engine = info.describe()
    from edge_agent.keys import load_private_key

    store = open_store(db, dsn, config=config)
    try:
        core.hand_off(store, outcomes, load_private_key(key).public_key())
    finally:
        store.close()
    extra = {"selection": select.value + (f" {group}" if group else ""), "engine": engine,
             "seconds": time.monotonic() - started}  # fmt: skip
    paths = core.write_report(out, outcomes, skipped, extra)
    typer.echo(paths["markdown"].read_text())
    rollouts = [f"{o.site}/{o.device}: {o.rollout}" for o in outcomes if o.rollout]
    if rollouts:
        sent_by = "sent by `gridedge fleet listen --rollout-key KEY`"
        typer.echo(f"staged rollouts recorded ({sent_by}): {', '.join(rollouts)}")
    typer.echo(f"report: {paths['json']}; deploy manifest: {paths['deploy']}")
    if any(o.decision == "failed" for o in outcomes):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add these commands to ``gridedge fleet``."""
    app.command("models")(models)
    app.command("register-model")(register_model)
    app.command("series")(series)
    app.command("retrain")(retrain)
