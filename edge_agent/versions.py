"""Semantic versions of model bundles, and the rule that an update never silently goes backwards."""

from __future__ import annotations

import re

from edge_agent.bundle import Bundle
from edge_agent.errors import BundleError

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def semver_key(version: str) -> tuple[int, int, int, tuple[tuple[int, int, str], ...]]:
    """A sort key with semantic-version precedence: a pre-release sorts below its release, numeric
    identifiers below alphanumeric ones, build metadata is ignored. Raises ValueError for text that is
    not a semantic version."""
    match = _SEMVER.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre = match.groups()
    if pre is None:
        pre_key: tuple[tuple[int, int, str], ...] = ((2, 0, ""),)  # above every pre-release
    else:
        pre_key = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split("."))
    return int(major), int(minor), int(patch), pre_key


def refuse_downgrade(running: Bundle | None, incoming: Bundle, allow_downgrade: bool) -> None:
    """Raise a BundleError when ``incoming`` is the running model at a lower version, unless the signed
    command allowed it; a bundle of another name is a different model, never a downgrade."""
    if running is None or allow_downgrade or running.manifest.name != incoming.manifest.name:
        return
    name, old, new = incoming.manifest.name, running.manifest.version, incoming.manifest.version
    if semver_key(new) < semver_key(old):
        raise BundleError(
            f"refused: downgrade of {name} from {old} to {new}; send the update with the signed argument "
            "allow_downgrade=true if this is intended (or use rollback)"
        )
