"""Which Kafka topic a KeyValueStore owns, recorded so that it can be proven later — pure decisions only.

Why: a topic name alone proves nothing. The same name can exist on another cluster (bootstrapServers
changed), be deleted and re-created by someone else (a new topic id), or be shared with another store.
The operator records in the store's status the Kafka cluster id, the topic id and whether the store
`Created` or `Adopted` the topic (a `Claim`), and every later action is checked against it:

- a pass re-verifies the claim (same cluster, same topic id) before touching the topic, and reports
  `KafkaClusterChanged` / `TopicLost` instead of "repairing" a topic that is not the store's;
- `topicDeletionPolicy: Delete` deletes only a topic the store *created*, on the recorded cluster,
  whose id is still the recorded one (`deletion_verdict`);
- a second store asking for a topic another store already claimed is refused (`TopicInUse`).

Stores from before ownership tracking (status.topic without a topic id) are claimed again on their
next pass as `Adopted` — conservative: their topic is then never deleted by the operator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Ownership(StrEnum):
    CREATED = "Created"
    ADOPTED = "Adopted"


@dataclass(frozen=True)
class Claim:
    """A store's recorded ownership of one topic on one Kafka cluster."""

    topic: str
    cluster_id: str
    topic_id: str
    ownership: Ownership

    def status_fields(self) -> dict[str, str]:
        return {
            "topic": self.topic,
            "kafkaClusterId": self.cluster_id,
            "topicId": self.topic_id,
            "topicOwnership": str(self.ownership),
        }

    def describe(self) -> str:
        verb = "created" if self.ownership == Ownership.CREATED else "adopted"
        return (
            f"topic {self.topic} (id {self.topic_id}) that this store {verb} on Kafka cluster "
            f"{self.cluster_id}"
        )


def claim_from_status(status: Mapping[str, Any], topic: str | None = None) -> Claim | None:
    """The claim recorded in `status`, or None (never claimed, a legacy status, or another topic name)."""
    name = status.get("topic")
    cluster = status.get("kafkaClusterId")
    topic_id = status.get("topicId")
    ownership = status.get("topicOwnership")
    if not (name and cluster and topic_id) or ownership not in tuple(Ownership):
        return None
    if topic is not None and name != topic:
        return None
    return Claim(str(name), str(cluster), str(topic_id), Ownership(str(ownership)))


@dataclass(frozen=True)
class Holder:
    """Another store that holds (or is about to hold) a topic."""

    namespace: str
    name: str
    uid: str
    ownership: str


def holder_of(topic: str, cluster_id: str, uid: str, stores: Iterable[Mapping[str, Any]]) -> Holder | None:
    """The first *other* store whose recorded claim is `topic` on `cluster_id`, if any."""
    for body in stores:
        meta = body.get("metadata") or {}
        if meta.get("uid") == uid:
            continue
        claim = claim_from_status(body.get("status") or {}, topic)
        if claim is not None and claim.cluster_id == cluster_id:
            namespace, name = str(meta.get("namespace")), str(meta.get("name"))
            return Holder(namespace, name, str(meta.get("uid")), claim.ownership)
    return None


class Verdict(StrEnum):
    DELETE = "Delete"
    RETAIN = "Retain"


@dataclass(frozen=True)
class DeletionVerdict:
    verdict: Verdict
    why: str


def deletion_verdict(
    claim: Claim | None, topic: str | None, cluster_id: str | None, topic_id: str | None
) -> DeletionVerdict:
    """May the operator delete `topic` as it now exists (`cluster_id`, `topic_id`; None = absent)?

    Only a topic the store created, on the cluster and with the id it recorded. Everything else stays.
    """
    if claim is None:
        what = f"topic {topic}" if topic else "the topic"
        return DeletionVerdict(
            Verdict.RETAIN, f"{what} was never recorded as created by this store; it is left in place"
        )
    if claim.ownership != Ownership.CREATED:
        return DeletionVerdict(
            Verdict.RETAIN, f"{claim.describe()} was adopted, not created, by this store; it is left in place"
        )
    if cluster_id != claim.cluster_id:
        return DeletionVerdict(
            Verdict.RETAIN,
            f"spec.kafka.bootstrapServers reaches Kafka cluster {cluster_id}, not {claim.cluster_id} where "
            f"this store created topic {claim.topic}; nothing was deleted",
        )
    if topic_id is None:
        return DeletionVerdict(Verdict.RETAIN, f"{claim.describe()} was already gone")
    if topic_id != claim.topic_id:
        return DeletionVerdict(
            Verdict.RETAIN,
            f"topic {claim.topic} on Kafka cluster {cluster_id} is a different topic (id {topic_id}) than "
            f"the one this store created (id {claim.topic_id}); it is left in place",
        )
    return DeletionVerdict(Verdict.DELETE, f"{claim.describe()} is deleted")
