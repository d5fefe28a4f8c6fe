"""Dead-letter records: the original bytes and key, with headers saying where and why.

Headers follow the names Kafka Connect uses for its dead-letter queues, so existing
tooling can read them.
"""

from dataclasses import dataclass

SOURCE_TOPIC = "__dlq.source.topic"
SOURCE_PARTITION = "__dlq.source.partition"
SOURCE_OFFSET = "__dlq.source.offset"
ERROR_CLASS = "__dlq.error.class"
ERROR_MESSAGE = "__dlq.error.message"


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
        (ERROR_MESSAGE, message.encode()[:4096]),
    ]
    where = Origin.parse(origin)
    if where is not None:
        headers += [
            (SOURCE_TOPIC, where.topic.encode()),
            (SOURCE_PARTITION, str(where.partition).encode()),
            (SOURCE_OFFSET, str(where.offset).encode()),
        ]
    return DeadLetterRecord(key, value, headers)
