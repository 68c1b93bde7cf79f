"""The fleet store as a training source: model-step telemetry kept per device, read by ``data.fleet``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edge_agent.errors import ConfigError, DataError
from edge_agent.messages import TelemetryContent
from edge_agent.reporting.base import MemoryReporter
from gridedge.fleet.receiver import BatchWriter
from gridedge.fleet.settings import Retention
from gridedge.fleet.store import FleetStore, Received
from gridedge.sim.fleet import CHANNEL, SiteDevice, fleet_task_yaml, net_load, site_profiles
from gridedge.trainer import datacheck
from gridedge.trainer.config import parse_config


def report_site(store: FleetStore, index: int, days: int, drop_steps: slice | None = None) -> MemoryReporter:
    """Feed simulated site ``index``'s readings through its device code into ``store``."""
    profile = site_profiles(index + 1)[index]
    reporter = MemoryReporter(profile.site, profile.device)
    timestamps, values = net_load(profile, days)
    if drop_steps is not None:
        values = values.copy()
        values[drop_steps] = np.nan
    SiteDevice(profile, reporter).report(timestamps, values)
    store.ingest([Received(m, m.model_dump_json(), time.time()) for m in reporter.messages])
    return reporter


def fleet_config(tmp_path: Path, db: Any, site: str, **fleet: Any) -> Any:
    raw = yaml.safe_load(fleet_task_yaml(tmp_path / "task.yaml").read_text())
    raw["data"]["fleet"].update(db=db, site=site, **fleet)
    return parse_config(raw, base_dir=tmp_path)


def test_model_step_telemetry_is_kept_per_channel_once_and_raw_sweeps_are_not(store: FleetStore) -> None:
    reporter = report_site(store, 0, 3)
    steps = list(reporter.of_kind("telemetry"))
    assert steps and all(getattr(m, "step_s", None) == 3600 for m in steps)
    raw = MemoryReporter("site-a", "meter")
    raw.publish_telemetry(TelemetryContent(sample_ts=datetime.now(UTC), values={CHANNEL: 1.0}))
    store.ingest([Received(m, m.model_dump_json(), time.time()) for m in [*raw.messages, *steps[:5]]])  # replays
    rows = store.series("site-a", "meter")
    assert len(rows) == len(steps) and {row["channel"] for row in rows} == {CHANNEL}
    assert [row["start_s"] for row in rows] == sorted(m.sample_ts.timestamp() for m in steps)
    first = steps[0]
    assert rows[0]["value"] == pytest.approx(first.values[CHANNEL])
    recent = store.series("site-a", "meter", since_s=86_400)
    assert [row["start_s"] for row in recent] == [row["start_s"] for row in rows[-25:]]
    coverage = store.series_coverage()
    assert [(c["site"], c["steps"], c["step_s"]) for c in coverage] == [("site-a", len(steps), 3600)]


def test_series_retention_forgets_only_old_rows(store: FleetStore) -> None:
    report_site(store, 1, 2)
    kept = len(store.series("site-b", "meter"))
    assert store.apply_series_retention(1.0) == 0
    assert store.apply_series_retention(1.0, now=time.time() + 2 * 86_400) == kept
    assert store.series("site-b", "meter") == []


def test_train_data_reads_a_device_series_with_the_same_checks_as_a_file(
    tmp_path: Path, store: FleetStore, store_location: dict[str, Any]
) -> None:
    # Five hours of readings lost on day 20: the check reports the gap as it would in a file.
    report_site(store, 2, 30, drop_steps=slice(20 * 96 + 8, 20 * 96 + 28))
    db = "fleet.sqlite3" if "path" in store_location else store_location["dsn"]
    config = fleet_config(tmp_path, db, "site-c")
    assert config.data.fleet is not None
    report, prepared = datacheck.check(config)
    if "path" in store_location:  # a relative SQLite path is the config file's neighbour
        assert Path(config.data.fleet.db) == store_location["path"]
        assert report["file"] == f"fleet:{store_location['path']}#site-c/meter"
    else:  # a DSN is never written into reports or lineage
        assert report["file"] == "fleet:postgresql#site-c/meter"
    assert report["step_s"] == 3600 and report["rows_read"] == 28 * 24 + 1
    assert report["gaps"]["1-6 h"] == 1 and report["missing_values"][CHANNEL] == 5
    assert report["problems"] == [] and len(prepared.test) > 0
    shorter, _ = datacheck.check(fleet_config(tmp_path, db, "site-c", since="20d"))
    assert shorter["rows_read"] == 20 * 24 + 1 and shorter["span_utc"][1] == report["span_utc"][1]


def test_fleet_source_errors_name_the_field(tmp_path: Path) -> None:
    FleetStore(path=tmp_path / "fleet.sqlite3").close()
    with pytest.raises(DataError, match=r"data\.fleet: the fleet store holds no model-step telemetry of nowhere/meter"):
        datacheck.check(fleet_config(tmp_path, "fleet.sqlite3", "nowhere"))
    with pytest.raises(DataError, match=r"data\.fleet\.db: fleet store .*missing\.sqlite3 not found"):
        datacheck.check(fleet_config(tmp_path, "missing.sqlite3", "site-a"))
    raw = yaml.safe_load(fleet_task_yaml(tmp_path / "task.yaml").read_text())
    raw["data"]["path"] = "load.csv"
    with pytest.raises(ConfigError, match=r"data.*exactly one of them"):
        parse_config(raw, base_dir=tmp_path)
    raw["data"].pop("path")
    raw["data"]["fleet"]["site"] = "a/b"
    with pytest.raises(ConfigError, match=r"data\.fleet\.site"):
        parse_config(raw, base_dir=tmp_path)


def test_the_receivers_writer_forgets_old_series_on_its_own_schedule(store: FleetStore) -> None:
    profile = site_profiles(1)[0]
    reporter = MemoryReporter(profile.site, profile.device)
    SiteDevice(profile, reporter).report(*net_load(profile, 1))
    three_days_ago = time.time() - 3 * 86_400
    store.ingest([Received(m, m.model_dump_json(), three_days_ago) for m in reporter.messages])
    assert store.series(profile.site, profile.device)

    BatchWriter(store, "receiver-1", lambda: False, Retention(messages_days=30, series_days=7)).write([])
    assert store.series(profile.site, profile.device)  # three days are inside a week
    BatchWriter(store, "receiver-1", lambda: False, Retention(messages_days=30, series_days=2)).write([])
    assert store.series(profile.site, profile.device) == []
    assert store.query("SELECT COUNT(*) AS n FROM fleet_messages")[0]["n"] > 0  # messages keep their own 30 days
