"""No write is appended to the log twice, whatever the network and the broker do (seed 23's defect).

Torture seed 23 found plain Sets that r1 answered UNAVAILABLE ("may still be applied") while the broker was
down appended at offsets 83-91 after the restart and *again* at 108-116 once r1's connection had been
frozen, after newer acknowledged writes; the broker logged an OutOfOrderSequenceException. One write with
two revisions, an old value back after a newer acknowledged one.

This scenario sets up what that needs, repeatedly: a dozen writers keep several produce requests in flight
from r1 to one broker, r1's connection is frozen or delayed for longer than the producer's request
timeout (so in-flight requests time out while the broker may already hold them, or gets them later), then
healed; once the broker is
killed -9 and restarted with writes queued. The topic is not compacted during the test (long segments), so
afterwards every record is still in the log: a Watch on r0 from offset 0 delivers all of them, and
`checkers.single_record` judges that each written value is there once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from kvs2.client import Client

from tests.harness import checkers
from tests.harness.history import Delivery, History
from tests.harness.nemesis import FaultStack, StackConfig
from tests.harness.recorder import Recorder
from tests.harness.torture import final_read
from tests.integration.faults.conftest import running

pytestmark = pytest.mark.integration

WRITERS = 12
KEYS = 6
# Short, so a freeze of FREEZE_S times out every produce request in flight (librdkafka then retries them,
# not knowing whether the broker has them: exactly the state in which seed 23's duplicates were made).
REQUEST_TIMEOUT_MS = 1500
FREEZE_S = 3.0
FREEZES = 6
DELAY_MS = 2500


@pytest.fixture(scope="module")
def dup_stack(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    config = StackConfig(
        replicas=2,
        topic="dupwrite",
        segment_ms=3_600_000,  # no compaction while the test runs: every record stays to be counted
        replica_args=("--kafka-config", f"request.timeout.ms={REQUEST_TIMEOUT_MS}", "--write-timeout", "5"),
    )
    with running(FaultStack(tmp_path_factory.mktemp("dupwrite"), config), pytestconfig) as stack:
        yield stack


@pytest.fixture
def stack(dup_stack: FaultStack) -> Iterator[FaultStack]:
    """Named `stack` so the directory's conftest attaches the replicas' logs to a failure."""
    yield dup_stack
    dup_stack.heal_all()


def _writer(stack: FaultStack, history: History, n: int, prefix: str, stop: threading.Event) -> None:
    rec = Recorder(history, n)
    with Client(stack.replicas["r1"].target, timeout=3.0, retries=0) as c:
        i = 0
        while not stop.is_set():
            i += 1
            op = rec.set(c, "r1", f"{prefix}{(n + i) % KEYS}", f"p{n}-{i}")
            if op.outcome != "ok":
                time.sleep(0.05)  # r1 or Kafka is down: do not spin


def _log_of(stack: FaultStack, history: History, prefix: str) -> int:
    """Every record under `prefix` from offset 0 on, through r0's Watch, into `history.deliveries`."""
    _values, applied = final_read(stack, "r0", stack.replicas["r0"].target)
    partitions = stack.config.partitions
    with Client(stack.replicas["r0"].target, timeout=120.0, retries=0) as c:
        for event in c.watch(
            prefix=prefix.encode(), from_={p: 0 for p in range(partitions)}, progress_interval_ms=200
        ):
            if event.kind == "progress":
                if all(event.applied.get(p, 0) >= o for p, o in applied.items()):
                    break
                continue
            history.add_delivery(
                Delivery(
                    0,
                    1,
                    "r0",
                    event.kind,
                    event.key.decode(),
                    (event.value or b"").decode(),
                    event.revision,
                    event.partition,
                    event.offset,
                    time.monotonic_ns(),
                )
            )
    return len(history.deliveries)


def test_no_write_is_appended_twice_across_freezes_and_a_broker_restart(stack: FaultStack) -> None:
    history = History()
    prefix = f"dup{time.monotonic_ns()}-"
    stop = threading.Event()
    threads = [
        threading.Thread(target=_writer, args=(stack, history, n, prefix, stop), daemon=True)
        for n in range(WRITERS)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        for round_ in range(FREEZES):
            if round_ == FREEZES // 2:
                # Writes queue up in r1's producer while the broker is down (answered UNAVAILABLE, "may
                # still be applied"), then go out on the restart — into the freeze that follows.
                stack.kill_broker()
                time.sleep(4.0)
                stack.restart_broker()
            # Odd rounds freeze (bytes held until healed), even rounds delay past the request timeout
            # (the broker gets each request late, after the producer gave up waiting for its answer).
            if round_ % 2:
                stack.freeze("r1")
            else:
                stack.delay("r1", DELAY_MS)
            time.sleep(FREEZE_S)
            stack.heal("r1")
            time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        stack.heal_all()
    writes = [o for o in history.ops if o.is_write]
    assert any(o.outcome == "ok" for o in writes), "no write was acknowledged at all"
    assert any(o.outcome == "info" for o in writes), "no write was ambiguous: the faults did not bite"
    try:
        delivered = _log_of(stack, history, prefix)
    except grpc.RpcError as exc:  # pragma: no cover - reported as the failure it is
        pytest.fail(f"could not read the log back through r0: {exc}")
    assert delivered >= sum(1 for o in writes if o.outcome == "ok")
    history.save(stack.workdir / "dupwrite-history.json")  # judged again with `torture --judge`
    verdict = checkers.single_record(history)
    assert verdict.checked > 0
    assert verdict.ok, f"{verdict.line()}\n" + "\n".join(verdict.violations[:20])
