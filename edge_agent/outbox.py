"""Durable outbox: every outgoing report is committed to SQLite (WAL) before it is sent.

A row leaves the outbox only when the broker acknowledged it (PUBACK), so a broker outage, a killed
process or a power cut loses nothing that was committed. The outbox also owns the per-device sequence
counter, so numbering continues across restarts.

The outbox is bounded by payload bytes. When an append would exceed the cap, the oldest telemetry is
dropped first, then the oldest summaries, and alerts only last; every drop is counted per kind and the
counts are persistent (they travel in the next summary).

A damaged outbox (cut short, garbage in its pages: ``PRAGMA quick_check`` at open) is quarantined and
replaced by an empty one, and so is an empty file where an outbox had been; the sequence then resumes
above the high-water mark kept beside it (:class:`~edge_agent.state_files.SequenceMark`), never at 0.

Acknowledged rows are not thrown away at once: they move to a ``delivered`` table kept for a retention
window (at most ``retain_messages`` rows, none older than ``retain_age_s``), so that the fleet can ask
for messages the broker acknowledged and then lost (the ``replay`` command). Retained rows never count
against the byte cap of undelivered ones and are never sent again unless asked for.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.errors import OutboxError
from edge_agent.fsutil import is_disk_full
from edge_agent.messages import DROP_PRIORITY, DroppedCounts, OutboxStats
from edge_agent.state_files import SequenceMark, quarantine

OutboxKind = Literal["summary", "alert", "telemetry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_eviction ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS delivered (
    seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    delivered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES
    ('next_seq', 0), ('dropped_telemetry', 0), ('dropped_summary', 0), ('dropped_alert', 0);
"""


@dataclass(frozen=True)
class OutboxRow:
    """One stored message waiting for its acknowledgement."""

    row_id: int
    message_id: str
    kind: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class RetainedRow:
    """A delivered message kept for replay."""

    seq: int
    message_id: str
    topic: str
    payload: bytes


# Age pruning scans the retained rows; once a minute is plenty for a window counted in days.
AGE_PRUNE_INTERVAL_S = 60.0

