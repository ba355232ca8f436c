"""Which partition a key lives in: Kafka's Java-client murmur2 partitioner, bit for bit.

The producer is configured with librdkafka's `murmur2_random`, which is the Java client's default
partitioner for keyed records. Computing the same function here lets a replica know, without asking
Kafka, which partitions a linearizable read of some keys must wait for.
"""

from __future__ import annotations

import functools

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2` as an unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=1 << 16)
def partition_for(key: bytes, partitions: int) -> int:
    """`Utils.toPositive(murmur2(key)) % partitions`, as the Java client and `murmur2_random` do.

    Cached: linearizable and read-your-writes reads map every key they read, and murmur2 in Python
    costs ~1.6 µs a key against ~0.1 µs for a hit (bench/readpath.py). Why not a C murmur2 from PyPI:
    the one with Kafka's variant (`murmurhash2`) has had no release since 2022.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions
