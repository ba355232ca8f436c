"""The issues' targets (#12 performance, #14 Redis protocol) checked against one run's figures.

bench/run.py records each figure a target needs under a fixed name in a `dict[str, float]`; this module
turns them into the "targets" table at the end of the appended RESULTS.md section: each target, what was
measured, and whether it is met. A figure that was not measured says so (never "met").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Metrics = dict[str, float]


@dataclass(frozen=True)
class Target:
    issue: str
    metric: str
    target: str
    needs: tuple[str, ...]  # metric names this row reads
    measured: Callable[[Metrics], str]
    met: Callable[[Metrics], bool]


def _n(x: float) -> str:
    return f"{x:,.0f}"


TARGETS: tuple[Target, ...] = (
    Target(
        "#12",
        "Get server CPU per request over a bare grpc.aio handler's (ghz -c 32, pinned)",
        "≤ +10 %; etcd ratio beside it",
        ("get_cpu_us", "floor_cpu_us"),
        lambda m: (
            f"{(m['get_cpu_us'] / m['floor_cpu_us'] - 1) * 100:+.0f} % ({m['get_cpu_us']:.0f} vs "
            f"{m['floor_cpu_us']:.0f} µs); kvs2 Get / etcd Range = "
            + (
                f"{m['get_cpu_us'] / m['etcd_range_cpu_us']:.1f}x"
                if "etcd_range_cpu_us" in m
                else "not measured"
            )
        ),
        lambda m: m["get_cpu_us"] <= 1.10 * m["floor_cpu_us"],
    ),
    Target(
        "#12",
        "MultiGet keys/s, 1000-key batches, server on one core",
        "≥ 1,000,000",
        ("multiget1000_keys_s",),
        lambda m: _n(m["multiget1000_keys_s"]),
        lambda m: m["multiget1000_keys_s"] >= 1_000_000,
    ),
    Target(
        "#12",
        "MultiGet keys/s, 100-key batches, server on one core",
        "≥ 500,000",
        ("multiget100_keys_s",),
        lambda m: _n(m["multiget100_keys_s"]),
        lambda m: m["multiget100_keys_s"] >= 500_000,
    ),
    Target(
        "#12",
        "Write acknowledged records/s (100-byte values, acks=all, 1000-item batches)",
        "≥ 200,000 and ≥ 5x etcd Txns of 128 Puts",
        ("write_records_s", "etcd_txn_records_s"),
        lambda m: (
            f"{_n(m['write_records_s'])} ({m['write_records_s'] / m['etcd_txn_records_s']:.1f}x etcd's "
            f"{_n(m['etcd_txn_records_s'])})"
        ),
        lambda m: m["write_records_s"] >= 200_000 and m["write_records_s"] >= 5 * m["etcd_txn_records_s"],
    ),
    Target(
        "#12",
        "single Set, one sequential client: p50 / p99",
        "≤ 2 / 8 ms",
        ("set_p50_ms", "set_p99_ms"),
        lambda m: f"{m['set_p50_ms']:.2f} / {m['set_p99_ms']:.2f} ms",
        lambda m: m["set_p50_ms"] <= 2 and m["set_p99_ms"] <= 8,
    ),
    Target(
        "#12",
        "Set call start on A → PUT event on B's Watch, one sequential client",
        "p50 ≤ 3 ms, p99 ≤ 10 ms",
        ("visible_p50_ms", "visible_p99_ms"),
        lambda m: f"p50 {m['visible_p50_ms']:.2f} ms, p99 {m['visible_p99_ms']:.2f} ms",
        lambda m: m["visible_p50_ms"] <= 3 and m["visible_p99_ms"] <= 10,
    ),
    Target(
        "#12",
        "replay into LMDB",
        "≥ 500,000 records/s",
        ("replay_records_s",),
        lambda m: f"{_n(m['replay_records_s'])} records/s",
        lambda m: m["replay_records_s"] >= 500_000,
    ),
    Target(
        "#12",
        "embedded replica Get, in process (get_local) p50; MultiGet keys/s (1000-key batches)",
        "p50 ≤ 5 µs; ≥ 2,000,000 keys/s",
        ("embedded_get_p50_us", "embedded_multiget_keys_s"),
        lambda m: f"{m['embedded_get_p50_us']:.1f} µs; {_n(m['embedded_multiget_keys_s'])} keys/s",
        lambda m: m["embedded_get_p50_us"] <= 5 and m["embedded_multiget_keys_s"] >= 2_000_000,
    ),
    Target(
        "#12",
        "RSS of one replica holding 1 M keys (100-byte values), after catch-up",
        "≤ 150 MB, anonymous ≤ 80 MB",
        ("rss_mb", "anon_mb", "rss_keys"),
        lambda m: f"{m['rss_mb']:,.0f} MB, anonymous {m['anon_mb']:,.0f} MB ({_n(m['rss_keys'])} keys)",
        lambda m: m["rss_mb"] <= 150 and m["anon_mb"] <= 80 and m["rss_keys"] >= 1_000_000,
    ),
    Target(
        "#14",
        "server CPU per GET, kvs2 RESP vs etcd serializable Range",
        "≤ 0.5x etcd",
        ("resp_get_cpu_us", "etcd_range_cpu_us"),
        lambda m: (
            f"{m['resp_get_cpu_us'] / m['etcd_range_cpu_us']:.2f}x ({m['resp_get_cpu_us']:.1f} vs "
            f"{m['etcd_range_cpu_us']:.1f} µs)"
        ),
        lambda m: m["resp_get_cpu_us"] <= 0.5 * m["etcd_range_cpu_us"],
    ),
    Target(
        "#14",
        "GET/s, server on one core, redis-benchmark -c 32",
        "≥ 0.5x redis-server's",
        ("resp_get_rps", "redis_get_rps"),
        lambda m: (
            f"{m['resp_get_rps'] / m['redis_get_rps']:.2f}x ({_n(m['resp_get_rps'])} vs "
            f"{_n(m['redis_get_rps'])} req/s)"
        ),
        lambda m: m["resp_get_rps"] >= 0.5 * m["redis_get_rps"],
    ),
    Target(
        "#14",
        "MGET 100 keys, keys/s",
        "≥ 2,000,000",
        ("resp_mget_keys_s",),
        lambda m: _n(m["resp_mget_keys_s"]),
        lambda m: m["resp_mget_keys_s"] >= 2_000_000,
    ),
)


def table(metrics: Metrics) -> str:
    rows = ["| issue | metric | target | measured | met |", "|---|---|---|---|---|"]
    for t in TARGETS:
        missing = [name for name in t.needs if name not in metrics]
        if missing:
            rows.append(f"| {t.issue} | {t.metric} | {t.target} | not measured ({', '.join(missing)}) | — |")
            continue
        met = "yes" if t.met(metrics) else "no"
        rows.append(f"| {t.issue} | {t.metric} | {t.target} | {t.measured(metrics)} | {met} |")
    return "\n".join(rows)
