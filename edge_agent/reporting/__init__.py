"""Reporting: the :class:`Reporter` protocol the agent calls, an in-memory sink, and the MQTT reporter.

``create_reporter`` imports paho-mqtt only when an MQTT reporter is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.reporting.base import MemoryReporter, MessageBuilder, Reporter
from edge_agent.reporting.commands import AgentControl, ModelUpdater, UpdateOutcome
from edge_agent.reporting.config import MqttConfig

if TYPE_CHECKING:
    from edge_agent.reporting.mqtt import MqttReporter

__all__ = [
    "AgentControl",
    "MemoryReporter",
    "MessageBuilder",
    "ModelUpdater",
    "MqttConfig",
    "Reporter",
    "UpdateOutcome",
    "create_reporter",
]


def create_reporter(
    config: MqttConfig,
    *,
    control: AgentControl | None = None,
    updater: ModelUpdater | None = None,
    agent_version: str | None = None,
) -> MqttReporter:
    """Build and start the MQTT reporter of one device (needs the ``edge`` extra for paho-mqtt)."""
    try:
        from edge_agent.reporting.mqtt import MqttReporter
    except ImportError as exc:
        from edge_agent.errors import missing_extra

        raise missing_extra("paho-mqtt", "edge") from exc
    reporter = MqttReporter(config, control=control, updater=updater, agent_version=agent_version)
    reporter.start()
    return reporter
