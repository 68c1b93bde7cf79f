"""The README's first command: the end-to-end demo runs on a fresh checkout and measures what it claims."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.mqtt, pytest.mark.modbus]


def test_quick_demo_runs_the_whole_chain(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "gridedge.cli", "demo", "--quick", "--days", "0.5", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (workdir / "demo_report.md").read_text()
    assert "artefact `w1-load-keras.int8.tflite`" in report
    assert "summaries received by the fleet: 0" not in report
    assert "All checks passed: this device is ready." in run.stdout
    assert (workdir / "forecast_vs_actual.png").stat().st_size > 10_000
    assert (workdir / "device" / "systemd" / "gridedge-agent.service").exists()
    assert (workdir / "run" / "report.json").exists()
