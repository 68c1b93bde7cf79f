"""Home Assistant MQTT discovery: the device's forecast, model status and alerts as HA entities.

When ``mqtt.home_assistant.enabled`` is set, the reporter publishes one retained config per entity on
``<prefix>/sensor/<node>/<object>/config`` at every connect. The entities read the gridedge topics the
agent publishes anyway (no second copy of the data): ``value_template``\\ s pick the value out of the
summary, status and alert JSON. The summary has no dispatch-plan field, so the model status stands in
for a plan sensor. Templates write ``['values']``: ``.values`` would be the dict method in Jinja.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from edge_agent.yamlconfig import StrictModel

# The next-hour value: the forecast step whose end is one hour (or the first step past it) after origin.
NEXT_HOUR_TEMPLATE = (
    "{% set f = value_json.forecasts[0] if value_json.forecasts else none %}"
    "{% if f %}{% set i = [((3600 / f.step_s) | round(0, 'ceil') | int) - 1, 0] | max %}"
    "{{ f['values'][[i, (f['values'] | length) - 1] | min] }}{% else %}None{% endif %}"
)
FORECAST_ATTRIBUTES_TEMPLATE = (
    "{% set f = value_json.forecasts[0] if value_json.forecasts else none %}"
    "{{ {'target': f.target, 'origin': f.origin, 'step_s': f.step_s, 'unit': f.unit, 'forecast': f['values']}"
    " | tojson if f else '{}' }}"
)


class HomeAssistantConfig(StrictModel):
    """Optional Home Assistant MQTT discovery of the device's entities."""

    enabled: bool = Field(False, title="Home Assistant discovery")
    """Publish discovery configs."""
    discovery_prefix: str = Field("homeassistant", min_length=1, pattern=r"^[^#+\s]+$", title="Discovery prefix")
    """Home Assistant's discovery prefix (its MQTT integration setting)."""
    forecast_unit: str | None = Field(None, title="Forecast unit")
    """Unit of the forecast target (e.g. kW), shown by Home Assistant."""


def node_id(site: str, device: str) -> str:
    """HA's node id: letters, digits, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"gridedge_{site}_{device}")


def discovery_messages(
    config: HomeAssistantConfig, site: str, device: str, topic_root: str, agent_version: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config payload) of each entity: next-hour forecast, model status, last alert."""
    node = node_id(site, device)
    base = f"{topic_root}/{site}/{device}"
    shared = {
        "device": {
            "identifiers": [node],
            "name": f"gridedge {site}/{device}",
            "manufacturer": "gridedge",
            "model": "edge agent",
            **({"sw_version": agent_version} if agent_version else {}),
        },
        "availability_topic": f"{base}/status",
        "availability_template": "{{ 'online' if value_json.state in ['online', 'degraded'] else 'offline' }}",
    }
    entities = {
        "forecast_next_hour": {
            "name": "Forecast next hour",
            "state_topic": f"{base}/summary",
            "value_template": NEXT_HOUR_TEMPLATE,
            "json_attributes_topic": f"{base}/summary",
            "json_attributes_template": FORECAST_ATTRIBUTES_TEMPLATE,
            "state_class": "measurement",
            **({"unit_of_measurement": config.forecast_unit} if config.forecast_unit else {}),
        },
        "model_status": {
            "name": "Model status",
            "state_topic": f"{base}/status",
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": f"{base}/status",
            "json_attributes_template": "{{ {'reason': value_json.reason, 'model': value_json.model} | tojson }}",
            "icon": "mdi:brain",
        },
        "last_alert": {
            "name": "Last alert",
            "state_topic": f"{base}/alert",
            "value_template": "{{ value_json.severity }}: {{ value_json.code }}",
            "json_attributes_topic": f"{base}/alert",
            "json_attributes_template": (
                "{{ {'message': value_json.message, 'severity': value_json.severity, 'ts': value_json.ts} | tojson }}"
            ),
            "icon": "mdi:alert",
        },
    }
    return [
        (
            f"{config.discovery_prefix}/sensor/{node}/{name}/config",
            {**shared, **entity, "unique_id": f"{node}_{name}", "object_id": f"{node}_{name}"},
        )
        for name, entity in entities.items()
    ]
