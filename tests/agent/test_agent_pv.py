"""A PV forecaster on the device: measured channels over Modbus, clear-sky derived from time and place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.bundle import Artefact, read_bundle
from edge_agent.config import AgentConfig
from edge_agent.features import FeaturePipeline, derive_channels
from edge_agent.keys import load_public_key
from edge_agent.reporting.base import MemoryReporter
from edge_agent.runtimes import load_model
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.solar import sun_down
from gridedge.datafiles import read_series
from gridedge.sim.site import SimulatedSite, SiteServer
from gridedge.sites import site_values

pytestmark = [pytest.mark.modbus, pytest.mark.slow]
PERIOD = 900
# One register step of each channel the simulated inverter serves (inverter_sunspec.yaml).
REGISTER_RESOLUTION = {"ac_power": 1.0, "ghi": 1.0, "temp_air": 0.1}


def test_pv_forecasts_on_the_device_match_the_exported_model(
    tmp_path: Path, exported: Any, pv_bundle: Path, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    keys = exported.keys
    raw = site_values("simulated-household", site_server.port, devices=("inverter",))
    config = AgentConfig.model_validate(
        {
            **raw,
            "state_dir": str(tmp_path / "state"),
            "bundle": {"path": str(pv_bundle), "public_key": str(keys / "bundle-signing.pub")},
            "runtime": {"type": "litert"},
            "channels": {"ac_power": "inverter.ac_power", "ghi": "inverter.ghi", "temp_air": "inverter.temp_air"},
            "clock": {"source": "sensor", "channel": "inverter.clock"},
        }
    )
    agent = Agent(config, MemoryReporter())
    agent.start()
    spec = agent.supervisor.pipeline.spec  # type: ignore[union-attr]
    clock = site[1]
    forecasts = []
    windows = []
    for _ in range(spec.window_steps + 8):
        if agent.cycle() and agent.latest_forecasts:
            forecast = agent.latest_forecasts[0]
            forecasts.append((int(forecast.origin.timestamp()), np.array(forecast.values, dtype=np.float64)))
            windows.append(agent.buffer.window())
        clock.now += PERIOD
    agent.close()
    assert not agent.supervisor.degraded, agent.supervisor.degraded_reason
    assert len(forecasts) == 8

    bundle = read_bundle(pv_bundle, load_public_key(keys / "bundle-signing.pub"))
    _, model = load_model(bundle, agent.supervisor.artefact.file, LiteRTConfig())  # type: ignore[union-attr]
    times, columns = read_series("w2_pv_system50_15min")
    index = {int(t): i for i, t in enumerate(times)}
    pipeline = FeaturePipeline(spec)
    output_step = _output_step_in_units(agent.supervisor.artefact, pipeline)  # type: ignore[arg-type]
    measured = [c for c in spec.past_channel_names if c not in spec.derived_past_channels]
    for (origin, got), (device_raw, device_ts) in zip(forecasts, windows, strict=True):
        i = index[origin]
        past_ts = times[i - spec.window_steps : i]
        future_ts = times[i : i + spec.horizon_steps]
        assert np.array_equal(device_ts, past_ts)
        # What the device saw is the measured data at the registers' resolution ...
        for name in measured:
            served = columns[name][i - spec.window_steps : i]
            seen = device_raw[:, spec.past_channel_names.index(name)]
            assert np.max(np.abs(seen - served)) <= REGISTER_RESOLUTION[name] + 1e-4, name
        # ... and what it forecast from that window is what the exported model computes from it. One input
        # level more or less can move an int8 output by several levels, so the reference takes the device's
        # own window; CPUs with and without VNNI may still round one output level apart, so the tolerance
        # counts the artefact's own output steps, never watts tuned on one CPU.
        past = device_raw.copy()
        past[:, spec.past_channel_names.index("clear_sky_ghi")] = derive_channels(
            ["clear_sky_ghi"], past_ts, spec.location
        )[:, 0]
        future = derive_channels(spec.future_channel_names, future_ts, spec.location)
        inputs = pipeline.build(past, past_ts, future, future_ts)
        expected = pipeline.decode(model.run(inputs.as_feeds())[0], future_ts, bundle.manifest.output.bounds)[:, 0]
        differences_in_steps = np.abs(got - expected) / output_step
        assert differences_in_steps.max() <= 1.0 + 1e-6, f"{differences_in_steps.max():.2f} of {output_step:.1f} W"
        # Physical limits on the device: never below zero or above the rating, zero while the sun is down.
        dark = sun_down(future_ts, PERIOD, spec.location.latitude, spec.location.longitude)  # type: ignore[union-attr]
        assert dark.any() and np.all(got[dark] == 0)
        assert got.min() >= 0 and got.max() <= bundle.manifest.output.bounds[0].max_value  # type: ignore[operator]


def _output_step_in_units(artefact: Artefact, pipeline: FeaturePipeline) -> float:
    """One quantisation level of the artefact's int8 output, in the target's physical unit."""
    assert "output" in artefact.quantisation, f"{artefact.file} records no output quantisation"
    target_std = float(pipeline.stats.std[pipeline.stats.channels.index(pipeline.spec.target_channels[0])])
    return artefact.quantisation["output"].scale * target_std
