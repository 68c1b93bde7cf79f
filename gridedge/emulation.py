"""The emulated arm64 userland (tests/arm64/userland.sh) driven from Python: tests and benchmarks share it.

A development tool of the source tree, not of an installed gridedge: the script, its cpuinfo and the
requirement files below are the userland's cache key, so every caller must ask for the same ones.
"""

from __future__ import annotations

import subprocess
import zipfile
from importlib.metadata import version
from pathlib import Path

from gridedge.provision import load_profile
from gridedge.wheelhouse import build_gridedge_wheel, source_tree

EDGE_PROFILE = "raspberry-pi-4"
TFLITE_214_PROFILE = "raspberry-pi-3-tflite-runtime"
SITE_PACKAGES = "site"
"""Folder of the run folder holding the working tree's gridedge, unpacked from its wheel (/case/site inside)."""


def userland_script() -> Path:
    return source_tree() / "tests" / "arm64" / "userland.sh"


def write_requirements(run_dir: Path) -> tuple[Path, Path]:
    """The Pi 4 profile's pins plus the test runner, and the tflite-runtime profile's pins (numpy<2)."""
    test_runner = [f"pytest=={version('pytest')}", f"pytest-timeout=={version('pytest-timeout')}"]
    edge = run_dir / "requirements-edge.txt"
    edge.write_text("\n".join([*load_profile(EDGE_PROFILE).profile.requirements, *test_runner]) + "\n")
    tflite = run_dir / "requirements-tflite214.txt"
    tflite.write_text("\n".join(load_profile(TFLITE_214_PROFILE).profile.requirements) + "\n")
    return edge, tflite


def install_working_tree(run_dir: Path) -> Path:
    """Build the working tree's gridedge wheel and unpack it into ``run_dir/site`` (pure Python); returns the wheel."""
    wheel = build_gridedge_wheel(run_dir)
    with zipfile.ZipFile(wheel) as unpacked:
        unpacked.extractall(run_dir / SITE_PACKAGES)
    return wheel


def run_in_userland(run_dir: Path, command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the userland (built first if not cached) with ``run_dir`` at /case, gridedge importable.

    The script runs in a mount namespace of its own (``unshare --mount --propagation private``): none of its
    mounts (proc, the ARM cpuinfo, /dev, the source) can reach the host, and all of them vanish with the
    process, even when a timeout kills it. A killed run once left the ARM cpuinfo mounted over the host's
    /proc/cpuinfo, where onnxruntime then crashed every process that imported it.
    """
    edge, tflite = write_requirements(run_dir)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         "bash", str(userland_script()), "run", str(edge), str(tflite), str(run_dir), "--",
         "/usr/bin/env", f"PYTHONPATH=/case/{SITE_PACKAGES}", *command],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
