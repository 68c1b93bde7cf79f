"""Remote commands over a real Mosquitto: request/response, chunked model updates, malformed input,
and the authentication of state-changing commands (operator signature, target, time window, nonce)."""

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import JsonValue

from edge_agent.errors import ConfigError, SelfTestError
from edge_agent.keys import load_private_key, new_keypair
from edge_agent.messages import CommandRequest, ModelInfo
from edge_agent.reporting.authentication import CommandGuard, CommandRefusedError, CommandsSection
from edge_agent.reporting.commands import UpdateOutcome, model_update_requests
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from gridedge.broker import LocalMosquitto
from gridedge.fleet.commands import sign_command, sign_request

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

    def apply(self, archive: Path, allow_downgrade: bool = False) -> UpdateOutcome:
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


@pytest.fixture
def operator_key(tmp_path: Path) -> Path:
    """The fleet operator's key pair (operator.key, operator.pub) of this test."""
    private, _ = new_keypair(tmp_path / "operator-keys", kind="operator")
    return private


def guard_for(config: MqttConfig, operator_key: Path, state_dir: Path) -> CommandGuard:
    section = CommandsSection(operator_public_key=operator_key.with_suffix(".pub"))
    return CommandGuard.from_config(section, config.site, config.device, state_dir)


class Operator:
    """Sends commands the way a fleet tool would (MQTT 5 request/response, or 3.1.1 plain topics),
    signing them with the operator key unless told not to."""

    def __init__(
        self,
        port: int,
        site: str,
        device: str,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        key: Path | None = None,
    ):
        self.base = f"gridedge/v1/{site}/{device}/cmd"
        self.site, self.device = site, device
        self.key = None if key is None else load_private_key(key)
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
        with self._arrived:
            before = len(self.replies.get(request_id, []))
        self.client.publish(f"{self.base}/{command}", payload, qos=1, properties=properties)
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.replies.get(request_id, [])) > before, timeout_s)
            assert arrived, f"no reply to {command}"
            return self.replies[request_id][-1]

    def sign(self, command: str, request: CommandRequest) -> CommandRequest:
        assert self.key is not None, "this operator has no key"
        return sign_request(self.key, self.site, self.device, command, request)

    def request(self, command: str, request: CommandRequest, signed: bool = True) -> dict[str, Any]:
        if signed and self.key is not None:
            request = self.sign(command, request)
        return self.send(command, request.model_dump_json(), request.request_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig], tmp_path: Path, operator_key: Path
) -> Iterator[tuple[MqttReporter, FolderUpdater, Control]]:
    updater = FolderUpdater(tmp_path / "models")
    updater.root.mkdir()
    control = Control()
    config = make_config(broker.port, max_update_bytes=2_000_000)
    guard = guard_for(config, operator_key, tmp_path / "state")
    reporter = MqttReporter(config, control=control, updater=updater, guard=guard)
    reporter.start()
    assert reporter.wait_connected(5)
    yield reporter, updater, control
    reporter.close()


@pytest.fixture
def operator(broker: LocalMosquitto, device_ids: tuple[str, str], operator_key: Path) -> Iterator[Operator]:
    client = Operator(broker.port, *device_ids, key=operator_key)
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
    data[10] ^= 0xFF  # one flipped bit in the operator's copy, before signing
    middle["data"] = base64.b64encode(bytes(data)).decode()
    tampered = [operator.request("model-update", request) for request in requests]
    assert tampered[-1]["outcome"] == "error" and "sha256" in tampered[-1]["error"]

    failing = send_update(operator, bundle_archive("3.0.0", self_test="fail"), 1 << 20)
    assert failing[-1]["outcome"] == "error" and "self-test" in failing[-1]["error"]
    assert updater.active().version == "1.0.0"
    assert list((tmp_path / "staging").iterdir()) == []  # nothing left half-assembled


def test_commands_over_mqtt_311_reply_on_the_result_topic(
    broker: LocalMosquitto,
    make_config: Callable[..., MqttConfig],
    device_ids: tuple[str, str],
    operator_key: Path,
    tmp_path: Path,
) -> None:
    config = make_config(broker.port, broker={"protocol": "3.1.1"})
    reporter = MqttReporter(config, guard=guard_for(config, operator_key, tmp_path / "state"))
    reporter.start()
    operator = Operator(broker.port, *device_ids, protocol=mqtt.MQTTv311, key=operator_key)
    try:
        assert reporter.wait_connected(5)
        pong = operator.request("ping", CommandRequest(request_id="r-311"))
        assert pong["outcome"] == "ok"
        refused = operator.request("rollback", CommandRequest(request_id="r-311-rollback"))
        assert refused["outcome"] == "error" and "no model updater" in refused["error"]
    finally:
        operator.close()
        reporter.close()


