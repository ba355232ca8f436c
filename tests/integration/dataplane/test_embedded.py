"""`kvs2.embedded` (issue 12 item 4): an in-process replica equals a pod replica on the same topic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kvs2.client import Client, Event, WriteOp
from kvs2.embedded import EmbeddedReplica
from kvs2.errors import InvalidArgument

from tests.harness.kafka import KafkaBroker
from tests.integration.dataplane.conftest import StartReplica


def _pod_state(client: Client) -> list[tuple[bytes, bytes | None, int]]:
    client.get(b"\x01sync", consistency="linearizable")  # wait until the pod has applied everything
    return [(i.key, i.value, i.revision) for i in client.scan()]


def test_embedded_replica_equals_a_pod_replica_and_serves_the_client_read_api(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, tmp_path: Path
) -> None:
    pod = start_replica(kafka.bootstrap_servers, topic)
    with pod.client() as c:
        # History before the embedded replica exists: it must replay it.
        c.set_many({f"k{i:03}".encode(): f"v{i}".encode() for i in range(200)})
        c.delete(b"k007")
        assert c.set_if(b"k008", b"cas", c.get(b"k008", consistency="linearizable").revision)  # type: ignore[union-attr]

    async def scenario() -> tuple[list[tuple[bytes, bytes | None, int]], list[Event]]:
        async with EmbeddedReplica(kafka.bootstrap_servers, topic, tmp_path / "embedded") as kv:
            await kv.wait_serving(timeout=120)
            # Writes through the embedded replica: read-your-writes at once, from its own LMDB.
            await kv.set(b"mine", b"1")
            assert (await kv.get(b"mine")) is not None
            batch = await kv.write_batch([WriteOp(b"k001", None), WriteOp(b"k002", b"new", if_revision=0)])
            assert [r.status for r in batch.results] == ["published", "condition_failed"]
            assert await kv.get(b"k001") is None  # read-your-writes: waits for the batch's tokens
            assert kv.get_local(b"k001") is None  # so the local LMDB has it too
            with pytest.raises(InvalidArgument):
                await kv.get(b"")
            # A watch on the embedded replica sees a write made through the pod.
            applied = kv.applied
            events: list[Event] = []

            async def follow() -> None:
                async for event in kv.watch(prefix=b"w/", from_=applied, progress_interval_ms=100):
                    if event.kind != "progress":
                        events.append(event)
                        return

            watcher = asyncio.ensure_future(follow())
            with Client(pod.target) as c:
                written = await asyncio.to_thread(c.set, b"w/1", b"watched")
            await asyncio.wait_for(watcher, 60)
            got = await kv.get(b"w/1", after=[written])
            assert got is not None and got.data == b"watched" and got.revision == written.offset + 1
            # Same state as the pod, key by key, once both have applied everything.
            await kv.get(b"\x01sync", consistency="linearizable")
            state = [(i.key, i.value, i.revision) async for i in kv.scan()]
            assert await kv.count() == len(state)
            assert len((await kv.range(limit=10)).items) == 10
            multi = await kv.multi_get([b"k000", b"k007", b"k008"])
            assert [(k, v.data if v else None) for k, v in multi] == [
                (b"k000", b"v0"),
                (b"k007", None),
                (b"k008", b"cas"),
            ]
            return state, events

    state, events = asyncio.run(scenario())
    with pod.client() as c:
        assert state == _pod_state(c)
    assert [(e.kind, e.key, e.value) for e in events] == [("put", b"w/1", b"watched")]
    keys = {k for k, _, _ in state}
    assert b"mine" in keys and b"k001" not in keys and b"k007" not in keys
