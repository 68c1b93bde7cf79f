"""Configuration of MQTT reporting: broker connection, identity, outbox and rates.

The lead's agent config tree embeds :class:`MqttConfig`; the fleet receiver reuses :class:`BrokerConfig`.
Secrets never appear in the file: the config names the environment variables that hold them.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edge_agent.errors import ConfigError
from edge_agent.yamlconfig import StrictModel

# MQTT topic levels must not contain wildcards or separators; we also keep them short and shell-safe.
TOPIC_LEVEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class TlsConfig(StrictModel):
    """TLS settings; the broker certificate is always verified unless ``insecure`` is set."""

    ca_file: Path | None = Field(
        None,
        title="CA certificate",
        description="PEM file of the CA that signed the broker certificate; None uses the system store.",
    )
    cert_file: Path | None = Field(
        None, title="Client certificate", description="PEM client certificate for mutual TLS."
    )
    key_file: Path | None = Field(
        None, title="Client key", description="PEM private key of the client certificate."
    )
    insecure: bool = Field(
        False,
        title="Skip hostname check",
        description="Do not check the broker hostname against its certificate (lab use only).",
    )

    @model_validator(mode="after")
    def _cert_needs_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together (mutual TLS needs both)")
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """Build the client SSL context, failing with a ConfigError when a file cannot be loaded."""
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the TLS files ({exc}); check tls.ca_file, tls.cert_file and tls.key_file"
            ) from exc
        if self.insecure:
            context.check_hostname = False
        return context


class BrokerConfig(StrictModel):
    """Where and how to connect to the MQTT broker."""

    host: str = Field("127.0.0.1", title="Broker host", description="Host name or IP of the MQTT broker.")
    port: int = Field(1883, ge=1, le=65535, title="Broker port", description="TCP port (8883 for TLS).")
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        title="MQTT protocol version",
        description="MQTT 5 (default; response topics, shared subscriptions) or 3.1.1 for old brokers.",
    )
    keepalive_s: int = Field(
        30, ge=5, le=3600, title="Keepalive", description="Seconds between pings when idle."
    )
    client_id: str | None = Field(
        None,
        title="Client id",
        description="MQTT client id; None derives a unique one from site and device.",
    )
    tls: TlsConfig | None = Field(None, title="TLS", description="TLS settings; None connects in clear.")
    username_env: str | None = Field(
        None,
        title="Username variable",
        description="Name of the environment variable holding the broker username.",
    )
    password_env: str | None = Field(
        None,
        title="Password variable",
        description="Name of the environment variable holding the broker password.",
    )
    reconnect_min_s: float = Field(
        0.5, gt=0, title="Minimum reconnect delay", description="First reconnect wait, in seconds."
    )
    reconnect_max_s: float = Field(
        60.0, gt=0, title="Maximum reconnect delay", description="Cap of the jittered exponential backoff."
    )

    @model_validator(mode="after")
    def _password_needs_user(self) -> BrokerConfig:
        if self.password_env is not None and self.username_env is None:
            raise ValueError("broker.password_env needs broker.username_env: MQTT sends no password alone")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("broker.reconnect_max_s must be >= broker.reconnect_min_s")
        return self

    def credentials(self) -> tuple[str, str | None] | None:
        """Read username and password from the named environment variables (None when not configured)."""
        if self.username_env is None:
            return None
        username = os.environ.get(self.username_env)
        if username is None:
            raise ConfigError(
                f"environment variable {self.username_env!r} (broker.username_env) is not set; "
                "export it or remove broker.username_env"
            )
        password = None
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(
                    f"environment variable {self.password_env!r} (broker.password_env) is not set; "
                    "export it or remove broker.password_env"
                )
        return username, password


class OutboxConfig(StrictModel):
    """The durable SQLite outbox every report passes through."""

    path: Path = Field(
        Path("state/outbox.sqlite3"),
        title="Outbox file",
        description="SQLite database holding unacknowledged messages and the device sequence counter.",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4096,
        title="Outbox byte cap",
        description="Payload bytes kept at most; beyond it the oldest telemetry, then summaries, then "
        "alerts are dropped and counted.",
    )
    replay_rate_per_s: float = Field(
        50.0,
        gt=0,
        title="Replay rate cap",
        description="Messages per second replayed from the backlog after a reconnect, so live "
        "messages keep flowing.",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        title="SQLite synchronous mode",
        description="NORMAL survives a killed process; FULL also survives power loss at some cost in "
        "throughput.",
    )


class TelemetryConfig(StrictModel):
    """Optional raw telemetry; off by default because summaries carry what a fleet needs."""

    enabled: bool = Field(False, title="Send telemetry", description="Publish raw channel samples.")
    max_per_s: float = Field(
        1.0, gt=0, title="Telemetry rate cap", description="Telemetry messages per second at most."
    )


class MqttConfig(StrictModel):
    """MQTT reporting of one device (the ``mqtt`` section of the agent config)."""

    site: str = Field(
        ..., pattern=TOPIC_LEVEL_PATTERN, title="Site", description="Site id; a topic level."
    )
    device: str = Field(
        ..., pattern=TOPIC_LEVEL_PATTERN, title="Device", description="Device id, unique in its site."
    )
    broker: BrokerConfig = Field(
        default_factory=BrokerConfig, title="Broker", description="Connection to the MQTT broker."
    )
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, title="Outbox", description="Durable store of outgoing messages."
    )
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, title="Telemetry", description="Raw sample publishing."
    )
    summary_interval_s: float = Field(
        300.0, gt=0, title="Summary interval", description="Seconds between periodic summaries."
    )
    command_staging_dir: Path = Field(
        Path("state/incoming"),
        title="Command staging folder",
        description="Where chunks of a model-update archive are assembled before verification.",
    )
    max_update_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        title="Largest model update",
        description="Refuse model-update transfers announcing more bytes than this.",
    )

    def client_id(self) -> str:
        """The MQTT client id: configured, or unique per device."""
        return self.broker.client_id or f"gridedge-{self.site}-{self.device}"

