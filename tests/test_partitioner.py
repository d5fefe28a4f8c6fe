"""murmur2 against the Java client's own test vectors (placement on a real broker is
checked in tests/test_publish.py)."""

import pytest

from processor.partitioner import default_partition, murmur2


def test_murmur2_matches_the_java_clients_published_vectors() -> None:
    # org.apache.kafka.common.utils.UtilsTest.testMurmur2
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107


def test_a_negative_hash_still_gives_a_partition_in_range() -> None:
    assert murmur2(b"21") < 0
    assert default_partition(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7


@pytest.mark.parametrize("key", [b"21", b"o1", b""])
def test_a_topic_of_one_partition_takes_every_key(key: bytes) -> None:
    assert default_partition(key, 1) == 0


def test_a_topic_without_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        default_partition(b"o1", 0)
