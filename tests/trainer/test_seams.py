"""The framework seam and the run folder, without training: selection by key, lazy imports, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from gridedge.trainer.backends import FitResult, backend
from gridedge.trainer.models_keras import _worth_reading
from gridedge.trainer.run_folder import RunFolder


@pytest.mark.parametrize(("chosen", "absent"), [("keras", "torch"), ("torch", "tensorflow")])
def test_choosing_a_backend_imports_only_its_framework(chosen: str, absent: str) -> None:
    code = (
        "import sys\nfrom gridedge.trainer.backends import backend\n"
        f"b = backend({chosen!r})\nassert b.key == {chosen!r}\n"
        f"assert {absent!r} not in sys.modules, 'imported {absent}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_framework_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown framework 'jax'; use one of \['keras', 'torch'\]"):
        backend("jax")


def test_fit_summary_says_when_early_stopping_ended_training() -> None:
    history = [{"epoch": i + 1, "loss": 1.0, "val_loss": 1.0 - 0.01 * min(i, 8)} for i in range(15)]
    stopped = FitResult(model=None, epochs_run=15, epochs_max=40, best_epoch=9, history=history, seconds=1.0)
    assert stopped.summary() == "stopped early at epoch 15/40 (best epoch 9, val loss 0.9200)"
    full = FitResult(model=None, epochs_run=40, epochs_max=40, best_epoch=9, history=history * 3, seconds=1.0)
    assert full.summary().startswith("trained at epoch 40/40 (best epoch 9")


def test_tensorflow_import_chatter_is_dropped_but_warnings_kept() -> None:
    captured = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1.0 10770 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1.0 10770 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
        "To enable the following instructions: AVX2, in other operations, rebuild TensorFlow.\n"
        "W0000 00:00:1.0 10770 loader.cc:1] could not load plugin libfoo.so\n"
    )
    assert _worth_reading(captured) == "W0000 00:00:1.0 10770 loader.cc:1] could not load plugin libfoo.so\n"


def test_missing_run_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training folder .*nope does not exist"):
        RunFolder.read(tmp_path / "nope")


def test_incomplete_run_folder_names_every_missing_file(tmp_path: Path) -> None:
    (tmp_path / "task.yaml").write_text("name: x\n")
    (tmp_path / "model.pt").write_text("")
    with pytest.raises(ConfigError) as caught:
        RunFolder.read(tmp_path)
    message = str(caught.value)
    for name in ("feature_spec.json", "output_spec.json", "report.json", "model_config.json"):
        assert name in message, name
    assert "exactly one model" in message and "['model.pt']" in message


def test_invalid_file_in_a_run_folder_is_named(tmp_path: Path) -> None:
    for name in ("task.yaml", "feature_spec.json", "output_spec.json", "report.json", "model.keras"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "task.yaml").write_text("name: x\ntask: pv_forecast\n")
    with pytest.raises(ConfigError, match=r"task\.yaml is invalid: data: Field required \(\d+ more\)"):
        RunFolder.read(tmp_path)


def test_run_folder_round_trip_and_refused_without_normalisation(
    tmp_path: Path, tiny_dict, configs_dir: Path
) -> None:
    import numpy as np

    from edge_agent.bundle import OutputSpec
    from edge_agent.features import ChannelSpec, FeatureSpec, NormalisationStats
    from gridedge.trainer.config import parse_config
    from gridedge.trainer.run_folder import RunReport

    spec = FeatureSpec(
        sample_period_s=900, input_steps=4, horizon_steps=2, calendar=False,
        past_channels=(ChannelSpec(name="p", unit="kW"),), target_channels=("p",),
    )  # fmt: skip
    fitted = spec.with_normalisation(NormalisationStats.fit(np.arange(8, dtype=np.float32)[:, None], ["p"]))
    report = RunReport(
        name="w3", task="anomaly", framework="keras", seed=0, metrics={"test": {"f1": 0.5}}, baselines={},
        data={"fingerprint_sha256": "ab"}, library_versions={"numpy": "2"}, history=[{"epoch": 1}],
    )  # fmt: skip
    output = OutputSpec(kind="forecast", horizon_steps=2, target_channels=("p",), target_units=("kW",))
    config = parse_config(tiny_dict("w3_anomaly"))
    RunFolder(path=tmp_path, config=config, spec=fitted, output=output, report=report).write()
    (tmp_path / "model.keras").write_text("")
    again = RunFolder.read(tmp_path)
    assert again.framework == "keras" and again.report.data_fingerprint == "ab"
    assert again.spec == fitted and again.config == config
    assert json.loads((tmp_path / "report.json").read_text())["history"] == [{"epoch": 1}]

    (tmp_path / "feature_spec.json").write_text(spec.model_dump_json())
    with pytest.raises(ConfigError, match=r"feature_spec\.json is invalid: .*no normalisation statistics"):
        RunFolder.read(tmp_path)
