"""The fault suites force compaction by rolling every partition's active segment: their filler keys must
land on every partition, every time (a probabilistic choice left one partition unrolled in CI)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvs2.partitioner import partition_for

from tests.harness.nemesis import rolling_keys


@given(prefix=st.text(min_size=0, max_size=20), partitions=st.integers(min_value=1, max_value=64))
def test_rolling_keys_put_one_key_on_every_partition(prefix: str, partitions: int) -> None:
    keys = rolling_keys(prefix, partitions)
    assert [partition_for(k, partitions) for k in keys] == list(range(partitions))
    assert all(k.startswith(prefix.encode()) for k in keys)


@pytest.mark.parametrize("partitions", [4, 6])
def test_the_old_sixteen_fixed_keys_could_miss_a_partition(partitions: int) -> None:
    """Why the helper exists: some prefixes' 16 keys (the suites' old choice) leave a partition out."""
    missing = [
        tag
        for tag in range(2000)
        if len({partition_for(f"~filler-{tag}-{p}".encode(), partitions) for p in range(16)}) < partitions
    ]
    assert missing, "no prefix among 2,000 missed a partition: the old choice was safe after all"
