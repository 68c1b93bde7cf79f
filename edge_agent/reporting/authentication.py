"""Signed commands: who may change a device, and only once, only recently, only this device.

A command that changes state (:data:`SIGNED_COMMANDS`) carries an Ed25519 signature by the fleet
*operator* key over :func:`canonical_command`: the UTF-8 bytes of the compact, key-sorted, ASCII-escaped
JSON object ::

    {"args": {...}, "command": "<name from the topic>", "device": "<target device>",
     "issued_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ", "nonce": "<16-64 chars>",
     "purpose": "gridedge-command/1", "site": "<target site>"}

``purpose`` keeps a command signature from ever passing for another kind of signed document. The
device (:class:`CommandGuard`) refuses, each with a reason in the error reply: a missing or bad
signature, another device as target, an ``issued_at`` outside ``max_clock_skew_s`` of its clock, and a
nonce it has already accepted. Nonces are kept in SQLite in the state folder, so a restart does not
reopen the door to replays; the store is bounded, and evicting a nonce raises a floor below which
every ``issued_at`` is refused, so an evicted nonce can never be replayed either.

``ping`` and ``status`` only read, so they may come unsigned (a signature, when present, is checked).
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field

from edge_agent.errors import GridedgeError
from edge_agent.keys import load_public_key
from edge_agent.messages import CommandRequest
from edge_agent.yamlconfig import StrictModel

SIGNED_COMMANDS = frozenset({"model-update", "rollback", "reload-config", "set-log-level", "replay"})
SIGNATURE_PURPOSE = "gridedge-command/1"


class CommandRefusedError(GridedgeError):
    """A command failed authentication; the message names the reason."""


class CommandsSection(StrictModel):
    """How the device authenticates remote commands (the ``commands`` section of the agent config)."""

    operator_public_key: Path | None = Field(None, title="Operator public key")
    """PEM Ed25519 public key of the fleet operator (operator.pub); state-changing commands must be signed by its
    private key. None refuses every state-changing command."""
    max_clock_skew_s: float = Field(300.0, gt=0, title="Clock window")
    """A signed command whose issued-at time is further than this from the device clock is refused (stale or from the
    future)."""
    max_nonces: int = Field(100_000, ge=100, title="Remembered nonces")
    """Nonces of accepted commands kept to refuse replays; beyond it the oldest are forgotten and commands issued before
    them are refused."""


def issued_at_text(moment: datetime) -> str:
    """The one text form of a command's issued-at time that is signed (UTC, microseconds, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_command(command: str, request: CommandRequest) -> bytes:
    """The bytes an operator signs and a device verifies for ``request`` sent as ``command``."""
    document: dict[str, Any] = {
        "args": request.args,
        "command": command,
        "device": request.device,
        "issued_at": issued_at_text(request.ts),
        "nonce": request.nonce,
        "purpose": SIGNATURE_PURPOSE,
        "site": request.site,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class NonceStore:
    """Nonces of accepted commands, persisted in SQLite and bounded by count (see the module doc)."""

    def __init__(self, path: Path, max_nonces: int):
        self.max_nonces = max_nonces
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, issued_at REAL NOT NULL);
                CREATE INDEX IF NOT EXISTS nonces_age ON nonces (issued_at);
                CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY CHECK (id = 0), issued_at REAL);
                INSERT OR IGNORE INTO floor (id, issued_at) VALUES (0, NULL);
                """
            )

    def floor(self) -> float | None:
        """Commands issued at or before this time (epoch seconds) are refused: their nonces are gone."""
        with self._lock:
            value = self._db.execute("SELECT issued_at FROM floor WHERE id = 0").fetchone()[0]
        return None if value is None else float(value)

    def accept(self, nonce: str, issued_at: float) -> bool:
        """Record a nonce; False when it was already recorded (a replay)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = self._db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone()
                if known is None:
                    self._db.execute("INSERT INTO nonces (nonce, issued_at) VALUES (?, ?)", (nonce, issued_at))
                    self._evict_beyond_bound()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return known is None

    def _evict_beyond_bound(self) -> None:
        excess = int(self._db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]) - self.max_nonces
        if excess <= 0:
            return
        oldest = self._db.execute(
            "SELECT nonce, issued_at FROM nonces ORDER BY issued_at LIMIT ?", (excess,)
        ).fetchall()
        self._db.executemany("DELETE FROM nonces WHERE nonce = ?", [(nonce,) for nonce, _ in oldest])
        self._db.execute(
            "UPDATE floor SET issued_at = MAX(COALESCE(issued_at, ?), ?) WHERE id = 0",
            (oldest[-1][1], oldest[-1][1]),
        )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


@dataclass
class CommandGuard:
    """Checks the signature, target, time and nonce of commands for one device."""

    public_key: Ed25519PublicKey | None
    site: str
    device: str
    nonces: NonceStore
    max_clock_skew_s: float = 300.0
    clock: Callable[[], float] = time.time

    @classmethod
    def from_config(cls, section: CommandsSection, site: str, device: str, state_dir: Path) -> CommandGuard:
        """The guard a device runs with: its operator key (if any) and its nonces in ``state_dir``."""
        key = None if section.operator_public_key is None else load_public_key(section.operator_public_key)
        nonces = NonceStore(Path(state_dir) / "command-nonces.sqlite3", section.max_nonces)
        return cls(key, site, device, nonces, section.max_clock_skew_s)

    def check(self, command: str, request: CommandRequest) -> None:
        """Return when ``request`` may run; raise :class:`CommandRefusedError` naming the reason."""
        if request.signature is None:
            if command in SIGNED_COMMANDS:
                raise CommandRefusedError(
                    f"refused: missing signature; {command} changes the device and must be signed with the "
                    "operator key (gridedge fleet command ... --key operator.key)"
                )
            return
        if self.public_key is None:
            raise CommandRefusedError(
                "refused: no operator key on this device; set commands.operator_public_key in its config"
            )
        if request.nonce is None or request.site is None or request.device is None:
            raise CommandRefusedError("refused: bad signature; a signed command needs site, device and nonce")
        try:
            signature = base64.b64decode(request.signature, validate=True)
            self.public_key.verify(signature, canonical_command(command, request))
        except (binascii.Error, InvalidSignature) as exc:
            raise CommandRefusedError(
                "refused: bad signature; the command was not signed by this fleet's operator key or was "
                "altered in transit"
            ) from exc
        if (request.site, request.device) != (self.site, self.device):
            raise CommandRefusedError(
                f"refused: wrong target; the command is for {request.site}/{request.device}, this device is "
                f"{self.site}/{self.device}"
            )
        issued = request.ts.timestamp()
        skew = issued - self.clock()
        if abs(skew) > self.max_clock_skew_s:
            raise CommandRefusedError(
                f"refused: timestamp outside the window; issued {issued_at_text(request.ts)}, "
                f"{skew:+.0f} s from the device clock (allowed ±{self.max_clock_skew_s:.0f} s); "
                "check both clocks and resend a freshly signed command"
            )
        floor = self.nonces.floor()
        if floor is not None and issued <= floor:
            raise CommandRefusedError(
                "refused: replayed nonce cannot be ruled out; the command is older than the oldest nonce "
                "this device still remembers; resend a freshly signed command"
            )
        if not self.nonces.accept(request.nonce, issued):
            raise CommandRefusedError(
                f"refused: replayed nonce {request.nonce!r}; this command was already accepted once"
            )
