"""FleetStore on SQLite and PostgreSQL: deduplication and order-independent device rows."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from edge_agent.messages import (
    AlertContent,
    ChannelDrift,
    Envelope,
    ModelInfo,
    OutboxStats,
    SummaryContent,
)
from edge_agent.reporting.base import MessageBuilder
from gridedge.fleet.store import FleetStore, Received

BUILD = MessageBuilder("farm-1", "inv-1")


def received(message: Envelope, at: float | None = None) -> Received:
    return Received(message, message.model_dump_json(), time.time() if at is None else at)


def summary(seq: int, version: str, depth: int, historical: bool = False) -> Envelope:
    now = datetime.now(UTC)
    content = SummaryContent(
        window_start=now, window_end=now, model=ModelInfo(name="w1", version=version),
        drift={"p": ChannelDrift(z_mean=-2.5), "q": ChannelDrift(z_mean=None)},
    )
    message = BUILD.summary(seq, content, OutboxStats(depth=depth, bytes=depth * 100))
    return message.model_copy(update={"is_historical": historical})


def test_duplicates_are_stored_once(store: FleetStore) -> None:
    alert = BUILD.alert(1, AlertContent(severity="critical", code="anomaly", message="x"))
    assert store.ingest([received(alert), received(alert)], "r1") == 1
    assert store.ingest([received(alert)], "r2") == 0
    rows = store.messages(kind="alert")
    assert len(rows) == 1 and rows[0]["receiver"] == "r1"
    assert store.devices()[0]["alerts"] == 1


def test_device_row_keeps_the_newest_state_whatever_the_arrival_order(store: FleetStore) -> None:
    start = time.time()
    online = BUILD.status(1, "online", "connected", ModelInfo(name="w1", version="1.0.0"))
    store.ingest([received(online, start)])
    store.ingest([received(summary(10, "1.1.0", depth=0), start + 1)])
    # a replayed older summary arrives late: it is stored, but does not overwrite newer facts
    store.ingest([received(summary(5, "1.0.0", depth=40, historical=True), start + 2)])
    degraded = BUILD.status(11, "degraded", "model produced NaN", None)
    store.ingest([received(degraded, start + 3), received(BUILD.alert(12, AlertContent(
        severity="warning", code="model-fallback", message="fallback")), start + 3)])
    replayed_status = BUILD.status(2, "online", "old", None).model_copy(update={"is_historical": True})
    store.ingest([received(replayed_status, start + 4)])

    (device,) = store.devices()
    assert device["state"] == "degraded" and device["state_reason"] == "model produced NaN"
    assert device["model_version"] == "1.1.0" and device["outbox_depth"] == 0
    assert device["drift_max"] == 2.5 and device["alerts"] == 1
    assert device["last_alert"] == "warning: model-fallback"
    assert device["last_seq"] == 12 and device["last_seen"] == start + 4
    assert [row["seq"] for row in store.messages(device="inv-1")] == [1, 2, 5, 10, 11, 12]


def test_two_connections_share_one_store(store: FleetStore, store_location: dict[str, object]) -> None:
    other = FleetStore(**store_location)  # type: ignore[arg-type]
    try:
        first = BUILD.alert(1, AlertContent(severity="info", code="a", message="1"))
        second = BUILD.alert(2, AlertContent(severity="info", code="a", message="2"))
        assert store.ingest([received(first)], "r1") == 1
        assert other.ingest([received(first), received(second)], "r2") == 1
        assert store.devices()[0]["alerts"] == 2
    finally:
        other.close()
