"""Fixtures for MQTT tests: private Mosquitto brokers, fleet stores (SQLite and PostgreSQL), collectors.

Every payload a collector receives is validated against the committed JSON Schemas in docs/mqtt.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.reporting.config import MqttConfig
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.store import FleetStore

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "docs" / "mqtt" / "schemas"


def load_validators() -> dict[str, jsonschema.protocols.Validator]:
    validators = {}
    for path in SCHEMA_DIR.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validators[path.name.removesuffix(".schema.json")] = cls(
            schema, format_checker=cls.FORMAT_CHECKER
        )
    return validators


@pytest.fixture(scope="session")
def schema_validators() -> dict[str, jsonschema.protocols.Validator]:
    return load_validators()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    """A broker shared by tests that never stop it."""
    with LocalMosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """A broker of this test alone, which it may stop and restart."""
    with LocalMosquitto(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def device_ids() -> tuple[str, str]:
    """A site and device unique to this test, so tests sharing a broker never see each other."""
    return f"site-{uuid.uuid4().hex[:6]}", f"dev-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_config(tmp_path: Path, device_ids: tuple[str, str]) -> Callable[..., MqttConfig]:
    def build(port: int, **overrides: Any) -> MqttConfig:
        site, device = device_ids
        document: dict[str, Any] = {
            "site": site,
            "device": device,
            "broker": {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
            "outbox": {"path": str(tmp_path / "outbox.sqlite3"), "replay_rate_per_s": 2000},
            "command_staging_dir": str(tmp_path / "staging"),
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(document.get(key), dict):
                document[key] = {**document[key], **value}
            else:
                document[key] = value
        return MqttConfig.model_validate(document)

    return build


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetStore]:
    """A fleet store: a SQLite file, or a private schema in the local PostgreSQL database."""
    if request.param == "sqlite":
        opened = FleetStore(path=tmp_path / "fleet.sqlite3")
    else:
        opened = FleetStore(dsn=request.getfixturevalue("pg_dsn"))
    yield opened
    opened.close()


class Collector:
    """Subscribes to a topic filter and keeps (topic, payload dict, retained) in arrival order."""

    def __init__(self, port: int, topic: str, validators: dict[str, Any]):
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.schema_errors: list[str] = []
        self._validators = validators
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "collector could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        document = json.loads(message.payload)
        kind = document.get("kind", "command-request")
        validator = self._validators[kind]
        errors = [error.message for error in validator.iter_errors(document)]
        with self._lock:
            self.messages.append((message.topic, document, bool(message.retain)))
            self.schema_errors.extend(f"{message.topic}: {error}" for error in errors)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [doc for _, doc, _ in self.messages if doc.get("kind") == kind]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        return wait_until(predicate, timeout_s, poll_s=0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collect(schema_validators: dict[str, Any]) -> Iterator[Callable[..., Collector]]:
    opened: list[Collector] = []

    def start(port: int, topic: str = "gridedge/#") -> Collector:
        collector = Collector(port, topic, schema_validators)
        opened.append(collector)
        return collector

    yield start
    for collector in opened:
        collector.close()
