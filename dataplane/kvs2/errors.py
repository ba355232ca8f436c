"""The data plane's exception hierarchy.

The core raises only these; the gRPC servicer maps them to status codes in one table
(`kvs2.server.STATUS_OF`), and the Kafka border (`kvs2.kafka_io`) maps librdkafka errors into them.
Every message is written for the person who sent the request: it says what was wrong and the limit.
"""

from __future__ import annotations


class Kvs2Error(Exception):
    """Base of every error the data plane reports to a caller."""


class InvalidArgument(Kvs2Error):
    """The request itself is wrong (empty key, key or value over a limit, too many keys)."""


class Unavailable(Kvs2Error):
    """A dependency (Kafka) cannot be reached or did not answer in time; retrying later may work."""


class KafkaUnavailable(Unavailable):
    """Kafka could not be reached, or did not acknowledge a write within its deadline."""


class WriteOutcomeUnknown(KafkaUnavailable):
    """The write was handed to the producer but not acknowledged in time: it may still be applied.

    Why a separate type: a caller that retries must know the first attempt may also land.
    """


class StorageFailed(Unavailable):
    """The replica could not write its data directory (kvs2.diskspace); it stopped applying records."""


class StorageFull(StorageFailed):
    """The data directory's disk is full; the replica resumes applying once space is freed."""


class FailedPrecondition(Kvs2Error):
    """The system is not in a state where the request can run (e.g. the topic does not exist)."""


class TopicNotFound(FailedPrecondition):
    """The configured topic does not exist in Kafka."""


class DeadlineExceeded(Kvs2Error):
    """A read could not be made as fresh as asked (token, linearizable, staleness) within its deadline."""


class HistoryUnavailable(Kvs2Error):
    """A watch asked to start before the change history this replica still holds.

    Why its own type: the remedy is specific — read a snapshot with Range, then watch from its positions.
    """


class PermissionDenied(Kvs2Error):
    """Kafka refused the operation for lack of authorization."""


class ConfigError(Kvs2Error):
    """The process was started with settings that cannot work."""
