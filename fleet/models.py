"""What runs where and where it came from: bundles registered with their lineage, joined to device reports.

A bundle's lineage (data source, time range, content hash, config hash, code version) is read from its
signed manifest (``provenance.lineage``) when it is registered in the fleet store: by ``gridedge fleet
retrain`` for the bundles it ships, or by ``gridedge fleet register-model`` for any other.
"""

from __future__ import annotations

import hashlib
import time
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


def short_source(source: str | None) -> str:
    """``fleet:/x/fleet.sqlite3#site-c/meter`` -> ``fleet site-c/meter``; a file -> its name."""
    if not source:
        return "-"
    kind, _, where = source.partition(":")
    if kind == "fleet":
        return f"fleet {where.rpartition('#')[2]}"
    return f"{kind} {Path(where).name}"


def date_range(start: str | None, end: str | None) -> str:
    """``2007-01-14..02-11`` from two ISO times (the year once)."""
    if not start or not end:
        return "-"
    first, last = start[:10], end[:10]
    return f"{first}..{last[5:] if last[:4] == first[:4] else last}"


def code_version(version: str | None, commit: str | None) -> str:
    """``0.1.0@d9c305e`` (``+`` marks a checkout with changes)."""
    if not version:
        return "-"
    if not commit:
        return version
    return f"{version}@{commit[:7]}{'+' if commit.endswith('+dirty') else ''}"


def models_table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(device, model@version, trained on, data range, code) per device, for a table that fits 80 columns."""
    return [
        (
            f"{row['site']}/{row['device']}",
            f"{row['model_name'] or '-'}@{row['model_version'] or '-'}",
            short_source(row.get("data_source")) if row.get("location") else "unknown bundle",
            date_range(row.get("data_start"), row.get("data_end")),
            code_version(row.get("gridedge_version"), row.get("git_commit")),
        )
        for row in rows
    ]


__all__ = ["lineage_row", "models_table_rows", "register_bundle", "running_models"]
