"""`publish` (processor/publish.py and the CLI) against a real broker: topics, keys,
timestamps, Avro round trip, invalid lines, and Java-compatible partitioning."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from processor.events import Event, TrackingUpdate, event_to_json, parse_event, parse_event_json
from processor.generate import iter_labelled_history
from processor.localstack.kafka import KafkaAdmin
from processor.partitioner import default_partition
from processor.publish import PublishError, publish_lines
from processor.serde import Serde
from processor.settings import KafkaSettings, Settings, TopicsSettings
from tests.console import run_cli
from tests.factories import order_placed, scan

TopicFactory = Callable[[str], str]


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: int


def _settings(bootstrap: str, orders: str, tracking: str) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        topics=TopicsSettings(orders=orders, tracking=tracking),
    )


def _topics(admin: KafkaAdmin, unique_topic: TopicFactory, partitions: int = 3) -> tuple[str, str]:
    return (
        admin.create_topic(unique_topic("orders"), partitions),
        admin.create_topic(unique_topic("tracking"), partitions),
    )


def _read_all(bootstrap: str, *topics: str, timeout_s: float = 30.0) -> list[Record]:
    """Every record of `topics`: the high watermarks say how many there are, so reading
    stops exactly when all have arrived (no sleeping, no guessing)."""
    consumer = Consumer(
        KafkaSettings(bootstrap_servers=bootstrap).consumer_config(f"test-{uuid.uuid4().hex}")
    )
    try:
        wanted: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                if high > low:
                    wanted[(topic, partition)] = high
                    assignment.append(TopicPartition(topic, partition, low))
        records: list[Record] = []
        if not assignment:
            return records
        consumer.assign(assignment)
        position = dict.fromkeys(wanted, 0)
        deadline = time.monotonic() + timeout_s
        while any(position[tp] < end for tp, end in wanted.items()):
            assert time.monotonic() < deadline, f"records missing: {position} of {wanted}"
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                name, partition, offset = msg.topic(), msg.partition(), msg.offset()
                assert name is not None
                assert partition is not None
                assert offset is not None
                position[(name, partition)] = offset + 1
                records.append(
                    Record(
                        name,
                        partition,
                        offset,
                        msg.key() or b"",
                        msg.value() or b"",
                        msg.timestamp()[1],
                    )
                )
        return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    finally:
        consumer.close()


def _expected_key(event: Event) -> str:
    if isinstance(event, TrackingUpdate):
        return event.order_id or event.tracking_number
    return event.order_id


# --------------------------------------------------------------------------- library


def test_every_valid_event_lands_on_its_topic_keyed_timestamped_and_decodes_back(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: TopicFactory
) -> None:
    orders, tracking = _topics(admin, unique_topic)
    labelled = list(iter_labelled_history(40, seed=11, malformed_share=0.05))
    valid = [parse_event_json(line) for line, bad in labelled if bad is None]
    assert any(isinstance(e, TrackingUpdate) and e.order_id is None for e in valid)
    serde = Serde.single_object()
    errors = io.StringIO()

    summary = publish_lines(
        (line.encode() + b"\n" for line, _ in labelled),
        "history.jsonl",
        _settings(kafka_bootstrap, orders, tracking),
        serde,
        errors=errors,
    )
    records = _read_all(kafka_bootstrap, orders, tracking)

    expected_tracking = sum(isinstance(e, TrackingUpdate) for e in valid)
    assert summary.published == {
        orders: len(valid) - expected_tracking,
        tracking: expected_tracking,
    }
    assert summary.invalid == sum(bad is not None for _, bad in labelled) > 0
    # Every valid event exactly once (duplicated lines twice), each on its topic, under its
    # key, stamped with occurred_at, and decoding to the very event of the file.
    got = Counter(
        (r.topic, r.key, r.timestamp, event_to_json(parse_event(serde.decode(r.value, r.topic))))
        for r in records
    )
    want = Counter(
        (
            tracking if isinstance(e, TrackingUpdate) else orders,
            _expected_key(e).encode(),
            e.at,
            event_to_json(e),
        )
        for e in valid
    )
    assert got == want
    # One key's events keep the file's order (one partition, idempotent producer).
    by_key: defaultdict[tuple[str, bytes], list[str]] = defaultdict(list)
    for r in records:
        by_key[(r.topic, r.key)].append(parse_event(serde.decode(r.value, r.topic)).event_id)
    for (topic, key), event_ids in by_key.items():
        in_file = [
            e.event_id
            for e in valid
            if (tracking if isinstance(e, TrackingUpdate) else orders) == topic
            and _expected_key(e).encode() == key
        ]
        assert event_ids == in_file


def test_invalid_lines_are_reported_with_line_numbers_and_not_published(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: TopicFactory
) -> None:
    orders, tracking = _topics(admin, unique_topic, partitions=1)
    lines = [
        json.dumps(order_placed("o1")).encode(),
        b"{broken",
        b"   ",
        json.dumps({**order_placed("o2"), "type": "order_exploded"}).encode(),
        json.dumps(scan("in_transit", order_id="o1")).encode(),
        json.dumps(order_placed("o3", currency="usd")).encode(),
        b'{"type": "order_placed", "order_id": "\xff\xfe"}',
        json.dumps({**order_placed("o4"), "occurred_at": "1969-12-31T23:59:59Z"}).encode(),
    ]
    errors = io.StringIO()

    summary = publish_lines(
        lines,
        "bad.jsonl",
        _settings(kafka_bootstrap, orders, tracking),
        Serde.single_object(),
        errors=errors,
    )

    reported = errors.getvalue().splitlines()
    assert [line.split(": ")[0] for line in reported] == [
        "bad.jsonl:2",
        "bad.jsonl:4",
        "bad.jsonl:6",
        "bad.jsonl:7",
        "bad.jsonl:8",
    ]
    assert reported[0].startswith("bad.jsonl:2: invalid_json: ")
    assert reported[1].startswith("bad.jsonl:4: unknown_type: ")
    assert reported[2].startswith("bad.jsonl:6: invalid_currency: currency: ")
    assert reported[4] == (
        "bad.jsonl:8: invalid_timestamp: occurred_at: before 1970: 1969-12-31T23:59:59+00:00"
    )
    assert (summary.published, summary.invalid) == ({orders: 1, tracking: 1}, 5)
    records = _read_all(kafka_bootstrap, orders, tracking)
    assert [(r.topic, r.key) for r in records] == [(orders, b"o1"), (tracking, b"o1")]


def test_a_tracking_update_without_order_id_is_keyed_by_tracking_number(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: TopicFactory
) -> None:
    orders, tracking = _topics(admin, unique_topic, partitions=1)
    lines = [
        json.dumps(scan("picked_up", "TN-42", order_id=None)).encode(),
        json.dumps(scan("in_transit", "TN-42", order_id="o42")).encode(),
    ]

    publish_lines(
        lines,
        "t.jsonl",
        _settings(kafka_bootstrap, orders, tracking),
        Serde.single_object(),
        errors=io.StringIO(),
    )

    assert [r.key for r in _read_all(kafka_bootstrap, tracking)] == [b"TN-42", b"o42"]


def test_keys_land_on_the_partition_javas_murmur2_partitioner_picks(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: TopicFactory
) -> None:
    orders, tracking = _topics(admin, unique_topic, partitions=6)
    order_ids = [f"ord-{n}" for n in range(150)] + ["21", "foobar", "ü-ñ-順"]
    lines = [json.dumps(order_placed(order_id)).encode() for order_id in order_ids]
    lines += [json.dumps(scan("lost", f"TN-{n}", order_id=None)).encode() for n in range(50)]

    publish_lines(
        lines,
        "k.jsonl",
        _settings(kafka_bootstrap, orders, tracking),
        Serde.single_object(),
        errors=io.StringIO(),
    )

    records = _read_all(kafka_bootstrap, orders, tracking)
    assert len(records) == 203
    assert len({r.partition for r in records}) == 6  # a test that could actually fail
    for r in records:
        assert r.partition == default_partition(r.key, 6), r.key


def test_a_rejected_delivery_fails_the_run(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: TopicFactory
) -> None:
    orders = admin.create_topic(unique_topic("orders"), 1, config={"max.message.bytes": "1024"})
    tracking = admin.create_topic(unique_topic("tracking"), 1)
    huge = order_placed("o1", lines={f"SKU-{n:05d}": (1, 100) for n in range(500)})

    with pytest.raises(PublishError, match=r"1 of 1 events were not delivered \(first: "):
        publish_lines(
            [json.dumps(huge).encode()],
            "huge.jsonl",
            _settings(kafka_bootstrap, orders, tracking),
            Serde.single_object(),
            errors=io.StringIO(),
        )


def test_a_missing_topic_fails_before_anything_is_published(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: TopicFactory
) -> None:
    orders = admin.create_topic(unique_topic("orders"), 1)
    missing = unique_topic("tracking")

    with pytest.raises(PublishError, match=rf"topic '{missing}' does not exist"):
        publish_lines(
            [json.dumps(order_placed()).encode()],
            "h.jsonl",
            _settings(kafka_bootstrap, orders, missing),
            Serde.single_object(),
            errors=io.StringIO(),
        )
    assert _read_all(kafka_bootstrap, orders) == []


# --------------------------------------------------------------------------- command line


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("REFUND_")}
    return run_cli(*args, env={**clean, **(env or {})}, timeout_s=120)


@pytest.mark.parametrize("broken", [True, False])
def test_the_cli_publishes_a_file_and_reports_bad_lines(
    kafka_bootstrap: str,
    admin: KafkaAdmin,
    unique_topic: TopicFactory,
    tmp_path: Path,
    broken: bool,
) -> None:
    """A bad line is reported and skipped, the others are published, and the exit status
    says that something was left out."""
    orders, tracking = _topics(admin, unique_topic)
    history = tmp_path / "events.jsonl"
    history.write_text(
        json.dumps(order_placed("o1"))
        + ("\n{broken\n" if broken else "\n")
        + json.dumps(scan("delivered", order_id=None))
        + "\n"
    )

    result = _cli(
        "publish",
        str(history),
        "--bootstrap-servers",
        kafka_bootstrap,
        env={
            "REFUND_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",  # the flag wins over this
            "REFUND_TOPICS__ORDERS": orders,
            "REFUND_TOPICS__TRACKING": tracking,
        },
    )

    assert result.returncode == (1 if broken else 0), result.stderr
    stderr = result.stderr.splitlines()
    reported = [line.split(": ")[:2] for line in stderr if line.startswith(f"{history}:")]
    assert reported == ([[f"{history}:2", "invalid_json"]] if broken else [])
    assert stderr[-1].startswith(
        f"published 2 events ({orders}: 1, {tracking}: 1); {int(broken)} invalid lines; "
    )
    records = _read_all(kafka_bootstrap, orders, tracking)
    assert [(r.topic, r.key) for r in records] == [(orders, b"o1"), (tracking, b"TN-p1")]


def test_the_cli_shows_no_librdkafka_warning_among_its_reports(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: TopicFactory, tmp_path: Path
) -> None:
    """A warning librdkafka retries or ignores by itself (here: a consumer property the
    passthrough gives every client, ignored by the producer; right after a broker starts,
    a coordinator still loading) is noise among the lines a user reads, as in the demo."""
    orders, tracking = _topics(admin, unique_topic)
    history = tmp_path / "events.jsonl"
    history.write_text(json.dumps(order_placed("o1")) + "\n{broken\n")

    result = _cli(
        "publish",
        str(history),
        "--bootstrap-servers",
        kafka_bootstrap,
        env={
            "REFUND_KAFKA__LIBRDKAFKA": '{"fetch.wait.max.ms": "100"}',
            "REFUND_TOPICS__ORDERS": orders,
            "REFUND_TOPICS__TRACKING": tracking,
        },
    )

    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == ["invalid_json"], result.stderr
    assert lines[-1].startswith(f"published 1 events ({orders}: 1, {tracking}: 0); 1 invalid")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing_file", "cannot read"),
        ("bad_config", "kafka.security_protocol: Input should be"),
        ("missing_topic", "does not exist"),
    ],
)
def test_cli_user_errors_exit_2_without_a_traceback(
    kafka_bootstrap: str, tmp_path: Path, unique_topic: TopicFactory, setup: str, expected: str
) -> None:
    history = tmp_path / "events.jsonl"
    history.write_text(json.dumps(order_placed()) + "\n")
    config = tmp_path / "settings.yaml"
    config.write_text(
        "kafka:\n  security_protocol: TLS\n"
        if setup == "bad_config"
        else f"topics:\n  orders: {unique_topic('o')}\n  tracking: {unique_topic('t')}\n"
    )
    events = tmp_path / "nope.jsonl" if setup == "missing_file" else history

    result = _cli(
        "publish", str(events), "--config", str(config), "--bootstrap-servers", kafka_bootstrap
    )

    assert result.returncode == 2
    assert result.stderr.startswith("refund-processor: error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
