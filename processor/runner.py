"""The live processor: a consumer group member that routes, decides and commits exactly once.

`run()` is `while running: run_once()`; one `run_once` is one batch and one Kafka
transaction. Nothing is in flight between batches, so a rebalance (which only happens
inside `consume`) never has to commit half a batch. docs/live.md explains the topology,
docs/state-store.md the Redis side of exactly once.
"""

import contextlib
import functools
import gc
import logging
import signal
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ClusterMetadata,
    NewTopic,
    OffsetSpec,
)

from processor import metrics
from processor.checkpoint import (
    Checkpoint,
    end_transaction,
    kafka_timed_out,
    observe_transaction_open,
    task_fields,
)
from processor.config import PolicyConfig, load_policy
from processor.deadletter import dead_letter_record
from processor.events import (
    InvalidEventError,
    from_millis,
    parse_event,
    reject_future,
    to_millis,
)
from processor.order_task import DirectEvent, OrderTask, RoutedEvent
from processor.outputs import (
    DeadLetter,
    Decision,
    Output,
    RefundCommand,
    ReshipCommand,
    output_to_dict,
)
from processor.partitioner import default_partition
from processor.redis_index import RedisTrackingIndex
from processor.redis_store import (
    FencedError,
    RedisTaskStore,
    StateAheadOfKafkaError,
    lost_state,
    tasks_without_state,
)
from processor.router import (
    NOT_IDLE,
    Commit,
    Inbound,
    Progress,
    Routed,
    Router,
    all_drained,
    claiming_idle,
    expiry_progress,
    trusted,
)
from processor.serde import DecodeError, Serde
from processor.settings import Settings, make_serde

_log = structlog.stdlib.get_logger(__name__)
#: librdkafka's own log lines, through `logging` (so JSON, see processor/logs.py).
_rdkafka_log = logging.getLogger(f"{__name__}.rdkafka")

#: Redis errors that mean "unreachable for now" (incl. a restarting server loading its AOF),
#: but for refused credentials (a subclass of ConnectionError: `credentials_refused`).
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)

#: Offset metadata of a task's partition: the batch marker its Redis state was staged with.
MARKER_PREFIX = "batch:"
#: Offset metadata of an input partition: `watermark:<w>;handled:<n>`, its router's
#: watermark and handled mark when the offset committed (`Router.assign`).
WATERMARK_PREFIX = "watermark:"
HANDLED_PREFIX = "handled:"
#: librdkafka's transaction.timeout.ms unless the settings' passthrough sets it (see Runner).
TRANSACTION_TIMEOUT_MS = 10_000
#: How long to wait for a topic's complete metadata at start (`topic_partitions`).
METADATA_TIMEOUT_S = 60
#: How long to wait at start for the first broker to answer (`cluster_metadata`).
CONNECT_TIMEOUT_S = 30
#: How long a batch waits for the end offsets of the inputs reported idle (`_log_ends`):
#: inside the transaction's timeout; unanswered, none of them counts as idle.
END_OFFSETS_TIMEOUT_S = 2.0
#: How long a rebalance waits for the inputs' partitions to be listed
#: (`_check_inputs_unchanged`), and for the log starts of those with no committed offset
#: (`_log_starts`), inside its batch's transaction.
INPUTS_CHECK_TIMEOUT_S = 5.0
#: Waits between attempts while Redis is unreachable (doubling from the first to the last).
REDIS_BACKOFF_S = (0.5, 8.0)
#: CPython's collector thresholds while runners run (`batch_collector`); the defaults
#: are (700, 10, 10). Each young collection traverses every object the caches took in
#: since the last, so the rarer the cheaper: at 50,000 a 20,000-order catch-up made
#: thirty, at 500,000 one (docs/live.md, "Performance").
GC_THRESHOLDS = (500_000, 20, 10)
#: Input bytes per routed record at most (or one input record, if it alone is bigger):
#: well under the broker's default message.max.bytes (1 MiB).
ROUTED_RECORD_BYTES = 256 * 1024


#: Orders whose internal topic partition a runner keeps (`Runner._order_partition`).
ORDER_PARTITIONS_CACHED = 100_000


def _key(dead: DeadLetter) -> bytes | None:
    """A dead letter's record key: the order (or tracking number) it was held under, so
    `explain` finds it in the partition that key lands on."""
    return None if dead.key is None else dead.key.encode()


def routed_chunks(items: list[Routed]) -> Iterator[list[Routed]]:
    """The items in order, one Routed record's worth at a time (`ROUTED_RECORD_BYTES`)."""
    chunk: list[Routed] = []
    size = 0
    for item in items:
        payload = len(item[1].payload)
        if chunk and size + payload > ROUTED_RECORD_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += payload
    if chunk:
        yield chunk


@contextlib.contextmanager
def batch_collector() -> Iterator[None]:
    """The garbage collector as the block's runners want it, given back after it.

    A batch allocates hundreds of thousands of short-lived objects, while the stores'
    caches hold many long-lived ones: at the default thresholds, full collections
    traversing those caches took a quarter of the CPU (docs/live.md, "Performance"). What
    the process holds on entry is frozen out of every scan, and the young generation is
    collected in bigger, rarer steps. Process-wide, so it wraps the runners' lives rather
    than being set by each: a runner that froze itself stayed in memory for good once
    closed, with all it held (the benchmark's passes and the demo's instances run several
    in one process).
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@dataclass(slots=True)
class Intake:
    """A batch's records from the consumer: up to `most`, a batch starting at most once per
    `interval_s` (`commit_interval_ms`), since each is a transaction.

    Within the interval of the last batch's start, it waits for a full batch until the
    interval ends. After it (the last batch took longer: catching up), it takes what the
    consumer has queued at once, or else the first record to arrive within an interval;
    a batch with none still runs, for the inputs' idle reports and the tasks' clocks.
    librdkafka's `consume` waits for a full batch until its timeout: given the interval,
    every batch after a long one waited a whole interval for records that were not
    coming (docs/live.md, "Performance").
    """

    consumer: Consumer
    most: int
    interval_s: float
    next_batch: float = 0.0  # monotonic time: the next batch starts no earlier

    def take(self) -> list[Message]:
        wait = self.next_batch - time.monotonic()
        if wait > 0:
            messages = self.consumer.consume(num_messages=self.most, timeout=wait)
        else:
            messages = self.consumer.consume(num_messages=self.most, timeout=0)
            if not messages:
                first = self.consumer.poll(self.interval_s)
                if first is not None:
                    messages = [first]
                    if self.most > 1:
                        messages += self.consumer.consume(num_messages=self.most - 1, timeout=0)
        self.next_batch = time.monotonic() + self.interval_s
        return messages


def _log_purge_failure(future: Future[Any]) -> None:
    error = future.exception()
    closing = isinstance(error, KafkaException) and error.args[0].code() == KafkaError._DESTROY
    if error is not None and not closing:
        _log.warning("purging the internal topic failed: retried later", error=str(error))


def arrival_ms(timestamp: tuple[int, int], received_ms: int) -> int:
    """When an input record arrived, for the end-to-end latency: the broker's append time
    if its topic stamps LogAppendTime, else when this consumer received it. A CreateTime
    is the producer's word, and `publish` makes it the event's occurred_at (docs/live.md)."""
    kind, stamp = timestamp
    return stamp if kind == TIMESTAMP_LOG_APPEND_TIME else received_ms


def cluster_metadata(admin: AdminClient, timeout_s: float = CONNECT_TIMEOUT_S) -> ClusterMetadata:
    """The cluster's metadata, asked for a second at a time.

    A librdkafka call returns to Python only when it is done, so a signal waits for it:
    one long wait for a broker that does not answer would keep Ctrl-C from stopping the
    start for half a minute. Between attempts the client's log lines are let out: only
    they say why a broker that answers refused the connection (a SASL mechanism or TLS
    setting that does not match).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_topics(timeout=1)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() not in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                raise
            admin.poll(0)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"no Kafka broker answered in {timeout_s:g} s: {error.str()} (the "
                    "client's log lines before this say more)"
                ) from exc


