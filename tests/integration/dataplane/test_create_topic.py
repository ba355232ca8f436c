"""`kvs2 serve --create-topic` on real Kafka: the topic it creates is one kvs2's promises hold on."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from tests.harness.kafka import KafkaBroker
from tests.integration.dataplane.conftest import StartReplica

pytestmark = pytest.mark.integration


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    return {name: entry.value for name, entry in described.items()}


def test_create_topic_makes_a_compacted_topic_with_a_compaction_lag(
    kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    """min.compaction.lag.ms: Kafka then never compacts a record younger than it, so a gap among fresh
    offsets is another producer's transaction marker, not a lost change, and Watch does not cut there
    (kvs2.ingest, "fresh" offsets). With Kafka's default 0, every such gap ends a Watch with OUT_OF_RANGE."""
    start_replica(kafka.bootstrap_servers, topic_name, extra_args=("--create-topic",))
    config = _topic_config(kafka.bootstrap_servers, topic_name)
    assert config["cleanup.policy"] == "compact"
    assert config["min.compaction.lag.ms"] == "60000"
