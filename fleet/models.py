"""What runs where and where it came from: bundles registered with their lineage, joined to device reports.

A bundle's lineage (data source, time range, content hash, config hash, code version) is read from its
signed manifest (``provenance.lineage``) when it is registered in the fleet store: by ``gridedge fleet
retrain`` for the bundles it ships, or by ``gridedge fleet register-model`` for any other.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.bundle import Manifest, read_bundle
from gridedge.fleet.store import FleetStore


def lineage_row(location: Path, manifest: Manifest) -> dict[str, Any]:
    """The fleet_model_lineage row of a bundle at ``location``."""
    lineage = manifest.provenance.lineage
    data = lineage.data if lineage is not None else None
    return {
        "name": manifest.name,
        "version": manifest.version,
        "location": str(location.resolve()),
        "manifest_sha256": hashlib.sha256(manifest.to_bytes()).hexdigest(),
        "framework": manifest.source_framework,
        "data_source": data.source if data else None,
        "data_start": data.start_utc if data else None,
        "data_end": data.end_utc if data else None,
        "data_sha256": data.sha256 if data else manifest.provenance.data_fingerprint,
        "config_sha256": lineage.config_sha256 if lineage else None,
        "gridedge_version": lineage.gridedge_version if lineage else None,
        "git_commit": lineage.git_commit if lineage else None,
        "registered_at": time.time(),
    }


def register_bundle(store: FleetStore, bundle_dir: Path, public_key: Ed25519PublicKey) -> Manifest:
    """Verify a bundle (signature, hashes) and record it with its lineage; returns its manifest."""
    manifest = read_bundle(bundle_dir, public_key).manifest
    store.register_model(lineage_row(bundle_dir, manifest))
    return manifest


def running_models(store: FleetStore) -> list[dict[str, Any]]:
    """One row per device: the model it reports and, when the fleet knows that bundle, its lineage."""
    known = {(row["name"], row["version"]): row for row in store.models()}
    rows = []
    for device in store.devices():
        entry = known.get((device["model_name"], device["model_version"]), {})
        rows.append({**{k: v for k, v in entry.items() if k not in ("name", "version")}, **device})
    return rows


def short_source(source: str | None, site: str, device: str) -> str:
    """``fleet (own)`` for the device's own series, ``fleet site-c/meter`` for another's, a file's name."""
    if not source:
        return "-"
    kind, _, where = source.partition(":")
    if kind == "fleet":
        origin = where.rpartition("#")[2]
        return "fleet (own)" if origin == f"{site}/{device}" else f"fleet {origin}"
    return Path(where).name


def date_range(start: str | None, end: str | None) -> str:
    """``2007-01-14 +28d``: the first day and the span, from two ISO times."""
    if not start or not end:
        return "-"
    first, last = datetime.fromisoformat(start), datetime.fromisoformat(end)
    return f"{first:%Y-%m-%d} +{round((last - first).total_seconds() / 86_400)}d"


def code_version(version: str | None, commit: str | None) -> str:
    """``0.1.0@d9c305e`` (``+`` marks a checkout with changes)."""
    if not version:
        return "-"
    if not commit:
        return version
    return f"{version}@{commit[:7]}{'+' if commit.endswith('+dirty') else ''}"


MODEL_COLUMNS = ("device", "model", "version", "trained on", "data (UTC)", "code")


def models_table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """``MODEL_COLUMNS`` per device, short enough for a table of 80 columns."""
    return [
        (
            f"{row['site']}/{row['device']}",
            row["model_name"] or "-",
            row["model_version"] or "-",
            short_source(row.get("data_source"), row["site"], row["device"])
            if row.get("location")
            else ("unregistered" if row["model_name"] else "-"),
            date_range(row.get("data_start"), row.get("data_end")),
            code_version(row.get("gridedge_version"), row.get("git_commit")),
        )
        for row in rows
    ]


__all__ = ["lineage_row", "models_table_rows", "register_bundle", "running_models"]
