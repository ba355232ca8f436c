"""Every Prometheus metric of a replica, defined in one place, and the HTTP endpoint that serves them.

Two kinds of metrics, kept apart on purpose:

* **State, read at scrape time** (`ReplicaCollector`): positions, end offsets, lag, staleness, health and
  LMDB usage are read from the latest `Progress` snapshot and from LMDB when Prometheus asks. Nothing is
  added to the ingester's or the server's hot paths for them, and they can never drift from the truth.
* **Events, counted as they happen** (`Instruments`): RPCs by method and status code, compare-and-set
  outcomes, Watch streams and events, read freshness waits, records and bytes applied. The hooks that feed
  them are one-liners in the modules that see the events (the RPC ones all live in `kvs2.interceptors`).

`--workers N` (one replica, N processes): event metrics use prometheus-client's *multiprocess mode* — each
process writes its counters to memory-mapped files in a directory private to this replica, and the leader's
endpoint sums them (`MultiProcessCollector`). The state metrics come only from the leader (it owns the
ingester and the positions; followers hold copies of the same snapshot), so nothing is counted twice.
Why not have the leader aggregate over its pipes: the pipes carry leader → follower news only, and
followers' counters would need a second channel, a merge, and a loss on crash; prometheus-client already
does exactly this with files, including histograms. A worker that exits is forgotten by the "live"
gauges (`worker_exited`). Process metrics (`process_*`) are the leader's alone: they describe the process
that answers the scrape, as everywhere in Prometheus, and are never summed or repeated per worker.

Labels are low-cardinality by construction: gRPC method names (a closed set), status code names, partition
numbers (the topic's partition count), and small closed enums — never keys, peers or request ids.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from kvs2.progress import Snapshot

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets for unary RPCs: sub-millisecond local reads up to Kafka round trips and deadlines.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Instruments:
    """The event metrics of this process. Created once per process (after `--workers` forked, so that
    in multiprocess mode each process writes its own files)."""

    def __init__(self) -> None:
        # Decided now, not when prometheus_client was imported: `prepare_workers` may have set the
        # directory after the import (the module import order must not change what gets counted).
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self.multiprocess = MULTIPROC_ENV in os.environ
        self.rpc_requests = Counter(
            "kvs2_rpc_requests",
            "RPCs handled, by gRPC method and status code (Watch counted when its stream ends)",
            ["service", "method", "code"],
            registry=None,
        )
        self.rpc_duration = Histogram(
            "kvs2_rpc_duration_seconds",
            "Time to answer a unary RPC, by gRPC method and status code",
            ["service", "method", "code"],
            buckets=RPC_BUCKETS,
            registry=None,
        )
        self.cas = Counter(
            "kvs2_cas",
            "Compare-and-set writes by outcome: applied, failed (condition false), unknown (no verdict "
            "before the deadline or Kafka unavailable: the write may still be applied)",
            ["outcome"],
            registry=None,
        )
        self.watch_open = Gauge(
            "kvs2_watch_streams_open",
            "Watch streams open now",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.watch_events = Counter(
            "kvs2_watch_events_sent",
            "Watch events sent to clients, by type (put, delete, progress)",
            ["type"],
            registry=None,
        )
        self.read_wait = Histogram(
            "kvs2_read_wait_seconds",
            "Time a read waited for the replica to be fresh enough, by consistency asked for "
            "(after = read-your-writes tokens, linearizable, max_lag, max_staleness); eventual never waits",
            ["consistency"],
            buckets=WAIT_BUCKETS,
            registry=None,
        )
        self.applied_records = Counter(
            "kvs2_applied_records", "Kafka records applied to LMDB by the ingester", registry=None
        )
        self.applied_bytes = Counter(
            "kvs2_applied_bytes", "Key and value bytes of the records applied to LMDB", registry=None
        )

    def all(self) -> list[Collector]:
        return [
            self.rpc_requests,
            self.rpc_duration,
            self.cas,
            self.watch_open,
            self.watch_events,
            self.read_wait,
            self.applied_records,
            self.applied_bytes,
        ]


_instruments: Instruments | None = None
_lock = threading.Lock()


def instruments() -> Instruments:
    """This process's instruments (made on first use)."""
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                _instruments = Instruments()
    return _instruments


# ----- one-line hooks for other modules -------------------------------------------------------------
class _Sized(Protocol):
    @property
    def key(self) -> bytes: ...
    @property
    def value(self) -> bytes | None: ...


