from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError
from kvs2_operator.errors import (
    KafkaClusterChangedError,
    KafkaRejectedError,
    KafkaUnavailableError,
    NotSupportedError,
    TopicIncompatibleError,
    TopicLostError,
)
from kvs2_operator.kafka_admin import TopicAdmin, TopicState, check_compatible, config_changes
from kvs2_operator.model import parse_store
from kvs2_operator.ownership import Claim, Ownership

from .fakes import FakeAdmin, FakeTopic, kafka_error


def _topic(body: dict[str, Any]) -> Any:
    return parse_store(body).spec.kafka.topic


def _admin(fake: FakeAdmin) -> TopicAdmin:
    return TopicAdmin({"bootstrap.servers": "x:1"}, admin_factory=lambda _cfg: fake, timeout=1)


COMPACT = {"cleanup.policy": "compact", "min.insync.replicas": "2"}


def test_compatible_topic_passes(body: dict[str, Any]) -> None:
    check_compatible(_topic(body), TopicState("shop.orders", 6, 3, COMPACT), owned=False)
    check_compatible(_topic(body), TopicState("shop.orders", 6, 3, COMPACT), owned=True)


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        (TopicState("shop.orders", 12, 3, COMPACT), "12 partitions"),
        (TopicState("shop.orders", 6, 1, COMPACT), "replication factor is 1"),
        (TopicState("shop.orders", 6, 3, {"cleanup.policy": "delete"}), "cleanup.policy is 'delete'"),
        (TopicState("shop.orders", 6, 3, {"cleanup.policy": "compact,delete"}), "cleanup.policy"),
    ],
)
def test_foreign_incompatible_topic_is_not_adopted(
    body: dict[str, Any], state: TopicState, fragment: str
) -> None:
    with pytest.raises(TopicIncompatibleError, match=fragment) as info:
        check_compatible(_topic(body), state, owned=False)
    assert "left unchanged" in info.value.message


def test_owned_topic_partition_change_is_not_supported(body: dict[str, Any]) -> None:
    with pytest.raises(NotSupportedError, match="per-key order") as info:
        check_compatible(_topic(body), TopicState("shop.orders", 3, 3, COMPACT), owned=True)
    assert info.value.permanent


def test_owned_topic_with_drifted_cleanup_policy_is_repaired_not_refused(body: dict[str, Any]) -> None:
    state = TopicState("shop.orders", 6, 3, {"cleanup.policy": "delete", "min.insync.replicas": "2"})
    check_compatible(_topic(body), state, owned=True)
    assert config_changes(_topic(body), state) == {"cleanup.policy": "compact"}


async def test_ensure_creates_a_compacted_topic(body: dict[str, Any]) -> None:
    fake = FakeAdmin()
    result = await _admin(fake).ensure(_topic(body))
    assert result.created
    # Created with a minimum compaction lag, so Watch tells other producers' transaction markers from
    # compaction gaps (kvs2.ingest); a topic it adopts is left as it is.
    assert fake.topics["shop.orders"] == FakeTopic(6, 3, {**COMPACT, "min.compaction.lag.ms": "60000"})
    assert result.state.partitions == 6 and result.changed_config == {}
    assert result.claim == Claim(
        "shop.orders", "cluster-a", fake.topics["shop.orders"].topic_id, Ownership.CREATED
    )


async def test_a_compaction_lag_in_the_spec_wins_at_creation(body: dict[str, Any]) -> None:
    body["spec"]["kafka"]["topic"] = {
        **body["spec"]["kafka"].get("topic", {}),
        "config": {"min.compaction.lag.ms": "5000"},
    }
    fake = FakeAdmin()
    await _admin(fake).ensure(_topic(body))
    assert fake.topics["shop.orders"].config["min.compaction.lag.ms"] == "5000"


async def test_ensure_adopts_a_compatible_topic_and_sets_managed_config(body: dict[str, Any]) -> None:
    fake = FakeAdmin(
        topics={"shop.orders": FakeTopic(6, 3, {"cleanup.policy": "compact", "retention.ms": "1"})}
    )
    result = await _admin(fake).ensure(_topic(body))
    assert not result.created
    assert result.changed_config == {"min.insync.replicas": "2"}
    assert fake.topics["shop.orders"].config["min.insync.replicas"] == "2"
    assert fake.topics["shop.orders"].config["retention.ms"] == "1"  # not ours: untouched
    assert result.claim.ownership == Ownership.ADOPTED


