"""The command line: every capability is one subcommand, and mistakes get one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _gridedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridedge.cli", *args], capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_help_lists_every_subcommand() -> None:
    out = _gridedge("--help")
    assert out.returncode == 0
    for command in ("train", "export", "provision", "demo", "keys", "agent", "sim", "sensors", "fleet"):
        assert f"│ {command} " in out.stdout, command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("agent", "run", "--config", "/nonexistent/config.yaml"), "not found; pass --config"),
        (("train", "/nonexistent/task.yaml"), "/nonexistent/task.yaml"),
        (("export", "/nonexistent/run", "--key", "/nonexistent/k", "--out", "/tmp/x"), "/nonexistent/k not found"),
    ],
)
def test_mistakes_exit_non_zero_with_a_message_naming_the_file(args: tuple[str, ...], message: str) -> None:
    out = _gridedge(*args)
    assert out.returncode != 0
    assert message in " ".join((out.stdout + out.stderr).split())
    assert "Traceback" not in out.stderr


def test_keys_new_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _gridedge("keys", "new", "--out", str(tmp_path)).returncode == 0
    again = _gridedge("keys", "new", "--out", str(tmp_path))
    assert again.returncode == 2 and "refusing to replace a signing key" in " ".join(again.stderr.split())
