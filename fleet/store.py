"""Fleet store: every received device message (deduplicated on its message id) and one row per device.

The same schema and SQL run on SQLite (default, a file) and PostgreSQL (given a DSN, via psycopg 3):
only the placeholder style and the connection differ. Device rows are updated with upserts whose
conditions make them order-independent, so several receivers may share one database.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, GridedgeError, missing_extra
from edge_agent.messages import (
    AlertMessage,
    CommandResult,
    Envelope,
    StatusMessage,
    SummaryMessage,
)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS fleet_messages (
        message_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        device TEXT NOT NULL,
        kind TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts TEXT NOT NULL,
        is_historical BOOLEAN NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        receiver TEXT NOT NULL,
        payload TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS fleet_messages_device_seq ON fleet_messages (site, device, seq)",
    """CREATE TABLE IF NOT EXISTS fleet_devices (
        site TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT,
        state_reason TEXT,
        state_at DOUBLE PRECISION,
        last_seen DOUBLE PRECISION NOT NULL,
        last_seq BIGINT NOT NULL,
        model_name TEXT,
        model_version TEXT,
        model_runtime TEXT,
        alerts BIGINT NOT NULL,
        last_alert TEXT,
        drift_max DOUBLE PRECISION,
        outbox_depth BIGINT,
        dropped BIGINT,
        fallback_active BOOLEAN,
        summary_seq BIGINT,
        PRIMARY KEY (site, device)
    )""",
]

DEVICE_COLUMNS = (
    "site", "device", "state", "state_reason", "state_at", "last_seen", "last_seq", "model_name",
    "model_version", "model_runtime", "alerts", "last_alert", "drift_max", "outbox_depth", "dropped",
    "fallback_active", "summary_seq",
)
MESSAGE_COLUMNS = (
    "message_id", "site", "device", "kind", "seq", "ts", "is_historical", "received_at", "receiver",
    "payload",
)


def _newer(column: str, order: str) -> str:
    """SQL keeping ``column`` from the incoming row only when its ``order`` column is newer."""
    return (
        f"{column} = CASE WHEN excluded.{order} IS NOT NULL AND (fleet_devices.{order} IS NULL "
        f"OR excluded.{order} >= fleet_devices.{order}) THEN excluded.{column} "
        f"ELSE fleet_devices.{column} END"
    )


_UPSERT_DEVICE = f"""
INSERT INTO fleet_devices ({", ".join(DEVICE_COLUMNS)}) VALUES ({", ".join("?" for _ in DEVICE_COLUMNS)})
ON CONFLICT (site, device) DO UPDATE SET
    {_newer("state", "state_at")},
    {_newer("state_reason", "state_at")},
    last_seen = CASE WHEN excluded.last_seen > fleet_devices.last_seen
        THEN excluded.last_seen ELSE fleet_devices.last_seen END,
    last_seq = CASE WHEN excluded.last_seq > fleet_devices.last_seq
        THEN excluded.last_seq ELSE fleet_devices.last_seq END,
    {_newer("model_name", "summary_seq")},
    {_newer("model_version", "summary_seq")},
    {_newer("model_runtime", "summary_seq")},
    alerts = fleet_devices.alerts + excluded.alerts,
    last_alert = COALESCE(excluded.last_alert, fleet_devices.last_alert),
    {_newer("drift_max", "summary_seq")},
    {_newer("outbox_depth", "summary_seq")},
    {_newer("dropped", "summary_seq")},
    {_newer("fallback_active", "summary_seq")},
    {_newer("state_at", "state_at")},
    {_newer("summary_seq", "summary_seq")}
