"""Lineage of a trained model: the data (source, time range, content hash), the config hash, the code.

Recorded in the run folder's report and carried into the bundle manifest (``provenance.lineage``), so a
fleet can say of every model it runs what it was trained on and by which code.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.bundle import DataLineage, Lineage
from gridedge import __version__
from gridedge.trainer.config import TaskConfig


def config_sha256(config: TaskConfig) -> str:
    """sha256 of the resolved config as canonical JSON (sorted keys): equal configs, equal hashes."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the checkout holding gridedge (``+dirty`` when it has changes); None when installed."""
    where = folder or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if status else head or None


def lineage(config: TaskConfig, first_s: int, last_s: int, data_sha256: str) -> Lineage:
    """The lineage of a model trained on ``config``'s data from ``first_s`` to ``last_s`` (UTC epoch s)."""

    def iso(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, UTC).isoformat()

    return Lineage(
        data=DataLineage(
            source=config.data.describe(), start_utc=iso(first_s), end_utc=iso(last_s), sha256=data_sha256
        ),
        config_sha256=config_sha256(config),
        gridedge_version=__version__,
        git_commit=git_commit(),
    )
