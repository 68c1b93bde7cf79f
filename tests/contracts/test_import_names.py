"""The wheel installs trainer/, export/ and fleet/ as ``gridedge.trainer`` etc., never as top-level names.

In the repository those folders also sit at the top level (and an editable install or ``python -m pytest``
from the root can import them there), so an accidental ``import trainer`` would pass here and fail in an
installed wheel. Every Python file of the project is read and such imports are refused by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERIC = {"trainer", "export", "fleet"}
SKIP = {".venv", ".venvs", "build", ".git", "runs"}


def _python_files() -> list[Path]:
    return [
        p for p in REPO.rglob("*.py") if not (SKIP & set(p.relative_to(REPO).parts)) and not p.is_symlink()
    ]


def test_no_module_imports_a_generic_top_level_name() -> None:
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in GENERIC]
    assert offenders == [], "import these as gridedge.<name>: " + ", ".join(offenders)


def test_the_generic_folders_are_reached_through_the_gridedge_package() -> None:
    for name in GENERIC:
        link = REPO / "gridedge" / name
        assert link.is_symlink() and link.resolve() == (REPO / name).resolve(), f"gridedge/{name} must link ../{name}"
