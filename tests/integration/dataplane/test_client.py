"""The Python client against real replicas: AsyncClient, reads retried on UNAVAILABLE, writes never
retried, and a Watch that reconnects and resumes by itself — after its replica was killed and restarted,
and onto another replica of a multi-address target."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import cast

import grpc
import pytest
from kvs2.client import AsyncClient, Client, Event

from tests.harness.common import CheckedThread, free_port, wait_until
from tests.harness.kafka import KafkaBroker
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica


async def test_async_client_reads_writes_cas_range_and_watch(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    async with AsyncClient(a.target) as ca, AsyncClient(b.target, read_your_writes=True) as cb:
        written = await ca.set(b"async/k", b"1")
        got = await cb.get(b"async/k", after=[written])  # through the other replica
        assert got is not None
        assert (got.data, got.revision) == (b"1", written.offset + 1)

        swapped = await cb.set_if(b"async/k", b"2", got.revision)
        assert swapped.applied
        stale = await cb.set_if(b"async/k", b"3", got.revision)
        assert not stale.applied
        assert stale.revision == swapped.revision
        assert await cb.multi_get([b"async/k", b"async/missing"]) == [
            (b"async/k", (await cb.get(b"async/k"))),
            (b"async/missing", None),
        ]
        value = await cb.get(b"async/k")  # read-your-writes: the session remembers its CAS
        assert value is not None
        assert (value.data, value.revision) == (b"2", swapped.revision)

        page = await cb.range(prefix=b"async/", consistency="linearizable")
        assert [(i.key, i.value) for i in page.items] == [(b"async/k", b"2")]
        removed = await cb.delete_if(b"async/k", swapped.revision)
        assert removed.applied
        assert await cb.get(b"async/k") is None

        # Scan, then watch from the page's positions: the delete that followed the page comes next.
        # An async generator: closed explicitly so its stream ends before the channel does.
        events = cast(AsyncGenerator[Event, None], ca.watch(prefix=b"async/", from_=page.applied))
        async for event in events:
            if event.kind != "progress":
                assert (event.kind, event.key, event.offset) == ("delete", b"async/k", removed.written.offset)
                break
        await events.aclose()


def test_reads_retry_on_unavailable_until_the_replica_answers(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """Nothing listens on the target yet (UNAVAILABLE), then a replica starts there: the read that was
    already under way returns the value instead of the error."""
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    with b.client() as cb:
        written = cb.set(b"retry/k", b"v")
    port = free_port()
    seen: list[object] = []

    def read() -> None:
        with Client(f"127.0.0.1:{port}", timeout=150.0, retries=60) as c:  # timeout: the whole read
            seen.append(c.get(b"retry/k", after=[written]))

    reader = CheckedThread(read, name="reader")
    reader.start()
    start_replica(kafka.bootstrap_servers, topic, "a", port=port, wait=False)
    reader.join(timeout=180)  # raises the reader's error, e.g. UNAVAILABLE had it not retried
    assert len(seen) == 1
    value = seen[0]
    assert value is not None and getattr(value, "data", None) == b"v"


def test_writes_are_never_retried(kafka: KafkaBroker, topic: str, start_replica: StartReplica) -> None:
    """The same setting as above, for a Set: it fails with UNAVAILABLE and is not sent again once a
    replica listens — an unacknowledged write may still be applied, so only the caller may repeat it."""
    port = free_port()
    errors: list[grpc.RpcError] = []

    def write() -> None:
        with Client(f"127.0.0.1:{port}", timeout=30.0, retries=60) as c:
            try:
                c.set(b"never-retried", b"v")
            except grpc.RpcError as exc:
                errors.append(exc)

    writer = CheckedThread(write, name="writer")
    writer.start()
    a = start_replica(kafka.bootstrap_servers, topic, "a", port=port)
    writer.join(timeout=120)
    assert len(errors) == 1, "the write succeeded: it was sent again once the replica listened"
    assert isinstance(errors[0], grpc.Call) and errors[0].code() == grpc.StatusCode.UNAVAILABLE
    with a.client() as c:
        assert c.get(b"never-retried", consistency="linearizable") is None


def _follow(target: str, events: list[Event], want: int, *, reconnect: bool = True) -> CheckedThread:
    """A thread that watches `w/` from the topic's start and keeps the first `want` changes."""

    def follow() -> None:
        with Client(target) as c:
            start = dict.fromkeys(range(PARTITIONS), 0)
            for event in c.watch(prefix=b"w/", from_=start, progress_interval_ms=200, reconnect=reconnect):
                if event.kind != "progress":
                    events.append(event)
                    if len(events) >= want:
                        return

    thread = CheckedThread(follow, name=f"watch-{target}")
    thread.start()
    return thread


def _seen(watcher: CheckedThread, events: list[Event], n: int) -> bool:
    watcher.check()  # a watch that died must fail the wait at once, not time it out
    return len(events) >= n


def _changes(events: list[Event]) -> list[tuple[bytes, bytes | None]]:
    return sorted((e.key, e.value) for e in events)


def test_watch_reconnects_and_resumes_after_its_replica_is_killed_and_restarted(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    events: list[Event] = []
    watcher = _follow(a.target, events, want=3)
    with b.client() as cb:
        cb.set(b"w/1", b"before")
        wait_until(lambda: _seen(watcher, events, 1), timeout=60, what="the first event")
        a.kill()
        cb.set(b"w/2", b"while down")
        a.start()
        a.wait_serving()
        cb.set(b"w/3", b"after")
    watcher.join(timeout=120)
    assert _changes(events) == [(b"w/1", b"before"), (b"w/2", b"while down"), (b"w/3", b"after")]


def test_without_reconnect_a_killed_replica_ends_the_watch_with_unavailable(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """The contrast that shows the test above depends on reconnecting."""
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    events: list[Event] = []
    watcher = _follow(a.target, events, want=2, reconnect=False)
    with a.client() as ca:
        ca.set(b"w/1", b"x")
    wait_until(lambda: _seen(watcher, events, 1), timeout=60, what="the first event")
    a.kill()
    with pytest.raises(AssertionError, match="helper thread") as info:
        watcher.join(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, grpc.Call) and cause.code() == grpc.StatusCode.UNAVAILABLE


def test_watch_moves_to_another_address_of_its_target(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """A target with two addresses (what a Service with two endpoints gives): each replica is killed in
    turn, so whichever the watch was on, it had to move to the other one — missing and repeating nothing."""
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    events: list[Event] = []
    watcher = _follow(f"ipv4:{a.target},{b.target}", events, want=3)

    with b.client() as cb:
        cb.set(b"w/1", b"both up")
    wait_until(lambda: _seen(watcher, events, 1), timeout=60, what="the first event")
    a.kill()
    with b.client() as cb:
        cb.set(b"w/2", b"a down")
    wait_until(lambda: _seen(watcher, events, 2), timeout=90, what="the event written while a was down")
    a.start()
    a.wait_serving()
    b.kill()
    with a.client() as ca:
        ca.set(b"w/3", b"b down")
    watcher.join(timeout=120)
    assert _changes(events) == [(b"w/1", b"both up"), (b"w/2", b"a down"), (b"w/3", b"b down")]
