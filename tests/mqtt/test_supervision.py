"""Nothing dies silently: poison commands, dead worker threads and a full disk, against a real Mosquitto.

Each test kills or starves a real thread through a real code path (a poison payload, the watchdog's
shipped fault seam, a tmpfs filled to the last byte) and checks what an operator sees: an error reply or
a counted drop, a restarted worker, one alert, a ``degraded`` status with the reason, and recovery.
"""

from __future__ import annotations

import errno
import json
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.messages import HealthStats, SummaryContent
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.watchdog import RestartPolicy
from gridedge.broker import LocalMosquitto

pytestmark = pytest.mark.mqtt

FAST = RestartPolicy(max_restarts=2, restart_window_s=3.0, restart_delay_s=0.05, crash_loop_delay_s=0.2)


def summary(cycles: int = 1) -> SummaryContent:
    now = datetime.now(UTC)
    return SummaryContent(window_start=now, window_end=now, health=HealthStats(cycles=cycles))


class RawOperator:
    """Publishes raw command payloads with any MQTT 5 response topic and collects replies by correlation."""

    def __init__(self, port: int, site: str, device: str):
        self.base = f"gridedge/v1/{site}/{device}/cmd"
        self.reply_topic = f"operator/{uuid.uuid4().hex[:8]}/replies"
        self.replies: dict[str, dict[str, Any]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.replies.__setitem__(
            m.properties.CorrelationData.decode(), json.loads(m.payload)
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        assert subscribed.wait(5), "operator could not subscribe"

    def send(self, command: str, payload: bytes, correlation: str, response_topic: str | None = None) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = response_topic or self.reply_topic
        properties.CorrelationData = correlation.encode()
        self.client.publish(f"{self.base}/{command}", payload, qos=1, properties=properties).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def reporter(broker: LocalMosquitto, make_config: Callable[..., MqttConfig]) -> Iterator[MqttReporter]:
    running = MqttReporter(make_config(broker.port), restart_policy=FAST)
    running.start()
    assert running.wait_connected(5)
    yield running
    running.close()


@pytest.fixture
def operator(broker: LocalMosquitto, device_ids: tuple[str, str]) -> Iterator[RawOperator]:
    client = RawOperator(broker.port, *device_ids)
    yield client
    client.close()


def test_poison_commands_get_error_replies_or_counted_drops_and_commands_keep_working(
    broker: LocalMosquitto, reporter: MqttReporter, operator: RawOperator, collect: Callable[..., Any]
) -> None:
    collector = collect(broker.port, f"gridedge/v1/{reporter.config.site}/{reporter.config.device}/summary")
    operator.send("ping", b'{"request_id": "\\ud800", "args": {}}', "surrogate")
    operator.send("ping", b"[" * 100_000, "brackets")
    for index, topic in enumerate(("replies/+", "replies/#", "a/+/b")):
        operator.send("ping", b'{"request_id": "r"}', f"bad-topic-{index}", response_topic=topic)
    operator.send("ping", b'{"request_id": "after"}', "after")
    assert collector.wait_for(lambda: "after" in operator.replies, 10), "the command worker stopped serving"
    assert operator.replies["surrogate"]["outcome"] == "error"
    assert operator.replies["surrogate"]["request_id"] is None
    assert operator.replies["brackets"]["outcome"] == "error"
    assert "too deeply nested" in operator.replies["brackets"]["error"]
    assert operator.replies["after"]["outcome"] == "ok"
    assert reporter.dropped_commands == 3
    assert reporter.watchdog.restarts == {"outbox-pump": 0, "commands": 0}
    reporter.publish_summary(summary())
    assert collector.wait_for(lambda: len(collector.of_kind("summary")) == 1)
    assert collector.of_kind("summary")[0]["health"]["dropped_commands"] == 3


@pytest.mark.parametrize("worker", ["outbox-pump", "commands"])
def test_a_dead_worker_thread_is_restarted_and_alerted(
    broker: LocalMosquitto, reporter: MqttReporter, operator: RawOperator, collect: Callable[..., Any], worker: str
) -> None:
    collector = collect(broker.port, f"gridedge/v1/{reporter.config.site}/{reporter.config.device}/#")
    reporter.watchdog.inject_fault(worker, RuntimeError("injected"))
    assert collector.wait_for(lambda: reporter.watchdog.restarts[worker] == 1)
    assert collector.wait_for(lambda: len(collector.of_kind("alert")) == 1)
    alert = collector.of_kind("alert")[0]
    assert alert["code"] == "worker-died" and worker in alert["message"] and "injected" in alert["message"]
    assert reporter.watchdog.is_alive(worker)
    operator.send("ping", b'{"request_id": "after"}', "after")
    reporter.publish_summary(summary())
    assert collector.wait_for(lambda: "after" in operator.replies and len(collector.of_kind("summary")) == 1)
    assert reporter.flush(5)


def test_a_crash_looping_worker_degrades_the_status_once_and_recovers(
    broker: LocalMosquitto, reporter: MqttReporter, collect: Callable[..., Any]
) -> None:
    collector = collect(broker.port, f"gridedge/v1/{reporter.config.site}/{reporter.config.device}/#")
    for death in range(1, FAST.max_restarts + 3):
        reporter.watchdog.inject_fault("commands", RuntimeError(f"death {death}"))
        assert collector.wait_for(lambda d=death: reporter.watchdog.restarts["commands"] == d)  # type: ignore[misc]

    def statuses() -> list[dict[str, Any]]:
        return collector.of_kind("status")

    assert collector.wait_for(lambda: statuses()[-1]["state"] == "degraded")
    assert "worker:commands" in statuses()[-1]["reason"]
    codes = [alert["code"] for alert in collector.of_kind("alert")]
    assert codes == ["worker-died"] * FAST.max_restarts + ["worker-crash-loop"]
    assert collector.wait_for(lambda: statuses()[-1]["state"] == "online", FAST.restart_window_s * 3)
    assert collector.wait_for(lambda: collector.of_kind("alert")[-1]["code"] == "worker-recovered")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs, room for SQLite's WAL to reach its 4 MB checkpoint (mounting needs root; skipped
    where it is not allowed)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_degrades_once_logs_little_and_recovers_without_restart(
    broker: LocalMosquitto,
    make_config: Callable[..., MqttConfig],
    collect: Callable[..., Any],
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(
        broker.port,
        outbox={"path": str(small_disk / "outbox.sqlite3")},
        command_staging_dir=str(small_disk / "staging"),
    )
    collector = collect(broker.port, f"gridedge/v1/{config.site}/{config.device}/#")
    reporter = MqttReporter(config, restart_policy=FAST)
    reporter.start()
    try:
        assert reporter.wait_connected(5)
        reporter.publish_summary(summary(0))
        assert reporter.flush(5)
        filler = fill(small_disk)
        caplog.clear()
        for cycle in range(1, 201):
            reporter.publish_summary(summary(cycle))
        def status_is(state: str) -> bool:  # the birth status may not have arrived yet: nothing to index
            statuses = collector.of_kind("status")
            return bool(statuses) and statuses[-1]["state"] == state

        assert collector.wait_for(lambda: status_is("degraded"))
        assert "disk" in collector.of_kind("status")[-1]["reason"]
        assert reporter.watchdog.is_alive("outbox-pump") and reporter.watchdog.is_alive("commands")
        disk_lines = [r for r in caplog.records if "disk" in r.getMessage().lower()]
        assert 1 <= len(disk_lines) <= 5, [r.getMessage() for r in disk_lines]
        filler.unlink()
        assert collector.wait_for(lambda: status_is("online"), 15)
        delivered = lambda: {s["health"]["cycles"] for s in collector.of_kind("summary")}  # noqa: E731
        assert collector.wait_for(lambda: delivered() == set(range(201)), 15), sorted(set(range(201)) - delivered())
        alerts = sorted(collector.of_kind("alert"), key=lambda alert: alert["seq"])
        assert [alert["code"] for alert in alerts] == ["disk-full", "disk-space-recovered"]
        assert reporter.watchdog.restarts == {"outbox-pump": 0, "commands": 0}
    finally:
        reporter.close()
