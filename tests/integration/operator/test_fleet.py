"""Many stores, one dead Kafka: the healthy stores do not wait for it.

30 stores in one namespace, one of them pointing at a Kafka that does not exist. Every Kafka and API call
is bounded by a timeout and passes run concurrently, so the 29 healthy stores get their topic and their
workload (TopicReady=True, WorkloadReady waiting only for pods, which nothing runs here) within the bound
stated below, while the dead one reports KafkaUnavailable. Bound: 240 s on a shared 2-core machine
(the waits are the bound; no timing is asserted beyond them). Then, in steady state, the passes read the
stores' children from the operator's watch-fed cache: a resync interval goes by with no GET of a child."""

from __future__ import annotations

import itertools
import json
import re

from tests.harness.common import ManagedProcess, free_port
from tests.harness.kafka import KafkaBroker

from .conftest import Stores, store_manifest

STORES = 30
BOUND_SECONDS = 240.0
#: The operator's log line after each resync sweep (handlers.resync_loop).
SWEEP = re.compile(r"children read from memory (\d+) times, with a GET (\d+) times")


def test_thirty_stores_one_on_a_dead_kafka(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    stores.apply(store_manifest("dead", dead, replicas=1))
    names = [f"fleet-{i:02}" for i in range(STORES - 1)]
    for name in names:
        stores.apply(store_manifest(name, kafka.bootstrap_servers, replicas=1))

    def healthy_ones_progressed() -> bool:
        listed = json.loads(stores.kubectl("get", "kvs", "-o", "json"))["items"]
        conditions = {
            item["metadata"]["name"]: {
                c["type"]: c for c in (item.get("status") or {}).get("conditions") or ()
            }
            for item in listed
        }
        return all(
            conditions.get(name, {}).get("TopicReady", {}).get("status") == "True"
            and conditions[name].get("WorkloadReady", {}).get("reason") == "ReplicasNotReady"
            for name in names
        )

    stores.wait(
        f"{len(names)} healthy stores to get topic and workload", healthy_ones_progressed, BOUND_SECONDS
    )
    stores.wait_condition("dead", "Ready", "False", "KafkaUnavailable", timeout=60)
    assert stores.get("statefulset", "dead") is None

    # Steady state: the passes read the children from the watch-fed cache, not with GETs. The operator
    # reports its cache's reads at every resync sweep; the dead store (no children: each of its passes
    # looks for a StatefulSet it never got) is deleted first so that only steady passes remain.
    stores.kubectl("delete", "kvs", "dead", "--wait=true")

    def steady_interval() -> tuple[int, int] | None:
        sweeps = [
            (int(m.group(1)), int(m.group(2)))
            for m in SWEEP.finditer(operator.log_path.read_text(errors="replace"))
        ]
        for (hits, misses), (later_hits, later_misses) in itertools.pairwise(sweeps[-10:]):
            if later_hits > hits and later_misses == misses:
                return later_hits - hits, later_misses - misses
        return None

    hits, misses = stores.wait("a resync interval of cached reads only", steady_interval, timeout=120)
    assert hits > 0 and misses == 0


def test_a_changed_credentials_secret_rolls_the_pods(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    """Env from a Secret is read when a container starts: a new password reaches the replicas only
    through a rollout, which the hash annotation on the pod template triggers."""

    def secret(password: str) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kafka-user"},
            "stringData": {"username": "store", "password": password},
        }

    def template_hash() -> str | None:
        sts = stores.get("statefulset", "rolling") or {}
        annotations = sts.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
        value = annotations.get("kvs2.io/credentials-hash")
        return str(value) if value else None

    manifest = store_manifest("rolling", kafka.bootstrap_servers)
    stores.apply(manifest)
    stores.wait_condition("rolling", "TopicReady", "True", "TopicCreated")
    stores.apply(secret("first"))
    manifest["spec"]["kafka"]["authentication"] = {
        "secretName": "kafka-user",
        "securityProtocol": "SASL_PLAINTEXT",
    }
    stores.apply(manifest)
    first = stores.wait("a credentials hash on the pod template", template_hash)
    stores.apply(secret("second"))
    second = stores.wait("another hash", lambda: (h := template_hash()) != first and h)
    assert second and second != first
