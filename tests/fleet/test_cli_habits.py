"""The fleet CLI as a new user meets it: where the store comes from, a missing store, 80 columns, ISO times."""

from __future__ import annotations

import csv
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.messages import ModelInfo, OutboxStats, SummaryContent
from edge_agent.reporting.base import MessageBuilder
from gridedge.fleet.cli import app
from gridedge.fleet.settings import Retention, resolve_store
from gridedge.fleet.store import FleetStore, Received

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No fleet variables, and an empty config home: the user's own settings must not leak in."""
    for name in ("GRIDEDGE_FLEET_DB", "GRIDEDGE_FLEET_DSN", "GRIDEDGE_FLEET_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fleet_with_long_names(database: Path) -> None:
    store = FleetStore(path=database)
    now = datetime.now(UTC)
    items = []
    for index, (site, device) in enumerate(
        [("north-valley-solar-farm", "inverter-controller-07"), ("b", "stopped-one")]
    ):
        builder = MessageBuilder(site, device)
        content = SummaryContent(
            window_start=now, window_end=now,
            model=ModelInfo(name="w1-load-forecaster-tcn", version="12.4.1-rc2", runtime="tflite"),
        )
        items.append(Received(builder.summary(1, content, OutboxStats(depth=1234, bytes=0)), "{}", time.time()))
        items.append(Received(builder.status(2 + index, "stopped" if index else "degraded", "x", None), "{}",
                              time.time()))
    store.ingest(items, "test")
    store.close()


def test_a_missing_store_is_an_error_and_no_file_is_created(clean_env: Path) -> None:
    runner = CliRunner()
    for command in (["status"], ["dead-letters"], ["export", "--out", "x.csv"], ["serve"]):
        result = runner.invoke(app, command)
        assert result.exit_code != 0, command
        assert "fleet.sqlite3 not found (default)" in str(result.exception), command
    assert not (clean_env / "fleet.sqlite3").exists()


def test_store_location_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = clean_env / "config-home" / "gridedge" / "fleet.yaml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text("db: stores/from-config.sqlite3\nretention_days: 30\nseries_retention_days: 400\n")
    from_config = resolve_store(must_exist=False)
    assert from_config.path == config_file.parent / "stores/from-config.sqlite3"
    assert from_config.retention == Retention(messages_days=30, series_days=400)
    monkeypatch.setenv("GRIDEDGE_FLEET_DB", "from-env.sqlite3")
    assert resolve_store(must_exist=False).path == Path("from-env.sqlite3")
    assert resolve_store(Path("flag.sqlite3"), must_exist=False).path == Path("flag.sqlite3")
    monkeypatch.setenv("GRIDEDGE_FLEET_DSN", "host=db")
    assert resolve_store(must_exist=False).dsn == "host=db"  # the variable naming PostgreSQL wins over DB
    assert resolve_store(Path("flag.sqlite3"), must_exist=False).path == Path("flag.sqlite3")
    other = clean_env / "other.yaml"
    other.write_text("db: a.sqlite3\ndsn: host=x\n")
    with pytest.raises(Exception, match="not both"):
        resolve_store(config=other, must_exist=False)
    other.write_text("dbb: a.sqlite3\n")
    with pytest.raises(Exception, match="dbb"):
        resolve_store(config=other, must_exist=False)


def test_status_fits_80_columns_and_says_stopped(clean_env: Path) -> None:
    database = clean_env / "fleet.sqlite3"
    fleet_with_long_names(database)
    result = CliRunner().invoke(app, ["status", "--db", str(database)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output
    for value in ("degraded", "stopped", "1234", "12.4.1-rc2"):
        assert value in result.output, value
    # Wrapped cells keep every character: read the first column top to bottom.
    header = next(index for index, line in enumerate(lines) if "state" in line)
    width = lines[header].index("state")
    body = lines[header + 2 : next(i for i, line in enumerate(lines) if line.startswith("seen:"))]
    first_column = "".join(line[:width].strip() for line in body)
    assert first_column == "stopped-onebinverter-controller-07north-valley-solar-farm"


def test_exports_carry_iso_8601_utc_times(clean_env: Path) -> None:
    database = clean_env / "fleet.sqlite3"
    fleet_with_long_names(database)
    runner = CliRunner()
    for what, columns in (("devices", ("last_seen", "state_at")), ("messages", ("received_at",))):
        out = clean_env / f"{what}.csv"
        assert runner.invoke(app, ["export", "--what", what, "--db", str(database), "--out", str(out)]).exit_code == 0
        rows = list(csv.DictReader(out.open()))
        assert rows
        for row in rows:
            for column in columns:
                assert ISO_UTC.match(row[column]), (column, row[column])
