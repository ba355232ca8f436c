"""What to tell the operator when LMDB cannot write the data directory.

Why a module of its own: LMDB reports a write that ran out of space as EIO (a short write), not ENOSPC,
so "the disk is full" has to be worked out from the file system's free space. The replica's last
committed transaction stays intact either way (LMDB never overwrites live pages); the ingester stops
applying, reports NOT_SERVING with this reason, and retries from its stored offsets.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvs2.errors import StorageFailed, StorageFull

# Less free space than this when a write fails: the failure is taken to be a full disk.
FULL_BELOW_BYTES = 64 * 1024 * 1024


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def storage_failure(path: Path, exc: Exception) -> StorageFailed:
    try:
        free = free_bytes(path)
    except OSError:
        free = -1
    if 0 <= free < FULL_BELOW_BYTES:
        return StorageFull(
            f"the disk of data directory {path} is full ({free} bytes free): this replica stopped "
            "applying records at its last consistent state and resumes when space is freed"
        )
    return StorageFailed(
        f"writing to data directory {path} failed ({exc}): this replica stopped applying records"
    )
