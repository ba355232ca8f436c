"""The operator's exception hierarchy and the ONE closed list of condition reasons.

Why a closed list: reasons are an API. Users alert on them (`Reason == KafkaUnavailable`), `kubectl get
kvs` prints them, and Events carry them. A reason invented ad hoc in some branch is a reason nobody can
rely on, so every reason the operator may write is a member of `Reason`, and a unit test checks that
the status module never writes anything else.

Why a hierarchy: third-party errors (kubernetes' `ApiException`, urllib3's connection errors, Kafka's
`KafkaException`) are mapped to these types at exactly one border each (`kube.py`, `kafka_admin.py`).
Above that border the code decides only by *kind*: `permanent` errors wait for a spec change
(kopf.PermanentError), the others are retried with backoff (kopf.TemporaryError).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Every reason a condition or Event of a KeyValueStore may carry (CamelCase, as Kubernetes wants)."""

    # Ready=True / the happy path.
    READY = "Ready"
    TOPIC_CREATED = "TopicCreated"
    TOPIC_ADOPTED = "TopicAdopted"
    REPLICAS_READY = "ReplicasReady"
    SCALED_TO_ZERO = "ScaledToZero"
    # Refusals that wait for a person: the spec asks for something the operator will not do.
    INVALID_SPEC = "InvalidSpec"
    NOT_SUPPORTED = "NotSupported"
    TOPIC_INCOMPATIBLE = "TopicIncompatible"
    RESOURCE_CONFLICT = "ResourceConflict"
    TOPIC_IN_USE = "TopicInUse"
    TOPIC_LOST = "TopicLost"
    KAFKA_CLUSTER_CHANGED = "KafkaClusterChanged"
    CHILD_UPDATE_REFUSED = "ChildUpdateRefused"
    VOLUME_EXPANSION_NOT_SUPPORTED = "VolumeExpansionNotSupported"
    VOLUME_SHRINK_REFUSED = "VolumeShrinkRefused"
    # Outside trouble that is retried with backoff and heals without help.
    KAFKA_UNAVAILABLE = "KafkaUnavailable"
    KAFKA_REJECTED = "KafkaRejected"
    CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
    CERT_MANAGER_MISSING = "CertManagerMissing"
    KUBERNETES_API_ERROR = "KubernetesApiError"
    # The workload on its way.
    WAITING_FOR_TOPIC = "WaitingForTopic"
    WORKLOAD_PROGRESSING = "WorkloadProgressing"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    # Deletion.
    TOPIC_DELETED = "TopicDeleted"
    TOPIC_RETAINED = "TopicRetained"
    TOPIC_LEFT_BEHIND = "TopicLeftBehind"


class OperatorError(Exception):
    """Base of everything the operator raises on purpose. `reason` goes into the status as-is."""

    reason: Reason = Reason.KUBERNETES_API_ERROR
    permanent: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- permanent: a person must change the spec (or the world) ------------------------------------------


class SpecError(OperatorError):
    """The spec is invalid in a way the CRD schema could not express (or an old CRD let it through)."""

    reason = Reason.INVALID_SPEC
    permanent = True


class NotSupportedError(OperatorError):
    """The spec asks for a change the operator refuses: partition count, replication factor, ..."""

    reason = Reason.NOT_SUPPORTED
    permanent = True


class TopicIncompatibleError(OperatorError):
    """A topic of that name exists but cannot be adopted (partitions, replication or cleanup.policy)."""

    reason = Reason.TOPIC_INCOMPATIBLE
    permanent = True


class ResourceConflictError(OperatorError):
    """A child's name is taken by an object some other controller owns; the operator will not steal it."""

    reason = Reason.RESOURCE_CONFLICT
    permanent = True


class TopicInUseError(OperatorError):
    """Another KeyValueStore already owns the topic (same name on the same Kafka cluster)."""

    reason = Reason.TOPIC_IN_USE
    permanent = True


class TopicLostError(OperatorError):
    """The topic this store recorded (cluster id + topic id) is gone or was replaced by another topic.

    Never "repaired" by creating an empty topic: the store's data lived in the lost one.
    """

    reason = Reason.TOPIC_LOST
    permanent = True


class KafkaClusterChangedError(OperatorError):
    """spec.kafka.bootstrapServers now reaches another Kafka cluster than the one with the store's topic."""

    reason = Reason.KAFKA_CLUSTER_CHANGED
    permanent = True


class VolumeExpansionNotSupportedError(OperatorError):
    """spec.storage.size grew but the claims' StorageClass does not allow expansion (or there is none)."""

    reason = Reason.VOLUME_EXPANSION_NOT_SUPPORTED
    permanent = True


class VolumeShrinkRefusedError(OperatorError):
    """spec.storage.size is below the volumes' size: Kubernetes cannot shrink a volume."""

    reason = Reason.VOLUME_SHRINK_REFUSED
    permanent = True


# --- transient: retried with backoff -------------------------------------------------------------------


class TransientError(OperatorError):
    """Outside trouble; the same pass is expected to succeed later without anyone's help."""

    permanent = False


class KafkaUnavailableError(TransientError):
    """No broker answered in time (down, unreachable, still starting)."""

    reason = Reason.KAFKA_UNAVAILABLE


class KafkaRejectedError(TransientError):
    """Kafka answered and refused (e.g. replication factor larger than the broker count, bad config).

    Retried, more slowly: brokers may be added or an admin may fix the cluster.
    """

    reason = Reason.KAFKA_REJECTED


class CredentialsUnavailableError(TransientError):
    """The Secret named in spec.kafka.authentication is missing or lacks a key; it may appear later."""

    reason = Reason.CREDENTIALS_UNAVAILABLE


class KubernetesApiError(TransientError):
    """The Kubernetes API failed or was unreachable (any status other than the ones handled in place)."""

    reason = Reason.KUBERNETES_API_ERROR

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubernetesNotFoundError(KubernetesApiError):
    """404 — raised only where absence is an error; `kube.get` returns None instead."""


class KubernetesConflictError(KubernetesApiError):
    """409 — an optimistic-concurrency or apply conflict."""


class KubernetesInvalidError(KubernetesApiError):
    """422/400 — the API server rejected a rendered child; the values came from the spec."""

    reason = Reason.INVALID_SPEC
    permanent = True


class ChildUpdateRefusedError(KubernetesInvalidError):
    """422 on a field Kubernetes does not allow to change on an existing child (e.g. a StatefulSet's
    selector or volumeClaimTemplates): the spec is fine, the operator must act (recreate the child)."""

    reason = Reason.CHILD_UPDATE_REFUSED
