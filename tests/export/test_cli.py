"""`gridedge export` refuses bad input with a message naming the problem (exit code 2, as every command)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridedge.cli import app
from gridedge.export.converters import calibration_batches
from gridedge.export.errors import CalibrationError

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["export", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def test_missing_training_dir_is_named(signing_keys, tmp_path: Path) -> None:
    code, output = _run(str(tmp_path / "nope"), "--key", str(signing_keys[0]), "--out", str(tmp_path / "b"))
    assert code == 2
    assert "does not exist" in output and "nope" in output


def test_incomplete_training_dir_lists_missing_files(signing_keys, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "task.yaml").write_text("name: x\n")
    code, output = _run(str(run_dir), "--key", str(signing_keys[0]), "--out", str(tmp_path / "b"))
    assert code == 2
    assert "feature_spec.json" in output and "output_spec.json" in output


def test_two_models_in_one_run_is_a_mismatch(signing_keys, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("task.yaml", "feature_spec.json", "output_spec.json", "model.keras", "model.pt",
                 "model_config.json"):
        (run_dir / name).write_text("{}")
    code, output = _run(str(run_dir), "--key", str(signing_keys[0]), "--out", str(tmp_path / "b"))
    assert code == 2
    assert "exactly one model" in output


def test_wrong_key_file_is_named(signing_keys, tmp_path: Path) -> None:
    code, output = _run(str(tmp_path), "--key", str(signing_keys[1]), "--out", str(tmp_path / "b"))
    assert code == 2
    assert "not an unencrypted PEM private key" in output or "private key" in output


def test_calibration_set_too_small_is_refused() -> None:
    import numpy as np

    with pytest.raises(CalibrationError, match="only 5 valid training window"):
        calibration_batches({"past": np.zeros((5, 8, 2), dtype=np.float32)})
