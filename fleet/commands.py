"""The operator's side of remote commands: sign, send, wait for the result; fill sequence gaps by replay.

A command is signed with the fleet operator key (``gridedge keys new --kind operator``) over the
canonical form the device verifies (:func:`edge_agent.reporting.authentication.canonical_command`):
target site and device, command name, arguments, issued-at time and a fresh nonce. The device answers
on ``gridedge/v1/{site}/{device}/cmd/{name}/result``, which is where :class:`CommandClient` listens
(the operator account of docs/mqtt/mosquitto-acl.conf may read exactly those topics).

:func:`replay_gaps` reads the sequence gaps of the fleet store, asks each device to replay them, and
records the ranges a device answers it no longer holds, so they are not asked for again.
"""

from __future__ import annotations

import base64
import json
import queue
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import JsonValue

from edge_agent.errors import FleetError
from edge_agent.messages import CommandRequest, device_topic, utc_now
from edge_agent.reporting.authentication import canonical_command
from edge_agent.reporting.replay import MAX_REPLAY_RANGES
from edge_agent.transport import BrokerConfig, make_client
from gridedge.fleet.store import FleetStore


class CommandError(FleetError):
    """A command could not be sent or got no result in time."""


def sign_request(
    key: Ed25519PrivateKey, site: str, device: str, command: str, request: CommandRequest
) -> CommandRequest:
    """``request`` addressed to one device and signed, with a fresh nonce (its time and args kept)."""
    addressed = request.model_copy(
        update={"site": site, "device": device, "nonce": secrets.token_urlsafe(18), "signature": None}
    )
    signature = key.sign(canonical_command(command, addressed))
    return addressed.model_copy(update={"signature": base64.b64encode(signature).decode("ascii")})


def sign_command(
    key: Ed25519PrivateKey,
    site: str,
    device: str,
    command: str,
    args: dict[str, JsonValue] | None = None,
    issued_at: datetime | None = None,
) -> CommandRequest:
    """A signed command for ``site/device`` issued now (or at ``issued_at``)."""
    request = CommandRequest(args=args or {}, ts=issued_at or utc_now())
    return sign_request(key, site, device, command, request)


def parse_arg(text: str) -> tuple[str, JsonValue]:
    """``key=value`` from the command line; the value is read as JSON when it is JSON (true, 3,
    [[1, 4]]) and kept as text otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--arg {text!r} must look like key=value")
    try:
        parsed: JsonValue = json.loads(value)
    except ValueError:
        parsed = value
    return name, parsed


class CommandClient:
    """Publishes commands and collects their results over one MQTT connection; use as a context manager."""

    def __init__(self, broker: BrokerConfig, timeout_s: float = 30.0):
        self.broker = broker
        self.timeout_s = timeout_s
        self._results: dict[str, queue.SimpleQueue[dict[str, Any]]] = {}
        self._on_status: Callable[[str, str, bytes], None] | None = None
        self._topics: set[str] = set()
        self._subscribing: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._client = make_client(broker, f"gridedge-operator-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = lambda *args: self._connected.set()
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def __enter__(self) -> CommandClient:
        self._client.connect(self.broker.host, self.broker.port, self.broker.keepalive_s)
        self._client.loop_start()
        if not self._connected.wait(self.timeout_s):
            self.close()
            raise CommandError(f"cannot connect to the broker at {self.broker.host}:{self.broker.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, codes: list[ReasonCode], properties: object
    ) -> None:
        with self._lock:
            event = self._subscribing.pop(mid, None)
        if event is not None:
            event.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._on_status is not None and message.topic.endswith("/status"):
            parts = message.topic.split("/")
            if len(parts) == 5:
                self._on_status(parts[2], parts[3], bytes(message.payload))
            return
        try:
            document = json.loads(message.payload)
            request_id = str(document["request_id"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            waiting = self._results.get(request_id)
        if waiting is not None:
            waiting.put(document)

    def watch_status(self, callback: Callable[[str, str, bytes], None]) -> None:
        """Call ``callback(site, device, payload)`` for every device's status: the retained one at once,
        then each birth, will and state change (how a rollout sees a device come back)."""
        self._on_status = callback
        self._subscribe(device_topic("+", "+", "status"))

    def _listen(self, site: str, device: str) -> None:
        self._subscribe(device_topic(site, device, "cmd/+/result"))

    def _subscribe(self, topic: str) -> None:
        with self._lock:
            if topic in self._topics:
                return
            self._topics.add(topic)
            done = threading.Event()
            # Held across subscribe(): the SUBACK callback waits for the lock, so it finds the mid.
            _, mid = self._client.subscribe(topic, qos=1)
            if mid is not None:
                self._subscribing[mid] = done
        if not done.wait(self.timeout_s):
            raise CommandError(f"could not subscribe to {topic}; check the operator's broker ACL")

    def send(self, site: str, device: str, command: str, request: CommandRequest) -> dict[str, Any]:
        """Publish one request and return its result (the first one that is not "in-progress" for the
        last chunk of a transfer; any result for the others)."""
        self._listen(site, device)
        results: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._lock:
            self._results[request.request_id] = results
        try:
            info = self._client.publish(
                device_topic(site, device, f"cmd/{command}"), request.model_dump_json(), qos=1
            )
            info.wait_for_publish(self.timeout_s)
            try:
                return results.get(timeout=self.timeout_s)
            except queue.Empty as exc:
                raise CommandError(
                    f"no result from {site}/{device} for {command} within {self.timeout_s:.0f} s; is it online?"
                ) from exc
        finally:
            with self._lock:
                del self._results[request.request_id]


@dataclass
class ReplayReport:
    """What asking one device to replay its gaps achieved."""

    site: str
    device: str
    requested: list[tuple[int, int]]
    replayed: int = 0
    unavailable: list[tuple[int, int]] = field(default_factory=list)
    error: str | None = None


def replay_gaps(
    store: FleetStore,
    client: CommandClient,
    key: Ed25519PrivateKey,
    site: str | None = None,
    device: str | None = None,
    max_rounds: int = 100,
) -> list[ReplayReport]:
    """Ask every device with sequence gaps (optionally one site or device) to replay them; mark the
    ranges it no longer holds as unavailable. The replayed messages reach the fleet through the running
    receivers (``gridedge fleet listen``), like any other message."""
    reports = []
    for (gap_site, gap_device), gaps in sorted(store.gaps(site, device).items()):
        report = ReplayReport(gap_site, gap_device, list(gaps))
        reports.append(report)
        todo = list(gaps)
        for _ in range(max_rounds):
            if not todo:
                break
            batch, todo = todo[:MAX_REPLAY_RANGES], todo[MAX_REPLAY_RANGES:]
            request = sign_command(key, gap_site, gap_device, "replay", {"ranges": [list(r) for r in batch]})
            try:
                result = client.send(gap_site, gap_device, "replay", request)
            except CommandError as exc:
                report.error = str(exc)
                break
            if result["outcome"] != "ok":
                report.error = str(result.get("error"))
                break
            data = result["data"]
            report.replayed += int(data["replayed"])
            gone = [(int(first), int(last)) for first, last in data["unavailable"]]
            if gone:
                store.mark_unavailable(gap_site, gap_device, gone)
                report.unavailable.extend(gone)
            todo = [(int(first), int(last)) for first, last in data["remaining"]] + todo
    return reports
