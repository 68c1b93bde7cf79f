from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import (
    FORMAT_VERSION,
    Artefact,
    Manifest,
    OutputSpec,
    Provenance,
    TestVector,
    describe_file,
)
from edge_agent.features import ChannelSpec, FeatureSpec, NormalisationStats


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model_int8.tflite"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 40)
    return path


@pytest.fixture
def manifest(model_file: Path) -> Manifest:
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
