"""The agent's configuration: one pydantic tree, loaded from YAML, the single source of truth.

``firmware_configs/schema.json`` is generated from :class:`AgentConfig` (``gridedge agent schema``) and a
test fails when the committed file is stale. Secrets never sit in the file: the MQTT section names the
environment variables that hold them. Relative paths are resolved against the config file's folder, so a
provisioned folder can be copied anywhere on a device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from edge_agent.errors import ConfigError
from edge_agent.messages import TOPIC_LEVEL_PATTERN
from edge_agent.planning.settings import PlanningSection
from edge_agent.reporting.authentication import CommandsSection
from edge_agent.reporting.config import MqttConfig
from edge_agent.runtimes import RuntimeConfig
from edge_agent.sensors.modbus import resolve_register_map
from edge_agent.sensors.registry import SensorConfig
from edge_agent.yamlconfig import StrictModel, load_yaml_model


class BundleSection(StrictModel):
    """Which model bundle to run and the key that must have signed it."""

    path: Path = Field(title="Bundle folder")
    """Folder holding manifest.json, manifest.sig and the model files."""
    public_key: Path = Field(title="Public key")
    """PEM Ed25519 public key of the fleet; bundles signed otherwise are refused."""
    artefact: str | None = Field(default=None, title="Artefact")
    """Model file to run; None picks the most compact one proven for the installed runtime."""


class ClockSection(StrictModel):
    """Which clock labels the samples: the device's own, or one a sensor serves (e.g. a site controller)."""

    source: Literal["system", "sensor", "reading"] = Field(default="system", title="Clock source")
    """system: the device clock (UTC); sensor: a channel holding UTC seconds; reading: the time the first sensor source
    stamps on its readings (a replay's data time)."""
    channel: str | None = Field(default=None, title="Clock channel")
    """Sensor channel holding UTC epoch seconds, when source is sensor."""

    max_jump_s: float = Field(default=86_400.0, gt=0, title="Largest clock jump")
    """A sensor clock that moves backwards or jumps further ahead than this is treated as unreadable (a garbled register
    must not throw the window into another year)."""

    confirm_readings: int = Field(default=5, ge=1, le=1000, title="Readings to re-acquire")
    """Consecutive site clock readings that agree with each other but not with the time in use and that replace it (a
    garbage first reading must not anchor the clock for good)."""

    @model_validator(mode="after")
    def _sensor_needs_channel(self) -> ClockSection:
        if self.source == "sensor" and not self.channel:
            raise ValueError("clock.source 'sensor' needs clock.channel naming the channel with UTC seconds")
        return self


class LoopSection(StrictModel):
    """Timing of the control loop and the model supervision policy."""

    cadence_s: float = Field(default=1.0, gt=0, title="Cadence")
    """Seconds between sensor reads (monotonic clock)."""
    latency_budget_ms: float = Field(default=200.0, gt=0, title="Latency budget")
    """Inference slower than this counts a strike."""
    latency_strikes: int = Field(default=3, ge=1, title="Latency strikes")
    """Consecutive strikes before falling back."""
    retry_every: int = Field(default=10, ge=1, title="Retry every")
    """While degraded, retry the model every N inferences."""
    recover_after: int = Field(default=3, ge=1, title="Recover after")
    """Good model inferences in a row to leave degraded."""
    max_cycles: int | None = Field(default=None, ge=1, title="Stop after")
    """Stop after this many cycles (tests, demos)."""
    stall_after_s: float | None = Field(default=None, gt=0, title="Stalled after (s)")
    """A site whose window received no sample period for this long is degraded, with one alert; by default three sample
    periods of the model in use."""


class AnomalySection(StrictModel):
    """Hysteresis of anomaly alerts, so a noisy score does not flood the fleet."""

    raise_after: int = Field(default=2, ge=1, title="Raise after")
    """Windows over threshold in a row that raise an alert."""
    clear_after: int = Field(default=4, ge=1, title="Clear after")
    """Windows under threshold in a row that clear it."""


class ChannelLink(StrictModel):
    """Where a model channel comes from, with a linear unit conversion (model = source * scale + offset)."""

    source: str = Field(min_length=1, title="Sensor channel")
    """Sensor channel, e.g. meter.active_power."""
    scale: float = Field(default=1.0, title="Scale")
    """Multiplier, e.g. 0.001 to turn W into kW."""
    offset: float = Field(default=0.0, title="Offset")
    """Added after scaling."""


