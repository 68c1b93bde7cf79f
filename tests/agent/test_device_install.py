"""The offline, atomic device install: `provision --wheelhouse` then the folder's install.sh, on x86.

The x86-gateway folder installs with pip's network blocked (--no-index, and a dead proxy for good measure)
into a temporary prefix; the installed agent runs against the simulated site and a real Mosquitto; a second
run changes nothing; an install stopped half-way leaves the previous version current and running.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from gridedge.broker import LocalMosquitto
from gridedge.identity import issue_device_certificate, load_ca
from gridedge.provision import DeviceExtras, provision
from gridedge.sim.site import SimulatedSite, SiteServer
from gridedge.sites import site_values
from gridedge.wheelhouse import build_gridedge_wheel, wheel_platforms

pytestmark = [pytest.mark.slow, pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.timeout(1800)]
SITE, DEVICE = "install-site", "gateway-1"
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens on the discard port: any network use by pip fails


@pytest.fixture(scope="module")
def gridedge_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gridedge_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[LocalMosquitto, SiteServer]]:
    with (
        LocalMosquitto(tmp_path / "broker") as broker,
        SiteServer(SimulatedSite(speed=18_000.0), port=0).start_in_thread() as site,
    ):
        yield broker, site


def _site_file(folder: Path, site_port: int, broker_port: int, state: Path, summary_s: float) -> Path:
    values = site_values("simulated-household", site_port, devices=("meter",))
    values.update(
        {
            "site": SITE,
            "device": DEVICE,
            "state_dir": str(state),  # outside the versions: the outbox and sequence outlive an upgrade
            "loop": {"cadence_s": 0.05},
            "mqtt": {"broker": {"host": "127.0.0.1", "port": broker_port}, "summary_interval_s": summary_s},
            "log_level": "WARNING",
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"site-{summary_s}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _install(device: Path, prefix: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "GRIDEDGE_NO_SYSTEMD": "1",
        "http_proxy": DEAD_PROXY,
        "https_proxy": DEAD_PROXY,
        "PIP_INDEX_URL": f"{DEAD_PROXY}/simple",
        **env,
    }
    return subprocess.run(
        ["bash", str(device / "install.sh"), "--prefix", str(prefix)],
        capture_output=True, text=True, timeout=600, env=environment, check=False,
    )  # fmt: skip


class Summaries:
    """Summaries of the device, as the broker delivers them."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[dict[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, message: self.received.append(json.loads(message.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"gridedge/v1/{SITE}/{DEVICE}/summary", qos=1)
        self.client.loop_start()

    def wait_for_more(self, than: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) <= than and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.received) > than, f"no new summary within {timeout_s} s"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_install_sh_installs_offline_is_idempotent_and_a_failed_upgrade_keeps_the_running_version(
    tmp_path: Path, gridedge_wheel: Path, exported: Any, services: tuple[LocalMosquitto, SiteServer]
) -> None:
    broker, site = services
    public_key = exported.keys / "bundle-signing.pub"
    extras = DeviceExtras(wheelhouse=True, gridedge_wheel=gridedge_wheel)
    state, prefix = tmp_path / "state", tmp_path / "prefix"
    first = tmp_path / "device-v1"
    values = _site_file(tmp_path, site.port, broker.port, state, 1.0)
    provision("x86-gateway", values, exported.torch, public_key, first, extras)
    wheels = {p.name for p in (first / "wheelhouse").glob("*.whl")}
    assert any(name.startswith("onnxruntime-") and "x86_64" in name for name in wheels)
    assert not any(name.startswith("ai_edge_litert") for name in wheels)  # the gateway runs ORT only
    assert "sudo ./install.sh" in (first / "INSTALL.md").read_text()

    installed = _install(first, prefix)
    assert installed.returncode == 0, installed.stderr
    release_v1 = str((prefix / "current").readlink())
    assert (prefix / release_v1 / ".complete").exists()

    summaries = Summaries(broker.port)
    current = prefix / "current"
    agent = subprocess.Popen(
        [str(current / "venv" / "bin" / "gridedge"), "agent", "run", "--config", str(current / "config.yaml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        summaries.wait_for_more(0)
        # x86-gateway prefers fp32: ORT int8 measured 1.43x slower than fp32 on x86.
        assert summaries.received[-1]["model"]["precision"] == "fp32"

        versions_before = sorted(p.name for p in (prefix / "versions").iterdir())
        again = _install(first, prefix)
        assert again.returncode == 0, again.stderr
        assert "already installed" in again.stderr
        assert str((prefix / "current").readlink()) == release_v1
        assert sorted(p.name for p in (prefix / "versions").iterdir()) == versions_before

        second = tmp_path / "device-v2"  # another config is another release
        provision("x86-gateway", _site_file(tmp_path, site.port, broker.port, state, 1.5), exported.torch,
                  public_key, second, extras)  # fmt: skip
        for failing_step in ("pip", "switch"):  # stopped after its wheels, then just before the switch
            broken = _install(second, prefix, GRIDEDGE_INSTALL_FAIL_AT=failing_step)
            assert broken.returncode == 70, broken.stderr
            assert str((prefix / "current").readlink()) == release_v1, failing_step
            assert agent.poll() is None, "the running agent was disturbed"
            count = len(summaries.received)
            summaries.wait_for_more(count)

        upgraded = _install(second, prefix)
        assert upgraded.returncode == 0, upgraded.stderr
        release_v2 = str((prefix / "current").readlink())
        assert release_v2 != release_v1
        assert str((prefix / "previous").readlink()) == release_v1
        assert (prefix / release_v1 / "venv" / "bin" / "gridedge").exists()  # kept for rollback
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        summaries.close()
    assert agent.returncode == 0, agent.stderr.read() if agent.stderr else ""


def test_pip_download_tags_cover_every_older_manylinux_a_device_runs() -> None:
    tags = wheel_platforms("aarch64", "2.36")
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_28_aarch64" in tags
    assert "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags


def _fleet_ca(folder: Path) -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tls_helpers", Path(__file__).parents[1] / "mqtt" / "test_tls.py")
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    folder.mkdir()
    ca = helpers.issue(folder, "ca", None)
    helpers.issue(folder, "broker", ca, server=True)
    return folder / "ca.pem", folder / "ca.key"


def test_provision_with_a_ca_issues_the_device_identity_the_broker_acl_binds(
    tmp_path: Path, exported: Any, services: tuple[LocalMosquitto, SiteServer]
) -> None:
    import paho.mqtt.client as mqtt

    _, site = services
    ca_cert, ca_key = _fleet_ca(tmp_path / "pki")
    pki = tmp_path / "pki"
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite gridedge/v1/%u/#\n")
    tls_port_broker = LocalMosquitto(
        tmp_path / "tls-broker",
        extra_config="\n".join([
            f"cafile {pki / 'ca.pem'}", f"certfile {pki / 'broker.pem'}", f"keyfile {pki / 'broker.key'}",
            "require_certificate true", "use_identity_as_username true", f"acl_file {acl}",
        ]),
    )  # fmt: skip
    with tls_port_broker as broker:
        values = _site_file(tmp_path, site.port, broker.port, tmp_path / "state", 1.0)
        device = tmp_path / "device"
        provision("x86-gateway", values, exported.torch, exported.keys / "bundle-signing.pub", device,
                  DeviceExtras(ca_cert=ca_cert, ca_key=ca_key))  # fmt: skip
        certificate = x509.load_pem_x509_certificate((device / "keys" / "device.crt").read_bytes())
        assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{SITE}/{DEVICE}"
        assert (device / "keys" / "device.key").stat().st_mode & 0o077 == 0
        config = load_config(device / "config.yaml")
        assert config.mqtt.broker.tls is not None
        assert config.mqtt.broker.tls.cert_file == device / "keys" / "device.crt"

        delivered: list[str] = []
        watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        watcher.tls_set(str(pki / "ca.pem"), str(device / "keys" / "device.crt"), str(device / "keys" / "device.key"))
        watcher.on_message = lambda _c, _u, message: delivered.append(message.topic)
        watcher.connect("127.0.0.1", broker.port)
        watcher.subscribe("gridedge/v1/#", qos=1)
        watcher.loop_start()
        try:
            time.sleep(0.5)
            for topic in (f"gridedge/v1/{SITE}/{DEVICE}/alert", f"gridedge/v1/{SITE}/other-device/alert"):
                watcher.publish(topic, b"{}", qos=1).wait_for_publish(5)
            time.sleep(1.0)
        finally:
            watcher.loop_stop()
            watcher.disconnect()
        # The ACL lets the identity "<site>/<device>" use its own topics only.
        assert delivered == [f"gridedge/v1/{SITE}/{DEVICE}/alert"]


def test_a_ca_key_that_is_not_the_ca_certificates_is_refused(tmp_path: Path) -> None:
    ca_cert, _ = _fleet_ca(tmp_path / "pki")
    with pytest.raises(ConfigError, match="is not the key of the certificate"):
        load_ca(ca_cert, tmp_path / "pki" / "broker.key")
    with pytest.raises(ConfigError, match="is not a CA certificate"):
        issue_device_certificate(tmp_path / "pki" / "broker.pem", tmp_path / "pki" / "broker.key", "s", "d", tmp_path)
