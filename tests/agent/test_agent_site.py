"""The agent against the simulated site over real Modbus TCP, with real exported bundles."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.bundle import read_bundle
from edge_agent.features import FeaturePipeline
from edge_agent.keys import load_public_key
from edge_agent.outbox import Outbox
from edge_agent.reporting.base import MemoryReporter
from edge_agent.runtimes import load_model
from edge_agent.state_files import take_quarantined
from gridedge.datafiles import read_series
from gridedge.sim.site import SimulatedSite, SiteServer

pytestmark = [pytest.mark.modbus, pytest.mark.slow]
PERIOD = 900


def _run_cycles(agent: Agent, clock: Any, cycles: int) -> list[tuple[int, np.ndarray]]:
    """One agent cycle per sample period; returns (forecast origin, forecast) for each decision."""
    forecasts = []
    for _ in range(cycles):
        predictions = agent.cycle()
        if predictions and agent.latest_forecasts:
            origin = int(agent.latest_forecasts[0].origin.timestamp())
            forecasts.append((origin, np.array(agent.latest_forecasts[0].values, dtype=np.float64)))
        clock.now += PERIOD
    return forecasts


def _warmed_up(config: Any, clock: Any, decisions: int) -> tuple[Agent, MemoryReporter, list[tuple[int, np.ndarray]]]:
    """A started agent on a fresh MemoryReporter, run until its window is full and then for ``decisions``
    more periods; returns it, its reporter and the forecasts of those cycles."""
    reporter = MemoryReporter()
    agent = Agent(config, reporter)
    agent.start()
    steps = agent.supervisor.pipeline.spec.input_steps  # type: ignore[union-attr]
    return agent, reporter, _run_cycles(agent, clock, steps + decisions)


def _reference(bundle_dir: Path, keys: Path, runtime: str, artefact: str, origins: list[int]) -> np.ndarray:
    """The same artefact, run outside the agent on the exact data windows of each origin."""
    bundle = read_bundle(bundle_dir, load_public_key(keys / "bundle-signing.pub"))
    spec = bundle.manifest.input
    times, columns = read_series("w1_load_uci_15min")
    values = np.stack([columns[c] for c in spec.past_channel_names], axis=1)
    index = {int(t): i for i, t in enumerate(times)}
    pipeline = FeaturePipeline(spec)
    from edge_agent.runtimes.litert import LiteRTConfig
    from edge_agent.runtimes.ort import OnnxRuntimeConfig

    config = LiteRTConfig() if runtime == "litert" else OnnxRuntimeConfig()
    _, model = load_model(bundle, artefact, config)
    out = []
    for origin in origins:
        i = index[origin]
        window = values[i - spec.input_steps : i]
        future_ts = times[i : i + spec.horizon_steps]
        inputs = pipeline.build(window, times[i - spec.input_steps : i], None, future_ts)
        out.append(pipeline.decode(model.run(inputs.as_feeds())[0], future_ts, bundle.manifest.output.bounds)[:, 0])
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
@pytest.mark.parametrize("runtime", ["litert", "onnxruntime"])
def test_agent_forecasts_match_the_exported_model_on_the_same_windows(
    tmp_path: Path,
    make_config: Any,
    exported: Any,
    site: tuple[SimulatedSite, Any],
    site_server: SiteServer,
    runtime: str,
    precision: str,
) -> None:
    bundle = exported.for_runtime(runtime)
    manifest = read_bundle(bundle, load_public_key(exported.keys / "bundle-signing.pub")).manifest
    artefact = next(a.file for a in manifest.artefacts if a.precision == precision)
    config = make_config(tmp_path, bundle, exported.keys, site_server.port, runtime)
    config = config.model_copy(update={"bundle": config.bundle.model_copy(update={"artefact": artefact})})
    agent, reporter, forecasts = _warmed_up(config, site[1], 12)
    agent.close()

    assert agent.supervisor.artefact is not None and agent.supervisor.artefact.precision == precision
    assert not agent.supervisor.degraded, agent.supervisor.degraded_reason
    assert len(forecasts) == 12
    origins = [o for o, _ in forecasts]
    assert np.all(np.diff(origins) == PERIOD)
    expected = _reference(bundle, exported.keys, runtime, artefact, origins)
    got = np.stack([f for _, f in forecasts])
    # Only the meter's register resolution (0.1 W, 0.01 V, 1 mA, 0.01 Wh/min) separates the two inputs. A float model
    # passes that through almost unchanged; an int8 model may round an output to the neighbouring
    # quantisation level (~0.017 kW here), rarely two.
    difference = np.abs(got - expected)
    if precision == "fp32":
        assert np.max(difference) < 0.005
    else:
        assert np.max(difference) < 0.1
        assert np.mean(difference) < 0.03
    statuses = [m.state for m in reporter.of_kind("status")]
    assert statuses[0] == "online" and statuses[-1] == "stopped"
    summary = reporter.of_kind("summary")[-1]
    assert summary.forecasts and summary.latency and summary.latency.count == 12
    assert summary.drift["Global_active_power"].z_mean is not None
    assert summary.channels["meter.active_power"].unit == "W"


def test_meter_faults_never_stop_the_loop(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    sim, clock = site
    config = make_config(tmp_path, exported.keras, exported.keys, site_server.port, "litert")
    agent, reporter, forecasts = _warmed_up(config, clock, 2)
    assert len(forecasts) == 2

    sim.set_fault("meter", "hang")  # a short outage: the gap policy fills it, decisions continue
    _run_cycles(agent, clock, 2)
    sim.set_fault("meter", "none")
    assert len(_run_cycles(agent, clock, 3)) == 3
    assert agent.health.sensor_errors >= 2

    sim.set_fault("meter", "garbage")  # nonsense values are flagged and kept away from the model
    _run_cycles(agent, clock, 2)
    assert any(a.code == "sensor-out-of-range" for a in reporter.of_kind("alert"))
    sim.set_fault("meter", "none")

    site_server.drop_connections()  # a gateway reboot: the next read reconnects
    assert len(_run_cycles(agent, clock, 3)) == 3

    sim.set_fault("meter", "hang")  # a long outage: the model is skipped with a reason, the baseline decides
    _run_cycles(agent, clock, 8)
    sim.set_fault("meter", "none")
    after_outage = _run_cycles(agent, clock, 3)
    assert len(after_outage) == 3 and all(np.isfinite(f).all() for _, f in after_outage)
    assert agent.health.skipped_inferences >= 2
    assert "exceeds the fill limit" in (agent.health.last_skip_reason or "")
    assert agent.latest_prediction is not None and agent.latest_prediction.source == "baseline"
    assert not agent.supervisor.degraded  # the model is healthy; only its input was incomplete
    agent.close()
    last = reporter.of_kind("summary")[-1]
    assert last.skipped_inferences >= 2
    assert last.health is not None and last.health.sensor_errors >= 2 and last.health.cycles == agent.health.cycles


def test_corrupted_model_runs_the_baseline_degraded_and_keeps_deciding(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(exported.keras, damaged)
    model = next(damaged.glob("*int8*.tflite"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    config = make_config(tmp_path, damaged, exported.keys, site_server.port, "litert")
    agent, reporter, forecasts = _warmed_up(config, site[1], 3)
    agent.close()

    assert agent.supervisor.degraded and "does not match the manifest" in (agent.supervisor.degraded_reason or "")
    assert len(forecasts) == 3 and all(np.isfinite(f).all() for _, f in forecasts)
    status = reporter.of_kind("status")[0]
    assert status.state == "degraded" and status.model is not None and status.model.runtime == "baseline"
    assert [a.code for a in reporter.of_kind("alert")].count("model-fallback") == 1
    assert reporter.of_kind("summary")[-1].fallback_active


def test_a_model_failing_at_run_time_falls_back_then_recovers(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    config = make_config(tmp_path, exported.keras, exported.keys, site_server.port, "litert")
    agent, reporter, _ = _warmed_up(config, site[1], 1)
    healthy = agent.supervisor.runtime
    assert healthy is not None

    class Broken:
        """The real runtime, fed inputs it was not built for (a model/spec mismatch after a bad update)."""

        info = healthy.info

        def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
            return healthy.run({k: v[:, :-1] for k, v in feeds.items()})

    agent.supervisor.runtime = Broken()
    assert len(_run_cycles(agent, site[1], 3)) == 3
    assert agent.supervisor.degraded and "model raised" in (agent.supervisor.degraded_reason or "")
    agent.supervisor.runtime = healthy
    _run_cycles(agent, site[1], 6)
    agent.close()
    assert not agent.supervisor.degraded
    assert [m.state for m in reporter.of_kind("status")][:3] == ["online", "degraded", "online"]
    assert {"model-fallback", "model-recovered"} <= {a.code for a in reporter.of_kind("alert")}


def test_agent_run_never_imports_a_training_framework(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any]
) -> None:
    """`gridedge agent run` in a fresh process: after real cycles, no tensorflow/keras/torch was loaded."""
    with SiteServer(SimulatedSite(speed=3600.0), port=0).start_in_thread() as server:
        for runtime, bundle in (("litert", exported.keras), ("onnxruntime", exported.torch)):
            config = make_config(
                tmp_path / runtime,
                bundle,
                exported.keys,
                server.port,
                runtime,
                loop={"cadence_s": 0.05, "max_cycles": 40},
            )
            path = tmp_path / f"{runtime}.yaml"
            path.write_text(config.model_dump_json())
            script = (
                "import sys; from edge_agent.runner import build_agent\n"
                f"agent = build_agent({str(path)!r}); agent.start(); agent.run()\n"
                "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow','keras','torch'))\n"
                "print('HEAVY', heavy, 'CYCLES', agent.health.cycles)\n"
            )
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr[-2000:]
            assert "HEAVY [] CYCLES 40" in out.stdout, out.stdout + out.stderr[-2000:]


def test_restart_after_a_power_cut_decides_at_once_from_the_saved_window(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    config = make_config(tmp_path, exported.keras, exported.keys, site_server.port, "litert")
    first, _, _ = _warmed_up(config, site[1], 1)
    for source in first.sources:  # no clean shutdown: the process just dies
        source.close()

    second = Agent(config, MemoryReporter())
    second.start()
    assert second.latest_forecasts, "no decision right after the restart"
    assert second.health.first_inference_s is not None and second.health.first_inference_s < 2.0
    assert second.latest_forecasts[0].origin == first.latest_forecasts[0].origin
    np.testing.assert_allclose(second.latest_forecasts[0].values, first.latest_forecasts[0].values)
    # The period open when the power went is lost; the gap policy fills it and decisions go on.
    assert len(_run_cycles(second, site[1], 3)) == 2
    second.close()


def _agent_on_the_meter_clock(
    tmp_path: Path, make_config: Any, exported: Any, port: int, reporter: MemoryReporter, **overrides: Any
) -> Agent:
    config = make_config(tmp_path, exported.keras, exported.keys, port, "litert", **overrides)
    agent = Agent(config, reporter)
    agent.start()
    return agent


def test_a_garbage_first_site_clock_reading_does_not_stop_the_decisions(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    """Issue 12 item 6: the meter's first clock answer is 2038; the agent re-acquires the real site time."""
    sim, clock = site
    meter_clock = {"source": "sensor", "channel": "meter.clock", "confirm_readings": 3}
    agent = _agent_on_the_meter_clock(
        tmp_path, make_config, exported, site_server.port, MemoryReporter(), clock=meter_clock
    )
    steps = agent.supervisor.pipeline.spec.input_steps  # type: ignore[union-attr]
    sim.set_fault("meter", "bad-clock")
    _run_cycles(agent, clock, 1)
    sim.set_fault("meter", "none")
    decided = _run_cycles(agent, clock, steps + 4)
    assert agent.site_clock.rejected == 2
    assert len(decided) >= 2, "the real site time was never re-acquired"
    assert all(origin < 2_000_000_000 for origin, _ in decided)
    agent.close()


