"""Fleet receiver: subscribes to every device's reports and stores them, deduplicated, in a FleetStore.

Several receiver processes split one fleet through an MQTT 5 shared subscription
(``$share/<group>/gridedge/v1/+/+/summary`` and friends): the broker hands each message to one member
of the group. Status topics are subscribed without sharing so that every receiver also gets the
retained status of every device when it starts (the store deduplicates the copies).

A message is acknowledged to the broker only after the transaction that stored it has committed, and
the receiver keeps a persistent session (stable client id, session expiry): while it is away the broker
queues its share of the messages (across a broker restart too, with persistence on, except for shared
subscriptions on Mosquitto 2.0.11: see docs/mqtt/README.md).

A device's identity is the topic's (the broker ACL binds each device to its own topics), never the
payload's: a payload naming another site or device is refused. A message that is too large, invalid,
disagrees with its topic or that the database cannot store goes to the dead letters, is acknowledged
and counted; only errors of the database itself are retried (and a stop request ends the retries).

Throughput: paho's network loop alone costs a Python process most of what it has at 5,000+ messages/s,
so validation and storage (a :class:`BatchWriter`) run by default in a child process of their own, with
its own GIL. The network side only queues raw ``(topic, payload)`` pairs, ships them in batches of up to
``batch_size`` through a pipe (one pickle per batch), and acknowledges a batch's messages when the child
answers that its transaction committed. A new batch leaves when the child is idle (or a full one waits):
what arrives while it stores gathers into the next batch. A child that dies is restarted and gets the
batch again. Where the CPU goes in both processes, and what each measure bought: ``docs/fleet.md``.

Nothing here dies silently: the writer thread runs under a :class:`~edge_agent.watchdog.Watchdog` (a
thread that dies is restarted, logged as a critical ``worker-died`` alert and counted in
``watchdog.restarts``; a crash loop marks the receiver degraded in :attr:`FleetReceiver.health_reasons`),
and a writer process that dies is restarted with a critical ``writer-process-died`` alert, counted in
``stats.writer_process_restarts``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import pickle
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import FleetError
from edge_agent.health import HealthReasons
from edge_agent.messages import (
    TOPIC_ROOT,
    AlertContent,
    AlertMessage,
    CommandResult,
    Envelope,
    StatusMessage,
    SummaryMessage,
    TelemetryMessage,
)
from edge_agent.reporting.diagnosis import ConnectionDiagnosis
from edge_agent.transport import BrokerConfig, make_client
from edge_agent.watchdog import RestartPolicy, Watchdog
from gridedge.fleet.settings import Retention
from gridedge.fleet.store import FleetStore, Received

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Far above any summary a device makes (a few KB); a larger payload is dead-lettered unparsed.
MAX_PAYLOAD_BYTES = 256 * 1024
# Batches in the writer process's pipe at once: two keep it busy while the network side acknowledges.
PIPELINE_DEPTH = 2
# Bytes per socket read of the receiver's client: some twenty summaries.
READ_CHUNK = 64 * 1024
# PUBACK fixed header: packet type 4 and remaining length 2, then the packet id.
PUBACK_HEADER = (mqtt.PUBACK << 8) | 2

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
    dead_letters: int = 0
    writer_process_restarts: int = 0


class ReceiverError(FleetError):
    """The receiver could not connect or was refused; the message says why and what to check."""


class _StoppingError(Exception):
    """A database retry was abandoned because the receiver is stopping."""


class PoisonMessageError(ValueError):
    """A message that will never be stored; its text is the dead-letter reason."""


def identity_from_topic(topic: str) -> tuple[str, str, str]:
    """(site, device, leaf) of a device topic ``gridedge/v1/{site}/{device}/...``."""
    parts = topic.split("/")
    root_levels = TOPIC_ROOT.count("/") + 1
    if len(parts) < root_levels + 3 or "/".join(parts[:root_levels]) != TOPIC_ROOT:
        raise PoisonMessageError(f"not a gridedge v1 device topic: {topic}")
    return parts[root_levels], parts[root_levels + 1], parts[-1]


def validate(topic: str, payload: bytes, received_at: float) -> Received:
    """Parse a device message, checking size, schema, and that its identity is its topic's."""
    site, device, leaf = identity_from_topic(topic)
    model = MODEL_BY_LEAF.get(leaf)
    if model is None:
        raise PoisonMessageError(f"not a gridedge v1 device topic: {topic}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PoisonMessageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES} bytes")
    try:
        message = model.model_validate_json(payload)
        text = payload.decode()
    except ValueError as exc:  # pydantic's ValidationError and UnicodeDecodeError included
        raise PoisonMessageError(f"invalid {leaf}: {exc}") from exc
    if (message.site, message.device) != (site, device):
        raise PoisonMessageError(
            f"identity mismatch: the payload says {message.site}/{message.device}, the topic {site}/{device}"
        )
    return Received(message, text, received_at, topic)


