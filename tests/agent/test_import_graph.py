"""The device package's modules import each other without cycles (the agent and its commands used to)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edge_agent"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_module_level(path: Path, modules: set[str]) -> set[str]:
    """edge_agent modules imported outside functions (TYPE_CHECKING blocks included: a cycle is a cycle)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        blocks = [node] if not isinstance(node, ast.If) else node.body + node.orelse
        for statement in blocks:
            if isinstance(statement, ast.ImportFrom) and statement.module:
                names = [f"{statement.module}.{alias.name}" for alias in statement.names]
                found |= {n for n in names if n in modules} or ({statement.module} & modules)
            elif isinstance(statement, ast.Import):
                found |= {alias.name for alias in statement.names} & modules
    return found


def test_no_module_of_the_device_package_imports_itself_back() -> None:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports_at_module_level(path, set(paths)) - {name} for name, path in paths.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], name, target] if target in trail else [name, target])
            elif target not in state:
                visit(target, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, f"import cycles: {cycles}"


def test_the_commands_import_without_the_agent() -> None:
    script = "import sys, edge_agent.updates; print('edge_agent.agent' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
