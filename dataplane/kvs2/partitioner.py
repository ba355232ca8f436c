"""Which partition a key lives in: Kafka's Java-client murmur2 partitioner, bit for bit.

The producer is configured with librdkafka's `murmur2_random`, which is the Java client's default
partitioner for keyed records. Computing the same function here lets a replica know, without asking
Kafka, which partitions a linearizable read of some keys must wait for.
"""

from __future__ import annotations

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


def partition_for(key: bytes, partitions: int) -> int:
    """`Utils.toPositive(murmur2(key)) % partitions`, as the Java client and `murmur2_random` do."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