async def test_ensure_leaves_an_incompatible_topic_untouched(body: dict[str, Any]) -> None:
    fake = FakeAdmin(topics={"shop.orders": FakeTopic(2, 3, {"cleanup.policy": "delete"})})
    with pytest.raises(TopicIncompatibleError):
        await _admin(fake).ensure(_topic(body))
    assert fake.mutating_calls() == []
    assert fake.topics["shop.orders"] == FakeTopic(2, 3, {"cleanup.policy": "delete"})


async def test_ensure_refuses_a_partition_change_without_touching_kafka(body: dict[str, Any]) -> None:
    fake = FakeAdmin(topics={"shop.orders": FakeTopic(3, 3, {"cleanup.policy": "compact"})})
    claim = Claim("shop.orders", "cluster-a", fake.topics["shop.orders"].topic_id, Ownership.ADOPTED)
    with pytest.raises(NotSupportedError):
        await _admin(fake).ensure(_topic(body), claim=claim)
    assert fake.mutating_calls() == []


async def test_ensure_is_idempotent(body: dict[str, Any]) -> None:
    fake = FakeAdmin()
    admin = _admin(fake)
    first = await admin.ensure(_topic(body))
    second = await admin.ensure(_topic(body), claim=first.claim)
    assert not second.created and second.changed_config == {}
    assert second.claim == first.claim
    assert fake.mutating_calls() == ["create shop.orders"]


async def test_kafka_down_maps_to_unavailable(body: dict[str, Any]) -> None:
    fake = FakeAdmin(down=True)
    with pytest.raises(KafkaUnavailableError, match="Kafka unavailable") as info:
        await _admin(fake).ensure(_topic(body))
    assert not info.value.permanent


async def test_refusal_maps_to_rejected(body: dict[str, Any]) -> None:
    class Refusing(FakeAdmin):
        def create_topics(self, new_topics: list[Any], **kwargs: Any) -> Any:
            from .fakes import _done

            return {
                t.topic: _done(error=kafka_error(KafkaError.INVALID_REPLICATION_FACTOR)) for t in new_topics
            }

    with pytest.raises(KafkaRejectedError, match=r"creating topic shop\.orders"):
        await _admin(Refusing()).ensure(_topic(body))


async def test_delete_reports_whether_something_was_deleted() -> None:
    fake = FakeAdmin(topics={"t": FakeTopic(1, 1, {})})
    admin = _admin(fake)
    assert await admin.delete("t") is True
    assert await admin.delete("t") is False


def _claimed(fake: FakeAdmin, ownership: Ownership = Ownership.CREATED) -> Claim:
    return Claim("shop.orders", fake.cluster_id, fake.topics["shop.orders"].topic_id, ownership)


async def test_a_claimed_topic_that_vanished_is_lost_not_recreated(body: dict[str, Any]) -> None:
    fake = FakeAdmin(topics={"shop.orders": FakeTopic(6, 3, dict(COMPACT))})
    claim = _claimed(fake)
    del fake.topics["shop.orders"]
    with pytest.raises(TopicLostError, match="no longer exists") as info:
        await _admin(fake).ensure(_topic(body), claim=claim)
    assert info.value.permanent and claim.topic_id in info.value.message
    assert fake.mutating_calls() == [] and "shop.orders" not in fake.topics


async def test_a_re_created_topic_of_the_same_name_is_lost_and_untouched(body: dict[str, Any]) -> None:
    fake = FakeAdmin(topics={"shop.orders": FakeTopic(6, 3, dict(COMPACT))})
    claim = _claimed(fake)
    fake.topics["shop.orders"] = FakeTopic(6, 3, {"cleanup.policy": "delete"})
    with pytest.raises(TopicLostError, match="different topic"):
        await _admin(fake).ensure(_topic(body), claim=claim)
    assert fake.mutating_calls() == []
    assert fake.topics["shop.orders"].config == {"cleanup.policy": "delete"}


async def test_another_cluster_is_reported_and_nothing_is_touched(body: dict[str, Any]) -> None:
    fake = FakeAdmin(topics={"shop.orders": FakeTopic(6, 3, {"cleanup.policy": "delete"})})
    claim = Claim("shop.orders", "cluster-old", "id-old", Ownership.CREATED)
    with pytest.raises(KafkaClusterChangedError, match="cluster-a") as info:
        await _admin(fake).ensure(_topic(body), claim=claim)
    assert "cluster-old" in info.value.message
    assert fake.calls == ["describe cluster"]
