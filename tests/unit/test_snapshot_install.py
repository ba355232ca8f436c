"""Installing a received snapshot (kvs2.snapshot.Incoming): only a complete, verified copy replaces the
store; anything else raises SnapshotInvalid and leaves the data directory as it was."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import xxhash
from kvs2.snapshot import INCOMING, SHA256, XXH3_128, Header, Incoming, SnapshotInvalid, Trailer
from kvs2.storage import Record, Replica, TopicIdentity

IDENT = TopicIdentity("t", "id-1", 2)


def _snapshot(tmp_path: Path) -> tuple[Header, bytes]:
    peer = Replica(tmp_path / "peer", map_size=1 << 22)
    peer.reset(IDENT)
    peer.apply([Record(b"k", b"v", 0, 0), Record(b"j", b"w", 1, 0)], {0: 1, 1: 1})
    out = tmp_path / "copy"
    out.mkdir()
    positions = peer.copy_to(out)
    peer.close()
    data = (out / "data.mdb").read_bytes()
    return Header(IDENT, positions, len(data)), data


def _receive(
    target: Path, header: Header, data: bytes, trailer: Trailer, start: dict[int, int] | None = None
) -> Header:
    incoming = Incoming(target)
    try:
        incoming.begin(header)
        for i in range(0, len(data), 4096):
            incoming.write(data[i : i + 4096])
        return incoming.finish(trailer, IDENT, start or {})
    finally:
        incoming.abort()


def test_verified_snapshot_is_installed_with_its_positions(tmp_path: Path) -> None:
    header, data = _snapshot(tmp_path)
    target = tmp_path / "new"
    _receive(target, header, data, Trailer(xxhash.xxh3_128(data).digest(), XXH3_128, len(data)))
    replica = Replica(target, map_size=1 << 22)
    assert replica.identity() == IDENT
    assert replica.next_offsets() == {0: 1, 1: 1}
    assert [k for k, _ in replica.items()] == [b"j", b"k"]
    replica.close()
    assert not (target / INCOMING).exists()


def test_a_streamed_snapshot_announces_its_size_in_the_trailer(tmp_path: Path) -> None:
    header, data = _snapshot(tmp_path)
    installed = _receive(
        tmp_path / "new",
        replace(header, size=0),
        data,
        Trailer(xxhash.xxh3_128(data).digest(), XXH3_128, len(data)),
    )
    assert installed.size == len(data)


@pytest.mark.parametrize(
    "problem",
    [
        "corrupted",
        "truncated",
        "truncated, streamed",
        "other topic",
        "positions gone",
        "sha256 from an older peer",
    ],
)
def test_bad_snapshot_is_rejected_and_the_old_store_kept(tmp_path: Path, problem: str) -> None:
    header, data = _snapshot(tmp_path)
    target = tmp_path / "new"
    old = Replica(target, map_size=1 << 22)
    old.reset(TopicIdentity("t", "old-id", 2))
    old.close()
    trailer = Trailer(xxhash.xxh3_128(data).digest(), XXH3_128, len(data))
    start: dict[int, int] = {}
    if problem == "corrupted":
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    elif problem == "truncated":
        data = data[: len(data) // 2]
    elif problem == "truncated, streamed":  # no size in the header; the trailer's counts
        data = data[: len(data) // 2]
        header = replace(header, size=0)
    elif problem == "sha256 from an older peer":
        trailer = Trailer(hashlib.sha256(data).digest(), SHA256)
    elif problem == "other topic":
        header = Header(TopicIdentity("t", "id-2", 2), header.positions, header.size)
    else:
        start = {0: 5}
    with pytest.raises(SnapshotInvalid):
        _receive(target, header, data, trailer, start)
    kept = Replica(target, map_size=1 << 22)
    assert kept.identity() == TopicIdentity("t", "old-id", 2)
    kept.close()
    assert not (target / INCOMING).exists()


def test_peers_expand_to_addresses_and_skip_this_replica() -> None:
    from kvs2.bootstrap import expand_peers

    assert expand_peers(["localhost:7000", "127.0.0.1:7001", "127.0.0.1:7000"], "127.0.0.1:7001") in (
        ["127.0.0.1:7000", "[::1]:7000"],
        ["[::1]:7000", "127.0.0.1:7000"],
        ["127.0.0.1:7000"],
    )
