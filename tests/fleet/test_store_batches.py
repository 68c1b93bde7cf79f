"""FleetStore write path: PostgreSQL day partitions and their retention, exact dedup when receivers race,
and sequence ranges merged for many devices in one batch."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.messages import AlertContent, Envelope
from edge_agent.reporting.base import MessageBuilder
from gridedge.fleet.store import PARTITION_PREFIX, FleetStore, Received


def alert(device: str, seq: int, ts: datetime | None = None) -> Envelope:
    message = MessageBuilder("farm-1", device).alert(seq, AlertContent(severity="info", code="c", message=f"{seq}"))
    return message if ts is None else message.model_copy(update={"ts": ts})


def received(message: Envelope, at: float | None = None) -> Received:
    return Received(message, message.model_dump_json(), time.time() if at is None else at)


def partitions(store: FleetStore) -> list[str]:
    rows = store.query(
        "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'fleet_messages' "
        "AND p.relnamespace = to_regnamespace(current_schema())::oid ORDER BY 1",
        (),
    )
    return [row["name"] for row in rows]


@pytest.mark.postgres
def test_postgres_creates_day_partitions_on_demand_and_retention_drops_whole_old_days(pg_dsn: str) -> None:
    store = FleetStore(dsn=pg_dsn)
    try:
        now = datetime.now(UTC)
        days = [now - timedelta(days=10), now - timedelta(days=2), now]
        messages = [alert("inv-1", seq, ts) for seq, ts in enumerate(days, start=1)]
        assert store.ingest([received(message) for message in messages], "r1") == 3
        assert partitions(store) == [f"{PARTITION_PREFIX}{day:%Y%m%d}" for day in days]

        assert store.apply_retention(5) == 1
        assert partitions(store) == [f"{PARTITION_PREFIX}{day:%Y%m%d}" for day in days[1:]]
        assert [row["seq"] for row in store.messages()] == [2, 3]
        # Device rows and received ranges are the fleet's memory, not history: they stay.
        assert store.devices()[0]["alerts"] == 3 and store.gaps() == {}
        # A late replay of a dropped day is stored again (its partition is created anew), and
        # deduplication still holds in the partitions that remain.
        assert store.ingest([received(messages[0]), received(messages[2])], "r1") == 1
        assert len(partitions(store)) == 3
    finally:
        store.close()


def test_sqlite_retention_deletes_rows_received_before_the_cutoff(tmp_path: Path) -> None:
    store = FleetStore(path=tmp_path / "fleet.sqlite3")
    try:
        now = time.time()
        store.ingest([received(alert("inv-1", 1), now - 10 * 86400), received(alert("inv-1", 2), now)], "r1")
        assert store.apply_retention(5, now) == 1
        assert [row["seq"] for row in store.messages()] == [2]
    finally:
        store.close()


@pytest.mark.postgres
def test_racing_postgres_receivers_store_and_count_each_message_once(pg_dsn: str) -> None:
    stores = [FleetStore(dsn=pg_dsn) for _ in range(2)]
    batch = [received(alert(f"inv-{seq % 7}", seq)) for seq in range(300)]
    counted: list[int] = []
    start = threading.Barrier(2)

    def ingest(store: FleetStore) -> None:
        start.wait()
        counted.append(store.ingest(batch, "r"))

    threads = [threading.Thread(target=ingest, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sum(counted) == 300
        assert len(stores[0].messages()) == 300
        assert sum(row["alerts"] for row in stores[0].devices()) == 300
    finally:
        for store in stores:
            store.close()


def test_one_batch_merges_the_ranges_of_many_devices(store: FleetStore) -> None:
    devices = [f"inv-{index}" for index in range(20)]
    # Every device: 1-3 and 7-9 first, then 5 and 4-6 again in a later batch, out of order.
    store.ingest([received(alert(device, seq)) for seq in (9, 1, 2, 3, 7, 8) for device in devices], "r1")
    assert store.gaps() == {("farm-1", device): [(4, 6)] for device in devices}
    store.ingest([received(alert(device, 5)) for device in devices], "r1")
    assert store.gaps() == {("farm-1", device): [(4, 4), (6, 6)] for device in devices}
    store.ingest([received(alert(device, seq)) for device in devices for seq in (6, 4, 5)], "r1")
    assert store.gaps() == {}
    assert len(store.messages()) == 20 * 10  # seq 5 was sent twice, as two messages
