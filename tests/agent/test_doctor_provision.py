"""A technician's two commands: `gridedge provision` builds the device folder, `gridedge agent doctor` checks it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edge_agent.errors import ConfigError
from edge_agent.keys import new_keypair
from gridedge.cli import app
from gridedge.provision import provision
from gridedge.sim.site import SimulatedSite, SiteServer
from gridedge.sites import EXAMPLE_SITE, site_file, site_values

pytestmark = [pytest.mark.modbus, pytest.mark.slow]


def _site_values(tmp_path: Path, port: int, broker_port: int = 1) -> Path:
    values = site_values("simulated-household", port, devices=("meter",))
    values["sensors"][0]["devices"][0].update({"timeout_s": 0.3, "retries": 0})
    values["mqtt"] = {"broker": {"host": "127.0.0.1", "port": broker_port}}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _plain(text: str) -> str:
    return " ".join(text.split())


def test_provision_then_doctor_pass_and_fail_in_plain_words(tmp_path: Path, exported: Any) -> None:
    runner = CliRunner(env={"COLUMNS": "400"})
    public_key = exported.keys / "bundle-signing.pub"
    with SiteServer(SimulatedSite(speed=60.0), port=0).start_in_thread() as server:
        from gridedge.broker import LocalMosquitto

        with LocalMosquitto(tmp_path / "broker") as broker:
            values = _site_values(tmp_path, server.port, broker.port)
            refused = runner.invoke(
                app,
                ["provision", "--profile", "x86-gateway", "--site", str(values), "--bundle", str(exported.keras),
                 "--public-key", str(public_key), "--out", str(tmp_path / "wrong")],
            )  # fmt: skip
            assert refused.exit_code == 2
            assert "no onnx artefact proven on 'ort'" in _plain(refused.output)
            # Nothing a technician could mistake for a device folder: no --out, no half-built staging.
            assert not (tmp_path / "wrong").exists()
            assert not list(tmp_path.glob(".wrong*"))

            device = tmp_path / "device"
            made = runner.invoke(
                app,
                ["provision", "--profile", "raspberry-pi-4", "--site", str(values), "--bundle", str(exported.keras),
                 "--public-key", str(public_key), "--out", str(device)],
            )  # fmt: skip
            assert made.exit_code == 0, made.output
            assert "will run w1-keras.int8.tflite" in _plain(made.output)
            assert {p.name for p in device.iterdir()} >= {"config.yaml", "bundle", "keys", "registers", "systemd"}
            config = yaml.safe_load((device / "config.yaml").read_text())
            assert config["sensors"][0]["devices"][0]["register_map"] == "registers/load_meter.yaml"
            assert config["state_dir"] == "/var/lib/gridedge"
            local = yaml.safe_load((device / "config.yaml").read_text())
            local["state_dir"] = str(tmp_path / "state")
            (device / "config.yaml").write_text(yaml.safe_dump(local))

            healthy = runner.invoke(app, ["agent", "doctor", "--config", str(device / "config.yaml")])
            text = _plain(healthy.output)
            assert healthy.exit_code == 0, healthy.output
            assert "All checks passed" in text
            assert "meter.voltage=" in text and " V" in text
            assert "signature and" in text and "file hash(es) verified" in text

            server.site.set_fault("meter", "hang")
            broken = runner.invoke(app, ["agent", "doctor", "--config", str(device / "config.yaml")])
            assert broken.exit_code == 1
            assert "no answer" in _plain(broken.output) and "check(s) failed" in _plain(broken.output)
            server.site.set_fault("meter", "none")

        no_broker = runner.invoke(app, ["agent", "doctor", "--config", str(device / "config.yaml")])
        assert no_broker.exit_code == 1 and "cannot open TCP 127.0.0.1" in _plain(no_broker.output)

    other = tmp_path / "other-keys"
    new_keypair(other)
    shutil.copyfile(other / "bundle-signing.pub", device / "keys" / "bundle-signing.pub")
    wrong_key = runner.invoke(
        app, ["agent", "doctor", "--config", str(device / "config.yaml"), "--broker-timeout", "1"]
    )
    assert wrong_key.exit_code == 1 and "signed with another key" in _plain(wrong_key.output)


def test_a_site_file_copied_anywhere_still_provisions(
    tmp_path: Path, exported: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "customer" / "hut"
    elsewhere.mkdir(parents=True)
    values = yaml.safe_load(site_file(EXAMPLE_SITE).read_text())
    # One map of the site's own, named by a path relative to the site file; the others by shipped name.
    (elsewhere / "maps").mkdir()
    shutil.copyfile(site_file(EXAMPLE_SITE).parent.parent / "registers" / "battery_bms.yaml",
                    elsewhere / "maps" / "our_bms.yaml")  # fmt: skip
    values["sensors"][0]["devices"][1]["register_map"] = "maps/our_bms.yaml"
    site = elsewhere / "site.yaml"
    site.write_text(yaml.safe_dump(values))
    monkeypatch.chdir(tmp_path)  # neither the site's folder nor the repository

    public_key = exported.keys / "bundle-signing.pub"
    config, artefact = provision("raspberry-pi-4", site, exported.keras, public_key, Path("device"))
    device = tmp_path / "device"
    assert artefact == "w1-keras.int8.tflite"
    written = yaml.safe_load((device / "config.yaml").read_text())
    assert [d["register_map"] for d in written["sensors"][0]["devices"]] == [
        "registers/load_meter.yaml", "registers/our_bms.yaml", "registers/inverter_sunspec.yaml",
    ]  # fmt: skip
    assert (device / "registers" / "our_bms.yaml").read_bytes() == (elsewhere / "maps" / "our_bms.yaml").read_bytes()
    assert config.bundle.path == device / "bundle"

    values["sensors"][0]["devices"][0]["register_map"] = "load_metre"
    site.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match="register_map 'load_metre' is not a shipped register map"):
        provision("raspberry-pi-4", site, exported.keras, public_key, tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_the_operator_key_travels_with_the_device_folder(tmp_path: Path, exported: Any) -> None:
    site_dir = tmp_path / "site"
    operator_private, operator_public = new_keypair(site_dir / "keys", kind="operator")
    values = yaml.safe_load(site_file(EXAMPLE_SITE).read_text())
    values["commands"] = {"operator_public_key": "keys/operator.pub"}  # relative to the site file
    site = site_dir / "site.yaml"
    site.write_text(yaml.safe_dump(values))
    public_key = exported.keys / "bundle-signing.pub"

    config, _ = provision("raspberry-pi-4", site, exported.keras, public_key, tmp_path / "device")
    assert config.commands.operator_public_key == tmp_path / "device" / "keys" / "operator.pub"
    assert config.commands.operator_public_key.read_bytes() == operator_public.read_bytes()

    _, other_public = new_keypair(tmp_path / "other", kind="operator")
    result = CliRunner().invoke(app, [
        "provision", "--profile", "raspberry-pi-4", "--site", str(site), "--bundle", str(exported.keras),
        "--public-key", str(public_key), "--out", str(tmp_path / "second"), "--operator-key", str(other_public),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "second" / "keys" / "operator.pub").read_bytes() == other_public.read_bytes()

    result = CliRunner().invoke(app, [
        "provision", "--profile", "raspberry-pi-4", "--site", str(site), "--bundle", str(exported.keras),
        "--public-key", str(public_key), "--out", str(tmp_path / "third"), "--operator-key", str(operator_private),
    ])  # fmt: skip
    assert result.exit_code == 2 and "operator.key" in _plain(result.output)
    assert not (tmp_path / "third").exists()
