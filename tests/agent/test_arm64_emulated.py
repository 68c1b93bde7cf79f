"""The device's architecture in the test run: the arm64 subset (tests/arm64) inside an emulated Pi 4 userland.

This host test is the x86 side: it exports the bundles (the session's Keras/LiteRT and PyTorch/ONNX ones,
plus a tflite-runtime-2.14 export of the same Keras run), records their outputs on x86, provisions a Pi 4
folder with its aarch64 wheelhouse, starts a Mosquitto and the simulated site on loopback (the chroot shares
this network namespace), then runs `pytest -m arm64` inside tests/arm64/userland.sh and reads its junit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import date
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
import yaml

from edge_agent.errors import GridedgeError
from gridedge.broker import LocalMosquitto
from gridedge.emulation import install_working_tree, run_in_userland
from gridedge.provision import DeviceExtras, provision
from gridedge.sim.site import SimulatedSite, SiteServer
from gridedge.sites import site_values

REPO = Path(__file__).resolve().parents[2]
SITE, DEVICE = "arm64-site", "pi4-emulated"
CYCLES_PER_PERIOD = 3
SITE_SPEED = 900.0 / (0.05 * CYCLES_PER_PERIOD)  # site seconds per real second: a 15-min period per 3 cycles
EXPECTED_TESTS = {
    "test_every_artefact_verifies_self_tests_and_matches_x86_within_its_own_tolerance[litert]",
    "test_every_artefact_verifies_self_tests_and_matches_x86_within_its_own_tolerance[onnxruntime]",
    "test_tflite_runtime_2_14_runs_its_bundle_in_a_numpy1_venv",
    "test_a_bundle_for_a_runtime_the_profile_lacks_is_refused_with_the_x86_message",
    "test_agent_runs_against_the_host_site_and_its_summary_reaches_the_host_broker",
    "test_the_pi4_wheelhouse_installs_offline_and_self_tests",
    "test_the_planner_solves_a_day_ahead_plan_within_every_limit",
}


def _emulation_missing() -> str | None:
    """Why the emulated userland cannot be built here, or None. CI installs all of it (.ci/run)."""
    if os.geteuid() != 0:
        return "building and entering a chroot needs root"
    if shutil.which("debootstrap") is None or not Path("/usr/bin/qemu-aarch64-static").exists():
        return "needs `apt-get install -y qemu-user-static binfmt-support debootstrap` (as .ci/run does)"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "aarch64 binfmt is not registered: `update-binfmts --enable qemu-aarch64`"
    return None


pytestmark = [
    pytest.mark.arm64_emulated,
    pytest.mark.slow,
    pytest.mark.mqtt,
    pytest.mark.modbus,
    pytest.mark.timeout(3600),  # the first, uncached build of the userland takes minutes
    pytest.mark.skipif(_emulation_missing() is not None, reason=f"emulated arm64: {_emulation_missing()}"),
]


def _x86_outputs(bundle_dir: Path, public_key: Path, runtime: str) -> dict[str, list[Any]]:
    """Every artefact of ``runtime`` on the bundle's test-vector inputs, run here on x86."""
    from edge_agent.bundle import read_bundle
    from edge_agent.keys import load_public_key
    from edge_agent.runtimes import load_model
    from edge_agent.runtimes.litert import LiteRTConfig
    from edge_agent.runtimes.ort import OnnxRuntimeConfig

    bundle = read_bundle(bundle_dir, load_public_key(public_key))
    config = LiteRTConfig() if runtime == "litert" else OnnxRuntimeConfig()
    kind = "tflite" if runtime == "litert" else "onnx"
    outputs = {}
    for artefact in (a for a in bundle.manifest.artefacts if a.runtime == kind):
        _, model = load_model(bundle, artefact.file, config)
        vectors = bundle.manifest.test_vectors
        feeds = [{k: np.asarray(v, dtype=np.float32) for k, v in vector.inputs.items()} for vector in vectors]
        outputs[f"{runtime}/{artefact.file}"] = [model.run(f).tolist() for f in feeds]
    return outputs


def _tflite_214_bundle(exported: Any, out: Path) -> Path:
    """The session's Keras run exported again for tflite-runtime 2.14 (per-tensor dense quantisation)."""
    from edge_agent.keys import load_private_key
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.run_loader import load_source

    options = ExportOptions(name="w1-keras-tfl214", targets=("tflite-runtime-2.14",), max_degradation=0.5,
                            latency_runs=10)  # fmt: skip
    source = load_source(exported.keys.parent / "run-keras")
    return export_bundle(source, out, load_private_key(exported.keys / "bundle-signing.key"), options).bundle_dir


def _plan_case(run_dir: Path) -> dict[str, Any]:
    """A real evening to plan on arm64: the off-grid site model, W1 load and W2 PV forecast by the device's
    seasonal baseline (made here: the forecast's source is central-side code)."""
    from edge_agent.planning.dispatch import ChannelForecast
    from edge_agent.planning.site_model import load_site_model
    from gridedge.planning_eval import SeasonalNaiveForecaster, load_replay

    site_model = REPO / "firmware_configs" / "sites" / "offgrid-household-site-model.yaml"
    shutil.copy(site_model, run_dir / "site-model.yaml")
    model = load_site_model(site_model)
    assert model.pv_rated_kw is not None
    replay = load_replay(date(2008, 5, 1), 1, model.pv_rated_kw)
    forecast = SeasonalNaiveForecaster(replay).forecast(replay.first + 72, model.planner.horizon_steps)  # 18:00

    def channel(c: ChannelForecast) -> dict[str, Any]:
        return {
            "p50": c.p50.tolist(),
            "quantiles": {str(level): v.tolist() for level, v in c.quantiles.items()},
            "paths": {str(level): v.tolist() for level, v in c.paths.items()},
        }

    return {
        "site_model": "site-model.yaml",
        "timestamps_utc": forecast.timestamps_utc.tolist(),
        "load": channel(forecast.load_kw),
        "pv": channel(forecast.pv_kw),
        "soc": 0.3,
    }


