"""A randomized fault-injection run: operations and faults mixed from a seed, then every checker's verdict.

    python -m tests.harness.torture --seed 7 --duration 120        (or: make torture SEED=7 DURATION=120)

Clients (threads) send Set, compare-and-set, Delete, compare-and-delete, and eventual, linearizable,
bounded-staleness and bounded-lag Gets to random replicas; watchers take a Range snapshot and Watch from
its `applied`, moving to another replica at random moments and after errors; the nemesis
(tests/harness/nemesis.py) injects one fault at a time. Then everything is healed, the replicas quiesce,
each is read in full with a linearizable Range, a fresh replica rebuilds from the (compacted) log and is
read too, and the history (saved as `history.json` in the run directory) goes to tests/harness/checkers.py.

The seed fixes the choices (operations, keys, replicas, faults and their timing); what the system answers,
and so the exact history, still depends on scheduling.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.client import Client, watch_request

from tests.harness import checkers
from tests.harness.common import progress
from tests.harness.history import Delivery, History, WatchSession
from tests.harness.nemesis import FAULT_KINDS, FaultStack, Nemesis, StackConfig, rolling_keys
from tests.harness.recorder import Recorder

PREFIX = "k"
FILLER = "~filler"  # outside PREFIX: written at the end only to make Kafka roll and clean segments


@dataclass
class TortureConfig:
    seed: int = 1
    duration: float = 60.0
    replicas: int = 2
    clients: int = 6
    keys: int = 6
    watchers: int = 1
    faults: Sequence[str] = FAULT_KINDS
    call_timeout: float = 3.0
    staleness_ms: int = 1000
    max_lag: int = 5
    delete_retention_ms: int = 100
    cas_cleanup_grace: float = 30.0
    fresh_replica: bool = True
    checks: Sequence[str] = tuple(checkers.ALL)
    workdir: Path | None = None


@dataclass
class Report:
    config: TortureConfig
    history: History
    verdicts: list[checkers.Verdict]
    workdir: Path
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(v.ok for v in self.verdicts)

    def verdict(self, name: str) -> checkers.Verdict:
        return next(v for v in self.verdicts if v.name == name)

    def render(self, max_violations: int = 5) -> str:
        counts = self.history.counts()
        by_kind: dict[str, int] = {}
        for f in self.history.faults:
            by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        lines = [
            f"torture seed={self.config.seed} duration={self.config.duration:.0f}s "
            f"replicas={self.config.replicas} clients={self.config.clients} keys={self.config.keys}",
            "operations: " + " ".join(f"{k}={v}" for k, v in counts.items()),
            "faults injected: " + (" ".join(f"{k}={v}" for k, v in sorted(by_kind.items())) or "none"),
        ]
        lines += [v.line() for v in self.verdicts]
        for v in self.verdicts:
            for text in v.violations[:max_violations]:
                lines.append(f"  [{v.name}] {text}")
            if len(v.violations) > max_violations:
                lines.append(f"  [{v.name}] ... {len(v.violations) - max_violations} more")
        lines += [f"  [run] {e}" for e in self.errors]
        violations = sum(len(v.violations) for v in self.verdicts)
        lines.append(f"violations: {violations}; history and logs: {self.workdir}")
        return "\n".join(lines)


# ----- clients -----------------------------------------------------------------------------------------
class Worker:
    """One client process of the history: a random operation on a random replica, again and again."""

    def __init__(self, process: int, stack: FaultStack, history: History, config: TortureConfig) -> None:
        self.recorder = Recorder(history, process)
        self.config = config
        self.rng = random.Random(config.seed * 1000 + process)
        self.keys = [f"{PREFIX}{i}" for i in range(config.keys)]
        self.clients = {
            name: Client(r.target, timeout=config.call_timeout, retries=0)
            for name, r in stack.replicas.items()
        }
        self.n = 0

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.one()
                stop.wait(self.rng.uniform(0.0, 0.03))
        finally:
            for c in self.clients.values():
                c.close()

    def one(self) -> None:
        self.n += 1
        rec, rng = self.recorder, self.rng
        key = rng.choice(self.keys)
        target = rng.choice(sorted(self.clients))
        c = self.clients[target]
        value = f"p{rec.process}-{self.n}"
        roll = rng.random()
        expected = 0 if rng.random() < 0.5 else rec.seen.get(key, 0)
        if roll < 0.18:
            rec.set(c, target, key, value)
        elif roll < 0.26:
            rec.delete(c, target, key)
        elif roll < 0.44:
            rec.set_if(c, target, key, value, expected)
        elif roll < 0.52:
            rec.delete_if(c, target, key, expected)
        elif roll < 0.72:
            rec.get(c, target, key, "linearizable")
        elif roll < 0.84:
            rec.get(c, target, key, "staleness", self.config.staleness_ms)
        elif roll < 0.92:
            rec.get(c, target, key, "lag", self.config.max_lag)
        else:
            rec.get(c, target, key)


# ----- watchers ----------------------------------------------------------------------------------------
class Watcher:
    """Range, then Watch from its `applied`; streams end at random moments (a deadline) or on errors and
    resume from the cursor on another replica. A rebuilt replica (recreated topic) or OUT_OF_RANGE ends the
    session and starts a new one from a fresh Range."""

    def __init__(self, watcher: int, stack: FaultStack, history: History, config: TortureConfig) -> None:
        self.watcher = watcher
        self.history = history
        self.rng = random.Random(config.seed * 1000 + 500 + watcher)
        self.targets = {name: r.target for name, r in stack.replicas.items()}
        self.timeout = config.call_timeout
        self.final: dict[int, int] | None = None  # set after quiescence: run until the cursor reaches it
        self.final_deadline = 0.0
        self.session = 0

    def run(self, stop: threading.Event) -> None:
        """Until the quiesced end is reached (`final`, set by the run after healing) or given up on."""
        del stop  # watchers outlive the clients: they must catch up with the final state
        channels = {name: grpc.insecure_channel(t) for name, t in self.targets.items()}
        stubs = {name: pb_grpc.Kvs2Stub(ch) for name, ch in channels.items()}
        try:
            while not self._finished():
                started, reached_end = self._session(stubs)
                if reached_end:
                    return
                if not started:
                    time.sleep(0.3)
        finally:
            for ch in channels.values():
                ch.close()

    def _finished(self) -> bool:
        return self.final is not None and time.monotonic() > self.final_deadline

    def _reached(self, cursor: dict[int, int]) -> bool:
        return self.final is not None and all(cursor.get(p, 0) >= o for p, o in self.final.items())

    def _session(self, stubs: dict[str, pb_grpc.Kvs2Stub]) -> tuple[bool, bool]:
        """(a session started, it reached the quiesced end)."""
        target = self.rng.choice(sorted(stubs))
        request = pb.RangeRequest(prefix=PREFIX.encode(), limit=10000)
        try:
            reply = stubs[target].Range(request, timeout=self.timeout)
        except grpc.RpcError:
            return False, False
        self.session += 1
        applied = {p.partition: p.offset for p in reply.applied}
        s = WatchSession(self.watcher, self.session, target, time.monotonic_ns(), dict(applied))
        self.history.sessions.append(s)
        cursor = dict(applied)
        time.sleep(self.rng.uniform(0.0, 1.0))  # scan, then watch: writes may land in between
        while not self._reached(cursor):
            if self._finished():
                s.stalled = True
                break
            ended = self._stream(stubs[target], target, s, cursor)
            if ended is not None:
                s.note = ended
                break
            if self.final is None and self.rng.random() < 0.15:
                break  # a new session from a new snapshot, now and then
            target = self.rng.choice(sorted(stubs))
            s.resumes += 1
        s.end_positions = dict(cursor)
        s.stop = time.monotonic_ns()
        return True, self._reached(cursor)

    def _stream(
        self, stub: pb_grpc.Kvs2Stub, target: str, s: WatchSession, cursor: dict[int, int]
    ) -> str | None:
        """One Watch stream until its random deadline or an error; None to resume elsewhere, or why the
        session must end."""
        request = watch_request(b"", PREFIX.encode(), b"", b"", cursor, 200)
        try:
            for msg in stub.Watch(request, timeout=self.rng.uniform(0.5, 4.0)):
                if msg.type == pb.WatchEvent.PROGRESS:
                    cursor.update({p.partition: p.offset for p in msg.applied})
                else:
                    kind = "put" if msg.type == pb.WatchEvent.PUT else "delete"
                    p, o = msg.position.partition, msg.position.offset
                    value = msg.value.decode(errors="replace") if kind == "put" else ""
                    key = msg.key.decode(errors="replace")
                    delivery = Delivery(
                        self.watcher,
                        s.session,
                        target,
                        kind,
                        key,
                        value,
                        msg.revision,
                        p,
                        o,
                        time.monotonic_ns(),
                    )
                    self.history.add_delivery(delivery)
                    cursor[p] = o + 1
                if self._reached(cursor):
                    return None
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code == grpc.StatusCode.OUT_OF_RANGE or "recreated topic" in (details or ""):
                return f"{code}: {details}"
            if code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                time.sleep(0.2)
        return None


# ----- the run -----------------------------------------------------------------------------------------
def _threads(
    targets: Sequence[Callable[[threading.Event], None]], stop: threading.Event, errors: list[str]
) -> list[threading.Thread]:
    def guarded(fn: Callable[[threading.Event], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(stop)
            except BaseException as exc:  # recorded and reported: a crashed client is a broken run
                errors.append(f"{getattr(fn, '__qualname__', fn)}: {type(exc).__name__}: {exc}")

        return run

    threads = [threading.Thread(target=guarded(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    return threads


def final_read(
    stack: FaultStack, name: str, target: str, timeout: float = 180.0
) -> tuple[dict[str, tuple[str, int]], dict[int, int]]:
    """A full linearizable Range of the key space, retried until the replica answers."""
    deadline = time.monotonic() + timeout
    with Client(target, timeout=10.0, retries=0) as c:
        while True:
            try:
                page = c.range(prefix=PREFIX.encode(), limit=10000, consistency="linearizable")
                state = {i.key.decode(): ((i.value or b"").decode(), i.revision) for i in page.items}
                return state, page.applied
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"final read of {name} ({target}) kept failing: {exc}") from exc
                time.sleep(0.5)


def run(config: TortureConfig) -> Report:
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix=f"kvs2-torture-{config.seed}-"))
    stack_config = StackConfig(
        replicas=config.replicas,
        delete_retention_ms=config.delete_retention_ms,
        cas_cleanup_grace=config.cas_cleanup_grace,
    )
    stack = FaultStack(workdir, stack_config)
    history = History()
    errors: list[str] = []
    try:
        stack.start()
        progress(
            f"torture seed={config.seed}: {config.duration:.0f}s of operations and faults "
            f"({', '.join(config.faults) or 'none'})"
        )
        stop_ops, stop_nemesis = threading.Event(), threading.Event()
        workers = [Worker(i, stack, history, config) for i in range(config.clients)]
        watchers = [Watcher(i, stack, history, config) for i in range(config.watchers)]
        nemesis = Nemesis(stack, history, random.Random(config.seed), kinds=config.faults)
        op_threads = _threads([w.run for w in workers], stop_ops, errors)
        watch_threads = _threads([w.run for w in watchers], stop_ops, errors)
        nemesis_threads = _threads([nemesis.run], stop_nemesis, errors) if config.faults else []
        time.sleep(config.duration)
        stop_nemesis.set()
        for t in nemesis_threads:
            t.join()
        stop_ops.set()
        for t in op_threads:
            t.join()
        progress("torture: healing everything and waiting for the replicas to quiesce")
        stack.heal_all()
        final_positions: dict[int, int] = {}
        for name, replica in stack.replicas.items():
            state, applied = final_read(stack, name, replica.target)
            history.final[name] = state
            for p, o in applied.items():
                final_positions[p] = max(final_positions.get(p, 0), o)
        for w in watchers:
            w.final_deadline = time.monotonic() + 60.0
            w.final = final_positions
        for t in watch_threads:
            t.join()
        if config.fresh_replica:
            let_compaction_run(stack)
            fresh = stack.start_fresh_replica()
            history.final["fresh"], _ = final_read(stack, "fresh", fresh.target)
    except Exception as exc:
        errors.append(f"the run broke: {type(exc).__name__}: {exc}")
    finally:
        stack.stop()
        history.save(workdir / "history.json")
    # Judge whatever was recorded once the final reads are in, even if a thread broke on the way.
    verdicts = checkers.judge(history, config.checks) if history.final else []
    report = Report(config, history, verdicts, workdir, errors)
    (workdir / "report.txt").write_text(report.render(max_violations=1000) + "\n")
    return report


def let_compaction_run(stack: FaultStack, seconds: float = 6.0) -> None:
    """Roll segments (writes after `segment.ms`) so the cleaner compacts the log and drops expired
    tombstones before a fresh replica replays it."""
    with Client(stack.replicas["r0"].target, timeout=10.0, retries=0) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key in rolling_keys(FILLER, stack.config.partitions):  # every partition gets a record
                c.set(key, b"roll")
            time.sleep(stack.config.segment_ms / 1000 + 0.1)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.torture", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of operations and faults")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated subset of {','.join(FAULT_KINDS)} (empty: none)",
    )
    parser.add_argument("--delete-retention-ms", type=int, default=100)
    parser.add_argument("--cas-cleanup-grace", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--judge", type=Path, default=None, help="only judge a saved history.json again")
    args = parser.parse_args(argv)
    if args.judge is not None:
        verdicts = checkers.judge(History.load(args.judge))
        for v in verdicts:
            print(v.line())
            for text in v.violations:
                print(f"  [{v.name}] {text}")
        return 0 if all(v.ok for v in verdicts) else 1
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = sorted(set(faults) - set(FAULT_KINDS))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULT_KINDS)}")
    config = TortureConfig(
        seed=args.seed,
        duration=args.duration,
        replicas=args.replicas,
        clients=args.clients,
        keys=args.keys,
        faults=faults,
        delete_retention_ms=args.delete_retention_ms,
        cas_cleanup_grace=args.cas_cleanup_grace,
        workdir=args.workdir,
    )
    # `timeout`/CI stop us with SIGTERM: raise, so the stack's processes are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupted)
    report = run(config)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
