"""The MQTT transport both sides use: broker config, client creation and the one reconnect backoff.

The device's reporter and the fleet's receiver connect the same way (paho-mqtt 2 with callback API v2,
TLS or mutual TLS, credentials from environment variables, MQTT 5 or 3.1.1 for old brokers such as
amqtt), so the code lives here once and neither side imports the other. paho itself is imported when a
client is made: the sensor side uses :func:`backoff_delay` without loading it.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from edge_agent.errors import ConfigError
from edge_agent.yamlconfig import StrictModel

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


class TlsConfig(StrictModel):
    """TLS settings; the broker certificate is always verified unless ``insecure`` is set."""

    ca_file: Path | None = Field(None, title="CA certificate")
    """PEM file of the CA that signed the broker certificate; None uses the system store."""
    cert_file: Path | None = Field(None, title="Client certificate")
    """PEM client certificate for mutual TLS."""
    key_file: Path | None = Field(None, title="Client key")
    """PEM private key of the client certificate."""
    insecure: bool = Field(False, title="Skip hostname check")
    """Do not check the broker hostname against its certificate (lab use only)."""

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

    host: str = Field("127.0.0.1", title="Broker host")
    """Host name or IP of the MQTT broker."""
    port: int = Field(1883, ge=1, le=65535, title="Broker port")
    """TCP port (8883 for TLS)."""
    protocol: Literal["5", "3.1.1"] = Field("5", title="MQTT protocol version")
    """MQTT 5 (default; response topics, shared subscriptions) or 3.1.1 for old brokers."""
    keepalive_s: int = Field(30, ge=5, le=3600, title="Keepalive")
    """Seconds between pings when idle."""
    client_id: str | None = Field(None, title="Client id")
    """MQTT client id; None derives a unique one from site and device."""
    tls: TlsConfig | None = Field(None, title="TLS")
    """TLS settings; None connects in clear."""
    username_env: str | None = Field(None, title="Username variable")
    """Name of the environment variable holding the broker username."""
    password_env: str | None = Field(None, title="Password variable")
    """Name of the environment variable holding the broker password."""
    reconnect_min_s: float = Field(0.5, gt=0, title="Minimum reconnect delay")
    """First reconnect wait, in seconds."""
    reconnect_max_s: float = Field(60.0, gt=0, title="Maximum reconnect delay")
    """Cap of the jittered exponential backoff."""

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


def backoff_delay(attempt: int, min_s: float, max_s: float) -> float:
    """Jittered exponential backoff ("full jitter"): uniform in [min, min(max, min * 2**attempt)].

    Used for every retry schedule in gridedge (broker reconnects, a Modbus device that stopped
    answering), so many devices that lost the same thing do not come back in lockstep.
    """
    ceiling = min(max_s, min_s * 2 ** min(attempt, 30))
    return random.uniform(min_s, max(min_s, ceiling))


def set_reconnect_delay(client: mqtt.Client, min_s: float, max_s: float) -> None:
    """Set paho's reconnect delays; sub-second values matter on a LAN and in tests."""
    # paho annotates the delays as int but only ever sleeps on them, so floats work as intended.
    client.reconnect_delay_set(min_s, max_s)  # type: ignore[arg-type]


class ReconnectBackoff:
    """Turns paho's reconnect schedule into :func:`backoff_delay`: call ``failed`` and ``connected``.

    paho waits min(previous * 2, max) before reconnecting; pinning both bounds to the next jittered value
    after each failure makes it wait exactly that, and ``connected`` starts the schedule again.
    """

    def __init__(self, client: mqtt.Client, broker: BrokerConfig) -> None:
        self._client = client
        self._broker = broker
        self._attempt = 0

    def connected(self) -> None:
        """The connection is up: the next loss starts again from the shortest delay."""
        self._attempt = 0
        set_reconnect_delay(self._client, self._broker.reconnect_min_s, self._broker.reconnect_max_s)

    def failed(self) -> None:
        """A connection was lost or an attempt failed: schedule the next attempt."""
        delay = backoff_delay(self._attempt, self._broker.reconnect_min_s, self._broker.reconnect_max_s)
        self._attempt += 1
        set_reconnect_delay(self._client, delay, delay)


def make_client(
    broker: BrokerConfig,
    client_id: str,
    *,
    persistent_session: bool = False,
    client_class: type[mqtt.Client] | None = None,
) -> mqtt.Client:
    """A paho client (callback API v2) configured for protocol, TLS and credentials of ``broker``.

    ``persistent_session`` matters for MQTT 3.1.1 only (MQTT 5 chooses it at connect time);
    ``client_class`` is a subclass of paho's client to make instead (the fleet receiver's).
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    protocol = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
    client = (client_class or mqtt.Client)(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if protocol == mqtt.MQTTv5 else not persistent_session,
    )
    if broker.tls is not None:
        client.tls_set_context(broker.tls.ssl_context())
        if broker.tls.insecure:
            client.tls_insecure_set(True)
    credentials = broker.credentials()
    if credentials is not None:
        client.username_pw_set(*credentials)
    set_reconnect_delay(client, broker.reconnect_min_s, broker.reconnect_max_s)
    # An exception in one of our callbacks would otherwise end paho's network thread for good (no
    # reconnect, no acks, nothing said): paho logs it through its logger and keeps running instead.
    client.suppress_exceptions = True
    client.enable_logger(logging.getLogger("paho"))
    return client
