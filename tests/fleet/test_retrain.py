"""Closing the loop: telemetry over a real Mosquitto into the fleet store, drift, `fleet retrain` on Dask.

Six simulated sites on the shipped load and PV series (shifted and scaled so they differ) report
model-step telemetry and daily summaries through the device's MQTT reporter; a fleet receiver stores them.
A first `fleet retrain --select all` gives every site its first model and records a staged rollout per
site; the simulated sites (not agents: they do not take model-update commands) install the bundles those
rollouts carry. Then a new load appears at one site; its drift and its live forecast error cross the plan's
thresholds, and `fleet retrain --select drift` on a two-worker local Dask cluster retrains that site only,
its challenger beats the running model on the same recent windows, run by the device's runtime, and a
staged rollout of it to that site is recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle import read_bundle
from edge_agent.keys import load_public_key, new_keypair
from edge_agent.messages import ChannelDrift, SummaryContent
from edge_agent.reporting.base import MemoryReporter
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet import retrain as core
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.rollouts import RUNNING, RolloutStore
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
)

pytestmark = pytest.mark.mqtt
DAY = 96  # 15-min readings
CHANGED = "site-b"
THRESHOLD = 1.5


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Dask cluster of two worker processes, shared by both retraining runs (imports paid once)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as running:
        yield running.scheduler_address


def reporter(port: int, folder: Path, site: str) -> MqttReporter:
    config = MqttConfig.model_validate({
        "site": site, "device": "meter",
        "broker": {"port": port, "reconnect_min_s": 0.05},
        "outbox": {"path": str(folder / f"{site}.sqlite3")},
        "telemetry": {"enabled": True, "model_step": True, "max_per_s": 1e6},
        "command_staging_dir": str(folder / "staging"),
    })  # fmt: skip
    started = MqttReporter(config)
    started.start()
    assert started.wait_connected(10)
    return started


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


def test_a_drifting_site_is_retrained_on_dask_and_its_challenger_beats_the_running_model(
    tmp_path: Path, cluster: str
) -> None:
    profiles = site_profiles(6)
    series = {p.site: net_load(p, 42) for p in profiles}
    timestamps, values = series[CHANGED]
    series[CHANGED] = (timestamps, values + new_load(timestamps, int(timestamps[28 * DAY]), 3.0))
    private, public = new_keypair(tmp_path / "keys")
    fleet_task_yaml(tmp_path / "task.yaml")
    plan = fleet_plan_yaml(tmp_path / "plan.yaml", profiles, since="28d", drift_threshold=THRESHOLD)
    db = tmp_path / "fleet.sqlite3"
    store = FleetStore(path=db)
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

            # Four weeks as they were: every site gets its first model.
            report_days(0, 28)
            assert wait_until(lambda: stored_through(28), 60)
            first = retrain(plan, private, tmp_path / "first", db, cluster, "--select", "all")
            assert [s["decision"] for s in first["sites"]] == ["ship"] * 6, first["stdout"]
            deployed = json.loads((tmp_path / "first" / "deploy.json").read_text())["deployments"]
            assert all(entry["rollout"] for entry in deployed)
            for entry in deployed:  # what the recorded rollouts end in: each site runs its verified bundle
                devices[entry["site"]].install(read_bundle(Path(entry["bundle"]), load_public_key(public)))

            # Two more weeks; from day 28 a new load runs at one site.
            report_days(28, 42)

            def drifted() -> dict[str, float | None]:
                return {row["site"]: row["drift_max"] for row in store.devices()}

            assert wait_until(lambda: stored_through(42) and all(drifted().values()), 60)
        finally:
            for running in reporters.values():
                running.close()
            receiver.stop()
    drift = drifted()
    assert drift[CHANGED] is not None and drift[CHANGED] > THRESHOLD, drift
    assert all(value is not None and value < THRESHOLD for site, value in drift.items() if site != CHANGED), drift

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
    assert second["sites"][1]["decision"] == "failed" and "no model-step telemetry" in second["sites"][1]["reason"]
    row = second["sites"][0]
    assert row["champion"] == "net-load-site-b@1.0.0" and row["challenger"] == "net-load-site-b@1.1.0", row
    assert row["windows"] > 10 and row["new_mae"] < row["old_mae"], row
    assert row["decision"] == "ship" and row["data"]["source"].endswith(f"#{CHANGED}/meter")
    assert (tmp_path / "second" / "retrain_errors.png").stat().st_size > 0
    handoff = json.loads((tmp_path / "second" / "deploy.json").read_text())["deployments"]
    assert [(d["site"], d["model"], d["replaces"]) for d in handoff] == [(CHANGED, row["challenger"], row["champion"])]
    rollout = RolloutStore(store).get(row["rollout"])  # the staged rollout that will send it to the site
    assert (rollout.bundle_name, rollout.bundle_version, rollout.state) == ("net-load-site-b", "1.1.0", RUNNING)
    assert [(d.site, d.device) for d in rollout.devices] == [(CHANGED, "meter")]
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
    assert site_b[1:7] == ["net-load-site-b", "1.0.0", "fleet", "(own)", "2006-12-31", "+28d"], shown
