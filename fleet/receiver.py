"""Fleet receiver: subscribes to every device's reports and stores them, deduplicated, in a FleetStore.

Several receiver processes split one fleet through an MQTT 5 shared subscription
(``$share/<group>/gridedge/v1/+/+/summary`` and friends): the broker hands each message to one member
of the group. Status topics are subscribed without sharing so that every receiver also gets the
retained status of every device when it starts (the store deduplicates the copies).

A message is acknowledged to the broker only after the transaction that stored it has committed, and
the receiver keeps a persistent session (stable client id, session expiry): while it is away the broker
queues its share of the messages (across a broker restart too, with persistence on, except for shared
subscriptions on Mosquitto 2.0.11: see docs/mqtt/README.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.messages import (
    TOPIC_ROOT,
    AlertMessage,
    CommandResult,
    Envelope,
    StatusMessage,
    SummaryMessage,
    TelemetryMessage,
)
from edge_agent.transport import BrokerConfig, make_client
from gridedge.fleet.store import FleetStore, Received

logger = logging.getLogger(__name__)

SHARED_LEAVES = ("summary", "alert", "telemetry", "cmd/+/result")
# The topic's last level names the model: cheaper than trying the discriminated union, and a
# payload published on the wrong topic is rejected.
MODEL_BY_LEAF: dict[str, type[Envelope]] = {
    "status": StatusMessage,
    "summary": SummaryMessage,
    "alert": AlertMessage,
    "telemetry": TelemetryMessage,
    "result": CommandResult,
}


def subscriptions(group: str | None) -> list[str]:
    """Topic filters of a receiver; with a group, all but status are shared subscriptions."""
    prefix = f"$share/{group}/" if group else ""
    return [f"{TOPIC_ROOT}/+/+/status"] + [f"{prefix}{TOPIC_ROOT}/+/+/{leaf}" for leaf in SHARED_LEAVES]


@dataclass
class ReceiverStats:
    """Counters of one receiver since it started."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0


class FleetReceiver:
    """Receives device messages over MQTT and stores them in batches; start(), then stop()."""

    def __init__(
        self,
        broker: BrokerConfig,
        store: FleetStore,
        *,
        group: str | None = "gridedge-fleet",
        name: str | None = None,
        batch_size: int = 1000,
        session_expiry_s: int = 3600,
    ):
        self.broker = broker
        self.store = store
        self.group = group
        self.name = name or f"receiver-{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        self.session_expiry_s = session_expiry_s
        self.stats = ReceiverStats()
        # (connection generation, message): an ack is only valid on the connection that delivered it.
        # Bounded: when storage falls behind (a backlog after downtime), paho's loop waits here and TCP
        # holds the rest at the broker, instead of up to ReceiveMaximum messages piling up in memory.
        self._queue: queue.Queue[tuple[int, mqtt.MQTTMessage] | None] = queue.Queue(maxsize=2 * batch_size)
        self._generation = 0
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = make_client(
            broker, broker.client_id or f"gridedge-fleet-{self.name}", persistent_session=session_expiry_s > 0
        )
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect (retrying in the background) and start the writer thread."""
        properties = None
        clean_start = self.session_expiry_s == 0
        if self.broker.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            # Let the broker keep many unacknowledged messages in flight to us: acks wait for commits.
            properties.ReceiveMaximum = 65535
            properties.SessionExpiryInterval = self.session_expiry_s
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            self.broker.keepalive_s,
            clean_start=clean_start,
            properties=properties,
        )
        self._client.loop_start()
        self._writer = threading.Thread(target=self._write_loop, name="gridedge-fleet-writer", daemon=True)
        self._writer.start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until subscribed (True) or the timeout passes (False)."""
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        """Store what was received, then disconnect."""
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join(30)
        self._client.disconnect()
        self._client.loop_stop()

    def run(self, duration_s: float | None = None) -> None:
        """Receive until interrupted (Ctrl-C) or for ``duration_s`` seconds."""
        self.start()
        try:
            if duration_s is None:
                while True:
                    time.sleep(3600)
            time.sleep(duration_s)
        except KeyboardInterrupt:
            logger.info("stopping on request")
        finally:
            self.stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning("broker refused the receiver: %s", reason_code)
            return
        self._generation += 1
        client.subscribe([(topic, 1) for topic in subscriptions(self.group)])
        self._connected.set()
        logger.info("%s subscribed on %s:%d", self.name, self.broker.host, self.broker.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._queue.put((self._generation, message))

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if batch:
                self._store(batch)

    def _store(self, batch: list[tuple[int, mqtt.MQTTMessage]]) -> None:
        now = time.time()
        items = []
        for _, message in batch:
            model = MODEL_BY_LEAF.get(message.topic.rsplit("/", 1)[-1])
            try:
                if model is None:
                    raise ValueError("not a gridedge v1 device topic")
                items.append(Received(model.model_validate_json(message.payload), message.payload.decode(), now))
            except ValueError as exc:  # pydantic's ValidationError and UnicodeDecodeError included
                self.stats.invalid += 1
                logger.warning("ignoring an invalid message on %s: %s", message.topic, exc)
        new = self._ingest_with_retry(items)
        self.stats.received += len(batch)
        self.stats.stored += new
        self.stats.duplicates += len(items) - new
        for generation, message in batch:
            # After a reconnect the broker redelivers unacknowledged messages itself; acking an old
            # mid on the new connection could acknowledge a different message that is not stored yet.
            if message.qos > 0 and generation == self._generation:
                self._client.ack(message.mid, message.qos)

    def _ingest_with_retry(self, items: list[Received]) -> int:
        # A database hiccup (lock timeout, deadlock victim, restart) must not kill the writer: the
        # batch is retried and stays unacknowledged until it is stored.
        delay = 0.1
        while True:
            try:
                return self.store.ingest(items, self.name)
            except Exception:
                logger.exception("storing %d messages failed; retrying in %.1f s", len(items), delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
