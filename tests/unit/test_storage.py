from __future__ import annotations

from pathlib import Path

import pytest
from kvs2.storage import Conditional, Outcome, Record, Replica, TopicIdentity, side_key

IDENT = TopicIdentity("t", "id-1", 3)


@pytest.fixture
def replica(tmp_path: Path) -> Replica:
    r = Replica(tmp_path / "db", map_size=1 << 20)
    r.reset(IDENT)
    return r


def test_apply_stores_values_revisions_and_offsets_together(replica: Replica) -> None:
    replica.apply([Record(b"a", b"1", 0, 0), Record(b"b", b"", 1, 4)], {0: 1, 1: 5})
    assert replica.get(b"a") is not None
    assert (replica.get(b"a").value, replica.get(b"a").revision) == (b"1", 1)  # type: ignore[union-attr]
    empty = replica.get(b"b")
    assert empty is not None and empty.value == b"" and empty.revision == 5  # empty value is a value
    assert replica.next_offsets() == {0: 1, 1: 5}


def test_tombstone_deletes_and_later_write_wins(replica: Replica) -> None:
    replica.apply([Record(b"k", b"1", 0, 0), Record(b"k", None, 0, 1)], {0: 2})
    assert replica.get(b"k") is None
    replica.apply([Record(b"k", b"2", 0, 2), Record(b"gone", None, 0, 3)], {0: 4})
    entry = replica.get(b"k")
    assert entry is not None and (entry.value, entry.revision) == (b"2", 3)


def test_multi_get_keeps_order_and_duplicates(replica: Replica) -> None:
    replica.apply([Record(b"a", b"1", 0, 0)], {0: 1})
    got = replica.multi_get([b"a", b"missing", b"a"])
    assert [None if e is None else e.value for e in got] == [b"1", None, b"1"]


def test_unstorable_keys_are_counted_not_silently_dropped(replica: Replica) -> None:
    too_long = b"x" * (replica.max_key_bytes + 1)
    skipped = replica.apply([Record(too_long, b"v", 0, 0), Record(b"", b"v", 0, 1)], {0: 2}).skipped
    assert skipped == 2
    assert replica.skipped_records() == 2
    assert replica.next_offsets() == {0: 2}


def test_identity_survives_reopen_and_reset_wipes(tmp_path: Path) -> None:
    r = Replica(tmp_path / "db", map_size=1 << 20)
    assert r.identity() is None
    r.reset(IDENT)
    r.apply([Record(b"a", b"1", 0, 0)], {0: 1})
    r.close()
    r = Replica(tmp_path / "db", map_size=1 << 20)
    assert r.identity() == IDENT
    assert r.get(b"a") is not None
    r.reset(TopicIdentity("t", "id-2", 3))
    assert r.get(b"a") is None and r.next_offsets() == {}
    r.invalidate()
    assert r.identity() is None


def test_map_grows_when_full(tmp_path: Path) -> None:
    r = Replica(tmp_path / "db", map_size=64 * 1024)
    r.reset(IDENT)
    records = [Record(f"k{i}".encode(), b"v" * 1000, 0, i) for i in range(500)]
    r.apply(records, {0: 500})
    assert len(r.items()) == 500


def test_scan_pages_and_count_reflect_offsets(replica: Replica) -> None:
    replica.apply([Record(k, b"v" + k, 0, i) for i, k in enumerate([b"a", b"b", b"c", b"d"])], {0: 4})
    page = replica.scan(b"b", None, 2)
    assert [k for k, _ in page.items] == [b"b", b"c"]
    assert page.next_key == b"d"
    assert page.applied == {0: 4, 1: 0, 2: 0}  # every partition, 0 where nothing was applied yet
    last = replica.scan(b"d", b"z", 2, keys_only=True)
    assert last.items == [(b"d", None)]
    assert last.next_key is None
    assert replica.count(b"", b"c") == (2, {0: 4, 1: 0, 2: 0})


