"""Configuration of MQTT reporting: identity, outbox and rates (the broker connection is in transport).

The agent config tree embeds :class:`MqttConfig`; its ``broker`` is the :class:`~edge_agent.transport.BrokerConfig`
the fleet receiver uses too. Secrets never appear in the file: the config names the environment variables
that hold them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edge_agent.messages import TOPIC_LEVEL_PATTERN
from edge_agent.reporting.homeassistant import HomeAssistantConfig
from edge_agent.transport import BrokerConfig
from edge_agent.yamlconfig import StrictModel


class OutboxConfig(StrictModel):
    """The durable SQLite outbox every report passes through."""

    path: Path = Field(Path("state/outbox.sqlite3"), title="Outbox file")
    """SQLite database holding unacknowledged messages and the device sequence counter; a relative path names a file in
    the state folder."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=4096, title="Outbox byte cap")
    """Payload bytes kept at most; beyond it the oldest telemetry, then summaries, then alerts are dropped and
    counted."""
    replay_rate_per_s: float = Field(50.0, gt=0, title="Replay rate cap")
    """Messages per second replayed from the backlog after a reconnect, so live messages keep flowing."""
    retain_messages: int = Field(10_000, ge=0, title="Delivered messages kept")
    """Acknowledged messages kept at most for the fleet's replay command (0 keeps none)."""
    retain_age_s: float = Field(7 * 86_400.0, gt=0, title="Delivered messages kept for")
    """Seconds an acknowledged message stays available for replay."""
    synchronous: Literal["NORMAL", "FULL"] = Field("NORMAL", title="SQLite synchronous mode")
    """NORMAL survives a killed process; FULL also survives power loss at some cost in throughput."""


class TelemetryConfig(StrictModel):
    """Optional raw telemetry; off by default because summaries carry what a fleet needs."""

    enabled: bool = Field(False, title="Send telemetry")
    """Publish raw channel samples."""
    max_per_s: float = Field(1.0, gt=0, title="Telemetry rate cap")
    """Telemetry messages per second at most."""
    model_step: bool = Field(False, title="Telemetry at the model's step")
    """Instead of every raw sweep, publish one compact message per closed model step: the model inputs' step means, the
    series `gridedge fleet retrain` trains from."""


class MqttConfig(StrictModel):
    """MQTT reporting of one device (the ``mqtt`` section of the agent config)."""

    site: str = Field(..., pattern=TOPIC_LEVEL_PATTERN, title="Site")
    """Site id; a topic level."""
    device: str = Field(..., pattern=TOPIC_LEVEL_PATTERN, title="Device")
    """Device id, unique in its site."""
    broker: BrokerConfig = Field(default_factory=BrokerConfig, title="Broker")
    """Connection to the MQTT broker."""
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, title="Outbox")
    """Durable store of outgoing messages."""
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, title="Telemetry")
    """Raw sample publishing."""
    summary_interval_s: float = Field(300.0, gt=0, title="Summary interval")
    """Seconds between periodic summaries."""
    command_staging_dir: Path = Field(Path("state/incoming"), title="Command staging folder")
    """Where chunks of a model-update archive are assembled before verification; a relative path names a folder in the
    state folder."""
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig, title="Home Assistant")
    """MQTT discovery so a site's Home Assistant shows the forecast, model status and alerts."""
    max_update_bytes: int = Field(64 * 1024 * 1024, ge=1024, title="Largest model update")
    """Refuse model-update transfers announcing more bytes than this."""
    staging_reserve_bytes: int = Field(16 * 1024 * 1024, ge=0, title="Disk reserve during updates")
    """Refuse a model-update whose staging would leave less free space than this."""
    staging_max_age_s: float = Field(3600.0, gt=0, title="Abandoned transfer age")
    """Delete the staged chunks of a model-update that received nothing for this long."""

    def client_id(self) -> str:
        """The MQTT client id: configured, or unique per device."""
        return self.broker.client_id or f"gridedge-{self.site}-{self.device}"

