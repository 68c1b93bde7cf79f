"""The agent config: one validated tree, its committed schema, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_agent.config import config_json_schema, load_config
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

MINIMAL = {
    "site": "alpine-hut",
    "device": "ctrl-1",
    "bundle": {"path": "bundle", "public_key": "keys/bundle-signing.pub"},
    "runtime": {"type": "litert"},
    "sensors": [
        {
            "type": "modbus_tcp",
            "name": "site",
            "port": 5020,
            "devices": [{"name": "meter", "unit_id": 3, "register_map": "registers/load_meter.yaml"}],
        }
    ],
    "channels": {"Global_active_power": {"source": "meter.active_power", "scale": 0.001}},
    "mqtt": {"broker": {"host": "127.0.0.1", "port": 1883}},
}


def _write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_committed_schema_is_current() -> None:
    committed = (REPO / "firmware_configs" / "schema.json").read_text()
    assert committed == config_json_schema(), (
        "firmware_configs/schema.json is stale: run `gridedge agent schema --out firmware_configs/schema.json`"
    )


def test_minimal_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.bundle.path == tmp_path / "bundle"
    assert config.mqtt is not None and (config.mqtt.site, config.mqtt.device) == ("alpine-hut", "ctrl-1")
    assert config.mqtt.outbox.path.parent == tmp_path / "state"
    assert config.base_dir == tmp_path
    link = config.channel_link("Global_active_power")
    assert (link.source, link.scale) == ("meter.active_power", 0.001)
    assert config.channel_link("voltage").source == "voltage"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runtime": {"type": "tensorflow"}}, "runtime: Input tag 'tensorflow' found using 'type' does not match"),
        ({"loop": {"cadence_s": 0}}, "loop.cadence_s: Input should be greater than 0 (got 0)"),
        ({"site": "has spaces"}, "site: String should match pattern"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"clock": {"source": "sensor"}}, "clock: Value error, clock.source 'sensor' needs clock.channel"),
        ({"sensors": []}, "sensors: List should have at least 1 item"),
    ],
)
def test_bad_values_are_reported_with_their_field_path(tmp_path: Path, change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, {**MINIMAL, **change}))
    assert message in str(caught.value)
    assert "gridedge agent schema" in str(caught.value)


def test_mqtt_identity_must_not_contradict_the_top_level(tmp_path: Path) -> None:
    data = {**MINIMAL, "mqtt": {"site": "elsewhere"}}
    with pytest.raises(ConfigError, match=r"mqtt\.site 'elsewhere' differs from site 'alpine-hut'"):
        load_config(_write(tmp_path, data))


def test_missing_and_unparsable_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; pass --config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "firmware_configs").glob("*.yaml")))
def test_every_shipped_profile_merges_into_a_valid_config(profile: str) -> None:
    from edge_agent.config import AgentConfig
    from gridedge.provision import deep_merge, load_profile

    merged = deep_merge(load_profile(profile).agent, MINIMAL)
    merged = deep_merge(merged, {"runtime": load_profile(profile).agent["runtime"]})
    AgentConfig.model_validate(merged)


def test_every_relative_path_resolves_against_the_config_file_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {
        **MINIMAL,
        "state_dir": "var/state",
        "mqtt": {
            "broker": {"tls": {"ca_file": "tls/ca.pem", "cert_file": "tls/client.pem", "key_file": "tls/client.key"}},
            "command_staging_dir": "state/incoming",
        },
    }
    path = _write(tmp_path, data)
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.mqtt is not None and config.mqtt.broker.tls is not None
    tls = config.mqtt.broker.tls
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        tmp_path / "tls" / "ca.pem",
        tmp_path / "tls" / "client.pem",
        tmp_path / "tls" / "client.key",
    )
    # Update chunks and the outbox belong to the state folder, wherever a profile puts it.
    assert config.mqtt.command_staging_dir == tmp_path / "var" / "state" / "incoming"
    assert config.mqtt.outbox.path == tmp_path / "var" / "state" / "outbox.sqlite3"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = {**MINIMAL, "mqtt": {"command_staging_dir": "/srv/incoming", "broker": {"tls": {"ca_file": "/etc/ca.pem"}}}}
    config = load_config(_write(tmp_path, data))
    assert config.mqtt is not None and config.mqtt.broker.tls is not None
    assert config.mqtt.command_staging_dir == Path("/srv/incoming")
    assert config.mqtt.broker.tls.ca_file == Path("/etc/ca.pem")
