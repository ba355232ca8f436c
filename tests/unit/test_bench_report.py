"""The benchmark's own bookkeeping (no timing here): the targets table says met / not met / not measured
from the figures it is given, the /proc readers see this very process, and the RESP open-loop generator
sends what it was asked to and reads every answer (against a tiny in-process RESP server)."""

from __future__ import annotations

import asyncio
import os

import pytest

from bench import procstat
from bench.loadgen import run as open_loop
from bench.targets import TARGETS, table


def _rows(metrics: dict[str, float]) -> dict[str, str]:
    lines = table(metrics).splitlines()[2:]
    return {line.split(" | ")[1]: line for line in lines}


def test_every_target_is_not_measured_without_figures() -> None:
    rows = _rows({})
    assert len(rows) == len(TARGETS)
    assert all("not measured" in row and row.endswith("| — |") for row in rows.values())


def test_met_and_missed_targets() -> None:
    rows = _rows(
        {
            "get_cpu_us": 400.0,
            "floor_cpu_us": 380.0,  # +5 %: met
            "etcd_range_cpu_us": 80.0,
            "multiget100_keys_s": 499_999.0,  # just under: missed
            "rss_mb": 120.0,
            "anon_mb": 60.0,
            "rss_keys": 50_000.0,  # within the limits, but not the 1 M keys the target is about
        }
    )
    get = rows["Get server CPU per request over a bare grpc.aio handler's (ghz -c 32, pinned)"]
    assert get.endswith("| yes |")
    assert "+5 %" in get
    assert "5.0x" in get  # the etcd ratio beside it
    assert rows["MultiGet keys/s, 100-key batches, server on one core"].endswith("| no |")
    assert rows["RSS of one replica holding 1 M keys (100-byte values), after catch-up"].endswith("| no |")


def test_write_target_needs_both_the_rate_and_the_ratio_to_etcd() -> None:
    name = "Write acknowledged records/s (100-byte values, acks=all, 1000-item batches)"
    fast_but_close_to_etcd = _rows({"write_records_s": 300_000.0, "etcd_txn_records_s": 100_000.0})
    assert fast_but_close_to_etcd[name].endswith("| no |")
    assert _rows({"write_records_s": 300_000.0, "etcd_txn_records_s": 20_000.0})[name].endswith("| yes |")


def test_proc_readers_see_this_process() -> None:
    pid = os.getpid()
    assert pid in procstat.descendants(pid)
    before = procstat.cpu_seconds(pid)
    sum(i * i for i in range(2_000_000))  # burn some CPU
    assert procstat.cpu_seconds(pid) > before
    mem = procstat.memory(pid)
    assert 0 < mem.anon <= mem.rss <= mem.peak


async def test_open_loop_generator_reads_every_answer() -> None:
    await _reads_every_answer()


def test_open_loop_generator_reads_every_answer_on_uvloop() -> None:
    """bench/loadgen.py runs on uvloop when installed (as `make bench` runs it): its transports are not
    asyncio.Transport subclasses — an isinstance check there made every answer go missing."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_reads_every_answer())


async def _reads_every_answer() -> None:
    answered = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while line := await reader.readline():
            if line.startswith(b"*"):
                for _ in range(2 * int(line[1:])):  # each argument: $len line, then the bytes
                    await reader.readline()
                answered += 1
                writer.write(b"$3\r\nabc\r\n")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await open_loop("127.0.0.1", port, rate=500, seconds=0.5, connections=3, key=b"k")
    finally:
        server.close()
    assert result["sent"] == 250
    assert result["answered"] == 250 == answered
    assert result["errors"] == 0
