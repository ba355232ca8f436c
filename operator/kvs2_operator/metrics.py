"""The operator's Prometheus metrics, all defined here, served on their own port (`--metrics-listen`).

Hooks elsewhere are decorators, one line each: `@metrics.reconcile_pass` on the reconcile entry point
(passes, duration, errors by condition reason, and each store's Ready status from the status it computed)
and `@metrics.kafka_call("describe")` on the Kafka admin calls (latency and failures). The per-store Ready
view is a collector over a small map that passes keep current, read at scrape time, so a deleted store
drops out and nothing grows without bound.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import PROCESS_COLLECTOR, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D")
Out = TypeVar("Out")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_PASSES = Counter(
    "kvs2_operator_reconcile_passes",
    "Reconcile passes over a KeyValueStore, by result (ok, error)",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "kvs2_operator_reconcile_duration_seconds",
    "Time one reconcile pass took",
    buckets=BUCKETS,
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kvs2_operator_reconcile_errors",
    "Reconcile passes that ended in an error, by condition reason (the closed list in kvs2_operator.errors)",
    ["reason"],
    registry=REGISTRY,
)
KAFKA_CALL_DURATION = Histogram(
    "kvs2_operator_kafka_admin_duration_seconds",
    "Kafka admin calls (describe, ensure, delete a topic), by call",
    ["call"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
KAFKA_CALL_FAILURES = Counter(
    "kvs2_operator_kafka_admin_failures",
    "Kafka admin calls that failed, by call",
    ["call"],
    registry=REGISTRY,
)


class _Outcome(Protocol):
    @property
    def status(self) -> Mapping[str, Any]: ...
    @property
    def error(self) -> Any: ...


class StoreReadiness(Collector):
    """`kvs2_operator_stores{ready}`: stores by their Ready condition, as the last pass computed it."""

    def __init__(self) -> None:
        self._ready: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def set(self, key: tuple[str, str], ready: str | None) -> None:
        with self._lock:
            if ready is None:
                self._ready.pop(key, None)
            else:
                self._ready[key] = ready

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "kvs2_operator_stores",
            "KeyValueStores by their Ready condition (True, False, Unknown)",
            labels=["ready"],
        )
        with self._lock:
            values = list(self._ready.values())
        for ready in ("True", "False", "Unknown"):
            family.add_metric([ready], values.count(ready))
        yield family


STORES = StoreReadiness()
REGISTRY.register(STORES)
REGISTRY.register(PROCESS_COLLECTOR)


def ready_of(status: Mapping[str, Any]) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "Unknown"))
    return "Unknown"


def _key(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def reconcile_pass(
    fn: Callable[[Mapping[str, Any], D], Awaitable[Out]],
) -> Callable[[Mapping[str, Any], D], Awaitable[Out]]:
    """Decorate `reconcile(body, deps)`: count and time the pass; None (store gone) forgets the store."""

    @functools.wraps(fn)
    async def wrapper(body: Mapping[str, Any], deps: D) -> Out:
        started = time.perf_counter()
        try:
            outcome = await fn(body, deps)
        except Exception:
            RECONCILE_PASSES.labels("error").inc()
            RECONCILE_ERRORS.labels("Unexpected").inc()
            raise
        finally:
            RECONCILE_DURATION.observe(time.perf_counter() - started)
        _count(body, outcome)  # type: ignore[arg-type]  # Out is the module's Outcome | None
        return outcome

    return wrapper


def _count(body: Mapping[str, Any], outcome: _Outcome | None) -> None:
    if outcome is None:
        STORES.set(_key(body), None)
        RECONCILE_PASSES.labels("ok").inc()
        return
    if outcome.error is not None:
        RECONCILE_PASSES.labels("error").inc()
        RECONCILE_ERRORS.labels(str(getattr(outcome.error, "reason", "Unknown"))).inc()
    else:
        RECONCILE_PASSES.labels("ok").inc()
    STORES.set(_key(body), ready_of(outcome.status))


def kafka_call(call: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async Kafka admin method: its latency, and a failure when it raises."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            except Exception:
                KAFKA_CALL_FAILURES.labels(call).inc()
                raise
            finally:
                KAFKA_CALL_DURATION.labels(call).observe(time.perf_counter() - started)

        return wrapper

    return decorate


def serve(listen: str) -> WSGIServer:
    """Start `/metrics` on HOST:PORT in a daemon thread (`.server_port` is the port, `.shutdown()` stops)."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=REGISTRY)
    return server
