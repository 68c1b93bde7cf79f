"""The installed bundles of a device: ``current`` and ``previous``, each switched with one atomic rename.

Installed bundles live in ``<state_dir>/bundles/<name>-<version>-<id>/``; two symlinks say which is
``current`` and which is ``previous``. A symlink is replaced with one ``rename``, so a power cut during an
update leaves either the old or the new model active, never a mix. The agent starts from ``current``
when it exists (an update survives a restart), else from the provisioned ``bundle.path``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from edge_agent.bundle import Bundle, unpack_archive
from edge_agent.fsutil import fsync_dir


class BundleStore:
    """The installed bundles of one device and the ``current``/``previous`` links between them."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "bundles"
        self.current_link = self.root / "current"
        self.previous_link = self.root / "previous"

    def current(self) -> Path | None:
        return self.current_link.resolve() if self.current_link.is_symlink() else None

    def previous(self) -> Path | None:
        return self.previous_link.resolve() if self.previous_link.is_symlink() else None

    def stage(self, archive: Path) -> Path:
        """Unpack an archive into a fresh folder of the store (not yet trusted, not yet active)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return unpack_archive(archive, self.root / f"incoming-{time.time_ns()}")

    def install(self, staged: Path, bundle: Bundle) -> Path:
        """Give a verified staged bundle its final name inside the store."""
        digest = bundle.manifest.artefacts[0].sha256[:8]
        final = self.root / f"{bundle.manifest.name}-{bundle.manifest.version}-{digest}"
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
        fsync_dir(self.root)
        return final

    def activate(self, target: Path, previous: Path | None) -> None:
        """Point ``current`` at ``target`` and ``previous`` at what ran before, each with one rename."""
        if previous is not None:
            self._point(self.previous_link, previous)
        self._point(self.current_link, target)
        self._prune()

    def _point(self, link: Path, target: Path) -> None:
        temporary = link.with_name(f".{link.name}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(link)
        fsync_dir(self.root)

    def _prune(self) -> None:
        """Keep only the current and previous bundles (a device's disk is small)."""
        keep = {p for p in (self.current(), self.previous()) if p is not None}
        for path in self.root.iterdir():
            if path.is_dir() and not path.is_symlink() and path.resolve() not in keep:
                shutil.rmtree(path, ignore_errors=True)
