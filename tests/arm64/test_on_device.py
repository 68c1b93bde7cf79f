"""What must hold on the device's architecture, run inside the emulated arm64 userland (Cortex-A72).

tests/agent/test_arm64_emulated.py prepares the case on x86 (bundles exported there, their outputs on x86,
a provisioned Pi 4 folder with its aarch64 wheelhouse, a Mosquitto and the simulated site on the host's
loopback) and runs this module inside the userland with `-m arm64`; the case folder is GRIDEDGE_ARM64_CASE.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CASE = Path(os.environ.get("GRIDEDGE_ARM64_CASE", "/nonexistent"))
pytestmark = [
    pytest.mark.arm64,
    pytest.mark.skipif(
        platform.machine() != "aarch64" or not (CASE / "case.json").is_file(),
        reason="runs inside the emulated arm64 userland, started by tests/agent/test_arm64_emulated.py",
    ),
]
TFLITE_214_PYTHON = "/opt/tflite214/bin/python"


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    return dict(json.loads((CASE / "case.json").read_text()))


def _runtime_config(runtime: str) -> Any:
    from edge_agent.runtimes.litert import LiteRTConfig
    from edge_agent.runtimes.ort import OnnxRuntimeConfig

    return LiteRTConfig() if runtime == "litert" else OnnxRuntimeConfig()


def _bundle(case: dict[str, Any], name: str) -> Any:
    from edge_agent.bundle import read_bundle
    from edge_agent.keys import load_public_key

    return read_bundle(CASE / case["bundles"][name], load_public_key(CASE / case["public_key"]))


@pytest.mark.parametrize("runtime", ["litert", "onnxruntime"])
def test_every_artefact_verifies_self_tests_and_matches_x86_within_its_own_tolerance(
    case: dict[str, Any], runtime: str
) -> None:
    from edge_agent.runtimes import load_model
    from edge_agent.runtimes.selftest import run_self_test

    bundle = _bundle(case, runtime)
    precisions = set()
    kind = "tflite" if runtime == "litert" else "onnx"
    for artefact in (a for a in bundle.manifest.artefacts if a.runtime == kind):
        loaded, model = load_model(bundle, artefact.file, _runtime_config(runtime))
        assert loaded.file == artefact.file
        run_self_test(model, bundle.manifest, artefact)  # against the outputs recorded at export, on x86
        x86 = case["x86_outputs"][f"{runtime}/{artefact.file}"]
        for vector, expected in zip(bundle.manifest.test_vectors, x86, strict=True):
            feeds = {name: np.asarray(value, dtype=np.float32) for name, value in vector.inputs.items()}
            error = float(np.max(np.abs(model.run(feeds) - np.asarray(expected, dtype=np.float32))))
            assert error <= artefact.self_test_atol, (artefact.file, error, artefact.self_test_atol)
        precisions.add(artefact.precision)
    assert {"int8", "fp32"} <= precisions


def test_tflite_runtime_2_14_runs_its_bundle_in_a_numpy1_venv(case: dict[str, Any]) -> None:
    script = """
import json, sys
import numpy
from edge_agent.bundle import read_bundle
from edge_agent.keys import load_public_key
from edge_agent.runtimes import load_model
from edge_agent.runtimes.litert import LiteRTConfig
from edge_agent.runtimes.selftest import run_self_test
bundle = read_bundle(sys.argv[1], load_public_key(sys.argv[2]))
artefact, model = load_model(bundle, None, LiteRTConfig())
error = run_self_test(model, bundle.manifest, artefact)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"tflite_runtime", "ai_edge_litert"})
print(json.dumps({"numpy": numpy.__version__, "file": artefact.file, "error": error, "modules": loaded}))
"""
    done = subprocess.run(
        [TFLITE_214_PYTHON, "-c", script, str(CASE / case["bundles"]["tflite214"]), str(CASE / case["public_key"])],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["numpy"].startswith("1.")
    assert any(m.startswith("tflite_runtime") for m in result["modules"])
    assert not any(m.startswith("ai_edge_litert") for m in result["modules"])
    assert result["file"] in case["tflite214_files"]


def test_a_bundle_for_a_runtime_the_profile_lacks_is_refused_with_the_x86_message(
    case: dict[str, Any], tmp_path: Path
) -> None:
    from edge_agent.errors import GridedgeError
    from gridedge.provision import provision

    broken = case["broken"]
    with pytest.raises(GridedgeError) as refused:
        provision(
            broken["profile"], CASE / broken["site"], CASE / broken["bundle"], CASE / case["public_key"],
            tmp_path / "device",
        )  # fmt: skip
    assert str(refused.value) == broken["x86_message"]
    assert not (tmp_path / "device").exists()


def test_agent_runs_against_the_host_site_and_its_summary_reaches_the_host_broker(case: dict[str, Any]) -> None:
    import paho.mqtt.client as mqtt

    agent = case["agent"]
    summaries: list[dict[str, Any]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, message: summaries.append(json.loads(message.payload))
    client.connect("127.0.0.1", agent["broker_port"])
    client.subscribe(agent["summary_topic"], qos=1)
    client.loop_start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gridedge.cli", "agent", "run", "--config", str(CASE / agent["config"])],
            capture_output=True, text=True, timeout=420, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        deadline = time.monotonic() + 20
        while not any(s.get("forecasts") for s in summaries) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.loop_stop()
        client.disconnect()
    assert summaries, "no summary reached the host's broker"
    assert any(s.get("forecasts") for s in summaries), "no summary carried a forecast"


def test_the_pi4_wheelhouse_installs_offline_and_self_tests(case: dict[str, Any], tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GRIDEDGE_NO_SYSTEMD": "1",
                   "PYTHONPATH": ""}  # fmt: skip
    done = subprocess.run(
        ["bash", str(CASE / case["pi4_device"] / "install.sh"), "--prefix", str(prefix)],
        capture_output=True, text=True, timeout=900, env=environment, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "self-test max abs error" in done.stderr
    python = prefix / "current" / "venv" / "bin" / "python"
    check = "import ai_edge_litert, onnxruntime, numpy, gridedge; print(numpy.__version__)"
    imported = subprocess.run([str(python), "-c", check], capture_output=True, text=True, env=environment, check=False)
    assert imported.returncode == 0, imported.stderr[-2000:]


def test_the_planner_solves_a_day_ahead_plan_within_every_limit(case: dict[str, Any]) -> None:
    from edge_agent.planning.dispatch import ChannelForecast, Forecast, SiteState, limit_violations
    from edge_agent.planning.planner import plan_dispatch
    from edge_agent.planning.site_model import load_site_model

    raw = case["plan"]
    site = load_site_model(CASE / raw["site_model"])

    def channel(values: dict[str, Any]) -> ChannelForecast:
        return ChannelForecast(
            p50=np.asarray(values["p50"]),
            quantiles={float(level): np.asarray(v) for level, v in values["quantiles"].items()},
            paths={float(level): np.asarray(v) for level, v in values["paths"].items()},
        )

    times = np.asarray(raw["timestamps_utc"], dtype=np.int64)
    state = SiteState(soc_fraction=raw["soc"])
    plan = plan_dispatch(site, state, Forecast(times, channel(raw["load"]), channel(raw["pv"])), int(times[0]))
    assert plan.source == "planner", plan.reason  # highspy's aarch64 wheel solved it
    assert plan.steps == site.planner.horizon_steps
    assert limit_violations(plan, site, state) == []
