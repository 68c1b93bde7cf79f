"""Staged rollouts from the fleet to 10 real agent processes over a real Mosquitto and a real Modbus site.

Two agents trust another bundle-signing key, so they refuse the fleet's bundle; one is stopped during the
rollout. `gridedge fleet deploy --wait` (the real CLI) updates three canaries, then the rest, records the
refusals with the devices' reasons, and updates the stopped agent when it comes back. Re-running the
rollout sends nothing. A bundle whose self-test fails halts at its canary and no other device changes
model. `gridedge fleet rollback` puts the previous bundle back. No timing is asserted: waits are bounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.bundle import MANIFEST_NAME, Manifest, pack_archive, read_bundle, write_bundle
from edge_agent.keys import load_private_key, load_public_key, new_keypair
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.rollouts import RolloutRunner, RolloutStore, Target, create_rollout, drive_in_background
from gridedge.fleet.store import FleetStore
from gridedge.sim.site import SimulatedSite, SiteServer
from gridedge.sites import site_values

# The session's exported bundles are trained first when this runs alone: minutes on a busy machine.
pytestmark = [pytest.mark.mqtt, pytest.mark.modbus, pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
SITE = "rollout-site"
AGENTS = 10
REFUSERS = (7, 8)  # trust another bundle-signing key
OFFLINE = 9  # stopped while the rollout runs
ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}


def resign(source: Path, out: Path, private_key: Path, public_key: Path, **changes: Any) -> Path:
    """A copy of the bundle at ``source`` with manifest fields changed, signed with ``private_key``."""
    bundle = read_bundle(source, load_public_key(public_key))
    manifest = Manifest.model_validate({**bundle.manifest.model_dump(), **changes})
    files = {a.file: source / a.file for a in manifest.artefacts}
    return write_bundle(out, manifest, files, load_private_key(private_key))


def device_name(index: int) -> str:
    return f"ctrl-{index:02d}"


def write_config(
    root: Path, index: int, bundle: Path, public_key: Path, operator: Path, ports: tuple[int, int]
) -> Path:
    """The config of one agent process: the site's meter over Modbus, a short cadence, the fleet broker."""
    modbus_port, mqtt_port = ports
    device = device_name(index)
    raw = site_values("simulated-household", modbus_port, devices=("meter",))
    # Ten agents start at once on a shared machine: a slow first answer must not cost the site clock.
    raw["sensors"][0]["devices"][0].update({"timeout_s": 3.0, "retries": 2})
    raw.update(
        {
            "site": SITE,
            "device": device,
            "state_dir": str(root / device),
            "bundle": {"path": str(bundle), "public_key": str(public_key)},
            "runtime": {"type": "litert"},
            "loop": {"cadence_s": 0.2},
            "commands": {"operator_public_key": str(operator)},
            "mqtt": {
                "site": SITE,
                "device": device,
                "broker": {"port": mqtt_port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                "summary_interval_s": 5.0,
            },
        }
    )
    path = root / f"{device}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def start_agent(config: Path) -> subprocess.Popen[bytes]:
    with (config.parent / f"{config.stem}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gridedge.cli", "agent", "run", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)


def running_version(root: Path, index: int, provisioned: str) -> str:
    """The version of the bundle an agent runs: its store's ``current`` link, else the provisioned one."""
    current = root / device_name(index) / "bundles" / "current" / MANIFEST_NAME
    return json.loads(current.read_text())["version"] if current.exists() else provisioned


def inferring(store: FleetStore, device: str) -> bool:
    """Whether the device's latest summary shows its model running (a latency average exists)."""
    latest = store.recent_messages(SITE, device, "summary", 1)
    health = json.loads(latest[0]["payload"]).get("health") if latest else None
    return bool(health and health.get("latency_moving_average_ms") is not None)


def fleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridedge.cli", "fleet", *args],
        env=ENV, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_staged_rollout_to_ten_agent_processes(tmp_path: Path, exported: Any) -> None:
    keys = exported.keys
    fleet_key, fleet_pub = keys / "bundle-signing.key", keys / "bundle-signing.pub"
    other_key, other_pub = new_keypair(tmp_path / "other-keys")
    operator_key, operator_pub = new_keypair(tmp_path / "operator", kind="operator")
    v1_other = resign(exported.keras, tmp_path / "v1-other", other_key, fleet_pub)
    v2 = pack_archive(resign(exported.keras, tmp_path / "v2", fleet_key, fleet_pub, version="0.2.0"),
                      tmp_path / "v2.tar.gz")
    manifest = read_bundle(exported.keras, load_public_key(fleet_pub)).manifest
    wrong_vectors = [
        {**v.model_dump(), "artefact_outputs": {
            f: [[[x + 1.0 for x in row] for row in out[0]]] for f, out in v.artefact_outputs.items()}}
        for v in manifest.test_vectors
    ]
    failing = pack_archive(
        resign(exported.keras, tmp_path / "v3", fleet_key, fleet_pub, version="0.3.0", test_vectors=wrong_vectors),
        tmp_path / "v3.tar.gz",
    )
    database = tmp_path / "fleet.sqlite3"
    agents_dir = tmp_path / "agents"
    agents_dir.mkdir()

    with (
        LocalMosquitto(tmp_path / "broker") as broker,
        # One 15-minute sample period every 0.3 s: an agent that overruns a cycle still reads every period.
        SiteServer(SimulatedSite(speed=3_000.0), port=0).start_in_thread() as site,
    ):
        store = FleetStore(path=database)
        receiver = FleetReceiver(BrokerConfig(port=broker.port), store, group=None, writer_process=False)
        receiver.start()
        ports = (site.port, broker.port)
        configs = [
            write_config(agents_dir, i, v1_other if i in REFUSERS else exported.keras,
                         other_pub if i in REFUSERS else fleet_pub, operator_pub, ports)
            for i in range(AGENTS)
        ]
        agents = [start_agent(config) for config in configs]
        rollouts = RolloutStore(store)
        deploy: subprocess.Popen[str] | None = None
        try:
            def states() -> dict[str, str]:
                return {row["device"]: row["state"] for row in store.devices() if row["site"] == SITE}

            assert wait_until(lambda: len(states()) == AGENTS and set(states().values()) <= {"online"}, 240), states()
            # Every agent decides with its model before the rollout starts (probation counts inferences).
            assert wait_until(lambda: all(inferring(store, device_name(i)) for i in range(AGENTS)), 300), [
                store.recent_messages(SITE, device_name(i), "summary", 1) for i in range(AGENTS)
            ]
            stop_agent(agents[OFFLINE])
            assert wait_until(lambda: states()[device_name(OFFLINE)] == "stopped", 30)

            broker_args = ("--port", str(broker.port), "--db", str(database), "--key", str(operator_key))
            deploy = subprocess.Popen(
                [sys.executable, "-m", "gridedge.cli", "fleet", "deploy", str(v2), "--site", SITE, "--canaries", "3",
                 "--max-failure-ratio", "0.25", "--timeout", "600", *broker_args],
                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip

            def outcomes() -> dict[str, str]:
                listed = rollouts.list_rollouts()
                return {d.device: d.outcome for d in listed[0].devices} if listed else {}

            expected = {device_name(i): "updated" for i in range(AGENTS)}
            expected.update({device_name(i): "refused" for i in REFUSERS})
            expected[device_name(OFFLINE)] = "waiting"
            assert wait_until(lambda: outcomes() == expected, 400), outcomes()
            (rollout,) = rollouts.list_rollouts()
            assert rollout.state == "running" and rollout.stage == 1
            assert [d.device for d in rollout.devices if d.stage == 0] == [device_name(i) for i in range(3)]
            for index in REFUSERS:
                reason = rollout.outcome(SITE, device_name(index)).reason or ""
                assert "signature" in reason, reason

            agents[OFFLINE] = start_agent(configs[OFFLINE])
            output, _ = deploy.communicate(timeout=400)
            assert deploy.returncode == 0, output
            rollout = rollouts.get(rollout.rollout_id)
            assert rollout.state == "done", output
            assert rollout.outcome(SITE, device_name(OFFLINE)).outcome == "updated"
            versions = [running_version(agents_dir, i, "0.1.0") for i in range(AGENTS)]
            assert versions == ["0.1.0" if i in REFUSERS else "0.2.0" for i in range(AGENTS)], versions

            listing = fleet("rollouts", "--db", str(database))
            assert listing.returncode == 0 and rollout.rollout_id in listing.stdout, listing.stderr
            shown = fleet("rollouts", rollout.rollout_id[:15], "--db", str(database))
            assert shown.returncode == 0 and "signature does not verify" in " ".join(shown.stdout.split()), shown.stdout
            for text in (listing.stdout, shown.stdout):
                assert max(len(line) for line in text.splitlines()) <= 80, text

            links = {i: (agents_dir / device_name(i) / "bundles" / "current").resolve() for i in range(AGENTS)}
            with RolloutRunner(BrokerConfig(port=broker.port), store, load_private_key(operator_key)) as runner:
                # Idempotent: the same bundle again is recorded as current, and nothing is sent. This one is
                # driven as `fleet listen --rollout-key` drives every active rollout.
                again = create_rollout(store, v2.read_bytes(), [Target(SITE, device_name(i)) for i in range(AGENTS)],
                                       canaries=3, max_failure_ratio=0.25)
                stop = threading.Event()
                driver = drive_in_background(runner, stop)
                assert wait_until(lambda: rollouts.get(again.rollout_id).settled, 300), rollouts.get(again.rollout_id)
                stop.set()
                driver.join(60)
                again = rollouts.get(again.rollout_id)
                assert again.state == "done" and again.counts() == {"current": 8, "refused": 2}, again
                # A canary that fails its self-test halts the rollout: no other device changes model.
                healthy = [Target(SITE, device_name(i)) for i in range(AGENTS) if i not in REFUSERS]
                halted = create_rollout(store, failing.read_bytes(), healthy, canaries=1, max_failure_ratio=0.25)
                (halted,) = runner.run([halted.rollout_id], timeout_s=300)
            assert halted.state == "halted" and halted.counts() == {"refused": 1, "skipped": 7}, halted
            (canary,) = [d for d in halted.devices if d.stage == 0]
            assert "self_test_atol" in (canary.reason or ""), canary
            assert {i: (agents_dir / device_name(i) / "bundles" / "current").resolve() for i in range(AGENTS)} == links

            undo = fleet("rollback", rollout.rollout_id, "--timeout", "300", *broker_args, timeout=400)
            assert undo.returncode == 0, undo.stdout + undo.stderr
            reverted = rollouts.get(rollout.rollout_id)
            assert reverted.state == "rolled-back" and reverted.counts() == {"reverted": 8, "refused": 2}, reverted
            assert {running_version(agents_dir, i, "0.1.0") for i in range(AGENTS)} == {"0.1.0"}
        finally:
            if deploy is not None and deploy.poll() is None:
                deploy.kill()
                deploy.wait(10)
            for agent in agents:
                stop_agent(agent)
            receiver.stop()
            store.close()