class AgentConfig(StrictModel):
    """Everything one device's agent needs: identity, sensors, model, runtime, loop and reporting."""

    site: str = Field(pattern=TOPIC_LEVEL_PATTERN, title="Site")
    """Site id; a topic level."""
    device: str = Field(pattern=TOPIC_LEVEL_PATTERN, title="Device")
    """Device id, unique in its site."""
    state_dir: Path = Field(default=Path("state"), title="State folder")
    """Where the agent keeps its outbox, sequence counter and previous bundle."""
    bundle: BundleSection = Field(title="Model bundle")
    """The signed model to run."""
    runtime: RuntimeConfig = Field(title="Runtime")
    """Inference backend and its options."""
    sensors: list[SensorConfig] = Field(min_length=1, title="Sensor sources")
    """Where measurements come from."""
    channels: dict[str, str | ChannelLink] = Field(default_factory=dict, title="Channel map")
    """Model channel -> sensor channel (a name, or source/scale/offset to convert units); channels not listed are looked
    up by the same name."""
    clock: ClockSection = Field(default_factory=ClockSection, title="Clock")
    loop: LoopSection = Field(default_factory=LoopSection, title="Loop")
    anomaly: AnomalySection = Field(default_factory=AnomalySection, title="Anomaly alerts")
    mqtt: MqttConfig | None = Field(default=None, title="MQTT")
    """Reporting to the fleet; None keeps reports on the device log."""
    commands: CommandsSection = Field(default_factory=CommandsSection, title="Remote commands")
    """The operator key that signs state-changing commands, and the replay window."""
    planning: PlanningSection | None = Field(default=None, title="Planning")
    """Battery/generator dispatch planning on the device (site model, cadence, actuation); None: no planning."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", title="Log level")
    # Set when loaded from a file: the folder that relative register-map and replay paths start from.
    _base_dir: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    @model_validator(mode="before")
    @classmethod
    def _identity_once(cls, data: Any) -> Any:
        """Site and device are written once at the top; the MQTT section inherits them."""
        if isinstance(data, dict) and isinstance(data.get("mqtt"), dict):
            mqtt = dict(data["mqtt"])
            for key in ("site", "device"):
                if key in mqtt and key in data and mqtt[key] != data[key]:
                    raise ValueError(f"mqtt.{key} {mqtt[key]!r} differs from {key} {data[key]!r}; set it once")
                if key in data:
                    mqtt.setdefault(key, data[key])
            data = {**data, "mqtt": mqtt}
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> AgentConfig:
        names = [s.name for s in self.sensors]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"sensor source names must be unique; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _setpoints_name_devices(self) -> AgentConfig:
        actuation = self.planning.actuation if self.planning else None
        sources = {source.name: source for source in self.sensors}
        for i, row in enumerate(actuation.setpoints if actuation else []):
            where = f"planning.actuation.setpoints.{i}"
            source = sources.get(row.source)
            if source is None or source.type != "modbus_tcp":
                tcp = sorted(name for name, s in sources.items() if s.type == "modbus_tcp")
                raise ValueError(f"{where}.source {row.source!r} is not a modbus_tcp sensor source; have {tcp}")
            devices = [device.name for device in source.devices]
            if row.device not in devices:
                raise ValueError(f"{where}.device {row.device!r} is not a device of {row.source!r}; have {devices}")
        return self

    def channel_link(self, model_channel: str) -> ChannelLink:
        """Where a model channel is read and how its unit is converted."""
        link = self.channels.get(model_channel, model_channel)
        return ChannelLink(source=link) if isinstance(link, str) else link

    def resolve_paths(self, base: Path) -> AgentConfig:
        """Return a copy whose relative paths are taken relative to ``base`` (the config's folder)."""

        def fix(path: Path) -> Path:
            return path if path.is_absolute() else (base / path).resolve()

        state_dir = fix(self.state_dir)

        def in_state(path: Path) -> Path:
            # The defaults (state/outbox.sqlite3, state/incoming) name files of the state folder, which a
            # profile may put elsewhere (/var/lib/gridedge): a relative one lands there, by its last name.
            return path if path.is_absolute() else state_dir / path.name

        update: dict[str, Any] = {
            "state_dir": state_dir,
            "bundle": self.bundle.model_copy(
                update={"path": fix(self.bundle.path), "public_key": fix(self.bundle.public_key)}
            ),
        }
        if self.commands.operator_public_key is not None:
            update["commands"] = self.commands.model_copy(
                update={"operator_public_key": fix(self.commands.operator_public_key)}
            )
        if self.mqtt is not None:
            outbox = self.mqtt.outbox.model_copy(update={"path": in_state(self.mqtt.outbox.path)})
            broker = self.mqtt.broker
            if broker.tls is not None:
                tls_files = {
                    name: fix(path)
                    for name in ("ca_file", "cert_file", "key_file")
                    if (path := getattr(broker.tls, name)) is not None
                }
                broker = broker.model_copy(update={"tls": broker.tls.model_copy(update=tls_files)})
            update["mqtt"] = self.mqtt.model_copy(
                update={
                    "outbox": outbox,
                    "broker": broker,
                    "command_staging_dir": in_state(self.mqtt.command_staging_dir),
                }
            )
        if self.planning is not None:
            update["planning"] = _resolved_planning(self, base)
        resolved = self.model_copy(update=update)
        resolved._base_dir = base
        return resolved


def _resolved_planning(config: AgentConfig, base: Path) -> PlanningSection:
    """The planning section with its site model read and its setpoint registers checked against the maps."""
    assert config.planning is not None
    site_model = config.planning.resolved_site_model(base)
    planning = config.planning.model_copy(update={"site_model": site_model, "site_model_file": None})
    sources = {source.name: source for source in config.sensors}
    for i, row in enumerate(planning.actuation.setpoints if planning.actuation else []):
        device = next(d for d in getattr(sources[row.source], "devices", []) if d.name == row.device)
        register_map = resolve_register_map(device.register_map, base)
        spec = next((r for r in register_map.registers if r.name == row.holding_register), None)
        if spec is None or spec.kind != "setpoint":
            setpoints = [r.name for r in register_map.registers if r.kind == "setpoint"]
            raise ConfigError(
                f"planning.actuation.setpoints.{i}.holding_register {row.holding_register!r} is not a setpoint "
                f"register (kind: setpoint) of {register_map.name!r}; have {setpoints}"
            )
    return planning


def load_config(path: Path) -> AgentConfig:
    """Read, validate and resolve an agent config file; every problem is reported with its field path."""
    path = Path(path)
    config = load_yaml_model(
        path,
        AgentConfig,
        "agent config",
        hint="fix these fields; `gridedge agent schema` prints every field with its description",
        missing_hint="pass --config with a file from `gridedge provision`",
    )
    return config.resolve_paths(path.resolve().parent)


def config_json_schema() -> str:
    """The JSON schema of the agent config, as committed in ``firmware_configs/schema.json``."""
    schema = AgentConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "gridedge-agent-config.schema.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
