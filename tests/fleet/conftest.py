"""Fixtures for fleet tests: a private Mosquitto and fleet stores (SQLite file, PostgreSQL schema)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle import bundle_digest, pack_archive, write_bundle
from gridedge.broker import LocalMosquitto
from gridedge.fleet.store import FleetStore


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    """The fleet tests' own broker: retained messages of the MQTT tests must not reach their receivers."""
    with LocalMosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


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


def _wait_subscribed(listener: subprocess.Popen[str]) -> None:
    assert listener.stderr is not None
    while "subscribed" not in (line := listener.stderr.readline()):
        assert line, "the listener ended before subscribing"


@pytest.fixture
def wait_subscribed() -> Callable[[subprocess.Popen[str]], None]:
    """Reads a `fleet listen` process's stderr until it says it is subscribed (it imports, starts its
    writer process and connects first: seconds on a busy machine)."""
    return _wait_subscribed



@pytest.fixture
def archive(tmp_path: Path, manifest: Any, model_file: Path, signing_key: Any) -> tuple[bytes, str]:
    """A signed bundle archive and the bundle's digest."""
    folder = write_bundle(tmp_path / "bundle", manifest, {"model_int8.tflite": model_file}, signing_key)
    return pack_archive(folder, tmp_path / "bundle.tar.gz").read_bytes(), bundle_digest(folder)
