"""Remote commands over a real Mosquitto: request/response, chunked model updates, malformed input."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import JsonValue

from edge_agent.errors import ConfigError, SelfTestError
from edge_agent.messages import CommandRequest, ModelInfo
from edge_agent.reporting.commands import UpdateOutcome, model_update_requests
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from gridedge.broker import LocalMosquitto

pytestmark = pytest.mark.mqtt


class FolderUpdater:
    """A real ModelUpdater: unpacks a tar.gz with a manifest into models/, keeping the previous one."""

    def __init__(self, root: Path):
        self.root = root
        self.current = root / "current"
        self.previous = root / "previous"

    def active(self) -> ModelInfo:
        manifest = json.loads((self.current / "manifest.json").read_text())
        return ModelInfo(name=manifest["name"], version=manifest["version"])

    def apply(self, archive: Path) -> UpdateOutcome:
        staging = self.root / "next"
        with tarfile.open(archive) as bundle:
            bundle.extractall(staging, filter="data")
        manifest = json.loads((staging / "manifest.json").read_text())
        if manifest.get("self_test") != "pass":
            raise SelfTestError(f"bundle {manifest['version']} failed its self-test; keeping the running model")
        old = self.active() if self.current.exists() else None
        if self.previous.exists():
            shutil.rmtree(self.previous)
        if self.current.exists():
            self.current.rename(self.previous)
        staging.rename(self.current)
        return UpdateOutcome(active=self.active(), previous=old, message="swapped")

    def rollback(self) -> UpdateOutcome:
        if not self.previous.exists():
            raise ConfigError("no previous model to roll back to")
        old = self.active()
        self.current.rename(self.root / "swap")
        self.previous.rename(self.current)
        (self.root / "swap").rename(self.previous)
        return UpdateOutcome(active=self.active(), previous=old, message="rolled back")


class Control:
    def __init__(self) -> None:
        self.reloads = 0

    def status_report(self) -> dict[str, JsonValue]:
        return {"state": "online", "cycles": 42}

    def reload_config(self) -> str:
        self.reloads += 1
        return f"reloaded ({self.reloads})"


def bundle_archive(version: str, self_test: str = "pass", padding: int = 0) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        files = {
            "manifest.json": json.dumps({"name": "w1", "version": version, "self_test": self_test}).encode(),
            "model.tflite": os.urandom(padding),
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Operator:
    """Sends commands the way a fleet tool would (MQTT 5 request/response, or 3.1.1 plain topics)."""

    def __init__(self, port: int, site: str, device: str, protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5):
        self.base = f"gridedge/v1/{site}/{device}/cmd"
        self.protocol = protocol
        self.reply_topic = f"operator/{uuid.uuid4().hex[:8]}/replies"
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self._arrived = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        topic = self.reply_topic if protocol == mqtt.MQTTv5 else f"{self.base}/+/result"
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5), "operator could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        document = json.loads(message.payload)
        correlation = getattr(getattr(message, "properties", None), "CorrelationData", None)
        # MQTT 5 replies are matched on correlation data (works even when the request was unreadable).
        key = correlation.decode() if correlation is not None else str(document["request_id"])
        with self._arrived:
            self.replies.setdefault(key, []).append(document)
            self._arrived.notify_all()

    def send(self, command: str, payload: bytes | str, request_id: str, timeout_s: float = 10) -> dict[str, Any]:
        properties = None
        if self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = request_id.encode()
        self.client.publish(f"{self.base}/{command}", payload, qos=1, properties=properties)
        with self._arrived:
            assert self._arrived.wait_for(lambda: request_id in self.replies, timeout_s), f"no reply to {command}"
            return self.replies[request_id][-1]

    def request(self, command: str, request: CommandRequest) -> dict[str, Any]:
        return self.send(command, request.model_dump_json(), request.request_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig], tmp_path: Path
) -> Iterator[tuple[MqttReporter, FolderUpdater, Control]]:
    updater = FolderUpdater(tmp_path / "models")
    updater.root.mkdir()
    control = Control()
    reporter = MqttReporter(make_config(broker.port, max_update_bytes=2_000_000), control=control, updater=updater)
    reporter.start()
    assert reporter.wait_connected(5)
    yield reporter, updater, control
    reporter.close()


@pytest.fixture
def operator(broker: LocalMosquitto, device_ids: tuple[str, str]) -> Iterator[Operator]:
    client = Operator(broker.port, *device_ids)
    yield client
    client.close()


def test_simple_commands_reply_on_the_response_topic_with_correlation(
    device: tuple[MqttReporter, FolderUpdater, Control], operator: Operator, schema_validators: dict[str, Any]
) -> None:
    _, _, control = device
    pong = operator.request("ping", CommandRequest(request_id="r-ping"))
    assert pong["outcome"] == "ok" and pong["data"]["pong"] is True
    assert pong["request_id"] == "r-ping"
    status = operator.request("status", CommandRequest(request_id="r-status"))
    assert status["data"] == {"state": "online", "cycles": 42}
    reload = operator.request("reload-config", CommandRequest(request_id="r-reload"))
    assert reload["data"]["message"] == "reloaded (1)" and control.reloads == 1
    level = operator.request("set-log-level", CommandRequest(request_id="r-log", args={"level": "debug",
                                                                                       "logger": "gridedge.x"}))
    assert level["outcome"] == "ok" and logging.getLogger("gridedge.x").level == logging.DEBUG
    for reply in (pong, status, reload, level):
        assert list(schema_validators["command-result"].iter_errors(reply)) == []


def test_malformed_and_unknown_commands_get_error_replies(
    device: tuple[MqttReporter, FolderUpdater, Control], operator: Operator
) -> None:
    unknown = operator.request("reboot", CommandRequest(request_id="r-unknown"))
    assert unknown["outcome"] == "error" and "unknown command 'reboot'" in unknown["error"]
    not_json = operator.send("ping", b"\xff not json", "r-bad")
    assert not_json["outcome"] == "error" and "is not JSON" in not_json["error"]
    assert not_json["request_id"] is None
    invalid = operator.send("ping", json.dumps({"request_id": "r-extra", "bogus": 1}), "r-extra")
    assert invalid["outcome"] == "error" and "bogus" in invalid["error"] and invalid["request_id"] == "r-extra"
    bad_level = operator.request("set-log-level", CommandRequest(request_id="r-level", args={"level": "LOUD"}))
    assert bad_level["outcome"] == "error" and "unknown log level" in bad_level["error"]
    missing = operator.request("model-update", CommandRequest(request_id="r-missing", args={"data": "x"}))
    assert missing["outcome"] == "error" and "bad arguments for model-update" in missing["error"]
    still_alive = operator.request("ping", CommandRequest(request_id="r-after"))
    assert still_alive["outcome"] == "ok"


def send_update(operator: Operator, archive: bytes, chunk_bytes: int) -> list[dict[str, Any]]:
    return [operator.request("model-update", request) for request in model_update_requests(archive, chunk_bytes)]


def test_chunked_model_update_swaps_and_rollback_restores(
    device: tuple[MqttReporter, FolderUpdater, Control], operator: Operator
) -> None:
    _, updater, _ = device
    first = send_update(operator, bundle_archive("1.0.0"), 64 * 1024)
    assert [reply["outcome"] for reply in first] == ["ok"]
    second = send_update(operator, bundle_archive("1.1.0", padding=150_000), 64 * 1024)
    assert [reply["outcome"] for reply in second] == ["in-progress", "in-progress", "ok"]
    assert second[-1]["data"]["active"]["version"] == "1.1.0"
    assert second[-1]["data"]["previous"]["version"] == "1.0.0"
    assert updater.active().version == "1.1.0"
    back = operator.request("rollback", CommandRequest())
    assert back["outcome"] == "ok" and back["data"]["active"]["version"] == "1.0.0"
    assert updater.active().version == "1.0.0"


def test_tampered_and_failing_updates_are_refused_and_the_old_model_stays(
    device: tuple[MqttReporter, FolderUpdater, Control], operator: Operator, tmp_path: Path
) -> None:
    _, updater, _ = device
    assert send_update(operator, bundle_archive("1.0.0"), 1 << 20)[-1]["outcome"] == "ok"

    requests = model_update_requests(bundle_archive("2.0.0", padding=5000), 4096)
    middle = requests[1].args
    data = bytearray(base64.b64decode(str(middle["data"])))
    data[10] ^= 0xFF  # one flipped bit in transit
    middle["data"] = base64.b64encode(bytes(data)).decode()
    tampered = [operator.request("model-update", request) for request in requests]
    assert tampered[-1]["outcome"] == "error" and "sha256" in tampered[-1]["error"]

    failing = send_update(operator, bundle_archive("3.0.0", self_test="fail"), 1 << 20)
    assert failing[-1]["outcome"] == "error" and "self-test" in failing[-1]["error"]
    assert updater.active().version == "1.0.0"
    assert list((tmp_path / "staging").iterdir()) == []  # nothing left half-assembled


def test_commands_over_mqtt_311_reply_on_the_result_topic(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig], device_ids: tuple[str, str]
) -> None:
    reporter = MqttReporter(make_config(broker.port, broker={"protocol": "3.1.1"}))
    reporter.start()
    operator = Operator(broker.port, *device_ids, protocol=mqtt.MQTTv311)
    try:
        assert reporter.wait_connected(5)
        pong = operator.request("ping", CommandRequest(request_id="r-311"))
        assert pong["outcome"] == "ok"
        refused = operator.request("rollback", CommandRequest(request_id="r-311-rollback"))
        assert refused["outcome"] == "error" and "no model updater" in refused["error"]
    finally:
        operator.close()
        reporter.close()