def test_change_history_in_order_with_deletes(replica: Replica) -> None:
    replica.apply(
        [Record(b"a", b"1", 0, 0), Record(b"a", None, 0, 1), Record(b"b", b"2", 1, 0)], {0: 2, 1: 1}
    )
    changes = replica.changes(0, 0, 10)
    assert [(c.offset, c.key, c.value) for c in changes] == [(0, b"a", b"1"), (1, b"a", None)]
    assert [c.key for c in replica.changes(1, 0, 10)] == [b"b"]
    assert replica.changes(0, 1, 2)[0].value is None
    assert replica.history_start() == {0: 0, 1: 0}


def test_a_gap_in_offsets_moves_history_start(replica: Replica) -> None:
    replica.apply([Record(b"a", b"1", 0, 0)], {0: 1})
    replica.apply([Record(b"a", b"2", 0, 5)], {0: 6})  # offsets 1..4 were compacted away
    assert replica.history_start() == {0: 5}
    replica.apply([Record(b"x", b"1", 2, 7)], {2: 8})  # first record seen of partition 2 is at 7
    assert replica.history_start()[2] == 7


def test_history_is_trimmed(tmp_path: Path) -> None:
    r = Replica(tmp_path / "db", map_size=1 << 22, history=10)
    r.reset(IDENT)
    r.apply([Record(f"k{i}".encode(), b"v", 0, i) for i in range(25)], {0: 25})
    assert r.history_start() == {0: 15}
    assert [c.offset for c in r.changes(0, 0, 100)] == list(range(15, 25))


def _cond(key: bytes, value: bytes | None, offset: int, expected: int, rid: bytes) -> Record:
    return Record(
        key, value if value is not None else b"", 0, offset, Conditional(rid, expected, value is None)
    )


def test_conditional_records_apply_only_when_the_revision_matches(replica: Replica) -> None:
    first = replica.apply([_cond(b"k", b"a", 0, 0, b"r1" * 8)], {0: 1})  # create-if-absent
    assert first.outcomes == [Outcome(b"r1" * 8, True, 1, 0, 0)]
    lost = replica.apply([_cond(b"k", b"b", 1, 0, b"r2" * 8)], {0: 2})  # exists now: fails
    assert lost.outcomes == [Outcome(b"r2" * 8, False, 1, 0, 1)]
    entry = replica.get(b"k")
    assert entry is not None
    assert (entry.value, entry.revision) == (b"a", 1)
    won = replica.apply([_cond(b"k", None, 2, 1, b"r3" * 8)], {0: 3})  # conditional delete
    assert won.outcomes[0].applied
    assert replica.get(b"k") is None
    assert replica.garbage() == [side_key(b"r2" * 8, b"k")]  # only the failed record is garbage


def test_a_plain_write_makes_earlier_conditional_records_garbage(replica: Replica) -> None:
    replica.apply([_cond(b"k", b"a", 0, 0, b"r1" * 8), Record(b"k", b"plain", 0, 1)], {0: 2})
    assert replica.garbage() == [side_key(b"r1" * 8, b"k")]
    tombstone = Record(b"k", None, 0, 2, Conditional(b"r1" * 8, 0, False, tombstone=True))
    replica.apply([tombstone], {0: 3})
    assert replica.garbage() == []
    entry = replica.get(b"k")
    assert entry is not None
    assert entry.value == b"plain"  # a clean-up tombstone never touches data


def test_change_history_is_bounded_by_bytes_oldest_first(tmp_path: Path) -> None:
    r = Replica(tmp_path / "bounded", map_size=1 << 24, history_bytes=256 * 1024)
    r.reset(TopicIdentity("t", "id", 2))
    value = b"v" * 4000
    for i in range(200):
        r.apply([Record(f"k{i}".encode(), value, i % 2, i // 2)], {i % 2: i // 2 + 1})
    assert len(r.items()) == 200  # data is never trimmed
    starts = r.history_start()
    assert 0 < starts[0] < 100 and 0 < starts[1] < 100  # both partitions lost their oldest changes
    for p in (0, 1):
        kept = r.changes(p, starts[p], 100, limit=1000)
        assert [c.offset for c in kept] == list(range(starts[p], 100))  # complete from the start on
    assert sum(len(r.changes(p, 0, 100, limit=1000)) for p in (0, 1)) * 4000 <= 256 * 1024
    r.close()
