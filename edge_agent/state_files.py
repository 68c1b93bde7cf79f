"""Damaged state files: quarantined for inspection, replaced by fresh ones, announced once.

A device that finds its outbox, its window or its sequence record damaged (a power cut on a bad SD
card, a full disk, a stray write) must start all the same. The damaged file is renamed to
``<name>.corrupt-<UTC time>`` beside the original, so a technician can still read what it held, a fresh
file takes its place, and the agent raises one ``state-file-quarantined`` alert per file (the part that
found the damage may run before anything can publish, so the quarantines wait in :func:`take_quarantined`).

The sequence numbers of a device must never restart at 0 (the fleet would take new messages for old
ones). :class:`SequenceMark` keeps a high-water mark of the numbers handed out, in its own small file,
reserved a block at a time so that a busy outbox writes it once per :data:`SEQUENCE_BLOCK` messages. A
lost outbox resumes above the mark: a forward jump, which the fleet sees as a gap and asks to replay.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.fsutil import atomic_write_text

logger = logging.getLogger(__name__)
CORRUPT_MARK = ".corrupt-"
SEQUENCE_BLOCK = 1024
KEEP_QUARANTINED = 3
"""Copies kept per file: enough to see a pattern; a card that damages the outbox at every start must not
fill the disk with copies of it."""


@dataclass(frozen=True)
class Quarantined:
    """A damaged state file: where it was, where it is kept now, and what was wrong with it."""

    original: Path
    kept_as: Path | None  # None when nothing was left to keep (the file was gone)
    reason: str


_pending: deque[Quarantined] = deque()


def quarantine(path: Path, reason: str, companions: tuple[str, ...] = ()) -> Quarantined:
    """Rename ``path`` (and ``path`` + each companion suffix, e.g. SQLite's ``-wal``) out of the way.

    The new name carries the UTC time; repeated damage keeps the newest :data:`KEEP_QUARANTINED` copies
    of each file. Queues the notice for :func:`take_quarantined`.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    kept_as: Path | None = None
    if path.exists():
        kept_as = path.rename(path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}"))
    for suffix in companions:
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(companion.with_name(f"{companion.name}{CORRUPT_MARK}{stamp}"))
    for name in (path.name, *(path.name + suffix for suffix in companions)):
        _prune_copies(path.parent, name)
    notice = Quarantined(path, kept_as, reason)
    kept = f"kept as {kept_as.name}" if kept_as else "nothing left to keep"
    logger.error("state file %s is damaged (%s): %s, starting with a fresh one", path, reason, kept)
    _pending.append(notice)
    return notice


def _prune_copies(folder: Path, name: str) -> None:
    """Delete all but the newest :data:`KEEP_QUARANTINED` quarantined copies of ``name`` (stamps sort by time)."""
    copies = sorted(folder.glob(f"{name}{CORRUPT_MARK}*"), key=lambda p: p.name)
    for old in copies[:-KEEP_QUARANTINED]:
        old.unlink(missing_ok=True)
        logger.warning("deleted the old quarantined copy %s (keeping the newest %d)", old.name, KEEP_QUARANTINED)


def take_quarantined() -> list[Quarantined]:
    """The quarantines not yet announced, oldest first (each is returned once)."""
    taken = []
    while _pending:
        taken.append(_pending.popleft())
    return taken


class SequenceMark:
    """A persistent high-water mark of a device's sequence numbers, written atomically (fsync + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.ceiling = self._read()

    def _read(self) -> int:
        if not self.path.exists():
            return 0
        try:
            ceiling = json.loads(self.path.read_bytes())["next_seq_below"]
            if not isinstance(ceiling, int) or isinstance(ceiling, bool) or ceiling < 0:
                raise ValueError(f"next_seq_below is {ceiling!r}, not a count")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            quarantine(self.path, f"unreadable sequence record: {exc}")
            return 0
        return ceiling

    @property
    def floor(self) -> int:
        """A next sequence number that is surely unused: the mark moved when ``floor - 1`` was handed out."""
        return max(0, self.ceiling - SEQUENCE_BLOCK + 1)

    def cover(self, seq: int) -> None:
        """Make sure the mark is above ``seq`` before ``seq`` is used (one write per block)."""
        with self._lock:
            if seq < self.ceiling:
                return
            ceiling = seq + SEQUENCE_BLOCK
            atomic_write_text(self.path, json.dumps({"next_seq_below": ceiling}))
            self.ceiling = ceiling
