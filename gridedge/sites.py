"""Site values shipped with gridedge (``firmware_configs/sites/``), ready to point at a running site."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SITES_DIR = Path(__file__).resolve().parent.parent / "firmware_configs" / "sites"


def site_values(name: str, port: int, devices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The named site values with the Modbus port set and register-map paths made absolute.

    ``devices`` keeps only the named Modbus devices (e.g. just the meter).
    """
    path = SITES_DIR / f"{name}.yaml"
    values: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    for source in values["sensors"]:
        source["port"] = port
        if devices is not None:
            source["devices"] = [d for d in source["devices"] if d["name"] in devices]
        for device in source["devices"]:
            device["register_map"] = str((path.parent / device["register_map"]).resolve())
    return values
