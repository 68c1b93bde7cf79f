"""The SQLite outbox on its own: sequence persistence, overflow policy, acknowledgement."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox, OutboxKind, PayloadFactory
from edge_agent.reporting.replay import replay_ranges


def payload_of(size: int) -> PayloadFactory:
    def make(seq: int) -> tuple[str, bytes]:
        return uuid.uuid4().hex, f"{seq:08d}".encode().ljust(size, b".")

    return make


def add(outbox: Outbox, kind: OutboxKind, size: int = 100) -> int:
    return outbox.append(kind, f"t/{kind}", payload_of(size)).row_id


def test_sequence_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path, 10_000)
    seqs = [int(first.append("alert", "t", payload_of(20)).payload[:8]) for _ in range(3)]
    assert seqs == [0, 1, 2]
    assert first.reserve_seq() == 3
    first.close()
    again = Outbox(path, 10_000)
    assert again.reserve_seq() == 4
    assert [row.payload[:8] for row in again.pending(0, 10)] == [b"00000000", b"00000001", b"00000002"]
    assert again.stats().depth == 3 and again.stats().bytes == 60


def test_overflow_drops_oldest_telemetry_then_summaries_then_alerts(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=1000)
    alerts = [add(outbox, "alert") for _ in range(2)]
    summaries = [add(outbox, "summary") for _ in range(3)]
    telemetry = [add(outbox, "telemetry") for _ in range(5)]
    assert outbox.stats().bytes == 1000 and outbox.dropped().telemetry == 0

    newest_summary = add(outbox, "summary", 250)  # needs 250 bytes: three oldest telemetry go
    kept = {row.row_id for row in outbox.pending(0, 100)}
    assert not kept & set(telemetry[:3]) and set(telemetry[3:]) <= kept
    assert outbox.dropped().model_dump() == {"telemetry": 3, "summary": 0, "alert": 0}

    add(outbox, "alert", 300)  # two telemetry left (200 bytes), then the oldest summary
    kept = {row.row_id for row in outbox.pending(0, 100)}
    assert not kept & set(telemetry) and summaries[0] not in kept
    assert set(alerts) <= kept and newest_summary in kept
    assert outbox.dropped().model_dump() == {"telemetry": 5, "summary": 1, "alert": 0}

    add(outbox, "alert", 950)  # every summary goes, and only then the oldest alerts
    assert outbox.dropped().model_dump() == {"telemetry": 5, "summary": 4, "alert": 3}
    assert outbox.stats().bytes <= 1000


def test_a_message_larger_than_the_cap_is_refused_without_side_effects(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=500)
    add(outbox, "telemetry")
    with pytest.raises(OutboxError, match="exceeds the whole outbox cap"):
        add(outbox, "alert", 600)
    assert outbox.stats().depth == 1 and outbox.stats().bytes == 100
    assert outbox.dropped().telemetry == 0


def test_acknowledge_deletes_and_frees_bytes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000)
    rows = [add(outbox, "summary") for _ in range(4)]
    outbox.acknowledge([*rows[:2], 999])  # an unknown row (already evicted) is ignored
    assert [row.row_id for row in outbox.pending(0, 10)] == rows[2:]
    assert outbox.stats().bytes == 200
    assert [row.row_id for row in outbox.pending(rows[2], 10)] == rows[3:]


def test_acknowledged_messages_are_kept_for_replay_within_a_count_and_an_age(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000, retain_messages=5, retain_age_s=3600)
    rows = [add(outbox, "alert") for _ in range(8)]
    outbox.acknowledge(rows[:7])
    assert outbox.stats().depth == 1 and outbox.stats().bytes == 100  # kept rows weigh nothing on the cap
    kept = outbox.retained(0, 100, 100)
    assert [row.seq for row in kept] == [2, 3, 4, 5, 6]  # the newest five acknowledged
    assert kept[0].payload.startswith(b"00000002") and kept[0].topic == "t/alert"
    assert outbox.pending_seqs(0, 100) == [7]
    assert [row.seq for row in outbox.retained(3, 4, 100)] == [3, 4]
    assert [row.seq for row in outbox.retained(0, 100, 2)] == [2, 3]
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000, retain_messages=5, retain_age_s=3600)
    assert [row.seq for row in reopened.retained(0, 100, 100)] == [2, 3, 4, 5, 6]
    assert reopened.reserve_seq() == 8

    short = Outbox(tmp_path / "short.sqlite3", max_bytes=10_000, retain_age_s=0.05)
    short.acknowledge([add(short, "alert")])
    assert len(short.retained(0, 10, 10)) == 1
    time.sleep(0.1)
    assert short.retained(0, 10, 10) == []  # past the age window: never replayed

    none_kept = Outbox(tmp_path / "none.sqlite3", max_bytes=10_000, retain_messages=0)
    none_kept.acknowledge([add(none_kept, "alert")])
    assert none_kept.retained(0, 10, 10) == []


def test_replay_republishes_kept_messages_as_historical_and_names_what_it_does_not_hold(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000, retain_messages=100)

    def document(seq: int) -> tuple[str, bytes]:
        return f"id-{seq:05d}", json.dumps({"message_id": f"id-{seq:05d}", "seq": seq, "is_historical": False}).encode()

    rows = [outbox.append("alert", "t/alert", document).row_id for _ in range(8)]
    outbox.reserve_seq()  # seq 8: a status, never stored
    outbox.append("alert", "t/alert", document)  # seq 9: not acknowledged yet
    outbox.acknowledge(rows)
    sent: list[tuple[str, dict[str, object]]] = []

    def publish(topic: str, payload: bytes) -> bool:
        sent.append((topic, json.loads(payload)))
        return True

    answer = replay_ranges(outbox, {"ranges": [[2, 3], [6, 12]]}, publish, max_messages=3)
    assert [doc["seq"] for _, doc in sent] == [2, 3, 6]
    assert all(doc["is_historical"] and doc["message_id"] == f"id-{doc['seq']:05d}" for _, doc in sent)
    assert answer == {"replayed": 3, "unavailable": [], "pending": [], "remaining": [[7, 12]]}
    sent.clear()
    answer = replay_ranges(outbox, {"ranges": [[7, 12]]}, publish)
    assert [doc["seq"] for _, doc in sent] == [7]
    assert answer == {"replayed": 1, "unavailable": [[8, 8], [10, 12]], "pending": [[9, 9]], "remaining": []}
    with pytest.raises(ValidationError, match="first <= last"):
        replay_ranges(outbox, {"ranges": [[5, 2]]}, publish)
