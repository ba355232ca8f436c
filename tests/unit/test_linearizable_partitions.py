"""Linearizable reads (issue 8, defect 7): the end-offset look-up covers only the partitions the read
touches, a partition whose leader is down fails only the reads that need it, and a look-up Kafka does
not answer in time is UNAVAILABLE (Kafka unreachable, as the README documents), not DEADLINE_EXCEEDED
(which means "the replica did not catch up in time")."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Mapping

import pytest
from kvs2.consistency import EndOffsetOracle, ReadOptions, wait_fresh
from kvs2.errors import KafkaUnavailable, Kvs2Error, Unavailable
from kvs2.progress import Progress, Snapshot

LIN = ReadOptions(linearizable=True)
ENDS = {0: 4, 1: 7, 2: 0, 3: 9}


class Kafka:
    """End offsets per partition; partition 3's leader is down."""

    def __init__(self) -> None:
        self.asked: list[set[int]] = []
        self.hold = threading.Event()
        self.hold.set()

    def end_offsets(self, partitions: Collection[int]) -> Mapping[int, int | Kvs2Error]:
        self.hold.wait(30)
        self.asked.append(set(partitions))
        return {
            p: KafkaUnavailable(f"partition {p}: Broker: Leader not available") if p == 3 else ENDS[p]
            for p in partitions
        }


async def _progress() -> Progress:
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(applied={0: 4, 1: 7, 2: 0, 3: 2}, serving=True, partitions=4))
    return progress


async def test_the_look_up_covers_only_the_reads_partitions() -> None:
    kafka = Kafka()
    oracle = EndOffsetOracle(kafka.end_offsets)
    await wait_fresh(await _progress(), oracle, LIN, [1], timeout=5)
    assert kafka.asked == [{1}]


async def test_a_partition_without_leader_fails_only_the_reads_that_need_it() -> None:
    kafka = Kafka()
    kafka.hold.clear()  # let both reads join one look-up
    oracle = EndOffsetOracle(kafka.end_offsets)
    progress = await _progress()
    fine = asyncio.create_task(wait_fresh(progress, oracle, LIN, [0, 1], timeout=5))
    broken = asyncio.create_task(wait_fresh(progress, oracle, LIN, [3], timeout=5))
    await asyncio.sleep(0.05)
    kafka.hold.set()
    await fine
    with pytest.raises(Unavailable, match="Leader not available"):
        await broken


async def test_a_slow_look_up_is_unavailable() -> None:
    kafka = Kafka()
    kafka.hold.clear()  # Kafka never answers within the read's deadline
    oracle = EndOffsetOracle(kafka.end_offsets)
    try:
        with pytest.raises(Unavailable, match="did not report"):
            await wait_fresh(await _progress(), oracle, LIN, [0], timeout=0.2)
    finally:
        kafka.hold.set()
