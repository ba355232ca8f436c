"""Compare-and-set without a leader.

How it works. A conditional Set or Delete is one Kafka record in the key's partition (computed with
the producer's own partitioner) carrying the expected revision in a header. Every replica applies
every partition in the same total order, so every replica evaluates the condition against the same
state and reaches the same outcome; no replica has to coordinate with another. The replica that
accepted the request waits until its own ingester applied the record and answers with that outcome.

Why conditional records have their own Kafka key. Kafka's compaction keeps only the latest record per
key. If a failed conditional record used the user's key, compaction would drop the record that holds
the key's real value, and a replica rebuilt from the compacted log would lose it. So a conditional
record's key is `SIDE_MARKER ‖ request id ‖ user key`: unique, never hiding another record. Plain
records (unconditional Set/Delete) use the user key and decide the state by themselves. In a
compacted log, the last plain record of a key survives and so does every conditional record after it,
so replay evaluates exactly the conditions that matter for the current state.

Clean-up. Conditional records that replay no longer needs — failed ones, and applied ones followed by
a plain write — are listed by every replica (`Replica.garbage`). The replica that accepted a failed
record tombstones it at once; any replica tombstones the rest after a grace delay unless the tombstone
has already been applied (duplicates are harmless). Compaction then drops both. Keys written only
with conditional writes keep one record per applied write until a plain write comes; see README.

The invariant that makes every compacted log replay to the live state. Kafka may drop a plain
tombstone once delete.retention.ms has passed since its cleaner first cleaned it; a conditional record
of the same user key before it has another Kafka key and would outlive it, and replay would apply it
(and judge every later condition on the key against it). So: *every conditional record of a key that
precedes a plain tombstone of the key is tombstoned before it, in the same partition.* Kafka's cleaner
works on a prefix of the log and drops a record in the pass that first sees a later record of its key,
so by the time it has cleaned the plain tombstone — the earliest it can start counting
delete.retention.ms — those conditional records are gone. kvs2's Delete enforces it
(`Store.delete`): it tombstones every conditional record of the key it knows (needed or garbage), then
writes its own tombstone, through the same idempotent producer, so in that order. A clean-up tombstone
applied before the record's key is plainly deleted makes the record unneeded at once.
Residual: a conditional write racing the Delete (applied just before its tombstone, not yet known to
the Delete's replica), or a plain tombstone from a foreign producer, leaves conditional records after
the fact; every replica lists them as urgent garbage and tombstones them within about a second, which
holds as long as a replica serves before delete.retention.ms runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from dataclasses import dataclass

from kvs2.errors import Unavailable, WriteOutcomeUnknown
from kvs2.kafka_io import Writer
from kvs2.partitioner import partition_for
from kvs2.progress import Progress
from kvs2.storage import REQUEST_ID_BYTES, Outcome, Replica, parse_side_key, side_key

log = logging.getLogger(__name__)

DEFAULT_CLEANUP_GRACE = 30.0  # seconds before a replica tombstones a record nobody else has
# Urgent garbage (a plain tombstone met it untombstoned: see the invariant above) waits at most this.
URGENT_DELAY = 1.0


@dataclass(frozen=True)
class ConditionalResult:
    applied: bool
    revision: int  # after the write when applied; the key's current revision when not
    partition: int
    offset: int


class ConditionalWrites:
    """The accepting replica's side: send conditional records, learn their outcomes, clean up."""

    def __init__(
        self,
        writer: Writer,
        replica: Replica,
        progress: Progress,
        cleanup_grace: float = DEFAULT_CLEANUP_GRACE,
    ) -> None:
        self._grace = cleanup_grace
        self._writer = writer
        self._replica = replica
        self._progress = progress
        self._pending: dict[bytes, asyncio.Future[Outcome]] = {}
        self._due: dict[bytes, float] = {}  # side key → when this replica tombstones it

    def resolve(self, outcomes: list[Outcome]) -> None:
        """Called in the event loop with every conditional outcome the ingester applied."""
        for outcome in outcomes:
            future = self._pending.pop(outcome.request_id, None)
            if future is not None and not future.done():
                future.set_result(outcome)

    async def write(
        self, key: bytes, value: bytes | None, expected_revision: int, timeout: float
    ) -> ConditionalResult:
        partitions = self._progress.now.partitions
        if partitions <= 0:
            raise Unavailable("this replica does not know the topic's partitions yet; retry shortly")
        request_id = os.urandom(REQUEST_ID_BYTES)
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Outcome] = loop.create_future()
        self._pending[request_id] = outcome  # before producing: the outcome can beat the delivery report
        partition = partition_for(key, partitions)
        try:
            delivered = self._writer.write_conditional(request_id, key, value, expected_revision, partition)
            async with asyncio.timeout(timeout):
                await asyncio.wrap_future(delivered)
                result = await outcome
        except TimeoutError as exc:
            raise WriteOutcomeUnknown(
                f"the conditional write was not acknowledged and applied within {timeout:.1f}s; "
                "it may still be applied later"
            ) from exc
        finally:
            self._pending.pop(request_id, None)
        if not result.applied:
            # Replay never needs a failed conditional record: tombstone it now. The verdict is known
            # whatever happens to the tombstone (the janitor retries it later).
            try:
                self._writer.tombstone(side_key(request_id, key), result.partition)
            except Unavailable as exc:
                log.warning("could not tombstone a failed conditional record yet (the janitor will): %s", exc)
        return ConditionalResult(result.applied, result.revision, result.partition, result.offset)

    async def janitor(self, stop: asyncio.Event) -> None:
        """Tombstone conditional records nobody needs any more (after a grace delay), while serving.

        Survives any exception (logged): a bug or an LMDB surprise must not end clean-up for the life
        of the process.
        """
        delay = 1.0
        while not stop.is_set():
            try:
                await self._janitor(stop)
            except Exception:
                log.exception("the conditional-record clean-up failed; trying again in %.0fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 60.0)

    async def _janitor(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(URGENT_DELAY / 2, self._grace / 4))
            if stop.is_set() or not self._progress.serving:
                continue
            now = loop.time()
            urgent = self._replica.urgent_garbage()
            garbage = list(dict.fromkeys([*urgent, *self._replica.garbage()]))
            alive = set(garbage)
            hurry = set(urgent)
            for side in garbage:
                # Every replica lists the same garbage at about the same moment: a random extra delay lets
                # one of them tombstone it first and the others see that tombstone instead of repeating it.
                delay = min(self._grace, URGENT_DELAY) if side in hurry else self._grace
                due = self._due.setdefault(side, now + delay + random.uniform(0, delay))
                if side in hurry and due > now + 2 * delay:  # listed before a plain tombstone met it
                    due = self._due[side] = now + delay + random.uniform(0, delay)
                if now >= due:
                    parsed = parse_side_key(side)
                    if parsed is None:
                        continue
                    partitions = self._progress.now.partitions
                    try:
                        self._writer.tombstone(side, partition_for(parsed[1], partitions))
                    except Unavailable as exc:
                        log.warning("could not tombstone a finished conditional record: %s", exc)
                        break
                    self._due[side] = now + self._grace  # again later if the tombstone does not land
            for side in list(self._due):
                if side not in alive:
                    del self._due[side]
