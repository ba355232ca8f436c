"""Logging of `kvs2 serve`: plain text or one JSON object per line, and catch-up progress while NOT_SERVING.

JSON logs use the metrics' label names for the same things (`partition`, `service`, `method`, `code`,
`consistency`, `outcome`, `type`, `topic`), so a log line and a series can be joined on them. A call site
adds them with `extra={...}`; any of those names present on a record becomes a top-level JSON field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kvs2.progress import Snapshot

# Field names shared with the metrics' labels (kvs2.metrics), plus the catch-up figures.
FIELDS = (
    "topic",
    "partition",
    "service",
    "method",
    "code",
    "consistency",
    "outcome",
    "type",
    "applied",
    "end_offset",
    "lag_records",
    "percent",
    "records_per_second",
    "eta_seconds",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", <label fields>, "exception"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Root logging for a `kvs2 serve` process (`fmt`: "text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# ----- catch-up progress ----------------------------------------------------------------------------------
log = logging.getLogger("kvs2.catchup")


class CatchupReport:
    """Turns successive snapshots into progress lines: share of end offsets applied, rate, time left."""

    def __init__(self, topic: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._topic = topic
        self._clock = clock
        self._last: tuple[float, int] | None = None

    def line(self, s: Snapshot) -> tuple[str, dict[str, Any]]:
        now = self._clock()
        end = sum(s.high_watermarks.values())
        applied = sum(min(s.applied.get(p, 0), e) for p, e in s.high_watermarks.items())
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = max(0.0, (applied - self._last[1]) / (now - self._last[0]))
        self._last = (now, applied)
        left = max(0, end - applied)
        eta = left / rate if rate > 0 else math.inf
        percent = 100.0 if end == 0 else 100.0 * applied / end
        fields: dict[str, Any] = {
            "topic": self._topic,
            "applied": applied,
            "end_offset": end,
            "lag_records": left,
            "percent": round(percent, 1),
            "records_per_second": round(rate),
            "eta_seconds": None if math.isinf(eta) else round(eta),
        }
        if not s.high_watermarks:
            return f"catching up with topic {self._topic!r}: waiting for Kafka's end offsets", fields
        eta_text = "unknown" if math.isinf(eta) else f"{eta:.0f}s"
        message = (
            f"catching up with topic {self._topic!r}: {percent:.1f}% of end offsets "
            f"({applied}/{end} offsets, {left} behind), {rate:.0f} records/s, ETA {eta_text}"
        )
        return message, fields


async def report_catchup(
    topic: str, snapshot: Callable[[], Snapshot], interval: float, clock: Callable[[], float] = time.monotonic
) -> None:
    """Log a progress line every `interval` seconds while the replica is NOT_SERVING (until cancelled)."""
    report = CatchupReport(topic, clock)
    report.line(snapshot())  # the first rate is measured from here
    while True:
        await asyncio.sleep(interval)
        s = snapshot()
        if not s.serving:
            message, fields = report.line(s)
            log.info(message, extra=fields)
