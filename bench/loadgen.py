"""An open-loop load generator for Redis GET (RESP), for the latency-against-offered-load curve.

`python -m bench.loadgen --port P --rate 20000 --seconds 5 [--connections 8] [--key K]` prints one JSON
object: offered and achieved rates, p50/p99 latency in ms, errors, and whether the generator kept up.

Why its own: redis-benchmark has no rate limit (it is closed-loop: each client waits for its answer), so
it cannot show how latency grows as the offered load approaches a server's peak. Here requests are
sent on a fixed schedule whatever the answers do (open loop), and each latency is measured from the
request's *scheduled* time, so a server that falls behind is charged for the queue it builds (no
coordinated omission) — the same as ghz `--async --rps` does for the gRPC rows.

How: every millisecond the generator sends the requests that have come due, spread round-robin over
`--connections` connections (a tick with several due requests writes them to a connection in one
write: RESP allows pipelining, answers come back in order). Answers are parsed by hiredis. When the
generator itself cannot keep up (it is one Python process on one core), `kept_up` is false and the
figure says so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib
import json
import sys
import time
from typing import cast

import hiredis

TICK = 0.001


class _Tally:
    """Answers of all connections: latencies (s), error replies, and an event once `expected` arrived."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.expected = -1  # unknown until the last request is sent
        self.done = asyncio.Event()

    def answered(self, latency: float, error: bool) -> None:
        self.latencies.append(latency)
        self.errors += error
        if len(self.latencies) == self.expected:
            self.done.set()


class _Conn(asyncio.Protocol):
    def __init__(self, tally: _Tally) -> None:
        self.reader = hiredis.Reader()
        self.scheduled: collections.deque[float] = collections.deque()
        self.tally = tally
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        now = time.perf_counter()
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            self.tally.answered(now - self.scheduled.popleft(), isinstance(reply, hiredis.ReplyError))


async def run(
    host: str, port: int, rate: float, seconds: float, connections: int, key: bytes
) -> dict[str, object]:
    tally = _Tally()
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _Conn(tally), host, port)
        conns.append(proto)
    command = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
    total = int(rate * seconds)
    sent = 0
    worst_lag = 0.0
    start = time.perf_counter()
    i = 0
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        if due > sent:
            worst_lag = max(worst_lag, now - (start + sent / rate))
            per_conn: list[list[float]] = [[] for _ in conns]
            for j in range(sent, due):
                per_conn[i % connections].append(start + j / rate)
                i += 1
            for conn, times in zip(conns, per_conn, strict=True):
                if times and conn.transport is not None:
                    conn.scheduled.extend(times)
                    conn.transport.write(command * len(times))
            sent = due
        await asyncio.sleep(TICK)
    send_seconds = time.perf_counter() - start
    tally.expected = total
    if len(tally.latencies) < total:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.done.wait(), 10.0)
    elapsed = time.perf_counter() - start
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    ordered = sorted(tally.latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3 if ordered else float("nan")

    return {
        "offered": rate,
        "sent": sent,
        "answered": len(ordered),
        "errors": tally.errors,
        "achieved": len(ordered) / elapsed,
        "send_rate": sent / send_seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        # The generator's own lateness: beyond a few ticks, latencies include the generator's queue.
        "worst_send_lag_ms": worst_lag * 1e3,
        "kept_up": sent / send_seconds >= 0.97 * rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--key", default="key-0000001")
    args = parser.parse_args(argv)
    coro = run(args.host, args.port, args.rate, args.seconds, args.connections, args.key.encode())
    try:
        result = importlib.import_module("uvloop").run(coro)  # the faster loop when installed
    except ModuleNotFoundError:
        result = asyncio.run(coro)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
