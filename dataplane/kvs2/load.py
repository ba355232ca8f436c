"""`kvs2 load`: bulk-write keys from JSON lines or CSV through the batched `Write` call.

Formats:
  - JSON lines (`--format jsonl`, the default for files not ending in .csv): one object per line,
    `{"key": "...", "value": "..."}`; `value_b64` instead of `value` for binary values;
    `"delete": true` to delete the key; `"if_revision": N` for a compare-and-set item.
  - CSV (`--format csv`): two columns, key and value (`--header` skips a first row).

Why batches: one `Write` call carries up to `--batch` items, produced to Kafka without waiting between
records, which is far cheaper per record than one Set call each. NOT atomic: every item succeeds or fails
on its own; items not published are listed on stderr with their line numbers and the exit code is 1.
A progress bar goes to stderr so stdout stays machine-readable (the final summary, `--json` for JSON).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from kvs2.client import Client, WriteOp
from kvs2.errors import ConfigError

DEFAULT_BATCH = 1000
MAX_SHOWN_FAILURES = 20


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("load", parents=[common], help="bulk-write keys from JSON lines or CSV (batched)")
    p.add_argument("file", help="input file, or - for stdin")
    p.add_argument("--format", choices=["jsonl", "csv"], default=None, help="default: from the file name")
    p.add_argument("--header", action="store_true", help="CSV: the first row is a header")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="items per Write call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _jsonl_items(stream: IO[str]) -> Iterator[tuple[int, WriteOp]]:
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"line {n}: not JSON: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
            raise ConfigError(f'line {n}: expected an object with a string "key"')
        key = obj["key"].encode()
        revision = obj.get("if_revision")
        if revision is not None and not isinstance(revision, int):
            raise ConfigError(f"line {n}: if_revision must be an integer")
        if obj.get("delete"):
            yield n, WriteOp(key, None, revision)
        elif isinstance(obj.get("value"), str):
            yield n, WriteOp(key, obj["value"].encode(), revision)
        elif isinstance(obj.get("value_b64"), str):
            yield n, WriteOp(key, base64.b64decode(obj["value_b64"]), revision)
        else:
            raise ConfigError(f'line {n}: give "value", "value_b64" or "delete": true')


def _csv_items(stream: IO[str], header: bool) -> Iterator[tuple[int, WriteOp]]:
    reader = csv.reader(stream)
    for row in reader:
        n = reader.line_num
        if header and n == 1:
            continue
        if not row:
            continue
        if len(row) != 2:
            raise ConfigError(f"line {n}: expected 2 columns (key,value), got {len(row)}")
        yield n, WriteOp(row[0].encode(), row[1].encode())


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self, total_bytes: int | None, enabled: bool) -> None:
        self._total = total_bytes
        self._enabled = enabled
        self._start = time.monotonic()
        self._last = 0.0

    def show(self, done: int, failed: int, at_byte: int | None, final: bool = False) -> None:
        now = time.monotonic()
        if not self._enabled or (not final and now - self._last < 0.2):
            return
        self._last = now
        rate = done / max(now - self._start, 1e-6)
        bar = ""
        if self._total and at_byte is not None:
            frac = min(at_byte / self._total, 1.0)
            filled = int(frac * 30)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {frac * 100:5.1f}% "
        sys.stderr.write(f"\r{bar}{done} items, {failed} failed, {rate:,.0f}/s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def command(client: Client, args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigError("--batch must be at least 1")
    fmt = args.format or ("csv" if args.file.endswith(".csv") else "jsonl")
    raw: IO[bytes]
    if args.file == "-":
        raw, total = sys.stdin.buffer, None
    else:
        try:
            raw, total = open(args.file, "rb"), os.path.getsize(args.file)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc}") from exc
    text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    items = _csv_items(text, args.header) if fmt == "csv" else _jsonl_items(text)
    bar = _Progress(total, not args.no_progress)
    done = failed = 0
    failures: list[str] = []
    try:
        batch: list[tuple[int, WriteOp]] = []

        def flush() -> None:
            nonlocal done, failed
            result = client.write_batch([op for _, op in batch])
            for (line, _), outcome in zip(batch, result.results, strict=True):
                done += 1
                if not outcome.ok:
                    failed += 1
                    if len(failures) < MAX_SHOWN_FAILURES:
                        failures.append(f"line {line}: {outcome.status}: {outcome.error}")
            batch.clear()
            bar.show(done, failed, raw.tell() if total else None)

        for item in items:
            batch.append(item)
            if len(batch) >= args.batch:
                flush()
        if batch:
            flush()
    finally:
        bar.show(done, failed, total, final=True)
        if raw is not sys.stdin.buffer:
            raw.close()
    for line in failures:
        print(f"kvs2 load: {line}", file=sys.stderr)
    if failed > len(failures):
        print(f"kvs2 load: ... and {failed - len(failures)} more", file=sys.stderr)
    summary = {"items": done, "published": done - failed, "failed": failed}
    print(json.dumps(summary) if args.json else " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    return 0 if failed == 0 else 1
