"""Dead-letter records: the original bytes and key, with headers saying where and why.

Headers follow the names Kafka Connect uses for its dead-letter queues, so existing
tooling can read them.
"""

from collections.abc import Mapping
from dataclasses import dataclass

SOURCE_TOPIC = "__dlq.source.topic"
SOURCE_PARTITION = "__dlq.source.partition"
SOURCE_OFFSET = "__dlq.source.offset"
ERROR_CLASS = "__dlq.error.class"
ERROR_MESSAGE = "__dlq.error.message"
#: The original value's size in bytes, on a dead letter that keeps only its first bytes.
VALUE_TRUNCATED = "__dlq.value.truncated"
#: Likewise for the original key.
KEY_TRUNCATED = "__dlq.key.truncated"
MAX_MESSAGE_BYTES = 4096
#: A dead letter's key, value and headers in bytes at most. An input record as big as a
#: producer may send (librdkafka's message.max.bytes, 1,000,000 by default) did not fit
#: in one with the headers added, and the broker's refusal failed every batch after it.
MAX_RECORD_BYTES = 900_000
#: The original key's bytes a dead letter keeps at most; the value gets the rest.
MAX_KEY_BYTES = 65_536


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an input record came from; its text form travels with held events."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @classmethod
    def parse(cls, text: str) -> "Origin | None":
        topic, _, rest = text.rpartition("/")
        topic, _, partition = topic.rpartition("/")
        if not topic or not partition.isdigit() or not rest.isdigit():
            return None
        return cls(topic, int(partition), int(rest))

    @classmethod
    def from_headers(cls, headers: Mapping[str, str | bytes | None]) -> "Origin | None":
        """Where a dead-letter record came from, from the headers `dead_letter_record`
        wrote (None if it has none)."""
        values = [headers.get(name) for name in (SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET)]
        texts = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in values]
        if any(text is None for text in texts):
            return None
        return cls.parse("/".join(text for text in texts if text is not None))


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


def dead_letter_record(
    key: bytes | None, value: bytes | None, origin: str, reason: str, message: str
) -> DeadLetterRecord:
    headers: list[tuple[str, str | bytes | None]] = [
        (ERROR_CLASS, reason.encode()),
        (ERROR_MESSAGE, _utf8_prefix(message, MAX_MESSAGE_BYTES)),
    ]
    where = Origin.parse(origin)
    if where is not None:
        headers += [
            (SOURCE_TOPIC, where.topic.encode()),
            (SOURCE_PARTITION, str(where.partition).encode()),
            (SOURCE_OFFSET, str(where.offset).encode()),
        ]
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append((KEY_TRUNCATED, str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    if value is not None:
        # Room is kept for the truncation header itself: a size has at most 20 digits.
        room = MAX_RECORD_BYTES - len(key or b"") - _size(headers) - len(VALUE_TRUNCATED) - 20
        if len(value) > room:
            headers.append((VALUE_TRUNCATED, str(len(value)).encode()))
            value = value[:room]
    return DeadLetterRecord(key, value, headers)


def _size(headers: list[tuple[str, str | bytes | None]]) -> int:
    return sum(len(name) + len(value or b"") for name, value in headers)


def _utf8_prefix(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``text`` as UTF-8, cut between characters: a cut through
    one would leave a header that readers expecting UTF-8 reject."""
    return text.encode()[:limit].decode(errors="ignore").encode()
