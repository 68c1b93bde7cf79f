"""Random damage to the device's state files: whatever is left of them, the device starts.

Outbox, saved window and sequence mark are cut at random lengths or overwritten with random bytes at
random places; opening them again must never raise, must quarantine what it could not read, and the
sequence must never go below the numbers already handed out.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.outbox import Outbox
from edge_agent.state_files import CORRUPT_MARK, KEEP_QUARANTINED, quarantine, take_quarantined
from edge_agent.window import Sample, WindowBuffer

FAULTS = settings.get_profile("gridedge-faults")

damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("overwrite"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=8192)),
)


def _apply(path: Path, how: tuple) -> None:
    size = path.stat().st_size
    if how[0] == "truncate":
        os.truncate(path, int(size * how[1]))
        return
    _, where, garbage = how
    with path.open("r+b") as handle:
        handle.seek(int(size * where))
        handle.write(garbage)


def _outbox_with_messages(path: Path, count: int) -> int:
    outbox = Outbox(path, 1_000_000)
    for _ in range(count):
        outbox.append("summary", "t", lambda seq: (uuid.uuid4().hex, bytes(200)))
    next_seq = outbox.reserve_seq() + 1
    outbox.close()
    return next_seq


@FAULTS
@given(how=damage, count=st.integers(1, 60))
def test_a_damaged_outbox_always_opens_and_never_reuses_a_sequence_number(how: tuple, count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outbox.sqlite3"
        next_seq = _outbox_with_messages(path, count)
        take_quarantined()
        _apply(path, how)
        reopened = Outbox(path, 1_000_000)
        seq = reopened.reserve_seq()
        reopened.append("alert", "t", lambda seq: (uuid.uuid4().hex, b"{}"))
        reopened.close()
        quarantined = take_quarantined()
        # SQLite keeps no checksums: a byte flipped inside a row is read as a valid value, and only
        # damage it can see (or a cut file) is quarantined. Whatever it saw, the numbers go on.
        if quarantined:
            assert seq >= next_seq, "the sequence restarted below the numbers already used"
        kept = [p for p in Path(folder).iterdir() if CORRUPT_MARK in p.name and p.name.startswith("outbox.sqlite3")]
        assert len(kept) == sum(1 for n in quarantined if n.kept_as is not None)


@FAULTS
@given(how=damage)
def test_a_damaged_sequence_mark_never_stops_the_outbox(how: tuple) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outbox.sqlite3"
        next_seq = _outbox_with_messages(path, 3)
        _apply(Path(folder) / "outbox-sequence.json", how)
        take_quarantined()
        assert Outbox(path, 1_000_000).reserve_seq() >= next_seq


@FAULTS
@given(how=damage, filled=st.integers(1, 12))
def test_a_damaged_saved_window_restores_or_starts_empty_never_raises(how: tuple, filled: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "window.npz"
        saved = WindowBuffer(("a", "b"), 8, 60)
        for k in range(filled):
            saved.append(Sample(600 + 60 * k, np.array([k, -k], dtype=np.float32)))
        saved.save(path)
        _apply(path, how)
        take_quarantined()
        fresh = WindowBuffer(("a", "b"), 8, 60)
        if fresh.restore(path):
            values, starts = fresh.window()
            assert values.shape == (8, 2) and starts.shape == (8,)
            fresh.append(Sample(int(starts[-1]) + 60, np.zeros(2, dtype=np.float32)))  # still usable
        else:
            assert len(fresh) == 0
            assert not path.exists() and [n.original for n in take_quarantined()] == [path]


def test_repeated_damage_keeps_only_the_newest_quarantined_copies(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    for attempt in range(KEEP_QUARANTINED + 3):
        path.write_text(f"damaged {attempt}")
        path.with_name(path.name + "-wal").write_text(f"wal {attempt}")
        quarantine(path, "not a database", companions=("-wal",))
    take_quarantined()
    kept = sorted(tmp_path.glob(f"outbox.sqlite3{CORRUPT_MARK}*"))
    wal_kept = sorted(tmp_path.glob(f"outbox.sqlite3-wal{CORRUPT_MARK}*"))
    assert [p.read_text() for p in kept] == [f"damaged {k}" for k in range(3, KEEP_QUARANTINED + 3)]
    assert [p.read_text() for p in wal_kept] == [f"wal {k}" for k in range(3, KEEP_QUARANTINED + 3)]