class _ReceiverClient(mqtt.Client):
    """paho's client with two per-message costs of a busy subscriber cut, for which paho 2.2 has no
    public API: it reads each packet with three or four ``recv`` calls and one ``select``, and writes
    each PUBACK on its own. Here the socket is read 64 KB at a time (packets are parsed from the
    buffer until it is empty), and :meth:`ack_many` queues the PUBACKs of a batch as one write."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._read_buffer = b""
        self._read_offset = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_offset >= len(self._read_buffer):
            self._read_buffer, self._read_offset = super()._sock_recv(READ_CHUNK), 0
        start = self._read_offset
        self._read_offset = min(start + bufsize, len(self._read_buffer))
        return self._read_buffer[start : self._read_offset]

    def _sock_close(self) -> None:
        # A new connection must not start with the end of the old one's stream.
        super()._sock_close()
        self._read_buffer, self._read_offset = b"", 0

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # select() cannot see what the buffer holds: parse on until it is empty, writing what the
        # writer thread queued (acknowledgements) in between so that the broker keeps sending.
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._read_offset < len(self._read_buffer):
            if self.want_write():
                self.loop_write()
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages in one write (PUBACKs with reason 0 are 4 bytes in MQTT 3.1.1 and 5)."""
        if mids:
            packets = struct.pack(f"!{len(mids)}I", *((PUBACK_HEADER << 16) | mid for mid in mids))
            self._packet_queue(mqtt.PUBACK, packets, 0, 0)


