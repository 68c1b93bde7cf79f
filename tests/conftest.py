"""Fixtures shared by every test area. Brokers stay per area (tests/mqtt, tests/fleet) so that retained
messages of one area never reach the receivers of another."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Property tests check what is true, not how fast: a CI machine shared with a training run can take
# seconds for one example, and hypothesis' default 200 ms deadline would call that a failure.
settings.register_profile("gridedge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gridedge")

PG_BASE_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=3"


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
