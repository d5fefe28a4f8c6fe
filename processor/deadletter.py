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
MAX_MESSAGE_BYTES = 4096


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
    return DeadLetterRecord(key, value, headers)


def _utf8_prefix(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``text`` as UTF-8, cut between characters: a cut through
    one would leave a header that readers expecting UTF-8 reject."""
    return text.encode()[:limit].decode(errors="ignore").encode()
