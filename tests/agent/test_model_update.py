"""Model updates end to end over a real Mosquitto: signed archive in chunks -> verify -> self-test -> swap.

The agent runs its loop against the simulated site while an operator client publishes the update, every
request signed with the operator key; a tampered archive, a bundle whose self-test fails and an older
version of the running model (unless the signed command allows the downgrade) are refused and the old
model keeps running.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent, AgentCore
from edge_agent.bundle import MANIFEST_NAME, Manifest, pack_archive, read_bundle, write_bundle
from edge_agent.keys import load_private_key, load_public_key, new_keypair
from edge_agent.messages import CommandRequest
from edge_agent.reporting.authentication import CommandGuard
from edge_agent.reporting.commands import model_update_requests
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.updates import AgentCommands
from gridedge.broker import LocalMosquitto
from gridedge.fleet.commands import sign_request
from gridedge.sim.site import SimulatedSite, SiteServer

pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow]
PREFIX = "gridedge/v1/test-site/ctrl-1"


def _resign(source: Path, out: Path, keys: Path, **changes: Any) -> Path:
    """A new bundle from ``source`` with manifest fields changed, signed with the fleet key."""
    bundle = read_bundle(source, load_public_key(keys / "bundle-signing.pub"))
    manifest = Manifest.model_validate({**bundle.manifest.model_dump(), **changes})
    files = {a.file: source / a.file for a in manifest.artefacts}
    return write_bundle(out, manifest, files, load_private_key(keys / "bundle-signing.key"))


class Operator:
    """What a fleet operator's tool does: sign a command, publish it, wait for its result."""

    def __init__(self, port: int, key: Path) -> None:
        self.key = load_private_key(key)
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.results.put(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{PREFIX}/cmd/+/result", qos=1)
        self.client.loop_start()
        time.sleep(0.2)

    def sign(self, name: str, request: CommandRequest) -> CommandRequest:
        return sign_request(self.key, "test-site", "ctrl-1", name, request)

    def send_archive(self, archive: bytes, timeout_s: float = 60, allow_downgrade: bool = False) -> dict[str, Any]:
        requests = model_update_requests(archive, chunk_bytes=16 * 1024, allow_downgrade=allow_downgrade)
        assert len(requests) > 1  # the transfer really is chunked
        for request in requests:
            signed = self.sign("model-update", request)
            self.client.publish(f"{PREFIX}/cmd/model-update", signed.model_dump_json(), qos=1)
        return self.wait(requests[-1].request_id, timeout_s)

    def command(self, name: str, timeout_s: float = 30) -> dict[str, Any]:
        request = self.sign(name, CommandRequest())
        self.client.publish(f"{PREFIX}/cmd/{name}", request.model_dump_json(), qos=1)
        return self.wait(request.request_id, timeout_s)

    def wait(self, request_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                result = self.results.get(timeout=0.5)
            except queue.Empty:
                continue
            if result.get("request_id") == request_id and result["outcome"] != "in-progress":
                return result
        raise AssertionError(f"no result for {request_id} within {timeout_s} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_model_update_over_mqtt_swaps_refuses_bad_bundles_and_rolls_back(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    keys = exported.keys
    shutil.copyfile(keys / "bundle-signing.key", tmp_path / "fleet.key")
    v2 = _resign(exported.keras, tmp_path / "v2", keys, version="0.2.0")
    tampered_dir = shutil.copytree(v2, tmp_path / "tampered")
    model = next(tampered_dir.glob("*int8*.tflite"))
    model.write_bytes(model.read_bytes()[:-64] + bytes(64))
    manifest = read_bundle(v2, load_public_key(keys / "bundle-signing.pub")).manifest
    wrong_vectors = [
        {
            **v.model_dump(),
            "artefact_outputs": {
                f: [[[x + 1.0 for x in row] for row in out[0]]] for f, out in v.artefact_outputs.items()
            },
        }
        for v in manifest.test_vectors
    ]
    failing = _resign(exported.keras, tmp_path / "failing", keys, version="0.3.0", test_vectors=wrong_vectors)
    operator_key, operator_public = new_keypair(tmp_path / "operator", kind="operator")

    with (
        LocalMosquitto(tmp_path / "broker") as broker,
        SiteServer(SimulatedSite(speed=18_000.0), port=0).start_in_thread() as site,
    ):
        config = make_config(
            tmp_path,
            exported.keras,
            keys,
            site.port,
            "litert",
            loop={"cadence_s": 0.05},
            mqtt={"broker": {"port": broker.port}, "summary_interval_s": 5},
            commands={"operator_public_key": str(operator_public)},
        )
        core = AgentCore.from_config(config)
        commands = AgentCommands(core.models, core.health, core.live.apply, reasons=core.reasons)
        guard = CommandGuard.from_config(config.commands, config.site, config.device, config.state_dir)
        reporter = MqttReporter(  # type: ignore[arg-type]
            config.mqtt, control=commands, updater=commands, guard=guard, health_reasons=core.reasons
        )
        agent = Agent(config, reporter, core=core)
        reporter.start()
        agent.start()
        loop = threading.Thread(target=agent.run, daemon=True)
        loop.start()
        operator = Operator(broker.port, operator_key)
        try:
            assert operator.command("ping")["outcome"] == "ok"

            refused = operator.send_archive(pack_archive(tampered_dir, tmp_path / "t.tar.gz").read_bytes())
            assert refused["outcome"] == "error" and "does not match the manifest" in refused["error"]
            refused = operator.send_archive(pack_archive(failing, tmp_path / "f.tar.gz").read_bytes())
            assert refused["outcome"] == "error" and "self_test_atol" in refused["error"]
            assert agent.model_info().version == "0.1.0" and not agent.supervisor.degraded

            v2_archive = pack_archive(v2, tmp_path / "v2.tar.gz").read_bytes()
            accepted = operator.send_archive(v2_archive)
            assert accepted["outcome"] == "ok", accepted
            assert accepted["data"]["active"]["version"] == "0.2.0"
            assert agent.model_info().version == "0.2.0"
            inferences = agent.health.inferences
            deadline = time.monotonic() + 60
            while agent.health.inferences < inferences + 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert agent.health.inferences >= inferences + 5, "the new model made no decisions"
            assert agent.model_info().version == "0.2.0" and not agent.supervisor.degraded

            status = operator.command("status")
            assert status["outcome"] == "ok" and status["data"]["model"]["version"] == "0.2.0"
            rolled = operator.command("rollback")
            assert rolled["outcome"] == "ok" and rolled["data"]["active"]["version"] == "0.1.0"
            assert agent.model_info().version == "0.1.0"

            # Forward again, then an older signed bundle of the same model: a downgrade needs the signed flag.
            assert operator.send_archive(v2_archive)["outcome"] == "ok"
            older = pack_archive(exported.keras, tmp_path / "v1.tar.gz").read_bytes()
            downgrade = operator.send_archive(older)
            assert downgrade["outcome"] == "error" and "downgrade" in downgrade["error"], downgrade
            assert "0.2.0 to 0.1.0" in downgrade["error"] and agent.model_info().version == "0.2.0"
            allowed = operator.send_archive(older, allow_downgrade=True)
            assert allowed["outcome"] == "ok" and allowed["data"]["active"]["version"] == "0.1.0", allowed
            assert agent.model_info().version == "0.1.0"
        finally:
            operator.close()
            agent.stop()
            loop.join(10)

    # The update survives a restart: the store's "current" link is what a new agent starts from.
    assert (
        json.loads((Path(config.state_dir) / "bundles" / "current" / MANIFEST_NAME).read_text())["version"] == "0.1.0"
    )
