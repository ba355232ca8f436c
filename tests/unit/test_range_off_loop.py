"""Counting a range and reading a large page walk many keys: they run in a worker thread, so the event
loop keeps serving other calls meanwhile (issue 12); a default page stays on the loop (cheaper there)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, cast

from kvs2.config import Limits
from kvs2.core import DEFAULT_PAGE, KeyRange, RecordWriter, Store
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Record, Replica, TopicIdentity


async def test_counts_and_large_pages_leave_the_event_loop(tmp_path: Path) -> None:
    replica = Replica(tmp_path / "db", map_size=1 << 24, sync=False)
    replica.reset(TopicIdentity("t", "id", 1))
    n = DEFAULT_PAGE + 500
    replica.apply([Record(f"k{i:05d}".encode(), b"v", 0, i) for i in range(n)], {0: n})
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(applied={0: n}, serving=True, partitions=1, topic_id="id"))
    store = Store(replica, cast(RecordWriter, None), progress, Limits())
    threads: dict[str, int] = {}
    for name in ("count", "scan"):
        real = getattr(replica, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            threads[_name] = threading.get_ident()
            return _real(*args, **kwargs)

        setattr(replica, name, spy)
    loop_thread = threading.get_ident()
    try:
        counted = await store.range(KeyRange(b"", None), count_only=True)
        assert counted.count == n and threads["count"] != loop_thread
        page = await store.range(KeyRange(b"", None), limit=DEFAULT_PAGE + 1)
        assert len(page.items) == DEFAULT_PAGE + 1 and threads["scan"] != loop_thread
        page = await store.range(KeyRange(b"", None))
        assert len(page.items) == DEFAULT_PAGE and threads["scan"] == loop_thread
    finally:
        replica.close()
