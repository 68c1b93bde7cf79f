"""The retrain plan, site selection from the fleet store, versions and the report, without training."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.messages import ChannelDrift, Forecast, ModelInfo, SummaryContent
from edge_agent.reporting.base import MemoryReporter
from gridedge.fleet import retrain as core
from gridedge.fleet.store import FleetStore, Received
from gridedge.sim.fleet import CHANNEL, SiteDevice, fleet_plan_yaml, fleet_task_yaml, net_load, site_profiles


def report_drift(store: FleetStore, site: str, z: float | None, model: str | None = None) -> None:
    reporter = MemoryReporter(site, "meter")
    now = datetime.now(UTC)
    drift = {} if z is None else {"net_kw": ChannelDrift(z_mean=z)}
    info = ModelInfo(name=model, version="1.2.3") if model else None
    reporter.publish_summary(SummaryContent(window_start=now, window_end=now, drift=drift, model=info))
    store.ingest([Received(m, m.model_dump_json(), time.time()) for m in reporter.messages])


def test_selection_by_group_and_by_drift_says_why_the_others_were_left_out(store: FleetStore, tmp_path: Path) -> None:
    profiles = site_profiles(4)
    fleet_task_yaml(tmp_path / "task.yaml")
    plan, folder = core.load_plan(fleet_plan_yaml(tmp_path / "plan.yaml", profiles, drift_threshold=1.5))
    for profile, z in zip(profiles, (0.4, -2.1, None, 1.49), strict=True):
        report_drift(store, profile.site, z, model=f"net-load-{profile.site}" if z is not None else None)
    chosen, skipped = core.select_sites(plan, store, "drift")
    assert [s.site for s in chosen] == ["site-b"]  # |z| counts: a load that disappears drifts too
    assert skipped == {"site-a": "drift 0.40 below 1.5", "site-c": "drift none reported below 1.5",
                       "site-d": "drift 1.49 below 1.5"}  # fmt: skip
    north, skipped = core.select_sites(plan, store, "group", "north")
    assert [s.site for s in north] == ["site-a", "site-b", "site-c"] and skipped == {"site-d": "not in group north"}
    jobs = core.make_jobs(plan, folder, chosen, store, tmp_path / "key.pem", tmp_path / "out")
    assert (jobs[0].running, jobs[0].version, jobs[0].champion) == ("net-load-site-b@1.2.3", "1.3.0", None)
    first = core.make_jobs(plan, folder, north[2:], store, tmp_path / "key.pem", tmp_path / "out")[0]
    assert (first.name, first.version, first.running) == ("net-load-site-c", "1.0.0", None)


def test_a_plan_naming_a_missing_task_config_is_refused(store: FleetStore, tmp_path: Path) -> None:
    plan, folder = core.load_plan(fleet_plan_yaml(tmp_path / "plan.yaml", site_profiles(1), task="nope.yaml"))
    with pytest.raises(ConfigError, match=r"task config .*nope\.yaml of site site-a not found"):
        core.make_jobs(plan, folder, plan.sites, store, tmp_path / "key.pem", tmp_path / "out")
    (tmp_path / "bad.yaml").write_text("task: t.yaml\nsites: []\n")
    with pytest.raises(ConfigError, match="sites"):
        core.load_plan(tmp_path / "bad.yaml")


def test_report_lists_every_site_and_deploys_only_winners(tmp_path: Path) -> None:
    outcomes = [
        core.SiteOutcome("site-a", "meter", "ship", "challenger better", "m-a@1.0.0", "m-a@1.1.0", 2.0, 1.0, 12,
                         archive="/x/site-a/bundle.tar.gz"),
        core.SiteOutcome("site-b", "meter", "keep", "not 2 % better", "m-b@1.0.0", "m-b@1.1.0", 1.0, 1.0, 12),
        core.SiteOutcome("site-c", "meter", "failed", "DataError: no | telemetry"),
    ]  # fmt: skip
    paths = core.write_report(tmp_path, outcomes, {"site-d": "drift 0.10 below 2.0"},
                              {"selection": "drift", "engine": "test", "seconds": 1.0})  # fmt: skip
    text = paths["markdown"].read_text()
    assert "1 shipped, 1 kept, 1 failed" in text and "| site-c |" in text and "no / telemetry" in text
    assert "| site-d | | | | | | not selected | drift 0.10 below 2.0 | |" in text
    assert paths["plot"].stat().st_size > 0
    deploy = json.loads(paths["deploy"].read_text())["deployments"]
    assert [(d["site"], d["model"], d["replaces"]) for d in deploy] == [("site-a", "m-a@1.1.0", "m-a@1.0.0")]
    assert core.next_version("2.7.1") == "2.8.0" and core.next_version(None) == "1.0.0"


def test_live_error_scores_reported_forecasts_against_the_telemetry_that_followed(store: FleetStore) -> None:
    profile = site_profiles(1)[0]
    reporter = MemoryReporter(profile.site, profile.device)
    timestamps, values = net_load(profile, 3)
    SiteDevice(profile, reporter).report(timestamps, values)
    steps = {m.sample_ts.timestamp(): m.values[CHANNEL] for m in reporter.of_kind("telemetry")}
    origin = sorted(steps)[30]
    # A forecast 0.5 kW above what came, and one step whose value the device did not know (not scored).
    truth = [steps[origin + 3600 * k] for k in range(10)]
    forecast = [v + 0.5 for v in truth]
    now = datetime.now(UTC)
    reporter.publish_summary(SummaryContent(window_start=now, window_end=now, forecasts=[
        Forecast(target=CHANNEL, origin=datetime.fromtimestamp(origin, UTC), step_s=3600,
                 values=[*forecast, None])]))  # fmt: skip
    store.ingest([Received(m, m.model_dump_json(), time.time()) for m in reporter.messages])
    assert core.live_error(store, profile.site, profile.device) == (pytest.approx(0.5, abs=1e-5), 10)
    assert core.live_error(store, "site-z", "meter") == (None, 0)
