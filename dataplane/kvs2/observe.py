"""What a replica's leader process runs to be observable: the metrics endpoint and catch-up progress logs.

One object, started and closed by `kvs2.server` at one call site each, that binds the replica's live
state (`Progress`, the LMDB `Replica`) to `kvs2.metrics` and `kvs2.logs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kvs2 import metrics
from kvs2.config import ServeSettings
from kvs2.errors import ConfigError
from kvs2.logs import report_catchup
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Replica

log = logging.getLogger(__name__)


class LiveState:
    """`metrics.ReplicaState` over the running replica (read at scrape time, from the scrape thread:
    reading `progress.now` is one attribute load of an immutable snapshot)."""

    def __init__(self, progress: Progress, replica: Replica) -> None:
        self._progress = progress
        self._replica = replica

    def snapshot(self) -> Snapshot:
        return self._progress.now

    def lmdb(self) -> metrics.LmdbStats:
        return metrics.LmdbStats(**self._replica.stats())

    def skipped_records(self) -> int:
        return self._replica.skipped_records()


class Observer:
    def __init__(self, server: metrics.MetricsServer | None, reporter: asyncio.Task[None]) -> None:
        self.metrics_server = server
        self._reporter = reporter

    @classmethod
    def start(cls, settings: ServeSettings, progress: Progress, replica: Replica) -> Observer:
        server = None
        if settings.metrics_listen:
            registry = metrics.registry_for(LiveState(progress, replica), settings.workers)
            try:
                server = metrics.MetricsServer(settings.metrics_listen, registry)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on {settings.metrics_listen}: {exc}") from exc
            host, _ = metrics.parse_listen(settings.metrics_listen)
            log.info("metrics at http://%s:%d/metrics", host, server.port)
        reporter = asyncio.get_running_loop().create_task(
            report_catchup(settings.topic, lambda: progress.now, settings.progress_log_interval)
        )
        return cls(server, reporter)

    def close(self) -> None:
        self._reporter.cancel()
        if self.metrics_server is not None:
            with contextlib.suppress(OSError):
                self.metrics_server.close()
