"""A history of concurrent Set, compare-and-set and linearizable Get through two replicas, checked
for linearizability by porcupine (tests/harness/lincheck.py)."""

from __future__ import annotations

import random
import threading
import time

from kvs2.client import Client

from tests.harness.kafka import KafkaBroker
from tests.harness.lincheck import Op, check
from tests.integration.dataplane.conftest import StartReplica

KEYS = ["k0", "k1", "k2"]


def test_concurrent_history_across_replicas_is_linearizable(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    replicas = [start_replica(kafka.bootstrap_servers, topic, name) for name in ("a", "b")]
    history: list[Op] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(n: int) -> None:
        rng = random.Random(n)
        seen: dict[str, int] = {}
        try:
            with Client(replicas[n % 2].target, retries=0) as c:
                for i in range(60):
                    key = rng.choice(KEYS)
                    roll = rng.random()
                    call = time.monotonic_ns()
                    if roll < 0.4:
                        got = c.get(key.encode(), consistency="linearizable")
                        ret = time.monotonic_ns()
                        op = Op(
                            n,
                            "get",
                            key,
                            call,
                            ret,
                            found=got is not None,
                            out_value="" if got is None else got.data.decode(),
                            revision=0 if got is None else got.revision,
                        )
                        seen[key] = op.revision
                    elif roll < 0.7:
                        value = f"c{n}-{i}"
                        written = c.set(key.encode(), value.encode())
                        ret = time.monotonic_ns()
                        op = Op(n, "put", key, call, ret, value=value, revision=written.offset + 1)
                        seen[key] = op.revision
                    else:
                        value = f"c{n}-{i}"
                        expected = 0 if rng.random() < 0.2 else seen.get(key, 0)
                        cas = c.set_if(key.encode(), value.encode(), expected)
                        ret = time.monotonic_ns()
                        op = Op(
                            n, "cas", key, call, ret, value=value, expected=expected, applied=cas.applied,
                            revision=cas.revision,
                        )  # fmt: skip
                        seen[key] = cas.revision
                    with lock:
                        history.append(op)
        except BaseException as exc:  # a failed call has an unknown outcome: the history is unusable
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"calls failed on a healthy cluster: {errors[:3]}"
    assert len(history) == 360
    assert sum(1 for o in history if o.op == "cas" and o.applied) > 0
    assert sum(1 for o in history if o.op == "cas" and not o.applied) > 0
    assert check(history) == "ok"
