"""Each replica's phase and lag, read from its pod's plaintext metrics port, for the store's status.

Why the metrics port and not the gRPC `ReplicaStatus` RPC: with `spec.tls` the gRPC port wants a client
certificate the operator does not hold (and should not: it would let the operator read keys); the metrics
port is plaintext on every pod, carries no keys, and is what Prometheus reads too — so the status and the
graphs can never disagree. What is read (`kvs2.metrics`): `kvs2_replica_phase` (Bootstrapping, CatchingUp,
Serving, NotServing), `kvs2_partition_lag_records` and `kvs2_partition_seconds_since_caught_up`, reduced to
the worst partition. A replica too old to report its phase is judged by `kvs2_serving`.

Every scrape is bounded by a timeout and all pods are scraped at once, so a pod that does not answer costs
one timeout per pass, is reported as `Unknown` with the reason, and never delays other pods or stores.
Pods the kubelet has not started yet (no IP) are `Pending`; pods being deleted are `Terminating`.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kvs2_operator import render
from kvs2_operator.kube import KubeApi, Ref

#: Seconds one scrape may take, connection included.
SCRAPE_TIMEOUT = 2.0
#: A serving replica with no lag reports its seconds since caught up only from this many on (a replica
#: cut off from Kafka still shows lag 0 — the end offsets it last saw — but this number grows).
STALE_SECONDS = 10
#: The most of a scrape read (a replica's /metrics is a few kB per partition; this is far above).
MAX_BODY = 8 * 1024 * 1024

# The data plane's phases (kvs2.metrics.PHASES) and the operator's own words for pods it could not ask.
BOOTSTRAPPING = "Bootstrapping"
CATCHING_UP = "CatchingUp"
SERVING = "Serving"
NOT_SERVING = "NotServing"
PENDING = "Pending"
TERMINATING = "Terminating"
UNKNOWN = "Unknown"
DATA_PLANE_PHASES = (BOOTSTRAPPING, CATCHING_UP, SERVING, NOT_SERVING)

#: Fetch a URL's body within a timeout, or raise (OSError, TimeoutError, aiohttp.ClientError, ValueError).
Fetch = Callable[[str, float], Awaitable[str]]


@dataclass(frozen=True)
class ReplicaReport:
    """One pod as the status shows it."""

    pod: str
    phase: str
    ready: bool
    lag: int | None = None  # records, worst partition; None when not known
    seconds_since_caught_up: int | None = None  # worst partition; None when never caught up or not known
    message: str = ""

    def as_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.pod, "phase": self.phase, "ready": self.ready}
        if self.lag is not None:
            entry["lag"] = self.lag
        if self.seconds_since_caught_up is not None:
            entry["secondsSinceCaughtUp"] = self.seconds_since_caught_up
        if self.message:
            entry["message"] = self.message
        return entry


@dataclass(frozen=True)
class Reading:
    """What one scrape says."""

    phase: str
    lag: int
    seconds_since_caught_up: float  # +Inf: a partition was never caught up


def parse_metrics(text: str) -> Reading:
    """The phase, the worst partition's lag and seconds since caught up, from a replica's /metrics text.
    ValueError when the text is not Prometheus' format or is not a kvs2 replica's."""
    phase: str | None = None
    serving: float | None = None
    lag = 0
    behind = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kvs2_replica_phase" and sample.value == 1:
                phase = sample.labels.get("phase")
            elif sample.name == "kvs2_serving":
                serving = sample.value
            elif sample.name == "kvs2_partition_lag_records":
                lag = max(lag, int(sample.value))
            elif sample.name == "kvs2_partition_seconds_since_caught_up":
                behind = max(behind, float(sample.value))
    if phase is None:
        if serving is None:
            raise ValueError("no kvs2_replica_phase or kvs2_serving in the scrape: not a kvs2 replica")
        phase = SERVING if serving == 1 else CATCHING_UP  # a data plane from before the phase gauge
    return Reading(phase, lag, behind)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def metrics_url(pod: Mapping[str, Any]) -> str | None:
    """http://POD_IP:PORT/metrics, the port being the container port named `metrics`; None without an IP."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    port = render.METRICS_PORT
    for container in (pod.get("spec") or {}).get("containers") or ():
        for p in container.get("ports") or ():
            if p.get("name") == "metrics":
                port = int(p["containerPort"])
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"http://{host}:{port}/metrics"