def record_applied(records: Sequence[_Sized]) -> None:
    """The ingester applied `records` (one LMDB transaction)."""
    if records:
        m = instruments()
        m.applied_records.inc(len(records))
        m.applied_bytes.inc(sum(len(r.key) + len(r.value or b"") for r in records))


class _Options(Protocol):
    @property
    def linearizable(self) -> bool: ...
    @property
    def after(self) -> Sequence[object]: ...
    @property
    def max_lag_records(self) -> int: ...
    @property
    def max_staleness(self) -> float: ...


def consistency_label(options: _Options) -> str:
    """The strongest guarantee a read asked for: the one that decides how long it waits."""
    if options.linearizable:
        return "linearizable"
    if options.after:
        return "after"
    if options.max_lag_records:
        return "max_lag"
    if options.max_staleness:
        return "max_staleness"
    return "eventual"


@contextlib.contextmanager
def read_wait(options: _Options) -> Iterator[None]:
    """Time a freshness wait (`with metrics.read_wait(options): await wait_fresh(...)`)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        instruments().read_wait.labels(consistency_label(options)).observe(time.perf_counter() - started)


# ----- state read at scrape time ---------------------------------------------------------------------
@dataclass(frozen=True)
class LmdbStats:
    map_size: int
    page_size: int
    used_pages: int
    entries: int


class ReplicaState(Protocol):
    """What the collector reads: the latest progress snapshot and LMDB's numbers."""

    def snapshot(self) -> Snapshot: ...
    def lmdb(self) -> LmdbStats: ...
    def skipped_records(self) -> int: ...


class ReplicaCollector(Collector):
    """Positions, lag, health and storage of the replica, computed from its state when scraped."""

    def __init__(
        self, state: ReplicaState, workers: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._state = state
        self._workers = workers
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the partition count; registering must not call collect()

    def collect(self) -> Iterable[Metric]:
        s = self._state.snapshot()
        now = self._clock()
        applied = _family(
            "kvs2_partition_applied_offset", "Next offset to apply per partition (applied up to here)"
        )
        end = _family(
            "kvs2_partition_end_offset",
            "Kafka's end offset per partition as the replica's consumer last saw it",
        )
        lag = _family("kvs2_partition_lag_records", "Records Kafka has that the replica has not applied yet")
        stale = _family(
            "kvs2_partition_seconds_since_caught_up",
            "Seconds since the partition was last caught up with its end offset (+Inf: never)",
        )
        for p in range(s.partitions):
            labels = [str(p)]
            applied.add_metric(labels, s.applied.get(p, 0))
            end.add_metric(labels, s.high_watermarks.get(p, 0))
            lag.add_metric(labels, s.lag(p))
            stale.add_metric(labels, s.staleness(p, now))
        yield from (applied, end, lag, stale)
        total_end = sum(s.high_watermarks.values())
        total_applied = sum(min(s.applied.get(p, 0), e) for p, e in s.high_watermarks.items())
        yield GaugeMetricFamily(
            "kvs2_catchup_ratio",
            "Applied share of Kafka's end offsets over all partitions (1 when caught up; replay progress)",
            # No end offsets seen yet: nothing known to be applied unless the replica already serves.
            value=float(s.serving) if total_end == 0 else total_applied / total_end,
        )
        yield GaugeMetricFamily(
            "kvs2_serving",
            "1 when health is SERVING, 0 while catching up (NOT_SERVING)",
            value=int(s.serving),
        )
        yield phase_family(phase_of(s))
        yield CounterMetricFamily(
            "kvs2_guard_rebuilds",
            "Rebuilds the resurrection guard made: stored state possibly missing deletes (kvs2.guard)",
            value=s.guard_rebuilds,
        )
        yield GaugeMetricFamily(
            "kvs2_partitions", "Partitions of the topic the replica follows", value=s.partitions
        )
        yield GaugeMetricFamily(
            "kvs2_workers", "Server processes of this replica (--workers)", value=self._workers
        )
        yield GaugeMetricFamily(
            "kvs2_skipped_records",
            "Records skipped because LMDB cannot hold their key (empty or over 511 bytes)",
            value=self._state.skipped_records(),
        )
        st = self._state.lmdb()
        yield GaugeMetricFamily(
            "kvs2_lmdb_map_size_bytes", "LMDB map size (the most the file may grow to)", value=st.map_size
        )
        yield GaugeMetricFamily("kvs2_lmdb_page_size_bytes", "LMDB page size", value=st.page_size)
        yield GaugeMetricFamily(
            "kvs2_lmdb_used_pages", "LMDB pages in use (highest page number + 1)", value=st.used_pages
        )
        yield GaugeMetricFamily(
            "kvs2_lmdb_used_ratio", "Share of the LMDB map in use (near 1: the map grows)", value=_ratio(st)
        )
        yield GaugeMetricFamily(
            "kvs2_lmdb_entries", "Keys stored in the replica's data database", value=st.entries
        )


# ----- the replica's phase ------------------------------------------------------------------------------
#: Every phase a replica reports, in lifecycle order. `kvs2_replica_phase` has one series per phase, 1 for
#: the current one (kube-state-metrics' style), so an alert or the operator reads it without knowing the
#: replica's internals, and a phase that is absent from a scrape is never mistaken for 0 of another.
BOOTSTRAPPING = "Bootstrapping"  # receiving a peer's snapshot (kvs2.bootstrap), before the store opens
CATCHING_UP = "CatchingUp"  # applying the topic up to Kafka's end offsets; reads refused
SERVING = "Serving"  # caught up: health SERVING, reads served
NOT_SERVING = "NotServing"  # cannot follow the topic (its disk is full, Kafka refuses): data kept
PHASES = (BOOTSTRAPPING, CATCHING_UP, SERVING, NOT_SERVING)


def phase_of(s: Snapshot) -> str:
    """The phase a progress snapshot shows. A reported problem wins over "catching up": a replica whose
    disk is full is not going to catch up by waiting."""
    if s.serving:
        return SERVING
    if s.problem:
        return NOT_SERVING
    return CATCHING_UP


def phase_family(current: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "kvs2_replica_phase",
        "1 for the replica's current phase (Bootstrapping, CatchingUp, Serving, NotServing), else 0",
        labels=["phase"],
    )
    for phase in PHASES:
        family.add_metric([phase], int(phase == current))
    return family


class _PhaseOnly(Collector):
    def __init__(self, phase: str) -> None:
        self._phase = phase

    def collect(self) -> Iterable[Metric]:
        yield phase_family(self._phase)
        yield GaugeMetricFamily("kvs2_serving", "1 when health is SERVING, 0 otherwise", value=0)


@contextlib.contextmanager
def phase_endpoint(listen: str | None, phase: str) -> Iterator[None]:
    """Serve `/metrics` with only the phase (and `kvs2_serving 0`) on the replica's metrics port while its
    real endpoint does not exist yet — during a snapshot bootstrap, which may take minutes — so that the
    operator and Prometheus see "Bootstrapping" rather than a port that does not answer. Best effort: a
    port that cannot be bound is logged, never a reason to fail the bootstrap."""
    if not listen:
        yield
        return
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_PhaseOnly(phase))
    try:
        server: MetricsServer | None = MetricsServer(listen, registry)
    except OSError as exc:
        log.warning("cannot serve the %s phase on %s: %s", phase, listen, exc)
        server = None
    try:
        yield
    finally:
        if server is not None:
            server.close()


