"""The Redis-protocol face of a replica: `kvs2 serve --redis-listen HOST:PORT`.

Why a second front door: a unary gRPC call from Python costs hundreds of µs of server CPU before any work
is done; a RESP command costs a few µs of parsing. Every language has a Redis client, so this opens kvs2
to all of them at a fraction of the cost per call. gRPC stays the primary API; this module only
translates RESP commands to the same `kvs2.core.Store` calls the gRPC servicer makes, and
`kvs2.errors` to Redis error prefixes (`ERROR_PREFIX`, the one table). It has no logic of its own
beyond the shape of Redis's commands.

How a command runs: the connection parses every command that has arrived and starts each at once, in
order. An eventual read (GET, MGET, EXISTS, SCAN) is a Store coroutine that finishes without waiting
(one LMDB transaction), so `RedisFront.start` drives it by hand and answers inline — no Task, what
Python 3.12's eager tasks do. Everything else (writes waiting for Kafka's ack, reads waiting for
freshness), and any command behind one still running on the connection, runs in a Task; the loop starts
Tasks in creation order, so commands start in command order and a pipeline's writes reach the producer
in order (per key, the last one wins; a write behind a DEL starts once the DEL is done, as a Delete
produces only after catching up with Kafka). Replies go out in command order, batched into one socket write
per received chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from kvs2 import __version__, errors
from kvs2.authz import DEFAULT_USER, Policy, Users
from kvs2.authz import READ as READ_RIGHT
from kvs2.authz import RIGHTS as ALL_RIGHTS
from kvs2.authz import WRITE as WRITE_RIGHT
from kvs2.conditional import ConditionalResult
from kvs2.consistency import ReadOptions
from kvs2.core import MAX_PAGE, KeyRange, Store
from kvs2.credentials import ServerContext, ServerTls, peer_identities
from kvs2.kafka_io import WriteToken
from kvs2.resp import (
    EMPTY_ARRAY,
    NULL2,
    NULL3,
    OK,
    PONG,
    FastParser,
    Parser,
    ProtocolError,
    Value,
    array,
    bulk,
    bulk_or_null,
    encode,
    error,
    integer,
    null,
    parser_for,
    simple,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# The one table from core errors to Redis error prefixes; the most specific class wins (MRO order).
# Clients map the prefix to an exception type (redis-py: LOADING → BusyLoadingError, TRYAGAIN →
# TryAgainError, NOPERM → NoPermissionError, everything else → ResponseError).
ERROR_PREFIX: dict[type[errors.Kvs2Error], str] = {
    errors.InvalidArgument: "ERR",
    errors.DeadlineExceeded: "TIMEOUT",
    errors.HistoryUnavailable: "ERR",
    errors.KafkaUnavailable: "TRYAGAIN",  # Kafka unreachable or slow; a write's message says it may land
    errors.Unavailable: "LOADING",  # the replica is catching up with Kafka and not serving reads yet
    errors.FailedPrecondition: "ERR",
    errors.PermissionDenied: "NOPERM",
    errors.ConfigError: "ERR",
    errors.Kvs2Error: "ERR",
}

# What HELLO and INFO report as the Redis version: the command set clients may assume (RESP3, HELLO).
REDIS_COMPAT_VERSION = "7.2.0"
# What `CONFIG GET` reports: kvs2 persists through Kafka and LMDB, not RDB snapshots or an AOF.
CONFIG = {"save": "", "appendonly": "no"}
# SCAN cursors kept per server process (see `_Cursors`).
MAX_CURSORS = 100_000
DEFAULT_SCAN_COUNT = 10
# Replies a connection may owe before the server stops reading from it (a client pipelining faster
# than Kafka acknowledges writes); reading resumes below half of it.
MAX_PENDING = 1024


def error_reply(exc: errors.Kvs2Error) -> bytes:
    for cls in type(exc).__mro__:
        prefix = ERROR_PREFIX.get(cls)
        if prefix is not None:
            return error(prefix, str(exc))
    return error("ERR", str(exc))


def _bad(message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(message)


def _int(raw: bytes, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise _bad(f"{what} is not an integer or out of range") from None


# ----- running a store coroutine eagerly -------------------------------------------------------------
class _Resume:
    """Awaitable that finishes a coroutine which was started by hand and suspended at `waiting`.

    It forwards what the Task sends or throws (results, cancellation) exactly as `await` would."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: object) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:  # forwarded into the coroutine
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def _start_now(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run `coro` up to its first wait right now, and the rest in a Task (see `_Resume`)."""
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        done.set_result(stop.value)
        return done
    return asyncio.ensure_future(_Resume(coro, waiting))


_NOT_STARTED = object()


async def _after(barrier: asyncio.Task[bytes], coro: Coroutine[Any, Any, bytes]) -> bytes:
    """Run `coro` once `barrier`, an earlier write of the same connection, is done (whatever its outcome)."""
    await asyncio.wait({barrier})
    return await coro


async def _finish(coro: Coroutine[Any, Any, bytes], waiting: object = _NOT_STARTED) -> bytes:
    """Run `coro` in a Task: from its start, or from where it suspended at `waiting`."""
    try:
        result: bytes = await (coro if waiting is _NOT_STARTED else _Resume(coro, waiting))
        return result
    except errors.Kvs2Error as exc:
        return error_reply(exc)
    except Exception as exc:
        log.exception("Redis command failed")
        return error("ERR", f"internal error: {exc}")


# ----- SCAN cursors ----------------------------------------------------------------------------------
class _Cursors:
    """SCAN cursors → Range page tokens.

    Why a table: a Range page token is a key (up to 511 bytes), but clients parse SCAN cursors as
    64-bit integers (redis-cli --scan, go-redis, redis-py's `int()`), so the cursor names a token the
    process keeps. Random ids, so a cursor from another process or an earlier run is unknown (a clear
    error), never another scan's position. The oldest cursors are forgotten beyond `limit`.
    """

    def __init__(self, limit: int = MAX_CURSORS) -> None:
        self._limit = limit
        self._tokens: OrderedDict[int, bytes] = OrderedDict()

    def issue(self, token: bytes) -> int:
        cursor = int.from_bytes(os.urandom(8), "big") >> 1 or 1
        self._tokens[cursor] = token
        if len(self._tokens) > self._limit:
            self._tokens.popitem(last=False)
        return cursor

    def token(self, cursor: int) -> bytes:
        token = self._tokens.get(cursor)
        if token is None:
            raise _bad(
                f"invalid cursor {cursor}: kvs2 keeps SCAN cursors per server process (the last "
                f"{self._limit}); continue on the connection that started the scan, or start again from 0"
            )
        self._tokens.move_to_end(cursor)
        return token


def _match_range(pattern: bytes) -> tuple[KeyRange, bytes | None]:
    """SCAN MATCH: `prefix*` (a Range over the prefix) or a literal key; the literal key is returned
    to filter on. Other glob patterns would need a scan of every key and are refused."""
    literal = bytearray()
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == 0x5C and i + 1 < len(pattern):  # backslash escapes the next byte
            literal.append(pattern[i + 1])
            i += 2
            continue
        if c == 0x2A and i == len(pattern) - 1:  # a trailing '*'
            return KeyRange.of(prefix=bytes(literal)), None
        if c in b"*?[":
            raise _bad(
                f"SCAN MATCH {pattern.decode(errors='replace')!r}: kvs2 supports a prefix followed by '*' "
                "(or a literal key), not other glob patterns"
            )
        literal.append(c)
        i += 1
    key = bytes(literal)
    return KeyRange.of(prefix=key), key


# ----- the command table -----------------------------------------------------------------------------
Handler = Callable[["RedisFront", "Connection", list[bytes]], "bytes | Coroutine[Any, Any, bytes]"]


@dataclass(frozen=True)
class Command:
    """A command and what `COMMAND` reports about it (Redis's arity: >0 exact, <0 at least |n|)."""

    handler: Handler
    arity: int
    flags: tuple[str, ...]
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    categories: tuple[str, ...] = ()
    # Run the coroutine's first step inline (see the module's docstring). Only for eventual reads: code
    # below a write may need `asyncio.current_task()` (asyncio.timeout does), so those start as Tasks,
    # which the loop also starts in command order.
    eager: bool = False
    # The command produces its records only after a wait (a Delete first catches up with Kafka, see
    # `Store.delete`): later writes of the connection start once it is done, so they still reach the
    # producer after it, in command order.
    barrier: bool = False


COMMANDS: dict[bytes, Command] = {}


def command(
    name: str,
    arity: int,
    flags: Iterable[str],
    keys: tuple[int, int, int] = (0, 0, 0),
    cats: str = "",
    eager: bool = False,
    barrier: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name.upper().encode()] = Command(
            handler, arity, tuple(flags), *keys, tuple(cats.split()), eager, barrier
        )
        return handler

    return register


READ = ("readonly", "fast")
WRITE = ("write", "denyoom")
CONN = ("noscript", "loading", "stale", "fast")


# reads ------------------------------------------------------------------------------------------------
@command("GET", 2, READ, (1, 1, 1), "@read @string @fast", eager=True)
async def _get(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    entry = await front.store.get(args[1])
    if entry is None:
        return NULL3 if conn.proto >= 3 else NULL2
    value = entry.value
    return b"$%d\r\n%b\r\n" % (len(value), value)


@command("MGET", -2, READ, (1, -1, 1), "@read @string @fast", eager=True)
async def _mget(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    entries = await front.store.multi_get(args[1:])
    nil = NULL3 if conn.proto >= 3 else NULL2
    return array(
        (nil if e is None else b"$%d\r\n%b\r\n" % (len(e.value), e.value) for e in entries), len(entries)
    )


@command("EXISTS", -2, READ, (1, -1, 1), "@read @keyspace @fast", eager=True)
async def _exists(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    entries = await front.store.multi_get(args[1:])
    return integer(sum(e is not None for e in entries))


@command("TYPE", 2, READ, (1, 1, 1), "@read @keyspace @fast", eager=True)
async def _type(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    return simple("none" if await front.store.get(args[1]) is None else "string")


@command("DBSIZE", 1, ("readonly",), cats="@read @keyspace", eager=True)
async def _dbsize(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    result = await front.store.range(KeyRange.of(), count_only=True)
    return integer(result.count)


@command("SCAN", -2, ("readonly",), cats="@read @keyspace", eager=True)
async def _scan(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    cursor = _int(args[1], "cursor")
    key_range, literal = KeyRange.of(), None
    count = DEFAULT_SCAN_COUNT
    only_strings = True
    options = iter(args[2:])
    for option in options:
        name = option.upper()
        value = next(options, None)
        if value is None:
            raise _bad("syntax error")
        if name == b"MATCH":
            key_range, literal = _match_range(value)
        elif name == b"COUNT":
            count = _int(value, "value")
            if count < 1:
                raise _bad("syntax error: COUNT must be at least 1")
        elif name == b"TYPE":
            only_strings = value.lower() == b"string"  # every kvs2 value is a string
        else:
            raise _bad("syntax error")
    token = front.cursors.token(cursor) if cursor else b""
    page = await front.store.range(key_range, limit=min(count, MAX_PAGE), keys_only=True, page_token=token)
    keys = [k for k, _ in page.items if literal is None or k == literal] if only_strings else []
    next_cursor = front.cursors.issue(page.next_page_token) if page.next_page_token else 0
    return b"*2\r\n" + bulk(b"%d" % next_cursor) + array(map(bulk, keys), len(keys))


# writes -----------------------------------------------------------------------------------------------
def _if_revision(args: Sequence[bytes], start: int, allowed: tuple[bytes, ...]) -> tuple[bytes, int | None]:
    """Parse write options from `start`: NX, XX (if allowed) and IFREV n → (mode, expected revision)."""
    mode = b""
    revision: int | None = None
    i = start
    while i < len(args):
        option = args[i].upper()
        if option in (b"NX", b"XX") and option in allowed and not mode:
            mode = option
        elif option == b"IFREV" and i + 1 < len(args) and not mode:
            mode = option
            revision = _int(args[i + 1], "IFREV revision")
            i += 1
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL"):
            raise _bad(f"kvs2 keys do not expire: SET {option.decode()} is not supported")
        elif option == b"GET" and b"NX" in allowed:
            raise _bad("SET ... GET is not supported by kvs2 (read the old value with GET first)")
        else:
            raise _bad("syntax error")
        i += 1
    if mode == b"NX":
        revision = 0
    return mode, revision


async def _write(
    front: RedisFront, key: bytes, value: bytes | None, mode: bytes, revision: int | None
) -> ConditionalResult | WriteToken | None:
    """A plain write (its token), a conditional one (its verdict), or SET XX (None if the key is absent)."""
    store, timeout = front.store, front.timeout
    if mode == b"XX":
        # "Only if it exists": compare-and-set against the revision we see, again with the revision the
        # verdict reports while other writers get in between, until the deadline.
        deadline = time.monotonic() + timeout
        entry = await store.get(key)
        expected = 0 if entry is None else entry.revision
        while expected:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.DeadlineExceeded("SET XX: the key kept changing until the deadline")
            result = await store.write_if(key, value, expected, left)
            if result.applied:
                return result
            expected = result.revision
        return None
    if revision is not None:
        return await store.write_if(key, value, revision, timeout)
    if value is None:
        return await store.delete(key, timeout)
    return await store.set(key, value, timeout)


@command("SET", -3, WRITE, (1, 1, 1), "@write @string @slow")
async def _set(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    mode, revision = _if_revision(args, 3, (b"NX", b"XX"))
    result = await _write(front, args[1], args[2], mode, revision)
    if result is None or (isinstance(result, ConditionalResult) and not result.applied):
        return null(conn.proto)
    return OK


@command("DEL", -2, WRITE, (1, -1, 1), "@write @keyspace @slow", barrier=True)
async def _del(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    keys = args[1:]
    # Redis counts the keys that existed: as this replica sees them when the delete is accepted.
    existed = sum(e is not None for e in await front.store.multi_get(keys))  # also validates every key
    # Each Delete first catches up with Kafka, then produces; the acks are awaited together. Later writes
    # of the connection wait for this command (Command.barrier), so they still reach the producer after it.
    await asyncio.gather(*[_start_now(front.store.delete(k, front.timeout)) for k in keys])
    return integer(existed)


# consistency (kvs2's own commands) --------------------------------------------------------------------
def _token(raw: bytes) -> WriteToken:
    partition, sep, offset = raw.partition(b":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise _bad(f"AFTER takes PARTITION:OFFSET tokens, got {raw.decode(errors='replace')!r}")
    return WriteToken(int(partition), int(offset))


@command("KVS2.GET", -2, ("readonly",), (1, 1, 1), "@read @string")
async def _kvs2_get(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    after: list[WriteToken] = []
    linearizable, with_revision = False, False
    max_lag, max_staleness, timeout = 0, 0.0, front.timeout
    i = 2
    while i < len(args):
        option = args[i].upper()
        value = args[i + 1] if i + 1 < len(args) else None
        if option == b"AFTER" and value is not None and b":" in value:
            while i + 1 < len(args) and b":" in args[i + 1]:
                after.append(_token(args[i + 1]))
                i += 1
        elif option == b"LINEARIZABLE":
            linearizable = True
        elif option == b"WITHREVISION":
            with_revision = True
        elif option == b"MAXLAG" and value is not None:
            max_lag, i = _int(value, "MAXLAG"), i + 1
        elif option == b"MAXSTALENESS" and value is not None:
            max_staleness, i = _int(value, "MAXSTALENESS") / 1000, i + 1
        elif option == b"TIMEOUT" and value is not None:
            timeout, i = _int(value, "TIMEOUT") / 1000, i + 1
        else:
            raise _bad(
                "syntax error: KVS2.GET key [AFTER P:O ...] [LINEARIZABLE] [MAXLAG n] "
                "[MAXSTALENESS ms] [TIMEOUT ms] [WITHREVISION]"
            )
        i += 1
    options = ReadOptions(linearizable, tuple(after), max_lag, max_staleness)
    entry = await front.store.get(args[1], options, timeout)
    if not with_revision:
        return bulk_or_null(None if entry is None else entry.value, conn.proto)
    if entry is None:
        return null(conn.proto)
    return encode([entry.value, entry.revision], conn.proto)


def _written(result: ConditionalResult | WriteToken | None, proto: int) -> bytes:
    if isinstance(result, WriteToken):
        applied, partition, offset, revision = True, result.partition, result.offset, result.offset + 1
    else:
        assert result is not None
        applied, partition, offset, revision = (
            result.applied,
            result.partition,
            result.offset,
            result.revision,
        )
    reply: dict[str, Value] = {
        "status": "PUBLISHED" if applied else "CONDITION_FAILED",
        "partition": partition,
        "offset": offset,
        "revision": revision,
        "token": f"{partition}:{offset}",
    }
    return encode(reply, proto)


@command("KVS2.SET", -3, WRITE, (1, 1, 1), "@write @string @slow")
async def _kvs2_set(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    mode, revision = _if_revision(args, 3, ())
    return _written(await _write(front, args[1], args[2], mode, revision), conn.proto)


@command("KVS2.DEL", -2, WRITE, (1, 1, 1), "@write @keyspace @slow", barrier=True)
async def _kvs2_del(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    mode, revision = _if_revision(args, 2, ())
    return _written(await _write(front, args[1], None, mode, revision), conn.proto)


# connection -------------------------------------------------------------------------------------------
@command("PING", -1, CONN, cats="@fast @connection")
def _ping(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2:
        raise _bad("wrong number of arguments for 'ping' command")
    return PONG if len(args) == 1 else bulk(args[1])


@command("ECHO", 2, CONN, cats="@fast @connection")
def _echo(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    return bulk(args[1])


@command("QUIT", -1, CONN, cats="@fast @connection")
def _quit(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    conn.closing = True
    return OK


@command("SELECT", 2, CONN, cats="@fast @connection")
def _select(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    if _int(args[1], "value") != 0:
        raise _bad("DB index is out of range (kvs2 has one keyspace, database 0)")
    return OK


def _no_users() -> errors.InvalidArgument:
    return _bad(
        "AUTH <password> called without any password configured for the default user. "
        "kvs2 serve has no --redis-users: the Redis port needs no AUTH"
    )


@command("AUTH", -2, CONN, cats="@fast @connection")
def _auth(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise _bad("wrong number of arguments for 'auth' command")
    if front.users is None:
        raise _no_users()
    if len(args) == 2:
        return conn.authenticate(DEFAULT_USER, args[1])
    return conn.authenticate(args[1].decode(errors="replace"), args[2])


@command("HELLO", -1, CONN, cats="@fast @connection")
def _hello(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    proto = conn.proto
    if len(args) > 1:
        proto = _int(args[1], "protocol version")
        if proto not in (2, 3):
            return error("NOPROTO", "sorry, this protocol version is not supported")
    i = 2
    name = conn.name
    while i < len(args):
        option = args[i].upper()
        if option == b"AUTH" and i + 2 < len(args):
            if front.users is None:
                raise _no_users()
            refused = conn.authenticate(args[i + 1].decode(errors="replace"), args[i + 2])
            if refused is not OK:
                return refused
            i += 3
        elif option == b"SETNAME" and i + 1 < len(args):
            name = _client_name(args[i + 1])
            i += 2
        else:
            raise _bad(f"syntax error in HELLO option {option.decode(errors='replace')!r}")
    if not conn.authenticated:
        return error(
            "NOAUTH",
            "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> "
            "AUTH <user> <pass> option can be used to authenticate the client and select the RESP "
            "protocol version at the same time",
        )
    conn.proto, conn.name = proto, name
    info: dict[str, Value] = {
        "server": "kvs2",
        "version": REDIS_COMPAT_VERSION,
        "kvs2_version": __version__,
        "proto": proto,
        "id": conn.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }
    return encode(info, proto)


def _client_name(raw: bytes) -> bytes:
    if any(c <= 32 or c >= 127 for c in raw):
        raise _bad("Client names cannot contain spaces, newlines or special characters.")
    return raw


@command("CLIENT", -2, CONN, cats="@slow @connection")
def _client(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        conn.name = _client_name(args[2])
        return OK
    if sub == b"GETNAME" and len(args) == 2:
        return bulk_or_null(conn.name or None, conn.proto)
    if sub == b"ID" and len(args) == 2:
        return integer(conn.id)
    if sub == b"SETINFO" and len(args) == 4:  # LIB-NAME / LIB-VER, sent by client libraries on connect
        conn.lib[args[2].decode(errors="replace").lower()] = args[3].decode(errors="replace")
        return OK
    if sub in (b"NO-EVICT", b"NO-TOUCH") and len(args) == 3:
        return OK
    if sub == b"INFO" and len(args) == 2:
        return bulk(conn.describe().encode() + b"\n")
    if sub == b"LIST" and len(args) == 2:
        return bulk("".join(c.describe() + "\n" for c in front.connections).encode())
    raise _bad(
        f"unknown subcommand or wrong number of arguments for '{args[1].decode(errors='replace')}'. "
        "kvs2 supports CLIENT SETNAME, GETNAME, ID, SETINFO, INFO, LIST, NO-EVICT, NO-TOUCH"
    )


@command("CONFIG", -2, ("admin", "noscript", "loading", "stale"), cats="@admin @slow")
def _config(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    if args[1].upper() == b"GET":  # tools probe settings (redis-benchmark: save, appendonly)
        wanted = {a.decode(errors="replace").lower() for a in args[2:]}
        return encode({k: v for k, v in CONFIG.items() if k in wanted}, conn.proto)
    raise _bad("kvs2 has no Redis configuration: settings are `kvs2 serve` flags")


@command("INFO", -1, ("loading", "stale"), cats="@slow @dangerous")
def _info(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    wanted = {a.decode(errors="replace").lower() for a in args[1:]} - {"all", "default", "everything"}
    return bulk(front.info(wanted).encode())


@command("COMMAND", -1, ("loading", "stale"), cats="@slow @connection")
def _command(front: RedisFront, conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper() if len(args) > 1 else b""
    if not sub:
        return array((_command_info(n, c) for n, c in COMMANDS.items()), len(COMMANDS))
    if sub == b"COUNT":
        return integer(len(COMMANDS))
    if sub == b"LIST":
        return encode([n.lower() for n in COMMANDS], conn.proto)
    if sub == b"INFO":
        names = [a.upper() for a in args[2:]] or list(COMMANDS)
        return array(
            (_command_info(n, COMMANDS[n]) if n in COMMANDS else null(conn.proto) for n in names), len(names)
        )
    if sub == b"DOCS":  # no documentation: redis-cli falls back to its built-in help
        return encode({}, conn.proto)
    raise _bad(
        f"unknown subcommand '{args[1].decode(errors='replace')}'. "
        "kvs2 supports COMMAND [COUNT|LIST|INFO|DOCS]"
    )


def _command_info(name: bytes, cmd: Command) -> bytes:
    flags = array((simple(f) for f in cmd.flags), len(cmd.flags))
    cats = array((simple(c) for c in cmd.categories), len(cmd.categories))
    return b"*10\r\n" + b"".join(
        [
            bulk(name.lower()),
            integer(cmd.arity),
            flags,
            integer(cmd.first_key),
            integer(cmd.last_key),
            integer(cmd.step),
            cats,
            EMPTY_ARRAY,
            EMPTY_ARRAY,
            EMPTY_ARRAY,
        ]
    )


# ----- connections and the listener ------------------------------------------------------------------
_ids = itertools.count(1)


class Connection(asyncio.Protocol):
    """One client connection: parse, start commands in order, send replies in order."""

    def __init__(self, front: RedisFront) -> None:
        self.front = front
        self.id = next(_ids)
        self.proto = 2
        self.name = b""
        self.lib: dict[str, str] = {}
        self.closing = False  # QUIT, a protocol error or shutdown: close once every reply is out
        self.created = time.monotonic()
        self.peer = ""
        self._parser: Parser | FastParser | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: deque[bytes | asyncio.Task[bytes]] = deque()
        self.write_barrier: asyncio.Task[bytes] | None = None  # see Command.barrier
        self._pause = 0  # bit 1: too many pending replies; bit 2: the socket's send buffer is full
        # Who the client is (see RedisFront.guard): its verified certificate's names, its AUTH user.
        self.identities: list[str] = []
        self.user = ""
        self.authenticated = front.users is None
        self._rights: frozenset[str] | None = None
        self._rights_at = 0.0

    # asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.identities = peer_identities(transport.get_extra_info("peercert"))
        self.front.track(self)

    def connection_lost(self, exc: Exception | None) -> None:
        for item in self._pending:
            if not isinstance(item, bytes):
                item.cancel()
        self._pending.clear()
        self.front.forget(self)

    def pause_writing(self) -> None:
        self._set_pause(2, True)

    def resume_writing(self) -> None:
        self._set_pause(2, False)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        parser = self._parser
        if parser is None:
            parser = self._parser = parser_for(data)
        parser.feed(data)
        pending = self._pending
        out: list[bytes] = []
        start = self.front.start
        while not self.closing:
            try:
                args = parser.get()
            except ProtocolError as exc:
                reply: bytes | asyncio.Task[bytes] = error("ERR", f"Protocol error: {exc}")
                self.closing = True
            else:
                if args is None:
                    break
                reply = start(self, args, not pending)
            if not pending and type(reply) is bytes:
                out.append(reply)
            else:
                pending.append(reply)
                if not isinstance(reply, bytes):
                    reply.add_done_callback(self._flush)
        transport = self._transport
        assert transport is not None
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.closing and not pending:
            transport.close()
        elif len(pending) > MAX_PENDING:
            self._set_pause(1, True)

    # ------------------------------------------------------------------------------------------------
    def _flush(self, _: object = None) -> None:
        pending = self._pending
        out: list[bytes] = []
        while pending:
            head = pending[0]
            if isinstance(head, bytes):
                out.append(head)
            elif head.done():
                if not head.cancelled():
                    out.append(head.result())
            else:
                break
            pending.popleft()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if out:
            transport.write(b"".join(out))
        if self.closing and not pending:
            transport.close()
        elif self._pause & 1 and len(pending) < MAX_PENDING // 2:
            self._set_pause(1, False)

    def _set_pause(self, bit: int, on: bool) -> None:
        before = self._pause
        self._pause = before | bit if on else before & ~bit
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if before and not self._pause:
            transport.resume_reading()
        elif not before and self._pause:
            transport.pause_reading()

    def shutdown(self) -> None:
        """Stop reading; close once the replies owed are sent."""
        self.closing = True
        if self._transport is not None and not self._pending:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # authentication and rights -----------------------------------------------------------------------
    def authenticate(self, user: str, password: bytes) -> bytes:
        """AUTH / HELLO AUTH: OK, or WRONGPASS (a failed AUTH leaves the connection as it was, as Redis)."""
        users = self.front.users
        if users is None or not users.check(user, password):
            log.info("Redis AUTH refused for user %r from %s", user, self.peer)
            return error("WRONGPASS", "invalid username-password pair or user is disabled.")
        self.user, self.authenticated, self._rights = user, True, None
        return OK

    def rights(self) -> frozenset[str]:
        """The rights kvs2.authz gives this connection: its AUTH user's once it authenticated (AUTH picks who
        the connection acts as, as in Redis), else its client certificate's names. Re-evaluated at most
        once a second when the map comes from a file (the gRPC port reads it per call; a RESP command is
        far cheaper)."""
        policy = self.front.policy
        if policy is None:
            return _EVERY_RIGHT
        rights = self._rights
        now = time.monotonic()
        if rights is None or (policy.path is not None and now - self._rights_at > 1.0):
            rights = self._rights = policy.rights([self.user] if self.user else self.identities)
            self._rights_at = now
        return rights

    def who(self) -> str:
        if self.user:
            return f"user {self.user!r}"
        if self.identities:
            return f"client {self.identities[0]!r}"
        return "a client without a user or certificate identity"

    def describe(self) -> str:
        age = int(time.monotonic() - self.created)
        lib = " ".join(f"{k}={v}" for k, v in sorted(self.lib.items()))
        name = self.name.decode(errors="replace")
        user = f" user={self.user}" if self.user else ""
        return (
            f"id={self.id} addr={self.peer} name={name} age={age} db=0 resp={self.proto}{user} {lib}".rstrip()
        )


_EVERY_RIGHT = frozenset(ALL_RIGHTS)
# Commands a client may send before it authenticated (Redis: AUTH, HELLO with AUTH, QUIT).
_BEFORE_AUTH = frozenset({b"AUTH", b"HELLO", b"QUIT"})


def _right(cmd: Command) -> str | None:
    """The kvs2.authz right a command needs: writes `write`, reads `read`; connection commands none."""
    if "write" in cmd.flags:
        return WRITE_RIGHT
    if "readonly" in cmd.flags:
        return READ_RIGHT
    return None


class RedisFront:
    """The RESP listener of one server process, over the process's `Store`.

    Protection, the same as the gRPC port's (README "Security"): `tls` — the gRPC port's certificate
    files, followed on change, and with a client CA, client certificates required; `users` — AUTH /
    HELLO AUTH required before anything else (`-NOAUTH`); `policy` — the authorization map, whose
    subjects are AUTH users and certificate names alike (`-NOPERM` names who lacks which right).
    """

    def __init__(
        self,
        store: Store,
        *,
        timeout: float,
        topic: str = "",
        listen: str = "",
        tls: ServerTls | None = None,
        users: Users | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.store = store
        self.users = users
        self.policy = policy
        self.guarded = users is not None or policy is not None
        self.tls = ServerContext(tls) if tls is not None else None
        self.timeout = timeout  # writes (until Kafka's ack) and reads that wait for freshness
        self.topic = topic
        self.listen = listen
        self.cursors = _Cursors()
        self.connections: set[Connection] = set()
        self.started = time.monotonic()
        self._server: asyncio.AbstractServer | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()

    def start(self, conn: Connection, args: list[bytes], inline: bool = True) -> bytes | asyncio.Task[bytes]:
        """Run one command: its reply, or a Task for one that has to wait.

        `inline=False` while earlier commands of the connection are still running: then this one starts
        as a Task too, after them (the loop starts Tasks in order), so commands start in command order."""
        name = args[0].upper()
        cmd = COMMANDS.get(name)
        if cmd is None:
            return _unknown(args)
        if self.guarded:
            refused = self.guard(conn, cmd, name)
            if refused is not None:
                return refused
        n = len(args)
        if (cmd.arity > 0 and n != cmd.arity) or n < -cmd.arity:
            return error("ERR", f"wrong number of arguments for '{name.decode().lower()}' command")
        try:
            result = cmd.handler(self, conn, args)
            if isinstance(result, bytes):
                return result
            if "write" in cmd.flags:
                barrier = conn.write_barrier
                if barrier is not None and not barrier.done():
                    result = _after(barrier, result)
                task = self._loop.create_task(_finish(result))
                if cmd.barrier:
                    conn.write_barrier = task
                return task
            if not (cmd.eager and inline):
                return self._loop.create_task(_finish(result))
            try:
                waiting = result.send(None)
            except StopIteration as stop:
                reply: bytes = stop.value
                return reply
            return self._loop.create_task(_finish(result, waiting))
        except errors.Kvs2Error as exc:
            return error_reply(exc)
        except Exception as exc:
            log.exception("Redis command %r failed", name)
            return error("ERR", f"internal error: {exc}")

    def guard(self, conn: Connection, cmd: Command, name: bytes) -> bytes | None:
        """The NOAUTH or NOPERM reply that refuses this command, or None to run it."""
        if not conn.authenticated and name not in _BEFORE_AUTH:
            return error("NOAUTH", "Authentication required.")
        right = _right(cmd)
        if right is None or right in conn.rights():
            return None
        return error(
            "NOPERM", f"{conn.who()} lacks the {right!r} right needed for {name.decode(errors='replace')}"
        )

    def track(self, conn: Connection) -> None:
        """A connection is up (with TLS: its handshake succeeded; a failed one never gets here)."""
        self.connections.add(conn)
        self._idle.clear()

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()

    async def serve(self, host: str, port: int, *, reuse_port: bool) -> int:
        """Listen; returns the port (useful with port 0)."""

        tls = self.tls

        def factory() -> Connection:
            if tls is not None:  # called before the connection's TLS handshake starts
                tls.refresh()
            return Connection(self)

        try:
            self._server = await self._loop.create_server(
                factory,
                host,
                port,
                reuse_port=reuse_port or None,
                backlog=1024,
                ssl=tls.listening if tls is not None else None,
            )
        except OSError as exc:
            raise errors.ConfigError(f"cannot listen for Redis clients on {host}:{port}: {exc}") from exc
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def close(self, grace: float) -> None:
        """Stop accepting, let connections finish the replies they owe (up to `grace`), then close."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            for conn in list(self.connections):
                conn.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def info(self, wanted: set[str]) -> str:
        s = self.store.progress.now
        lag = {p: s.lag(p) for p in range(s.partitions)}
        sections: dict[str, list[tuple[str, object]]] = {
            "server": [
                ("redis_version", REDIS_COMPAT_VERSION),
                ("kvs2_version", __version__),
                ("redis_mode", "standalone"),
                ("process_id", os.getpid()),
                ("tcp_address", self.listen),
                ("uptime_in_seconds", int(time.monotonic() - self.started)),
            ],
            "clients": [("connected_clients", len(self.connections))],
            "persistence": [("loading", 0 if s.serving else 1)],
            "replication": [("role", "master"), ("connected_slaves", 0)],
            "kvs2": [
                ("topic", self.topic),
                ("topic_id", s.topic_id),
                ("serving", 1 if s.serving else 0),
                ("partitions", s.partitions),
                ("lag_records", sum(lag.values())),
                *(
                    (
                        f"partition{p}",
                        f"applied={s.applied.get(p, 0)},end={s.high_watermarks.get(p, 0)},lag={lag[p]}",
                    )
                    for p in range(s.partitions)
                ),
            ],
        }
        out = []
        for section, fields in sections.items():
            if wanted and section not in wanted:
                continue
            out.append(f"# {section.capitalize() if section != 'kvs2' else 'Kvs2'}\r\n")
            out.extend(f"{k}:{v}\r\n" for k, v in fields)
            out.append("\r\n")
        return "".join(out)


def _unknown(args: list[bytes]) -> bytes:
    shown = " ".join(f"'{a[:128].decode(errors='replace')}'" for a in args[1:4])
    return error(
        "ERR",
        f"unknown command '{args[0][:128].decode(errors='replace')}', with args beginning with: {shown}",
    )


async def start_redis(
    store: Store,
    listen: str,
    *,
    topic: str,
    timeout: float,
    reuse_port: bool,
    tls: ServerTls | None = None,
    users: Users | None = None,
    policy: Policy | None = None,
) -> RedisFront:
    """`--redis-listen HOST:PORT`: start the RESP listener on the running loop."""
    host, _, port = listen.rpartition(":")
    front = RedisFront(
        store, timeout=timeout, topic=topic, listen=listen, tls=tls, users=users, policy=policy
    )
    await front.serve(host.strip("[]"), int(port), reuse_port=reuse_port)
    log.info(
        "Redis protocol (RESP2/RESP3) listening on %s: %s, %s%s",
        listen,
        "plaintext"
        if tls is None
        else f"TLS with {tls.cert}" + (" (client certificates required)" if tls.mutual else ""),
        "AUTH required" if users is not None else "no AUTH",
        ", rights from the authorization map" if policy is not None else "",
    )
    return front
