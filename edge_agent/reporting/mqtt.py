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

Supervision rules (nothing dies silently):
* the pump and the command worker run under a :class:`~edge_agent.watchdog.Watchdog`: a worker that
  raises is restarted with one ``worker-died`` alert per death; more than ``max_restarts`` deaths in
  ``restart_window_s`` make the status ``degraded`` (reason ``worker:<name>``) with one
  ``worker-crash-loop`` alert, and restarts continue more slowly until the worker stays up a window;
* every command gets a reply, an error reply when its handling fails (undecodable or too deeply nested
  JSON, a lone surrogate, a failing handler); a command that cannot be answered (an invalid MQTT 5
  response topic, a reply that cannot be built) is dropped, logged and counted in the summaries'
  ``health.dropped_commands``;
* paho's network thread never sees one of our exceptions (they are logged, not raised in its loop).

Disk rules:
* a write the disk refuses (ENOSPC, SQLite "database or disk is full") makes the status ``degraded``
  (reason ``disk``) with one ``disk-full`` alert; its log line appears once a minute with a count;
* messages that could not be stored wait in memory, in order (at most ``MAX_HELD_MESSAGES``, oldest
  dropped and counted beyond), and acknowledgements that could not be recorded are kept; the pump
  retries both with a backoff (0.5 s doubling to 30 s) and, once everything is written, clears the
  reason with one ``disk-space-recovered`` alert: no restart needed.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import JsonValue

from edge_agent.fsutil import is_disk_full
from edge_agent.health import HealthReasons
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
from edge_agent.watchdog import RateLimitedLog, RestartPolicy, Watchdog

logger = logging.getLogger(__name__)

