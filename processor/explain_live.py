"""The live side of `refund-processor explain`: an order's state from Redis, its decisions
from the decision topic, its dead letters from the dead-letter topic. A thin shell around
processor/explain.py.

It only reads, and never claims a task: a claim bumps the task's epoch and would fence
the instance that owns it. The order's task is the partition of `<app>-by-order` its
key lands on, and its decisions and dead letters are in the one partition of each topic
its key lands on: every producer of the processor partitions by murmur2
(processor/partitioner.py), and a dead letter the policy writes is keyed by the order it
was held under. Each partition is read `read_committed` from its beginning up to the end
offset captured at the start, since a running processor keeps appending and what it
appends later is not part of this answer.
"""

import logging
import time
from collections.abc import Iterator
from typing import Final

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import ValidationError

from processor.config import PolicyConfig
from processor.deadletter import ERROR_CLASS, ERROR_MESSAGE, Origin
from processor.events import InvalidEventError, event_to_json, parse_event, parse_event_json
from processor.explain import Explanation, SourcedDeadLetter, SourcedDecision, explain_state
from processor.outputs import DeadLetter, decision_from_dict
from processor.partitioner import default_partition
from processor.redis_store import RedisTaskStore
from processor.serde import DecodeError, Serde
from processor.settings import Settings, make_serde
from processor.state import OrderState

#: Seconds to wait for Kafka metadata, or for any progress reading the decision partition.
DEFAULT_TIMEOUT_S: Final = 20.0

# librdkafka's own log lines (e.g. a refused connection, again and again) go through Python
# logging and are dropped unless the application configures logging: what failed reaches
# the user once, as an ExplainError.
_rdkafka_log = logging.getLogger(f"{__name__}.rdkafka")
_rdkafka_log.addHandler(logging.NullHandler())


class ExplainError(RuntimeError):
    """Kafka or Redis cannot answer: unreachable, a topic missing, a record unreadable."""


