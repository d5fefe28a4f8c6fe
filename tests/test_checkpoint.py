"""A batch's commit (`processor.checkpoint`): what it refuses to commit, and what it warns of."""

import pytest
import structlog
from confluent_kafka import Consumer, Producer

from processor.checkpoint import Checkpoint, observe_transaction_open
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
