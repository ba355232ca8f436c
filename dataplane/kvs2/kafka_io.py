"""The Kafka border: every confluent-kafka object is made here, and every librdkafka error is mapped
here into `kvs2.errors`. Nothing else in the data plane imports confluent_kafka.

Why a border: librdkafka reports failures as error codes on futures, callbacks and messages;
the rest of the code should see a small set of meaningful exceptions instead.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from kvs2.errors import (
    InvalidArgument,
    KafkaUnavailable,
    Kvs2Error,
    PermissionDenied,
    TopicNotFound,
    WriteOutcomeUnknown,
)
from kvs2.kafka_security import ConnectionProblems
from kvs2.storage import SIDE_MARKER, Conditional, Record, TopicIdentity, parse_side_key, side_key

log = logging.getLogger(__name__)

# Upper bound of what a single record adds to its key and value on the wire (record batch header,
# record framing, varints). Values are checked against the limit minus key and this overhead.
RECORD_OVERHEAD = 256
# message.timeout.ms is the write timeout plus this: a caller's wait always ends first (kvs2.core).
MESSAGE_TIMEOUT_MARGIN = 30.0
# Delivery failures after which the record may nevertheless be in the log. A purged *queued* record too:
# after a request timeout librdkafka puts the request's records back in the queue to retry them, although
# the broker may already hold them.
_AMBIGUOUS = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._PURGE_INFLIGHT,
    KafkaError._PURGE_QUEUE,
}
# librdkafka's default `message.max.bytes`.
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
# librdkafka's default `queue.buffering.max.messages` (records waiting in the producer).
DEFAULT_QUEUE_MESSAGES = 100_000

_NOT_FOUND = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
}


def map_error(err: KafkaError | None, doing: str) -> Kvs2Error:
    """One librdkafka error → the kvs2 exception a caller can act on."""
    if err is None:
        return KafkaUnavailable(f"{doing}: Kafka reported an unknown failure")
    code = err.code()
    text = f"{doing}: {err.str()}"
    if code in _NOT_FOUND:
        return TopicNotFound(text)
    if code in _TOO_LARGE:
        return InvalidArgument(text)
    if code in _DENIED:
        return PermissionDenied(text)
    return KafkaUnavailable(text + CONNECTION_PROBLEMS.hint())


def _map_exception(exc: BaseException, doing: str) -> Kvs2Error:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return map_error(exc.args[0], doing)
    return KafkaUnavailable(f"{doing}: {exc}{CONNECTION_PROBLEMS.hint()}")


class _Throttle(logging.Filter):
    """Lets each distinct librdkafka message through once per `interval` seconds.

    Why: with Kafka down, librdkafka reports every reconnect attempt (several a second per client);
    one line per problem per half-minute says the same without burying everything else.
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self._interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self._interval) < self._interval:
                return False
            self._last[key] = now
            if len(self._last) > 1000:
                self._last.clear()
        return True


RDKAFKA_LOG = logging.getLogger("kvs2.rdkafka")
RDKAFKA_LOG.addFilter(_Throttle())


# TLS/SASL failures (kvs2.kafka_security): named in the messages of the timeouts they cause.
CONNECTION_PROBLEMS = ConnectionProblems()
_CONNECTION_SECURITY = {KafkaError._SSL, KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}


def _on_error(err: KafkaError) -> None:
    if err.code() in _CONNECTION_SECURITY:
        CONNECTION_PROBLEMS.note(err.str())


def client_config(bootstrap_servers: str, extra: Mapping[str, str]) -> dict[str, Any]:
    """Settings shared by every client; librdkafka's own log lines go through Python logging.

    No client may make Kafka create the topic: a deleted topic must be reported, never silently
    replaced by an empty one with the broker's default (non-compacted) settings.
    """
    return {
        "bootstrap.servers": bootstrap_servers,
        "logger": RDKAFKA_LOG,
        "error_cb": _on_error,
        **extra,
        "allow.auto.create.topics": "false",
    }


