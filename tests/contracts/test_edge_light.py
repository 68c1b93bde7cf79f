"""The device path stays light: edge_agent never imports a training framework, nor central-side code.

Checked twice: in this (full) environment, where tensorflow/torch are installed and an accidental import
would succeed silently, and in a virtual environment holding only ``pip install '.[edge]'``. In both, the
edge modules and ``gridedge agent --help`` load no module of the simulator, trainer, exporter or fleet.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from gridedge.export.compat_envs import venvs_root

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("tensorflow", "keras", "torch", "tf_keras", "jax")
CENTRAL = ("gridedge.sim", "gridedge.trainer", "gridedge.export", "gridedge.fleet")

IMPORT_ALL = f"""
import importlib, json, pkgutil, sys
import edge_agent
failed = {{}}
names = []
for info in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as exc:  # report every failure, not just the first
        failed[info.name] = f"{{type(exc).__name__}}: {{exc}}"
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r})
gridedge = sorted(m for m in sys.modules if m.split(".")[0] == "gridedge")
print(json.dumps({{"modules": names, "failed": failed, "heavy": heavy, "gridedge": gridedge}}))
"""

AGENT_HELP = f"""
import json, sys
from gridedge.cli import app
try:
    app(["agent", "--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
central = sorted(m for m in sys.modules if m.startswith({CENTRAL!r}))
print(json.dumps({{"central": central, "loaded": "edge_agent.cli" in sys.modules}}))
"""


def _run_code(python: str, code: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True, cwd="/", env=env, timeout=300
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _import_everything(python: str) -> dict[str, object]:
    return _run_code(python, IMPORT_ALL)


def _assert_device_side_only(python: str) -> None:
    result = _import_everything(python)
    assert result["failed"] == {}
    assert result["heavy"] == []
    assert result["gridedge"] == [], "edge_agent must not import the central package"
    assert len(result["modules"]) >= 5  # type: ignore[arg-type]
    agent_help = _run_code(python, AGENT_HELP)
    assert agent_help == {"central": [], "loaded": True}


def test_importing_every_edge_module_pulls_no_framework_even_when_installed() -> None:
    _assert_device_side_only(sys.executable)


def _edge_venv() -> Path:
    """A venv with only the edge extra; rebuilt when pyproject.toml changes, code reinstalled every run."""
    root = venvs_root()
    tag = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    env_dir = root / f"edge-{tag}"
    python = env_dir / "bin" / "python"
    if not (env_dir / ".complete").exists():
        venv.create(env_dir, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"{REPO}[edge]"], check=True, timeout=900)
        (env_dir / ".complete").write_text("ok")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(REPO)],
        check=True,
        timeout=600,
    )
    return python


@pytest.mark.slow
def test_edge_extra_alone_imports_every_module_and_runs_the_cli() -> None:
    python = _edge_venv()
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert not names & {"tensorflow", "tensorflow-cpu", "keras", "torch", "pandas"}, names
    _assert_device_side_only(str(python))
    help_text = subprocess.run(
        [str(python.parent / "gridedge"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "keys" in help_text