class Inbox:
    """Hands received messages from paho's network thread to the writer thread.

    The network side appends to a deque without a lock and wakes the writer only when it waits: a
    ``queue.Queue`` (a lock and a notify per message) cost the network process ~25% more CPU per
    message (measured, ``benchmarks/results/mqtt.md``). Bounded: when storage falls behind (a backlog
    after downtime), :meth:`put` holds paho's loop and TCP holds the rest at the broker, instead of up
    to ReceiveMaximum messages piling up in memory.
    """

    def __init__(self, limit: int):
        self._items: deque[tuple[int, mqtt.MQTTMessage] | None] = deque()
        self._limit = limit
        self._waiting = False
        self._wake = threading.Event()
        self._space = threading.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: tuple[int, mqtt.MQTTMessage], stopping: Callable[[], bool]) -> bool:
        """Append ``item``, waiting while the inbox is full; False (dropped) once ``stopping()``."""
        while len(self._items) >= self._limit:
            if stopping():
                return False
            self._space.clear()
            if len(self._items) >= self._limit:
                self._space.wait(0.2)
        self._items.append(item)
        if self._waiting:
            self._wake.set()
        return True

    def close(self) -> None:
        """Append the stop marker (even when full): the writer stores what came before it, then ends."""
        self._items.append(None)
        self._wake.set()

    def take(self, limit: int, wait_s: float) -> tuple[list[tuple[int, mqtt.MQTTMessage]], bool]:
        """Up to ``limit`` items, waiting up to ``wait_s`` for the first, and whether the stop marker came."""
        items = self._items
        if not items and wait_s > 0:
            self._waiting = True
            self._wake.clear()
            if not items:  # put() may have appended before it could see _waiting
                self._wake.wait(wait_s)
            self._waiting = False
        batch: list[tuple[int, mqtt.MQTTMessage]] = []
        while items and len(batch) < limit:
            item = items.popleft()
            if item is None:
                return batch, True
            batch.append(item)
        if not self._space.is_set():
            self._space.set()
        return batch, False


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one batch: counts for :class:`ReceiverStats` (``None`` from an abandoned batch)."""

    stored: int
    duplicates: int
    invalid: int
    dead_letters: int


class BatchWriter:
    """Validates raw messages and stores them in one transaction, dead-lettering what cannot be stored.

    Runs in the receiver's writer process (or thread); ``should_stop`` ends database retries so that a
    stopping receiver leaves a batch unacknowledged instead of waiting for a database that is down.
    """

    def __init__(
        self, store: FleetStore, name: str, should_stop: Callable[[], bool], retention: Retention | None = None
    ):
        self.store = store
        self.name = name
        self.should_stop = should_stop
        self.retention = retention or Retention()
        self._next_retention = 0.0

    def write(self, batch: list[tuple[str, bytes]]) -> BatchOutcome | None:
        """Store a batch; ``None`` when a stop request abandoned it (it stays unacknowledged)."""
        now = time.time()
        items = []
        poison: list[tuple[str, bytes, str]] = []
        for topic, payload in batch:
            try:
                items.append(validate(topic, payload, now))
            except PoisonMessageError as exc:
                poison.append((topic, payload, str(exc)))
        invalid = len(poison)
        try:
            new, refused = self._retry(
                lambda: self.store.ingest_isolating(items, self.name), f"storing {len(items)} messages"
            )
            poison += [(item.topic or "", item.payload.encode(), reason) for item, reason in refused]
            for topic, payload, reason in poison:
                logger.warning("dead-lettering a message on %s: %s", topic, reason)
                self._retry(
                    lambda: self.store.dead_letter(topic, payload, reason, self.name, now),  # noqa: B023
                    "dead-lettering",
                )
            if now >= self._next_retention:
                # Hourly is plenty: PostgreSQL drops day partitions, SQLite deletes a little at a time.
                self._next_retention = now + 3600
                self._apply_retention(now)
        except _StoppingError:
            return None
        return BatchOutcome(new, len(items) - len(refused) - new, invalid, len(poison))

    def _apply_retention(self, now: float) -> None:
        messages_days, series_days = self.retention.messages_days, self.retention.series_days
        if messages_days is not None:
            self._retry(lambda: self.store.apply_retention(messages_days, now), "retention")
        if series_days is not None:
            self._retry(lambda: self.store.apply_series_retention(series_days, now), "series retention")

    def _retry(self, action: Callable[[], T], what: str) -> T:
        # A database hiccup (lock timeout, deadlock victim, restart) must not kill the writer: the
        # batch is retried and stays unacknowledged until it is stored, or until a stop is requested.
        delay = 0.1
        while True:
            try:
                return action()
            except Exception:
                if self.should_stop():
                    raise _StoppingError(what) from None
                logger.exception("%s failed; retrying in %.1f s", what, delay)
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self.should_stop():
                    time.sleep(0.05)
                delay = min(delay * 2, 10.0)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a process that does nothing but receive.

    A batch in flight is thousands of live objects (messages, validated models) that the collector,
    at its default thresholds, scanned every 700 allocations: that cost the writer process more than
    validation itself and the network process a quarter of its CPU (writer 7,700 -> 10,900 and
    network 8,300 -> 11,000 summaries per CPU-second, measured). Receiving makes few reference cycles;
    what the imports left is frozen out of every collection. The writer process calls this itself;
    ``gridedge fleet listen`` calls it for the network process.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)


def _writer_process(
    store_arguments: dict[str, Any], name: str, retention: Retention, connection: Connection, stopping: Any
) -> None:
    """Child process: answer each pickled batch received on ``connection`` with its BatchOutcome, in
    order, until an empty message."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = FleetStore(**store_arguments)
    writer = BatchWriter(store, name, stopping.is_set, retention)
    tune_gc()
    connection.send("ready")
    try:
        while data := connection.recv_bytes():
            connection.send(writer.write(pickle.loads(data)))
    finally:
        store.close()


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
        writer_process: bool = True,
        retention: Retention | None = None,
        restart_policy: RestartPolicy | None = None,
    ):
        self.broker = broker
        self.store = store
        self.group = group
        self.name = name or f"receiver-{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        self.session_expiry_s = session_expiry_s
        self.stats = ReceiverStats()
        self.writer_process = writer_process
        self.retention = retention or Retention()
        # spawn: the receiver's threads (paho, tests' reporters) must not be forked half-way.
        self._context = multiprocessing.get_context("spawn")
        self._child_stopping = self._context.Event()
        self._child: Any = None
        self._child_connection: Connection | None = None
        self._batch_writer = BatchWriter(store, self.name, self._stopping_requested, self.retention)
        # (connection generation, message): an ack is only valid on the connection that delivered it.
        self._inbox = Inbox(2 * batch_size)
        self._generation = 0
        self._subscribe_mid: int | None = None
        # Batches sent to the writer process and not yet answered, oldest first, with their pickle
        # (sent again to a restarted writer). Kept here: a restarted writer thread picks them up.
        self._pending: deque[tuple[list[tuple[int, mqtt.MQTTMessage]], bytes]] = deque()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._refused: str | None = None
        self.health_reasons = HealthReasons()
        self.watchdog = Watchdog(self._alert, self.health_reasons, restart_policy, thread_prefix="gridedge-fleet")
        self._client = cast(
            _ReceiverClient,
            make_client(
                broker,
                broker.client_id or f"gridedge-fleet-{self.name}",
                persistent_session=session_expiry_s > 0,
                client_class=_ReceiverClient,
            ),
        )
        self.diagnosis = ConnectionDiagnosis(self._client)
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
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
        if self.writer_process:
            self._start_child()
        self._client.loop_start()
        self.watchdog.spawn("writer", self._write_loop)

    @property
    def writer_pid(self) -> int | None:
        """Process id of the writer process (None when writing in-process or not started)."""
        return self._child.pid if self._child is not None else None

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until subscribed (True) or the timeout passes (False)."""
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        """Store what was received (unless the database is failing), then disconnect."""
        # Set first: a writer retrying a failing database gives up, leaving its batch unacknowledged
        # for the broker to redeliver, instead of holding the stop for ever.
        self._stopping.set()
        self._child_stopping.set()
        self.watchdog.stop()
        self._inbox.close()
        self.watchdog.join(30)
        self._client.disconnect()
        self._client.loop_stop()
        self._stop_child()

    def _stopping_requested(self) -> bool:
        return self._stopping.is_set()

    def _start_child(self) -> Connection:
        parent, child = self._context.Pipe()
        self._child = self._context.Process(
            target=_writer_process,
            args=(self.store.reopen_arguments(), self.name, self.retention, child, self._child_stopping),
            name=f"gridedge-fleet-writer-{self.name}",
            daemon=True,
        )
        self._child.start()
        child.close()
        # Subscribe only once the writer can store: a receiver that starts slowly (the child imports
        # pydantic and opens the database, ~1 s) must not hold a backlog it cannot write yet.
        try:
            ready = parent.poll(120) and parent.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self._child.kill()
            raise ReceiverError(f"the fleet writer process could not open {self.store.location}")
        self._child_connection = parent
        return parent

    def _stop_child(self) -> None:
        if self._child is None or self._child_connection is None:
            return
        with contextlib.suppress(OSError):
            self._child_connection.send_bytes(b"")
        self._child.join(30)
        if self._child.is_alive():
            self._child.kill()
        self._child_connection.close()
        self._child = self._child_connection = None

    def _child_call(self, action: Callable[[Connection], T], retry: bool) -> T | None:
        """Run ``action`` on the pipe to the writer process. A writer that died is restarted and sent
        every pending batch again (in order), then ``action`` is run again if ``retry`` (a send is
        not: the pending batches include its own). ``None`` once stopping."""
        while not self._stopping.is_set() or self._child is not None:
            assert self._child_connection is not None
            try:
                return action(self._child_connection)
            except (EOFError, OSError):
                # Never silently dead: the writer process is restarted and the batches sent again.
                self.stats.writer_process_restarts += 1
                self._alert(
                    AlertContent(
                        severity="critical",
                        code="writer-process-died",
                        message=f"the fleet writer process of {self.name} died; restarting it",
                    )
                )
                self._child_connection.close()
                self._child = self._child_connection = None
                if self._stopping.is_set():
                    return None
                restarted = self._start_child()
                with contextlib.suppress(EOFError, OSError):
                    for _, data in self._pending:
                        restarted.send_bytes(data)
                if not retry:
                    return None
        return None

    def run(
        self,
        duration_s: float | None = None,
        connect_timeout_s: float = 10.0,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Receive until interrupted (Ctrl-C) or for ``duration_s`` seconds.

        Raises :class:`ReceiverError` when the first connection is refused or does not succeed
        within ``connect_timeout_s``, saying why (refused certificate, unreachable broker ...).
        """
        self.start()
        try:
            deadline = time.monotonic() + connect_timeout_s
            while not self._connected.wait(0.1):
                if self._refused is not None or time.monotonic() > deadline:
                    if self._refused is None:
                        self.diagnosis.probe(self.broker.host, self.broker.port)
                    raise ReceiverError(
                        f"cannot connect to {self.broker.host}:{self.broker.port}: "
                        f"{self._refused or self.diagnosis.describe()}"
                    )
            if on_subscribed is not None:
                on_subscribed()
            end = None if duration_s is None else time.monotonic() + duration_s
            while end is None or time.monotonic() < end:
                time.sleep(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
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
            self._refused = self.diagnosis.describe(reason_code)
            logger.warning("broker refused the receiver: %s", self._refused)
            return
        self._generation += 1
        _, self._subscribe_mid = client.subscribe([(topic, 1) for topic in subscriptions(self.group)])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        # Connected means subscribed: the broker's SUBACK came, so what a device publishes from now on
        # reaches this receiver (before it, a message could pass the receiver by).
        if mid != self._subscribe_mid:
            return
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            logger.warning("the broker refused a subscription of %s: %s", self.name, ", ".join(refused))
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
        if not self._stopping.is_set():
            logger.warning("disconnected from the broker: %s", self.diagnosis.describe(reason_code))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # Never block for good on a full inbox: once stopping, the message is left unacknowledged.
        self._inbox.put((self._generation, message), self._stopping.is_set)

    def _alert(self, alert: AlertContent) -> None:
        # The receiver has no device topic to publish on: its alerts go to the log, at a level the
        # service manager surfaces.
        level = logging.INFO if alert.severity == "info" else logging.CRITICAL
        logger.log(level, "%s: %s", alert.code, alert.message)

    def _write_loop(self) -> None:
        # The network side only batches and acknowledges. A batch goes to the writer process when it
        # is idle, or as a second one (PIPELINE_DEPTH) when a full batch waits; otherwise what arrives
        # while it stores gathers into the next batch (group commit). Sending whatever had arrived
        # made batches of ~5 messages at 5,000 messages/s, a transaction and a pipe round trip each.
        stopping = False
        while not stopping or self._pending:
            self.watchdog.heartbeat("writer")
            if not self.writer_process:
                batch, stopping = self._next_batch(stopping, wait=True)
                if batch:
                    self._acknowledge(batch, self._batch_writer.write(_raw(batch)))
                continue
            batch = []
            if not self._pending or (len(self._pending) < PIPELINE_DEPTH and len(self._inbox) >= self.batch_size):
                batch, stopping = self._next_batch(stopping, wait=not self._pending)
            if batch:
                data = pickle.dumps(_raw(batch), protocol=pickle.HIGHEST_PROTOCOL)
                self._pending.append((batch, data))
                self._child_call(lambda connection: connection.send_bytes(data), retry=False)  # noqa: B023
            elif self._pending:
                outcome: BatchOutcome | None = self._child_call(lambda connection: connection.recv(), retry=True)
                self._acknowledge(self._pending.popleft()[0], outcome)

    def _next_batch(self, stopping: bool, wait: bool) -> tuple[list[tuple[int, mqtt.MQTTMessage]], bool]:
        """Up to ``batch_size`` received messages (waiting up to 0.2 s for the first when ``wait``), and
        whether the stop marker was reached."""
        if stopping:
            return [], True
        return self._inbox.take(self.batch_size, 0.2 if wait else 0.0)

    def _acknowledge(self, batch: list[tuple[int, mqtt.MQTTMessage]], outcome: BatchOutcome | None) -> None:
        if outcome is None:
            return  # the batch stays unacknowledged: the broker redelivers it to the next receiver
        self.stats.received += len(batch)
        self.stats.stored += outcome.stored
        self.stats.invalid += outcome.invalid
        self.stats.dead_letters += outcome.dead_letters
        self.stats.duplicates += outcome.duplicates
        # After a reconnect the broker redelivers unacknowledged messages itself; acking an old mid on
        # the new connection could acknowledge a different message that is not stored yet.
        self._client.ack_many(
            [message.mid for generation, message in batch if message.qos == 1 and generation == self._generation]
        )


def _raw(batch: list[tuple[int, mqtt.MQTTMessage]]) -> list[tuple[str, bytes]]:
    return [(message.topic, bytes(message.payload)) for _, message in batch]
