"""Which partition a keyed record lands on: Kafka's default (Java) partitioner.

Every producer of the processor uses librdkafka's `murmur2_random` (processor/settings.py),
which for a keyed record is the Java client's `toPositive(murmur2(key)) % partitions`.
Computing it here lets a reader go straight to the one partition (and so the one order
task) that holds a key, instead of scanning them all.
"""

from typing import Final

_MASK: Final = 0xFFFFFFFF
_M: Final = 0x5BD1E995
_R: Final = 24
_SEED: Final = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`, with 32-bit wrap-around; signed, as Java returns it."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = data[length - length % 4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def default_partition(key: bytes, partitions: int) -> int:
    """The partition of a keyed record among `partitions`."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
