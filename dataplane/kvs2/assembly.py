"""How a replica's parts are put together: used by the gRPC replica (`kvs2.server.running_replica`) and
the in-process one (`kvs2.embedded`), so both are built the same way and never drift apart.

Why a module of its own: the embedded replica must not pull in the gRPC server, health or Redis front.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvs2.conditional import ConditionalWrites
from kvs2.config import ServeSettings
from kvs2.core import Store
from kvs2.ingest import Ingester, TopicSpec
from kvs2.kafka_io import Admin, ChangelogReader, Writer, client_config
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Outcome, Replica


@dataclass
class ReplicaParts:
    """Everything below the front doors: LMDB, the producer, admin look-ups, CAS and the store."""

    settings: ServeSettings
    kafka: dict[str, Any]
    replica: Replica
    progress: Progress
    writer: Writer
    admin: Admin
    conditional: ConditionalWrites
    store: Store

    def set_limit(self, limit: int) -> None:
        """The topic's record size limit, as the ingester learned it."""
        self.writer.topic_max_message_bytes = limit

    def ingester(
        self,
        on_progress: Callable[[Snapshot], None],
        on_outcomes: Callable[[list[Outcome]], None],
        on_limit: Callable[[int], None],
        restart_to_rebuild: Callable[[str], None] | None = None,
        *,
        may_restart_before_serving: bool = True,
    ) -> Ingester:
        """The single LMDB writer, reading every partition of the topic (not started)."""
        settings = self.settings
        kafka = self.kafka
        return Ingester(
            self.replica,
            self.admin,
            lambda: ChangelogReader(kafka, settings.topic),
            settings.topic,
            on_progress,
            on_topic_limit=on_limit,
            on_outcomes=on_outcomes,
            create=TopicSpec(settings.partitions, settings.replication_factor)
            if settings.create_topic
            else None,
            guard_margin=settings.guard_margin,
            restart_to_rebuild=restart_to_rebuild,
            may_restart_before_serving=may_restart_before_serving,
        )


def build_parts(settings: ServeSettings, loop: asyncio.AbstractEventLoop) -> ReplicaParts:
    kafka = client_config(settings.bootstrap_servers, settings.kafka_config)
    replica = Replica(settings.data_dir, map_size=settings.map_size, history_bytes=settings.history_bytes)
    progress = Progress(loop)
    writer = Writer(kafka, settings.topic, message_timeout=settings.default_write_timeout)
    admin = Admin(kafka)
    conditional = ConditionalWrites(writer, replica, progress, settings.cas_cleanup_grace)
    store = Store(
        replica,
        writer,
        progress,
        settings.limits,
        end_offsets=lambda partitions: admin.end_offsets_each(settings.topic, partitions),
        conditional=conditional,
        topic_now=lambda: admin.describe(settings.topic).topic_id,
    )
    return ReplicaParts(settings, kafka, replica, progress, writer, admin, conditional, store)