def test_a_replayed_rollback_is_refused_and_runs_once(
    device: tuple[MqttReporter, FolderUpdater, Control], operator: Operator
) -> None:
    _, updater, _ = device
    assert send_update(operator, bundle_archive("1.0.0"), 1 << 20)[-1]["outcome"] == "ok"
    assert send_update(operator, bundle_archive("1.0.1"), 1 << 20)[-1]["outcome"] == "ok"
    rollback = operator.sign("rollback", CommandRequest(request_id="r-rollback")).model_dump_json()
    first = operator.send("rollback", rollback, "r-rollback")
    assert first["outcome"] == "ok" and updater.active().version == "1.0.0"
    for _ in range(2):  # the same signed bytes, as captured on the wire
        copy = operator.send("rollback", rollback, "r-rollback")
        assert copy["outcome"] == "error" and "replayed nonce" in copy["error"]
    assert updater.active().version == "1.0.0"


def test_state_changing_commands_must_be_signed_by_the_operator_for_this_device_and_now(
    device: tuple[MqttReporter, FolderUpdater, Control],
    operator: Operator,
    operator_key: Path,
    tmp_path: Path,
) -> None:
    _, updater, control = device
    assert send_update(operator, bundle_archive("1.0.0"), 1 << 20)[-1]["outcome"] == "ok"
    for name, args in (
        ("rollback", {}),
        ("reload-config", {}),
        ("set-log-level", {"level": "DEBUG"}),
        ("replay", {"ranges": [[0, 1]]}),
        ("model-update", model_update_requests(bundle_archive("2.0.0"))[0].args),
    ):
        unsigned = operator.request(name, CommandRequest(args=args), signed=False)
        assert unsigned["outcome"] == "error" and "missing signature" in unsigned["error"], name
    assert updater.active().version == "1.0.0" and control.reloads == 0
    # Reading stays open: ping and status need no signature.
    assert operator.request("ping", CommandRequest(), signed=False)["outcome"] == "ok"
    assert operator.request("status", CommandRequest(), signed=False)["outcome"] == "ok"

    key = load_private_key(operator_key)
    other = sign_command(key, operator.site, "another-device", "reload-config")
    wrong = operator.send("reload-config", other.model_dump_json(), other.request_id)
    assert wrong["outcome"] == "error" and "wrong target" in wrong["error"]
    assert "another-device" in wrong["error"]

    issued = datetime.now(UTC) - timedelta(seconds=301)
    stale = sign_command(key, operator.site, operator.device, "reload-config", issued_at=issued)
    old = operator.send("reload-config", stale.model_dump_json(), stale.request_id)
    assert old["outcome"] == "error" and "timestamp outside the window" in old["error"]
    ahead = sign_command(key, operator.site, operator.device, "reload-config",
                         issued_at=datetime.now(UTC) + timedelta(seconds=400))
    future = operator.send("reload-config", ahead.model_dump_json(), ahead.request_id)
    assert future["outcome"] == "error" and "timestamp outside the window" in future["error"]

    signed = sign_command(key, operator.site, operator.device, "set-log-level", {"level": "ERROR"})
    altered = signed.model_copy(update={"args": {"level": "DEBUG"}})  # changed in transit
    tampered = operator.send("set-log-level", altered.model_dump_json(), altered.request_id)
    assert tampered["outcome"] == "error" and "bad signature" in tampered["error"]

    stranger_key, _ = new_keypair(tmp_path / "stranger", kind="operator")
    forged = sign_command(load_private_key(stranger_key), operator.site, operator.device, "reload-config")
    refused = operator.send("reload-config", forged.model_dump_json(), forged.request_id)
    assert refused["outcome"] == "error" and "bad signature" in refused["error"]
    assert control.reloads == 0

    accepted = operator.request("reload-config", CommandRequest())
    assert accepted["outcome"] == "ok" and control.reloads == 1


def test_an_agent_without_an_operator_key_refuses_every_state_changing_command(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig], device_ids: tuple[str, str], operator_key: Path
) -> None:
    reporter = MqttReporter(make_config(broker.port), control=Control())
    reporter.start()
    operator = Operator(broker.port, *device_ids, key=operator_key)
    try:
        assert reporter.wait_connected(5)
        refused = operator.request("reload-config", CommandRequest())
        assert refused["outcome"] == "error" and "no operator key" in refused["error"]
        assert operator.request("status", CommandRequest(), signed=False)["outcome"] == "ok"
    finally:
        operator.close()
        reporter.close()


