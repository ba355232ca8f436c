"""A *running* replica cut off from Kafka for longer than the topic's `delete.retention.ms` must not keep
keys whose tombstones compaction dropped while it could not read them.

Found by `make torture` (linearizable reads on a replica after a cut or a pause saw a value that another
replica had deleted). The resurrection guard (kvs2.guard) covered only a replica that *restarts*; a
replica whose connection to Kafka is cut (or whose process is paused) resumes from its position without a
restart, and a tombstone that was written, cleaned and dropped meanwhile is never read: the deleted key
lives on in that replica, its reads are wrong and its compare-and-sets decide against a state no other
replica has.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from kvs2.client import Client, Written

from tests.harness.common import wait_until
from tests.harness.nemesis import FaultStack, rolling_keys

pytestmark = pytest.mark.integration


def _keys_in_topic(bootstrap: str, topic: str, partitions: int) -> set[bytes]:
    """Every Kafka key with any record (value or tombstone) still in the topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "resurrection-running-test",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    keys: set[bytes] = set()
    left = set(range(partitions))
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        while left:
            msg = consumer.poll(10)
            assert msg is not None, "no end-of-partition from the broker"
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    left.discard(msg.partition() or 0)
                    continue
                raise AssertionError(err.str())
            keys.add(msg.key() or b"")
    finally:
        consumer.close()
    return keys


def _give_r0_peers(stack: FaultStack, request: pytest.FixtureRequest) -> str:
    """Restart r0 with `--bootstrap-peers` = r1 (until the end of the test): its rebuild while running then
    restarts the process to take r1's snapshot (kvs2.restart). Returns r1's address."""
    r0, peer = stack.replicas["r0"], stack.replicas["r1"].target
    plain = r0.extra_args

    def restore() -> None:
        r0.stop()
        r0.extra_args = plain
        r0.start()

    r0.stop()
    r0.extra_args = (*plain, "--bootstrap-peers", peer)
    request.addfinalizer(restore)
    stack.restart_replica("r0")
    r0.wait_serving(timeout=120)
    return peer


@pytest.mark.parametrize("fault", ["cut", "pause", "cut, with peers"])
def test_a_replica_cut_off_past_delete_retention_does_not_keep_deleted_keys(
    stack: FaultStack, fault: str, request: pytest.FixtureRequest
) -> None:
    peer = _give_r0_peers(stack, request) if fault.endswith("with peers") else None
    tag = f"{fault.split(',')[0]}-{time.monotonic_ns()}"
    doomed = [f"doomed-{tag}-{i}".encode() for i in range(8)]
    kept = [f"kept-{tag}-{i}".encode() for i in range(8)]
    config = stack.config
    with (
        Client(stack.replicas["r1"].target, timeout=10.0) as w,
        Client(stack.replicas["r0"].target, timeout=60.0) as r,
    ):
        written = [w.set(key, b"v-" + key) for key in doomed + kept]
        # r0 holds every key before it is cut off. After every write, not only the last: the keys are
        # spread over partitions, and one partition's position says nothing of another's.
        after = [Written(t.partition, t.offset) for t in written]
        for key in doomed + kept:
            assert r.get(key, after=after) is not None
        rebuilds_before = r.replica_status().guard_rebuilds
        log_from = len(stack.replicas["r0"].log_text())
        process = stack.replicas["r0"].process
        assert process is not None
        if fault.startswith("cut"):
            stack.cut("r0")
        else:
            stack.pause_replica("r0")
        try:
            for key in doomed:
                w.delete(key)
            round_ = 0

            def compacted_away() -> bool:
                """Keep writing so segments roll and the cleaner passes, until the tombstones are gone."""
                nonlocal round_
                round_ += 1
                for key in rolling_keys(f"~filler-{tag}-", config.partitions):
                    w.set(key, f"{round_}".encode())
                time.sleep(config.segment_ms / 1000 + 0.1)
                for key in rolling_keys(f"~roll-{tag}-", config.partitions):  # every partition rolls
                    w.set(key, f"{round_}".encode())
                in_topic = _keys_in_topic(stack.kafka.bootstrap_servers, config.topic, config.partitions)
                return not (in_topic & set(doomed))

            wait_until(
                compacted_away,
                timeout=180,
                interval=0.5,
                what="compaction to drop the doomed keys' tombstones",
            )
            end = w.set(f"~roll-{tag}".encode(), b"end")
        finally:
            if fault.startswith("cut"):
                stack.heal("r0")
            else:
                stack.resume_replica("r0")

        # r0 is back: once it has what r1 wrote last (a rebuild may take it through NOT_SERVING first),
        # it must agree with r1 on every key.
        def caught_up() -> bool:
            try:
                return r.get(f"~roll-{tag}".encode(), after=[Written(end.partition, end.offset)]) is not None
            except Exception:
                return False

        wait_until(caught_up, timeout=180, interval=0.5, what="r0 to catch up after the fault")
        alive = [k.decode() for k in doomed if r.get(k, consistency="linearizable") is not None]
        assert alive == [], f"r0 still holds keys deleted (and compacted away) while it was cut off: {alive}"
        for key in kept:
            got = r.get(key, consistency="linearizable")
            assert got is not None and got.data == b"v-" + key
        # Rebuilt in place (no restart), counted for metrics and `kvs2 status`, with the reason. With peers
        # the same process (its PID: exec, kvs2.restart) took r1's snapshot, and counted it once.
        assert process.alive() and stack.replicas["r0"].process is process
        status = r.replica_status()
        assert status.guard_rebuilds > rebuilds_before
        assert "delete.retention.ms" in status.guard_last_reason
        if peer is not None:
            log = stack.replicas["r0"].log_text()[log_from:]
            restarted = log.find("restarting this replica process to rebuild it")
            assert restarted >= 0, log[-4000:]
            assert f"bootstrapped from a snapshot of peer {peer}" in log[restarted:], log[restarted:][-4000:]
            # Each rebuild the guard asked for counted once, none lost over the exec: the running guard's,
            # and — this stack's delete.retention.ms being far below the margin — the start-up guard's
            # after the snapshot (a copy older than the window is rebuilt again: "every restart rebuilds").
            running = log.count("replica is stale (partition")
            at_start = log.count("must be rebuilt, not resumed")
            assert running >= 1
            assert status.guard_rebuilds == rebuilds_before + running + at_start, log[-4000:]
