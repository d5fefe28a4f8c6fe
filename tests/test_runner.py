"""The live processor against a real broker and Redis: it refunds what the replay refunds.

Each test publishes a generated history, runs `refund-processor run` as real
subprocesses (one or several in one consumer group) and reads the wallet topic with a
read_committed consumer until the refunds match the offline replay's, or a deadline.
"""

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from processor.config import load_policy
from processor.deadletter import ERROR_CLASS, SOURCE_TOPIC
from processor.generate import generate_history
from processor.localstack.kafka import KafkaAdmin
from processor.outputs import RefundCommand
from processor.publish import publish_lines
from processor.replay import replay
from processor.serde import Serde
from processor.settings import Settings

RefundKey = tuple[str, str, str | None, str | None, int]


def _refund_key(record: dict[str, Any]) -> RefundKey:
    return (
        record["command_id"],
        record["order_id"],
        record["package_id"],
        record["claim_id"],
        record["amount_minor"],
    )


class LiveHarness:
    """Topics, settings and processor subprocesses of one test."""

    def __init__(
        self,
        kafka_bootstrap: str,
        redis_url: str,
        admin: KafkaAdmin,
        unique_topic: Callable[[str], str],
        tmp_path: Path,
    ) -> None:
        self.app = unique_topic("app")
        self.topics = {
            name: unique_topic(name)
            for name in ("orders", "tracking", "wallet", "fulfilment", "decisions", "dlq")
        }
        admin.create_topic(self.topics["orders"], 3)
        admin.create_topic(self.topics["tracking"], 2)
        self.env = (
            os.environ
            | {
                "REFUND_APPLICATION_ID": self.app,
                "REFUND_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
                "REFUND_REDIS__URL": redis_url,
                "REFUND_IDLE_PARTITION_WAIT_MS": "1500",
            }
            | {f"REFUND_TOPICS__{name.upper()}": topic for name, topic in self.topics.items()}
        )
        self.settings = Settings(
            application_id=self.app,
            kafka={"bootstrap_servers": kafka_bootstrap},
            redis={"url": redis_url},
            topics=self.topics,
        )
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def publish(self, lines: list[str]) -> None:
        source = io.BytesIO(("\n".join(lines) + "\n").encode())
        publish_lines(
            source, "history.jsonl", self.settings, Serde.single_object(), errors=io.StringIO()
        )

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"processor-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "run"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=60)

    def read_dead_letters(self, count: int, timeout_s: float) -> list[tuple[str, bytes, bytes]]:
        """(reason, source topic, original value) of the first `count` dead letters."""
        consumer = Consumer(self.settings.kafka.consumer_config(f"{self.app}-dlq-reader"))
        consumer.subscribe([self.topics["dlq"]])
        found: list[tuple[str, bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < count and time.monotonic() < deadline:
                for message in consumer.consume(100, timeout=0.5):
                    if message.error() is None:
                        headers = dict(message.headers() or [])
                        found.append(
                            (
                                (headers.get(ERROR_CLASS) or b"").decode(),  # type: ignore[union-attr]
                                headers.get(SOURCE_TOPIC) or b"",  # type: ignore[arg-type]
                                message.value() or b"",
                            )
                        )
            return found
        finally:
            consumer.close()

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("processor-*.log")))

    def read_refunds_until(self, expected: set[RefundKey], timeout_s: float) -> list[RefundKey]:
        """Every refund command on the wallet topic (read_committed) once `expected` is met."""
        consumer = Consumer(self.settings.kafka.consumer_config(f"{self.app}-reader"))
        consumer.subscribe([self.topics["wallet"]])
        serde = Serde.single_object()
        seen: list[RefundKey] = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for message in consumer.consume(500, timeout=0.5):
                    if message.error() is None:
                        seen.append(_refund_key(serde.decode(message.value() or b"", "")))
                if set(seen) >= expected:
                    # Read a little longer: a duplicate would arrive now, not later.
                    for message in consumer.consume(500, timeout=2):
                        if message.error() is None:
                            seen.append(_refund_key(serde.decode(message.value() or b"", "")))
                    return seen
                dead = [p for p in self.processes if p.poll() not in (None, 0, -signal.SIGKILL)]
                assert not dead, self.logs()[-5000:]
            return seen
        finally:
            consumer.close()


@pytest.fixture
def live(
    kafka_bootstrap: str,
    redis_url: str,
    admin: KafkaAdmin,
    unique_topic: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[LiveHarness]:
    harness = LiveHarness(kafka_bootstrap, redis_url, admin, unique_topic, tmp_path)
    try:
        yield harness
    finally:
        for process in harness.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def _expected_refunds(lines: list[str]) -> set[RefundKey]:
    return {
        (o.command_id, o.order_id, o.package_id, o.claim_id, o.amount_minor)
        for o in replay(lines, "history.jsonl", load_policy())
        if isinstance(o, RefundCommand)
    }


@pytest.mark.parametrize("instances", [1, 3])
def test_live_refunds_equal_the_replay(live: LiveHarness, instances: int) -> None:
    lines = generate_history(400, seed=11)
    expected = _expected_refunds(lines)
    assert len(expected) > 20
    live.publish(lines)

    for _ in range(instances):
        live.start()
    seen = live.read_refunds_until(expected, timeout_s=180)
    live.stop_all()

    assert set(seen) == expected, live.logs()[-3000:]
    assert len(seen) == len(set(seen)), "a refund command was issued twice"
    assert all(p.returncode == 0 for p in live.processes), live.logs()[-3000:]


def test_bad_input_goes_to_the_dead_letter_topic_and_processing_goes_on(
    live: LiveHarness,
) -> None:
    serde = Serde.single_object()
    good = generate_history(30, seed=5, malformed_share=0)
    expected = _expected_refunds(good)
    producer = Producer(live.settings.kafka.producer_config())
    unknown_fingerprint = b"\xc3\x01" + b"\x00" * 8 + b"\x02"
    invalid_values = serde.encode(
        "order_placed",
        {
            "event_id": "bad-currency",
            "occurred_at": datetime(2026, 3, 1, tzinfo=UTC),
            "order_id": "o-bad",
            "merchant_id": "m",
            "currency": "usd",
            "lines": [{"sku": "A", "quantity": 1, "unit_price_minor": 100}],
            "shipping_fee_minor": 0,
        },
        live.topics["orders"],
    )
    for topic in (live.topics["orders"], live.topics["tracking"]):
        producer.produce(topic, key=b"junk", value=b"\xffnot avro at all")
        producer.produce(topic, key=b"fp", value=unknown_fingerprint)
    producer.produce(live.topics["orders"], key=b"o-bad", value=invalid_values)
    assert producer.flush(30) == 0
    live.publish(good)

    live.start()
    seen = live.read_refunds_until(expected, timeout_s=120)
    dead = live.read_dead_letters(5, timeout_s=60)
    live.stop_all()

    assert set(seen) == expected
    assert sorted(reason for reason, _, _ in dead) == [
        "bad_magic",
        "bad_magic",
        "invalid_currency",
        "unknown_schema",
        "unknown_schema",
    ]
    assert {(source, value) for _, source, value in dead} >= {
        (live.topics["orders"].encode(), b"\xffnot avro at all"),
        (live.topics["tracking"].encode(), b"\xffnot avro at all"),
    }
