"""How every benchmark publishes its numbers: ``results/<stem>.json`` for tools, ``results/<stem>.md`` for people.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is on ``sys.path`` and they
import this module by its bare name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a markdown table: the header, its rule, then one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return lines


def publish(stem: str, payload: Any, title: str, intro: str, table: Sequence[str]) -> None:
    """Write the raw numbers and the markdown report (title, what was measured where, table) under
    ``results/``, and print the report."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    text = "\n".join([f"# {title}", "", intro, "", *table])
    (RESULTS / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
    print(text)
