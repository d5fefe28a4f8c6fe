"""The live processor: a consumer group member that routes, decides and commits exactly once.

`run()` is `while running: run_once()`; one `run_once` is one batch and one Kafka
transaction. Nothing is in flight between batches, so a rebalance (which only happens
inside `consume`) never has to commit half a batch. docs/live.md explains the topology,
docs/state-store.md the Redis side of exactly once.
"""

import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from processor.config import PolicyConfig, load_policy
from processor.deadletter import dead_letter_record
from processor.events import (
    InvalidEventError,
    TrackingUpdate,
    from_millis,
    parse_event,
    to_millis,
)
from processor.order_task import OrderTask
from processor.outputs import (
    DeadLetter,
    Decision,
    Output,
    RefundCommand,
    ReshipCommand,
    output_to_dict,
)
from processor.redis_store import FencedError, RedisTaskStore
from processor.router import Inbound, Router, combined_watermark
from processor.serde import DecodeError, Serde
from processor.settings import Settings, make_serde

ORIGIN_HEADER = "refunds.origin"
MARKER_PREFIX = "batch:"


class RedisTrackingIndex:
    """The router's tracking-number index, shared by all instances (one key per number)."""

    def __init__(self, client: redis.Redis, application_id: str) -> None:
        self._client = client
        self._prefix = f"{application_id}:tracking:"
        self._progress = f"{application_id}:router-progress"

    def link_many(self, links: Mapping[str, str]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for number, order_id in links.items():
            pipe.set(self._prefix + number, order_id)
        pipe.execute()

    def share_progress(
        self, watermarks: list[tuple[str, int, bool]]
    ) -> dict[str, tuple[int, bool]]:
        """Publishes this router's watermarks and reads every router's, in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        if watermarks:
            pipe.hset(
                self._progress,
                mapping={source: f"{at}:{int(idle)}" for source, at, idle in watermarks},
            )
        pipe.hgetall(self._progress)
        reported: dict[bytes, bytes] = pipe.execute()[-1]
        progress: dict[str, tuple[int, bool]] = {}
        for source, value in reported.items():
            at, _, idle = value.decode().partition(":")
            progress[source.decode()] = (int(at), idle == "1")
        return progress

    def lookup_many(self, tracking_numbers: Any) -> dict[str, str]:
        numbers = list(tracking_numbers)
        pipe = self._client.pipeline(transaction=False)
        for number in numbers:
            pipe.get(self._prefix + number)
        return {
            number: value.decode()
            for number, value in zip(numbers, pipe.execute(), strict=True)
            if value is not None
        }


@dataclass(slots=True)
class Checkpoint:
    """One batch's Kafka transaction and the Redis state it commits with.

    `commit()` does, in order:
    1. stages every touched task's state in Redis with the offsets and batch marker this
       transaction will commit (write-ahead; refused if another instance claimed the task);
    2. sends the consumed offsets into the transaction, each task's with its batch marker
       as offset metadata, and with the consumer group's metadata, so a member that lost
       its partitions cannot commit them;
    3. commits the transaction: outputs, offsets and markers become visible together;
    4. applies the staged state in Redis.
    A crash or error between any two steps is resolved by claiming the task again: the
    staged state is applied if and only if Kafka committed its batch marker. So after a
    failure nothing is ever discarded by hand; the runner re-claims (`Runner._rewind`).
    """

    producer: Producer
    consumer: Consumer
    stores: list[tuple[RedisTaskStore, dict[str, int]]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    markers: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: bool = False

    def commit(self) -> None:
        for store, offsets in self.stores:
            store.stage(offsets)
        positions = [
            TopicPartition(t, p, o, metadata=_marker_text(self.markers[(t, p)]))
            if (t, p) in self.markers
            else TopicPartition(t, p, o)
            for (t, p), o in self.offsets.items()
        ]
        if positions:
            self.producer.send_offsets_to_transaction(
                positions, self.consumer.consumer_group_metadata()
            )
        while True:
            try:
                self.producer.commit_transaction()
                break
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
        self.committed = True
        for store, _ in self.stores:
            store.apply()


def _marker_text(marker: int) -> str:
    return f"{MARKER_PREFIX}{marker}"


def _committed_marker(metadata: str | None) -> int | None:
    if metadata and metadata.startswith(MARKER_PREFIX):
        text = metadata.removeprefix(MARKER_PREFIX)
        if text.isdigit():
            return int(text)
    return None


@dataclass(slots=True)
class _TaskSlot:
    """An assigned partition of the internal topic: its task, store and batch counter.

    Batch markers are (epoch << 32) + counter: unique per batch and increasing across
    owners, since every claim bumps the epoch.
    """

    task: OrderTask
    store: RedisTaskStore
    epoch: int
    batches: int = 0

    def next_marker(self) -> int:
        self.batches += 1
        return (self.epoch << 32) + self.batches


class Runner:
    def __init__(self, settings: Settings, policy: PolicyConfig | None = None) -> None:
        self.settings = settings
        self.policy = policy or load_policy(settings.policy_file)
        self.running = True
        self._serde: Serde = make_serde(settings)
        self._redis = settings.redis.client()
        topics = settings.topics
        self._by_order = settings.by_order_topic
        self._inputs = (topics.orders, topics.tracking)
        self._index = RedisTrackingIndex(self._redis, settings.application_id)
        self._router = Router(self._index, self.policy)
        self._router_progress: dict[str, tuple[int, bool]] = {}
        self._tasks: dict[int, _TaskSlot] = {}
        self._admin = AdminClient(settings.kafka.admin_config())
        self._by_order_partitions = self._ensure_topics()
        self._sources = self._input_sources()
        self._consumer = Consumer(settings.kafka.consumer_config(settings.group_id))
        self._producer = Producer(
            settings.kafka.producer_config(settings.transactional_id(uuid.uuid4().hex[:12]))
        )
        self._producer.init_transactions()
        self._interval_s = settings.commit_interval_ms / 1000
        self._idle_s = settings.idle_partition_wait_ms / 1000
        self._consumer.subscribe(
            [*self._inputs, self._by_order],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def run(self) -> None:
        """Processes until SIGTERM/SIGINT, then leaves the group cleanly."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            while self.running:
                self.run_once()
        finally:
            self.close()

    def close(self) -> None:
        """Leaves the group (handing partitions over at once) and flushes the producer."""
        self.running = False
        self._consumer.close()
        self._producer.flush(10)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.running = False

    def run_once(self) -> None:
        """One batch: consume, route, decide, commit."""
        messages = self._consumer.consume(
            num_messages=self.settings.max_batch_records, timeout=self._interval_s
        )
        self._producer.begin_transaction()
        checkpoint = Checkpoint(self._producer, self._consumer)
        try:
            self._process(messages, checkpoint)
        except (KafkaException, FencedError) as exc:
            if isinstance(exc, KafkaException) and exc.args[0].fatal():
                raise
            if not checkpoint.committed:
                self._producer.abort_transaction()
            self._rewind()

    def _process(self, messages: list[Message], checkpoint: Checkpoint) -> None:
        now = time.monotonic()
        inbound: list[Inbound] = []
        touched: set[int] = set()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            checkpoint.offsets[(topic, partition)] = offset + 1
            if topic == self._by_order:
                self._receive_routed(message, partition, offset)
                touched.add(partition)
                continue
            origin = f"{topic}/{partition}/{offset}"
            try:
                event = parse_event(self._serde.decode(message.value() or b"", topic))
            except DecodeError as exc:
                self._dead_letter(message.key(), message.value(), origin, exc.reason, exc.message)
                continue
            except InvalidEventError as exc:
                self._dead_letter(message.key(), message.value(), origin, exc.reason, exc.message)
                continue
            inbound.append(Inbound(f"{topic}:{partition}", offset, event, origin, message.value()))

        routed = self._router.route(
            inbound, now, combined_watermark(self._sources, self._router_progress)
        )
        for item in routed.routed:
            event = item.event
            if isinstance(event, TrackingUpdate) and event.order_id is None:
                event = event.model_copy(update={"order_id": item.order_id})
            self._producer.produce(
                self._by_order,
                key=item.order_id.encode(),
                value=self._serde.encode(event.type, event.model_dump(), self._by_order),
                timestamp=event.at,
                headers=[(ORIGIN_HEADER, item.origin.encode())],
            )
        for pending, dead in routed.dead_letters:
            self._dead_letter(None, pending.payload, dead.origin, dead.reason, dead.message)
        self._publish_watermarks(now)
        for source, offset in self._router.commit_offsets().items():
            source_topic, _, source_partition = source.rpartition(":")
            checkpoint.offsets[(source_topic, int(source_partition))] = offset

        for partition in sorted(self._tasks):
            slot = self._tasks[partition]
            ready = slot.task.ready()
            if not ready and partition not in touched:
                continue
            slot.store.prefetch(ready, due_by=slot.task.clock_target())
            for output in slot.task.release():
                self._emit(output)
            offset = slot.task.commit_offset()
            if offset is None:
                continue
            source = self._source_key(partition)
            marker = slot.next_marker()
            checkpoint.offsets[(self._by_order, partition)] = offset
            checkpoint.markers[(self._by_order, partition)] = marker
            checkpoint.stores.append((slot.store, {source: offset, source + "#batch": marker}))
        checkpoint.commit()

    def _receive_routed(self, message: Message, partition: int, offset: int) -> None:
        if partition not in self._tasks:
            return
        task = self._tasks[partition].task
        record = self._serde.decode(message.value() or b"", self._by_order)
        if record["type"] == "watermark":
            task.receive_watermark(
                offset, record["source"], to_millis(record["occurred_at"]), record["idle"]
            )
            return
        headers = message.headers() or []
        found = dict(headers).get(ORIGIN_HEADER) if isinstance(headers, list) else None
        origin = (
            found.decode() if isinstance(found, bytes) else f"{self._by_order}/{partition}/{offset}"
        )
        task.receive(offset, parse_event(record), origin)

    def _caught_up(self) -> dict[str, bool]:
        """Per input partition: has the consumer read everything the broker holds?"""
        caught_up: dict[str, bool] = {}
        inputs = [tp for tp in self._consumer.assignment() if tp.topic in self._inputs]
        for tp in self._consumer.position(inputs) if inputs else []:
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            caught_up[f"{tp.topic}:{tp.partition}"] = 0 <= high <= max(tp.offset, 0)
        return caught_up

    def _publish_watermarks(self, now: float) -> None:
        watermarks = self._router.watermarks(now, self._idle_s, self._caught_up())
        self._router_progress = self._index.share_progress(watermarks)
        for source, at, idle in watermarks:
            value = self._serde.encode(
                "watermark",
                {"source": source, "occurred_at": from_millis(at), "idle": idle},
                self._by_order,
            )
            for partition in range(self._by_order_partitions):
                self._producer.produce(
                    self._by_order, key=source.encode(), value=value, partition=partition
                )

    def _emit(self, output: Output) -> None:
        topics = self.settings.topics
        if isinstance(output, DeadLetter):
            self._dead_letter(
                None, output.payload.encode(), output.origin, output.reason, output.message
            )
            return
        if isinstance(output, RefundCommand):
            topic, key = topics.wallet, output.merchant_id
        elif isinstance(output, ReshipCommand):
            topic, key = topics.fulfilment, output.order_id
        else:
            assert isinstance(output, Decision)
            topic, key = topics.decisions, output.order_id
        value = self._serde.encode(output.type, output_to_dict(output, iso_times=False), topic)
        self._producer.produce(topic, key=key.encode(), value=value, timestamp=output.decided_at)

    def _dead_letter(
        self, key: bytes | None, value: bytes | None, origin: str, reason: str, message: str
    ) -> None:
        record = dead_letter_record(key, value, origin, reason, message)
        self._producer.produce(
            self.settings.topics.dlq, key=record.key, value=record.value, headers=record.headers
        )

    def _source_key(self, partition: int) -> str:
        return f"{self._by_order}:{partition}"

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self.running:
            return  # closing: the group is being left, nothing will be processed
        now = time.monotonic()
        by_order = [tp for tp in partitions if tp.topic == self._by_order]
        committed = {tp.partition: tp for tp in consumer.committed(by_order, timeout=30)}
        for tp in partitions:
            if tp.topic != self._by_order:
                self._router.assign(f"{tp.topic}:{tp.partition}", now)
                continue
            source = self._source_key(tp.partition)
            store = RedisTaskStore(self._redis, self.settings.application_id, source)
            kafka = committed.get(tp.partition)
            offsets: dict[str, int] = {}
            if kafka is not None and kafka.offset >= 0:
                offsets[source] = kafka.offset
                marker = _committed_marker(kafka.metadata)
                if marker is not None:
                    offsets[source + "#batch"] = marker
            epoch = store.claim(offsets)
            task = OrderTask(store, self.policy, self._sources)
            self._tasks[tp.partition] = _TaskSlot(task, store, epoch)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self._by_order:
                self._tasks.pop(tp.partition, None)
            else:
                self._router.revoke(f"{tp.topic}:{tp.partition}")

    def _rewind(self) -> None:
        """After an aborted transaction: back to the last committed offsets, state reloaded."""
        assignment = self._consumer.assignment()
        self._on_revoke(self._consumer, assignment)
        committed = self._consumer.committed(assignment, timeout=30)
        for tp in committed:
            if tp.offset >= 0:
                self._consumer.seek(tp)
        self._on_assign(self._consumer, assignment)

    def _ensure_topics(self) -> int:
        """Creates missing topics; the internal one gets the orders topic's partition count."""
        metadata = self._admin.list_topics(timeout=30)
        orders = metadata.topics.get(self.settings.topics.orders)
        if orders is None or orders.error is not None:
            raise RuntimeError(f"input topic {self.settings.topics.orders!r} does not exist")
        partitions = len(orders.partitions)
        topics = self.settings.topics
        wanted = [self._by_order, topics.wallet, topics.fulfilment, topics.decisions, topics.dlq]
        missing = [
            NewTopic(t, num_partitions=partitions) for t in wanted if t not in metadata.topics
        ]
        if missing:
            for future in self._admin.create_topics(missing).values():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
        by_order = self._admin.list_topics(self._by_order, timeout=30).topics[self._by_order]
        return len(by_order.partitions)

    def _input_sources(self) -> frozenset[str]:
        sources: set[str] = set()
        for topic in self._inputs:
            meta = self._admin.list_topics(topic, timeout=30).topics[topic]
            sources.update(f"{topic}:{p}" for p in meta.partitions)
        return frozenset(sources)
