"""The Redis front door in process, driven by a real client library (redis-py's asyncio client) over
loopback: a real LMDB replica and the fake producer of the unit rig (no Kafka)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from kvs2.config import Limits, ServeSettings
from kvs2.core import Store
from kvs2.errors import ConfigError
from kvs2.progress import Progress, Snapshot
from kvs2.redis_server import RedisFront
from kvs2.storage import Record, Replica, TopicIdentity
from redis.exceptions import BusyLoadingError, ResponseError

from tests.unit.conftest import FakeWriter


async def cmd(r: aioredis.Redis, *args: bytes | str) -> Any:
    """`execute_command` (untyped in redis-py)."""
    return await r.execute_command(*args)  # type: ignore[no-untyped-call]


@dataclass
class Front:
    port: int
    server: RedisFront
    writer: FakeWriter
    progress: Progress
    end_offsets: dict[int, int]

    def client(self, protocol: int = 2) -> aioredis.Redis:
        return aioredis.Redis(port=self.port, protocol=protocol, retry_on_error=[])


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    replica = Replica(tmp_path / "db", map_size=1 << 22)
    replica.reset(TopicIdentity("t", "id", 1))
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True, partitions=1, topic_id="id"))
    writer = FakeWriter(replica, progress)
    end_offsets: dict[int, int] = {}
    store = Store(
        replica,
        writer,
        progress,
        Limits(max_multiget_keys=3),
        end_offsets=lambda parts: {p: end_offsets.get(p, 0) for p in parts},
    )
    server = RedisFront(store, timeout=1.0, topic="t", listen="127.0.0.1:0")
    port = await server.serve("127.0.0.1", 0, reuse_port=False)
    yield Front(port, server, writer, progress, end_offsets)
    await server.close(1.0)
    replica.close()


async def _raw(port: int, data: bytes, until: bytes) -> bytes:
    """Send bytes on a plain socket; read until `until` has arrived or the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    while until not in got:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            break
        got += chunk
    writer.close()
    return got


@pytest.mark.parametrize("protocol", [2, 3])
async def test_set_get_mget_exists_del(front: Front, protocol: int) -> None:
    async with front.client(protocol) as r:
        assert await r.set(b"a", b"1") is True
        assert await r.set(b"empty", b"") is True
        assert await r.get(b"a") == b"1"
        assert await r.get(b"empty") == b""
        assert await r.get(b"missing") is None
        assert await r.mget([b"a", b"missing", b"a"]) == [b"1", None, b"1"]
        assert await r.exists(b"a", b"missing", b"a") == 2
        assert await r.delete(b"a", b"missing") == 1
        assert await r.get(b"a") is None
        assert await r.type(b"empty") in (b"string", "string")
        assert await r.dbsize() == 1


async def test_pipelined_replies_come_back_in_order(front: Front) -> None:
    async with front.client() as r:
        pipe = r.pipeline(transaction=False)
        for i in range(300):
            pipe.set(f"k{i}", f"v{i}")
            pipe.get(f"k{i}")
            pipe.ping()
        replies = await pipe.execute()
    assert replies == [x for i in range(300) for x in (True, f"v{i}".encode(), True)]


