"""A batch's commit (`processor.checkpoint`): what it refuses to commit, how its
transaction ends or stops the process, and what it warns of."""

import uuid

import pytest
import redis
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from processor.checkpoint import (
    KAFKA_TIMEOUTS,
    Checkpoint,
    TransactionStuckError,
    end_transaction,
    kafka_timed_out,
    observe_transaction_open,
)
from processor.redis_store import RedisTaskStore, StateBehindKafkaError, delete_keys
from processor.state import OrderState
from tests.live import LiveHarness


def test_a_batch_that_wrote_records_never_commits_them_without_offsets(
    live: LiveHarness,
) -> None:
    """Offsets sent with the group's metadata are what fence a batch's records: one with
    none would commit a zombie's records too."""
    producer = Producer(live.settings.kafka.producer_config(f"{live.app}-unfenced"))
    consumer = Consumer(live.settings.kafka.consumer_config(live.settings.group_id))
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        checkpoint = Checkpoint(producer, consumer, timeout_s=10, produced=True)
        with pytest.raises(RuntimeError, match="it would commit unfenced"):
            checkpoint.commit()
        assert not checkpoint.committed
        producer.abort_transaction(30)
    finally:
        consumer.close()


def test_a_transaction_open_for_over_half_its_timeout_is_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        observe_transaction_open(4.9, 40_000, timeout_s=10)
        observe_transaction_open(5.1, 40_000, timeout_s=10)

    (warning,) = logs
    assert warning["log_level"] == "warning"
    assert "lower max_batch_records" in warning["event"]
    assert (warning["open_s"], warning["records"]) == (5.1, 40_000)


def _retriable(reason: str) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, reason, retriable=True))


def test_a_transaction_that_fails_to_end_retriably_is_ended_again() -> None:
    """librdkafka asks for the same call again after a retriable failure."""
    attempts: list[float] = []

    def commit(timeout_s: float) -> None:
        attempts.append(timeout_s)
        if len(attempts) < 3:
            raise _retriable("coordinator busy")

    end_transaction(commit, timeout_s=10)

    assert attempts == [10, 10, 10]


