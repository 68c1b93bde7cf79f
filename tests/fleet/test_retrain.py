"""Closing the loop: telemetry over a real Mosquitto into the fleet store, drift, `fleet retrain` on Dask,
a staged rollout that a real agent process installs.

Six simulated sites on the shipped load and PV series (shifted and scaled so they differ) report
model-step telemetry and daily summaries through the device's MQTT reporter; a fleet receiver stores them.
A first `fleet retrain --select all` gives every site its first model and records a staged rollout per
site. From then on the site whose load will change is a real agent process (`gridedge agent run`),
provisioned with its first model and replaying the site's meter 18,000 times faster than real time; it
keeps the device's outbox, so its sequence numbers go on. The other five sites stay simulated and install
their bundles directly. A new load appears at the agent's site; its drift and its live forecast error
cross the plan's thresholds, and `fleet retrain --select drift` on a two-worker local Dask cluster retrains
that site only; its challenger beats the running model on the same recent windows, run by the device's
runtime; the staged rollout `fleet retrain` recorded sends it over `cmd/model-update`, the agent verifies
and runs it, and the fleet store and `gridedge fleet models` show it running with its lineage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.bundle import MANIFEST_NAME, read_bundle
from edge_agent.keys import load_private_key, load_public_key, new_keypair
from edge_agent.messages import ChannelDrift, SummaryContent
from edge_agent.reporting.base import MemoryReporter
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet import retrain as core
from gridedge.fleet.models import date_range
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.rollouts import RUNNING, RolloutRunner, RolloutStore
from gridedge.fleet.store import FleetStore, Received
from gridedge.sim.fleet import (
    CHANNEL,
    SiteDevice,
    SiteProfile,
    fleet_plan_yaml,
    fleet_task_yaml,
    net_load,
    new_load,
    site_profiles,
    write_replay,
)

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(1200)]
DAY = 96  # 15-min readings
CHANGED = "site-b"
THRESHOLD = 1.5
# The agent's replay: a 15-min reading per two 0.05 s cycles (a loaded machine skips none), a day in 9.6 s.
SPEED = 9_000.0
REPLAY_DAYS = 120  # the agent's meter runs on while the fleet retrains and rolls out (days 42-120: 12 min)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Dask cluster of two worker processes, shared by both retraining runs (imports paid once)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as running:
        yield running.scheduler_address


def reporter_config(port: int, folder: Path, site: str) -> dict[str, Any]:
    return {
        "site": site, "device": "meter",
        "broker": {"port": port, "reconnect_min_s": 0.05},
        "outbox": {"path": str(folder / f"{site}.sqlite3")},
        "telemetry": {"enabled": True, "model_step": True, "max_per_s": 1e6},
        "command_staging_dir": str(folder / "staging" / site),
    }  # fmt: skip


def reporter(port: int, folder: Path, site: str) -> MqttReporter:
    started = MqttReporter(MqttConfig.model_validate(reporter_config(port, folder, site)))
    started.start()
    assert started.wait_connected(10)
    return started


def agent_config(folder: Path, port: int, replay: Path, bundle: Path, keys: dict[str, Path]) -> Path:
    """The changed site's agent: its meter replayed, its first model, the device's outbox, the operator's key."""
    mqtt = reporter_config(port, folder, CHANGED)
    mqtt.pop("site"), mqtt.pop("device")
    raw = {
        "site": CHANGED,
        "device": "meter",
        "state_dir": str(folder / "agent"),
        "bundle": {"path": str(bundle), "public_key": str(keys["bundle"])},
        "runtime": {"type": "onnxruntime"},
        "sensors": [{"type": "replay", "name": "meter", "path": str(replay), "speed": SPEED,
                     "channels": [{"name": CHANNEL, "column": CHANNEL, "unit": "kW"}]}],
        "channels": {CHANNEL: f"meter.{CHANNEL}"},
        "clock": {"source": "reading"},
        "loop": {"cadence_s": 900 / SPEED / 2},
        "commands": {"operator_public_key": str(keys["operator"])},
        "mqtt": {**mqtt, "summary_interval_s": 86_400 / SPEED},  # a summary (drift, forecast) per replayed day
    }  # fmt: skip
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_agent(config: Path) -> subprocess.Popen[bytes]:
    with (config.parent / "agent.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gridedge.cli", "agent", "run", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)


def retrain(
    plan: Path, key: Path, out: Path, db: Path, scheduler: str, *select: str, expect_exit: int = 0
) -> dict[str, Any]:
    command = [sys.executable, "-m", "gridedge.cli", "fleet", "retrain", str(plan), "--key", str(key),
               "--out", str(out), "--db", str(db), "--scheduler", scheduler, *select]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == expect_exit, result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "retrain_report.json").read_text())
    report["stdout"] = result.stdout
    return report


