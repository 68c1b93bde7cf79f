"""The agent as a fault detector: the W3 autoencoder replaying a labelled inverter series with real outliers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.anomaly import reconstruction_scores
from edge_agent.bundle import read_bundle
from edge_agent.config import AgentConfig
from edge_agent.features import FeaturePipeline
from edge_agent.keys import load_public_key
from edge_agent.reporting.base import MemoryReporter
from edge_agent.runtimes import load_model
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.sensors.replay import ReplayConfig, ReplaySource
from gridedge.datafiles import read_series

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PERIOD = 900


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _replaying_agent(
    series: str, bundle: Path, keys: Path, state: Path, clock: StepClock, raise_after: int, clear_after: int
) -> tuple[Agent, MemoryReporter]:
    """An agent running ``bundle`` on a labelled inverter series replayed on the simulated ``clock``."""
    replay = ReplayConfig.model_validate(
        {
            "type": "replay",
            "name": "inv",
            "path": str(REPO / "data" / f"{series}.csv"),
            "channels": [{"name": "ac_power_pu", "column": "value_normalized", "unit": "1"}],
            "speed": 1.0,
        }
    )
    config = AgentConfig.model_validate(
        {
            "site": "inverter-site",
            "device": series.replace("_", "-"),
            "state_dir": str(state),
            "bundle": {"path": str(bundle), "public_key": str(keys / "bundle-signing.pub")},
            "runtime": {"type": "litert"},
            "sensors": [replay.model_dump(mode="json")],
            "channels": {"ac_power_pu": "inv.ac_power_pu"},
            "clock": {"source": "reading"},
            "anomaly": {"raise_after": raise_after, "clear_after": clear_after},
        }
    )
    reporter = MemoryReporter()
    agent = Agent(config, reporter, sources=[ReplaySource(replay, clock=clock)])
    agent.start()
    return agent, reporter


def test_agent_scores_windows_like_the_exported_model_and_alerts_on_real_outliers(
    tmp_path: Path, exported: Any, anomaly_bundle: Path
) -> None:
    keys = exported.keys
    bundle = read_bundle(anomaly_bundle, load_public_key(keys / "bundle-signing.pub"))
    spec = bundle.manifest.input
    threshold = bundle.manifest.output.anomaly.threshold  # type: ignore[union-attr]
    times, columns = read_series("w3_inv7539_outliers")
    clock = StepClock()
    agent, reporter = _replaying_agent("w3_inv7539_outliers", anomaly_bundle, keys, tmp_path / "state", clock, 1, 1)
    scored: dict[int, float] = {}
    for _ in range(len(times) * 3):  # enough simulated time for the series, nights included
        agent.cycle()
        if agent.latest_anomaly and agent.latest_anomaly.score is not None and agent.buffer.newest_start:
            scored[int(agent.buffer.newest_start)] = agent.latest_anomaly.score
        clock.now += PERIOD
        if clock.now > times[-1] - times[0] + PERIOD:
            break
    agent.close()

    # Reference: the same artefact outside the agent, on every window of 16 contiguous samples in the file.
    _, model = load_model(bundle, None, LiteRTConfig())
    pipeline = FeaturePipeline(spec)
    values = columns["value_normalized"][:, None]
    compared = 0
    for end in range(spec.input_steps, len(times) + 1):
        window_times = times[end - spec.input_steps : end]
        if np.any(np.diff(window_times) != PERIOD) or int(window_times[-1]) not in scored:
            continue
        inputs = pipeline.build(values[end - spec.input_steps : end], window_times)
        expected = reconstruction_scores(
            inputs.past,
            model.run(inputs.as_feeds()),
            bundle.manifest.output.anomaly.score_steps,  # type: ignore[union-attr]
        )[0]
        assert scored[int(window_times[-1])] == pytest.approx(float(expected), abs=1e-5)
        compared += 1
    assert compared > 100

    labelled = {int(t) for t, o in zip(times, columns["outlier"], strict=True) if o > 0.5}
    flagged = {t for t, s in scored.items() if s > threshold}
    assert flagged & labelled, "no labelled outlier was flagged"
    alerts = [a for a in reporter.of_kind("alert") if a.code == "anomaly"]
    assert alerts and all(a.threshold == pytest.approx(threshold) for a in alerts)
    summary = reporter.of_kind("summary")[-1]
    assert summary.anomaly is not None and summary.anomaly.windows == len(scored)


def test_bundle_detector_flags_a_frozen_inverter_the_autoencoder_reconstructs(
    tmp_path: Path, exported: Any, anomaly_bundle: Path
) -> None:
    """The W3 bundle's detector includes the stale rule: labelled frozen runs raise alerts on the device."""
    keys = exported.keys
    bundle = read_bundle(anomaly_bundle, load_public_key(keys / "bundle-signing.pub"))
    assert bundle.manifest.output.anomaly is not None
    assert bundle.manifest.output.anomaly.stale_run_steps == 4
    times, columns = read_series("w3_inv2173_stale")
    clock = StepClock()
    agent, reporter = _replaying_agent("w3_inv2173_stale", anomaly_bundle, keys, tmp_path / "state", clock, 2, 2)
    stale_verdicts: set[int] = set()
    first_runs_end = int(times[900])  # the first two labelled frozen runs (samples 460-519 and 755-854)
    while clock.now <= first_runs_end - times[0]:
        agent.cycle()
        verdict = agent.latest_anomaly
        if verdict is not None and verdict.detector == "stale-rule" and agent.buffer.newest_start:
            stale_verdicts.add(int(agent.buffer.newest_start))
        clock.now += PERIOD
    agent.close()

    labelled = {int(t) for t, s in zip(times, columns["stale_data_mask"], strict=True) if s > 0.5}
    assert len(stale_verdicts & labelled) > 100, "the frozen runs were not flagged"
    assert stale_verdicts <= labelled, "the stale rule flagged a sample outside the labelled runs"
    alerts = [a for a in reporter.of_kind("alert") if a.code == "anomaly"]
    assert any("stale-rule detector" in a.message for a in alerts)
    assert any(a.code == "anomaly-cleared" for a in reporter.of_kind("alert"))
