"""A real chain for the agent tests: the trainer's W1 model (small), exported and signed by the exporter,
served by the simulated site over real Modbus TCP, run by the agent in LiteRT and ONNX Runtime.

Simulated time is driven by the test (a settable clock for the site), so every agent cycle reads the
data sample the test expects and the agent's forecasts can be compared with the exporter's model on
exactly the same windows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config import AgentConfig
from edge_agent.keys import load_private_key, new_keypair
from gridedge.sim.site import SimulatedSite, SiteServer
from gridedge.sites import site_values

REPO = Path(__file__).resolve().parents[2]


def tiny_w1_config() -> dict[str, Any]:
    """The shipped W1 config cut to a quarter of data and a few epochs: trains in seconds."""
    config = yaml.safe_load((REPO / "configs" / "w1_load.yaml").read_text())
    config = copy.deepcopy(config)
    config["name"] = "w1-agent-test"
    config["data"]["end"] = "2007-04-30"
    config["model"].update({"filters": 8, "hidden": 16})
    config["training"].update({"epochs": 2, "patience": 1})
    config.setdefault("baselines", {}).setdefault("lightgbm", {})["enabled"] = False
    # A window of one day fills in 96 periods; the week-long seasonal window is covered by the PV tests.
    config["features"].pop("seasonal_inputs", None)
    return config


@dataclass
class Bundles:
    keys: Path
    keras: Path
    torch: Path

    def for_runtime(self, runtime: str) -> Path:
        return self.keras if runtime == "litert" else self.torch


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """Train and export both frameworks once per session (about a minute on 2 cores)."""
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.config import parse_config
    from gridedge.trainer.training import train

    root = tmp_path_factory.mktemp("chain")
    private, _ = new_keypair(root / "keys")
    task = parse_config(tiny_w1_config())
    bundles = {}
    for framework, targets in (("keras", ("litert",)), ("torch", ("ort",))):
        run = root / f"run-{framework}"
        train(task, framework, run, plots=False)  # type: ignore[arg-type]
        result = export_bundle(
            load_source(run),
            root / f"bundle-{framework}",
            load_private_key(private),
            ExportOptions(name=f"w1-{framework}", targets=targets, max_degradation=0.5, latency_runs=20),
        )
        bundles[framework] = result.bundle_dir
    return Bundles(keys=root / "keys", keras=bundles["keras"], torch=bundles["torch"])


class SettableClock:
    """Simulated time (of the site, a replay, the monotonic clock); the test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_clock() -> type[SettableClock]:
    """Clocks the test sets by hand (classes cannot be imported from conftest under --import-mode=importlib)."""
    return SettableClock


@pytest.fixture
def site() -> tuple[SimulatedSite, SettableClock]:
    clock = SettableClock()
    return SimulatedSite(speed=1.0, start_offset_s=0.0, clock=clock), clock


@pytest.fixture
def site_server(site: tuple[SimulatedSite, SettableClock]) -> Any:
    server = SiteServer(site[0], port=0).start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def make_config() -> Any:
    """A factory for agent configs (fixtures cannot be imported under --import-mode=importlib)."""
    return agent_config


def agent_config(tmp_path: Path, bundle: Path, keys: Path, port: int, runtime: str, **overrides: Any) -> AgentConfig:
    """An agent reading the site's meter over Modbus TCP, on the site's clock."""
    raw = site_values("simulated-household", port, devices=("meter",))
    # Asked every cycle: the tests heal a fault and expect the next cycle to read again.
    raw["sensors"][0]["devices"][0].update({"timeout_s": 0.3, "retries": 1, "backoff_max_s": 0.0})
    raw.update(
        {
            "site": "test-site",
            "device": "ctrl-1",
            "state_dir": str(tmp_path / "state"),
            "bundle": {"path": str(bundle), "public_key": str(keys / "bundle-signing.pub")},
            "runtime": {"type": runtime},
            "loop": {"cadence_s": 0.01, "retry_every": 2, "recover_after": 2},
        }
    )
    raw.update(overrides)
    return AgentConfig.model_validate(raw)


def _small_litert_bundle(root: Path, keys: Path, config: str, name: str, raw_edits: dict[str, Any]) -> Path:
    """Train a shrunken shipped config with Keras and export it to a signed LiteRT bundle under ``root``."""
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.config import parse_config
    from gridedge.trainer.training import train

    raw = yaml.safe_load((REPO / "configs" / config).read_text())
    raw["name"] = f"{name}-agent-test"
    for section, values in raw_edits.items():
        raw.setdefault(section, {}).update(values)
    train(parse_config(raw), "keras", root / "run", plots=False)
    result = export_bundle(
        load_source(root / "run"),
        root / "bundle",
        load_private_key(keys / "bundle-signing.key"),
        ExportOptions(name=f"{name}-keras", targets=("litert",), max_degradation=1.0, latency_runs=20),
    )
    return result.bundle_dir


@pytest.fixture(scope="session")
def anomaly_bundle(tmp_path_factory: pytest.TempPathFactory, exported: Bundles) -> Path:
    """The trainer's W3 autoencoder (a few epochs), exported to LiteRT int8 and signed."""
    edits = {"training": {"epochs": 3, "patience": 1}}
    return _small_litert_bundle(tmp_path_factory.mktemp("w3"), exported.keys, "w3_anomaly.yaml", "w3", edits)


@pytest.fixture(scope="session")
def pv_bundle(tmp_path_factory: pytest.TempPathFactory, exported: Bundles) -> Path:
    """The trainer's W2 PV forecaster (small), whose clear-sky input the device derives itself."""
    edits = {
        "data": {"end": "2012-10-31"},
        "model": {"filters": 8, "hidden": 16},
        "training": {"epochs": 2, "patience": 1},
        "baselines": {"lightgbm": {"enabled": False}},
    }
    return _small_litert_bundle(tmp_path_factory.mktemp("w2"), exported.keys, "w2_pv.yaml", "w2", edits)
