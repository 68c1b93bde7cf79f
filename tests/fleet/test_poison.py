"""Poison messages, forged identities, sequence gaps and broker crashes against a real Mosquitto.

Each test reproduces a defect of issue 12: one unstorable message used to stop fleet storage for good
(retried for ever, even across restarts, and SIGINT did not stop it); a device could rewrite another
device's record; a receiver needed up to a minute to come back after a broker crash; the fleet could
not tell which messages it never received.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from edge_agent.messages import AlertContent, SummaryContent
from edge_agent.reporting.base import MessageBuilder
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig
from edge_agent.watchdog import RestartPolicy
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.cli import app
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.store import FleetStore, Received

pytestmark = pytest.mark.mqtt
REPO = Path(__file__).resolve().parents[2]


def raw_alert(site: str, device: str, seq: int, message: str = "hot") -> bytes:
    """An alert as a device would publish it, with fields the caller may push out of bounds."""
    document = MessageBuilder(site, device).alert(0, AlertContent(severity="critical", code="x", message="m"))
    payload: dict[str, Any] = json.loads(document.model_dump_json())
    payload.update(seq=seq, message=message)
    return json.dumps(payload).encode()


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_poison_messages_are_dead_lettered_and_the_rest_keep_flowing(
    broker: LocalMosquitto, store: FleetStore
) -> None:
    site, device = f"s-{uuid.uuid4().hex[:6]}", "ctrl-1"
    topic = f"gridedge/v1/{site}/{device}/alert"
    receiver = FleetReceiver(BrokerConfig(port=broker.port), store, group=f"g-{uuid.uuid4().hex[:6]}")
    receiver.start()
    assert receiver.wait_connected(5)
    try:
        publish(broker.port, [
            (topic, raw_alert(site, device, 2**64)),  # OverflowError in SQLite
            (topic, raw_alert(site, device, 2**63)),  # bigint out of range in PostgreSQL
            (topic, raw_alert(site, device, 5, message="nul \u0000 inside")),  # PostgreSQL text refuses NUL
            (topic, b"\xff\x00 not json"),
            (topic, raw_alert(site, device, 6)),
        ])
        assert wait_until(lambda: len(store.messages(site=site)) == 1, 5), "the valid alert was never stored"
        assert wait_until(lambda: store.dead_letter_count() == 4, 5)
    finally:
        receiver.stop()
    assert [row["seq"] for row in store.messages(site=site)] == [6]
    letters = store.dead_letters()
    assert {row["topic"] for row in letters} == {topic}
    reasons = " | ".join(row["reason"] for row in letters)
    assert "less than or equal to 9223372036854775807" in reasons and "should match pattern" in reasons
    assert "\x00" not in " ".join(row["payload"] for row in letters)
    # The store also holds the retained statuses other tests left on the session's broker.
    assert receiver.stats.dead_letters == 4 and receiver.stats.stored == len(store.messages())


def test_the_store_dead_letters_what_the_database_refuses_and_keeps_the_rest(store: FleetStore) -> None:
    build = MessageBuilder("farm-1", "inv-1")
    good = [build.alert(seq, AlertContent(severity="info", code="ok", message="fine")) for seq in (1, 2)]
    # Past validation (a model built in code, or a schema bound forgotten): the database must not loop.
    too_big = good[0].model_copy(update={"seq": 2**64, "message_id": uuid.uuid4().hex})
    items = [
        Received(good[0], good[0].model_dump_json(), time.time()),
        Received(too_big, too_big.model_dump_json(), time.time()),
        Received(good[1], good[1].model_dump_json(), time.time()),
    ]
    new, refused = store.ingest_isolating(items, "r1")
    assert new == 2 and [item.message.seq for item, _ in refused] == [2**64]
    assert "cannot be stored" in refused[0][1]
    assert [row["seq"] for row in store.messages()] == [1, 2]


def test_a_device_cannot_rewrite_another_devices_record(broker: LocalMosquitto, store: FleetStore) -> None:
    site = f"probe-{uuid.uuid4().hex[:6]}"
    receiver = FleetReceiver(BrokerConfig(port=broker.port), store, group=f"g-{uuid.uuid4().hex[:6]}")
    receiver.start()
    assert receiver.wait_connected(5)
    builder = MessageBuilder(site, "ctrl-2")
    forged = builder.status(10**9, "offline", "evil", None).model_dump_json().encode()
    honest = MessageBuilder(site, "ctrl-1").alert(3, AlertContent(severity="info", code="ok", message="m"))
    try:
        # ctrl-1 publishes only on its own topics (what the broker ACL allows), naming ctrl-2 inside.
        publish(broker.port, [
            (f"gridedge/v1/{site}/ctrl-1/status", forged),
            (f"gridedge/v1/{site}/ctrl-1/alert", honest.model_dump_json().encode()),
        ])
        assert wait_until(lambda: len(store.messages(site=site)) == 1 and store.dead_letter_count() == 1, 5)
    finally:
        receiver.stop()
    assert [row["device"] for row in store.devices() if row["site"] == site] == ["ctrl-1"]
    assert "identity mismatch" in store.dead_letters()[0]["reason"]


def test_sequence_gaps_are_found_and_shown_in_fleet_status(tmp_path: Path) -> None:
    database = tmp_path / "fleet.sqlite3"
    store = FleetStore(path=database)
    build = MessageBuilder("farm-1", "inv-1")
    seqs = [0, 1, 2, 3, 4, 7, 9, 10]
    batches = [seqs[:3], seqs[5:], seqs[3:5]]  # out of order, in several transactions
    for batch in batches:
        store.ingest([
            Received(m, m.model_dump_json(), time.time())
            for m in (build.alert(seq, AlertContent(severity="info", code="c", message="m")) for seq in batch)
        ])
    assert store.gaps() == {("farm-1", "inv-1"): [(5, 6), (8, 8)]}
    store.mark_unavailable("farm-1", "inv-1", [(5, 6)])
    assert store.gaps() == {("farm-1", "inv-1"): [(8, 8)]}
    store.dead_letter("gridedge/v1/farm-1/inv-1/alert", b"\x00bad", "invalid alert: boom", "r1", time.time())
    store.close()
    shown = CliRunner().invoke(app, ["status", "--db", str(database)], env={"COLUMNS": "220"})
    assert shown.exit_code == 0, shown.output
    assert "1 missing (8)" in shown.output and "dead letters: 1" in shown.output
    listed = CliRunner().invoke(app, ["dead-letters", "--db", str(database)], env={"COLUMNS": "220"})
    assert listed.exit_code == 0 and "invalid alert: boom" in listed.output and "\\x00bad" in listed.output


def test_cli_listener_stores_past_a_poison_message_and_stops_promptly_on_sigint(
    broker: LocalMosquitto, tmp_path: Path, wait_subscribed: Callable[[subprocess.Popen[str]], None]
) -> None:
    database = tmp_path / "fleet.sqlite3"
    site = f"s-{uuid.uuid4().hex[:6]}"
    listener = subprocess.Popen(
        [sys.executable, "-m", "gridedge.cli", "fleet", "listen", "--port", str(broker.port),
         "--db", str(database), "--group", f"cli-{uuid.uuid4().hex[:6]}"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_subscribed(listener)
        topic = f"gridedge/v1/{site}/ctrl-1/alert"
        publish(broker.port, [(topic, raw_alert(site, "ctrl-1", 2**64)), (topic, raw_alert(site, "ctrl-1", 1))])

        def stored() -> int:
            with sqlite3.connect(database) as db:
                return int(db.execute("SELECT COUNT(*) FROM fleet_messages WHERE site = ?", (site,)).fetchone()[0])

        assert wait_until(stored, 5)
        listener.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = listener.communicate(timeout=10)
        assert time.monotonic() - started < 3, "SIGINT took too long"
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, err
    assert "dead letters 1" in err


def test_listener_reconnects_within_seconds_after_a_broker_kill(
    tmp_path: Path, wait_subscribed: Callable[[subprocess.Popen[str]], None]
) -> None:
    database = tmp_path / "fleet.sqlite3"
    with LocalMosquitto(tmp_path / "broker") as broker:
        listener = subprocess.Popen(
            [sys.executable, "-m", "gridedge.cli", "fleet", "listen", "--port", str(broker.port),
             "--db", str(database), "--no-share"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        config = MqttConfig.model_validate({
            "site": "farm-1", "device": "inv-1",
            "broker": {"port": broker.port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
            "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
            "command_staging_dir": str(tmp_path / "staging"),
        })
        reporter = MqttReporter(config)
        reporter.start()
        try:
            wait_subscribed(listener)

            def summaries() -> int:
                if not database.exists():
                    return 0
                with sqlite3.connect(database) as db:
                    return int(db.execute("SELECT COUNT(*) FROM fleet_messages WHERE kind='summary'").fetchone()[0])

            now = datetime.now(UTC)
            reporter.publish_summary(SummaryContent(window_start=now, window_end=now))
            assert wait_until(lambda: summaries() == 1, 5)
            broker.kill()
            time.sleep(8)  # long enough for paho's default backoff to have grown past several seconds
            broker.start()
            restarted = time.monotonic()
            assert reporter.wait_connected(5)

            def publish_and_check() -> bool:
                # The broker lost every session: what is published before the listener resubscribes
                # is lost (gap detection finds that), so keep publishing until one is stored.
                reporter.publish_summary(SummaryContent(window_start=now, window_end=now))
                time.sleep(0.2)
                return summaries() >= 2

            stored_again = wait_until(publish_and_check, 10)
            reconnect_s = time.monotonic() - restarted
        finally:
            reporter.close()
            listener.send_signal(signal.SIGINT)
            _, err = listener.communicate(timeout=10)
        assert stored_again, err
        assert reconnect_s < 3.5, f"the listener took {reconnect_s:.1f} s to store again after the restart"


@pytest.mark.parametrize("writer_process", [False, True], ids=["in-process", "writer-process"])
def test_a_dead_writer_thread_is_restarted_alerted_and_storage_goes_on(
    broker: LocalMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture, writer_process: bool
) -> None:
    site, device = f"s-{uuid.uuid4().hex[:6]}", "ctrl-1"
    topic = f"gridedge/v1/{site}/{device}/alert"
    store = FleetStore(path=tmp_path / "fleet.sqlite3")
    policy = RestartPolicy(max_restarts=5, restart_window_s=60, restart_delay_s=0.05)
    receiver = FleetReceiver(
        BrokerConfig(port=broker.port), store, group=f"g-{uuid.uuid4().hex[:6]}", restart_policy=policy,
        writer_process=writer_process,
    )  # fmt: skip
    receiver.start()
    assert receiver.wait_connected(10)
    try:
        receiver.watchdog.inject_fault("writer", RuntimeError("injected"))
        assert wait_until(lambda: receiver.watchdog.restarts["writer"] == 1, 10)
        assert receiver.watchdog.is_alive("writer")
        publish(broker.port, [(topic, raw_alert(site, device, 1))])
        assert wait_until(lambda: len(store.messages(site=site)) == 1, 10), "storage stopped with the writer"
    finally:
        receiver.stop()
        store.close()
    alerts = [r for r in caplog.records if r.levelname == "CRITICAL" and "worker-died" in r.getMessage()]
    assert len(alerts) == 1 and "writer" in alerts[0].getMessage() and "injected" in alerts[0].getMessage()


def test_a_killed_writer_process_is_restarted_alerted_and_loses_nothing(
    broker: LocalMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site, device = f"s-{uuid.uuid4().hex[:6]}", "ctrl-1"
    topic = f"gridedge/v1/{site}/{device}/alert"
    store = FleetStore(path=tmp_path / "fleet.sqlite3")
    receiver = FleetReceiver(BrokerConfig(port=broker.port), store, group=f"g-{uuid.uuid4().hex[:6]}")
    receiver.start()
    assert receiver.wait_connected(10)
    try:
        publish(broker.port, [(topic, raw_alert(site, device, 1))])
        assert wait_until(lambda: len(store.messages(site=site)) == 1, 10)
        os.kill(receiver.writer_pid, signal.SIGKILL)
        publish(broker.port, [(topic, raw_alert(site, device, seq)) for seq in (2, 3)])
        assert wait_until(lambda: len(store.messages(site=site)) == 3, 30), "messages lost with the writer"
        assert receiver.stats.writer_process_restarts == 1
    finally:
        receiver.stop()
        store.close()
    assert any(r.levelname == "CRITICAL" and "writer-process-died" in r.getMessage() for r in caplog.records)
