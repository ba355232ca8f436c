"""The batched `Write` call (issue 12 item 1) against real Kafka, replicas as real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from kvs2.client import AsyncClient, BatchWriteError, WriteOp, Written

from tests.harness.kafka import KafkaBroker
from tests.harness.replica import kvs2_command
from tests.integration.dataplane.conftest import StartReplica


def test_each_item_gets_its_own_status_and_the_tokens_give_read_your_writes_on_the_other_replica(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a, b = (start_replica(kafka.bootstrap_servers, topic, name) for name in ("a", "b"))
    with a.client() as ca:
        before = ca.set(b"doomed", b"x")
        ops = [WriteOp(f"k{i:04}".encode(), f"v{i}".encode()) for i in range(300)]
        ops += [
            WriteOp(b"", b"empty key"),  # invalid
            WriteOp(b"x" * 2000, b"key too long"),  # invalid
            WriteOp(b"doomed", None),  # a plain delete
            WriteOp(b"big", b"v" * 5_000_000),  # over the topic's record limit: invalid
        ]
        result = ca.write_batch(ops)
    assert len(result.results) == len(ops)
    statuses = [r.status for r in result.results]
    assert statuses == ["published"] * 300 + ["invalid", "invalid", "published", "invalid"]
    for r in result.results[300:302] + result.results[303:]:
        assert r.error and r.written is None
    assert "empty" in result.results[300].error
    assert "2000 bytes" in result.results[301].error
    written = [r.written for r in result.results if r.written is not None]
    assert len({(w.partition, w.offset) for w in written}) == len(written), "two items at one position"
    for r in result.results[:300]:
        assert r.written is not None and r.revision == r.written.offset + 1
    # The tokens are the highest offset per partition among the written items.
    highest: dict[int, int] = {}
    for w in written:
        highest[w.partition] = max(highest.get(w.partition, -1), w.offset)
    assert {(t.partition, t.offset) for t in result.tokens} == set(highest.items())
    delete_at = result.results[302].written
    assert delete_at is not None and delete_at.partition == before.partition
    assert delete_at.offset > before.offset
    # Through the other replica, waiting for the batch's tokens: every item is there.
    with b.client() as cb:
        parts = cb.multi_get([op.key for op in ops[:300]], after=result.tokens)
        assert [(k, v.data if v else None) for k, v in parts] == [(op.key, op.value) for op in ops[:300]]
        assert cb.get(b"doomed", after=result.tokens) is None


def test_conditional_items_apply_or_fail_each_on_its_own(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a, b = (start_replica(kafka.bootstrap_servers, topic, name) for name in ("a", "b"))
    with a.client() as ca:
        ca.set(b"stale", b"0")
        current = ca.get(b"stale", consistency="linearizable")
        ca.set(b"fresh", b"0")
        fresh = ca.get(b"fresh", consistency="linearizable")
        ca.set(b"gone", b"0")
        gone = ca.get(b"gone", consistency="linearizable")
        assert current and fresh and gone
        result = ca.write_batch(
            [
                WriteOp(b"fresh", b"1", if_revision=fresh.revision),  # holds
                WriteOp(b"stale", b"1", if_revision=current.revision + 1000),  # does not hold
                WriteOp(b"new", b"1", if_revision=0),  # absent: holds
                WriteOp(b"fresh-too", b"1", if_revision=0),
                WriteOp(b"gone", None, if_revision=gone.revision),  # conditional delete, holds
                WriteOp(b"plain", b"1"),
                WriteOp(b"neg", b"1", if_revision=-5),  # invalid
            ]
        )
    statuses = [r.status for r in result.results]
    assert statuses == [
        "published",
        "condition_failed",
        "published",
        "published",
        "published",
        "published",
        "invalid",
    ]
    assert result.results[1].revision == current.revision  # the key's revision at that moment
    with b.client() as cb:
        got = cb.multi_get([b"fresh", b"stale", b"new", b"gone", b"plain"], after=result.tokens)
        assert [(k, v.data if v else None) for k, v in got] == [
            (b"fresh", b"1"),
            (b"stale", b"0"),
            (b"new", b"1"),
            (b"gone", None),
            (b"plain", b"1"),
        ]
        fresh_now = cb.get(b"fresh", after=result.tokens)
        assert fresh_now is not None and fresh_now.revision == result.results[0].revision


def test_an_empty_batch_is_answered_with_nothing(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic)
    with a.client() as c:
        result = c.write_batch([])
    assert result.results == [] and result.tokens == [] and result.ok


def test_set_many_and_the_async_client_remember_the_batch_for_read_your_writes(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a, b = (start_replica(kafka.bootstrap_servers, topic, name) for name in ("a", "b"))
    with a.client() as ca:
        written = ca.set_many({b"m1": b"1", b"m2": b"2"})
        assert len(written) == 2 and all(isinstance(w, Written) for w in written)
        with pytest.raises(BatchWriteError) as info:
            ca.set_many([(b"m3", b"3"), (b"", b"bad")])
        assert [r.status for r in info.value.results.results] == ["published", "invalid"]

        failed_batch = info.value.results

    async def via_async() -> list[bytes | None]:
        async with AsyncClient(a.target) as writer:
            more = await writer.set_many({b"m4": b"4"})
            batch = await writer.write_batch([WriteOp(b"m1", None)])
        async with AsyncClient(b.target) as reader:
            after = [*written, *failed_batch.tokens, *more, *batch.tokens]
            got = await reader.multi_get([b"m1", b"m2", b"m3", b"m4"], after=after)
        return [v.data if v else None for _, v in got]

    assert asyncio.run(via_async()) == [None, b"2", b"3", b"4"]


def test_kvs2_load_writes_json_lines_and_csv_and_reports_bad_lines(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, tmp_path: Path
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic)
    jsonl = tmp_path / "in.jsonl"
    lines = [json.dumps({"key": f"j{i}", "value": f"{i}"}) for i in range(2500)]
    lines.append(json.dumps({"key": "", "value": "empty key"}))
    lines.append(json.dumps({"key": "j0", "delete": True}))
    jsonl.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [*kvs2_command(), "load", str(jsonl), "--target", a.target, "--batch", "1000", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr  # one bad line
    assert json.loads(run.stdout) == {"items": 2502, "published": 2501, "failed": 1}
    assert "line 2501: invalid" in run.stderr
    assert "items" in run.stderr and "%" in run.stderr  # the progress bar
    csv_file = tmp_path / "in.csv"
    csv_file.write_text('key,value\nc1,"one, with a comma"\nc2,two\n')
    run = subprocess.run(
        [*kvs2_command(), "load", str(csv_file), "--header", "--target", a.target, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "items=2 published=2 failed=0"
    with a.client() as c:
        got = c.multi_get([b"j0", b"j1", b"j2499", b"c1", b"c2"], consistency="linearizable")
    assert [v.data if v else None for _, v in got] == [None, b"1", b"2499", b"one, with a comma", b"two"]


def test_a_key_repeated_in_a_batch_gets_each_of_its_positions_in_order(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """One delivery callback serves a whole batch (kvs2.kafka_io.BatchDelivery): a key's n-th report from
    librdkafka must reach the key's n-th item, and the last item of a key must decide its value."""
    a, b = (start_replica(kafka.bootstrap_servers, topic, name) for name in ("a", "b"))
    ops: list[WriteOp] = []
    for round_ in range(40):
        ops += [WriteOp(b"hot", f"{round_}".encode()), WriteOp(f"cold{round_}".encode(), b"c")]
        if round_ % 10 == 9:
            ops.append(WriteOp(b"hot", None))  # a delete in the middle of the repeats
    ops.append(WriteOp(b"hot", b"last"))
    with a.client() as ca:
        result = ca.write_batch(ops)
    assert [r.status for r in result.results] == ["published"] * len(ops)
    hot = [(op, r) for op, r in zip(ops, result.results, strict=True) if op.key == b"hot"]
    positions = [(r.written.partition, r.written.offset) for _, r in hot if r.written is not None]
    assert len(positions) == len(hot) and len({p for p, _ in positions}) == 1
    assert [o for _, o in positions] == sorted(o for _, o in positions)  # item order is log order
    assert len(set(positions)) == len(positions)
    for op, r in hot:
        assert r.written is not None
        assert r.revision == (r.written.offset + 1 if op.value is not None else 0)
    with b.client() as cb:
        got = cb.get(b"hot", after=result.tokens)
    assert got is not None and got.data == b"last" and got.revision == hot[-1][1].revision
