"""Fixtures for fleet tests: a private Mosquitto and fleet stores (SQLite file, PostgreSQL schema)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.mosquitto import LocalMosquitto
from fleet.store import FleetStore

PG_BASE_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=3"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema of the local PostgreSQL, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"gridedge_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_BASE_DSN, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 (database test) is unreachable: {exc}")
    yield f"{PG_BASE_DSN} options='-csearch_path={schema}'"
    with psycopg.connect(PG_BASE_DSN, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    """Keyword arguments opening the same store twice: {"path": ...} or {"dsn": ...}."""
    if request.param == "sqlite":
        return {"path": tmp_path / "fleet.sqlite3"}
    return {"dsn": request.getfixturevalue("pg_dsn")}


@pytest.fixture
def store(store_location: dict[str, object]) -> Iterator[FleetStore]:
    opened = FleetStore(**store_location)  # type: ignore[arg-type]
    yield opened
    opened.close()
