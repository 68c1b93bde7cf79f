"""The MQTT reporter: outbox-backed publishing, availability (birth/will), commands, reconnection.

Threads: paho's network thread (callbacks), the *pump* (applies PUBACKs to the outbox and replays the
backlog at a capped rate), and the *command worker* (runs commands off the network thread).

Delivery rules:
* every summary, alert and telemetry message is committed to the outbox before it is published, and
  its row is deleted only after the broker's PUBACK;
* while connected, a new message is published at once (``is_historical`` false);
* a row that could not be published live, or whose PUBACK did not arrive before the connection was
  lost, is replayed oldest-first after the next connect with ``is_historical`` true and the same
  message id (receivers deduplicate on it);
* status is state, not history: it is published retained and re-sent as birth on every connect.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import JsonValue

from edge_agent.messages import (
    TOPIC_ROOT,
    AlertContent,
    CommandResult,
    DeviceState,
    Envelope,
    ModelInfo,
    StatusMessage,
    SummaryContent,
    TelemetryContent,
    device_topic,
)
from edge_agent.outbox import Outbox, OutboxKind
from edge_agent.reporting.authentication import CommandGuard
from edge_agent.reporting.base import MessageBuilder, RateLimiter
from edge_agent.reporting.commands import AgentControl, CommandProcessor, CommandReply, ModelUpdater
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.diagnosis import ConnectionDiagnosis
from edge_agent.reporting.homeassistant import discovery_messages
from edge_agent.reporting.replay import historical_copy, replay_ranges
from edge_agent.transport import ReconnectBackoff, make_client

logger = logging.getLogger(__name__)

QOS = 1
# Rows handed to paho but not yet acknowledged during a replay; bounds memory when the cap is high.
MAX_REPLAY_OUTSTANDING = 1000


class MqttReporter:
    """Reporter over MQTT with a durable outbox; call :meth:`start`, then publish, then :meth:`close`."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        control: AgentControl | None = None,
        updater: ModelUpdater | None = None,
        agent_version: str | None = None,
        guard: CommandGuard | None = None,
    ):
        self.config = config
        box = config.outbox
        self.outbox = Outbox(box.path, box.max_bytes, box.synchronous, box.retain_messages, box.retain_age_s)
        self._builder = MessageBuilder(config.site, config.device, agent_version)
        self._commands = CommandProcessor(
            Path(config.command_staging_dir), config.max_update_bytes, control, updater, guard, replayer=self
        )
        self._telemetry = RateLimiter(config.telemetry.max_per_s)
        self._mqtt5 = config.broker.protocol == "5"
        self._client = make_client(config.broker, config.client_id())
        self._backoff = ReconnectBackoff(self._client, config.broker)
        self._client.max_inflight_messages_set(200)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._diagnosis = ConnectionDiagnosis(self._client)

        # _lock guards the mid->row map; it is held across publish() so that an ack can never be
        # processed before its mid is recorded. paho callbacks never wait for it (acks go via a queue).
        self._lock = threading.Lock()
        self._generation = 0
        self._inflight: dict[int, tuple[int, bool]] = {}  # mid -> (row, replayed)
        self._inflight_rows: set[int] = set()
        self._replay_cursor = 0
        self._replay_outstanding = 0
        # The pump queries the outbox only while the backlog may hold unsent rows: producers bump
        # the version, and the pump records the version it has replayed to the end.
        self._backlog_version = 1
        self._replayed_version = 0
        self._acks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._command_queue: queue.SimpleQueue[mqtt.MQTTMessage | None] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._state: DeviceState = "online"
        self._reason: str | None = None
        self._model: ModelInfo | None = None
        self._threads: list[threading.Thread] = []
        self.connections = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Connect in the background (retrying forever) and start the pump and command threads."""
        self._set_will()
        broker = self.config.broker
        properties = None
        if self._mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0
        self._client.connect_async(
            broker.host, broker.port, broker.keepalive_s, clean_start=True, properties=properties
        )
        self._client.loop_start()
        for target, name in ((self._pump, "outbox-pump"), (self._command_worker, "commands")):
            thread = threading.Thread(target=target, name=f"gridedge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish "stopped" (retained), disconnect cleanly and close the outbox.

        "stopped" tells the fleet the device went away on purpose; "offline" stays the last will's, so
        a lost device and a switched-off one read differently."""
        if self._connected.is_set():
            info = self._publish_status_now("stopped", "agent stopped")
            if info is not None:
                info.wait_for_publish(timeout_s)
        self._stopping.set()
        self._command_queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        # PUBACKs that arrived after the pump stopped: without this their rows would be resent.
        self._apply_acks(timeout_s=0)
        self.outbox.close()

    def is_connected(self) -> bool:
        """Whether the broker accepted our connection and we have not seen it drop."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected (True) or until the timeout (False)."""
        return self._connected.wait(timeout_s)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.outbox.stats().depth == 0:
                return True
            time.sleep(0.02)
        return self.outbox.stats().depth == 0

    # ---------------------------------------------------------------- Reporter API
    def publish_status(
        self, state: DeviceState, reason: str | None = None, model: ModelInfo | None = None
    ) -> None:
        """Remember the state (it becomes the birth message) and publish it retained if connected."""
        self._state, self._reason = state, reason
        if model is not None:
            self._model = model
        if self._connected.is_set():
            self._publish_status_now(state, reason)

    def publish_summary(self, content: SummaryContent) -> None:
        """Store and send a summary carrying the current outbox depth and drop counts."""
        stats = self.outbox.stats()
        self._store_and_send("summary", lambda seq: self._builder.summary(seq, content, stats))

    def publish_alert(self, content: AlertContent) -> None:
        """Store and send an alert."""
        self._store_and_send("alert", lambda seq: self._builder.alert(seq, content))

    def publish_telemetry(self, content: TelemetryContent) -> bool:
        """Store and send telemetry unless it is disabled or over the rate cap."""
        if not self.config.telemetry.enabled or not self._telemetry.take():
            return False
        self._store_and_send("telemetry", lambda seq: self._builder.telemetry(seq, content))
        return True

    # ---------------------------------------------------------------- sending
    def _topic(self, leaf: str) -> str:
        return device_topic(self.config.site, self.config.device, leaf)

    def _store_and_send(self, kind: OutboxKind, build: Callable[[int], Envelope]) -> None:
        def make_payload(seq: int) -> tuple[str, bytes]:
            message = build(seq)
            return message.message_id, message.model_dump_json().encode()

        row = self.outbox.append(kind, self._topic(kind), make_payload)
        if not (self._connected.is_set() and self._send_row(row.row_id, row.topic, row.payload, replay=False)):
            with self._lock:
                self._backlog_version += 1

    def _send_row(self, row_id: int, topic: str, payload: bytes, *, replay: bool) -> bool:
        with self._lock:
            if row_id in self._inflight_rows:
                return False
            info = self._client.publish(topic, payload, qos=QOS)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.warning("publish of outbox row %d failed (%s); it stays queued", row_id, info.rc)
                return False
            # NO_CONN: paho queued it; on_connect drops paho's queue and our replay resends the row.
            self._inflight[info.mid] = (row_id, replay)
            self._inflight_rows.add(row_id)
            if replay:
                self._replay_outstanding += 1
        return True

    def _publish_status_now(self, state: DeviceState, reason: str | None) -> mqtt.MQTTMessageInfo | None:
        message = self._builder.status(self.outbox.reserve_seq(), state, reason, self._model)
        info = self._client.publish(self._topic("status"), message.model_dump_json(), qos=QOS, retain=True)
        return info if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def _set_will(self) -> None:
        # Each connection gets a will with a fresh message id, so receivers never drop a later
        # "offline" as a duplicate of an earlier one.
        will: StatusMessage = self._builder.status(
            self.outbox.reserve_seq(), "offline", "connection lost", self._model
        )
        self._client.will_set(self._topic("status"), will.model_dump_json(), qos=QOS, retain=True)

    # ---------------------------------------------------------------- paho callbacks (network thread)
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning("broker refused the connection: %s", self._diagnosis.describe(reason_code))
            return
        with self._lock:
            # Unacknowledged messages of the old connection are resent by our replay (flagged
            # historical), not by paho, so that each row has exactly one owner.
            client.drop_out_messages()
            self._generation += 1
            self._inflight.clear()
            self._inflight_rows.clear()
            self._replay_cursor = 0
            self._replay_outstanding = 0
            self._backlog_version += 1
        self._backoff.connected()
        client.subscribe(self._topic("cmd/+"), qos=QOS)
        self.connections += 1
        # Birth before anyone may publish on this connection, so "online" is the first status seen.
        self._publish_status_now(self._state, self._reason or "connected")
        if self.config.home_assistant.enabled:
            self._publish_discovery(client)
        self._connected.set()

    def _publish_discovery(self, client: mqtt.Client) -> None:
        # Retained and re-sent on every connect: Home Assistant may have started after us, or lost them.
        for topic, payload in discovery_messages(
            self.config.home_assistant, self.config.site, self.config.device, TOPIC_ROOT,
            self._builder.agent_version,
        ):
            client.publish(topic, json.dumps(payload), qos=QOS, retain=True)
        logger.info("connected to %s:%d", self.config.broker.host, self.config.broker.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if self._stopping.is_set():
            return
        logger.warning(
            "disconnected from the broker (%s); messages wait in the outbox", self._diagnosis.describe(reason_code)
        )
        self._set_will()
        self._backoff.failed()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._backoff.failed()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning("broker rejected message %d: %s; it stays in the outbox", mid, reason_code)
            return
        self._acks.put((self._generation, mid))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._command_queue.put(message)

    # ---------------------------------------------------------------- worker threads
    def _pump(self) -> None:
        bucket_tokens = 0.0
        last = time.monotonic()
        rate = self.config.outbox.replay_rate_per_s
        while not self._stopping.is_set():
            self._apply_acks(timeout_s=0.05)
            now = time.monotonic()
            bucket_tokens = min(max(rate, 1.0), bucket_tokens + (now - last) * rate)
            last = now
            if self._connected.is_set() and bucket_tokens >= 1.0:
                bucket_tokens -= self._replay(int(bucket_tokens))

    def _apply_acks(self, timeout_s: float) -> None:
        try:
            first = self._acks.get(timeout=timeout_s)
        except queue.Empty:
            return
        batch = [first]
        while True:
            try:
                batch.append(self._acks.get_nowait())
            except queue.Empty:
                break
        rows = []
        with self._lock:
            for generation, mid in batch:
                if generation != self._generation:
                    continue  # ack of a dropped connection's message: its row is being replayed
                sent = self._inflight.pop(mid, None)
                if sent is not None:
                    row_id, replayed = sent
                    self._inflight_rows.discard(row_id)
                    rows.append(row_id)
                    if replayed:
                        self._replay_outstanding -= 1
        self.outbox.acknowledge(rows)

    def _replay(self, budget: int) -> int:
        with self._lock:
            version = self._backlog_version
            if version == self._replayed_version:
                return 0
            budget = min(budget, MAX_REPLAY_OUTSTANDING - self._replay_outstanding)
            cursor = self._replay_cursor
        if budget <= 0:
            return 0
        rows = self.outbox.pending(cursor, budget)
        sent = 0
        for row in rows:
            with self._lock:
                self._replay_cursor = max(self._replay_cursor, row.row_id)
            if self._send_row(row.row_id, row.topic, historical_copy(row.payload), replay=True):
                sent += 1
        if len(rows) < budget:
            with self._lock:
                self._replayed_version = max(self._replayed_version, version)
        return sent

    def replay(self, args: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """The ``replay`` command: republish retained messages (see :mod:`edge_agent.reporting.replay`)."""

        def publish(topic: str, payload: bytes) -> bool:
            return self._client.publish(topic, payload, qos=QOS).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

        return replay_ranges(self.outbox, args, publish)

    def _command_worker(self) -> None:
        while True:
            message = self._command_queue.get()
            if message is None:
                return
            name = message.topic.rsplit("/", 1)[-1]
            reply = self._commands.handle(name, bytes(message.payload))
            self._send_reply(reply, message)

    def _send_reply(self, reply: CommandReply, request: mqtt.MQTTMessage) -> None:
        result = CommandResult.model_validate(
            {
                "site": self.config.site,
                "device": self.config.device,
                "seq": self.outbox.reserve_seq(),
                "command": reply.command,
                "request_id": reply.request_id,
                "outcome": reply.outcome,
                "error": reply.error,
                "data": reply.data,
            }
        )
        topic = self._topic(f"cmd/{reply.command}/result")
        properties = None
        request_properties = getattr(request, "properties", None)
        if self._mqtt5 and request_properties is not None:
            response_topic = getattr(request_properties, "ResponseTopic", None)
            correlation = getattr(request_properties, "CorrelationData", None)
            if response_topic:
                topic = response_topic
            if correlation is not None:
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = correlation
        self._client.publish(topic, result.model_dump_json(), qos=QOS, properties=properties)