"""
# state_at and summary_seq are updated last: SQL evaluates every SET expression against the old row,
# so the order only matters for readers of this statement.

_INSERT_MESSAGE = (
    f"INSERT INTO fleet_messages ({', '.join(MESSAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in MESSAGE_COLUMNS)}) ON CONFLICT (message_id) DO NOTHING"
)


@dataclass(frozen=True)
class Received:
    """A validated device message and when/where it arrived."""

    message: Envelope
    payload: str
    received_at: float


@dataclass
class _DeviceDelta:
    site: str
    device: str
    last_seen: float
    last_seq: int
    state: str | None = None
    state_reason: str | None = None
    state_at: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_runtime: str | None = None
    alerts: int = 0
    last_alert: str | None = None
    drift_max: float | None = None
    outbox_depth: int | None = None
    dropped: int | None = None
    fallback_active: bool | None = None
    summary_seq: int | None = None
    latest_summary: SummaryMessage | None = None

    def apply(self, item: Received) -> None:
        message = item.message
        self.last_seen = max(self.last_seen, item.received_at)
        self.last_seq = max(self.last_seq, message.seq)
        if isinstance(message, StatusMessage) and not message.is_historical:
            self.state, self.state_reason, self.state_at = message.state, message.reason, item.received_at
            if message.model is not None:
                self.model_name, self.model_version = message.model.name, message.model.version
                self.model_runtime = message.model.runtime
        elif isinstance(message, SummaryMessage):
            # Only the newest summary of the batch counts; its fields are read once, in row().
            if self.latest_summary is None or message.seq > self.latest_summary.seq:
                self.latest_summary = message
        elif isinstance(message, AlertMessage):
            self.alerts += 1
            self.last_alert = f"{message.severity}: {message.code}"

    def row(self) -> tuple[Any, ...]:
        summary = self.latest_summary
        if summary is not None:
            self.summary_seq = summary.seq
            if summary.model is not None:
                self.model_name, self.model_version = summary.model.name, summary.model.version
                self.model_runtime = summary.model.runtime
            drifts = [abs(d.z_mean) for d in summary.drift.values() if d.z_mean is not None]
            self.drift_max = max(drifts) if drifts else None
            self.outbox_depth = summary.outbox.depth
            dropped = summary.outbox.dropped
            self.dropped = dropped.telemetry + dropped.summary + dropped.alert
            self.fallback_active = summary.fallback_active
        return tuple(getattr(self, column) for column in DEVICE_COLUMNS)


class FleetStore:
    """Message and device tables in SQLite (``path``) or PostgreSQL (``dsn``); thread-safe."""

    def __init__(self, path: Path | None = None, dsn: str | None = None):
        if (path is None) == (dsn is None):
            raise ConfigError("give the fleet store either a SQLite path or a PostgreSQL DSN, not both")
        self.postgres = dsn is not None
        self._lock = threading.Lock()
        self._connection: Any
        if dsn is not None:
            try:
                import psycopg
            except ImportError as exc:
                raise missing_extra("psycopg", "fleet") from exc
            try:
                self._connection = psycopg.connect(dsn, autocommit=True)
            except psycopg.Error as exc:
                raise GridedgeError(
                    f"cannot connect to PostgreSQL ({exc}); check the DSN and that the server is running"
                ) from exc
            self.location = dsn
        else:
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint (and fsync) every ~64 MB of WAL instead of every 4 MB: ingest is write-heavy.
            self._connection.execute("PRAGMA wal_autocheckpoint=16384")
            # Several receiver processes may share the file: wait for each other's short transactions.
            self._connection.execute("PRAGMA busy_timeout=10000")
            self.location = str(path)
        with self._transaction() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            if self.postgres:
                with self._connection.transaction(), self._connection.cursor() as cursor:
                    yield cursor
            else:
                cursor = self._connection.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    yield cursor
                    cursor.execute("COMMIT")
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise

    def ingest(self, items: Sequence[Received], receiver: str = "receiver") -> int:
        """Store a batch in one transaction; returns how many were new (duplicates are skipped).

        Known ids are looked up once per batch and the rest inserted with one executemany. On
        SQLite writers are serialised, so "new" is exact; on PostgreSQL two receivers that get the
        same message at the same instant (only status copies do) may both count it, which changes
        no counter because status updates are idempotent.
        """
        fresh: dict[str, Received] = {}
        for item in items:
            fresh.setdefault(item.message.message_id, item)
        with self._transaction() as cursor:
            ids = list(fresh)
            for offset in range(0, len(ids), 500):
                chunk = ids[offset : offset + 500]
                cursor.execute(
                    self._sql(
                        "SELECT message_id FROM fleet_messages WHERE message_id IN "
                        f"({', '.join('?' for _ in chunk)})"
                    ),
                    chunk,
                )
                for (known,) in cursor.fetchall():
                    del fresh[known]
            if not fresh:
                return 0
            cursor.executemany(
                self._sql(_INSERT_MESSAGE),
                [
                    (
                        item.message.message_id,
                        item.message.site,
                        item.message.device,
                        getattr(item.message, "kind", "unknown"),
                        item.message.seq,
                        item.message.ts.isoformat(),
                        item.message.is_historical,
                        item.received_at,
                        receiver,
                        item.payload,
                    )
                    for item in fresh.values()
                ],
            )
            deltas: dict[tuple[str, str], _DeviceDelta] = {}
            for item in fresh.values():
                message = item.message
                if isinstance(message, CommandResult):
                    continue
                key = (message.site, message.device)
                delta = deltas.get(key)
                if delta is None:
                    delta = deltas[key] = _DeviceDelta(
                        message.site, message.device, item.received_at, message.seq
                    )
                delta.apply(item)
            upsert = self._sql(_UPSERT_DEVICE)
            # A fixed lock order: receivers sharing a database cannot deadlock on device rows.
            for key in sorted(deltas):
                cursor.execute(upsert, deltas[key].row())
        return len(fresh)

    def devices(self) -> list[dict[str, Any]]:
        """Every device row, sorted by site and device."""
        return self._query(
            f"SELECT {', '.join(DEVICE_COLUMNS)} FROM fleet_devices ORDER BY site, device", ()
        )

    def messages(
        self, site: str | None = None, device: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored messages, optionally filtered, in per-device sequence order."""
        conditions, params = [], []
        for column, value in (("site", site), ("device", device), ("kind", kind)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._query(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM fleet_messages{where} ORDER BY site, device, seq",
            tuple(params),
        )

    def _query(self, statement: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._connection.cursor()
            try:
                cursor.execute(self._sql(statement), params)
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            finally:
                cursor.close()

    def clear(self) -> None:
        """Delete every row (tests and benchmarks start from an empty PostgreSQL database this way)."""
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM fleet_messages")
            cursor.execute("DELETE FROM fleet_devices")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._connection.close()
