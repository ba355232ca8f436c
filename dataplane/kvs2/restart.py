"""A running replica that must rebuild restarts itself, so that its start-up path takes a peer's snapshot.

When: the ingester finds, while running, that the replica's data must go — the topic was deleted and
recreated (another id, or another partition count), the stored offsets are no longer in Kafka, or the
resurrection guard met a compaction gap later than delete.retention.ms — and the replica has
`--bootstrap-peers`. (Without peers it replays the topic in place, as before: kvs2.ingest.)

Why restart instead of swapping the store in place. Two designs were weighed:
  (a) crash-only: mark the store "must rebuild: <why>" durably in LMDB, stop the replica process in order
      and exec it again; the one start-up path (kvs2.bootstrap: snapshot from a peer, else replay) runs;
  (b) in place: fetch the snapshot beside the live store while NOT_SERVING, then swap the environment
      under the storage's exclusive gate and make every `--workers` follower reopen it.
(a) is kept. The start-up path is the one already proven (verification, atomic install, TLS to peers,
the stand-in endpoint that says Bootstrapping, fallback to replay), and (a) adds no second copy of it.
(b) would need every process that maps the environment to close it at one instant: followers open the
same data.mdb and lock.mdb with their own LMDB handles (kvs2.workers forks them before LMDB opens, so
each `Replica` is its own environment), and a follower still mapping the old file while the leader
renamed the new one over it would share a reader table with a different file — a cross-process
protocol with its own failure cases, for a rare event. A restart also gives back everything the old
build held (memory, Kafka clients, the change history). Its cost: a second or two with nothing
listening between the old process closing its ports and the bootstrap child binding them.

How no reader sees a wrong store: the ingester publishes NOT_SERVING, then marks the store in one LMDB
transaction that also removes the topic id (`Replica.mark_rebuild`) — every read checks the id in its
own transaction, so from that commit no process answers from the old data, whatever its progress says.
The new process installs a snapshot only whole and verified (kvs2.snapshot), or else resets the marked
store and replays; it serves only once caught up.

The process: the ingester calls the restart hook and waits; `kvs2.server.serve` stops the replica in
order (health NOT_SERVING, front doors, followers, producer, ingester, LMDB closed) and raises
`RestartToRebuild`; `kvs2.cli.main` lets `worker_files` remove the `--workers` metrics directory, then
execs the same command line (`os.execve`: same PID, so Kubernetes, `make up` and a supervisor all keep
the process; no wrapper needed). LMDB's reader table keys slots by PID, and the PID survives exec:
closing the environment before the exec frees this process's slots (`mdb_env_close`). Were that step to
fail, slots under the live PID would look in use to other users — but none is left: LMDB's descriptors
are close-on-exec (their locks go with them), and the next opener (the bootstrap child), finding no
other user, resets the table. A SIGTERM or SIGINT before the exec wins: the process exits instead.
The restarted process rebuilds in place (replay) should it have to rebuild again before it first
serves: a rebuild that keeps failing never restarts in a loop. The guard's count
(`kvs2_guard_rebuilds_total`) lives in memory: it is carried over the exec in an environment variable
(`CARRIED_ENV`), and the restarted process does not count the same rebuild again (the marked store has
no topic identity, so neither kvs2.bootstrap nor the ingester takes it for a guard rebuild).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from kvs2.guard import COUNTERS, GuardCounters

log = logging.getLogger(__name__)

# The guard's counters of the process before the exec, as JSON: {"rebuilds": n, "last_reason": "…"}.
CARRIED_ENV = "KVS2_GUARD_REBUILDS_CARRIED"


class RestartToRebuild(Exception):
    """Raised by `kvs2.server.serve` once the replica has stopped: exec the process again (`exec_self`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def exec_self(self, cli_args: Sequence[str]) -> NoReturn:
        """Replace this process with `kvs2 <cli_args>` (never returns): its own command line when those
        are this process's arguments, else the module run by this interpreter (kvs2 called in-process)."""
        argv = command_line(cli_args)
        log.warning(
            "restarting this replica process to rebuild it (pid %d stays): from a peer's snapshot, else "
            "by replaying the topic (%s)",
            os.getpid(),
            self.reason,
        )
        logging.shutdown()  # flush every handler: the exec drops buffers
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.execve(sys.executable, argv, carried_env(COUNTERS, os.environ))


def command_line(cli_args: Sequence[str]) -> list[str]:
    """The argv that runs `kvs2 <cli_args>` again. The process's own (`sys.orig_argv`: the console
    script, `python -m kvs2.cli`, interpreter options) when it was started with them."""
    if list(cli_args) == sys.argv[1:]:
        return list(sys.orig_argv)
    return [sys.executable, "-m", "kvs2.cli", *cli_args]


def carried_env(counters: GuardCounters, env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus the guard's counters, for the process after the exec."""
    rebuilds, reason = counters.read()
    carried = {"rebuilds": rebuilds, "last_reason": reason}
    return {**env, CARRIED_ENV: json.dumps(carried)}


def take_carried(counters: GuardCounters, env: dict[str, str] | os._Environ[str]) -> bool:
    """Restore the counters carried over an exec (and remove them from `env`); a bad value is ignored.
    Whether this process replaced one that restarted to rebuild (it then rebuilds in place until it
    first serves: kvs2.ingest, no loop of restarts)."""
    raw = env.pop(CARRIED_ENV, None)
    if raw is None:
        return False
    try:
        carried = json.loads(raw)
        rebuilds, reason = int(carried["rebuilds"]), str(carried["last_reason"])
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring %s=%r: %s", CARRIED_ENV, raw, exc)
        return True
    counters.restore(rebuilds, reason)
    return True


__all__ = ("CARRIED_ENV", "RestartToRebuild", "carried_env", "command_line", "take_carried")