_INSERT = (
    "INSERT INTO outbox (seq, message_id, kind, priority, topic, payload, size) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# SQLite's side files of a WAL database: they belong to the damaged file and must not meet a fresh one.
SQLITE_COMPANIONS = ("-wal", "-shm")

def _refuse_cut_file(path: Path) -> None:
    """Raise when the file is shorter than the page count its SQLite header records.

    SQLite reads a database cut at a page boundary without complaint (quick_check included): the rows
    of the lost pages, the sequence counter among them, would silently be older ones.
    """
    with path.open("rb") as handle:
        header = handle.read(100)
    if len(header) < 100:
        return  # too short to be a database: the schema check refuses it
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65_536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The recorded page count is valid only while the change counter matches its "valid for" copy.
    if header[24:28] == header[92:96] and path.stat().st_size < pages * page_size:
        raise sqlite3.DatabaseError(f"the file is cut short: {path.stat().st_size} bytes of {pages * page_size}")


PayloadFactory = Callable[[int], tuple[str, bytes]]
"""Builds (message_id, payload bytes) for a given sequence number, inside the outbox transaction."""


class Outbox:
    """SQLite-backed, byte-capped, thread-safe queue of outgoing messages plus the sequence counter."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        retain_messages: int = 10_000,
        retain_age_s: float = 7 * 86_400.0,
    ):
        self.path = path
        self.max_bytes = max_bytes
        self.retain_messages = retain_messages
        self.retain_age_s = retain_age_s
        self._age_pruned_at = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sequence_mark = SequenceMark(path.with_name(f"{path.stem}-sequence.json"))
        self._lock = threading.Lock()
        self._bytes = self._next_seq = self._retained = 0  # read from the database by _open
        lost = self._damage(path)
        try:
            self._db = self._open(path, synchronous)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # SQLite quotes damaged schema bytes raw
            quarantine(path, f"the outbox cannot be read: {exc}", SQLITE_COMPANIONS)
            self._db = self._open(path, synchronous)
            lost = True
        if lost:
            # Whatever the lost outbox numbered is gone with it: continue above every number handed out.
            self._next_seq = max(self._next_seq, self.sequence_mark.ceiling)
        else:
            # A flipped byte in a page SQLite cannot notice (it keeps no checksums) may set the counter
            # back; it can never go below the number that last moved the mark.
            self._next_seq = max(self._next_seq, self.sequence_mark.floor)

    def _damage(self, path: Path) -> bool:
        """Quarantine an outbox that is empty or gone while the sequence mark says one existed."""
        if self.sequence_mark.ceiling == 0 and not path.exists():
            return False  # a new device
        if path.exists() and path.stat().st_size > 0:
            return False
        what = "empty (0 bytes)" if path.exists() else "missing"
        quarantine(path, f"the outbox is {what}; its queued messages are lost", SQLITE_COMPANIONS)
        return True

    def _open(self, path: Path, synchronous: str) -> sqlite3.Connection:
        # One connection shared by the caller and the MQTT network thread, serialised by our lock.
        # Autocommit mode: a plain append is a single-statement transaction.
        existed = path.exists() and path.stat().st_size > 0
        if existed:
            _refuse_cut_file(path)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            with self._lock:
                problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError("; ".join(str(p) for p in problems[:3]))
                # SQLite takes a file cut inside its 100-byte header for an empty database.
                if existed and db.execute("SELECT 1 FROM sqlite_master WHERE name='counters'").fetchone() is None:
                    raise sqlite3.DatabaseError("the file holds no outbox tables (cut short?)")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={synchronous}")
                db.executescript(_SCHEMA)
                self._bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
                # The next sequence number is above every number stored in a row or recorded in the
                # counter; the counter is brought up to date whenever rows leave the outbox.
                stored = db.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM outbox").fetchone()[0]
                recorded = db.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()[0]
                self._next_seq = max(int(stored), int(recorded))
                self._retained = int(db.execute("SELECT COUNT(*) FROM delivered").fetchone()[0])
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back a transaction that failed with a full disk.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _record_next_seq(self) -> None:
        self._db.execute("UPDATE counters SET value=? WHERE name='next_seq'", (self._next_seq,))

    def reserve_seq(self) -> int:
        """Take the next sequence number for a message that is not stored (status, will, reply)."""
        with self._lock:
            seq = self._next_seq
            self.sequence_mark.cover(seq)
            self._next_seq += 1
            try:
                self._record_next_seq()
            except sqlite3.OperationalError as exc:
                # A full disk must not stop a status or a command reply: the number is unique in this
                # run, and the counter is recorded again with the next write that succeeds.
                if not is_disk_full(exc):
                    raise
        return seq

    def append(self, kind: OutboxKind, topic: str, make_payload: PayloadFactory) -> OutboxRow:
        """Number, store and commit a message; evict by the overflow policy when the cap is reached."""
        with self._lock:
            seq = self._next_seq
            self.sequence_mark.cover(seq)
            message_id, payload = make_payload(seq)
            size = len(payload)
            if size > self.max_bytes:
                raise OutboxError(
                    f"a {kind} message of {size} bytes exceeds the whole outbox cap of "
                    f"{self.max_bytes} bytes; raise outbox.max_bytes or send smaller messages"
                )
            row = (seq, message_id, kind, DROP_PRIORITY[kind], topic, payload, size)
            if self._bytes + size <= self.max_bytes:
                cursor = self._db.execute(_INSERT, row)
            else:
                with self._transaction():
                    freed = self._evict_for(size)
                    cursor = self._db.execute(_INSERT, row)
                self._bytes -= freed
            self._next_seq += 1
            self._bytes += size
            row_id = cursor.lastrowid
            assert row_id is not None  # an INSERT into a rowid table always sets it
            return OutboxRow(row_id, message_id, kind, topic, payload)

    def _evict_for(self, incoming: int) -> int:
        excess = self._bytes + incoming - self.max_bytes
        victims: list[tuple[int, str, int]] = []
        freed = 0
        for row_id, kind, size in self._db.execute("SELECT id, kind, size FROM outbox ORDER BY priority, id"):
            victims.append((row_id, kind, size))
            freed += size
            if freed >= excess:
                break
        self._db.executemany("DELETE FROM outbox WHERE id=?", [(row_id,) for row_id, _, _ in victims])
        for kind in DROP_PRIORITY:
            dropped = sum(1 for _, victim_kind, _ in victims if victim_kind == kind)
            if dropped:
                self._db.execute(
                    "UPDATE counters SET value=value+? WHERE name=?", (dropped, f"dropped_{kind}")
                )
        self._record_next_seq()
        return freed

    def acknowledge(self, row_ids: list[int]) -> None:
        """Move acknowledged rows (the broker has them now) to the retained ones."""
        if not row_ids:
            return
        marks = ", ".join("?" for _ in row_ids)
        now = time.time()
        with self._lock:
            retained_before = self._retained
            try:
                freed = self._move_to_delivered(row_ids, marks, now)
            except BaseException:
                self._retained = retained_before  # the transaction did not happen
                raise
            self._bytes -= int(freed)

    def _move_to_delivered(self, row_ids: list[int], marks: str, now: float) -> int:
        with self._transaction():
            freed = self._db.execute(
                f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})", row_ids
            ).fetchone()[0]
            if self.retain_messages:
                self._retained += self._db.execute(
                    "INSERT OR REPLACE INTO delivered (seq, message_id, kind, topic, payload, delivered_at) "
                    f"SELECT seq, message_id, kind, topic, payload, ? FROM outbox WHERE id IN ({marks})",
                    [now, *row_ids],
                ).rowcount
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", row_ids)
            self._record_next_seq()
            self._prune_retained(now)
        return int(freed)

    def _prune_retained(self, now: float) -> None:
        excess = self._retained - self.retain_messages
        if excess > 0:
            self._retained -= self._db.execute(
                "DELETE FROM delivered WHERE seq IN (SELECT seq FROM delivered ORDER BY seq LIMIT ?)", (excess,)
            ).rowcount
        if now - self._age_pruned_at >= AGE_PRUNE_INTERVAL_S:
            self._age_pruned_at = now
            self._retained -= self._db.execute(
                "DELETE FROM delivered WHERE delivered_at < ?", (now - self.retain_age_s,)
            ).rowcount

    def retained(self, first_seq: int, last_seq: int, limit: int) -> list[RetainedRow]:
        """Delivered messages still kept with a sequence number in [first_seq, last_seq], oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, message_id, topic, payload FROM delivered WHERE seq BETWEEN ? AND ? "
                "AND delivered_at >= ? ORDER BY seq LIMIT ?",
                (first_seq, last_seq, time.time() - self.retain_age_s, limit),
            ).fetchall()
        return [RetainedRow(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def pending_seqs(self, first_seq: int, last_seq: int) -> list[int]:
        """Sequence numbers in [first_seq, last_seq] still waiting for their first acknowledgement."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq FROM outbox WHERE seq BETWEEN ? AND ? ORDER BY seq", (first_seq, last_seq)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def pending(self, after_row_id: int, limit: int) -> list[OutboxRow]:
        """Stored rows with an id above ``after_row_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, message_id, kind, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_row_id, limit),
            ).fetchall()
        return [OutboxRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), bytes(r[4])) for r in rows]

    def dropped(self) -> DroppedCounts:
        """Overflow drops per kind since the outbox file was created."""
        with self._lock:
            counts = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return DroppedCounts(
            telemetry=counts["dropped_telemetry"],
            summary=counts["dropped_summary"],
            alert=counts["dropped_alert"],
        )

    def stats(self) -> OutboxStats:
        """Depth, bytes and drop counts, as carried in every summary."""
        with self._lock:
            depth = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            stored = self._bytes
        return OutboxStats(depth=depth, bytes=stored, dropped=self.dropped())

    def close(self) -> None:
        """Close the database (pending rows stay for the next start)."""
        with self._lock:
            self._db.close()