class RedisCredentialsError(RuntimeError):
    """Redis refused the processor's credentials: no retry will do better."""


def credentials_refused(exc: Exception) -> None:
    """Raises `RedisCredentialsError` for a Redis error that is refused credentials: a new
    instance with a wrong password would otherwise take its share of the group's partitions
    and retry them for ever as if Redis were down."""
    if isinstance(exc, redis.AuthenticationError):
        raise RedisCredentialsError(
            f"Redis refused the credentials (redis.password or REFUND_REDIS__PASSWORD, and "
            f"the user in redis.url): {exc}"
        ) from exc


class InputPartitionsChangedError(RuntimeError):
    """An input gained or lost partitions while the processor ran.

    The order tasks' clocks wait for every input partition the processor started with:
    one added since holds records no clock waits for, and its deadlines would fire past
    them. So an instance stops at the first rebalance that shows the change (adding
    partitions triggers one in every instance), and its supervisor starts it again with
    the new partitions. Records the new partitions got before that are late data, as in
    the replay of a file they are appended to: stop the processor to add partitions.
    """


def topic_partitions(admin: AdminClient, topic: str) -> list[int]:
    """The topic's partitions, once the broker's metadata has them.

    Right after a topic is created the broker usually answers that it does not know it
    (UNKNOWN_TOPIC_OR_PART, no partitions). Taking that answer would be silent and
    lasting: watermarks sent to no partition of the internal topic (no task's clock ever
    moves), or an input partition missing from the sources every task waits for.
    """
    deadline = time.monotonic() + METADATA_TIMEOUT_S
    while True:
        meta = admin.list_topics(topic, timeout=30).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return sorted(meta.partitions)
        if time.monotonic() > deadline:
            problem = "unknown" if meta is None else str(meta.error or "no partitions")
            raise RuntimeError(f"no metadata for topic {topic!r} after creating it: {problem}")
        time.sleep(0.1)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}:{tp.partition}" for tp in partitions]


def input_metadata(commit: Commit) -> str:
    return f"{WATERMARK_PREFIX}{commit.watermark};{HANDLED_PREFIX}{commit.handled}"


def parse_input_metadata(metadata: str | None) -> tuple[int | None, int | None]:
    """(watermark, handled mark) of an input's committed offset; the handled mark is None
    in metadata written before it existed."""
    watermark, _, handled = (metadata or "").partition(";")
    return _metadata_number(watermark, WATERMARK_PREFIX), _metadata_number(handled, HANDLED_PREFIX)


def _metadata_number(metadata: str | None, prefix: str) -> int | None:
    """The number in committed offset metadata `<prefix><number>`, if it is one."""
    if metadata and metadata.startswith(prefix):
        text = metadata.removeprefix(prefix)
        if text.isdigit():
            return int(text)
    return None


