"""Publish a JSONL history into the input topics as Avro (``refund-processor publish``).

Why: tests and demos replay history into Kafka exactly as producers upstream would write it:
keyed by order_id (a tracking update without one by its tracking number), Avro-encoded by
the same serde the processor reads with, and with occurred_at as the Kafka timestamp, so the
processor's event-time logic sees what it would see in production.

Invalid lines are reported (``FILE:<line>: <reason>: <message>``) and skipped: a bad line
in a demo file is the user's to fix, not a reason to publish nothing. Any delivery failure
fails the whole run, because a history with holes is worse than none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from processor.config import load_policy
from processor.events import (
    InvalidEventError,
    TrackingUpdate,
    event_to_dict,
    parse_event_json,
    reject_future,
)
from processor.serde import EncodeError, Serde
from processor.settings import Settings

__all__ = ["PublishError", "PublishSummary", "publish_lines"]

# librdkafka's own log lines go through Python logging instead of straight to stderr.
_rdkafka_log = logging.getLogger(f"{__name__}.rdkafka")

_MAX_REPORTED_FAILURES: Final = 10


class PublishError(Exception):
    """Kafka is unreachable, a topic is missing, or some events were not delivered."""


@dataclass(frozen=True, slots=True)
class PublishSummary:
    """What one run did; ``published`` counts acknowledged messages per topic."""

    published: dict[str, int]
    invalid: int
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.published.values())

    def line(self) -> str:
        """The one-line summary printed to stderr."""
        per_topic = ", ".join(f"{topic}: {count}" for topic, count in self.published.items())
        rate = self.total / self.seconds if self.seconds > 0 else 0.0
        return (
            f"published {self.total} events ({per_topic}); {self.invalid} invalid lines; "
            f"{self.seconds:.2f} s, {rate:,.0f} events/s"
        )


class _Deliveries:
    """Delivery-report bookkeeping (librdkafka calls back from ``poll``/``flush``)."""

    def __init__(self, errors: TextIO) -> None:
        self.errors = errors
        self.failed: dict[str, int] = {}
        self.first_error: str | None = None

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        topic = msg.topic() or "?"
        self.failed[topic] = self.failed.get(topic, 0) + 1
        count = sum(self.failed.values())
        key = msg.key()
        described = f"{topic} key {key!r}: {err.str()}"
        if self.first_error is None:
            self.first_error = described
        if count <= _MAX_REPORTED_FAILURES:
            print(f"delivery failed: {described}", file=self.errors)


def _check_topic(producer: Any, topic: str, bootstrap: str, timeout_s: float) -> None:
    """Fail fast and clearly instead of retrying into a missing topic for minutes."""
    try:
        metadata = producer.list_topics(topic=topic, timeout=timeout_s)
    except KafkaException as exc:
        raise PublishError(f"cannot reach Kafka at {bootstrap}: {exc.args[0].str()}") from None
    found = metadata.topics.get(topic)
    if found is None or (
        found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    ):
        raise PublishError(f"topic {topic!r} does not exist on {bootstrap}; create it first")


def publish_lines(
    lines: Iterable[bytes],
    origin: str,
    settings: Settings,
    serde: Serde,
    *,
    errors: TextIO,
    metadata_timeout_s: float = 10.0,
) -> PublishSummary:
    """Validate, encode and produce each JSON line; flush; return what was published.

    ``origin`` names the source in the per-line reports (``origin:<line>: ...``). Raises
    :class:`PublishError` if Kafka is unreachable, a topic is missing or any delivery failed.
    """
    started = time.perf_counter()
    orders_topic = settings.topics.orders
    tracking_topic = settings.topics.tracking
    bootstrap = settings.kafka.bootstrap_servers
    deliveries = _Deliveries(errors)
    try:
        producer = Producer(settings.kafka.producer_config(), logger=_rdkafka_log)
    except KafkaException as exc:
        raise PublishError(f"invalid Kafka configuration: {exc.args[0]}") from None
    # Both topics up front: discovering a missing one halfway would leave a partial history.
    for topic in (orders_topic, tracking_topic):
        _check_topic(producer, topic, bootstrap, metadata_timeout_s)
    produced = {orders_topic: 0, tracking_topic: 0}
    invalid = 0
    # What the processor will dead-letter as dated in the future is not published.
    wall_clock = int(time.time() * 1000)
    lateness = load_policy(settings.policy_file).allowed_lateness_ms
    produce = producer.produce
    poll = producer.poll

    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            event = parse_event_json(raw)
            reject_future(event, wall_clock, lateness)
        except InvalidEventError as exc:
            invalid += 1
            print(f"{origin}:{number}: {exc.reason}: {exc.message}", file=errors)
            continue
        if isinstance(event, TrackingUpdate):
            topic = tracking_topic
            key = event.order_id or event.tracking_number
        else:
            topic = orders_topic
            key = event.order_id
        timestamp = event.at
        try:
            value = serde.encode(event.type, event_to_dict(event), topic)
        except EncodeError as exc:
            invalid += 1
            print(f"{origin}:{number}: unencodable: {exc}", file=errors)
            continue
        except Exception as exc:  # the registry client's errors (unreachable, refused...)
            raise PublishError(
                f"schema registry: cannot get a schema id for {event.type} on {topic}: {exc}"
            ) from exc
        while True:
            try:
                produce(topic, value, key.encode(), timestamp=timestamp, on_delivery=deliveries)
                break
            except BufferError:  # local queue full: let deliveries drain it
                poll(0.1)
        produced[topic] += 1
        poll(0)

    while producer.flush(1.0) > 0:
        pass  # a bounded wait per round keeps Ctrl-C responsive
    seconds = time.perf_counter() - started
    failed = sum(deliveries.failed.values())
    if failed:
        raise PublishError(
            f"{failed} of {sum(produced.values())} events were not delivered "
            f"(first: {deliveries.first_error})"
        )
    return PublishSummary(published=produced, invalid=invalid, seconds=seconds)