def test_a_transaction_that_cannot_end_stops_the_process_rather_than_hang_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retried for ever, a broker stalled past the transaction timeout kept the process
    deaf to SIGTERM: a non-retriable error ends at once, a stop request or the deadline
    ends the retries."""
    attempts: list[float] = []

    def refused(timeout_s: float) -> None:
        attempts.append(timeout_s)
        raise KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "no transaction"))

    def stalled(timeout_s: float) -> None:
        attempts.append(timeout_s)
        raise _retriable("broker stalled")

    with pytest.raises(KafkaException, match="no transaction"):
        end_transaction(refused, timeout_s=10)
    assert len(attempts) == 1

    with pytest.raises(TransactionStuckError, match="stopping while the transaction"):
        end_transaction(stalled, timeout_s=10, stopping=lambda: True)
    assert len(attempts) == 2

    monkeypatch.setattr("processor.checkpoint.TRANSACTION_STUCK_S", 0.0)
    with pytest.raises(TransactionStuckError, match="did not end in 0 s"):
        end_transaction(stalled, timeout_s=10, stopping=lambda: False)
    assert len(attempts) == 3


@pytest.mark.parametrize("code", sorted(KAFKA_TIMEOUTS))
def test_a_kafka_timeout_in_a_batch_stops_the_process(code: int) -> None:
    with pytest.raises(TransactionStuckError, match="timed out"):
        kafka_timed_out(KafkaException(KafkaError(code, "no answer")))


def test_other_kafka_errors_in_a_batch_are_left_to_the_abort_and_retry() -> None:
    kafka_timed_out(KafkaException(KafkaError(KafkaError._STATE, "not now")))


def test_a_store_fenced_after_the_commit_is_left_to_the_next_claim_and_the_rest_apply(
    live: LiveHarness, redis_url: str
) -> None:
    """Kafka committed the batch: a task that another instance claimed since is applied by
    that claim (docs/state-store.md), so `apply` logs it and goes on with the others."""
    client = redis.Redis.from_url(redis_url)
    app = f"test-{uuid.uuid4().hex[:12]}"
    try:
        zombie = RedisTaskStore(client, app=app, task=f"{app}-by-order:0")
        zombie.claim({})
        zombie.save_order(OrderState("o1"))
        zombie.stage({"orders:0": 1})
        RedisTaskStore(client, app=app, task=f"{app}-by-order:0").claim({})
        kept = RedisTaskStore(client, app=app, task=f"{app}-by-order:1")
        kept.claim({})
        kept.save_order(OrderState("o2"))
        kept.stage({"orders:1": 1})
        producer = Producer(live.settings.kafka.producer_config())
        consumer = Consumer(live.settings.kafka.consumer_config(live.settings.group_id))
        committed = Checkpoint(
            producer, consumer, timeout_s=10, stores=[(zombie, {}), (kept, {})], committed=True
        )
        with structlog.testing.capture_logs() as logs:
            committed.apply()
        consumer.close()
    finally:
        delete_keys(client, f"{app}:")
        client.close()

    assert committed.applied == 2
    (warning,) = logs
    assert warning["event"] == "task fenced after its batch committed: a claim applies it"
    assert (warning["topic"], warning["partition"]) == (f"{app}-by-order", 0)


def test_a_committed_batch_is_staged_before_and_applied_after_its_transaction(
    live: LiveHarness, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    app = f"test-{uuid.uuid4().hex[:12]}"
    producer = Producer(live.settings.kafka.producer_config(f"{live.app}-commit"))
    consumer = Consumer(live.settings.kafka.consumer_config(live.settings.group_id))
    try:
        store = RedisTaskStore(client, app=app, task=f"{app}-by-order:0")
        store.claim({})
        store.save_order(OrderState("o1"))
        producer.init_transactions(30)
        producer.begin_transaction()
        checkpoint = Checkpoint(producer, consumer, timeout_s=10, stores=[(store, {"orders:0": 1})])
        checkpoint.commit()

        assert (checkpoint.committed, checkpoint.applied) == (True, 1)
        assert not client.exists(store.pending_key)
        owner = RedisTaskStore(client, app=app, task=f"{app}-by-order:0")
        owner.claim({"orders:0": 1})
        assert owner.load_order("o1") == OrderState("o1")
    finally:
        consumer.close()
        delete_keys(client, f"{app}:")
        client.close()


def test_apply_goes_on_past_a_fenced_store_but_not_past_lost_state(
    live: LiveHarness, redis_url: str
) -> None:
    """Only a fence is left to the next claim: a task whose Redis lost its epoch stops the
    batch (StateBehindKafkaError), after the stores before it are applied."""
    client = redis.Redis.from_url(redis_url)
    app = f"test-{uuid.uuid4().hex[:12]}"
    stores = [RedisTaskStore(client, app=app, task=f"{app}-by-order:{n}") for n in range(3)]
    try:
        for n, store in enumerate(stores):
            store.claim({})
            store.save_order(OrderState(f"o{n}"))
            store.stage({f"orders:{n}": 1})
        RedisTaskStore(client, app=app, task=f"{app}-by-order:0").claim({})  # fences stores[0]
        client.delete(stores[2].meta_key)  # Redis lost task 2 (a restart without persistence)
        producer = Producer(live.settings.kafka.producer_config())
        consumer = Consumer(live.settings.kafka.consumer_config(live.settings.group_id))
        committed = Checkpoint(
            producer,
            consumer,
            timeout_s=10,
            stores=[(store, {}) for store in stores],
            committed=True,
        )
        with pytest.raises(StateBehindKafkaError, match="Redis has no epoch"):
            committed.apply()
        consumer.close()
        assert committed.applied == 2
        assert not client.exists(stores[1].pending_key)
        assert client.exists(stores[1].order_key("o1"))
    finally:
        delete_keys(client, f"{app}:")
        client.close()
