"""Reads that scale with replicas (issue 12 item 5): one client's calls spread over every replica of a
multi-address target and move off a replica whose gRPC health turns NOT_SERVING.

To tell which replica answered, the two replicas follow different topics: "who" is "a" in one and "b"
in the other. Replica b turns NOT_SERVING (and stays up, answering health checks) when its topic is
deleted. The client has no read retries, so a call that still reached b would fail the test.
"""

from __future__ import annotations

import grpc
from kvs2.client import Client, channel_options

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker, create_topic, delete_topic
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica

CALLS = 40


def _who(client: Client) -> list[bytes]:
    out = []
    for _ in range(CALLS):
        value = client.get(b"who")
        assert value is not None
        out.append(value.data)
    return out


def test_one_client_spreads_over_replicas_and_skips_one_not_serving(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    other = f"{topic}-b"
    create_topic(kafka.bootstrap_servers, other, PARTITIONS, config={"cleanup.policy": "compact"})
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, other, "b")
    for replica, name in ((a, b"a"), (b, b"b")):
        with replica.client() as c:
            written = c.set(b"who", name)
            assert c.get(b"who", after=[written]) is not None
    target = f"ipv4:{a.target},{b.target}"
    with Client(target, retries=0) as client:
        # Connections (and their health checks) come up in the background: wait until both serve calls,
        # then a round of calls is shared between them.
        wait_until(lambda: set(_who(client)) == {b"a", b"b"}, timeout=60, what="calls to reach both replicas")
        answers = _who(client)
        assert answers.count(b"a") >= CALLS // 4 and answers.count(b"b") >= CALLS // 4, answers
        delete_topic(kafka.bootstrap_servers, other)
        wait_until(lambda: b.health() == "NOT_SERVING", timeout=60, what="replica b to turn NOT_SERVING")

        # The channel learns b's health from its own health watch: wait for it, then every call is a's.
        def only_a() -> bool:
            try:
                return set(_who(client)) == {b"a"}
            except grpc.RpcError:  # reached b while it was turning NOT_SERVING
                return False

        wait_until(only_a, timeout=60, what="calls to move off replica b")
        assert _who(client) == [b"a"] * CALLS
        assert b.health() == "NOT_SERVING"


def test_a_single_address_target_keeps_one_replica() -> None:
    assert channel_options("127.0.0.1:50051") == []
    assert channel_options("dns:///kvs2-demo-headless.default:50051")
    assert channel_options("127.0.0.1:50051", round_robin=True)