def _family(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["partition"])


def _ratio(st: LmdbStats) -> float:
    return 0.0 if st.map_size == 0 else st.used_pages * st.page_size / st.map_size


# ----- the endpoint ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def worker_files(workers: int) -> Iterator[None]:
    """Around `--workers` forking and serving: give the replica's processes a private multiprocess
    directory (set before the fork, so every process inherits it), and remove it when the replica exits."""
    if workers <= 1:
        yield
        return
    path = tempfile.mkdtemp(prefix="kvs2-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(MULTIPROC_ENV, None)


def worker_exited(pid: int) -> None:
    """A worker process of this replica ended (killed for not keeping up, or crashed): its share of the
    "live" gauges (open Watch streams) stops counting — its streams ended with it. Its counters and
    histograms stay summed: what it did, it did. Outside multiprocess mode there is nothing to forget."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def registry_for(state: ReplicaState, workers: int) -> CollectorRegistry:
    """The leader's registry: event metrics (this process's, or every worker's summed from their files),
    the replica's state, and the process metrics."""
    registry = CollectorRegistry(auto_describe=True)
    m = instruments()
    if m.multiprocess:
        MultiProcessCollector(registry, os.environ[MULTIPROC_ENV])  # type: ignore[no-untyped-call]
    else:
        for collector in m.all():
            registry.register(collector)
    registry.register(ReplicaCollector(state, workers))
    for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(default)
    return registry


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """`/metrics` on its own HTTP port (a daemon thread; prometheus-client's WSGI server)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, port = parse_listen(listen)
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