def test_a_drifting_site_is_retrained_on_dask_and_its_agent_runs_the_challenger(tmp_path: Path, cluster: str) -> None:
    profiles = site_profiles(6)
    series = {p.site: net_load(p, 42) for p in profiles}
    timestamps, values = net_load(profiles[1], REPLAY_DAYS)
    series[CHANGED] = (timestamps, values + new_load(timestamps, int(timestamps[28 * DAY]), 3.0))
    private, public = new_keypair(tmp_path / "keys")
    operator, operator_public = new_keypair(tmp_path / "operator", kind="operator")
    fleet_task_yaml(tmp_path / "task.yaml")
    plan = fleet_plan_yaml(tmp_path / "plan.yaml", profiles, since="28d", drift_threshold=THRESHOLD)
    db = tmp_path / "fleet.sqlite3"
    store = FleetStore(path=db)
    rollouts = RolloutStore(store)
    agent: subprocess.Popen[bytes] | None = None
    with LocalMosquitto(tmp_path / "mosquitto") as broker:
        receiver = FleetReceiver(BrokerConfig(port=broker.port), store, group=None, name=f"r-{uuid.uuid4().hex[:6]}")
        receiver.start()
        assert receiver.wait_connected(10)
        reporters = {p.site: reporter(broker.port, tmp_path, p.site) for p in profiles}
        devices = {p.site: SiteDevice(p, reporters[p.site]) for p in profiles}
        try:

            def report_days(first: int, last: int) -> None:
                for site, device in devices.items():
                    device.report(series[site][0][first * DAY : last * DAY], series[site][1][first * DAY : last * DAY])
                assert all(r.flush(60) for r in reporters.values())

            def stored_through(day: int) -> bool:
                newest = day * 24 - 2  # the last closed hour of the last full day
                return all(
                    any(row["steps"] >= newest for row in store.series_coverage() if row["site"] == p.site)
                    for p in profiles
                )

            def device_row(site: str) -> dict[str, Any]:
                return next((row for row in store.devices() if row["site"] == site), {})

            # Four weeks as they were: every site gets its first model.
            report_days(0, 28)
            assert wait_until(lambda: stored_through(28), 60)
            first = retrain(plan, private, tmp_path / "first", db, cluster, "--select", "all")
            assert [s["decision"] for s in first["sites"]] == ["ship"] * 6, first["stdout"]
            handed = json.loads((tmp_path / "first" / "deploy.json").read_text())["deployments"]
            deployed = {entry["site"]: entry for entry in handed}
            assert all(entry["rollout"] for entry in deployed.values())
            for site, entry in deployed.items():  # the simulated sites install what their rollouts carry
                if site != CHANGED:
                    devices[site].install(read_bundle(Path(entry["bundle"]), load_public_key(public)))

            # The changed site becomes an agent process, provisioned with its first model; its meter plays on
            # from the hour the simulated device left open.
            reporters.pop(CHANGED).close()
            devices.pop(CHANGED)
            start = 28 * DAY - 4
            replay = write_replay(tmp_path / "site-b-meter.csv", timestamps[start:], series[CHANGED][1][start:])
            keys = {"bundle": public, "operator": operator_public}
            config = agent_config(tmp_path, broker.port, replay, Path(deployed[CHANGED]["bundle"]), keys)
            agent = start_agent(config)
            # Its summaries name its model: they carry on the device's sequence, so the store takes them as newer.
            assert wait_until(lambda: device_row(CHANGED).get("model_version") == "1.0.0", 120), device_row(CHANGED)
            with RolloutRunner(BrokerConfig(port=broker.port), store, load_private_key(operator)) as runner:
                (provisioned,) = runner.run([deployed[CHANGED]["rollout"]], timeout_s=120)
            assert provisioned.state == "done" and provisioned.counts() == {"current": 1}, provisioned

            # Two more weeks; from day 28 a new load runs at the changed site.
            report_days(28, 42)

            def drifted() -> dict[str, float | None]:
                return {row["site"]: row["drift_max"] for row in store.devices()}

            assert wait_until(lambda: stored_through(42) and all(drifted().values()), 240), (
                drifted(), (tmp_path / "agent.log").read_text()[-3000:])  # fmt: skip
            assert device_row(CHANGED)["model_version"] == "1.0.0", device_row(CHANGED)
            drift = drifted()
            assert drift[CHANGED] is not None and drift[CHANGED] > THRESHOLD, drift
            others = {site: value for site, value in drift.items() if site != CHANGED}
            assert all(value is not None and value < THRESHOLD for value in others.values()), drift

            # The forecasts the sites reported, scored against the telemetry that followed: the same site stands out.
            plan_rules, _ = core.load_plan(plan)
            ratios = {row["site"]: core.error_ratio(store, row) for row in store.devices()}
            assert all(ratio is not None for ratio, _ in ratios.values()), ratios
            by_error, _ = core.select_sites(plan_rules, store, "error")
            assert [s.site for s in by_error] == [CHANGED], ratios

            # A seventh site reports drift but never sent model-step telemetry: its job fails, the others go on.
            broken = MemoryReporter("site-g", "meter")
            broken.publish_summary(SummaryContent(window_start=datetime.now(UTC), window_end=datetime.now(UTC),
                                                  drift={CHANNEL: ChannelDrift(z_mean=4.0)}))  # fmt: skip
            store.ingest([Received(m, m.model_dump_json(), time.time()) for m in broken.messages])
            fleet_plan_yaml(plan, [*profiles, SiteProfile("site-g", "meter", "north", 0, 1.0, 0.0)], since="28d",
                            drift_threshold=THRESHOLD)  # fmt: skip

            second = retrain(plan, private, tmp_path / "second", db, cluster, expect_exit=1)  # --select drift: default
            assert [s["site"] for s in second["sites"]] == [CHANGED, "site-g"], second["stdout"]
            assert {s["site"] for s in second["not_selected"]} == {p.site for p in profiles} - {CHANGED}
            failed = second["sites"][1]
            assert failed["decision"] == "failed" and "no model-step telemetry" in failed["reason"], failed
            row = second["sites"][0]
            assert row["champion"] == "net-load-site-b@1.0.0" and row["challenger"] == "net-load-site-b@1.1.0", row
            assert row["windows"] > 10 and row["new_mae"] < row["old_mae"], row
            assert row["decision"] == "ship" and row["data"]["source"].endswith(f"#{CHANGED}/meter"), row
            assert (tmp_path / "second" / "retrain_errors.png").stat().st_size > 0
            handoff = json.loads((tmp_path / "second" / "deploy.json").read_text())["deployments"]
            shipped = [(d["site"], d["model"], d["replaces"]) for d in handoff]
            assert shipped == [(CHANGED, row["challenger"], row["champion"])], handoff
            rollout = rollouts.get(row["rollout"])  # the staged rollout that sends it to the site
            assert (rollout.bundle_name, rollout.bundle_version, rollout.state) == ("net-load-site-b", "1.1.0", RUNNING)
            assert [(d.site, d.device) for d in rollout.devices] == [(CHANGED, "meter")]

            # The rollout runs: the agent verifies the signed bundle, passes its first inferences on it and says so.
            with RolloutRunner(BrokerConfig(port=broker.port), store, load_private_key(operator)) as runner:
                (rollout,) = runner.run([rollout.rollout_id], timeout_s=300)
            assert rollout.state == "done" and rollout.counts() == {"updated": 1}, rollout
            assert wait_until(lambda: device_row(CHANGED)["model_version"] == "1.1.0", 60), device_row(CHANGED)
            current = tmp_path / "agent" / "bundles" / "current" / MANIFEST_NAME
            assert json.loads(current.read_text())["version"] == "1.1.0"
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
        finally:
            if agent is not None:
                stop_agent(agent)
            for running in reporters.values():
                running.close()
            receiver.stop()
    registered = {(m["name"], m["version"]): m for m in store.models()}
    newer, older = registered[("net-load-site-b", "1.1.0")], registered[("net-load-site-b", "1.0.0")]
    assert newer["data_start"] > older["data_start"] and newer["data_sha256"] != older["data_sha256"]
    store.close()
    lineage = read_bundle(Path(row["bundle"]), load_public_key(public)).manifest.provenance.lineage
    assert lineage is not None and lineage.data.source == row["data"]["source"]
    assert lineage.config_sha256 == newer["config_sha256"] and lineage.gridedge_version
    shown = subprocess.run(
        [sys.executable, "-m", "gridedge.cli", "fleet", "models", "--db", str(db)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    site_b = next(line.split() for line in shown.splitlines() if line.startswith(f"{CHANGED}/meter"))
    trained_on = date_range(newer["data_start"], newer["data_end"]).split()
    assert site_b[1:7] == ["net-load-site-b", "1.1.0", "fleet", "(own)", *trained_on], shown
    site_a = next(line.split() for line in shown.splitlines() if line.startswith("site-a/meter"))
    assert site_a[1:7] == ["net-load-site-a", "1.0.0", "fleet", "(own)", "2006-12-31", "+28d"], shown
