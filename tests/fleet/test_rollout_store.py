"""Rollout records and retention in the fleet store, on SQLite and PostgreSQL (no broker: the runner that
sends is tested end to end with agent processes in tests/agent/test_rollouts.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from edge_agent.bundle import archive_digest
from edge_agent.errors import BundleFormatError, FleetError
from edge_agent.messages import AlertContent, Envelope, ModelInfo
from edge_agent.reporting.base import MessageBuilder
from gridedge.fleet.rollouts import (
    RolloutStore,
    Target,
    create_rollout,
    rollback_rollout,
)
from gridedge.fleet.store import FleetStore, Received
from gridedge.fleet.views import rollout_devices_table, rollouts_table

SITE = "farm-9"


def _flat(output: str) -> str:
    """Command-line output without rich's error box and line breaks."""
    return " ".join(output.translate(str.maketrans("│╭╮╰╯─", "      ")).split())


def _received(message: Envelope, at: float) -> Received:
    return Received(message, message.model_dump_json(), at)


def test_archive_digest_is_the_installed_bundles(archive: tuple[bytes, str]) -> None:
    manifest, digest = archive_digest(archive[0])
    assert digest == archive[1] and (manifest.name, manifest.version) == ("w1-load", "1.0.0")
    with pytest.raises(BundleFormatError, match="not a readable bundle archive"):
        archive_digest(b"not an archive")


def test_rollout_records_canaries_outcomes_and_rollback(
    store: FleetStore, store_location: dict[str, object], archive: tuple[bytes, str]
) -> None:
    now = time.time()
    for index, state in enumerate(("stopped", "online", "online", "offline", "online")):
        status = MessageBuilder(SITE, f"dev-{index}").status(1, state, None, ModelInfo(name="w1-load", version="0.9.0"))
        store.ingest([_received(status, now)])
    targets = [Target(SITE, f"dev-{index}") for index in range(5)]
    rollout = create_rollout(store, archive[0], [*targets, targets[0]], canaries=2, max_failure_ratio=0.25)
    # Canaries are devices last seen online, by name; the others form the second stage.
    assert [(d.device, d.stage) for d in rollout.devices] == [
        ("dev-1", 0), ("dev-2", 0), ("dev-0", 1), ("dev-3", 1), ("dev-4", 1)
    ]
    assert rollout.bundle_sha256 == archive[1] and rollout.state == "running" and rollout.stages == 2

    rollouts = RolloutStore(store)
    assert rollouts.archive(rollout.archive_sha256) == archive[0]
    # A claim succeeds once; a second runner finds the device taken.
    assert rollouts.set_outcome(rollout.rollout_id, targets[1], "sending", expect=("waiting",))
    assert not rollouts.set_outcome(rollout.rollout_id, targets[1], "sending", expect=("waiting",))
    rollouts.set_outcome(rollout.rollout_id, targets[1], "updated")
    rollouts.set_outcome(rollout.rollout_id, targets[2], "refused", "refused: bad signature [key B]", attempts=1)

    second = create_rollout(store, archive[0], targets[:1])
    reopened = FleetStore(**store_location, read_only=True)  # type: ignore[arg-type]
    try:
        listed = RolloutStore(reopened).list_rollouts()
        assert [r.rollout_id for r in listed] == [second.rollout_id, rollout.rollout_id]
        shown = RolloutStore(reopened).get(rollout.rollout_id)
        assert shown.counts() == {"updated": 1, "refused": 1, "waiting": 3}
        refused = shown.outcome(SITE, "dev-2")
        assert refused.reason == "refused: bad signature [key B]" and refused.attempts == 1
        with pytest.raises(FleetError, match="names 2 rollouts"):
            RolloutStore(reopened).get(rollout.rollout_id[:8])
    finally:
        reopened.close()

    undone = rollback_rollout(store, rollout.rollout_id)
    assert undone.state == "rolling-back"
    assert undone.counts() == {"revert-waiting": 1, "refused": 1, "skipped": 3}
    with pytest.raises(FleetError, match="already rolling-back"):
        rollback_rollout(store, rollout.rollout_id)


def test_rollout_tables_fit_80_columns(store: FleetStore, archive: tuple[bytes, str]) -> None:
    targets = [Target(f"site-with-a-long-name-{i}", f"inverter-with-a-long-name-{i}") for i in range(3)]
    rollout = create_rollout(store, archive[0], targets, canaries=1)
    RolloutStore(store).set_outcome(rollout.rollout_id, targets[0], "refused", "x " * 200)
    console = Console(width=80, record=True, force_terminal=False)
    rollouts = RolloutStore(store).list_rollouts()
    console.print(rollouts_table(rollouts, time.time()))
    console.print(rollout_devices_table(RolloutStore(store).get(rollout.rollout_id[:10]), time.time()))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert rollout.rollout_id in text and "1 refused, 2 waiting" in text and "canary" in text


def test_a_rollout_needs_targets_and_a_sane_ratio(store: FleetStore, archive: tuple[bytes, str]) -> None:
    with pytest.raises(FleetError, match="at least one target"):
        create_rollout(store, archive[0], [])
    with pytest.raises(FleetError, match="between 0 and 1"):
        create_rollout(store, archive[0], [Target(SITE, "a")], max_failure_ratio=1.5)
    with pytest.raises(FleetError, match="SITE/DEVICE"):
        Target.parse("no-slash")