def _site_file(run_dir: Path, site_port: int, broker_port: int) -> Path:
    values = site_values("simulated-household", site_port, devices=("meter",))
    values["sensors"][0]["devices"][0].update({"timeout_s": 2.0, "retries": 1})
    values.update(
        {
            "site": SITE,
            "device": DEVICE,
            "state_dir": "state",
            # Emulation runs 50-200x slower than a Pi: a generous budget, the 2-day window plus 24 forecasts,
            # with CYCLES_PER_PERIOD cycles per site period so that a slow (loaded) cycle skips no period.
            "loop": {"cadence_s": 0.05, "max_cycles": (192 + 24) * CYCLES_PER_PERIOD, "latency_budget_ms": 5000},
            "mqtt": {"broker": {"host": "127.0.0.1", "port": broker_port}, "summary_interval_s": 2.0},
            "log_level": "WARNING",
        }
    )
    path = run_dir / "site.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_the_arm64_subset_passes_in_the_emulated_pi4_userland(
    tmp_path: Path, exported: Any, record_property: Any
) -> None:
    import paho.mqtt.client as mqtt

    run_dir = tmp_path / "case"
    run_dir.mkdir()
    (run_dir / "bundles").mkdir()
    keys = run_dir / "keys"
    shutil.copytree(exported.keys, keys, ignore=shutil.ignore_patterns("*.key"))
    for name, source in (("litert", exported.keras), ("onnxruntime", exported.torch)):
        shutil.copytree(source, run_dir / "bundles" / name)
    tfl214 = _tflite_214_bundle(exported, run_dir / "bundles" / "tflite214")
    public_key = keys / "bundle-signing.pub"
    tfl214_manifest = json.loads((tfl214 / "manifest.json").read_text())

    wheel = install_working_tree(run_dir)  # the working tree's gridedge, as the device gets it

    with (
        LocalMosquitto(tmp_path / "broker") as broker,
        SiteServer(SimulatedSite(speed=SITE_SPEED), port=0).start_in_thread() as site_server,
    ):
        site_file = _site_file(run_dir, site_server.port, broker.port)
        pi4 = run_dir / "device-pi4"
        offline = DeviceExtras(wheelhouse=True, gridedge_wheel=wheel)
        provision("raspberry-pi-4", site_file, exported.keras, public_key, pi4, offline)
        with pytest.raises(GridedgeError) as refused:
            provision("raspberry-pi-4", site_file, exported.torch, public_key, tmp_path / "refused")
        case = {
            "public_key": "keys/bundle-signing.pub",
            "bundles": {name: f"bundles/{name}" for name in ("litert", "onnxruntime", "tflite214")},
            "x86_outputs": {**_x86_outputs(exported.keras, public_key, "litert"),
                            **_x86_outputs(exported.torch, public_key, "onnxruntime")},
            "tflite214_files": [a["file"] for a in tfl214_manifest["artefacts"]
                                if "tflite-runtime-2.14" in a["compatibility_targets"]],
            "broken": {"profile": "raspberry-pi-4", "site": "site.yaml", "bundle": "bundles/onnxruntime",
                       "x86_message": str(refused.value)},
            "agent": {"config": "device-pi4/config.yaml", "broker_port": broker.port,
                      "summary_topic": f"gridedge/v1/{SITE}/{DEVICE}/summary"},
            "pi4_device": "device-pi4",
            "plan": _plan_case(run_dir),
        }  # fmt: skip
        (run_dir / "case.json").write_text(json.dumps(case))

        summaries: list[dict[str, Any]] = []
        listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        listener.on_message = lambda _c, _u, message: summaries.append(json.loads(message.payload))
        listener.connect("127.0.0.1", broker.port)
        listener.subscribe(f"gridedge/v1/{SITE}/{DEVICE}/summary", qos=1)
        listener.loop_start()
        started = time.monotonic()
        try:
            done = run_in_userland(
                run_dir,
                ["/opt/edge/bin/python", "-m", "pytest", "/src/tests/arm64", "-m", "arm64", "-p", "no:cacheprovider",
                 "--junitxml=/case/junit.xml", "-q", "-rA"],
                timeout_s=3500,
            )  # fmt: skip
        finally:
            listener.loop_stop()
            listener.disconnect()
        record_property("emulated_run_s", round(time.monotonic() - started, 1))

    report = f"{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    assert (run_dir / "junit.xml").exists(), f"the arm64 run wrote no junit (exit {done.returncode}):\n{report}"
    cases = ElementTree.parse(run_dir / "junit.xml").getroot().iter("testcase")
    outcomes = {c.get("name"): [child.tag for child in c] for c in cases}
    passed = {name for name, children in outcomes.items() if not children}
    assert passed == EXPECTED_TESTS, f"arm64 outcomes {outcomes}:\n{report}"
    assert done.returncode == 0, report
    assert summaries and summaries[-1]["model"]["precision"] == "int8", summaries[-1:]  # the Pi 4 profile prefers int8
