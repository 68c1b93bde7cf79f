"""A rollout's probation timeout, driven by a real RolloutRunner over the fleet tests' Mosquitto: a canary
that installed the bundle and then went offline for good fails with the reason ``probation-timeout``,
which halts the rollout, instead of holding it open for ever."""

from __future__ import annotations

import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from edge_agent.messages import device_topic
from edge_agent.reporting.base import MessageBuilder
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.rollouts import RolloutRunner, RolloutStore, Target, create_rollout
from gridedge.fleet.store import FleetStore
from gridedge.fleet.views import rollout_devices_table

pytestmark = pytest.mark.mqtt
SITE = "probation-site"


@pytest.fixture
def canary_offline(broker: LocalMosquitto) -> Iterator[Target]:
    """The canary's retained status says offline (its last will), as after a power cut during probation."""
    canary = Target(SITE, "dev-0")
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    topic = device_topic(canary.site, canary.device, "status")
    will = MessageBuilder(canary.site, canary.device).status(7, "offline", None, None)
    client.publish(topic, will.model_dump_json(), qos=1, retain=True).wait_for_publish(10)
    yield canary
    client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_a_canary_silent_on_probation_fails_after_the_timeout_and_halts(
    broker: LocalMosquitto, store: FleetStore, archive: tuple[bytes, str], canary_offline: Target
) -> None:
    targets = [canary_offline, Target(SITE, "dev-1")]
    patient = create_rollout(store, archive[0], targets, canaries=1, max_failure_ratio=0.0)
    strict = create_rollout(store, archive[0], targets, canaries=1, max_failure_ratio=0.0, probation_timeout_s=1.0)
    rollouts = RolloutStore(store)
    for rollout in (patient, strict):
        # What the runner records once the canary accepted the bundle.
        assert rollouts.set_outcome(rollout.rollout_id, canary_offline, "probation", "installed", expect=("waiting",))

    with RolloutRunner(BrokerConfig(port=broker.port), store, Ed25519PrivateKey.generate(), poll_s=0.1) as runner:
        assert wait_until(lambda: not runner.reachable(canary_offline), 10)
        (halted,) = runner.run([strict.rollout_id], timeout_s=60)
        kept = runner.advance(patient.rollout_id)

    assert halted.state == "halted" and halted.counts() == {"failed": 1, "skipped": 1}, halted
    failed = halted.outcome(SITE, "dev-0")
    assert (failed.reason or "").startswith("probation-timeout: no report of w1-load 1.0.0"), failed
    assert failed.updated_at - strict.created_at >= 1.0
    # The default timeout (an hour) leaves the other rollout's canary on probation, the rollout running.
    assert kept.state == "running" and kept.outcome(SITE, "dev-0").outcome == "probation", kept
    assert kept.probation_timeout_s == 3600

    console = Console(width=80, record=True, force_terminal=False)
    console.print(rollout_devices_table(rollouts.get(strict.rollout_id), time.time()))
    shown = " ".join(console.export_text().split())
    assert "probation-timeout" in shown and "probation timeout 1 s" in shown, shown
