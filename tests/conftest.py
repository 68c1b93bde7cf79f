"""Fixtures shared by every test area. Brokers stay per area (tests/mqtt, tests/fleet) so that retained
messages of one area never reach the receivers of another."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from hypothesis import HealthCheck, settings
except ModuleNotFoundError:  # the emulated arm64 userland runs its subset with pytest alone
    pass
else:
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


OWN_DATA_CONFIG = """\
name: my-house
task: load_forecast
data:
  path: {path}
  time_column: time
  timezone: Europe/Paris
  columns:
    load_kw: {{unit: kW, min_value: 0, max_value: 12, sentinels: [-1000000]}}
features:
  input_window: 2d
  horizon: 24h
  past: [{{column: load_kw}}, {{column: volts}}]
  targets: [load_kw]
protocol: {{origin_hour: 6, train_stride: 6h}}
model: {{architecture: tcn_forecaster, filters: 4, hidden: 8, decoder_channels: 2}}
training: {{epochs: 1, batch_size: 64, patience: 1}}
baselines: {{lightgbm: {{n_estimators: 10, train_stride: 12h}}}}
"""


@pytest.fixture(scope="session")
def own_load_frame() -> Any:
    """W1's load as a user's export: naive Europe/Paris wall clock across both 2007 DST changes.

    A pandas frame with columns ``time`` (naive local ISO text), ``load_kw`` and ``volts``.
    """
    import pandas as pd

    from gridedge.datafiles import read_series

    times, columns = read_series("w1_load_uci_15min")
    utc = pd.DatetimeIndex(pd.to_datetime(times, unit="s", utc=True))
    frame = pd.DataFrame(
        {
            "time": utc.tz_convert("Europe/Paris").strftime("%Y-%m-%d %H:%M:%S"),
            "load_kw": columns["Global_active_power"],
            "volts": columns["Voltage"],
        }
    )
    keep = (utc >= pd.Timestamp("2007-02-01", tz="UTC")) & (utc < pd.Timestamp("2007-12-01", tz="UTC"))
    return frame[keep].reset_index(drop=True)


@pytest.fixture
def own_data_config() -> Any:
    """Write the task config a user would write next to their data file: ``own_data_config(folder, file)``."""

    def write(folder: Path, data_file: str) -> Path:
        path = folder / "my-house.yaml"
        path.write_text(OWN_DATA_CONFIG.format(path=data_file))
        return path

    return write


@pytest.fixture
def signing_key() -> Any:
    """A fresh Ed25519 bundle-signing key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """Bytes standing as a model file: the bundle contract only hashes them."""
    path = tmp_path / "src" / "model_int8.tflite"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 40)
    return path


@pytest.fixture
def manifest(model_file: Path) -> Any:
    """A valid W1-shaped manifest naming ``model_file`` (for bundle format, archive and rollout tests)."""
    from edge_agent.bundle import FORMAT_VERSION, Artefact, Manifest, OutputSpec, Provenance, TestVector, describe_file
    from edge_agent.features import ChannelSpec, FeatureSpec, NormalisationStats

    digest, size = describe_file(model_file)
    spec = FeatureSpec(
        sample_period_s=900,
        input_steps=192,
        horizon_steps=96,
        past_channels=(ChannelSpec(name="load_kw", unit="kW", min_value=0, max_value=20),),
        target_channels=("load_kw",),
        normalisation=NormalisationStats(channels=("load_kw",), mean=(1.1,), std=(0.9,)),
    )
    return Manifest(
        format_version=FORMAT_VERSION,
        name="w1-load",
        version="1.0.0",
        task="load_forecast",
        source_framework="keras",
        input=spec,
        output=OutputSpec(kind="forecast", horizon_steps=96, target_channels=("load_kw",), target_units=("kW",)),
        artefacts=(
            Artefact(
                file="model_int8.tflite",
                runtime="tflite",
                precision="int8",
                sha256=digest,
                bytes=size,
                self_test_atol=0.05,
            ),
        ),
        provenance=Provenance(data_fingerprint="0" * 64, config={"seed": 7}, seed=7, library_versions={}),
        test_vectors=(TestVector(inputs={"past": [[[0.0]]]}, float_output=[[0.1]], artefact_outputs={}),),
    )
