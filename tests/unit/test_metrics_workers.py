"""`--workers N` metrics without Kafka: real forked processes writing prometheus-client's multiprocess
files, and the leader's registry reading them. Process metrics describe the leader alone (never summed or
repeated per worker), and a worker that died stops counting in the "live" gauges (open Watch streams).
And the README's Monitoring table names every metric the code exposes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from kvs2 import metrics
from kvs2.progress import Snapshot
from kvs2_operator import metrics as operator_metrics
from prometheus_client import CollectorRegistry, values
from prometheus_client.process_collector import ProcessCollector


class _State:
    def snapshot(self) -> Snapshot:
        return Snapshot(serving=True, partitions=1)

    def lmdb(self) -> metrics.LmdbStats:
        return metrics.LmdbStats(map_size=1 << 20, page_size=4096, used_pages=1, entries=0)

    def skipped_records(self) -> int:
        return 0


@pytest.fixture
def multiprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test process as a replica's leader in multiprocess mode (restored afterwards)."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setattr(metrics, "_instruments", None)
    return tmp_path


def _in_worker(work: Callable[[metrics.Instruments], None]) -> int:
    """Run `work` in a forked worker process with its own instruments; returns its (exited) PID."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            metrics._instruments = None
            work(metrics.instruments())
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid


def _samples(registry: CollectorRegistry, prefix: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(prefix)
    ]


def test_process_metrics_are_the_leaders_alone(multiprocess: Path) -> None:
    _in_worker(lambda m: m.applied_records.inc(5))
    metrics.instruments().applied_records.inc(2)
    registry = metrics.registry_for(_State(), workers=2)
    assert registry.get_sample_value("kvs2_applied_records_total") == 7  # events: summed over processes
    process = _samples(registry, "process_")
    names = [name for name, _, _ in process]
    assert names and len(names) == len(set(names))  # each exactly once: not per worker, not summed
    assert all(labels == {} for _, labels, _ in process)
    leader = CollectorRegistry()
    ProcessCollector(registry=leader)
    assert registry.get_sample_value("process_start_time_seconds") == leader.get_sample_value(
        "process_start_time_seconds"
    )


def test_a_dead_workers_open_watch_streams_stop_counting(multiprocess: Path) -> None:
    def two_streams_then_killed(m: metrics.Instruments) -> None:
        m.watch_open.inc()
        m.watch_open.inc()  # and then the process is killed: it never decrements

    dead = _in_worker(two_streams_then_killed)
    metrics.instruments().watch_open.inc()
    registry = metrics.registry_for(_State(), workers=2)
    assert registry.get_sample_value("kvs2_watch_streams_open") == 3  # the dead worker still counts
    metrics.worker_exited(dead)
    assert registry.get_sample_value("kvs2_watch_streams_open") == 1  # only the leader's stream


def test_worker_exited_without_multiprocess_mode_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    metrics.worker_exited(os.getpid() + 1_000_000)


def test_the_readme_lists_every_metric_a_replica_and_the_operator_expose() -> None:
    """README "Monitoring" is the reference a platform team reads: every family the code exposes is in it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Monitoring") :]
    section = section[: section.index("\n## ", 1)]
    listed = set(re.findall(r"`(kvs2_[a-z0-9_]+)`", section))
    replica = CollectorRegistry()
    for collector in metrics.instruments().all():
        replica.register(collector)
    replica.register(metrics.ReplicaCollector(_State(), workers=1))
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for registry in (replica, operator_metrics.REGISTRY)
        for family in registry.collect()
        if family.name.startswith("kvs2_")
    }
    assert exposed - listed == set()
    assert "process_*" in section