@dataclass(slots=True)
class _TaskSlot:
    """An assigned partition of the internal topic: its task, store and batch counter.

    Batch markers are (epoch << 32) + counter: unique per batch and increasing across
    owners, since every claim bumps the epoch.

    `position` is the next offset the task expects: the committed offset it was claimed
    (or rewound) at, then one past each record it received. A record below it was decided
    already and is skipped: the consumer can hand one out again, e.g. records fetched
    before the claim by a member that stalled and came back, or after a seek issued while
    its assignment was being lost (librdkafka applies it late). Deciding it again would
    make the task stage an offset behind the one Redis applied.
    """

    task: OrderTask
    store: RedisTaskStore
    epoch: int
    position: int
    #: The first key this instance wrote to the partition after setting the task up: the
    #: task is synced (`OrderTask.sync`) when it reads that record or a later one of ours.
    sync_from: int
    #: The partition's offset in the group, as of this instance's last commit or claim.
    committed: int
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
        self._router_progress: dict[str, Progress] = {}
        # The epoch of each input partition this instance's router claimed since the
        # rebalance that gave it the partition (`RedisTrackingIndex.claim_sources`).
        self._source_epochs: dict[str, int] = {}
        # Sources whose progress report the last batch could not write (`_process`).
        self._refused: list[str] = []
        self._tasks: dict[int, _TaskSlot] = {}
        # Assigned partitions whose task or router source is not set up yet: after a
        # rebalance, or after a batch failed (see `_claim_assigned`).
        self._unclaimed: set[tuple[str, int]] = set()
        # A task that received events directly was dropped while their input stays
        # assigned: every partition goes back to its last commit before the next batch.
        self._must_rewind = False
        self._backoff_s = 0.0  # the wait before the next batch while Redis is unreachable
        self._partition_gauges = metrics.PartitionGauges()
        self._timers_pending = metrics.GaugeShare(metrics.TIMERS_PENDING)
        self._orphans_waiting = metrics.GaugeShare(metrics.ORPHANS_WAITING)
        self._events_buffered = metrics.GaugeShare(metrics.EVENTS_BUFFERED)
        self._admin = AdminClient(settings.kafka.admin_config(), logger=_rdkafka_log)
        self._by_order_partitions = partitions = self._ensure_topics()

        @functools.lru_cache(maxsize=ORDER_PARTITIONS_CACHED)
        def order_partition(order_id: str) -> int:
            """Cached, since murmur2 is pure Python; per runner, so that a new one (a
            benchmark's next pass) starts as cold as a new process."""
            return default_partition(order_id.encode(), partitions)

        self._order_partition = order_partition
        self._sources = frozenset(
            f"{topic}:{partition}"
            for topic in self._inputs
            for partition in topic_partitions(self._admin, topic)
        )
        # A partition resumed (`_pace`) or assigned joins the consumer's next fetch, sent
        # when the one in flight returns: with nothing new to read, after librdkafka's
        # `fetch.wait.max.ms`, 500 ms. Idle reports no longer arrive every batch to end it
        # sooner, and each start waited that long after its tasks synced (a per-batch
        # timeline: five empty batches). One batch interval at most, never more than the
        # default (librdkafka refuses over 300 s); the passthrough wins.
        self._consumer = Consumer(
            {"fetch.wait.max.ms": min(settings.commit_interval_ms, 500)}
            | settings.kafka.consumer_config(settings.group_id),
            logger=_rdkafka_log,
        )
        # An instance that dies mid-batch leaves its transaction open, and every
        # read_committed reader of a partition it wrote waits until the broker aborts it:
        # the order tasks too, since watermarks go to every partition of the internal
        # topic. librdkafka's default (60 s) would stall the whole pipeline for a minute
        # after each crash; Kafka Streams uses 10 s under exactly-once. A batch (bounded by
        # max_batch_records, Redis retries included) takes far less. The passthrough wins.
        transactional_id = settings.transactional_id(uuid.uuid4().hex[:12])
        producer_config = {"transaction.timeout.ms": TRANSACTION_TIMEOUT_MS} | (
            settings.kafka.producer_config(transactional_id)
        )
        self._transaction_timeout_s = int(producer_config["transaction.timeout.ms"]) / 1000
        # Keys of the records this producer writes to the internal topic: unique, and in
        # the order they were written (`_TaskSlot.sync_from`).
        self._key_prefix = f"{transactional_id}:".encode()
        self._next_key = 0
        self._producer = Producer(producer_config, logger=_rdkafka_log)
        self._producer.init_transactions()
        self._checkpoint = Checkpoint(self._producer, self._consumer, self._transaction_timeout_s)
        # What the last commits wrote, so that a batch that would write it again writes
        # nothing: the watermark record last committed per (source, partition), and the
        # offset and metadata last sent per partition. Cleared by a rewind, a task's
        # claim, and a batch that failed after its commit.
        self._reported: dict[tuple[str, int], bytes] = {}
        self._sent_positions: dict[tuple[str, int], tuple[int, str | None]] = {}
        self._report_again_at = 0.0  # monotonic: unchanged reports are written again then
        self._intake = Intake(
            self._consumer, settings.max_batch_records, settings.commit_interval_ms / 1000
        )
        self._idle_s = settings.idle_partition_wait_ms / 1000
        self._purge_interval_s = settings.purge_interval_ms / 1000
        self._next_purge = time.monotonic() + self._purge_interval_s
        self._purging: list[Future[Any]] = []
        self._consumer.subscribe(
            [*self._inputs, self._by_order],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
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
        self._partition_gauges.clear()
        self._timers_pending.set(0)
        self._orphans_waiting.set(0)
        self._events_buffered.set(0)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.running = False

    def run_once(self) -> None:
        """One batch: consume, route, decide, commit.

        A batch that fails on a Kafka error that is neither fatal nor a timeout, a fenced
        task, or an unreachable Redis is aborted and rewound to the last commit
        (`_recover`), and the next batch starts over from there: with Redis down, after a
        backoff, as long as it takes. A fatal Kafka error or a Kafka timeout
        (`kafka_timed_out`) ends the processor (its supervisor restarts it).
        """
        messages = self._intake.take()
        if self._must_rewind:  # set after the last commit, or by a callback in consume
            self._rewind_until_done()
            return  # what consume returned is read again from the last commit
        metrics.BATCH_RECORDS.observe(len(messages))
        opened = time.perf_counter()
        self._producer.begin_transaction()
        checkpoint = Checkpoint(self._producer, self._consumer, self._transaction_timeout_s)
        self._checkpoint = checkpoint
        try:
            self._claim_assigned()
            self._process(messages, checkpoint)
        except (KafkaException, FencedError, *REDIS_DOWN) as exc:
            if isinstance(exc, KafkaException):
                if exc.args[0].fatal():
                    raise
                kafka_timed_out(exc)
            credentials_refused(exc)
            self._recover(checkpoint, exc)
        else:
            self._backoff_s = 0.0
            observe_transaction_open(
                time.perf_counter() - opened, len(messages), self._transaction_timeout_s
            )
            slots = self._tasks.values()
            self._timers_pending.set(sum(slot.store.timers_pending for slot in slots))
            self._orphans_waiting.set(
                self._router.pending() + sum(slot.store.holders for slot in slots)
            )
            self._events_buffered.set(sum(slot.task.buffered() for slot in slots))
            self._purge()

    def _purge(self) -> None:
        """Deletes the internal topic's records below what this instance's tasks committed
        (Kafka Streams purges its repartition topics the same way): whoever owns a task
        next reads from its committed offset, and a commit never passes a record its task
        has not decided. Asynchronous, at most one request in flight; a failure is logged
        and the next request, `purge_interval_ms` later, covers what it missed.
        """
        self._admin.poll(0)  # the admin client's own log lines
        now = time.monotonic()
        if (
            not self._purge_interval_s
            or now < self._next_purge
            or not all(f.done() for f in self._purging)
        ):
            return
        self._next_purge = now + self._purge_interval_s
        below = [
            TopicPartition(self._by_order, partition, slot.committed)
            for partition, slot in self._tasks.items()
            if slot.committed > 0
        ]
        self._purging = list(self._admin.delete_records(below).values()) if below else []
        for future in self._purging:
            future.add_done_callback(_log_purge_failure)

    def _recover(self, checkpoint: Checkpoint, exc: Exception) -> None:
        """After a failed batch: finish it if Kafka committed it, else abort and rewind."""
        redis_down = isinstance(exc, REDIS_DOWN)
        if redis_down:
            low, high = REDIS_BACKOFF_S
            self._backoff_s = min(high, max(low, 2 * self._backoff_s))
            _log.warning(
                "Redis unavailable: batch failed", error=str(exc), retry_in_s=self._backoff_s
            )
        if checkpoint.committed:
            # Outputs and offsets are committed: the batch's state must reach Redis too.
            # Retrying apply is safe, and claiming again is not (see `_rewind`). If we stop
            # first, the task's next owner applies the batch when it claims the task.
            # What it wrote was not noted (`_process` stopped at the apply): the next
            # batch writes every report and offset, or it could skip one that differs
            # from this batch's as equal to an older one (found in review).
            self._forget_commits()
            while self.running:
                try:
                    checkpoint.apply()
                    break
                except REDIS_DOWN as again:
                    credentials_refused(again)
                    _log.warning(
                        "Redis unavailable: applying the committed batch",
                        error=str(again),
                        retry_in_s=self._backoff_s,
                    )
                    # Nothing is consumed until the batch is applied: the lag grows. A
                    # Kafka error measuring it must not end the wait for Redis.
                    with contextlib.suppress(KafkaException):
                        self._report_lag(self._positions())
                    time.sleep(self._backoff_s)
                    self._backoff_s = min(REDIS_BACKOFF_S[1], 2 * self._backoff_s)
            self._drop_fenced()
            return
        _log.warning("batch aborted, rewinding to the last commit", error=str(exc))
        # Delivered first: aborting while a record's partition is still being added to
        # the transaction can fail for good with INVALID_TXN_STATE (librdkafka #4849;
        # seen when Redis failed right after a batch dead-lettered its first record).
        self._producer.flush(self._transaction_timeout_s)
        end_transaction(
            self._producer.abort_transaction,
            self._transaction_timeout_s,
            stopping=lambda: not self.running,
        )
        metrics.TRANSACTIONS_ABORTED.inc()
        self._rewind_until_done()
        if redis_down:
            time.sleep(self._backoff_s)

    def _claim_assigned(self) -> None:
        """Sets up the partitions the last rebalance assigned (`_unclaimed`).

        An input partition gets a router source, resuming from the watermark committed
        with its offset, and after a rebalance a new epoch for the progress its router
        shares (`RedisTrackingIndex.claim_sources`; not after a rewind, see `_rewind`). A
        partition of the internal topic gets its task, claimed in Redis at Kafka's
        committed offsets: read now, after the rebalance, so Kafka has fenced the previous
        owner (docs/state-store.md). This runs inside the batch rather than in
        the rebalance callback so that a Redis or Kafka error fails the batch, which is
        rewound, and the claim is retried by the next one.
        """
        if not self._unclaimed:
            return
        self._check_inputs_unchanged()
        now = time.monotonic()
        wanted = sorted(self._unclaimed)
        new_sources = [
            f"{topic}:{partition}"
            for topic, partition in wanted
            if topic != self._by_order and f"{topic}:{partition}" not in self._source_epochs
        ]
        # The group's committed offsets, one request: of the partitions to set up, and of
        # every task's when a router claim needs them checked first (`_check_tasks_kept`).
        tasks = [(self._by_order, p) for p in range(self._by_order_partitions)]
        asked = sorted(set(wanted) | set(tasks)) if new_sources else wanted
        committed = {
            (tp.topic, tp.partition): tp
            for tp in self._consumer.committed([TopicPartition(t, p) for t, p in asked], timeout=30)
        }
        if new_sources:
            self._check_tasks_kept([committed[task] for task in tasks])
            self._claim_sources(new_sources)
        # Every input partition of this instance hands its events for this instance's
        # tasks over directly (docs/live.md, "Direct delivery").
        local_inputs = frozenset(
            f"{tp.topic}:{tp.partition}"
            for tp in self._consumer.assignment()
            if tp.topic != self._by_order
        )
        claimed = [committed[position] for position in wanted]
        starts = self._log_starts(
            [tp for tp in claimed if tp.topic != self._by_order and tp.offset < 0]
        )
        for tp in claimed:
            if tp.topic != self._by_order:
                watermark, handled = parse_input_metadata(tp.metadata)
                self._router.assign(
                    f"{tp.topic}:{tp.partition}",
                    now,
                    tp.offset if tp.offset >= 0 else None,
                    watermark,
                    handled,
                    log_start=starts.get((tp.topic, tp.partition), 0),
                )
                self._unclaimed.discard((tp.topic, tp.partition))
                continue
            source = self._source_key(tp.partition)
            store = RedisTaskStore(self._redis, self.settings.application_id, source)
            offsets: dict[str, int] = {}
            if tp.offset >= 0:
                offsets[source] = tp.offset
                marker = _metadata_number(tp.metadata, MARKER_PREFIX)
                if marker is not None:
                    offsets[source + "#batch"] = marker
            try:
                epoch = store.claim(offsets)
            except StateAheadOfKafkaError:
                if not self._committed_moved(tp):
                    raise
                # Our read of the offsets is older than a commit another member made since:
                # we stalled after the rebalance and the partition moved on. Not ours; the
                # rebalance we are about to notice sorts it out (docs/state-store.md).
                _log.warning(
                    "claim raced a newer owner: leaving the partition to it",
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=offsets.get(source),
                )
                self._unclaimed.discard((tp.topic, tp.partition))
                continue
            task = OrderTask(store, self.policy, self._sources, local_inputs)
            self._tasks[tp.partition] = _TaskSlot(
                task,
                store,
                epoch,
                max(tp.offset, 0),
                sync_from=self._next_key,
                committed=max(tp.offset, 0),
            )
            self._unclaimed.discard((tp.topic, tp.partition))
            self._forget_commits()
            _log.info(
                "task claimed",
                topic=tp.topic,
                partition=tp.partition,
                offset=offsets.get(source),
                batch_marker=offsets.get(source + "#batch"),
                epoch=epoch,
            )

    def _check_inputs_unchanged(self) -> None:
        """Compares the inputs' partitions, as assigned and as the broker lists them, with
        those the processor started with. The listing waits `INPUTS_CHECK_TIMEOUT_S` at
        most, inside the batch's transaction; a topic it does not give in full is left to
        the next rebalance."""
        now = set(self._sources) | {
            f"{tp.topic}:{tp.partition}"
            for tp in self._consumer.assignment()
            if tp.topic != self._by_order
        }
        try:
            listed = self._admin.list_topics(timeout=INPUTS_CHECK_TIMEOUT_S).topics
        except KafkaException as exc:
            _log.warning("input partitions not listed", error=str(exc))
            listed = {}
        for topic in self._inputs:
            meta = listed.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                now = {s for s in now if s.rpartition(":")[0] != topic}
                now |= {f"{topic}:{partition}" for partition in meta.partitions}
        if now != self._sources:
            raise InputPartitionsChangedError(
                f"the inputs' partitions changed while the processor ran, from "
                f"{len(self._sources)} to {len(now)} (added: {sorted(now - self._sources)}, "
                f"removed: {sorted(self._sources - now)}); stopping so that it starts again "
                f"with them"
            )

    def _log_starts(self, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The first offset each partition holds, in one request: where the consumer reads
        one with no committed offset from (`auto.offset.reset=earliest`), so committing it
        moves nothing. A router commits it for an input it has read nothing of, since a
        batch's offsets are what fences its records (`Router.assign`)."""
        if not partitions:
            return {}
        earliest = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        asked = self._admin.list_offsets(
            {TopicPartition(tp.topic, tp.partition): earliest for tp in partitions},
            request_timeout=INPUTS_CHECK_TIMEOUT_S,
        )
        return {(tp.topic, tp.partition): future.result().offset for tp, future in asked.items()}

    def _check_tasks_kept(self, tasks: list[TopicPartition]) -> None:
        """Raises `StateBehindKafkaError`, before a router's claim writes anything, if Redis
        lost the state of a task whose offsets the group committed (`tasks`: every task's
        partition, with the group's committed offset), whichever instance owns it: a loss
        between two runs that an instance with no task of its own would route on through,
        with the tracking index lost too (docs/live.md, "Exactly once"). A claim starts a
        lost input's epoch again at 1, which proves nothing."""
        committed = [self._source_key(tp.partition) for tp in tasks if tp.offset >= 0]
        lost = tasks_without_state(self._redis, self.settings.application_id, committed)
        if lost:
            raise lost_state(
                f"tasks {', '.join(lost)}: the group committed their offsets, and Redis has "
                "no state of them"
            )

    def _claim_sources(self, sources: list[str]) -> None:
        epochs, reported = self._index.claim_sources(sources)
        self._router_progress = trusted(reported, self._log_ends(claiming_idle(reported)))
        self._source_epochs.update(epochs)

    def _log_ends(self, sources: Iterable[str]) -> dict[str, int]:
        """The end offsets of partitions (`topic:partition`), as a read_committed consumer
        reads them, in one request: what idle and drained reports are checked against
        (`router.trusted`, `OrderTask.trust_idle`), and lag after a rewind. Those the
        broker does not give are left out, so no report of them is trusted."""
        claims = sorted(sources)
        if not claims:
            return {}
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        partitions = {
            TopicPartition(topic, int(partition)): latest
            for topic, _, partition in (source.rpartition(":") for source in claims)
        }
        asked = self._admin.list_offsets(
            partitions,
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=END_OFFSETS_TIMEOUT_S,
        )
        ends: dict[str, int] = {}
        for tp, future in asked.items():
            try:
                ends[f"{tp.topic}:{tp.partition}"] = future.result().offset
            except KafkaException as exc:  # no report of it trusted this batch
                _log.warning(
                    "end offset unknown", topic=tp.topic, partition=tp.partition, error=str(exc)
                )
        return ends

    def _committed_moved(self, read: TopicPartition) -> bool:
        """Whether the group's committed offset of `read`'s partition changed since `read`."""
        (now,) = self._consumer.committed([TopicPartition(read.topic, read.partition)], timeout=30)
        return (now.offset, now.metadata) != (read.offset, read.metadata)

    def _process(self, messages: list[Message], checkpoint: Checkpoint) -> None:
        now = time.monotonic()
        received_ms = int(time.time() * 1000)
        tally = checkpoint.tally
        inbound: list[Inbound] = []
        rejected: list[tuple[str, int]] = []  # (source, offset) of records dead-lettered here
        touched: set[int] = set()
        # Per input partition, looked up once a batch: its source name and the router's
        # marks (`_input_marks`); None when the partition is not ours.
        marks: dict[tuple[str, int], tuple[str, int, int] | None] = {}
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
            if topic == self._by_order:
                # Its offset is committed only through its task (below): a partition
                # whose task is not claimed, or was fenced, is not ours to commit.
                # A record below the task's position is decided already (_TaskSlot).
                slot = self._tasks.get(partition)
                if slot is not None and offset >= slot.position:
                    slot.position = offset + 1
                    self._receive_routed(message, slot, offset)
                    touched.add(partition)
                continue
            try:
                found = marks[(topic, partition)]
            except KeyError:
                found = marks[(topic, partition)] = self._input_marks(topic, partition)
            if found is None:
                continue  # revoked while `consume` ran: not ours to route or commit
            source, routed_to, handled = found
            if offset < routed_to:
                continue  # read again after a late seek (see _TaskSlot): routed already
            # Read again behind a held offset (Router.assign): counted, dead-lettered once.
            replayed = offset < handled
            origin = f"{topic}/{partition}/{offset}"
            value = message.value() or b""
            record: dict[str, Any] | None = None
            try:
                record = self._serde.decode(value, topic)
                event = parse_event(record)
                reject_future(event, received_ms, self.policy.allowed_lateness_ms)
            except (DecodeError, InvalidEventError) as exc:
                rejected.append((source, offset))
                if not replayed:
                    kind = metrics.UNDECODABLE if record is None else str(record.get("type"))
                    tally.consumed[(source, kind)] += 1
                    self._dead_letter(
                        message.key(), message.value(), origin, exc.reason, exc.message
                    )
                continue
            arrived = arrival_ms(message.timestamp(), received_ms)
            inbound.append(Inbound(source, offset, event, origin, value, arrived, replayed))
        tally.consumed.update(
            (item.source, item.event.type) for item in inbound if not item.replayed
        )

        # Read once, before the lookups: the holds (`_publish_watermarks`) rely on
        # every index entry it covers being visible to this batch's lookups.
        progress = expiry_progress(self._sources, self._router_progress)
        routed = self._router.route(inbound, now, progress)
        for source, offset in rejected:
            self._router.skip(source, offset, now)
        self._send_routed(routed.routed, received_ms)
        for pending, dead in routed.dead_letters:
            self._dead_letter(_key(dead), pending.payload, dead.origin, dead.reason, dead.message)
        self._publish_watermarks(now, progress, checkpoint)

        for partition in sorted(self._tasks):
            slot = self._tasks[partition]
            ready = slot.task.take_ready()
            if not ready and partition not in touched:
                continue
            slot.store.prefetch(ready, due_by=slot.task.clock_target())
            for output in slot.task.release():
                self._emit(output)
            tally.arrivals_ms.update(slot.task.released_arrivals)
            offset = slot.task.commit_offset()
            if offset is None:
                continue
            source = self._source_key(partition)
            marker = slot.next_marker()
            checkpoint.offsets[(self._by_order, partition)] = offset
            checkpoint.metadata[(self._by_order, partition)] = f"{MARKER_PREFIX}{marker}"
            checkpoint.stores.append((slot.store, {source: offset, source + "#batch": marker}))
        # Every input partition read in this batch is a router source by now (routed,
        # pending or skipped): the router says how far its offset may be committed, and
        # the tasks it hands events to directly hold it back further.
        for source, by_router in self._router.commit_offsets().items():
            commit = self._input_commit(source, by_router)
            source_topic, _, source_partition = source.rpartition(":")
            checkpoint.offsets[(source_topic, int(source_partition))] = commit.offset
            checkpoint.metadata[(source_topic, int(source_partition))] = input_metadata(commit)
        if self._unchanged(checkpoint):
            checkpoint.offsets.clear()
            checkpoint.metadata.clear()
        checkpoint.commit()
        self._reported.update(checkpoint.reports)
        for position, offset in checkpoint.offsets.items():
            self._sent_positions[position] = (offset, checkpoint.metadata.get(position))
        if self._refused:
            # Kafka let this instance commit these inputs' offsets, so they are its own: the
            # claim holding their progress came late, from an instance that stalled between
            # a rebalance and its claim (docs/live.md, "Exactly once").
            committed = {f"{topic}:{partition}" for topic, partition in checkpoint.offsets}
            ours = [source for source in self._refused if source in committed]
            if ours:
                _log.warning("claiming input partitions again", partitions=ours)
                self._claim_sources(ours)
        for (topic, partition), offset in checkpoint.offsets.items():
            if topic == self._by_order and partition in self._tasks:
                self._tasks[partition].committed = offset
        self._drop_fenced()

    def _unchanged(self, checkpoint: Checkpoint) -> bool:
        """Whether the batch has nothing to commit: no record, no state, each partition's
        offset and metadata as last sent, and no input to claim again (`_refused`, which a
        commit of its offset proves ours). Its transaction then stays empty: an idle
        instance commits no transaction to the broker between two reports."""
        sent = self._sent_positions
        return (
            not checkpoint.produced
            and not checkpoint.stores
            and not self._refused
            and all(
                sent.get(position) == (offset, checkpoint.metadata.get(position))
                for position, offset in checkpoint.offsets.items()
            )
        )

    def _input_marks(self, topic: str, partition: int) -> tuple[str, int, int] | None:
        """An input partition's source name, the offset below which its records were
        routed already, and its handled mark (`Router.handled`); None if not ours."""
        source = f"{topic}:{partition}"
        if source not in self._source_epochs:
            return None
        routed_to = self._router.position(source)
        return source, 0 if routed_to is None else routed_to, self._router.handled(source)

    def _input_commit(self, source: str, routed: Commit) -> Commit:
        """What to commit for an input partition: its router's offset and watermark, held
        back by the tasks it hands events to directly, for the events they have not
        decided (whoever reads the input next hands them over again, up to the router's
        handled mark)."""
        offset, watermark = routed.offset, routed.watermark
        for slot in self._tasks.values():
            task = slot.task
            if source in task.direct:
                undecided, hold = task.direct_commit_offset(source), task.hold()
                offset = offset if undecided is None else min(offset, undecided)
                watermark = watermark if hold is None else min(watermark, hold)
        return Commit(offset, watermark, routed.handled)

    def _send_routed(self, routed: list[Routed], sent_ms: int) -> None:
        """Hands the routed events to their tasks: directly to this instance's tasks
        (`OrderTask.direct`), through the internal topic to the others', one record per
        task (and per `ROUTED_RECORD_BYTES`), each event with its input's bytes unchanged
        and the order id the router resolved, so nothing is encoded again."""
        tasks, order_partition = self._tasks, self._order_partition
        by_task: dict[int, list[Routed]] = {}
        direct: dict[int, list[DirectEvent]] = {}
        for routed_item in routed:
            order_id, item = routed_item
            partition = order_partition(order_id)
            slot = tasks.get(partition)
            if slot is not None and item.source in slot.task.direct:
                event = item.event
                direct.setdefault(partition, []).append(
                    (event.at, event, order_id, item.origin, item.arrived, item.source, item.offset)
                )
            else:
                by_task.setdefault(partition, []).append(routed_item)
        for partition, handed in direct.items():
            tasks[partition].task.receive_direct(handed)
        for partition, items in by_task.items():
            for chunk in routed_chunks(items):
                value = self._serde.encode(
                    "routed",
                    {
                        "events": [
                            {
                                "origin": i.origin,
                                "order_id": order_id,
                                "arrived": i.arrived,
                                "payload": i.payload,
                            }
                            for order_id, i in chunk
                        ]
                    },
                    self._by_order,
                )
                self._produce(
                    self._by_order,
                    key=self._new_key(),
                    value=value,
                    partition=partition,
                    timestamp=sent_ms,
                )

    def _new_key(self) -> bytes:
        """The key of a record for the internal topic: unique, and in the order written."""
        key = self._key_prefix + str(self._next_key).encode()
        self._next_key += 1
        return key

    def _written_since(self, key: bytes, first: int) -> bool:
        """Whether a record of the internal topic is one this instance wrote, as its
        `first`-th or later (`_new_key`)."""
        prefix = self._key_prefix
        return key.startswith(prefix) and int(key[len(prefix) :]) >= first

    def _receive_routed(self, message: Message, slot: _TaskSlot, offset: int) -> None:
        task = slot.task
        if not task.synced and self._written_since(message.key() or b"", slot.sync_from):
            task.sync()
        record = self._serde.decode(message.value() or b"", self._by_order)
        if record["type"] == "watermark":
            end = record["end_offset"] if record["idle"] else NOT_IDLE
            task.receive_watermark(offset, record["source"], to_millis(record["occurred_at"]), end)
        else:
            task.receive(offset, [self._routed_event(item) for item in record["events"]])

    def _routed_event(self, item: dict[str, Any]) -> RoutedEvent:
        record = self._serde.decode(item["payload"], self._by_order)
        return parse_event(record), item["order_id"], item["origin"], item["arrived"]

    def _caught_up(self) -> dict[str, int]:
        """The input partitions the consumer has read everything of that the broker last
        told of, and the offset it read each to. Also reports every assigned partition's
        lag (high watermark minus position).

        The consumer has no position for a partition it has read nothing from since it
        was assigned; the router's or the task's (the committed offset) stands in for it,
        or a partition consumed to its end before it moved would never count as idle again.
        """
        caught_up: dict[str, int] = {}
        assigned = self._consumer.assignment()
        for tp in self._consumer.position(assigned) if assigned else []:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            position = self._position(tp)
            if tp.topic != self._by_order:
                source = f"{tp.topic}:{tp.partition}"
                # Records below the log start are gone (retention): nothing left to read.
                read_to = max(position or 0, low, 0)
                if 0 <= high <= read_to:
                    caught_up[source] = read_to
            if high >= 0:  # else no fetch has told us the high watermark yet
                behind = max(high - (position if position is not None else max(low, 0)), 0)
                self._partition_gauges.lag(tp.topic, tp.partition, behind)
        return caught_up

    def _position(self, tp: TopicPartition) -> int | None:
        """Where the consumer reads `tp` (a `position()` answer) from next: its position,
        or where it has read nothing since the assignment, the task's or the router's."""
        if tp.offset >= 0:
            return tp.offset
        if tp.topic == self._by_order:
            slot = self._tasks.get(tp.partition)
            return slot.position if slot is not None else None
        return self._router.position(f"{tp.topic}:{tp.partition}")

    def _positions(self) -> dict[tuple[str, int], int]:
        """Every assigned partition's `_position` (-1 where none is known)."""
        assigned = self._consumer.assignment()
        return {
            (tp.topic, tp.partition): (-1 if (position := self._position(tp)) is None else position)
            for tp in (self._consumer.position(assigned) if assigned else [])
        }

    def _publish_watermarks(self, now: float, progress: int | None, checkpoint: Checkpoint) -> None:
        """Reports each input's progress to every task (docs/live.md, "Event time across
        instances"). A report the partition got last is not written again until
        `idle_partition_wait_ms` has passed: an idle application wrote one per input and
        partition every batch, and committed a transaction for them. Written again that
        often, it reaches an owner that reads the partition from past the last one."""
        again = now >= self._report_again_at
        if again:
            self._report_again_at = now + self._idle_s
        drained = all_drained(self._sources, self._router_progress)
        caught_up = self._caught_up()
        self._pace()
        reports = self._router.watermarks(now, self._idle_s, caught_up, progress, drained)
        self._refused, reported = self._index.share_progress(
            [(source, self._source_epochs[source], report) for source, report in reports]
        )
        claims = set(claiming_idle(reported))
        for task_slot in self._tasks.values():
            claims |= task_slot.task.idle_claims()
        ends = self._log_ends(claims)
        self._router_progress = trusted(reported, ends)
        for task_slot in self._tasks.values():
            task_slot.task.trust_idle(ends)
        if self._refused:
            _log.warning(
                "input partitions claimed by another instance: not sharing their progress",
                partitions=self._refused,
            )
        for source, report in reports:
            value = self._watermark_record(source, report.watermark, report.idle_end)
            for partition in range(self._by_order_partitions):
                slot = self._tasks.get(partition)
                if slot is not None and source in slot.task.direct:
                    record = self._direct_watermark(source, report, slot.task)
                else:
                    record = value
                if not again and self._reported.get((source, partition)) == record:
                    continue
                self._produce(
                    self._by_order, key=self._new_key(), value=record, partition=partition
                )
                checkpoint.reports[(source, partition)] = record

    def _direct_watermark(self, source: str, report: Progress, task: OrderTask) -> bytes:
        """A direct input's watermark: its task here takes it as it is, and the task's
        partition gets it held below the task's undecided events (`OrderTask.hold`).

        Those events are in no topic. Should the task move, or this instance crash, its
        next owner reads the partition from the last commit before the input's events are
        handed over again, so no report there may let its clock pass them; nor may the
        input count as idle there while they wait.
        """
        task.receive_local_watermark(source, report.watermark, report.idle_end)
        hold = task.hold()
        if hold is None:
            return self._watermark_record(source, report.watermark, report.idle_end)
        return self._watermark_record(source, min(report.watermark, hold), NOT_IDLE)

    def _watermark_record(self, source: str, watermark: int, idle_end: int) -> bytes:
        """`idle_end`: the end offset the input's idle claim rests on, `NOT_IDLE` if none."""
        return self._serde.encode(
            "watermark",
            {
                "source": source,
                "occurred_at": from_millis(watermark),
                "idle": idle_end >= 0,
                "end_offset": idle_end,
            },
            self._by_order,
        )

    def _pace(self) -> None:
        """The inputs wait while a task of this instance is not synced (`OrderTask.sync`).

        Until then the task cannot decide the events handed to it, and the record that
        syncs it may queue behind a whole prefetch of input records (librdkafka keeps up
        to 64 MB of them): after a rebalance or a rewind the tasks would hold that much.
        Pausing drops the prefetched input, so the internal topic's records come next. It
        cannot stall: syncing takes no watermark, only a read of the internal topic.
        Paused partitions are not read to their end, so they never count as idle.
        """
        inputs = [tp for tp in self._consumer.assignment() if tp.topic != self._by_order]
        if inputs:
            if any(not slot.task.synced for slot in self._tasks.values()):
                self._consumer.pause(inputs)
            else:
                self._consumer.resume(inputs)

    def _emit(self, output: Output) -> None:
        topics = self.settings.topics
        if isinstance(output, DeadLetter):
            self._dead_letter(
                _key(output), output.payload.encode(), output.origin, output.reason, output.message
            )
            return
        self._checkpoint.tally.outputs.append(output)
        if isinstance(output, RefundCommand):
            topic, key = topics.wallet, output.merchant_id
        elif isinstance(output, ReshipCommand):
            topic, key = topics.fulfilment, output.order_id
        else:
            assert isinstance(output, Decision)
            topic, key = topics.decisions, output.order_id
        value = self._serde.encode(output.type, output_to_dict(output, iso_times=False), topic)
        # Kafka timestamp = when the command was issued (wall clock); decided_at, the event
        # time, is in the record. Event time here would let retention delete fresh commands.
        self._produce(topic, key=key.encode(), value=value)

    def _dead_letter(
        self, key: bytes | None, value: bytes | None, origin: str, reason: str, message: str
    ) -> None:
        self._checkpoint.tally.dead_letters.append((origin, reason, message))
        record = dead_letter_record(key, value, origin, reason, message)
        self._produce(
            self.settings.topics.dlq, key=record.key, value=record.value, headers=record.headers
        )

    def _produce(self, topic: str, **record: Any) -> None:
        """Every record the runner writes: its batch then commits offsets (`_unchanged`)."""
        self._checkpoint.produced = True
        self._producer.produce(topic, **record)

    def _source_key(self, partition: int) -> str:
        return f"{self._by_order}:{partition}"

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        _log.info("partitions assigned", partitions=_names(partitions))
        self._partition_gauges.assign((tp.topic, tp.partition) for tp in partitions)
        if not self.running:
            return  # closing: the group is being left, nothing will be processed
        self._unclaimed.update((tp.topic, tp.partition) for tp in partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        _log.warning("partitions lost (group membership expired)", partitions=_names(partitions))
        self._forget(partitions, "lost")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        _log.info("partitions revoked", partitions=_names(partitions))
        self._forget(partitions, "revoke")

    def _forget(self, partitions: list[TopicPartition], kind: str) -> None:
        self._partition_gauges.revoke(((tp.topic, tp.partition) for tp in partitions), kind)
        revoked = {f"{tp.topic}:{tp.partition}" for tp in partitions}
        for tp in partitions:
            self._unclaimed.discard((tp.topic, tp.partition))
            if tp.topic == self._by_order:
                self._drop_task(tp.partition, revoked)
            else:
                self._router.revoke(f"{tp.topic}:{tp.partition}")
                self._source_epochs.pop(f"{tp.topic}:{tp.partition}", None)

    def _drop_task(self, partition: int, revoked: set[str] | frozenset[str] = frozenset()) -> None:
        """Forgets a task. The events its direct inputs handed it and it has not decided
        are in no topic: if one of those inputs stays ours (not in `revoked`), every
        partition goes back to its last commit before the next batch (`_must_rewind`), so
        that they are read again. With the range assignor a rebalance revokes everything
        at once, so this is for a task fenced while its inputs were not revoked yet.
        """
        slot = self._tasks.pop(partition, None)
        if slot is not None and not slot.task.direct <= revoked:
            self._must_rewind = True

    def _drop_fenced(self) -> None:
        """Forgets the tasks another member claimed: we are a zombie for them.

        Their partitions stay assigned to this consumer until it notices the rebalance
        that moved them (the next `consume`); until then their records are skipped and
        never committed (`_process`). Never claimed again here: see `_rewind`.
        """
        for partition, slot in list(self._tasks.items()):
            if slot.store.epoch is None:
                _log.warning(
                    "task fenced: another member owns it now", **task_fields(slot.store.task)
                )
                self._drop_task(partition)

    def _rewind_until_done(self) -> None:
        while True:
            try:
                self._rewind()
                return
            except KafkaException as rewind_error:  # e.g. reading committed offsets timed out
                if rewind_error.args[0].fatal():
                    raise
                _log.warning("rewind failed, retrying in 1 s", error=str(rewind_error))
                time.sleep(1)

    def _rewind(self) -> None:
        """After an aborted transaction: every assigned partition back to its last commit.

        Each task discards its uncommitted batch (Redis drops the staged copy, the store
        its overlay) and its in-memory buffer, which the records after its committed offset
        rebuild; it keeps its claim. It must not claim again: only a rebalance proves that
        Kafka fenced every other owner of the partition, and an instance that was stalled
        while its partitions moved still believes it owns them. Its claim would bump the
        new owner's epoch and fence it until the next rebalance (the batch that owner
        staged is set aside, not lost: a later claim applies it if Kafka committed it,
        docs/state-store.md). Input partitions restart their router source from the committed
        offset and watermark, under the epoch they were claimed at, and tasks hand their
        direct inputs' events over again.
        """
        self._drop_fenced()
        for slot in self._tasks.values():
            # With Redis down, a staged copy left behind is replaced by our next stage, or
            # set aside by the next owner's claim (docs/state-store.md).
            with contextlib.suppress(*REDIS_DOWN):
                slot.store.discard()
            slot.task = OrderTask(slot.store, self.policy, self._sources, slot.task.direct)
            slot.sync_from = self._next_key
        assignment = self._consumer.assignment()
        for tp in assignment:
            if tp.topic != self._by_order:
                self._router.revoke(f"{tp.topic}:{tp.partition}")
                self._unclaimed.add((tp.topic, tp.partition))
        rewound: dict[tuple[str, int], int] = {}
        for tp in self._consumer.committed(assignment, timeout=30):
            # No committed offset: back to where a new group starts (auto.offset.reset).
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            if tp.topic == self._by_order and tp.partition in self._tasks:
                self._tasks[tp.partition].position = max(tp.offset, 0)
            rewound[(tp.topic, tp.partition)] = tp.offset
        self._must_rewind = False
        self._forget_commits()
        self._report_lag(rewound)

    def _forget_commits(self) -> None:
        """After a rewind, a task's claim or a batch that failed after its commit, the next
        batch writes every report and commits every offset: a task set up since reads the
        reports from its committed offset, and syncs on the first record of ours
        (`OrderTask.sync`)."""
        self._reported.clear()
        self._sent_positions.clear()

    def _report_lag(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Each partition's lag from the offset the consumer reads it from next (where a
        rewind left it, or its position while a committed batch waits for Redis; negative:
        none, the log start stands in) to its log's end, asked of the broker in one
        request: the consumer's figures (`_caught_up`) are read only by a batch that gets
        through, and while batches fail, or wait, on Redis down say, the gauges (and
        readiness) would show the lag before the outage (found in review)."""
        ends = self._log_ends(f"{topic}:{partition}" for topic, partition in offsets)
        for (topic, partition), offset in offsets.items():
            end = ends.get(f"{topic}:{partition}")
            if end is not None:
                tp = TopicPartition(topic, partition)
                low, _ = self._consumer.get_watermark_offsets(tp, cached=True)
                behind = end - max(offset, low, 0)
                self._partition_gauges.lag(topic, partition, max(behind, 0))

    def _ensure_topics(self) -> int:
        """Creates missing topics; the internal one gets the orders topic's partition count."""
        metadata = cluster_metadata(self._admin)
        orders = metadata.topics.get(self.settings.topics.orders)
        if orders is None or orders.error is not None:
            raise RuntimeError(f"input topic {self.settings.topics.orders!r} does not exist")
        partitions = len(topic_partitions(self._admin, self.settings.topics.orders))
        topics = self.settings.topics
        wanted = [self._by_order, topics.wallet, topics.fulfilment, topics.decisions, topics.dlq]
        # Time-based retention on the internal topic would count from its records'
        # timestamps (docs/live.md) and could delete them before a task has read them.
        keep_forever = {self._by_order: {"retention.ms": "-1"}}
        missing = [
            NewTopic(t, num_partitions=partitions, config=keep_forever.get(t, {}))
            for t in wanted
            if t not in metadata.topics
        ]
        if missing:
            for future in self._admin.create_topics(missing).values():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
        return len(topic_partitions(self._admin, self._by_order))
