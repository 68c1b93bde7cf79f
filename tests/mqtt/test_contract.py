"""The published contract: payload models, committed JSON Schemas, AsyncAPI document, ACL example."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from edge_agent.errors import ConfigError
from edge_agent.messages import (
    SCHEMA_MODELS,
    AlertContent,
    ChannelAggregate,
    TelemetryContent,
    json_schemas,
    write_json_schemas,
)
from edge_agent.reporting import Reporter
from edge_agent.reporting.base import MemoryReporter
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.log import LogReporter
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "mqtt"


def test_committed_schemas_are_up_to_date(tmp_path: Path) -> None:
    write_json_schemas(tmp_path)
    for fresh in tmp_path.glob("*.json"):
        committed = DOCS / "schemas" / fresh.name
        assert committed.exists(), f"{committed} missing: run `gridedge fleet schemas`"
        assert committed.read_text() == fresh.read_text(), f"{committed.name} is stale: run `gridedge fleet schemas`"
    assert {p.name for p in (DOCS / "schemas").glob("*.json")} == {p.name for p in tmp_path.glob("*.json")}


def test_unknown_values_are_null_and_timestamps_utc() -> None:
    empty = ChannelAggregate(count=0, missing=10)
    assert empty.model_dump(include={"mean", "min", "max", "last"}) == dict.fromkeys(("mean", "min", "max", "last"))
    reporter = MemoryReporter("s", "d")
    reporter.publish_alert(AlertContent(severity="info", code="x", message="y"))
    document = json.loads(reporter.messages[0].model_dump_json())
    assert document["value"] is None and document["ts"].endswith("Z")
    assert document["schema_version"] == "1.0" and len(document["message_id"]) == 32
    local = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert type(reporter.messages[0]).model_validate({**document, "ts": local}).ts == datetime(
        2026, 1, 1, 10, tzinfo=UTC
    )
    with pytest.raises(ValidationError):
        type(reporter.messages[0]).model_validate({**document, "ts": "2026-01-01T10:00:00"})  # naive
    with pytest.raises(ValidationError):
        type(reporter.messages[0]).model_validate({**document, "surprise": 1})


def load_asyncapi() -> dict[str, Any]:
    return yaml.safe_load((DOCS / "asyncapi.yaml").read_text())


def test_asyncapi_document_matches_the_schemas() -> None:
    document = load_asyncapi()
    assert document["asyncapi"].startswith("3.")
    schemas = json_schemas()
    referenced = set()
    for name, message in document["components"]["messages"].items():
        ref = message["payload"]["$ref"]
        stem = Path(ref).name.removesuffix(".schema.json")
        referenced.add(stem)
        schema = json.loads((DOCS / ref).read_text())
        assert schema == json.loads(json.dumps(schemas[stem])), f"{name} points at a stale schema"
        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        assert message["examples"], f"{name} needs an example"
        for example in message["examples"]:
            errors = [e.message for e in validator.iter_errors(json.loads(json.dumps(example["payload"], default=str)))]
            assert errors == [], f"example {example['name']} of {name}: {errors}"
    assert referenced == set(SCHEMA_MODELS)
    for channel in document["channels"].values():
        assert channel["address"].startswith("gridedge/v1/{site}/{device}/")
        for parameter in channel.get("parameters", {}):
            assert "{" + parameter + "}" in channel["address"]
    for operation in document["operations"].values():
        channel_name = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        assert channel_name in document["channels"]


def test_reporter_topics_are_the_documented_ones() -> None:
    addresses = {c["address"] for c in load_asyncapi()["channels"].values()}
    for leaf in ("status", "summary", "alert", "telemetry", "cmd/{name}", "cmd/{name}/result"):
        assert f"gridedge/v1/{{site}}/{{device}}/{leaf}" in addresses


@pytest.mark.mqtt
def test_acl_example_confines_devices_to_their_topics_and_lets_only_the_operator_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords = tmp_path / "passwords"
    accounts = (("farm-1/inv-1", "one"), ("fleet-receiver", "fleet-secret"), ("fleet-operator", "op-secret"))
    for user, password in accounts:
        flag = ["-c"] if not passwords.exists() else []
        subprocess.run(["mosquitto_passwd", *flag, "-b", str(passwords), user, password], check=True)
    broker = LocalMosquitto(
        tmp_path / "broker",
        extra_config=f"allow_anonymous false\npassword_file {passwords}\nacl_file {DOCS / 'mosquitto-acl.conf'}",
    )
    monkeypatch.setenv("GRIDEDGE_TEST_USER", "farm-1/inv-1")
    monkeypatch.setenv("GRIDEDGE_TEST_PASSWORD", "one")
    monkeypatch.setenv("FLEET_USER", "fleet-receiver")
    monkeypatch.setenv("FLEET_PASSWORD", "fleet-secret")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.transport import make_client

    def logged_in(user: str, password: str) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.username_pw_set(user, password)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        return client

    with broker:
        seen: list[str] = []
        fleet = make_client(BrokerConfig(port=broker.port, username_env="FLEET_USER", password_env="FLEET_PASSWORD"),
                            "fleet-test")
        fleet.on_message = lambda client, userdata, message: seen.append(message.topic)
        fleet.connect("127.0.0.1", broker.port)
        fleet.subscribe("$share/g/gridedge/v1/+/+/#", qos=1)
        fleet.loop_start()
        config = MqttConfig.model_validate({
            "site": "farm-1", "device": "inv-1",
            "broker": {"port": broker.port, "username_env": "GRIDEDGE_TEST_USER",
                       "password_env": "GRIDEDGE_TEST_PASSWORD"},
            "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
            "command_staging_dir": str(tmp_path / "staging"),
        })
        reporter = MqttReporter(config)
        reporter.start()
        operator_seen: list[str] = []
        operator = logged_in("fleet-operator", "op-secret")
        operator.on_message = lambda client, userdata, message: operator_seen.append(message.topic)
        operator.subscribe("gridedge/v1/+/+/cmd/+/result", qos=1)
        try:
            assert reporter.wait_connected(5), "device credentials from the environment were refused"
            reporter.publish_alert(AlertContent(severity="info", code="own", message="mine"))
            assert reporter.flush(5)
            intruder = logged_in("farm-1/inv-1", "one")
            intruder.publish("gridedge/v1/farm-1/inv-2/alert", "{}", qos=1).wait_for_publish(5)
            intruder.disconnect()
            intruder.loop_stop()
            time.sleep(0.3)
            # The receiver account may read but not command: its ping never reaches the device.
            receiver = logged_in("fleet-receiver", "fleet-secret")
            receiver.publish("gridedge/v1/farm-1/inv-1/cmd/ping", '{"request_id": "from-receiver"}', qos=1)
            time.sleep(0.5)
            assert "gridedge/v1/farm-1/inv-1/cmd/ping/result" not in seen
            receiver.disconnect()
            receiver.loop_stop()
            operator.publish("gridedge/v1/farm-1/inv-1/cmd/ping", '{"request_id": "from-operator"}', qos=1)
            deadline = time.monotonic() + 5
            while "gridedge/v1/farm-1/inv-1/cmd/ping/result" not in operator_seen and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            reporter.close()
            operator.disconnect()
            operator.loop_stop()
            fleet.disconnect()
            fleet.loop_stop()
    assert "gridedge/v1/farm-1/inv-1/alert" in seen
    assert "gridedge/v1/farm-1/inv-2/alert" not in seen
    assert "gridedge/v1/farm-1/inv-1/cmd/ping/result" in operator_seen  # the operator commands and reads
    assert "gridedge/v1/farm-1/inv-1/cmd/ping/result" in seen  # and receivers store results


def test_memory_reporter_is_a_reporter_and_records_in_order() -> None:
    reporter = MemoryReporter("s", "d", telemetry_per_s=2)
    assert isinstance(reporter, Reporter)
    reporter.publish_status("degraded", "fallback")
    reporter.publish_alert(AlertContent(severity="warning", code="x", message="y"))
    accepted = [
        reporter.publish_telemetry(TelemetryContent(sample_ts=datetime.now(UTC), values={"p": None}))
        for _ in range(5)
    ]
    reporter.close()
    assert accepted.count(True) == 2 and reporter.closed
    assert [m.seq for m in reporter.messages] == list(range(len(reporter.messages)))
    assert [getattr(m, "state", None) for m in reporter.of_kind("status")] == ["degraded", "stopped"]


def test_log_reporter_writes_each_message_as_one_valid_json_line(caplog: pytest.LogCaptureFixture) -> None:
    reporter = LogReporter("s", "d", telemetry_per_s=1)
    assert isinstance(reporter, Reporter)
    with caplog.at_level(logging.INFO, logger="gridedge.report"):
        reporter.publish_status("online")
        reporter.publish_alert(AlertContent(severity="warning", code="x", message="y"))
        reporter.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "gridedge.report"]
    messages = [json.loads(line) for line in lines]
    assert [m["seq"] for m in messages] == [0, 1, 2]
    assert [m.get("state") for m in messages] == ["online", None, "stopped"] and reporter.state == "stopped"


def test_credentials_come_from_the_named_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_USER", "farm-1/inv-1")
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    assert BrokerConfig(username_env="MQTT_USER").credentials() == ("farm-1/inv-1", None)
    with pytest.raises(ConfigError, match=r"'MQTT_PASSWORD' .* is not set"):
        BrokerConfig(username_env="MQTT_USER", password_env="MQTT_PASSWORD").credentials()
    with pytest.raises(ValidationError, match=r"password_env needs broker\.username_env"):
        BrokerConfig(password_env="MQTT_PASSWORD")
    with pytest.raises(ValidationError):
        MqttConfig.model_validate({"site": "a/b", "device": "d"})  # a topic separator in an id
    with pytest.raises(ValidationError):
        MqttConfig.model_validate({"site": "a", "device": "d", "brokr": {}})  # typo: extra="forbid"
