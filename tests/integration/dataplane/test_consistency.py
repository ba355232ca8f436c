"""API v2 guarantees against real Kafka with two replicas as real processes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from kvs2.client import Client, Event
from kvs2.kafka_io import Admin
from kvs2.partitioner import partition_for

from tests.harness.common import CheckedThread
from tests.harness.kafka import KafkaBroker
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica


def test_partitions_match_kafkas_murmur2_partitioner(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    with a.client() as c:
        for i in range(200):
            key = f"user:{i}:{'x' * (i % 7)}".encode()
            assert c.set(key, b"v").partition == partition_for(key, PARTITIONS), key


def test_read_your_writes_through_another_replica(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    with a.client() as ca, b.client() as cb, Client(b.target, read_your_writes=True) as session:
        for i in range(150):
            key = f"ryw-{i % 10}".encode()
            value = f"v{i}".encode()
            written = ca.set(key, value)
            seen = cb.get(key, after=[written])
            assert seen is not None
            assert seen.data == value, f"iteration {i}: read {seen.data!r} after writing {value!r}"
        # The session client tracks its own writes: write via B's session, read via B with no token.
        for i in range(50):
            session.set(b"session-key", f"s{i}".encode())
            got = session.get(b"session-key")
            assert got is not None
            assert got.data == f"s{i}".encode()


def test_linearizable_reads_never_go_back_in_time(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    acked: list[tuple[float, int]] = []  # (time acknowledged, value)
    stop = threading.Event()

    def writer() -> None:
        with a.client() as c:
            n = 0
            while not stop.is_set():
                n += 1
                c.set(b"counter", str(n).encode())
                acked.append((time.monotonic(), n))

    thread = CheckedThread(writer, name="writer")
    thread.start()
    reads: list[tuple[float, int]] = []  # (time the read started, value read)
    try:
        with b.client() as c:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                thread.check()
                started = time.monotonic()
                got = c.get(b"counter", consistency="linearizable")
                reads.append((started, 0 if got is None else int(got.data)))
    finally:
        stop.set()
        thread.join(timeout=60)  # raises what the writer raised
    assert len(reads) > 20
    assert len(acked) > 20, "the writer hardly wrote: the reads raced nothing"
    last = 0
    for started, value in reads:
        floor = max((v for t, v in acked if t < started), default=0)
        assert value >= floor, f"read {value} at {started}, but {floor} was acknowledged before it began"
        assert value >= last, f"read {value} after having read {last}"
        last = value


def test_range_pages_cover_every_key_exactly_once_under_writes(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    stable = [f"k/{i:04d}".encode() for i in range(300)]
    with a.client() as ca:
        last = None
        for key in stable:
            last = ca.set(key, b"0")
    assert last is not None
    stop = threading.Event()

    churned = [0]

    def churn() -> None:
        with a.client() as c:
            i = 0
            while not stop.is_set():
                c.set(f"k/{i % 300:04d}".encode(), str(i).encode())  # overwrite stable keys
                c.set(f"k/{i % 300:04d}-new-{i}".encode(), b"x")  # insert keys between them
                i += 1
                churned[0] = i

    thread = CheckedThread(churn, name="churn")
    thread.start()
    try:
        with b.client() as cb:
            seen: list[bytes] = []
            token = b""
            first = True
            while first or token:
                page = cb.range(prefix=b"k/", limit=17, page_token=token, after=[last] if first else [])
                first = False
                seen.extend(item.key for item in page.items)
                token = page.next_page_token
                thread.check()
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=60)  # raises what the churn raised
    assert churned[0] > 0, "nothing was written while the pages were read"
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)), "a key appeared on two pages"
    missing = set(stable) - set(seen)
    assert not missing, f"{len(missing)} keys present throughout were never listed"


def test_watch_cut_and_resumed_on_another_replica_misses_and_repeats_nothing(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    writes: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    done = threading.Event()

    def writer() -> None:
        with a.client() as c:
            for i in range(240):
                key = f"w/{i % 37}".encode()
                value = f"{i}".encode()
                w = c.set(key, value)
                writes[w.partition].append((key, value))
                if i % 40 == 0:
                    c.set(b"other/ignored", b"x")
                time.sleep(0.002)
        done.set()

    received: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    resume: dict[int, int] = {}

    def take(events: Client, limit: int | None) -> None:
        count = 0
        for event in events.watch(
            prefix=b"w/", from_=resume or None, progress_interval_ms=100, reconnect=False
        ):
            thread.check()  # a writer that died would leave this watch waiting forever
            _track(event, resume)
            if event.kind == "put":
                assert event.value is not None
                received[event.partition].append((event.key, event.value))
                count += 1
            if limit is not None and count >= limit:
                return
            if limit is None and done.is_set() and event.kind == "progress" and _covers(resume, writes_end):
                return

    # Start watching before any write (the first PROGRESS gives the starting positions).
    with b.client() as cb:
        first = next(iter(cb.watch(prefix=b"w/", progress_interval_ms=100, reconnect=False)))
        assert first.kind == "progress"
        resume.update(first.applied)
    thread = CheckedThread(writer, name="writer")
    thread.start()
    writes_end: dict[int, int] = {}
    with b.client() as cb:
        take(cb, limit=60)  # cut after 60 events
    thread.join(timeout=120)  # raises what the writer raised
    # Every write is acknowledged: Kafka's end offsets say where the watch is complete.
    writes_end.update(Admin({"bootstrap.servers": kafka.bootstrap_servers}).end_offsets(topic, PARTITIONS))
    with a.client() as ca:
        take(ca, limit=None)  # resume on the OTHER replica from the positions we covered
    assert sum(len(w) for w in writes.values()) == 240
    for p in range(PARTITIONS):
        assert received[p] == writes[p], (
            f"partition {p}: watch saw {len(received[p])}, wrote {len(writes[p])}"
        )


def _track(event: Event, resume: dict[int, int]) -> None:
    if event.kind == "progress":
        resume.update(event.applied)
    else:
        resume[event.partition] = event.offset + 1


def _covers(resume: dict[int, int], ends: dict[int, int]) -> bool:
    return bool(ends) and all(resume.get(p, 0) >= end for p, end in ends.items())


def test_bounded_reads_on_a_healthy_idle_replica_stay_satisfied(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """Freshness is free on a healthy replica: idle for longer than the staleness bound, it still proves
    it is caught up (the ingester republishes caught-up times while nothing is written), so a bounded
    read is served — it does not wait for a write that never comes and run into its deadline."""
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    with a.client(timeout=5.0) as c:
        c.set(b"k", b"v")
        for _ in range(3):
            time.sleep(1.5)  # idle past the 1000 ms bound
            value = c.get(b"k", max_lag=0, max_staleness_ms=1000)
            assert value is not None
            assert value.data == b"v"
