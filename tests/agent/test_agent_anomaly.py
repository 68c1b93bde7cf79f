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
from edge_agent.datafiles import read_series
from edge_agent.features import FeaturePipeline
from edge_agent.keys import load_public_key
from edge_agent.reporting.base import MemoryReporter
from edge_agent.runtimes import load_model
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.sensors.replay import ReplayConfig, ReplaySource

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PERIOD = 900


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_agent_scores_windows_like_the_exported_model_and_alerts_on_real_outliers(
    tmp_path: Path, exported: Any, anomaly_bundle: Path
) -> None:
    keys = exported.keys
    bundle = read_bundle(anomaly_bundle, load_public_key(keys / "bundle-signing.pub"))
    spec = bundle.manifest.input
    threshold = bundle.manifest.output.anomaly.threshold  # type: ignore[union-attr]
    times, columns = read_series("w3_inv7539_outliers")
    replay = ReplayConfig.model_validate(
        {
            "type": "replay",
            "name": "inv",
            "path": str(REPO / "data" / "w3_inv7539_outliers.csv"),
            "channels": [{"name": "ac_power_pu", "column": "value_normalized", "unit": "1"}],
            "speed": 1.0,
        }
    )
    clock = StepClock()
    source = ReplaySource(replay, clock=clock)
    config = AgentConfig.model_validate(
        {
            "site": "inverter-site",
            "device": "inv-7539",
            "state_dir": str(tmp_path / "state"),
            "bundle": {"path": str(anomaly_bundle), "public_key": str(keys / "bundle-signing.pub")},
            "runtime": {"type": "litert"},
            "sensors": [replay.model_dump(mode="json")],
            "channels": {"ac_power_pu": "inv.ac_power_pu"},
            "clock": {"source": "reading"},
            "anomaly": {"raise_after": 1, "clear_after": 1},
        }
    )
    reporter = MemoryReporter()
    agent = Agent(config, reporter, sources=[source])
    agent.start()
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