def test_nonces_survive_a_restart_and_stay_bounded(tmp_path: Path, operator_key: Path) -> None:
    section = CommandsSection(operator_public_key=operator_key.with_suffix(".pub"), max_nonces=100)
    key = load_private_key(operator_key)
    request = sign_command(key, "s", "d", "rollback")
    first = CommandGuard.from_config(section, "s", "d", tmp_path)
    first.check("rollback", request)
    first.nonces.close()
    again = CommandGuard.from_config(section, "s", "d", tmp_path)
    with pytest.raises(CommandRefusedError, match="replayed nonce"):
        again.check("rollback", request)
    start = datetime.now(UTC) - timedelta(seconds=200)
    issued = [sign_command(key, "s", "d", "rollback", issued_at=start + timedelta(seconds=i)) for i in range(150)]
    for command in issued:
        again.check("rollback", command)
    assert len(again.nonces) == 100
    # The forgotten nonces cannot be replayed: everything issued up to the newest forgotten one is refused.
    with pytest.raises(CommandRefusedError, match="replayed nonce"):
        again.check("rollback", issued[10])


def test_fleet_command_cli_signs_sends_and_prints_the_result(
    device: tuple[MqttReporter, FolderUpdater, Control],
    broker: LocalMosquitto,
    device_ids: tuple[str, str],
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from gridedge.cli import app

    runner = CliRunner()
    made = runner.invoke(app, ["keys", "new", "--kind", "operator", "--out", str(tmp_path / "cli-keys")])
    assert made.exit_code == 0 and "operator.key" in made.output
    assert (tmp_path / "cli-keys" / "operator.pub").exists()
    assert (tmp_path / "cli-keys" / "operator.key").stat().st_mode & 0o777 == 0o600
    unknown = runner.invoke(app, ["keys", "new", "--kind", "root", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "bundle, operator" in unknown.output

    _, updater, control = device
    target = "/".join(device_ids)
    key = str(tmp_path / "operator-keys" / "operator.key")
    common = ["--key", key, "--port", str(broker.port), "--timeout", "10"]
    reloaded = runner.invoke(app, ["fleet", "command", target, "reload-config", *common])
    assert reloaded.exit_code == 0, reloaded.output
    assert json.loads(reloaded.output)["outcome"] == "ok" and control.reloads == 1
    archive = tmp_path / "w1-1.0.0.tar.gz"
    archive.write_bytes(bundle_archive("1.0.0"))
    updated = runner.invoke(app, ["fleet", "command", target, "model-update", "--archive", str(archive), *common])
    assert updated.exit_code == 0 and updater.active().version == "1.0.0", updated.output
    level = runner.invoke(app, ["fleet", "command", target, "set-log-level", "--arg", "level=LOUD", *common])
    assert level.exit_code == 1 and "unknown log level" in json.loads(level.output)["error"]
    stranger = runner.invoke(app, ["fleet", "command", target, "rollback",
                                   "--key", str(tmp_path / "cli-keys" / "operator.key"), *common[2:]])
    assert stranger.exit_code == 1 and "bad signature" in json.loads(stranger.output)["error"]
    malformed = runner.invoke(app, ["fleet", "command", target, "ping", "--arg", "novalue", *common])
    assert malformed.exit_code == 2 and "key=value" in malformed.output


def test_model_updates_cannot_fill_the_disk_and_abandoned_chunks_are_cleaned(
    broker: LocalMosquitto, make_config: Callable[..., MqttConfig], tmp_path: Path, operator: Operator,
    operator_key: Path,
) -> None:
    staging = tmp_path / "staging"
    abandoned = staging / "abandoned-transfer"
    abandoned.mkdir(parents=True)
    (abandoned / "000000.part").write_bytes(b"x" * 1000)
    config = make_config(broker.port, max_update_bytes=2_000_000, staging_reserve_bytes=10**15)
    updater = FolderUpdater(tmp_path / "models")
    updater.root.mkdir()
    reporter = MqttReporter(config, updater=updater, guard=guard_for(config, operator_key, tmp_path / "state"))
    assert not abandoned.exists(), "chunks of a transfer cut by a restart stay on disk"
    reporter.start()
    try:
        assert reporter.wait_connected(5)
        first = model_update_requests(bundle_archive("2.0.0", padding=100_000), 64 * 1024)[0]
        no_room = operator.request("model-update", first)
        assert no_room["outcome"] == "error" and "not enough disk space" in no_room["error"]
        assert not any(staging.rglob("*.part"))
        reporter._commands.staging_reserve_bytes = 0
        lying = first.model_copy(update={"args": {**first.args, "total_bytes": 1000}})
        oversize = operator.request("model-update", lying)
        assert oversize["outcome"] == "error" and "more than the 1000 the transfer announced" in oversize["error"]
        assert not any(staging.rglob("*.part"))
        unsigned = operator.request("model-update", first, signed=False)
        assert unsigned["outcome"] == "error" and "missing signature" in unsigned["error"]
        assert not any(staging.rglob("*.part"))
    finally:
        reporter.close()