def test_a_site_without_sample_periods_is_alerted_once(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    """Issue 12 item 6: a meter whose clock stays garbage closes no period; the agent says so once."""
    sim, clock = site
    reporter = MemoryReporter()
    agent = _agent_on_the_meter_clock(
        tmp_path,
        make_config,
        exported,
        site_server.port,
        reporter,
        clock={"source": "sensor", "channel": "meter.clock", "max_jump_s": 600},
        loop={"cadence_s": 0.01, "retry_every": 2, "recover_after": 2, "stall_after_s": 0.2},
    )
    _run_cycles(agent, clock, 1)  # anchors on the real time
    sim.set_fault("meter", "bad-clock")  # from now on each reading jumps to 2038 and is refused
    for _ in range(30):
        agent.cycle()
        time.sleep(0.01)
    stalled = [a for a in reporter.of_kind("alert") if a.code == "decisions-stalled"]  # type: ignore[attr-defined]
    assert len(stalled) == 1
    status = reporter.of_kind("status")[-1]
    assert status.state == "degraded" and "decisions: no sample period" in (status.reason or "")  # type: ignore[attr-defined]
    agent.close()


def test_damaged_state_files_at_start_are_quarantined_and_alerted_once(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    """Issue 12 item 7: a 0-byte window.npz stopped the agent with only "Aborted."; a cut outbox looped."""
    config = make_config(tmp_path, exported.keras, exported.keys, site_server.port, "litert")
    take_quarantined()
    config.state_dir.mkdir(parents=True)
    (config.state_dir / "window.npz").write_bytes(b"")
    outbox_path = config.state_dir / "outbox.sqlite3"
    outbox_path.write_bytes(b"SQLite format 3\x00" + bytes(100))
    Outbox(outbox_path, 100_000).close()  # what the MQTT reporter opens before the agent starts
    reporter = MemoryReporter()
    agent = Agent(config, reporter)
    agent.start()
    _run_cycles(agent, site[1], 2)
    alerts = [a for a in reporter.of_kind("alert") if a.code == "state-file-quarantined"]  # type: ignore[attr-defined]
    assert sorted(Path(a.message.split(" was damaged")[0]).name for a in alerts) == ["outbox.sqlite3", "window.npz"]
    kept = sorted(p.name.split(".corrupt-")[0] for p in config.state_dir.iterdir() if ".corrupt-" in p.name)
    assert kept == ["outbox.sqlite3", "window.npz"]
    agent.close()


def test_model_step_telemetry_sends_each_closed_period_of_the_model_inputs(
    tmp_path: Path, make_config: Any, exported: Any, site: tuple[SimulatedSite, Any], site_server: SiteServer
) -> None:
    mqtt = {"site": "test-site", "device": "ctrl-1", "telemetry": {"enabled": True, "model_step": True}}
    config = make_config(tmp_path, exported.keras, exported.keys, site_server.port, "litert", mqtt=mqtt)
    agent, reporter, _ = _warmed_up(config, site[1], 2)
    spec = agent.supervisor.pipeline.spec  # type: ignore[union-attr]
    steps = [m for m in reporter.of_kind("telemetry")]
    # One message per closed period (not per sweep), in the model's channel names, on the period grid.
    assert len(steps) == agent.decisions.periods_closed > spec.input_steps
    assert all(m.step_s == PERIOD and int(m.sample_ts.timestamp()) % PERIOD == 0 for m in steps)
    assert all(list(m.values) == list(spec.past_channel_names) for m in steps)
    raw, starts = agent.buffer.window()  # type: ignore[union-attr]
    newest = steps[-1]
    assert int(newest.sample_ts.timestamp()) == int(starts[-1])
    assert [newest.values[name] for name in spec.past_channel_names] == pytest.approx(raw[-1].tolist(), rel=1e-6)
    agent.close()
