"""A replica's phase on its metrics port, on real Kafka: `Bootstrapping` while it receives a peer's snapshot
(before its store and its real endpoint exist), then `Serving` — what the operator writes to status.pods."""

from __future__ import annotations

import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.common import free_port, wait_until
from tests.harness.kafka import KafkaBroker
from tests.integration.dataplane.conftest import StartReplica

pytestmark = pytest.mark.integration

KEYS = 2000
# The peer sends its snapshot this slowly (a few hundred kB: several seconds), so that the new replica
# stays in its bootstrap long enough to be asked, however fast or slow the machine is at the rest.
SNAPSHOT_RATE = "32768"


def _phase(listen: str) -> str | None:
    """The phase the metrics port reports; None while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kvs2_replica_phase" and s.value == 1:
                return str(s.labels["phase"])
    return None


def test_a_bootstrapping_replica_says_so_on_its_metrics_port_then_serves(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a_listen = f"127.0.0.1:{free_port()}"
    a = start_replica(
        kafka.bootstrap_servers,
        topic,
        "a",
        extra_args=("--metrics-listen", a_listen, "--snapshot-max-bytes-per-second", SNAPSHOT_RATE),
    )
    with a.client() as c:
        c.set_many([(f"k{i}".encode(), b"v" * 100) for i in range(KEYS)])
        wait_until(lambda: c.count(prefix=b"k") == KEYS, timeout=60, what="a to apply every key")
    assert _phase(a_listen) == "Serving"

    b_listen = f"127.0.0.1:{free_port()}"
    # The harness returns once the replica's gRPC port listens, which is after its bootstrap: ask its
    # metrics port meanwhile, from a thread.
    seen: list[str | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(_phase(b_listen))
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        b = start_replica(
            kafka.bootstrap_servers,
            topic,
            "b",
            extra_args=("--bootstrap-peers", a.target, "--metrics-listen", b_listen),
        )
        wait_until(lambda: seen[-1:] == ["Serving"], timeout=60, what="b to report Serving")
    finally:
        done.set()
        watcher.join()
    phases = [p for i, p in enumerate(seen) if p is not None and (i == 0 or seen[i - 1] != p)]
    assert phases[0] == "Bootstrapping", seen
    assert phases[-1] == "Serving", seen
    assert "bootstrapped from a snapshot of peer" in b.log_text()
    with b.client() as cb:
        assert cb.count(prefix=b"k") == KEYS