async def test_a_waiting_write_holds_back_later_replies(front: Front) -> None:
    front.writer.hang = True  # Kafka never acknowledges: the SET ends with our deadline (1 s)
    got = await _raw(front.port, b"SET k v\r\nPING\r\nECHO after\r\n", b"after\r\n")
    first, pong, echo = got.split(b"\r\n", 3)[:3]
    assert first.startswith(b"-TRYAGAIN Kafka did not acknowledge the write")
    assert b"may still be applied" in first
    assert (pong, echo) == (b"+PONG", b"$5")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ((b"GET", b""), "key must not be empty"),
        ((b"SET", b"", b"v"), "key must not be empty"),
        ((b"GET", b"k" * 600), "keys are limited to 511 bytes"),
        ((b"SET", b"k", b"v" * 2000), "largest value the topic accepts is 999 bytes"),
        ((b"MGET", b"a", b"b", b"c", b"d"), "MultiGet asked for 4 keys; the limit is 3"),
        ((b"NOSUCH", b"x", b"y"), "unknown command 'NOSUCH', with args beginning with: 'x' 'y'"),
        ((b"GET",), "wrong number of arguments for 'get' command"),
        ((b"SET", b"k", b"v", b"EX", b"10"), "kvs2 keys do not expire: SET EX is not supported"),
        ((b"SET", b"k", b"v", b"NX", b"XX"), "syntax error"),
        ((b"SCAN", b"0", b"MATCH", b"a?c"), "kvs2 supports a prefix followed by '*'"),
        ((b"SCAN", b"12345"), "invalid cursor 12345"),
        ((b"SELECT", b"1"), "DB index is out of range"),
        ((b"KVS2.GET", b"k", b"AFTER", b"9:0"), "token names partition 9; the topic has partitions 0..0"),
        ((b"KVS2.GET", b"k", b"AFTER", b"LINEARIZABLE"), "syntax error: KVS2.GET key [AFTER P:O ...]"),
        ((b"KVS2.GET", b"k", b"AFTER", b"1:x"), "AFTER takes PARTITION:OFFSET tokens, got '1:x'"),
    ],
)
async def test_bad_requests_are_redis_errors_and_the_connection_lives_on(
    front: Front, command: tuple[bytes, ...], message: str
) -> None:
    async with front.client() as r:
        with pytest.raises(ResponseError) as info:
            await cmd(r, *command)
        assert message in str(info.value)
        assert await r.ping() is True
    assert front.writer.pending == []  # nothing reached "Kafka"


async def test_a_replica_not_serving_answers_loading(front: Front) -> None:
    front.progress.update(Snapshot())
    async with front.client() as r:
        with pytest.raises(BusyLoadingError, match="catching up"):
            await r.get(b"a")
        assert await r.ping() is True
        info = await r.info()
        assert (info["loading"], info["serving"]) == (1, 0)


async def test_kafka_failure_is_tryagain(front: Front) -> None:
    front.writer.fail = True
    got = await _raw(front.port, b"SET k v\r\n", b"\r\n")
    assert got == b"-TRYAGAIN writing to Kafka: all brokers are down\r\n"


async def test_scan_covers_every_key_once(front: Front) -> None:
    async with front.client() as r:
        keys = {f"user:{i:03d}".encode() for i in range(47)} | {b"other", b"user"}
        for key in keys:
            await r.set(key, b"v")
        seen = [k async for k in r.scan_iter(match="user:*", count=5)]
        assert sorted(seen) == sorted(k for k in keys if k.startswith(b"user:"))
        assert len(seen) == len(set(seen))
        assert sorted([k async for k in r.scan_iter(count=7)]) == sorted(keys)
        assert [k async for k in r.scan_iter(match="user")] == [b"user"]
        assert [k async for k in r.scan_iter(match="user:*", _type="hash")] == []


async def test_kvs2_set_returns_the_token_and_kvs2_get_waits_for_it(front: Front) -> None:
    async with front.client(3) as r:
        reply = await cmd(r, "KVS2.SET", "k", "v")
        assert reply == {
            b"status": b"PUBLISHED",
            b"partition": 0,
            b"offset": 0,
            b"revision": 1,
            b"token": b"0:0",
        }
        assert await cmd(r, "KVS2.GET", "k", "AFTER", "0:0", "WITHREVISION") == [b"v", 1]
        with pytest.raises(ResponseError, match=r"TIMEOUT.*partition 0 needs offset 5 applied"):
            await cmd(r, "KVS2.GET", "k", "AFTER", "0:5", "TIMEOUT", "100")
        front.end_offsets[0] = 1
        assert await cmd(r, "KVS2.GET", "k", "LINEARIZABLE") == b"v"
        deleted = await cmd(r, "KVS2.DEL", "k")
        assert (deleted[b"token"], deleted[b"revision"]) == (b"0:1", 2)


