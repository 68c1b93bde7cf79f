"""Files shipped inside the gridedge wheel, found through :mod:`importlib.resources`.

The repository keeps them in its top-level folders (``firmware_configs/``, ``configs/``, ``data/``);
this package links to those folders and the wheel packages what the links hold, so the same lookup
works in a checkout, an editable install and an installed wheel:

    firmware_configs/*.yaml          device profiles (``gridedge provision --profile NAME``)
    firmware_configs/sites/*.yaml    example site values
    firmware_configs/systemd/        the agent's systemd unit
    firmware_configs/schema.json     JSON schema of the agent config
    configs/*.yaml                   task configs of the reference workloads
    data/                            the real data slices (with their attribution, data/README.md)

The register maps are device data and ship with the device package (``edge_agent.sensors``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_path(*parts: str) -> Path:
    """The filesystem path of a shipped file or folder, e.g. ``resource_path("firmware_configs", "sites")``.

    Wheels install unpacked, so every resource is a real file that tools outside Python (a Modbus
    simulator's data reader, ``cp``) can open.
    """
    return Path(str(files(__name__).joinpath(*parts)))
