"""Delivery guarantees against a real Mosquitto: schemas, broker outage, SIGKILL, overflow, MQTT 3.1.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.messages import (
    AlertContent,
    AnomalyStats,
    ChannelAggregate,
    ChannelDrift,
    Forecast,
    LatencyStats,
    ModelInfo,
    SummaryContent,
    TelemetryContent,
)
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig, backoff_delay
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.store import FleetStore

pytestmark = pytest.mark.mqtt
HERE = Path(__file__).resolve().parent


def full_summary() -> SummaryContent:
    now = datetime.now(UTC)
    return SummaryContent(
        window_start=now - timedelta(minutes=5),
        window_end=now,
        channels={
            "p_load": ChannelAggregate(count=300, missing=0, mean=1.2, min=0.3, max=3.1, last=1.1, unit="kW"),
            "v_bus": ChannelAggregate(count=0, missing=300, unit="V"),
        },
        forecasts=[
            Forecast(target="p_load", unit="kW", origin=now, step_s=900, values=[1.0, None, 1.2])
        ],
        anomaly=AnomalyStats(windows=10, anomalies=1, max_score=4.2, threshold=3.0),
        model=ModelInfo(name="w1-load", version="1.2.0", runtime="tflite", precision="int8"),
        latency=LatencyStats(count=300, p50_ms=0.04, p95_ms=0.06, p99_ms=0.09, max_ms=0.2),
        drift={"p_load": ChannelDrift(z_mean=0.4, std_ratio=1.1), "v_bus": ChannelDrift()},
    )


def alert(index: int) -> AlertContent:
    return AlertContent(severity="warning", code="test", message=f"m{index}")


def start_reporter(config: MqttConfig) -> MqttReporter:
    reporter = MqttReporter(config)
    reporter.start()
    return reporter


def start_receiver(port: int, store: FleetStore, group: str | None = "fleet") -> FleetReceiver:
    broker = BrokerConfig(port=port, reconnect_min_s=0.05, reconnect_max_s=0.3)
    # A unique name: a receiver resumes the persistent session (and queue) of its name.
    receiver = FleetReceiver(broker, store, group=group, name=f"r-{uuid.uuid4().hex[:8]}")
    receiver.start()
    assert receiver.wait_connected(5)
    time.sleep(0.1)  # let the SUBACK land before devices publish
    return receiver


def alert_rows(store: FleetStore, device: str) -> list[dict[str, Any]]:
    return store.messages(device=device, kind="alert")


def alert_index(row: dict[str, Any]) -> int:
    return int(json.loads(row["payload"])["message"][1:])


def test_every_published_payload_matches_the_json_schemas(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig], collect: Callable[..., Any],
    device_ids: tuple[str, str],
) -> None:
    collector = collect(broker.port, "gridedge/v1/{}/{}/#".format(*device_ids))
    reporter = start_reporter(make_config(broker.port, telemetry={"enabled": True, "max_per_s": 100}))
    assert reporter.wait_connected(5)
    reporter.publish_status("degraded", "model produced NaN; running the baseline", ModelInfo(name="w1"))
    reporter.publish_summary(full_summary())
    reporter.publish_alert(alert(0))
    assert reporter.publish_telemetry(
        TelemetryContent(sample_ts=datetime.now(UTC), values={"p_load": 1.5, "v_bus": None})
    )
    assert reporter.flush(5)
    reporter.close()
    assert collector.wait_for(lambda: len(collector.of_kind("status")) >= 3)
    kinds = {doc["kind"] for _, doc, _ in collector.messages}
    assert kinds == {"status", "summary", "alert", "telemetry"}
    assert collector.schema_errors == []
    states = [doc["state"] for doc in collector.of_kind("status")]
    assert states[:2] == ["online", "degraded"] and states[-1] == "stopped"
    assert all(retained is False for topic, _, retained in collector.messages)  # live, not replayed
    summary = collector.of_kind("summary")[0]
    assert summary["channels"]["v_bus"]["mean"] is None  # unknown stays null, never 0
    assert summary["outbox"]["depth"] >= 0 and summary["is_historical"] is False


def test_telemetry_is_rate_limited_and_off_by_default(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig]
) -> None:
    sample = TelemetryContent(sample_ts=datetime.now(UTC), values={"p": 1.0})
    off = MqttReporter(make_config(broker.port))
    assert off.publish_telemetry(sample) is False
    off.outbox.close()
    limited = MqttReporter(
        make_config(broker.port, telemetry={"enabled": True, "max_per_s": 5}, outbox={"path": str(
            Path(off.config.outbox.path).with_name("other.sqlite3"))})
    )
    accepted = sum(limited.publish_telemetry(sample) for _ in range(50))
    assert 1 <= accepted <= 6
    limited.outbox.close()


def test_broker_outage_delivers_every_message_exactly_once_in_order(
    tmp_path: Path, make_config: Callable[..., MqttConfig], store: FleetStore
) -> None:
    broker = LocalMosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    # A plain subscription: Mosquitto 2.0.11 does not restore *shared* subscriptions from its
    # persistence file, so messages replayed before a shared receiver resubscribes would find no one.
    receiver = start_receiver(broker.port, store, group=None)
    config = make_config(broker.port)
    reporter = start_reporter(config)
    try:
        assert reporter.wait_connected(5)
        for index in range(20):
            reporter.publish_alert(alert(index))
        assert reporter.flush(5)
        broker.stop()
        assert wait_until(lambda: not reporter.is_connected(), 5)
        for index in range(20, 50):
            reporter.publish_alert(alert(index))
            if index % 10 == 0:
                reporter.publish_summary(full_summary())
        assert reporter.outbox.stats().depth == 33  # 30 alerts + 3 summaries wait for the broker
        time.sleep(0.5)  # a few failed reconnect attempts
        broker.start()
        assert reporter.wait_connected(10)
        for index in range(50, 60):
            reporter.publish_alert(alert(index))
        assert reporter.flush(10)
        assert wait_until(lambda: len(alert_rows(store, config.device)) >= 60, 15)
    finally:
        reporter.close()
        receiver.stop()
        broker.stop(hold_port=False)
    rows = alert_rows(store, config.device)
    indices = [alert_index(row) for row in rows]  # rows come ordered by seq
    assert indices == list(range(60)), "each alert exactly once, and seq order is publish order"
    historical = {alert_index(row) for row in rows if row["is_historical"]}
    assert set(range(20, 50)) <= historical  # everything made during the outage is flagged
    assert not historical & set(range(20))
    replayed = sorted((row for row in rows if row["is_historical"]), key=lambda row: row["received_at"])
    assert [row["seq"] for row in replayed] == sorted(row["seq"] for row in replayed)  # oldest first
    summaries = store.messages(device=config.device, kind="summary")
    assert len(summaries) == 3 and all(row["is_historical"] for row in summaries)
    assert receiver.stats.invalid == 0


def test_sigkilled_publisher_loses_nothing_and_resumes_its_sequence(
    tmp_path: Path, broker: LocalMosquitto, device_ids: tuple[str, str], store: FleetStore,
    collect: Callable[..., Any],
) -> None:
    site, device = device_ids
    statuses = collect(broker.port, f"gridedge/v1/{site}/{device}/status")
    receiver = start_receiver(broker.port, store, group=None)
    outbox = str(tmp_path / "outbox.sqlite3")
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}

    def run(start: int, count: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(HERE / "publisher_script.py"), str(broker.port), site, device, outbox,
             str(start), str(count), "200"],
            stdout=subprocess.PIPE, text=True, env=env,
        )

    first = run(0, 100_000)
    printed: list[int] = []
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "connected"
    while len(printed) < 60:
        printed.append(int(first.stdout.readline()))
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    printed += [int(line) for line in first.stdout.read().split()]
    assert statuses.wait_for(lambda: [d["state"] for d in statuses.of_kind("status")][-1:] == ["offline"])
    assert statuses.of_kind("status")[-1]["reason"] == "connection lost"  # the will, not a goodbye

    second = run(max(printed) + 1, 40)
    out, _ = second.communicate(timeout=30)
    assert second.returncode == 0 and out.split()[-1] == "done"
    printed += [int(line) for line in out.split()[1:-1]]
    try:
        assert wait_until(lambda: len(alert_rows(store, device)) >= len(printed), 15)
    finally:
        receiver.stop()
    rows = alert_rows(store, device)
    received = [alert_index(row) for row in rows]
    assert sorted(received) == sorted(set(received)), "no duplicate content under different ids"
    assert set(printed) <= set(received), "every committed alert arrived"
    assert received == sorted(received), "seq order is publish order across the restart"
    states = [doc["state"] for doc in statuses.of_kind("status")]
    assert states[0] == "online" and "offline" in states
    after_kill = states[states.index("offline") + 1 :]
    assert after_kill[0] == "online" and after_kill[-1] == "stopped"
    seqs = [doc["seq"] for doc in statuses.of_kind("status")]
    assert seqs[-1] > max(row["seq"] for row in rows)  # the counter kept growing after the restart


def test_outbox_overflow_drops_telemetry_then_summaries_and_reports_it(
    private_broker: LocalMosquitto, make_config: Callable[..., MqttConfig], collect: Callable[..., Any]
) -> None:
    # Not started yet: everything waits in the outbox, as during an outage, until the collector listens.
    reporter = MqttReporter(
        make_config(private_broker.port, telemetry={"enabled": True, "max_per_s": 1e6},
                    outbox={"max_bytes": 16_000})
    )
    sample = TelemetryContent(sample_ts=datetime.now(UTC), values={"p": 1.0, "q": None})
    for index in range(5):
        reporter.publish_alert(alert(index))
    for _ in range(60):
        reporter.publish_telemetry(sample)
    dropped = reporter.outbox.dropped()
    assert dropped.telemetry > 0 and dropped.summary == 0 and dropped.alert == 0
    summaries = 0
    while reporter.outbox.dropped().summary == 0 and summaries < 100:
        reporter.publish_summary(full_summary())
        summaries += 1
    dropped = reporter.outbox.dropped()
    assert dropped.telemetry == 60, "all telemetry goes before any summary"
    assert dropped.summary == 1 and dropped.alert == 0
    reported = reporter.outbox.dropped()
    reporter.publish_summary(full_summary())
    dropped = reporter.outbox.dropped()
    collector = collect(private_broker.port)
    reporter.start()
    try:
        assert reporter.wait_connected(10)
        assert reporter.flush(10)
        assert collector.wait_for(lambda: len(collector.of_kind("alert")) == 5)
        assert collector.wait_for(lambda: len(collector.of_kind("summary")) == summaries + 1 - dropped.summary)
    finally:
        reporter.close()
    last = max(collector.of_kind("summary"), key=lambda doc: doc["seq"])
    assert last["outbox"]["dropped"] == reported.model_dump() == {"telemetry": 60, "summary": 1, "alert": 0}
    assert collector.of_kind("telemetry") == []
    assert collector.schema_errors == []


def test_mqtt_311_is_selectable(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig], collect: Callable[..., Any],
    device_ids: tuple[str, str],
) -> None:
    collector = collect(broker.port, "gridedge/v1/{}/{}/#".format(*device_ids))
    reporter = start_reporter(make_config(broker.port, broker={"protocol": "3.1.1"}))
    try:
        assert reporter.wait_connected(5)
        reporter.publish_alert(alert(1))
        assert reporter.flush(5)
    finally:
        reporter.close()
    assert collector.wait_for(lambda: len(collector.of_kind("status")) == 2)
    assert [doc["message"] for doc in collector.of_kind("alert")] == ["m1"]


def test_reporter_reconnects_with_jittered_backoff(
    private_broker: LocalMosquitto, make_config: Callable[..., MqttConfig]
) -> None:
    private_broker.stop()
    reporter = start_reporter(make_config(private_broker.port))
    time.sleep(0.6)
    assert not reporter.is_connected()
    private_broker.start()
    try:
        assert reporter.wait_connected(5)
        assert reporter.connections == 1
    finally:
        reporter.close()


def test_backoff_is_jittered_and_capped() -> None:
    delays = [backoff_delay(attempt, 0.5, 8.0) for attempt in range(12) for _ in range(20)]
    assert all(0.5 <= delay <= 8.0 for delay in delays)
    first = [backoff_delay(0, 0.5, 8.0) for _ in range(50)]
    late = [backoff_delay(10, 0.5, 8.0) for _ in range(200)]
    assert max(first) <= 0.5 + 1e-9 < max(late)
    assert len({round(delay, 3) for delay in late}) > 100, "devices must not reconnect in lockstep"


def test_replay_is_rate_capped_and_live_messages_are_not_starved(
    private_broker: LocalMosquitto, make_config: Callable[..., MqttConfig], collect: Callable[..., Any],
    device_ids: tuple[str, str],
) -> None:
    reporter = MqttReporter(make_config(private_broker.port, outbox={"replay_rate_per_s": 100}))
    for index in range(150):
        reporter.publish_alert(alert(index))  # a backlog, as after an outage
    collector = collect(private_broker.port, "gridedge/v1/{}/{}/alert".format(*device_ids))
    reporter.start()
    try:
        assert reporter.wait_connected(5)
        started = time.monotonic()
        reporter.publish_alert(alert(1000))
        assert collector.wait_for(lambda: any(doc["message"] == "m1000" for doc in collector.of_kind("alert")), 2)
        live_after = len(collector.of_kind("alert"))
        assert collector.wait_for(lambda: len(collector.of_kind("alert")) == 151, 10)
        replay_s = time.monotonic() - started
    finally:
        reporter.close()
    assert live_after < 100, "the live alert waited for most of the backlog"
    assert replay_s >= 0.8, f"150 messages at 100/s replayed in {replay_s:.2f} s"
    replayed = [doc for doc in collector.of_kind("alert") if doc["is_historical"]]
    assert [doc["seq"] for doc in replayed] == sorted(doc["seq"] for doc in replayed)
    assert len(replayed) == 150


def test_a_stopped_broker_keeps_its_port_and_refuses_clients(tmp_path: Path) -> None:
    broker = LocalMosquitto(tmp_path / "broker")
    broker.start()
    broker.stop()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", broker.port), timeout=2):
        pass
    broker.start()  # the same port again
    with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
        pass
    broker.stop(hold_port=False)
