"""Quantile forecasts on the device: a tiny P10/P50/P90 W1 model from each framework, exported and run in
LiteRT and ONNX Runtime; the summary carries the levels the artefact computed, the baseline carries none."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from edge_agent.config import AnomalySection, ChannelLink
from edge_agent.decisions import AnomalyJudge, DecisionStep
from edge_agent.features import FeaturePipeline
from edge_agent.health import AgentHealth
from edge_agent.keys import load_private_key, new_keypair
from edge_agent.model_manager import ModelManager
from edge_agent.quantiles import decode_forecast
from edge_agent.reporting.base import MemoryReporter
from edge_agent.runtimes import load_model
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.runtimes.ort import OnnxRuntimeConfig
from edge_agent.summary import PeriodicReports
from gridedge.datafiles import read_series

from .conftest import REPO, tiny_w1_config

pytestmark = pytest.mark.slow
LEVELS = [0.1, 0.5, 0.9]
RUNTIMES = {"litert": ("keras", LiteRTConfig()), "onnxruntime": ("torch", OnnxRuntimeConfig())}
SUMMARY_SCHEMA = json.loads((REPO / "docs" / "mqtt" / "schemas" / "summary.schema.json").read_text())


@pytest.fixture(scope="module")
def quantile_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The agent tests' tiny W1 config with quantiles, trained and exported once per framework."""
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.config import parse_config
    from gridedge.trainer.training import train

    root = tmp_path_factory.mktemp("quantile-chain")
    private, _ = new_keypair(root / "keys")
    raw = tiny_w1_config()
    raw["model"]["quantiles"] = LEVELS
    task = parse_config(raw)
    bundles: dict[str, Any] = {"keys": root / "keys"}
    for runtime, (framework, _) in RUNTIMES.items():
        run = root / f"run-{framework}"
        train(task, framework, run, plots=False)  # type: ignore[arg-type]
        target = "litert" if runtime == "litert" else "ort"
        options = ExportOptions(name=f"w1q-{framework}", targets=(target,), max_degradation=0.5, latency_runs=20)
        bundles[runtime] = export_bundle(load_source(run), root / runtime, load_private_key(private), options)
    return bundles


def _meter_link(channel: str) -> ChannelLink:
    return ChannelLink(source=f"meter.{channel}")


def _step(tmp_path: Path, make_config: Any, bundles: dict[str, Any], runtime: str) -> tuple[DecisionStep, ModelManager]:
    bundle = bundles[runtime].bundle_dir
    models = ModelManager(make_config(tmp_path, bundle, bundles["keys"], 5020, runtime))
    models.start()
    judge = AnomalyJudge(MemoryReporter(), AnomalySection())
    return DecisionStep(models, AgentHealth(), judge, tmp_path / "window.npz", _meter_link), models


def _feed(step: DecisionStep, rows: range, blank: range = range(0)) -> list[Any]:
    assert step.models.spec is not None
    times, columns = read_series("w1_load_uci_15min")
    decisions = []
    for k, i in enumerate(rows):
        channels = step.models.spec.past_channel_names
        sweep = {f"meter.{c}": math.nan if k in blank else float(columns[c][i]) for c in channels}
        decisions += step.add(float(times[i]), sweep)
    return decisions


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_summary_carries_the_quantiles_the_artefact_computed(
    tmp_path: Path, make_config: Any, quantile_bundles: dict[str, Any], runtime: str
) -> None:
    step, models = _step(tmp_path, make_config, quantile_bundles, runtime)
    spec = models.spec
    assert spec is not None
    start = 3000
    decisions = _feed(step, range(start, start + spec.input_steps + 2))
    assert [d.prediction.source for d in decisions] == ["model", "model"]
    (forecast,) = step.latest_forecasts
    assert forecast.quantiles is not None and [q.level for q in forecast.quantiles] == LEVELS
    bands = np.array([q.values for q in forecast.quantiles], dtype=np.float64)
    assert bands.shape == (3, 96) and (np.diff(bands, axis=0) >= 0).all()
    assert forecast.quantiles[1].values == forecast.values
    assert (bands[2] - bands[0]).mean() > 0

    # The same window through the artefact in this runtime, decoded by the bundle's output contract.
    times, columns = read_series("w1_load_uci_15min")
    values = np.stack([columns[c] for c in spec.past_channel_names], axis=1)
    last = start + spec.input_steps + 1
    window = slice(last - spec.input_steps, last)
    pipeline = FeaturePipeline(spec)
    supervisor = models.supervisor
    assert supervisor.bundle is not None and supervisor.artefact is not None
    _, model = load_model(supervisor.bundle, supervisor.artefact.file, RUNTIMES[runtime][1])
    inputs = pipeline.build(values[window], times[window], None, times[last : last + spec.horizon_steps])
    future_ts = times[last : last + spec.horizon_steps]
    output = supervisor.bundle.manifest.output
    expected = decode_forecast(model.run(inputs.as_feeds())[0], output, pipeline, future_ts)
    assert expected.quantiles is not None
    np.testing.assert_allclose(bands, expected.quantiles[:, :, 0], rtol=1e-5, atol=1e-5)

    reporter = MemoryReporter("test-site", "ctrl-1")
    PeriodicReports(reporter, models, step.health).publish(step.latest_forecasts)
    payload = reporter.messages[-1].model_dump_json()
    jsonschema.validate(json.loads(payload), SUMMARY_SCHEMA)
    # Three levels of 96 steps next to the median: still a few kilobytes, far below the 256 KiB cap.
    assert len(payload) < 20_000


def test_the_baseline_standing_in_sends_no_quantiles(
    tmp_path: Path, make_config: Any, quantile_bundles: dict[str, Any]
) -> None:
    step, models = _step(tmp_path, make_config, quantile_bundles, "litert")
    assert models.spec is not None
    gap = range(20, 20 + models.spec.gap_policy.max_gap_steps + 2)
    (decision,) = _feed(step, range(1000, 1000 + models.spec.input_steps + 1), blank=gap)
    assert decision.prediction.source == "baseline"
    (forecast,) = step.latest_forecasts
    assert forecast.quantiles is None and all(v is not None for v in forecast.values)
