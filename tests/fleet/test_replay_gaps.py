"""Filling sequence gaps end to end over a real Mosquitto: messages the broker acknowledged but no receiver
got are found as gaps, replayed by the device from its retained outbox (same message id and seq,
flagged historical), and what the device no longer holds is marked unavailable, so `fleet status` is clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edge_agent.keys import new_keypair
from edge_agent.messages import AlertContent
from edge_agent.reporting.authentication import CommandGuard, CommandsSection
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.cli import app
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.store import FleetStore

pytestmark = pytest.mark.mqtt
SITE, DEVICE = "replay-site", "ctrl-7"


def alerts(store: FleetStore) -> list[dict[str, Any]]:
    return store.messages(SITE, DEVICE, "alert")


def test_replay_gaps_fills_what_the_device_holds_and_marks_the_rest(tmp_path: Path) -> None:
    operator_key, operator_public = new_keypair(tmp_path / "operator", kind="operator")
    database = tmp_path / "fleet.sqlite3"
    store = FleetStore(path=database)
    with LocalMosquitto(tmp_path / "broker") as broker:
        config = MqttConfig.model_validate(
            {
                "site": SITE,
                "device": DEVICE,
                "broker": {"port": broker.port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
                "outbox": {"path": str(tmp_path / "outbox.sqlite3"), "retain_messages": 10},
                "command_staging_dir": str(tmp_path / "staging"),
            }
        )
        guard = CommandGuard.from_config(
            CommandsSection(operator_public_key=operator_public), SITE, DEVICE, tmp_path / "state"
        )
        reporter = MqttReporter(config, guard=guard)
        receiver_broker = BrokerConfig(port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.5)

        def receiving() -> FleetReceiver:
            # A clean session: what is published while it is away is lost to it, as after a broker crash.
            receiver = FleetReceiver(receiver_broker, store, group=None, session_expiry_s=0)
            receiver.start()
            # Subscribed once the device's retained status has arrived.
            assert wait_until(lambda: receiver.stats.received >= 1, 30)
            return receiver

        def publish(count: int) -> None:
            for _ in range(count):
                reporter.publish_alert(AlertContent(severity="info", code="tick", message="m"))
            assert reporter.flush(10)  # acknowledged by the broker

        reporter.start()
        assert reporter.wait_connected(5)
        receiver = receiving()
        try:
            publish(2)
            assert wait_until(lambda: len(alerts(store)) == 2, 30)
            receiver.stop()
            publish(3)  # lost, and pushed out of the device's retention by what follows
            receiver = receiving()
            publish(12)
            assert wait_until(lambda: len(alerts(store)) == 14, 30)
            receiver.stop()
            publish(3)  # lost, still retained on the device
            receiver = receiving()
            publish(2)
            assert wait_until(lambda: len(alerts(store)) == 16, 30)

            second = alerts(store)[1]["seq"]
            pruned, retained = (second + 1, second + 3), (second + 16, second + 18)
            assert store.gaps() == {(SITE, DEVICE): [pruned, retained]}
            originals = {row.seq: row.message_id for row in reporter.outbox.retained(*retained, 10)}
            assert sorted(originals) == list(range(retained[0], retained[1] + 1))

            replayed = CliRunner().invoke(
                app,
                ["replay-gaps", "--key", str(operator_key), "--port", str(broker.port), "--db", str(database)],
            )
            assert replayed.exit_code == 0, replayed.output
            assert f"{SITE}/{DEVICE}: asked 6 missing" in replayed.output
            assert "replayed 3" in replayed.output
            assert f"unavailable 3 missing ({pruned[0]}-{pruned[1]})" in replayed.output
            assert wait_until(lambda: store.gaps() == {}, 30)
        finally:
            receiver.stop()
            reporter.close()

    by_seq = {row["seq"]: row for row in alerts(store)}
    for seq, message_id in originals.items():
        assert by_seq[seq]["message_id"] == message_id and by_seq[seq]["is_historical"]
    assert not set(range(pruned[0], pruned[1] + 1)) & set(by_seq)
    store.close()
    shown = CliRunner().invoke(app, ["status", "--db", str(database)], env={"COLUMNS": "220"})
    assert shown.exit_code == 0 and DEVICE in shown.output
    assert "missing" not in shown.output
