"""A damaged outbox never stops the device nor restarts its sequence (issue 12 item 7).

Each case damages a real outbox file the way the adversarial run did (cut in half, a garbage header,
4 KiB of garbage among its pages, cut to 0 bytes, deleted) and opens it again: the damaged file is kept
as ``<name>.corrupt-<time>``, a fresh outbox works, the next sequence number is above every number the
lost one handed out, and one quarantine notice waits for the agent's alert.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edge_agent.state_files import CORRUPT_MARK, SEQUENCE_BLOCK, take_quarantined

QUEUED = 179


def _filled_outbox(path: Path) -> int:
    """An outbox holding QUEUED messages, closed cleanly (WAL checkpointed); returns the next seq."""
    outbox = Outbox(path, 1_000_000)
    for _ in range(QUEUED):
        outbox.append("summary", "t/summary", lambda seq: (uuid.uuid4().hex, f"{seq:08d}".encode().ljust(300, b".")))
    next_seq = outbox.reserve_seq() + 1
    outbox.close()
    return next_seq


def _cut_in_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _garbage_header(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.write(os.urandom(100))


def _garbage_inside(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(3 * 4096)
        handle.write(os.urandom(4096))


def _cut_to_zero(path: Path) -> None:
    os.truncate(path, 0)


@pytest.mark.parametrize("damage", [_cut_in_half, _garbage_header, _garbage_inside, _cut_to_zero])
def test_a_damaged_outbox_is_quarantined_and_the_sequence_goes_on(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = tmp_path / "outbox.sqlite3"
    next_seq = _filled_outbox(path)
    take_quarantined()
    damage(path)

    reopened = Outbox(path, 1_000_000)
    assert reopened.reserve_seq() >= next_seq, "the sequence restarted below the numbers already used"
    reopened.append("alert", "t/alert", lambda seq: (uuid.uuid4().hex, b"{}"))
    assert reopened.stats().depth == 1
    reopened.close()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(f"outbox.sqlite3{CORRUPT_MARK}")]
    assert len(kept) == 1
    notices = take_quarantined()
    assert [n.original for n in notices] == [path] and notices[0].kept_as == kept[0]


def test_a_deleted_outbox_resumes_above_the_sequence_mark(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    next_seq = _filled_outbox(path)
    take_quarantined()
    path.unlink()
    reopened = Outbox(path, 1_000_000)
    assert reopened.reserve_seq() >= next_seq
    assert [n.kept_as for n in take_quarantined()] == [None]


def test_a_garbage_sequence_mark_is_quarantined_and_the_outbox_keeps_its_numbers(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    next_seq = _filled_outbox(path)
    take_quarantined()
    mark = tmp_path / "outbox-sequence.json"
    mark.write_bytes(b"\x00\xff garbage")
    reopened = Outbox(path, 1_000_000)
    assert reopened.reserve_seq() == next_seq  # the healthy outbox numbers on, without a jump
    assert [n.original for n in take_quarantined()] == [mark]
    assert reopened.sequence_mark.ceiling > next_seq


def test_a_new_device_starts_at_zero_without_a_quarantine(tmp_path: Path) -> None:
    take_quarantined()
    assert Outbox(tmp_path / "outbox.sqlite3", 1_000).reserve_seq() == 0
    assert take_quarantined() == []


def test_an_outbox_cut_inside_its_header_is_not_taken_for_a_new_one(tmp_path: Path) -> None:
    """Found by the fault suite: SQLite opens a file of a few bytes as an empty database."""
    path = tmp_path / "outbox.sqlite3"
    next_seq = _filled_outbox(path)
    take_quarantined()
    os.truncate(path, 7)
    assert Outbox(path, 1_000_000).reserve_seq() >= next_seq
    assert [n.original for n in take_quarantined()] == [path]


def test_an_outbox_cut_by_a_few_bytes_is_not_read_as_an_older_one(tmp_path: Path) -> None:
    """Found by the soak run: a cut last page opened cleanly, with the sequence counter one step back."""
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, 1_000_000)
    outbox.append("summary", "t", lambda seq: (uuid.uuid4().hex, b"{}"))
    next_seq = outbox.reserve_seq() + 1
    outbox.close()
    take_quarantined()
    os.truncate(path, path.stat().st_size - 3)
    assert Outbox(path, 1_000_000).reserve_seq() >= next_seq
    assert [n.original for n in take_quarantined()] == [path]


def test_a_counter_set_back_inside_the_file_never_goes_below_the_sequence_mark(tmp_path: Path) -> None:
    """A flipped byte SQLite cannot see may set the recorded counter back; the mark bounds it."""
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, 10_000)
    for _ in range(SEQUENCE_BLOCK + 10):
        outbox.reserve_seq()
    outbox.close()
    with sqlite3.connect(path) as damage:  # the counter set back, in a file SQLite finds healthy
        damage.execute("UPDATE counters SET value=0 WHERE name='next_seq'")
    assert Outbox(path, 10_000).reserve_seq() >= SEQUENCE_BLOCK + 1
