"""The model manager alone, on real signed bundles: start, verify, install, probation, rollback."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle import bundle_digest, pack_archive
from edge_agent.errors import BundleError, ConfigError, GridedgeError
from edge_agent.model_manager import PROBATION_INFERENCES, ModelAnnouncer, ModelManager
from edge_agent.reporting.base import MemoryReporter

pytestmark = pytest.mark.slow


def _manager(tmp_path: Path, make_config: Any, exported: Any, bundle: Path | None = None) -> ModelManager:
    return ModelManager(make_config(tmp_path, bundle or exported.keras, exported.keys, 5020, "litert"))


def _damaged_copy(source: Path, target: Path) -> Path:
    """The bundle with one byte of its int8 model flipped: the signed manifest still verifies."""
    shutil.copytree(source, target)
    model = next(target.glob("*int8*.tflite"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return target


def test_start_loads_the_provisioned_bundle_and_announces_it_online(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    models = _manager(tmp_path, make_config, exported)
    models.start()
    info = models.model_info()
    assert info.name == "w1-keras" and info.runtime == "tflite" and info.precision == "int8"
    reporter = MemoryReporter()
    announcer = ModelAnnouncer(reporter, models)
    announcer.announce()
    announcer.announce()
    assert [m.state for m in reporter.of_kind("status")] == ["online"]  # type: ignore[attr-defined]
    assert not reporter.of_kind("alert")


def test_a_damaged_model_runs_degraded_with_one_fallback_alert(tmp_path: Path, make_config: Any, exported: Any) -> None:
    damaged = _damaged_copy(exported.keras, tmp_path / "damaged")
    models = _manager(tmp_path, make_config, exported, damaged)
    models.start()
    assert models.supervisor.degraded and models.model_info().runtime == "baseline"
    reporter = MemoryReporter()
    announcer = ModelAnnouncer(reporter, models)
    announcer.announce()
    announcer.announce()
    (status,) = reporter.of_kind("status")
    assert status.state == "degraded" and "does not match the manifest" in (status.reason or "")  # type: ignore[attr-defined]
    assert [a.code for a in reporter.of_kind("alert")] == ["model-fallback"]  # type: ignore[attr-defined]


def test_verify_refuses_a_bundle_the_runtime_cannot_run_and_keeps_the_model(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    models = _manager(tmp_path, make_config, exported)
    models.start()
    staged = shutil.copytree(exported.torch, tmp_path / "staged")  # ONNX only; this device runs LiteRT
    with pytest.raises(GridedgeError):
        models.verify(staged)
    assert models.model_info().name == "w1-keras" and models.store.current() is None


def test_install_keeps_the_previous_bundle_and_a_degrading_swap_rolls_back(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    models = _manager(tmp_path, make_config, exported)
    models.start()
    with pytest.raises(BundleError, match="no previous bundle"):
        models.rollback("asked too early")
    original = models.supervisor.bundle_dir

    staged = models.store.stage(pack_archive(exported.keras, tmp_path / "update.tar.gz"))
    outcome = models.install(staged, models.verify(staged))
    assert models.store.current() == models.supervisor.bundle_dir and models.store.previous() == original
    assert outcome.active.name == "w1-keras" and outcome.previous is not None
    assert models.last_update == {"bundle_sha256": outcome.bundle_sha256, "state": "probation", "reason": None}
    for _ in range(PROBATION_INFERENCES + 1):
        assert not models.after_inference()
    # The fleet learns the outcome from the status command and from one alert.
    assert models.last_update["state"] == "passed"
    assert outcome.bundle_sha256 == bundle_digest(models.supervisor.bundle_dir) == models.bundle_sha256()
    assert [notice.code for notice in models.take_notices()] == ["model-probation-passed"]

    damaged = _damaged_copy(exported.keras, tmp_path / "bad")
    running = models.supervisor.bundle_dir
    models.store.activate(damaged, running)
    models.switch_bundle(damaged, probation=PROBATION_INFERENCES, fallback_to=running)
    assert models.supervisor.bundle_dir == running and not models.supervisor.degraded
    (notice,) = models.take_notices()
    assert notice.code == "model-rollback" and "new model failed during its first inferences" in notice.message
    assert models.take_notices() == []


def test_no_verified_bundle_is_a_config_error(tmp_path: Path, make_config: Any, exported: Any) -> None:
    models = _manager(tmp_path, make_config, exported, tmp_path / "missing")
    with pytest.raises(ConfigError, match="cannot run without a verified bundle"):
        models.start()


def _garbage_manifest_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / "manifest.json").write_bytes(b"\x00\xffnot json")
    return target


@pytest.mark.parametrize("with_previous", [False, True])
def test_a_damaged_current_bundle_falls_back_to_the_last_good_one(
    tmp_path: Path, make_config: Any, exported: Any, with_previous: bool
) -> None:
    """Issue 12 item 7: a damaged ``bundles/current`` made the agent refuse to start."""
    models = _manager(tmp_path, make_config, exported)
    store_root = models.store.root
    store_root.mkdir(parents=True)
    damaged = _garbage_manifest_copy(exported.keras, store_root / "w1-keras-9.9.9-damaged")
    previous = shutil.copytree(exported.keras, store_root / "w1-keras-1.0.0-good") if with_previous else None
    models.store.activate(damaged, previous)

    models.start()
    assert models.supervisor.bundle is not None and not models.supervisor.degraded
    assert models.supervisor.bundle_dir == (previous.resolve() if previous else exported.keras)
    (notice,) = models.take_notices()
    assert notice.code == "bundle-fallback" and "w1-keras-9.9.9-damaged" in notice.message


def test_without_any_usable_bundle_the_start_is_refused_naming_each(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    provisioned = _garbage_manifest_copy(exported.keras, tmp_path / "provisioned")
    models = _manager(tmp_path, make_config, exported, provisioned)
    with pytest.raises(ConfigError, match="cannot run without a verified bundle"):
        models.start()
