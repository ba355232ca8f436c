"""The nemesis: a kvs2 stack built to be hurt, and the faults that hurt it.

`FaultStack` runs one Kafka broker, Toxiproxy and N replicas on 127.0.0.1. Each replica reaches Kafka only
through a proxy of its own: the broker has one extra listener per replica, advertised at that replica's
proxy port (tests/harness/kafka.py `proxied_listeners`), so after the bootstrap metadata round trip the
replica's consumer and producer still talk through the proxy. The topic is compacted aggressively (segments
roll every `segment_ms`, `min.cleanable.dirty.ratio` near 0, short `delete.retention.ms`) so replays meet
logs that compaction has rewritten.

Faults (each returns what heals it):
- network, per replica: `delay` (latency + jitter), `freeze` (a latency toxic of an hour both ways: sockets
  stay open, bytes are held and delivered on heal), `cut` (the proxy is disabled: connections closed, new
  ones refused);
- processes: broker kill -9 and restart; replica kill -9 and restart, SIGSTOP / SIGCONT;
- topic: delete and recreate (the old data is gone for good: the history starts a new epoch).

`Nemesis` picks faults at random from a seeded generator and records each in the `History`.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvs2.partitioner import partition_for

from tests.harness.common import LOOPBACK, free_port, progress
from tests.harness.history import Fault, History
from tests.harness.kafka import KafkaBroker, create_topic, delete_topic
from tests.harness.replica import ReplicaProcess
from tests.harness.toxiproxy import ToxiproxyClient, ToxiproxyServer

FAULT_KINDS = ("delay", "freeze", "cut", "broker-kill", "replica-kill", "replica-pause", "topic-recreate")
# How often each is drawn: the network faults are cheap and are where replicas disagree; a broker restart
# takes tens of seconds on two cores and a recreated topic wipes the history's epoch.
FAULT_WEIGHTS = {
    "delay": 2,
    "freeze": 2,
    "cut": 4,
    "broker-kill": 1,
    "replica-kill": 2,
    "replica-pause": 2,
    "topic-recreate": 1,
}
FREEZE_MS = 3_600_000  # held for an hour: until healed, in practice


def rolling_keys(prefix: str, partitions: int) -> list[bytes]:
    """One key per partition (kvs2's partitioner, the Java client's murmur2): writing each after
    `segment.ms` rolls every partition's active segment, so the cleaner can reach every tombstone.

    Why not "a few keys per partition": 16 keys over 4 partitions miss one ~4% of the time, and a
    partition that gets no write never rolls — its tombstones stay in the active segment, which the
    cleaner never touches (a CI run of test_resurrection_running timed out that way)."""
    keys: dict[int, bytes] = {}
    i = 0
    while len(keys) < partitions:
        key = f"{prefix}{i}".encode()
        keys.setdefault(partition_for(key, partitions), key)
        i += 1
    return [keys[p] for p in range(partitions)]


@dataclass
class StackConfig:
    replicas: int = 2
    partitions: int = 4
    topic: str = "torture"
    segment_ms: int = 500
    delete_retention_ms: int = 100
    min_cleanable_dirty_ratio: float = 0.01
    cas_cleanup_grace: float = 30.0
    replica_args: Sequence[str] = ()

    def topic_config(self) -> dict[str, str]:
        return {
            "cleanup.policy": "compact",
            "segment.ms": str(self.segment_ms),
            "min.cleanable.dirty.ratio": str(self.min_cleanable_dirty_ratio),
            "delete.retention.ms": str(self.delete_retention_ms),
            "min.compaction.lag.ms": "0",
        }


@dataclass
class FaultStack:
    workdir: Path
    config: StackConfig = field(default_factory=StackConfig)
    broker: KafkaBroker | None = None
    toxiproxy: ToxiproxyServer | None = None
    replicas: dict[str, ReplicaProcess] = field(default_factory=dict)
    proxy_ports: dict[str, int] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    killed: set[str] = field(default_factory=set)
    extra: list[ReplicaProcess] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f"r{i}" for i in range(self.config.replicas)]

    @property
    def proxies(self) -> ToxiproxyClient:
        assert self.toxiproxy is not None, "the stack is not started"
        return self.toxiproxy.client

    @property
    def kafka(self) -> KafkaBroker:
        assert self.broker is not None, "the stack is not started"
        return self.broker

    def start(self) -> FaultStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.toxiproxy = ToxiproxyServer(self.workdir).start()
        self.proxy_ports = {name: free_port() for name in self.names}
        listeners = {name.upper(): port for name, port in self.proxy_ports.items()}
        self.broker = KafkaBroker(self.workdir / "kafka", proxied_listeners=listeners)
        for name, port in self.proxy_ports.items():
            upstream = f"{LOOPBACK}:{self.broker.listener_ports[name.upper()]}"
            self.proxies.create_proxy(name, f"{LOOPBACK}:{port}", upstream)
        self.broker.start()
        create_topic(self.kafka.bootstrap_servers, self.config.topic, self.config.partitions,
                     config=self.config.topic_config())  # fmt: skip
        for name in self.names:
            self.replicas[name] = self._replica(name, f"{LOOPBACK}:{self.proxy_ports[name]}").start()
        for replica in self.replicas.values():
            replica.wait_serving(timeout=120)
        progress(f"fault stack up: {', '.join(f'{n}={r.target}' for n, r in self.replicas.items())}")
        return self

    def _replica(self, name: str, bootstrap: str) -> ReplicaProcess:
        args = ["--cas-cleanup-grace", str(self.config.cas_cleanup_grace), *self.config.replica_args]
        return ReplicaProcess(
            bootstrap_servers=bootstrap,
            topic=self.config.topic,
            data_dir=self.workdir / f"replica-{name}",
            log_path=self.workdir / f"replica-{name}.log",
            extra_args=args,
        )

    def start_fresh_replica(self, name: str = "fresh") -> ReplicaProcess:
        """A replica with an empty data directory, straight to the broker: it rebuilds from the log."""
        replica = self._replica(name, self.kafka.bootstrap_servers).start()
        self.extra.append(replica)
        replica.wait_serving(timeout=180)
        return replica

    def stop(self) -> None:
        for name in list(self.paused):
            self.resume_replica(name)
        for replica in [*self.replicas.values(), *self.extra]:
            replica.kill()
        if self.broker is not None:
            self.broker.kill()
        if self.toxiproxy is not None:
            self.toxiproxy.stop()

    # ----- network faults -------------------------------------------------------------------------
    def delay(self, name: str, latency_ms: int, jitter_ms: int = 0) -> None:
        for stream in ("upstream", "downstream"):
            attrs = {"latency": latency_ms, "jitter": jitter_ms}
            self.proxies.add_toxic(name, f"delay-{stream}", "latency", stream, attrs)

    def freeze(self, name: str) -> None:
        for stream in ("upstream", "downstream"):
            self.proxies.add_toxic(name, f"freeze-{stream}", "latency", stream, {"latency": FREEZE_MS})

    def cut(self, name: str) -> None:
        self.proxies.set_enabled(name, False)

    def heal(self, name: str) -> None:
        for toxic in self.proxies.toxics(name):
            self.proxies.remove_toxic(name, toxic)
        self.proxies.set_enabled(name, True)

    # ----- process faults -------------------------------------------------------------------------
    def kill_broker(self) -> None:
        self.kafka.kill()

    def restart_broker(self) -> None:
        self.kafka.start(timeout=180)

    def kill_replica(self, name: str) -> None:
        self.replicas[name].kill()
        self.killed.add(name)

    def restart_replica(self, name: str) -> None:
        self.replicas[name].start()
        self.killed.discard(name)

    def pause_replica(self, name: str) -> None:
        process = self.replicas[name].process
        assert process is not None
        process.signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume_replica(self, name: str) -> None:
        process = self.replicas[name].process
        if process is not None:
            process.signal(signal.SIGCONT)
        self.paused.discard(name)

    # ----- topic faults ---------------------------------------------------------------------------
    def delete_topic(self) -> None:
        delete_topic(self.kafka.bootstrap_servers, self.config.topic, timeout=60)

    def create_topic(self) -> None:
        create_topic(self.kafka.bootstrap_servers, self.config.topic, self.config.partitions,
                     config=self.config.topic_config(), timeout=60)  # fmt: skip

    # ----- everything back to normal --------------------------------------------------------------
    def heal_all(self) -> None:
        self.proxies.reset()
        for name in list(self.paused):
            self.resume_replica(name)
        if not self.kafka.alive():
            self.restart_broker()
        for name in list(self.killed):
            self.restart_replica(name)
        for replica in self.replicas.values():
            replica.wait_serving(timeout=180)


@dataclass
class Nemesis:
    """Injects one fault at a time, chosen by a seeded generator, holds it, heals it; records each."""

    stack: FaultStack
    history: History
    rng: random.Random
    kinds: Sequence[str] = FAULT_KINDS
    hold: tuple[float, float] = (1.0, 5.0)
    gap: tuple[float, float] = (0.5, 2.5)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.rng.uniform(*self.gap)):
            kinds = list(self.kinds)
            kind = self.rng.choices(kinds, weights=[FAULT_WEIGHTS[k] for k in kinds])[0]
            target = self.rng.choice(self.stack.names)
            fault = Fault(kind, "kafka" if kind in ("broker-kill", "topic-recreate") else target, 0)
            self.history.add_fault(fault)
            heal = self._inject(fault)
            try:
                stop.wait(self.rng.uniform(*self.hold))
            finally:
                heal()
                fault.end = time.monotonic_ns()

    def _inject(self, fault: Fault) -> Callable[[], None]:
        s, name = self.stack, fault.target
        fault.start = time.monotonic_ns()
        if fault.kind == "delay":
            latency = self.rng.choice((50, 150, 400, 1500))
            fault.detail = f"{latency} ms"
            s.delay(name, latency, latency // 3)
            return lambda: s.heal(name)
        if fault.kind == "freeze":
            s.freeze(name)
            return lambda: s.heal(name)
        if fault.kind == "cut":
            s.cut(name)
            return lambda: s.heal(name)
        if fault.kind == "broker-kill":
            s.kill_broker()
            return s.restart_broker
        if fault.kind == "replica-kill":
            s.kill_replica(name)
            return lambda: s.restart_replica(name)
        if fault.kind == "replica-pause":
            s.pause_replica(name)
            return lambda: s.resume_replica(name)
        if fault.kind == "topic-recreate":
            return self._recreate_topic(fault)
        raise ValueError(f"unknown fault {fault.kind!r}; known: {', '.join(FAULT_KINDS)}")

    def _recreate_topic(self, fault: Fault) -> Callable[[], None]:
        """Delete now, recreate on heal. While the topic is only absent the old epoch goes on (a replica
        must keep its data until a *different* topic exists); the creation is the epoch boundary."""
        self.stack.delete_topic()

        def recreate() -> None:
            started = time.monotonic_ns()
            self.stack.create_topic()
            self.history.recreations.append((started, time.monotonic_ns()))

        return recreate