QOS = 1
# Rows handed to paho but not yet acknowledged during a replay; bounds memory when the cap is high.
MAX_REPLAY_OUTSTANDING = 1000
# Messages kept in memory while the disk refuses to store them (a summary is a few KB).
MAX_HELD_MESSAGES = 1000
DISK_RETRY_MIN_S = 0.5
DISK_RETRY_MAX_S = 30.0
# How long the command worker waits for a request before it looks at its heartbeat and the staging area.
COMMAND_POLL_S = 0.2


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
        health_reasons: HealthReasons | None = None,
        restart_policy: RestartPolicy | None = None,
    ):
        self.config = config
        box = config.outbox
        self.outbox = Outbox(box.path, box.max_bytes, box.synchronous, box.retain_messages, box.retain_age_s)
        self._builder = MessageBuilder(config.site, config.device, agent_version)
        self._commands = CommandProcessor(
            Path(config.command_staging_dir),
            config.max_update_bytes,
            control,
            updater,
            guard,
            replayer=self,
            staging_reserve_bytes=config.staging_reserve_bytes,
            staging_max_age_s=config.staging_max_age_s,
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
        self.connections = 0
        # Shared with the agent, so that the model, the disk and the workers each add their own reason.
        self.health_reasons = health_reasons or HealthReasons()
        self.health_reasons.subscribe(self._reasons_changed)
        self.watchdog = Watchdog(self.publish_alert, self.health_reasons, restart_policy)
        self.dropped_commands = 0
        self._errors = RateLimitedLog(logger)
        # Disk-full handling (see the module doc): held messages and unrecorded acks, retried by the pump.
        self._held: deque[tuple[OutboxKind, Callable[[int], Envelope]]] = deque()
        self._held_lock = threading.RLock()
        self._unrecorded_acks: list[int] = []
        self.dropped_while_disk_full = 0
        self._disk_retry_delay = DISK_RETRY_MIN_S
        self._disk_retry_at = 0.0

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
        self.watchdog.spawn("outbox-pump", self._pump)
        self.watchdog.spawn("commands", self._command_worker)

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish "stopped" (retained), disconnect cleanly and close the outbox.

        "stopped" tells the fleet the device went away on purpose; "offline" stays the last will's, so
        a lost device and a switched-off one read differently."""
        if self._connected.is_set():
            info = self._publish_status_now("stopped", "agent stopped")
            if info is not None:
                info.wait_for_publish(timeout_s)
        self._stopping.set()
        self.watchdog.stop()
        self._command_queue.put(None)
        self.watchdog.join(timeout_s)
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
        """Store and send a summary carrying the current outbox depth and drop counts, and the
        reporter's own health counters (dropped commands, worker restarts)."""
        if content.health is not None:
            counters = {
                "dropped_commands": self.dropped_commands,
                "worker_restarts": sum(self.watchdog.restarts.values()),
            }
            content = content.model_copy(update={"health": content.health.model_copy(update=counters)})
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

        with self._held_lock:
            if self._held:  # keep the order: nothing overtakes what waits for disk space
                self._hold(kind, build)
                return
            try:
                # Stored and sent under one lock: the pump's replay, reading the outbox meanwhile, must
                # not find the new row before its live send owns it (it would go out as historical).
                with self._lock:
                    row = self.outbox.append(kind, self._topic(kind), make_payload)
                    live = self._connected.is_set()
                    if not (live and self._send_row_locked(row.row_id, row.topic, row.payload, replay=False)):
                        self._backlog_version += 1
            except (OSError, sqlite3.OperationalError) as exc:
                if not is_disk_full(exc):
                    raise
                self._hold(kind, build)
                self._disk_full(exc)

    def _hold(self, kind: OutboxKind, build: Callable[[int], Envelope]) -> None:
        if len(self._held) >= MAX_HELD_MESSAGES:
            self._held.popleft()
            self.dropped_while_disk_full += 1
        self._held.append((kind, build))

    def _disk_full(self, exc: BaseException) -> None:
        self._errors.warning(f"the disk is full ({exc}); messages wait in memory until space returns")
        self._disk_retry_at = time.monotonic() + self._disk_retry_delay
        if "disk" in self.health_reasons:
            return
        self.health_reasons.set("disk", f"disk full: {exc}; reports wait in memory")
        with self._held_lock:
            self._hold(
                "alert",
                lambda seq: self._builder.alert(
                    seq,
                    AlertContent(
                        severity="critical",
                        code="disk-full",
                        message=f"the disk holding the outbox is full ({exc}); reports wait in memory "
                        f"(at most {MAX_HELD_MESSAGES}) until space returns",
                    ),
                ),
            )

    def _retry_disk(self) -> None:
        """Write what the full disk refused; clear the ``disk`` reason once everything is written."""
        if "disk" not in self.health_reasons or time.monotonic() < self._disk_retry_at:
            return
        try:
            if self._unrecorded_acks:
                self.outbox.acknowledge(self._unrecorded_acks)
                self._unrecorded_acks = []
            self._store_held()
        except (OSError, sqlite3.OperationalError) as exc:
            if not is_disk_full(exc):
                raise
            self._disk_retry_delay = min(self._disk_retry_delay * 2, DISK_RETRY_MAX_S)
            self._disk_full(exc)
            return
        self._disk_retry_delay = DISK_RETRY_MIN_S
        dropped = self.dropped_while_disk_full
        self.health_reasons.clear("disk")
        self.publish_alert(
            AlertContent(
                severity="info",
                code="disk-space-recovered",
                message="the disk has space again; held reports were stored"
                + (f" ({dropped} dropped while it was full)" if dropped else ""),
            )
        )

    def _store_held(self) -> None:
        while True:
            with self._held_lock:
                if not self._held:
                    return
                kind, build = self._held[0]

                def make_payload(seq: int, build: Callable[[int], Envelope] = build) -> tuple[str, bytes]:
                    message = build(seq)
                    return message.message_id, message.model_dump_json().encode()

                self.outbox.append(kind, self._topic(kind), make_payload)
                self._held.popleft()
            with self._lock:
                self._backlog_version += 1

    def _reasons_changed(self) -> None:
        self._state, self._reason = self.health_reasons.state()
        if self._connected.is_set():
            self._publish_status_now(self._state, self._reason)

    def _send_row(self, row_id: int, topic: str, payload: bytes, *, replay: bool) -> bool:
        with self._lock:
            return self._send_row_locked(row_id, topic, payload, replay=replay)

    def _send_row_locked(self, row_id: int, topic: str, payload: bytes, *, replay: bool) -> bool:
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
            self.watchdog.heartbeat("outbox-pump")
            self._apply_acks(timeout_s=0.05)
            self._retry_disk()
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
        try:
            self.outbox.acknowledge(rows)
        except (OSError, sqlite3.OperationalError) as exc:
            if not is_disk_full(exc):
                raise
            # The broker has these rows: record that once the disk has room (a reconnect before then
            # resends them with their message ids, which receivers deduplicate).
            self._unrecorded_acks.extend(rows)
            self._disk_full(exc)

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
            self.watchdog.heartbeat("commands")
            try:
                message = self._command_queue.get(timeout=COMMAND_POLL_S)
            except queue.Empty:
                self._commands.forget_abandoned_transfers()
                continue
            if message is None:
                return
            self._serve(message)

    def _serve(self, message: mqtt.MQTTMessage) -> None:
        """Answer one command; one that cannot be answered is dropped, logged and counted."""
        name = message.topic.rsplit("/", 1)[-1]
        try:
            reply = self._commands.handle(name, bytes(message.payload))
            self._send_reply(reply, message)
        except Exception as exc:
            self.dropped_commands += 1
            self._errors.warning(f"command {name[:64]!r} dropped without a reply: {type(exc).__name__}: {exc}")

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
            if response_topic is not None:
                _check_response_topic(response_topic)
                topic = response_topic
            if correlation is not None:
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = correlation
        self._client.publish(topic, result.model_dump_json(), qos=QOS, properties=properties)


class ResponseTopicError(ValueError):
    """An MQTT 5 response topic nobody can publish to; the command is dropped and counted."""


def _check_response_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic or len(topic.encode("utf-8", "replace")) > 65535:
        raise ResponseTopicError(f"invalid MQTT 5 response topic {topic[:80]!r}: not a topic a reply can go to")
