"""The quantile contract: the bundle's output spec names the levels (old bundles still load) and the
summary's forecasts carry them, bounded and aligned with the point forecast."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_agent.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    QUANTILE_FORMAT_VERSION,
    Manifest,
    OutputSpec,
    parse_manifest,
    read_bundle,
    write_bundle,
)
from edge_agent.errors import BundleFormatError
from edge_agent.messages import MAX_QUANTILE_LEVELS, Forecast, QuantileForecast

QUANTILE_OUTPUT = {"quantiles": [0.1, 0.5, 0.9], "quantile_scales": [[1.3, 1.0, 1.1]]}


def _quantile_manifest(manifest: Manifest, version: int = QUANTILE_FORMAT_VERSION) -> Manifest:
    raw = json.loads(manifest.to_bytes())
    raw["output"].update(QUANTILE_OUTPUT)
    raw["format_version"] = version
    return Manifest.model_validate(raw)


def test_point_manifest_keeps_its_format_and_bytes(manifest: Manifest) -> None:
    raw = json.loads(manifest.to_bytes())
    assert raw["format_version"] == FORMAT_VERSION == 1
    # No quantile keys: an agent that predates quantiles (extra fields forbidden) reads it as before.
    assert set(raw["output"]) == {"kind", "horizon_steps", "target_channels", "target_units", "anomaly"}
    assert manifest.output.output_channels == 1


def test_a_manifest_written_before_quantiles_loads(manifest: Manifest) -> None:
    old = json.loads(manifest.to_bytes())
    old["output"] = {"kind": "forecast", "horizon_steps": 96, "target_channels": ["load_kw"],
                     "target_units": ["kW"], "anomaly": None}  # fmt: skip
    parsed = parse_manifest(json.dumps(old).encode())
    assert parsed.output.quantiles == () and parsed.output.quantile_scales == ()


def test_quantile_bundle_round_trips_with_its_levels(
    tmp_path: Path, manifest: Manifest, model_file: Path, signing_key: Ed25519PrivateKey
) -> None:
    quantile = _quantile_manifest(manifest)
    bundle_dir = write_bundle(tmp_path / "bundle", quantile, {"model_int8.tflite": model_file}, signing_key)
    loaded = read_bundle(bundle_dir, signing_key.public_key()).manifest
    assert loaded == quantile
    assert loaded.output.quantiles == (0.1, 0.5, 0.9) and loaded.output.quantile_scales == ((1.3, 1.0, 1.1),)
    assert loaded.output.output_channels == 3
    assert json.loads((bundle_dir / MANIFEST_NAME).read_text())["format_version"] == QUANTILE_FORMAT_VERSION


def test_quantile_output_in_a_format_1_manifest_is_refused(manifest: Manifest) -> None:
    raw = json.loads(manifest.to_bytes())
    raw["output"].update(QUANTILE_OUTPUT)
    with pytest.raises(BundleFormatError, match="output with quantiles or bounds needs format_version 2"):
        parse_manifest(json.dumps(raw).encode())


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"quantiles": [0.1, 0.9]}, "must include 0.5"),
        ({"quantile_scales": [[1.0, 1.0]]}, "quantile_scales must be 1 rows"),
        ({"quantile_scales": [[-1.0, 1.0, 1.0]]}, "finite and non-negative"),
        ({"kind": "reconstruction"}, "quantiles are for forecast outputs"),
    ],
)
def test_inconsistent_quantile_outputs_are_refused(update: dict[str, object], message: str) -> None:
    raw = {"kind": "forecast", "horizon_steps": 4, "target_channels": ["p"], "target_units": ["kW"], **QUANTILE_OUTPUT}
    with pytest.raises(ValidationError, match=message):
        OutputSpec.model_validate({**raw, **update})


def _forecast(**quantiles: object) -> Forecast:
    origin = datetime(2026, 12, 2, tzinfo=UTC)
    fields = {"target": "p", "unit": "kW", "origin": origin, "step_s": 900, "values": [1.0, None, 1.2]}
    return Forecast.model_validate({**fields, **quantiles})


def test_forecast_quantiles_default_to_null_and_align_with_values() -> None:
    assert json.loads(_forecast().model_dump_json())["quantiles"] is None
    levels = [QuantileForecast(level=q, values=[v, None, v]) for q, v in ((0.1, 0.8), (0.5, 1.0), (0.9, 1.5))]
    forecast = _forecast(quantiles=levels)
    assert [q.level for q in forecast.quantiles or []] == [0.1, 0.5, 0.9]
    with pytest.raises(ValidationError, match=r"level\(s\) \[0.9\] do not have one value per step"):
        _forecast(quantiles=[*levels[:2], QuantileForecast(level=0.9, values=[1.0])])
    with pytest.raises(ValidationError, match="strictly increasing"):
        _forecast(quantiles=list(reversed(levels)))
    with pytest.raises(ValidationError, match="less than 1"):
        QuantileForecast(level=1.0, values=[])
    with pytest.raises(ValidationError, match=f"at most {MAX_QUANTILE_LEVELS} items"):
        _forecast(quantiles=[QuantileForecast(level=(i + 1) / 20, values=[1.0, None, 1.0]) for i in range(17)])
