"""Site values shipped with gridedge (``firmware_configs/sites/``), ready to point at a running site."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edge_agent.errors import ConfigError
from gridedge.resources import resource_path

SITES_DIR = resource_path("firmware_configs", "sites")
EXAMPLE_SITE = "simulated-household"


def site_file(name: str) -> Path:
    """The shipped site values file called ``name``."""
    path = SITES_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in SITES_DIR.glob("*.yaml"))
        raise ConfigError(f"no shipped site values called {name!r}; choose one of {available}")
    return path


def site_values(name: str, port: int, devices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The named site values with the Modbus port set.

    ``devices`` keeps only the named Modbus devices (e.g. just the meter). Register maps are named, so
    the values work written anywhere.
    """
    values: dict[str, Any] = yaml.safe_load(site_file(name).read_text(encoding="utf-8"))
    for source in values["sensors"]:
        source["port"] = port
        if devices is not None:
            source["devices"] = [d for d in source["devices"] if d["name"] in devices]
    return values
