"""Home Assistant discovery against a real Mosquitto: retained, valid JSON, and every state topic and
template resolves against what the agent really publishes (templates rendered with Jinja2, HA's engine)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.messages import AlertContent, ChannelAggregate, Forecast, ModelInfo, SummaryContent
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from gridedge.broker import LocalMosquitto

pytestmark = pytest.mark.mqtt


def retained(port: int, topic_filter: str, count: int) -> dict[str, tuple[bytes, bool]]:
    """Subscribe afresh and collect ``count`` messages: (payload, retain flag) by topic."""
    got: dict[str, tuple[bytes, bool]] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        got[message.topic] = (message.payload, message.retain)
        if len(got) >= count:
            done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic_filter, qos=1)
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()
    return got


def render(template: str, document: dict[str, object]) -> str:
    environment = ImmutableSandboxedEnvironment()
    environment.filters["tojson"] = json.dumps  # HA's to_json/tojson
    return environment.from_string(template).render(value_json=document).strip()


def test_discovery_configs_are_retained_and_resolve_against_real_messages(
    broker: LocalMosquitto, tmp_path: Path
) -> None:
    site, device, prefix = f"home-{uuid.uuid4().hex[:6]}", "pi-1", f"ha-{uuid.uuid4().hex[:6]}"
    config = MqttConfig.model_validate({
        "site": site, "device": device, "broker": {"port": broker.port},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")}, "command_staging_dir": str(tmp_path / "staging"),
        "home_assistant": {"enabled": True, "discovery_prefix": prefix, "forecast_unit": "kW"},
    })
    reporter = MqttReporter(config)
    reporter.start()
    assert reporter.wait_connected(10)
    origin = datetime(2026, 12, 1, 12, tzinfo=UTC)
    reporter.publish_summary(SummaryContent(
        window_start=origin - timedelta(minutes=5), window_end=origin,
        channels={"p_load": ChannelAggregate(count=300, mean=1.2, unit="kW")},
        forecasts=[Forecast(target="p_load", unit="kW", origin=origin, step_s=900,
                            values=[1.0, 1.1, 1.2, 1.3, 1.4, 1.5])],
        model=ModelInfo(name="w1-load", version="1.2.0", runtime="tflite"),
    ))
    reporter.publish_alert(AlertContent(severity="warning", code="drift", message="p_load drifted"))
    assert reporter.flush(10)
    try:
        configs = retained(broker.port, f"{prefix}/sensor/#", 3)
        # The gridedge topics a late subscriber sees: status is retained; the summary and alert are
        # captured live by a second subscriber below.
        captured: dict[str, bytes] = {}
        listener = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        listener.on_message = lambda _c, _u, m: captured.__setitem__(m.topic, m.payload)
        listener.connect("127.0.0.1", broker.port)
        listener.subscribe(f"gridedge/v1/{site}/{device}/#", qos=1)
        listener.loop_start()
        time.sleep(0.5)
        reporter.publish_summary(SummaryContent(
            window_start=origin, window_end=origin + timedelta(minutes=5),
            forecasts=[Forecast(target="p_load", unit="kW", origin=origin, step_s=900,
                                values=[2.0, 2.1, 2.2, 2.3, 2.4])],
        ))
        reporter.publish_alert(AlertContent(severity="critical", code="stale", message="meter stale"))
        assert reporter.flush(10)
        deadline = time.monotonic() + 10
        while len(captured) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        listener.disconnect()
        listener.loop_stop()
    finally:
        reporter.close()

    node = f"gridedge_{site}_{device}"
    assert set(configs) == {
        f"{prefix}/sensor/{node}/{name}/config" for name in ("forecast_next_hour", "model_status", "last_alert")
    }
    assert all(is_retained for _, is_retained in configs.values())
    entities = {topic.split("/")[-2]: json.loads(payload) for topic, (payload, _) in configs.items()}
    assert len({entity["unique_id"] for entity in entities.values()}) == 3
    documents = {topic.rsplit("/", 1)[1]: json.loads(payload) for topic, payload in captured.items()}
    assert set(documents) >= {"status", "summary", "alert"}

    def resolve(entity: dict[str, str], key: str) -> str:
        topic = entity[key.replace("template", "topic").replace("value_topic", "state_topic")]
        leaf = topic.rsplit("/", 1)[1]
        assert topic == f"gridedge/v1/{site}/{device}/{leaf}"
        return render(entity[key], documents[leaf])

    forecast = entities["forecast_next_hour"]
    # 900 s steps: the fourth value ends one hour after the origin.
    assert resolve(forecast, "value_template") == "2.3" and forecast["unit_of_measurement"] == "kW"
    attributes = json.loads(resolve(forecast, "json_attributes_template"))
    assert attributes["forecast"] == [2.0, 2.1, 2.2, 2.3, 2.4] and attributes["step_s"] == 900
    assert resolve(entities["model_status"], "value_template") == "online"
    assert resolve(entities["last_alert"], "value_template") == "critical: stale"
    assert json.loads(resolve(entities["last_alert"], "json_attributes_template"))["message"] == "meter stale"
    availability = render(forecast["availability_template"], documents["status"])
    assert forecast["availability_topic"].endswith("/status") and availability == "online"