def explain_live(
    settings: Settings,
    order_id: str,
    config: PolicyConfig,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Explanation:
    """Explains an order from the processor's committed state and decision log.

    Raises `UnknownOrderError` when neither holds anything about the order, `ExplainError`
    when Kafka or Redis cannot be read.
    """
    key = order_id.encode()
    consumer = Consumer(
        settings.kafka.consumer_config(f"{settings.application_id}-explain")
        | {"enable.partition.eof": True},
        logger=_rdkafka_log,
    )
    try:
        by_order = settings.by_order_topic
        task = f"{by_order}:{_partition_of(consumer, settings, by_order, key, timeout_s)}"
        topic, dlq = settings.topics.decisions, settings.topics.dlq
        partition = TopicPartition(topic, _partition_of(consumer, settings, topic, key, timeout_s))
        dead_partition = TopicPartition(dlq, _partition_of(consumer, settings, dlq, key, timeout_s))
        state, clock = _read_state(settings, task, order_id)
        low, high = consumer.get_watermark_offsets(partition, timeout=timeout_s)
        dead_offsets = consumer.get_watermark_offsets(dead_partition, timeout=timeout_s)
        serde = make_serde(settings)
        decisions = _read_decisions(
            _read_keyed(consumer, partition, (low, high), key, timeout_s), serde, order_id
        )
        dead_letters = [
            _dead_letter(message, serde)
            for message in _read_keyed(consumer, dead_partition, dead_offsets, key, timeout_s)
        ]
    except KafkaException as exc:
        raise ExplainError(
            f"cannot read Kafka at {settings.kafka.bootstrap_servers}: {exc.args[0].str()}"
        ) from exc
    finally:
        consumer.close()
    return explain_state(
        order_id,
        state,
        decisions,
        config,
        mode="live",
        origin=f"Redis task {task}, {topic} partition {partition.partition}{_trimmed(low)} "
        f"and {dlq} partition {dead_partition.partition}{_trimmed(dead_offsets[0])}",
        clock=clock,
        dead_letters=dead_letters,
    )


def _trimmed(low: int) -> str:
    return f" (its records below offset {low} are deleted, e.g. by retention)" if low > 0 else ""


def _read_state(
    settings: Settings, task: str, order_id: str
) -> tuple[OrderState | None, int | None]:
    """The order's committed state and its task's event-time clock (read, never claimed)."""
    client = settings.redis.client()
    store = RedisTaskStore(client, settings.application_id, task)
    try:
        state = store.load_order(order_id)
        clock = client.hget(store.meta_key, "clock")
    except redis.RedisError as exc:
        raise ExplainError(f"cannot read Redis at {settings.redis.url}: {exc}") from exc
    except ValidationError as exc:
        raise ExplainError(
            f"the state of order {order_id!r} in Redis key {store.order_key(order_id)!r} is "
            f"not a valid order state ({exc.error_count()} problems)"
        ) from exc
    finally:
        client.close()
    return state, int(clock) if isinstance(clock, bytes) else None


def _partition_of(
    consumer: Consumer, settings: Settings, topic: str, key: bytes, timeout_s: float
) -> int:
    """The partition of `topic` the processor's producers put `key` in."""
    found = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ExplainError(
            f"topic {topic!r} does not exist on {settings.kafka.bootstrap_servers}: has "
            f"`refund-processor run` run with application_id {settings.application_id!r}?"
        )
    return default_partition(key, len(found.partitions))


def _read_keyed(
    consumer: Consumer,
    partition: TopicPartition,
    offsets: tuple[int, int],
    key: bytes,
    timeout_s: float,
) -> Iterator[Message]:
    """The records with `key` in log order, between the partition's `offsets` (start, end)
    captured when we started.

    With read_committed the end may be a transaction still open (then the partition-EOF
    event comes first) or end in transaction markers, which are never handed out (the
    EOF event says so too).
    """
    topic, number = partition.topic, partition.partition
    low, high = offsets
    if high <= low:
        return
    consumer.assign([TopicPartition(topic, number, low)])
    position = low
    progressed = time.monotonic()
    while position < high:
        if time.monotonic() - progressed > timeout_s:
            raise ExplainError(
                f"reading {topic} partition {number} made no progress for {timeout_s:.0f} s "
                f"(at offset {position} of {high})"
            )
        for message in consumer.consume(1000, timeout=0.5):
            progressed = time.monotonic()
            if (message.topic(), message.partition()) != (topic, number):
                continue  # left over from the partition read before this one
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return
                raise KafkaException(error)
            offset = message.offset()
            assert offset is not None
            if offset >= high:
                return
            position = offset + 1
            if message.key() == key:
                yield message


def _read_decisions(
    messages: Iterator[Message], serde: Serde, order_id: str
) -> list[SourcedDecision]:
    decisions: list[SourcedDecision] = []
    for message in messages:
        source = f"{message.topic()}/{message.partition()}/{message.offset()}"
        try:
            record = serde.decode(message.value() or b"", message.topic() or "")
        except DecodeError as exc:
            raise ExplainError(
                f"decision of order {order_id!r} at {source} cannot be decoded: {exc}"
            ) from exc
        if record["type"] == "decision" and record["order_id"] == order_id:
            decisions.append(SourcedDecision(decision_from_dict(record), source))
    return decisions


def _dead_letter(message: Message, serde: Serde) -> SourcedDeadLetter:
    """A dead-letter record as the policy's `DeadLetter`: its headers say where it came
    from and why, its payload is the event its value holds, as JSON (`_event_json`)."""
    headers = dict(message.headers() or [])

    def header(name: str) -> str:
        value = headers.get(name) or b""
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    where = Origin.from_headers(headers)
    value = message.value() or b""
    event_json = _event_json(value, serde, "" if where is None else where.topic)
    dead = DeadLetter(
        origin="unknown" if where is None else str(where),
        reason=header(ERROR_CLASS),
        message=header(ERROR_MESSAGE),
        payload=event_json or "",
        key=(message.key() or b"").decode(errors="replace"),
    )
    note = (
        None
        if event_json is not None
        else f"{len(value)} bytes that hold no valid event (the reason says why)"
    )
    return SourcedDeadLetter(
        dead, f"{message.topic()}/{message.partition()}/{message.offset()}", note
    )


def _event_json(value: bytes, serde: Serde, topic: str) -> str | None:
    """The event a dead letter's value holds, as the JSON line `publish` takes, so that an
    operator can send it again: the policy writes the event as JSON, the runner keeps an
    input's Avro (a tracking update no order claimed, an event dated in the future), and
    bad input as it came, which may hold no event at all (None)."""
    try:
        return event_to_json(parse_event_json(value))
    except InvalidEventError:
        pass
    try:
        return event_to_json(parse_event(serde.decode(value, topic)))
    except (DecodeError, InvalidEventError):
        return None
