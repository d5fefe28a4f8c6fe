"""One batch's commit: its Kafka transaction and the Redis state that goes with it.

The runner (`processor/runner.py`) decides what a batch commits; `Checkpoint` commits it,
in the order its docstring gives, and the functions beside it bound the transaction's
calls so that a stuck broker stops the process instead of hanging it. docs/live.md
("Exactly once") and docs/state-store.md say why the order holds.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from processor import metrics
from processor.deadletter import Origin
from processor.outputs import RefundCommand, ReshipCommand
from processor.redis_store import FencedError, RedisTaskStore

_log = structlog.stdlib.get_logger(__name__)

#: How long a batch's transaction may keep failing to end (commit or abort, each call
#: bounded by the transaction timeout) before the processor stops, exit 1, so that its
#: supervisor starts a new producer (`end_transaction`).
TRANSACTION_STUCK_S = 60.0

#: Kafka errors after which a batch stops the process rather than being aborted and
#: retried with the same producer (`kafka_timed_out`).
KAFKA_TIMEOUTS = frozenset(
    {KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._MSG_TIMED_OUT}
)


class TransactionStuckError(RuntimeError):
    """A batch's transaction could not be ended, or a Kafka call of the batch timed out:
    the process stops for its supervisor to start it with a new producer, and the broker
    aborts the open transaction when its timeout runs out (each process's transactional
    id is its own, so nothing fences it sooner)."""


def kafka_timed_out(exc: KafkaException) -> None:
    """Raises `TransactionStuckError` for a Kafka timeout in a batch: not to be aborted and
    retried with the same producer. After a broker stalled for longer than the transaction
    timeout, the batch that timed out was aborted, and the next one's
    `send_offsets_to_transaction` waited for ever, whatever its timeout, deaf to SIGTERM
    (librdkafka 2.16; found in review): a new producer is the way out."""
    error: KafkaError = exc.args[0]
    if error.code() in KAFKA_TIMEOUTS:
        raise TransactionStuckError(f"a Kafka call of the batch timed out: {error.str()}") from exc


def end_transaction(
    call: Callable[[float], None], timeout_s: float, stopping: Callable[[], bool] | None = None
) -> None:
    """Commits or aborts (`call`, each attempt bounded by `timeout_s`), again while it fails
    retriably, as librdkafka asks, for `TRANSACTION_STUCK_S` at most or until `stopping()`.

    Unbounded, librdkafka waited for ever after a broker stalled for longer than the
    transaction timeout, and no signal could stop the process (found in review).
    """
    deadline = time.monotonic() + TRANSACTION_STUCK_S
    while True:
        try:
            call(timeout_s)
            return
        except KafkaException as exc:
            if not exc.args[0].retriable():
                raise
            if stopping is not None and stopping():
                raise TransactionStuckError(
                    f"stopping while the transaction failed to end: {exc}"
                ) from exc
            if time.monotonic() > deadline:
                raise TransactionStuckError(
                    f"the transaction did not end in {TRANSACTION_STUCK_S:g} s: {exc}"
                ) from exc


@dataclass(slots=True)
class Checkpoint:
    """One batch's Kafka transaction and the Redis state it commits with.

    `commit()` does, in order:
    1. stages every touched task's state in Redis with the offsets and batch marker this
       transaction will commit (write-ahead; refused if another instance claimed the task);
    2. sends the consumed offsets into the transaction, each with its metadata (a task's
       batch marker, a router's watermark and handled mark), and with the consumer
       group's metadata, so a member that lost its partitions cannot commit them, nor the
       records it produced (a batch that produced one has offsets: a task commits its
       own with what it decides, and each input its router reports has one from its
       claim on, `Router.assign`; one without raises before step 1); none when there is
       nothing to commit (`Runner._unchanged`): the transaction is then empty, and
       librdkafka ends it with no request;
    3. commits the transaction: outputs, offsets and metadata become visible together, and
       the batch counts in the metrics (`tally`) and the log;
    4. applies the staged state in Redis (`apply()`, which may be retried).
    A failure before step 3 aborts the transaction: the runner discards the staged batches
    (`Runner._rewind`). A crash between steps 3 and 4 is resolved by the task's next claim:
    the staged state is applied if and only if Kafka committed its batch marker.
    """

    producer: Producer
    consumer: Consumer
    timeout_s: float  # for each transactional call: the transaction's timeout
    stores: list[tuple[RedisTaskStore, dict[str, int]]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    metadata: dict[tuple[str, int], str] = field(default_factory=dict)
    tally: metrics.BatchTally = field(default_factory=metrics.BatchTally)
    produced: bool = False  # a record is in the transaction: its offsets must go with it
    #: The watermark records produced, by (input source, internal topic partition).
    reports: dict[tuple[str, int], bytes] = field(default_factory=dict)
    committed: bool = False
    applied: int = 0  # stores[:applied] are applied (or were claimed by another owner)

    def commit(self) -> None:
        if self.produced and not self.offsets:
            # Each batch that writes a record has offsets by construction (step 2): a bug
            # here stops the process rather than commit records a zombie could have written.
            raise RuntimeError(
                "a batch that wrote records has no offsets: it would commit unfenced"
            )
        for store, offsets in self.stores:
            store.stage(offsets)
        positions = [
            TopicPartition(t, p, o, metadata=self.metadata[(t, p)])
            if (t, p) in self.metadata
            else TopicPartition(t, p, o)
            for (t, p), o in self.offsets.items()
        ]
        started = time.perf_counter()
        if positions:
            self.producer.send_offsets_to_transaction(
                positions, self.consumer.consumer_group_metadata(), self.timeout_s
            )
        end_transaction(self.producer.commit_transaction, self.timeout_s)
        metrics.TRANSACTION_COMMIT.observe(time.perf_counter() - started)
        self.committed = True
        self.tally.timers_fired = sum(store.timers_fired for store, _ in self.stores)
        self.tally.count(int(time.time() * 1000))
        _log_committed(self.tally)
        self.apply()

    def apply(self) -> None:
        """Applies the committed batch in Redis, store by store; safe to call again after a
        Redis error (`RedisTaskStore.apply` is idempotent).

        A store fenced here lost its task after Kafka committed the batch: a claim after the
        commit applied the batch, and one before it set the batch aside for the next claim,
        which applies it (docs/state-store.md).
        """
        while self.applied < len(self.stores):
            store = self.stores[self.applied][0]
            try:
                store.apply()
            except FencedError as exc:
                _log.warning(
                    "task fenced after its batch committed: a claim applies it",
                    **task_fields(store.task),
                    error=str(exc),
                )
            self.applied += 1


def observe_transaction_open(open_s: float, records: int, timeout_s: float) -> None:
    """A committed batch's transaction time; a warning past half the timeout, while
    there is time to lower max_batch_records before the broker aborts one."""
    metrics.TRANSACTION_OPEN.observe(open_s)
    if open_s > timeout_s / 2:
        _log.warning(
            "a batch's transaction was open for over half of transaction.timeout.ms: "
            "lower max_batch_records",
            open_s=round(open_s, 3),
            records=records,
            transaction_timeout_s=timeout_s,
        )


def _log_committed(tally: metrics.BatchTally) -> None:
    """Money and goods that moved, and input that never will: one line each."""
    for output in tally.outputs:
        if isinstance(output, RefundCommand):
            _log.info(
                "refund committed",
                order_id=output.order_id,
                merchant_id=output.merchant_id,
                command_id=output.command_id,
                reason=output.reason,
                amount_minor=output.amount_minor,
                currency=output.currency,
            )
        elif isinstance(output, ReshipCommand):
            _log.info(
                "reship committed",
                order_id=output.order_id,
                merchant_id=output.merchant_id,
                command_id=output.command_id,
                claim_id=output.claim_id,
            )
    for origin, reason, message in tally.dead_letters:
        where = Origin.parse(origin)
        coordinates = (
            {"topic": where.topic, "partition": where.partition, "offset": where.offset}
            if where is not None
            else {"origin": origin}
        )
        _log.warning("dead letter committed", **coordinates, reason=reason, detail=message)


def task_fields(task: str) -> dict[str, str | int]:
    """A task ("<by-order topic>:<partition>") as log fields."""
    topic, _, partition = task.rpartition(":")
    return {"topic": topic, "partition": int(partition)}
