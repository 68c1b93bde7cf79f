"""The ``replay`` command: republish retained messages the fleet is missing.

The fleet finds holes in a device's sequence numbers and names them as ranges. The device republishes
every retained message in them as it was first sent, with its original message id and seq but
``is_historical`` true (receivers deduplicate on the id), and answers which sequence numbers it does not
hold: past the retention window, or never a stored message at all (status, will and command results
take sequence numbers too). Numbers still waiting in the outbox are reported as pending: the normal
delivery sends them. At most ``max_messages`` are republished per command; the rest are ``remaining``
for the next request.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import Field, JsonValue, model_validator

from edge_agent.messages import MAX_COUNT
from edge_agent.outbox import Outbox
from edge_agent.yamlconfig import StrictModel

MAX_REPLAY_RANGES = 100
MAX_REPLAY_MESSAGES = 1000

SeqRange = tuple[int, int]


class ReplayArgs(StrictModel):
    """Arguments of ``replay``."""

    ranges: list[tuple[int, int]] = Field(..., min_length=1, max_length=MAX_REPLAY_RANGES)
    """Inclusive [first, last] sequence ranges to republish."""

    @model_validator(mode="after")
    def _ordered_ranges(self) -> ReplayArgs:
        for first, last in self.ranges:
            if not 0 <= first <= last <= MAX_COUNT:
                raise ValueError(f"range [{first}, {last}] must satisfy 0 <= first <= last <= {MAX_COUNT}")
        return self


def historical_copy(payload: bytes) -> bytes:
    """The payload as resent: same message id and seq, flagged ``is_historical``."""
    document = json.loads(payload)
    document["is_historical"] = True
    return json.dumps(document, separators=(",", ":")).encode()


def _as_ranges(seqs: list[int]) -> list[SeqRange]:
    ranges: list[SeqRange] = []
    for seq in seqs:
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def _missing(first: int, last: int, present: list[int]) -> list[SeqRange]:
    """The parts of [first, last] not in the sorted ``present``."""
    holes, cursor = [], first
    for seq in present:
        if seq > cursor:
            holes.append((cursor, seq - 1))
        cursor = seq + 1
    if cursor <= last:
        holes.append((cursor, last))
    return holes


def replay_ranges(
    outbox: Outbox,
    args: dict[str, JsonValue],
    publish: Callable[[str, bytes], bool],
    max_messages: int = MAX_REPLAY_MESSAGES,
) -> dict[str, JsonValue]:
    """Republish the retained messages in the requested ranges through ``publish(topic, payload)``.

    Returns ``{"replayed": n, "unavailable": [[a, b], ...], "pending": [...], "remaining": [...]}``.
    """
    request = ReplayArgs.model_validate(args)
    replayed, unavailable, pending, remaining = 0, [], [], []
    for first, last in request.ranges:
        budget = max_messages - replayed
        if budget <= 0:
            remaining.append((first, last))
            continue
        rows = outbox.retained(first, last, budget)
        covered_to = last
        if len(rows) == budget and rows and rows[-1].seq < last:
            # The budget ran out inside this range: the rest is asked for again, not declared lost.
            covered_to = rows[-1].seq
            remaining.append((covered_to + 1, last))
        failed = [row.seq for row in rows if not publish(row.topic, historical_copy(row.payload))]
        replayed += len(rows) - len(failed)
        remaining.extend(_as_ranges(failed))
        waiting = outbox.pending_seqs(first, covered_to)
        pending.extend(_as_ranges(waiting))
        held = sorted([row.seq for row in rows] + waiting)
        unavailable.extend(_missing(first, covered_to, held))
    return {
        "replayed": replayed,
        "unavailable": [[a, b] for a, b in unavailable],
        "pending": [[a, b] for a, b in pending],
        "remaining": [[a, b] for a, b in remaining],
    }