async def http_fetch(url: str, timeout: float) -> str:
    """GET `url` within `timeout` seconds in all (connect, headers, body)."""
    limit = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=limit) as session,
        session.get(url, allow_redirects=False) as resp,
    ):
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        body = await resp.content.read(MAX_BODY)
        return body.decode("utf-8", errors="replace")


def _seconds(value: float) -> int | None:
    return None if math.isinf(value) or math.isnan(value) else int(value)


async def report(pod: Mapping[str, Any], fetch: Fetch, timeout: float) -> ReplicaReport:
    """One pod's report; never raises for the pod's own trouble."""
    name = str((pod.get("metadata") or {}).get("name", ""))
    ready = pod_ready(pod)
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return ReplicaReport(name, TERMINATING, ready)
    url = metrics_url(pod)
    if url is None:
        return ReplicaReport(name, PENDING, ready, message="the pod has no IP yet")
    try:
        text = await asyncio.wait_for(fetch(url, timeout), timeout)
        reading = parse_metrics(text)
    except TimeoutError:
        return ReplicaReport(
            name, UNKNOWN, ready, message=f"its metrics port did not answer within {timeout:g}s"
        )
    except (OSError, aiohttp.ClientError, ValueError) as exc:
        why = str(exc) or type(exc).__name__
        return ReplicaReport(name, UNKNOWN, ready, message=f"its metrics port: {why}")
    seconds = _seconds(reading.seconds_since_caught_up)
    if reading.phase == SERVING and reading.lag == 0 and seconds is not None and seconds < STALE_SECONDS:
        seconds = None  # caught up: the number would only flicker between 0 and 1 and rewrite the status
    return ReplicaReport(name, reading.phase, ready, reading.lag, seconds)


def _ordinal(report: ReplicaReport) -> tuple[int, str]:
    _, _, tail = report.pod.rpartition("-")
    return (int(tail) if tail.isdigit() else 1 << 30, report.pod)


async def observe(
    kube: KubeApi,
    namespace: str,
    store: str,
    *,
    fetch: Fetch = http_fetch,
    timeout: float = SCRAPE_TIMEOUT,
) -> list[ReplicaReport]:
    """Every pod of the store, scraped at once, in ordinal order. Raises only the pod listing's error."""
    pods = await kube.list(Ref("v1", "Pod", namespace), label_selector=render.selector_string(store))
    reports = await asyncio.gather(*(report(pod, fetch, timeout) for pod in pods))
    return sorted(reports, key=_ordinal)


# ----- what the status shows ---------------------------------------------------------------------------
def phase_summary(reports: Iterable[ReplicaReport]) -> str:
    """Counts per phase ("2 Serving, 1 CatchingUp"): Serving first, then the others in lifecycle order."""
    counts = Counter(r.phase for r in reports)
    order = [SERVING, BOOTSTRAPPING, CATCHING_UP, NOT_SERVING, PENDING, TERMINATING, UNKNOWN]
    ordered = sorted(counts, key=lambda p: (order.index(p) if p in order else len(order), p))
    return ", ".join(f"{counts[p]} {p}" for p in ordered)


def max_lag(reports: Iterable[ReplicaReport]) -> int | None:
    """The largest lag of the pods that told it (None when none did)."""
    lags = [r.lag for r in reports if r.lag is not None]
    return max(lags) if lags else None


def status_fields(reports: Sequence[ReplicaReport] | None) -> dict[str, Any]:
    """`pods`, `phases` and `maxLag` for the status. None (the pods could not be listed): unknown, so
    `maxLag` is cleared and the lists are empty rather than left as an old pass wrote them."""
    reports = reports or []
    return {
        "pods": [r.as_status() for r in reports],
        "phases": phase_summary(reports),
        "maxLag": max_lag(reports),
    }


def not_serving(reports: Iterable[ReplicaReport]) -> str | None:
    """The pods not serving, for the conditions ("not serving: orders-1 CatchingUp, orders-2 Unknown
    (…)"); None when all serve.

    No lag numbers here: they change from pass to pass and belong in `pods`/`maxLag`, while a condition's
    message should change only when the situation does."""
    parts = []
    for r in reports:
        if r.phase == SERVING:
            continue
        detail = f" ({r.message})" if r.phase == UNKNOWN and r.message else ""
        parts.append(f"{r.pod} {r.phase}{detail}")
    return f"not serving: {', '.join(parts)}" if parts else None
