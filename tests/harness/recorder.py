"""Calls through the real `kvs2.client.Client`, each recorded in a `History` with its timing and outcome.

Shared by the torture run's clients and the targeted fault tests, so every history is recorded the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from kvs2.client import CasResult, Client, Value, Written

from tests.harness.history import History, Op

T = TypeVar("T")


class Recorder:
    """One client process of a history. `seen` keeps the last revision it learned per key (for CAS)."""

    def __init__(self, history: History, process: int) -> None:
        self.history = history
        self.process = process
        self.seen: dict[str, int] = {}

    def _begin(self, c: Client, target: str, kind: str, key: str, **fields: Any) -> Op:
        return self.history.begin(self.process, kind, key, target, c.timeout, **fields)

    def _attempt(self, op: Op, call: Callable[[], T]) -> T | Op:
        try:
            return call()
        except grpc.RpcError as exc:
            return self.history.failed(op, exc)

    def set(self, c: Client, target: str, key: str, value: str) -> Op:
        op = self._begin(c, target, "set", key, value=value)
        return self._written(op, self._attempt(op, lambda: c.set(key.encode(), value.encode())))

    def delete(self, c: Client, target: str, key: str) -> Op:
        op = self._begin(c, target, "delete", key)
        return self._written(op, self._attempt(op, lambda: c.delete(key.encode())))

    def set_if(self, c: Client, target: str, key: str, value: str, expected: int) -> Op:
        op = self._begin(c, target, "cas_set", key, value=value, expected=expected)
        return self._cas(op, self._attempt(op, lambda: c.set_if(key.encode(), value.encode(), expected)))

    def delete_if(self, c: Client, target: str, key: str, expected: int) -> Op:
        op = self._begin(c, target, "cas_delete", key, expected=expected)
        return self._cas(op, self._attempt(op, lambda: c.delete_if(key.encode(), expected)))

    def get(self, c: Client, target: str, key: str, read: str = "eventual", bound: int = 0) -> Op:
        """`read`: eventual, linearizable, staleness (max_staleness_ms=bound) or lag (max_lag=bound)."""
        op = self._begin(c, target, "get", key, read=read, bound=bound)

        def call() -> Value | None:
            k = key.encode()
            if read == "linearizable":
                return c.get(k, consistency="linearizable")
            if read == "staleness":
                return c.get(k, max_staleness_ms=bound)
            if read == "lag":
                return c.get(k, max_lag=bound)
            return c.get(k)

        got = self._attempt(op, call)
        if isinstance(got, Op):
            return got
        if got is None:
            self.seen[key] = 0
            return self.history.finish(op, "ok", found=False)
        self.seen[key] = got.revision
        return self.history.finish(op, "ok", found=True, out_value=got.data.decode(), revision=got.revision)

    def _written(self, op: Op, w: Written | Op) -> Op:
        if isinstance(w, Op):
            return w
        self.seen[op.key] = w.offset + 1 if op.kind == "set" else 0
        at = {"partition": w.partition, "offset": w.offset}
        return self.history.finish(op, "ok", applied=True, revision=w.offset + 1, **at)

    def _cas(self, op: Op, r: CasResult | Op) -> Op:
        if isinstance(r, Op):
            return r
        deleted = r.applied and op.kind == "cas_delete"
        revision = r.written.offset + 1 if deleted else r.revision  # a delete's revision: its position
        self.seen[op.key] = 0 if deleted else r.revision
        at = {"partition": r.written.partition, "offset": r.written.offset}
        return self.history.finish(op, "ok", applied=r.applied, revision=revision, **at)
