"""Every dependency gridedge declares is pinned in constraints.txt, which CI and the README install from."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
# Installed into its own venv by gridedge.export.compat_envs with its own pins, never into .venv.
SEPARATE_VENV_EXTRAS = {"torch-tflite"}


def test_every_declared_dependency_has_a_pin() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra not in SEPARATE_VENV_EXTRAS:
            declared += requirements
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    names = {canonicalize_name(Requirement(r).name) for r in declared} - {"gridedge"}
    unpinned = sorted(name for name in names if not pins.get(name, "").startswith("=="))
    assert unpinned == [], f"add pins for {unpinned} to constraints.txt (see its header)"