async def test_hello_client_info_command(front: Front) -> None:
    async with front.client(3) as r:
        await r.client_setname("tester")
        assert await r.client_getname() in (b"tester", "tester")
        hello = await cmd(r, "HELLO", "3")
        assert (hello[b"proto"], hello[b"server"], hello[b"mode"]) == (3, b"kvs2", b"standalone")
        info = await r.info()
        assert info["serving"] == 1
        assert info["topic"] == "t"
        assert info["partition0"] == {"applied": 0, "end": 0, "lag": 0}  # redis-py parses a=1,b=2
        assert await r.command_count() > 10
        commands = await r.command()  # redis-py's own parser of COMMAND's reply
        assert commands["get"]["arity"] == 2
        assert commands["mget"]["first_key_pos"] == 1
        assert await cmd(r, "CONFIG", "GET", "save") == {b"save": b""}  # redis-benchmark's probe
        with pytest.raises(ResponseError, match="NOPROTO"):
            await cmd(r, "HELLO", "4")
        with pytest.raises(ResponseError, match="without any password configured"):
            await cmd(r, "AUTH", "x")


async def test_quit_and_protocol_errors_close_after_the_reply(front: Front) -> None:
    assert await _raw(front.port, b"PING\r\nQUIT\r\nPING\r\n", b"never") == b"+PONG\r\n+OK\r\n"
    got = await _raw(front.port, b"PING\r\n*1\r\n$x\r\nPING\r\n", b"never")
    assert got == b"+PONG\r\n-ERR Protocol error: invalid length b'x'\r\n"
    got = await _raw(front.port, b"*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n*1\r\n$4\r\nPING\r\n", b"never")
    assert got.startswith(b"+PONG\r\n-ERR Protocol error: ")
    assert got.count(b"\r\n") == 2  # closed after the error: the last PING is not answered


async def test_reads_see_writes_made_behind_the_scenes(front: Front) -> None:
    # An entry applied by the ingester (another replica's write) is visible at once.
    async with front.client() as r:
        front.writer.replica.apply([Record(b"x", b"1", 0, 7)], {0: 8})
        front.progress.update(replace(front.progress.now, applied={0: 8}))
        assert await r.get(b"x") == b"1"


def test_redis_listen_must_be_host_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--redis-listen must be HOST:PORT, got '6379'"):
        ServeSettings("127.0.0.1:9", "t", tmp_path, redis_listen="6379")
    assert ServeSettings("127.0.0.1:9", "t", tmp_path).redis_listen == ""  # off by default


async def test_pipelined_writes_reach_the_producer_in_command_order(front: Front) -> None:
    async with front.client() as r:
        await r.set("k1", "old")
        await r.set("k2", "old")
        pipe = r.pipeline(transaction=False)
        pipe.delete("k1", "k2")
        pipe.set("k1", "new")
        pipe.set("k2", "new")
        assert await pipe.execute() == [2, True, True]
        assert await r.mget(["k1", "k2"]) == [b"new", b"new"]  # not deleted by a DEL sent before


async def test_shutdown_answers_in_flight_commands_then_closes(front: Front) -> None:
    front.writer.hang = True  # the SET waits for Kafka until its deadline (1 s), then answers
    reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
    writer.write(b"PING\r\nSET k v\r\n")
    assert await reader.readline() == b"+PONG\r\n"
    closing = asyncio.create_task(front.server.close(10.0))
    rest = await asyncio.wait_for(reader.read(), 10)  # everything until the server closes
    assert rest.startswith(b"-TRYAGAIN Kafka did not acknowledge the write")
    await closing
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", front.port)  # no longer listening
    writer.close()