def test_retention_forgets_old_messages_and_dead_letters_but_keeps_devices(store: FleetStore) -> None:
    now = time.time()
    old_at = now - 10 * 86400
    build = MessageBuilder(SITE, "dev-r")
    old = build.alert(1, AlertContent(severity="info", code="a", message="old"))
    old = old.model_copy(update={"ts": datetime.fromtimestamp(old_at, UTC)})
    new = build.alert(2, AlertContent(severity="info", code="a", message="new"))
    store.ingest([_received(old, old_at), _received(new, now)])
    store.dead_letter("gridedge/v1/x/y/summary", b"{", "invalid", "r1", old_at)
    store.dead_letter("gridedge/v1/x/y/summary", b"[", "invalid", "r1", now)

    removed = store.apply_retention(days=3, now=now)

    assert removed == 1  # one row on SQLite, one day partition on PostgreSQL
    assert [row["seq"] for row in store.messages(device="dev-r")] == [2]
    assert [row["payload"] for row in store.dead_letters()] == ["["]
    (device,) = store.devices()
    assert device["alerts"] == 2 and device["last_seq"] == 2
    # Nothing newer than the cutoff goes, however often it runs.
    assert store.apply_retention(days=3, now=now + 60) == 0
    assert len(store.messages(device="dev-r")) == 1


def test_deploy_command_line_records_a_group_and_refuses_no_targets(
    tmp_path: Path, archive: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from edge_agent.keys import new_keypair
    from gridedge.fleet.cli import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    database = tmp_path / "fleet.sqlite3"
    store = FleetStore(path=database)
    for site, device in (("farm-1", "inv-1"), ("farm-1", "meter-1"), ("farm-2", "inv-1")):
        store.ingest([_received(MessageBuilder(site, device).status(1, "online", None, None), time.time())])
    store.close()
    (tmp_path / "bundle.tar.gz").write_bytes(archive[0])
    key, _ = new_keypair(tmp_path / "operator", kind="operator")
    config = tmp_path / "fleet.yaml"
    config.write_text("db: fleet.sqlite3\nprobation_timeout_s: 900\ngroups:\n  inverters: ['farm-*/inv-*']\n")
    runner = CliRunner()
    common = [str(tmp_path / "bundle.tar.gz"), "--key", str(key), "--config", str(config), "--no-wait"]

    refused = runner.invoke(app, ["deploy", *common])
    assert refused.exit_code == 2 and "--site, --device SITE/DEVICE or --group" in _flat(refused.output)
    unknown = runner.invoke(app, ["deploy", *common, "--group", "pumps"])
    assert unknown.exit_code == 2 and "no group 'pumps'" in _flat(unknown.output), unknown.output

    recorded = runner.invoke(app, ["deploy", *common, "--group", "inverters", "--device", "farm-3/new-1"])
    assert recorded.exit_code == 0, recorded.output
    store = FleetStore(path=database, read_only=True)
    try:
        (rollout,) = RolloutStore(store).list_rollouts()
    finally:
        store.close()
    assert [f"{d.site}/{d.device}" for d in rollout.devices] == ["farm-1/inv-1", "farm-2/inv-1", "farm-3/new-1"]
    assert rollout.rollout_id in recorded.output and rollout.counts() == {"waiting": 3}
    assert rollout.probation_timeout_s == 900  # the config file's default
    timed = runner.invoke(app, ["deploy", *common, "--device", "farm-1/inv-1", "--probation-timeout", "120"])
    assert timed.exit_code == 0, timed.output
    store = FleetStore(path=database, read_only=True)
    try:
        assert RolloutStore(store).list_rollouts()[0].probation_timeout_s == 120
    finally:
        store.close()
    listing = runner.invoke(app, ["rollouts", "--config", str(config)], env={"COLUMNS": "80"})
    assert listing.exit_code == 0 and "3 waiting" in listing.output, listing.output


def test_a_store_from_before_the_probation_timeout_reads_and_gains_it(
    store: FleetStore, store_location: dict[str, object], archive: tuple[bytes, str]
) -> None:
    rollout = create_rollout(store, archive[0], [Target(SITE, "dev-old")])
    with store.transaction() as execute:  # what an older gridedge wrote
        execute("ALTER TABLE fleet_rollouts DROP COLUMN probation_timeout_s")
    reader = FleetStore(**store_location, read_only=True)  # type: ignore[arg-type]
    try:
        assert RolloutStore(reader).get(rollout.rollout_id).probation_timeout_s == 3600
    finally:
        reader.close()
    migrated = RolloutStore(store)
    assert migrated.get(rollout.rollout_id).probation_timeout_s == 3600
    newer = create_rollout(store, archive[0], [Target(SITE, "dev-old")], probation_timeout_s=60)
    assert migrated.get(newer.rollout_id).probation_timeout_s == 60
    with pytest.raises(FleetError, match="positive number of seconds"):
        create_rollout(store, archive[0], [Target(SITE, "dev-old")], probation_timeout_s=0)
