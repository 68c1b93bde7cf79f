"""Receivers against a real Mosquitto: a shared subscription splits the load, the CLI works."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.messages import AlertContent, OutboxStats, SummaryContent, device_topic
from edge_agent.reporting.base import MessageBuilder
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig, make_client
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.cli import app
from gridedge.fleet.receiver import FleetReceiver, subscriptions
from gridedge.fleet.store import FleetStore

pytestmark = pytest.mark.mqtt
REPO = Path(__file__).resolve().parents[2]


def reporter_for(port: int, tmp_path: Path, device: str) -> MqttReporter:
    config = MqttConfig.model_validate({
        "site": "farm-1", "device": device,
        "broker": {"port": port, "reconnect_min_s": 0.05},
        "outbox": {"path": str(tmp_path / f"{device}.sqlite3")},
        "command_staging_dir": str(tmp_path / "staging"),
    })
    reporter = MqttReporter(config)
    reporter.start()
    assert reporter.wait_connected(5)
    return reporter


def summary() -> SummaryContent:
    now = datetime.now(UTC)
    return SummaryContent(window_start=now, window_end=now)


def test_subscriptions_share_everything_but_status() -> None:
    assert subscriptions("g") == [
        "gridedge/v1/+/+/status",
        "$share/g/gridedge/v1/+/+/summary",
        "$share/g/gridedge/v1/+/+/alert",
        "$share/g/gridedge/v1/+/+/telemetry",
        "$share/g/gridedge/v1/+/+/cmd/+/result",
    ]
    assert all(not topic.startswith("$share") for topic in subscriptions(None))


def test_two_receivers_on_a_shared_subscription_split_without_loss(
    broker: LocalMosquitto, store: FleetStore, store_location: dict[str, object], tmp_path: Path
) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    second_store = FleetStore(**store_location)  # type: ignore[arg-type]
    # Unique names: a receiver resumes the persistent session of its name, subscriptions included.
    names = [f"left-{group}", f"right-{group}"]
    receivers = [
        FleetReceiver(BrokerConfig(port=broker.port), opened, group=group, name=name)
        for opened, name in zip((store, second_store), names, strict=True)
    ]
    for receiver in receivers:
        receiver.start()
        assert receiver.wait_connected(5)
    time.sleep(0.2)
    devices = [f"inv-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    reporters = [reporter_for(broker.port, tmp_path, device) for device in devices]
    try:
        for _ in range(150):
            for reporter in reporters:
                reporter.publish_summary(summary())
        assert all(reporter.flush(10) for reporter in reporters)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(len(store.messages(device=d, kind="summary")) for d in devices) < 300:
            time.sleep(0.1)
    finally:
        for reporter in reporters:
            reporter.close()
        for receiver in receivers:
            receiver.stop()
        second_store.close()
    rows = [row for device in devices for row in store.messages(device=device, kind="summary")]
    assert len(rows) == 300 and len({row["message_id"] for row in rows}) == 300
    by_receiver = {name: sum(row["receiver"] == name for row in rows) for name in names}
    assert min(by_receiver.values()) > 50, by_receiver
    assert sum(receiver.stats.duplicates for receiver in receivers) <= 10  # only status copies


def test_cli_listen_status_and_export(
    broker: LocalMosquitto, tmp_path: Path, wait_subscribed: Callable[[subprocess.Popen[str]], None]
) -> None:
    database = tmp_path / "fleet.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    listener = subprocess.Popen(
        [sys.executable, "-m", "gridedge.cli", "fleet", "listen", "--port", str(broker.port),
         "--db", str(database), "--group", f"cli-{uuid.uuid4().hex[:6]}", "--duration", "4"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    wait_subscribed(listener)
    device = f"inv-{uuid.uuid4().hex[:6]}"
    reporter = reporter_for(broker.port, tmp_path, device)
    reporter.publish_summary(summary())
    reporter.publish_alert(AlertContent(severity="critical", code="overtemp", message="hot"))
    assert reporter.flush(5)
    _, err = listener.communicate(timeout=30)
    reporter.close()
    assert listener.returncode == 0, err
    assert "stored" in err

    runner = CliRunner()
    shown = runner.invoke(app, ["status", "--db", str(database)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert device in shown.output and "online" in shown.output
    out = tmp_path / "devices.csv"
    exported = runner.invoke(app, ["export", "--db", str(database), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    (row,) = [r for r in csv.DictReader(out.open()) if r["device"] == device]
    assert row["alerts"] == "1" and row["last_alert"] == "critical: overtemp"
    messages = tmp_path / "messages.csv"
    export_messages = ["export", "--what", "messages", "--db", str(database), "--out", str(messages)]
    assert runner.invoke(app, export_messages).exit_code == 0
    kinds = sorted(r["kind"] for r in csv.DictReader(messages.open()) if r["device"] == device)
    assert kinds == ["alert", "status", "summary"]
    refused = runner.invoke(app, ["export", "--what", "nonsense", "--db", str(database), "--out", str(messages)])
    assert refused.exit_code != 0


def test_a_sigkilled_listener_loses_nothing_and_stores_nothing_twice(
    broker: LocalMosquitto, tmp_path: Path, wait_subscribed: Callable[[subprocess.Popen[str]], None]
) -> None:
    """Acknowledged only after the commit: a listener killed while it drains a stream leaves what it did
    not acknowledge in its persistent session, and the next listener of its name stores that, each once."""
    database = tmp_path / "fleet.sqlite3"
    tag = uuid.uuid4().hex[:6]
    listen = [sys.executable, "-m", "gridedge.cli", "fleet", "listen", "--port", str(broker.port), "--db",
              str(database), "--group", f"crash-{tag}", "--name", f"crash-{tag}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(listen, stderr=subprocess.PIPE, text=True, env=env)
    wait_subscribed(first)
    device, count = f"inv-{tag}", 4000
    builder = MessageBuilder("farm-1", device)
    outbox = OutboxStats(depth=0, bytes=0)
    payloads = [builder.summary(seq, summary(), outbox).model_dump_json() for seq in range(count)]
    publisher = make_client(BrokerConfig(port=broker.port), f"pub-{tag}")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    store = FleetStore(path=database, read_only=True)

    def stored() -> list[int]:
        return [row["seq"] for row in store.messages(device=device, kind="summary")]

    try:
        infos = [publisher.publish(device_topic("farm-1", device, "summary"), p, qos=1) for p in payloads]
        assert wait_until(lambda: len(stored()) > 0, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = len(stored())
        for info in infos:
            info.wait_for_publish(60)
        second = subprocess.Popen(listen, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert wait_until(lambda: len(stored()) >= count, 120), len(stored())
        finally:
            second.send_signal(signal.SIGINT)
            second.communicate(timeout=30)
        assert at_kill < count, "the first listener stored everything before it was killed: nothing was tested"
        assert sorted(stored()) == list(range(count))
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        store.close()


def test_invalid_payloads_are_counted_not_stored(broker: LocalMosquitto, tmp_path: Path) -> None:
    store = FleetStore(path=tmp_path / "fleet.sqlite3")
    receiver = FleetReceiver(BrokerConfig(port=broker.port), store, group=None, name=f"r-{uuid.uuid4().hex[:6]}")
    receiver.start()
    assert receiver.wait_connected(5)
    time.sleep(0.1)
    device = f"inv-{uuid.uuid4().hex[:6]}"
    reporter = reporter_for(broker.port, tmp_path, device)
    reporter.publish_summary(summary())
    assert reporter.flush(5)
    alert = AlertContent(severity="info", code="x", message="on the wrong topic")
    wrong_topic = MessageBuilder("farm-1", device).alert(10_000, alert).model_dump_json()
    intruder = make_client(BrokerConfig(port=broker.port), f"junk-{device}")
    intruder.connect("127.0.0.1", broker.port)
    intruder.loop_start()
    for payload in (b"\xff\xfe", b'{"kind": "summary"}', wrong_topic.encode()):
        intruder.publish(f"gridedge/v1/farm-1/{device}/summary", payload, qos=1).wait_for_publish(5)
    intruder.disconnect()
    intruder.loop_stop()
    deadline = time.monotonic() + 5
    while receiver.stats.invalid < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    reporter.close()
    receiver.stop()
    assert receiver.stats.invalid == 3
    assert [row["kind"] for row in store.messages(device=device)] == ["status", "summary", "status"]
    store.close()
