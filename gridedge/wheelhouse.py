"""The wheels a device profile needs, downloaded for the device's platform, so that it installs offline.

``gridedge provision --wheelhouse`` calls :func:`fill_wheelhouse`: pip downloads binary wheels only, for
the profile's CPU architecture, glibc and Python (``pip download --platform ... --python-version ...``),
the profile's pinned requirements and a gridedge wheel built from the package that runs this command.
``wheelhouse/requirements.txt`` names what the device's ``install.sh`` installs with ``--no-index``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from edge_agent.errors import ConfigError
from edge_agent.fsutil import atomic_write_text

OLDEST_MANYLINUX_GLIBC = 17  # manylinux2014 / manylinux_2_17: older wheels are not worth a tag here


def wheel_platforms(arch: str, glibc: str) -> list[str]:
    """pip ``--platform`` tags a device with this architecture and glibc runs, newest first.

    pip does not widen a given manylinux tag to the older ones a device also runs, so each is listed.
    """
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, OLDEST_MANYLINUX_GLIBC - 1, -1)]
    return [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]


def source_tree() -> Path:
    """The project folder gridedge runs from, to build its wheel; a ConfigError when it is an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(
            f"gridedge runs from an installed package ({root}), not a source tree, so it cannot build its own "
            "wheel: pass --gridedge-wheel with the gridedge wheel to ship"
        )
    return root


def build_gridedge_wheel(dest: Path) -> Path:
    """Build the gridedge wheel of the source tree into ``dest`` (pure Python: one wheel fits every device)."""
    with tempfile.TemporaryDirectory(prefix="gridedge-wheel-") as scratch:
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", scratch, str(source_tree())], "build")
        (built,) = Path(scratch).glob("gridedge-*.whl")
        target = dest / built.name
        built.replace(target)
    return target


def fill_wheelhouse(
    dest: Path, requirements: list[str], arch: str, glibc: str, python: str, gridedge_wheel: Path
) -> list[Path]:
    """Download every wheel the device needs into ``dest``; returns the wheels there.

    ``requirements`` are the profile's pins; gridedge's own wheel is copied in and its dependencies resolved
    against the same platform, so the folder is complete for ``pip install --no-index``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    local_wheel = dest / gridedge_wheel.name
    if gridedge_wheel.resolve() != local_wheel.resolve():
        local_wheel.write_bytes(gridedge_wheel.read_bytes())
    version = local_wheel.name.split("-")[1]
    lines = [*requirements, f"gridedge=={version}"]
    atomic_write_text(dest / "requirements.txt", "\n".join(lines) + "\n")
    abi = "cp" + python.replace(".", "")
    platforms = [flag for tag in wheel_platforms(arch, glibc) for flag in ("--platform", tag)]
    _pip(
        ["download", "--quiet", "--dest", str(dest), "--find-links", str(dest), "--only-binary", ":all:",
         *platforms, "--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
         "--abi", "none", "-r", str(dest / "requirements.txt")],
        f"download the {arch} cp{python} wheels",
    )  # fmt: skip
    return sorted(dest.glob("*.whl"))


def _pip(args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise ConfigError(f"pip could not {what}:\n{detail}")