# ----- admin -------------------------------------------------------------------------------------
class Admin:
    """Metadata look-ups the ingester and the writer need; each call is bounded by `timeout`."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._client = AdminClient(dict(config))

    def serve_logs(self) -> None:
        """Deliver the client's queued log lines (and callbacks); the ingester calls this in its loop."""
        self._client.poll(0)

    def describe(self, topic: str, timeout: float = 10.0) -> TopicIdentity:
        futures = self._client.describe_topics(TopicCollection([topic]), request_timeout=timeout)
        try:
            desc = futures[topic].result(timeout=timeout + 5)
        except Exception as exc:
            raise _map_exception(exc, f"describing topic {topic!r}") from exc
        return TopicIdentity(topic=topic, topic_id=str(desc.topic_id), partitions=len(desc.partitions))

    def end_offsets(self, topic: str, partitions: int, timeout: float = 10.0) -> dict[int, int]:
        """The offset a consumer must reach to have read everything committed now, per partition."""
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(topic, p): latest for p in range(partitions)}
        futures = self._client.list_offsets(
            request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout
        )
        out: dict[int, int] = {}
        try:
            for tp, fut in futures.items():
                out[tp.partition] = fut.result(timeout=timeout + 5).offset
        except Exception as exc:
            raise _map_exception(exc, f"listing end offsets of {topic!r}") from exc
        return out

    def end_offsets_each(
        self, topic: str, partitions: Collection[int], timeout: float = 10.0
    ) -> dict[int, int | Kvs2Error]:
        """End offsets of just `partitions`, each answer on its own: a partition whose leader is down
        gives its error without failing the others (linearizable reads and staleness proofs need only
        the partitions they touch)."""
        if not partitions:
            return {}
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(topic, p): latest for p in sorted(set(partitions))}
        try:
            futures = self._client.list_offsets(
                request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout
            )
        except Exception as exc:
            raise _map_exception(exc, f"listing end offsets of {topic!r}") from exc
        out: dict[int, int | Kvs2Error] = {}
        for tp, fut in futures.items():
            try:
                out[tp.partition] = fut.result(timeout=timeout + 5).offset
            except Exception as exc:
                out[tp.partition] = _map_exception(
                    exc, f"listing the end offset of {topic!r}[{tp.partition}]"
                )
        return out

    def start_offsets(self, topic: str, partitions: int, timeout: float = 10.0) -> dict[int, int]:
        """The first offset Kafka still holds, per partition (a snapshot must not reflect less)."""
        earliest = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(topic, p): earliest for p in range(partitions)}
        futures = self._client.list_offsets(request, request_timeout=timeout)
        out: dict[int, int] = {}
        try:
            for tp, fut in futures.items():
                out[tp.partition] = fut.result(timeout=timeout + 5).offset
        except Exception as exc:
            raise _map_exception(exc, f"listing start offsets of {topic!r}") from exc
        return out

    def _topic_setting(self, topic: str, name: str, timeout: float) -> int:
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        futures = self._client.describe_configs([resource], request_timeout=timeout)
        try:
            configs = next(iter(futures.values())).result(timeout=timeout + 5)
        except Exception as exc:
            raise _map_exception(exc, f"reading the configuration of {topic!r}") from exc
        return int(configs[name].value)

    def max_message_bytes(self, topic: str, timeout: float = 10.0) -> int:
        return self._topic_setting(topic, "max.message.bytes", timeout)

    def delete_retention_ms(self, topic: str, timeout: float = 10.0) -> int:
        """The topic's `delete.retention.ms`: how long tombstones outlive compaction (kvs2.guard)."""
        return self._topic_setting(topic, "delete.retention.ms", timeout)

    def min_compaction_lag_ms(self, topic: str, timeout: float = 10.0) -> int:
        """The topic's `min.compaction.lag.ms`: Kafka never compacts a record younger than this, so a gap
        among younger offsets is a transaction marker, not a lost change (kvs2.storage, Replica.apply)."""
        return self._topic_setting(topic, "min.compaction.lag.ms", timeout)

    def create_topic(
        self,
        topic: str,
        partitions: int,
        replication_factor: int,
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> bool:
        """Create a compacted topic. Returns False when it already existed."""
        settings = {"cleanup.policy": "compact", **(config or {})}
        new = NewTopic(
            topic, num_partitions=partitions, replication_factor=replication_factor, config=settings
        )
        futures = self._client.create_topics([new], request_timeout=timeout)
        try:
            futures[topic].result(timeout=timeout + 5)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise _map_exception(exc, f"creating topic {topic!r}") from exc
        return True


class OffsetGone(Kvs2Error):
    """A stored offset is no longer in the log: the replica cannot be completed from there."""


# ----- consumer ----------------------------------------------------------------------------------
# The replica's fetch and queue tuning; `--kafka-config` overrides any of it (measured in bench/RESULTS.md,
# "Write and replay side"). Why these sizes: the prefetch queue is most of a caught-up replica's anonymous
# memory (librdkafka keeps it full whether or not the replica needs it), and 32 MiB still holds more than
# 0.1 s of replay at full speed; fetches larger than the queue only make it overshoot. Latency: the broker
# answers a fetch as soon as one byte is there (fetch.min.bytes=1), a full queue is re-checked every 10 ms
# rather than librdkafka's default second (which stalled replay with a bounded queue), and small requests
# are sent at once (no Nagle delay).
CONSUMER_TUNING: dict[str, Any] = {
    "fetch.wait.max.ms": 100,
    "fetch.min.bytes": 1,
    "fetch.queue.backoff.ms": 10,
    "queued.min.messages": 100_000,
    "queued.max.messages.kbytes": 32768,
    "fetch.max.bytes": 16 << 20,
    "max.partition.fetch.bytes": 4 << 20,
    "socket.nagle.disable": True,
}
# What replay's correctness rests on; never taken from `--kafka-config` (kvs2.config refuses them with
# the reason, and they are applied last here in case a caller skipped that check).
CONSUMER_GUARANTEES: dict[str, Any] = {
    # A group id is required by the client even though no group is ever joined (assign, never subscribe).
    "group.id": "kvs2-replica-assign-only",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # End-of-partition events carry the end offset: how the replica learns it is caught up.
    "enable.partition.eof": True,
    # A stored offset that Kafka no longer has means the replica cannot be completed from the log:
    # report it (and rebuild) instead of silently jumping to the latest offset.
    "auto.offset.reset": "error",
    # Records of aborted or open transactions are never applied.
    "isolation.level": "read_committed",
}


class ChangelogReader:
    """Reads every partition of the topic from given offsets: `assign`, never a consumer group.

    Why no group: every replica must hold every partition; a group would split them.
    """

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer({**CONSUMER_TUNING, **config, **CONSUMER_GUARANTEES})

    topic_in_doubt = False

    def assign(self, partitions: int, next_offsets: Mapping[int, int]) -> None:
        self._consumer.assign(
            [TopicPartition(self.topic, p, next_offsets.get(p, OFFSET_BEGINNING)) for p in range(partitions)]
        )

    def read(self, max_records: int, timeout: float) -> tuple[list[Record], dict[int, int]]:
        """A batch of records, and the next offsets that reaching the end of a partition revealed.

        After a topic-level error (the topic or a partition unknown), `topic_in_doubt` is set until the
        caller clears it: the topic may have been deleted and recreated under the same name, and its
        records must not be applied before the topic's identity is checked again.

        End-of-partition events carry the partition's end offset: the only way to learn that the
        consumer's position moved past a gap (compaction, transaction markers) with no record after it.
        """
        records: list[Record] = []
        eof: dict[int, int] = {}
        # consume(n, timeout) waits for n messages or the whole timeout, which would hold a trickle of
        # writes back by `timeout`. So: take what is queued; if nothing is, wait for the first message
        # only, then take what queued up behind it.
        batch = self._consumer.consume(num_messages=max_records, timeout=0)
        if not batch:
            batch = self._consumer.consume(num_messages=1, timeout=timeout)
            if batch:
                batch += self._consumer.consume(num_messages=max_records - 1, timeout=0)
        append = records.append
        # tuple.__new__ skips the NamedTuple's Python-level __new__: replay makes one Record per record.
        make, record = tuple.__new__, Record
        for msg in batch:
            err = msg.error()
            if err is None:
                key = msg.key() or b""
                if key.startswith(SIDE_MARKER):
                    append(_conditional_record(msg, key))
                else:
                    append(make(record, (key, msg.value(), msg.partition(), msg.offset(), None)))
                continue
            code = err.code()
            if code == KafkaError._PARTITION_EOF:
                eof[_int(msg.partition())] = _int(msg.offset())
            elif code == KafkaError._AUTO_OFFSET_RESET:
                raise OffsetGone(f"topic {self.topic!r}: {err.str()}")
            elif err.fatal():
                raise map_error(err, f"reading topic {self.topic!r}")
            else:
                # Transient (a broker restarting, a leader moving): librdkafka retries by itself.
                if code in _NOT_FOUND:
                    self.topic_in_doubt = True
                log.warning("reading topic %r: %s (retrying)", self.topic, err.str())
        return records, eof

    def high_watermarks(self, partitions: int) -> dict[int, int]:
        """Kafka's end offsets from the consumer's last fetch responses: free, slightly behind."""
        out: dict[int, int] = {}
        for p in range(partitions):
            try:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                out[p] = high
        return out

    def close(self) -> None:
        self._consumer.close()


def _int(value: int | None) -> int:
    assert value is not None
    return value


# Headers of a conditional record: the expected revision (8 bytes, big-endian; 0 = must not exist)
# and the operation. A conditional delete still carries a non-null value, so Kafka never treats it as a
# tombstone of its side key.
HEADER_IF_REVISION = "kvs2-if-revision"
HEADER_OP = "kvs2-op"
OP_DELETE = b"delete"
_EXPECTED = struct.Struct(">q")


def _unqueued(err: Any) -> Kvs2Error:
    """Why librdkafka refused to queue a record of a batch (it is certainly not in the log)."""
    if isinstance(err, KafkaError) and err.code() == KafkaError._QUEUE_FULL:
        return KafkaUnavailable("the producer's queue is full: Kafka is not accepting writes fast enough")
    if isinstance(err, KafkaError):
        return map_error(err, "writing to Kafka")
    return KafkaUnavailable(f"writing to Kafka: {err}")


def _conditional_record(msg: Message, key: bytes) -> Record:
    parsed = parse_side_key(key)
    assert parsed is not None
    request_id, user_key = parsed
    value = msg.value()
    partition, offset = _int(msg.partition()), _int(msg.offset())
    if value is None:  # the clean-up tombstone of a conditional record
        return Record(user_key, None, partition, offset, Conditional(request_id, 0, False, tombstone=True))
    headers = dict(msg.headers() or [])
    raw_expected = headers.get(HEADER_IF_REVISION)
    # A malformed condition can never hold: -1 is no revision.
    expected = (
        _EXPECTED.unpack(raw_expected)[0]
        if isinstance(raw_expected, bytes) and len(raw_expected) == 8
        else -1
    )
    delete = headers.get(HEADER_OP) == OP_DELETE
    return Record(user_key, bytes(value), partition, offset, Conditional(request_id, expected, delete))


# ----- producer ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WriteToken:
    """Where Kafka stored a write: a replica has applied it once its next offset passes `offset`."""

    partition: int
    offset: int


class BatchDelivery:
    """The acknowledgements of one batch of records (`Writer.write_many`), filled in by the poll thread.

    Kept as columns (`partitions[i]`, `offsets[i]`; `errors[i]` for a refused or doubtful record) rather than
    an object per record. One delivery callback serves the whole batch: librdkafka reports a partition's
    records in the order they were produced, and a key always goes to the same partition, so the n-th
    report for a key belongs to the n-th record of the batch with that key (`_first`, `_later`).
    An offset of -1 means no answer yet.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        size = len(keys)
        self.partitions: list[int] = [-1] * size
        self.offsets: list[int] = [-1] * size
        self.errors: dict[int, Kvs2Error] = {}
        self.done: Future[None] = Future()
        self.lock = threading.Lock()  # guards the key → record mapping and the count
        self._keys = keys
        self._remaining = size
        # Per key: the index of its first unanswered record, and the indexes of later ones (rare).
        self._first: dict[bytes, int] = {}
        self._later: dict[bytes, collections.deque[int]] = {}
        first = self._first
        for index, key in enumerate(keys):
            if first.setdefault(key, index) != index:
                self._later.setdefault(key, collections.deque()).append(index)
        if size == 0:
            self.done.set_result(None)

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery report of one record of the batch (the poll thread)."""
        key = msg.key()
        with self.lock:
            index = self._first.pop(key)  # type: ignore[arg-type]
            if self._later:
                self._move_up(key)  # type: ignore[arg-type]
        if err is None:
            self.partitions[index] = _int(msg.partition())
            self.offsets[index] = _int(msg.offset())  # last: an offset >= 0 means the answer is complete
        elif err.code() in _AMBIGUOUS or err.fatal():
            self.errors[index] = WriteOutcomeUnknown(
                f"writing to Kafka: {err.str()}; the write may still be applied later"
            )
        else:
            self.errors[index] = map_error(err, "writing to Kafka")
        self._answered()

    def _move_up(self, key: bytes) -> None:
        later = self._later.get(key)
        if later:
            self._first[key] = later.popleft()
            if not later:
                del self._later[key]

    def unsent(self, index: int, error: Kvs2Error) -> None:
        """Record `index` never reached librdkafka's queue: no report will come. Call with `lock` held."""
        key = self._keys[index]
        if self._first.get(key) == index:
            del self._first[key]
            self._move_up(key)
        else:
            self._later[key].remove(index)
            if not self._later[key]:
                del self._later[key]
        self.errors[index] = error
        self._remaining -= 1
        if self._remaining == 0 and not self.done.done():
            with contextlib.suppress(Exception):  # InvalidStateError: the caller cancelled its wait
                self.done.set_result(None)

    def settle(self, index: int, result: WriteToken | Kvs2Error) -> None:
        """The answer for `index` from elsewhere (a producer without `write_many`; see kvs2.core)."""
        if isinstance(result, WriteToken):
            self.partitions[index] = result.partition
            self.offsets[index] = result.offset
        else:
            self.errors[index] = result
        self._answered()

    def _answered(self) -> None:
        with self.lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last and not self.done.done():
            with contextlib.suppress(Exception):  # InvalidStateError: the caller cancelled its wait
                self.done.set_result(None)


class Writer:
    """An idempotent, acks=all producer whose delivery reports resolve thread-safe futures.

    The `murmur2_random` partitioner is the Java client's: a Java or Kafka Connect producer puts a
    key in the same partition as we do, so any Kafka producer can write to a store.

    One produce request in flight per broker connection (`max.in.flight.requests.per.connection=1`), so
    a record is never written twice. Why (torture seed 23, tests/integration/faults/test_duplicates.py):
    with several requests in flight, a request R1 that times out (frozen connection, broker restart) may
    already be in the log; librdkafka keeps its records to retry them with the same sequence numbers,
    which the broker would recognise. But when the request behind it, R2, is answered
    OUT_OF_ORDER_SEQUENCE_NUMBER, librdkafka (2.16 too; librdkafka issue #4953) bumps the producer epoch
    and renumbers every unacknowledged record — R1's included — so the broker takes R1's records as new
    and appends them a second time, after newer writes. With one request in flight no R2 can be behind
    an unanswered R1: R1 is retried alone and deduplicated. `enable.gapless.guarantee` does not help
    here (it only turns *permanent* batch failures into fatal errors; this epoch bump is not one).

    A fatal producer error (librdkafka's idempotence guarantees can no longer hold) makes the producer
    unusable for good. The writer then re-creates it: writes fail with UNAVAILABLE until the new one is
    in place, and `on_health(False)` reports the replica unfit to take writes while there is none.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        *,
        message_timeout: float,
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
        on_health: Callable[[bool], None] = lambda _ok: None,
    ) -> None:
        self.topic = topic
        self._settings: dict[str, Any] = {
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            # Latency without costing batches: a record is sent at once (no linger), and records produced
            # while a request is out wait for it anyway (one request in flight, below), so they still
            # leave together. Small requests are not held back by Nagle's algorithm either.
            "linger.ms": 0,
            "socket.nagle.disable": True,
            # Longer than any wait for an acknowledgement, so the caller's own timer fires first and
            # says the write may still be applied; a delivery timeout says so too (_AMBIGUOUS).
            "message.timeout.ms": int((message_timeout + MESSAGE_TIMEOUT_MARGIN) * 1000),
            **config,
            # After `config`: the no-duplicates guarantee rests on it (see the class docstring).
            "max.in.flight.requests.per.connection": 1,
            "error_cb": self._on_error,
        }
        self._factory = producer_factory
        self.on_health = on_health
        self._lock = threading.Lock()
        self._fatal: KafkaError | None = None
        self._producer = producer_factory(self._settings)
        self._message_max_bytes = int(self._settings.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        self._queue_max = int(self._settings.get("queue.buffering.max.messages", DEFAULT_QUEUE_MESSAGES))
        self.topic_max_message_bytes: int | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kvs2-producer-poll", daemon=True)
        self._poller.start()

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (poll thread): fatal errors start a re-creation."""
        _on_error(err)  # a TLS/SASL reason, for the messages of the timeouts it causes (kvs2.kafka_security)
        if not err.fatal():  # transient; librdkafka retries, and its own log line already said it
            log.debug("producer: %s", err.str())
            return
        with self._lock:
            if self._fatal is not None:
                return
            self._fatal = err
        log.error(
            "the Kafka producer hit a fatal error (%s): re-creating it; writes fail until then", err.str()
        )
        self.on_health(False)

    def _recreate(self) -> bool:
        """Replace a producer that hit a fatal error. Returns whether it worked (poll thread)."""
        old = self._producer
        with contextlib.suppress(Exception):
            old.purge(in_queue=True, in_flight=True)
            old.flush(1.0)  # serves the purged writes' delivery reports: their callers learn now
        try:
            new = self._factory(self._settings)
        except Exception as exc:
            log.error("could not re-create the Kafka producer: %s; retrying (writes fail meanwhile)", exc)
            return False
        with self._lock:
            self._producer = new
            self._fatal = None
        log.warning("re-created the Kafka producer after a fatal error; writes go through again")
        self.on_health(True)
        return True

    def max_record_bytes(self) -> int:
        """The largest key+value the topic and the producer both accept."""
        limit = self._message_max_bytes
        if self.topic_max_message_bytes is not None:
            limit = min(limit, self.topic_max_message_bytes)
        return limit - RECORD_OVERHEAD

    def write(self, key: bytes, value: bytes | None) -> Future[WriteToken]:
        """Hand one record to the producer; the future resolves on Kafka's acknowledgement."""
        return self._produce(key, value, None, None)

    def _produce(
        self, key: bytes, value: bytes | None, partition: int | None, headers: list[tuple[str, bytes]] | None
    ) -> Future[WriteToken]:
        fut: Future[WriteToken] = Future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if not fut.set_running_or_notify_cancel():
                return  # the caller gave up (deadline); nobody is waiting for this report
            if err is not None and (err.code() in _AMBIGUOUS or err.fatal()):
                fut.set_exception(
                    WriteOutcomeUnknown(
                        f"writing to Kafka: {err.str()}; the write may still be applied later"
                    )
                )
            elif err is not None:
                fut.set_exception(map_error(err, "writing to Kafka"))
            else:
                fut.set_result(WriteToken(_int(msg.partition()), _int(msg.offset())))

        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if headers:
            extra["headers"] = headers
        try:
            with self._lock:  # never onto a producer being replaced
                if self._fatal is not None:
                    raise KafkaUnavailable(
                        f"the Kafka producer hit a fatal error ({self._fatal.str()}) and is being "
                        "re-created; retry shortly"
                    )
                self._producer.produce(self.topic, key=key, value=value, on_delivery=on_delivery, **extra)
        except BufferError as exc:
            raise KafkaUnavailable(
                "the producer's queue is full: Kafka is not accepting writes fast enough"
            ) from exc
        except KafkaException as exc:
            raise _map_exception(exc, "writing to Kafka") from exc
        return fut

    def write_many(
        self, keys: Sequence[bytes], values: Sequence[bytes | None], queue_wait: float
    ) -> BatchDelivery:
        """Hand many records to the producer in one call (`produce_batch`; no wait for acknowledgements).

        The answers fill in per record as Kafka acknowledges or refuses (`WriteOutcomeUnknown` when it
        may still be in the log); `BatchDelivery.done` resolves once every record has its answer. One
        delivery callback and one future per batch, not per record (measured: Write rows in
        bench/RESULTS.md). When librdkafka's local queue has no room for the whole batch, this waits
        for the poll thread to free it for up to `queue_wait` seconds, then fails the records that do
        not fit (certainly not in the log). Blocks; call it off the event loop.
        """
        batch = BatchDelivery(keys)
        if not keys:
            return batch
        messages = [{"key": k, "value": v} for k, v in zip(keys, values, strict=True)]
        deadline = time.monotonic() + queue_wait
        # Wait for room without holding the producer lock: a single Set on the event loop takes it too.
        while len(self._producer) + len(messages) > self._queue_max and time.monotonic() < deadline:
            time.sleep(0.005)  # the poll thread frees the queue as Kafka acknowledges
        with self._lock:  # never onto a producer being replaced
            producer = self._producer
            with batch.lock:  # reports wait until the records that never entered the queue are known
                if self._fatal is not None:
                    problem: Kvs2Error = KafkaUnavailable(
                        f"the Kafka producer hit a fatal error ({self._fatal.str()}) and is being "
                        "re-created; retry shortly"
                    )
                    for index in range(len(messages)):
                        batch.unsent(index, problem)
                    return batch
                try:
                    producer.produce_batch(self.topic, messages, on_delivery=batch.on_delivery)
                except (KafkaException, BufferError) as exc:  # nothing of the batch was queued
                    problem = _map_exception(exc, "writing to Kafka")
                    for index in range(len(messages)):
                        batch.unsent(index, problem)
                    return batch
                for index, message in enumerate(messages):
                    err = message.get("_error")
                    if err is not None:
                        batch.unsent(index, _unqueued(err))
        return batch

    def write_conditional(
        self, request_id: bytes, key: bytes, value: bytes | None, expected_revision: int, partition: int
    ) -> Future[WriteToken]:
        """A conditional record: its own unique Kafka key, in the user key's partition (kvs2.conditional)."""
        headers = [(HEADER_IF_REVISION, _EXPECTED.pack(expected_revision))]
        if value is None:
            headers.append((HEADER_OP, OP_DELETE))
        return self._produce(side_key(request_id, key), b"" if value is None else value, partition, headers)

    def tombstone(self, side: bytes, partition: int) -> Future[WriteToken]:
        """Let compaction drop a conditional record that replay no longer needs."""
        return self._produce(side, None, partition, None)

    def _poll_loop(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            if self._fatal is not None:
                if self._recreate():
                    delay = 0.1
                else:
                    self._stop.wait(delay)
                    delay = min(delay * 2, 5.0)
                continue
            self._producer.poll(0.1)

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued (bounded), stop the poll thread. Returns records left undelivered."""
        left = int(self._producer.flush(timeout))
        self._stop.set()
        self._poller.join(timeout=2)
        if left:
            log.warning("%d writes were not acknowledged by Kafka before shutdown", left)
        return left
