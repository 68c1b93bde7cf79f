"""The decision step alone, on real exported bundles: sweeps in, forecasts and anomaly verdicts out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle import read_bundle
from edge_agent.config import AnomalySection, ChannelLink
from edge_agent.decisions import AnomalyJudge, Decision, DecisionStep
from edge_agent.features import FeaturePipeline, FeatureSpec
from edge_agent.health import AgentHealth
from edge_agent.keys import load_public_key
from edge_agent.model_manager import ModelManager
from edge_agent.reporting.base import MemoryReporter
from edge_agent.runtimes import load_model
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.supervisor import Prediction
from gridedge.datafiles import read_series

pytestmark = pytest.mark.slow
PERIOD = 900


def _meter_link(channel: str) -> ChannelLink:
    """The meter reports every model channel doubled, under its own name: the link halves it back."""
    return ChannelLink(source=f"meter.{channel}", scale=0.5)


def _step(tmp_path: Path, make_config: Any, exported: Any) -> tuple[DecisionStep, ModelManager, FeatureSpec]:
    """A decision step on the W1 Keras bundle, whose model channels come doubled from ``meter.*``."""
    models = ModelManager(make_config(tmp_path, exported.keras, exported.keys, 5020, "litert"))
    models.start()
    assert models.spec is not None
    judge = AnomalyJudge(MemoryReporter(), AnomalySection())
    return DecisionStep(models, AgentHealth(), judge, tmp_path / "window.npz", _meter_link), models, models.spec


def _feed(step: DecisionStep, spec: FeatureSpec, rows: range, blank: range = range(0)) -> list[Decision]:
    """Feed W1 ``rows`` to ``step`` as the meter reports them (doubled), with every channel missing at the
    positions in ``blank`` (counted from the first row); returns the decisions taken."""
    times, columns = read_series("w1_load_uci_15min")
    decisions = []
    for k, i in enumerate(rows):
        sweep = {f"meter.{c}": math.nan if k in blank else 2.0 * float(columns[c][i]) for c in spec.past_channel_names}
        decisions += step.add(float(times[i]), sweep)
    return decisions


def test_forecasts_equal_the_exported_model_on_the_same_window_and_survive_a_restart(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    step, models, spec = _step(tmp_path, make_config, exported)
    health = step.health
    times, columns = read_series("w1_load_uci_15min")
    values = np.stack([columns[c] for c in spec.past_channel_names], axis=1)
    start = 3000
    decisions = _feed(step, spec, range(start, start + spec.input_steps + 3))
    assert len(decisions) == 3 and health.inferences == 3 and not health.skipped_inferences
    assert all(d.prediction.source == "model" and d.verdict is None for d in decisions)

    last = start + spec.input_steps + 2  # the period of times[last] is still open
    window = slice(last - spec.input_steps, last)
    pipeline = FeaturePipeline(spec)
    _, model = load_model(models.supervisor.bundle, models.supervisor.artefact.file, LiteRTConfig())  # type: ignore[arg-type, union-attr]
    inputs = pipeline.build(values[window], times[window], None, times[last : last + spec.horizon_steps])
    bounds = models.supervisor.bundle.manifest.output.bounds  # type: ignore[union-attr]
    future_ts = times[last : last + spec.horizon_steps]
    expected = pipeline.decode(model.run(inputs.as_feeds())[0], future_ts, bounds)[:, 0]
    (forecast,) = step.latest_forecasts
    assert int(forecast.origin.timestamp()) == times[last] and forecast.step_s == PERIOD
    np.testing.assert_allclose(np.asarray(forecast.values, dtype=np.float64), expected, rtol=1e-5, atol=1e-5)

    restarted = DecisionStep(models, AgentHealth(), step.judge, tmp_path / "window.npz", _meter_link)
    again = restarted.decide_if_full()
    assert again is not None and restarted.latest_forecasts == step.latest_forecasts


def test_a_window_with_a_long_gap_is_decided_by_the_baseline_and_counted(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    step, models, spec = _step(tmp_path, make_config, exported)
    health = step.health
    gap = range(20, 20 + spec.gap_policy.max_gap_steps + 2)
    (decision,) = _feed(step, spec, range(1000, 1000 + spec.input_steps + 1), blank=gap)
    assert decision.prediction.source == "baseline" and "exceeds the fill limit" in (decision.skipped or "")
    assert health.skipped_inferences == 1 and health.last_skip_reason == decision.skipped
    assert all(v is not None and math.isfinite(v) for v in step.latest_forecasts[0].values)
    assert not models.supervisor.degraded


def test_anomaly_alerts_follow_the_hysteresis_raise_once_and_clear_once(exported: Any, anomaly_bundle: Path) -> None:
    manifest = read_bundle(anomaly_bundle, load_public_key(exported.keys / "bundle-signing.pub")).manifest
    steps = manifest.input.input_steps
    reporter = MemoryReporter()
    judge = AnomalyJudge(reporter, AnomalySection(raise_after=2, clear_after=3))
    rng = np.random.default_rng(7)
    normal = rng.normal(0.5, 0.05, size=(steps, 1)).astype(np.float32)
    spiked = normal.copy()
    spiked[-1] = 5.0
    baseline = Prediction(output=np.zeros((1, steps, 1), np.float32), source="baseline", latency_ms=None)

    verdicts = [judge.judge(manifest, baseline, normal[np.newaxis], w) for w in [spiked, normal, spiked, spiked]]
    assert [v.over for v in verdicts] == [True, False, True, True]
    assert all(v.detector == "baseline" and v.score is None for v in verdicts)
    assert judge.active
    verdicts = [
        judge.judge(manifest, baseline, normal[np.newaxis], w) for w in [spiked, normal, normal, normal, normal]
    ]
    assert not judge.active
    codes = [a.code for a in reporter.of_kind("alert")]  # type: ignore[attr-defined]
    assert codes == ["anomaly", "anomaly-cleared"]
    raised = reporter.of_kind("alert")[0]
    assert raised.channel == manifest.input.target_channels[0] and "baseline detector" in raised.message  # type: ignore[attr-defined]
