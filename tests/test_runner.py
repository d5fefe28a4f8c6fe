"""The live processor against a real broker and Redis: it refunds what the replay refunds.

Each test publishes a generated history, runs `refund-processor run` as real
subprocesses (one or several in one consumer group) and reads the wallet topic with a
read_committed consumer until the refunds match the offline replay's, or a deadline.
"""

import gc
import itertools
import json
import logging
import signal
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from processor.events import Event, parse_event
from processor.generate import generate_history
from processor.localstack.kafka import KafkaAdmin
from processor.localstack.redis import LocalRedis
from processor.partitioner import default_partition
from processor.redis_index import RedisTrackingIndex
from processor.router import Commit, Inbound, Routed
from processor.runner import (
    GC_THRESHOLDS,
    ROUTED_RECORD_BYTES,
    Intake,
    Runner,
    arrival_ms,
    batch_collector,
    cluster_metadata,
    input_metadata,
    parse_input_metadata,
    routed_chunks,
    topic_partitions,
)
from processor.serde import Serde
from tests.factories import (
    at,
    cancellation_requested,
    order_cancelled,
    order_placed,
    scan,
    shipped,
)
from tests.live import PROCESSOR_USER, LiveHarness, SecuredKafka, await_condition, expected_refunds


@pytest.mark.parametrize("instances", [1, 3])
def test_live_refunds_equal_the_replay(live: LiveHarness, instances: int) -> None:
    lines = generate_history(400, seed=11)
    expected = expected_refunds(lines)
    assert len(expected) > 20
    live.publish(lines)

    for _ in range(instances):
        live.start()
    seen = live.read_refunds_until(expected, timeout_s=180)
    live.stop_all()

    assert set(seen) == expected, live.logs()[-3000:]
    assert len(seen) == len(set(seen)), "a refund command was issued twice"
    assert all(i.process.returncode == 0 for i in live.instances), live.logs()[-3000:]


def _purged_past(live: LiveHarness, before: dict[int, int]) -> bool:
    """Whether every partition of the internal topic starts past `before` (default 0)."""
    starts = live.start_offsets(live.settings.by_order_topic)
    return all(start > before.get(partition, 0) for partition, start in starts.items())


def test_the_internal_topic_is_purged_again_and_again(live: LiveHarness) -> None:
    """It keeps no time-based retention (docs/live.md), so without the purge it would grow
    forever, by watermark records alone while the inputs are idle. That a purge deletes
    nothing a task still needs is for the fault tests to show: they purge every 200 ms."""
    live.configure(env={"REFUND_PURGE_INTERVAL_MS": "200"})
    live.publish(generate_history(60, seed=5))
    live.start()
    by_order = live.settings.by_order_topic
    await_condition(lambda: _purged_past(live, {}), 60, "every partition of the topic purged")
    first = live.start_offsets(by_order)
    # Watermark records keep coming while the inputs are idle: each purge goes further.
    await_condition(lambda: _purged_past(live, first), 60, "every partition purged again")
    starts = live.start_offsets(by_order)
    committed = live.committed_offsets(by_order)
    live.stop_all()

    assert all(starts[p] <= committed[p] for p in starts), (starts, committed)
    live.assert_none_failed()


def test_an_idle_instance_writes_its_unchanged_reports_once_per_idle_wait(
    live: LiveHarness,
) -> None:
    """An idle instance wrote every input's report to every task's partition each batch,
    ten times a second, and committed a transaction for them. An unchanged report is now
    written again once `idle_partition_wait_ms` has passed: in a window of two waits,
    three rounds at most, and two of changed reports (the tasks deciding their last
    events change what their direct inputs report), where the old runner wrote a round
    each batch."""
    idle_wait_s = 2.0
    live.configure(env={"REFUND_IDLE_PARTITION_WAIT_MS": str(int(idle_wait_s * 1000))})
    live.publish(generate_history(40, seed=9))
    live.start()
    inputs = {live.topics["orders"], live.topics["tracking"]}
    sources = {f"{topic}:{partition}" for topic in inputs for partition in live.partitions(topic)}
    index = RedisTrackingIndex(redis.Redis.from_url(live.redis_url), live.app)

    def drained() -> bool:
        reported = index.read_progress()
        return set(reported) == sources and all(report.drained for report in reported.values())

    await_condition(drained, 120, "every input drained")
    by_order = live.settings.by_order_topic
    # Per partition of the internal topic: a record per input, and the commit's marker.
    one_round = (len(sources) + 1) * len(live.partitions(by_order))
    before = live.end_offsets(by_order)
    time.sleep(2 * idle_wait_s)  # the window measured, not a wait for a condition
    after = live.end_offsets(by_order)
    live.stop_all()

    written = sum(after.values()) - sum(before.values())
    assert written <= 5 * one_round, f"{written} records, {one_round} a round of reports"
    live.assert_none_failed()


def _readme_acls(live: LiveHarness, *, but: AclOperation | None = None) -> list[AclBinding]:
    """The ACLs README.md ("Against an existing Kafka and Redis") says the processor needs,
    for `PROCESSOR_USER`; `but` leaves that operation out on the internal topic."""
    topics = live.topics
    by_order = live.settings.by_order_topic
    outputs = [topics[name] for name in ("wallet", "fulfilment", "decisions", "dlq")]
    wanted = [
        (ResourceType.TOPIC, topics["orders"], AclOperation.READ),
        (ResourceType.TOPIC, topics["tracking"], AclOperation.READ),
        (ResourceType.GROUP, live.settings.group_id, AclOperation.READ),
        *((ResourceType.TOPIC, by_order, op) for op in _INTERNAL_TOPIC_OPERATIONS if op != but),
        *((ResourceType.TOPIC, topic, AclOperation.WRITE) for topic in outputs),
        *((ResourceType.TOPIC, topic, AclOperation.CREATE) for topic in [by_order, *outputs]),
    ]
    user = f"User:{PROCESSOR_USER[0]}"
    literal, allow = ResourcePatternType.LITERAL, AclPermissionType.ALLOW
    return [AclBinding(kind, name, literal, user, "*", op, allow) for kind, name, op in wanted] + [
        AclBinding(
            ResourceType.TRANSACTIONAL_ID,
            f"{live.app}-",
            ResourcePatternType.PREFIXED,
            user,
            "*",
            op,
            allow,
        )
        for op in (AclOperation.WRITE, AclOperation.DESCRIBE)
    ]


_INTERNAL_TOPIC_OPERATIONS = (AclOperation.READ, AclOperation.WRITE, AclOperation.DELETE)


@pytest.mark.parametrize("but", [None, AclOperation.DELETE], ids=["all", "no-delete"])
def test_the_processor_runs_on_the_acls_the_readme_lists(
    secured_kafka: SecuredKafka,
    redis_url: str,
    unique_topic: Callable[[str], str],
    tmp_path: Path,
    but: AclOperation | None,
) -> None:
    """Over SASL/PLAIN, with an authorizer: the refunds of the replay, and the internal
    topic purged. Without DELETE on it the purge fails, loudly, and nothing else does."""
    admin = KafkaAdmin(secured_kafka.bootstrap_servers)
    with LiveHarness(
        secured_kafka.bootstrap_servers, redis_url, admin, unique_topic, tmp_path
    ) as live:
        for future in admin.client.create_acls(_readme_acls(live, but=but)).values():
            future.result()
        user, password = PROCESSOR_USER
        live.configure(
            env={
                "REFUND_KAFKA__BOOTSTRAP_SERVERS": secured_kafka.sasl_bootstrap_servers,
                "REFUND_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "REFUND_KAFKA__SASL_MECHANISM": "PLAIN",
                "REFUND_KAFKA__SASL_USERNAME": user,
                "REFUND_KAFKA__SASL_PASSWORD": password,
                "REFUND_PURGE_INTERVAL_MS": "200",
            }
        )
        lines = generate_history(100, seed=3)
        expected = expected_refunds(lines)
        live.publish(lines)
        instance = live.start()
        seen = live.read_refunds_until(expected, timeout_s=120)
        if but is None:
            await_condition(
                lambda: _purged_past(live, {}), timeout_s=60, what="the internal topic purged"
            )
        else:
            await_condition(
                lambda: "purging the internal topic failed" in instance.log_text(),
                timeout_s=60,
                what="the purge fails, in the log",
            )
        live.stop_all()
        live.assert_none_failed()

    assert sorted(seen) == sorted(expected)
    assert password not in instance.log_text()
    failures = [line for line in instance.log_lines() if "AUTHORIZATION" in json.dumps(line)]
    assert all("purging the internal topic failed" in line["event"] for line in failures), failures[
        :3
    ]
    assert bool(failures) == (but is not None)


HUGE_JUNK = b"\xff" * 999_900


def test_bad_input_goes_to_the_dead_letter_topic_and_processing_goes_on(
    live: LiveHarness,
) -> None:
    serde = Serde.single_object()
    good = generate_history(30, seed=5, malformed_share=0)
    expected = expected_refunds(good)
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
    # Valid, but dated in the year 9999: decided, it would move the clock past every
    # deadline and refund every package still in flight as lost.
    from_the_future = serde.encode(
        "cancellation_requested",
        {
            "event_id": "from-the-future",
            "occurred_at": datetime(9999, 1, 1, tzinfo=UTC),
            "order_id": "o-future",
            "request_id": "r-future",
        },
        live.topics["orders"],
    )
    for topic in (live.topics["orders"], live.topics["tracking"]):
        producer.produce(topic, key=b"junk", value=b"\xffnot avro at all")
        producer.produce(topic, key=b"fp", value=unknown_fingerprint)
    producer.produce(live.topics["orders"], key=b"o-bad", value=invalid_values)
    producer.produce(live.topics["orders"], key=b"o-future", value=from_the_future)
    # As big as a producer may send: kept whole, its dead letter would not fit in one.
    producer.produce(live.topics["tracking"], key=b"huge", value=HUGE_JUNK)
    assert producer.flush(30) == 0
    live.publish(good)

    live.start()
    seen = live.read_refunds_until(expected, timeout_s=120)
    dead = live.read_dead_letters(7, timeout_s=60)
    live.stop_all()

    assert set(seen) == expected
    assert sorted(reason for reason, _, _ in dead) == [
        "bad_magic",
        "bad_magic",
        "bad_magic",
        "invalid_currency",
        "occurred_in_future",
        "unknown_schema",
        "unknown_schema",
    ]
    assert {(source, value) for _, source, value in dead} >= {
        (live.topics["orders"].encode(), b"\xffnot avro at all"),
        (live.topics["tracking"].encode(), b"\xffnot avro at all"),
    }
    # Its first bytes (deadletter.MAX_RECORD_BYTES): whole, Kafka refused it for good.
    assert any(value != HUGE_JUNK and HUGE_JUNK.startswith(value) for _, _, value in dead)


def test_a_tracking_number_nobody_ships_expires_and_holds_no_deadline_back(
    live: LiveHarness,
) -> None:
    """A scan whose package is never shipped becomes a dead letter once every input has
    been routed `orphan_ttl` past it, and meanwhile the deadlines behind it fire as in the
    replay (it holds the watermark only while its shipment may be in a backlog)."""
    orphan = (
        '{"type":"tracking_update","event_id":"evt-orphan","occurred_at":"2026-03-01T12:00:00Z",'
        '"tracking_number":"TN-NEVER-SHIPPED","carrier":"dhl","status":"in_transit",'
        '"carrier_status":"IT","location":"Leipzig, DE"}'
    )
    lines = [orphan, *generate_history(30, seed=5, malformed_share=0)]
    expected = expected_refunds(lines)
    live.publish(lines)

    live.start()
    seen = live.read_refunds_until(expected, timeout_s=120)
    dead = live.read_dead_letters(1, timeout_s=60)
    live.stop_all()

    assert set(seen) == expected
    assert [(reason, source) for reason, source, _ in dead] == [
        ("unknown_tracking_number", live.topics["tracking"].encode())
    ]


def test_a_tracking_number_nobody_ships_holds_the_clock_only_until_every_input_passes_it(
    live: LiveHarness,
) -> None:
    """While the inputs keep flowing (never idle here), such a scan must not hold every
    task's clock until it expires, `orphan_ttl` later: once every input has been routed
    more than `allowed_lateness` past it, its shipment is in no backlog (beyond that it
    is late data, SPEC section 6). The cancellation behind it is refunded meanwhile."""
    live.configure(env={"REFUND_IDLE_PARTITION_WAIT_MS": "600000"})
    lines = [
        order_placed("o1", when=at(0)),
        scan("in_transit", "TN-NEVER-SHIPPED", order_id=None, when=at(0, 0.5)),
        cancellation_requested("o1", when=at(0, 1)),
        order_cancelled("o1", when=at(0, 2)),
    ]
    # A day later, an event in every partition of both inputs: no input lags behind.
    counts = {name: len(live.partitions(live.topics[name])) for name in ("orders", "tracking")}
    uncovered = {(name, p) for name, n in counts.items() for p in range(n)}
    for n in itertools.count():
        key = f"later-{n}"
        for topic, event in (
            ("orders", order_placed(key, when=at(1))),
            ("tracking", scan("in_transit", f"TN-{key}", order_id=key, when=at(1))),
        ):
            partition = default_partition(key.encode(), counts[topic])
            if (topic, partition) in uncovered:
                uncovered.discard((topic, partition))
                lines.append(event)
        if not uncovered:
            break
    history = [json.dumps(event) for event in lines]
    expected = expected_refunds(history)
    assert {order_id for _, order_id, *_ in expected} == {"o1"}
    live.publish(history)

    live.start()
    seen = live.read_refunds_until(expected, timeout_s=60)
    live.stop_all()

    assert sorted(seen) == sorted(expected)
    live.assert_none_failed()


def test_an_idle_report_is_not_trusted_once_records_arrive_behind_it(live: LiveHarness) -> None:
    """i1 reports its inputs drained, then stalls, shorter than the session timeout (a
    long batch, a pause), while the second half of the history arrives. Its reports
    stand until it reports again: trusted, they left its inputs out of i0's tasks'
    clocks, and i0 fired the deadlines whose delivered scans waited in i1's backlog
    (found in review: dozens of lost refunds the replay does not issue)."""
    lines = generate_history(400, seed=11)
    expected = expected_refunds(lines)
    half = len(lines) // 2
    live.publish(lines[:half])
    live.start("i0")
    second = live.start("i1")
    live.await_stable_group({"i0", "i1"}, timeout_s=90)
    assignment = live.group_assignment()
    assert assignment is not None
    inputs = {live.topics["orders"], live.topics["tracking"]}
    owned = {
        name: {f"{topic}:{p}" for topic, p in partitions if topic in inputs}
        for name, partitions in assignment.items()
    }
    index = RedisTrackingIndex(redis.Redis.from_url(live.redis_url), live.app)

    def drained_at_their_ends(sources: set[str]) -> bool:
        reported = index.read_progress()
        ends = {f"{t}:{p}": end for t in inputs for p, end in live.end_offsets(t).items()}
        return all(
            source in reported and reported[source].drained and reported[source].end >= ends[source]
            for source in sources
        )

    await_condition(
        lambda: drained_at_their_ends(owned["i0"] | owned["i1"]), 120, "every input drained"
    )
    second.process.send_signal(signal.SIGSTOP)
    try:
        live.publish(lines[half:])
        await_condition(
            lambda: drained_at_their_ends(owned["i0"]), 60, "i0 routed all of its inputs"
        )
        assert live.group_assignment() == assignment, "the stall moved partitions"
    finally:
        # A stall past its transaction's timeout fences it, or times out a Kafka call of
        # its batch: it exits, for its supervisor.
        second.may_fail_with = (
            "This instance has been fenced by a newer instance",
            "TransactionStuckError",
        )
        second.process.send_signal(signal.SIGCONT)
    seen = live.refunds_when_done(expected, timeout_s=240)

    assert len(seen) == len(set(seen)), "a refund command issued twice"
    extra = set(seen) - expected
    assert not extra, f"{len(extra)} refunds the replay does not issue: {sorted(extra)[:3]}"


def test_an_instance_stops_when_an_input_gains_a_partition(live: LiveHarness) -> None:
    """Clocks wait for the input partitions the processor started with: one added while
    it runs would hold records no clock waits for (found in review: lost refunds for
    packages whose delivered scans were in it). The rebalance the new partition brings
    stops the instance, naming the partition, for its supervisor to start it again."""
    live.configure(librdkafka={"topic.metadata.refresh.interval.ms": "1000"})
    live.publish(generate_history(20, seed=3, malformed_share=0))
    instance = live.start("i0")
    live.await_stable_group({"i0"}, timeout_s=60)
    tracking = live.topics["tracking"]
    added = f"{tracking}:{len(live.partitions(tracking))}"
    instance.may_fail_with = ("the inputs' partitions changed while the processor ran",)

    live.admin.client.create_partitions(
        [NewPartitions(tracking, len(live.partitions(tracking)) + 1)]
    )[tracking].result(timeout=30)

    await_condition(lambda: not instance.running, timeout_s=60, what="the instance stops")
    assert instance.process.returncode == 1
    assert f"added: ['{added}']" in instance.log_text()
    live.assert_none_failed()


def test_an_input_partition_emptied_by_retention_counts_as_idle(live: LiveHarness) -> None:
    """A partition whose records all expired has no position for a new group to resume
    from: read to its end all the same, it must count as idle, or every task's clock
    waits for it for good (found in review)."""
    history = [
        json.dumps(event)
        for event in (order_placed("o1"), shipped("p1", order_id="o1"), scan("lost", "TN-p1"))
    ]
    expected = expected_refunds(history)
    assert len(expected) == 1
    tracking = live.topics["tracking"]
    partitions = live.partitions(tracking)
    emptied = next(p for p in partitions if p != default_partition(b"o1", len(partitions)))
    producer = Producer(live.settings.kafka.producer_config())
    producer.produce(tracking, value=b"expired long ago", partition=emptied)
    assert producer.flush(30) == 0
    gone = live.admin.client.delete_records([TopicPartition(tracking, emptied, 1)])
    for future in gone.values():
        future.result(timeout=30)
    assert live.start_offsets(tracking)[emptied] == live.end_offsets(tracking)[emptied] == 1
    live.publish(history)

    live.start()
    seen = live.read_refunds_until(expected, timeout_s=60)
    live.stop_all()

    assert set(seen) == expected


def test_an_input_arrives_at_its_log_append_time_else_when_it_was_received() -> None:
    # A CreateTime is the producer's word: `publish` stamps occurred_at, months back.
    assert arrival_ms((TIMESTAMP_CREATE_TIME, 1_772_000_000_000), 1_790_000_000_000) == (
        1_790_000_000_000
    )
    assert arrival_ms((TIMESTAMP_NOT_AVAILABLE, -1), 1_790_000_000_000) == 1_790_000_000_000
    assert arrival_ms((TIMESTAMP_LOG_APPEND_TIME, 1_789_999_999_000), 1_790_000_000_000) == (
        1_789_999_999_000
    )


def test_undecodable_records_at_the_end_of_an_input_are_committed_past(
    live: LiveHarness,
) -> None:
    """Otherwise a restart dead-letters them again, and the group never reads as caught up."""
    lines = generate_history(20, seed=3, malformed_share=0)
    live.publish(lines)
    producer = Producer(live.settings.kafka.producer_config())
    for partition in range(3):
        producer.produce(live.topics["orders"], value=b"\xffnot avro", partition=partition)
    assert producer.flush(30) == 0
    ends = live.end_offsets(live.topics["orders"])

    live.start()
    assert len(live.read_dead_letters(3, timeout_s=120)) == 3
    await_condition(
        lambda: live.committed_offsets(live.topics["orders"]) == ends,
        120,
        "the group's offsets on the orders topic reach its end",
    )
    live.stop_all()


@pytest.mark.parametrize("attempt", range(5))
def test_a_topic_just_created_is_read_with_all_its_partitions(
    admin: KafkaAdmin, unique_topic: Callable[[str], str], attempt: int
) -> None:
    """The broker usually answers "unknown topic" right after creating one; the runner
    must not take that for a topic without partitions (no watermark would reach a task)."""
    topic = unique_topic("fresh")
    for future in admin.client.create_topics([NewTopic(topic, num_partitions=5)]).values():
        future.result()
    assert topic_partitions(admin.client, topic) == [0, 1, 2, 3, 4]


def test_a_batch_after_the_interval_takes_what_is_queued_without_waiting_for_more(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: Callable[[str], str]
) -> None:
    """Catching up, every batch starts after the interval of the one before: waiting for a
    full batch there made the last batches of a backlog each wait an interval."""
    topic = unique_topic("intake")
    admin.create_topic(topic, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for number in range(5):
        producer.produce(topic, value=str(number).encode())
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_topic("group"),
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    interval_s = 60.0
    intake = Intake(consumer, most=1_000, interval_s=interval_s)
    try:
        began = time.monotonic()
        taken = intake.take()
        took = time.monotonic() - began
    finally:
        consumer.close()

    assert [message.value() for message in taken] == [str(n).encode() for n in range(len(taken))]
    assert taken, "nothing arrived within the interval"
    assert took < interval_s / 4, f"waited {took:.1f} s of the {interval_s:g} s interval"


def test_the_start_gives_up_clearly_when_no_broker_answers() -> None:
    nobody = AdminClient({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    with pytest.raises(RuntimeError, match=r"^no Kafka broker answered in 1\.5 s: "):
        cluster_metadata(nobody, timeout_s=1.5)


def test_the_start_logs_why_a_broker_refused_the_connection(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only librdkafka's log said that the broker offers no such SASL mechanism."""
    client_log = logging.getLogger("tests.rdkafka")
    admin = AdminClient(
        {
            "bootstrap.servers": kafka_bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "nobody",
            "sasl.password": "n0body-s3cret",
        },
        logger=client_log,
    )
    with (
        caplog.at_level(logging.DEBUG, client_log.name),
        pytest.raises(RuntimeError, match="the client's log lines before this say more"),
    ):
        cluster_metadata(admin, timeout_s=3)

    assert "SASL" in caplog.text
    assert "n0body-s3cret" not in caplog.text


def test_a_wrong_redis_password_stops_the_processor_naming_the_setting(
    live: LiveHarness, redis_server: LocalRedis
) -> None:
    """Retried as if Redis were down, it held its share of the group's partitions for good."""
    redis.Redis.from_url(redis_server.url).config_set("requirepass", "right-s3cret")
    live.configure(
        env={"REFUND_REDIS__URL": redis_server.url, "REFUND_REDIS__PASSWORD": "wrong-s3cret"}
    )
    instance = live.start()

    assert instance.process.wait(timeout=90) == 1
    log = instance.log_text()
    assert "Redis refused the credentials" in log
    assert "redis.password" in log
    assert "wrong-s3cret" not in log


def _shipped(event_id: str) -> Event:
    return parse_event(
        {
            "type": "package_shipped",
            "event_id": event_id,
            "occurred_at": datetime(2026, 3, 1, tzinfo=UTC),
            "order_id": "o1",
            "package_id": "p1",
            "tracking_number": "t1",
            "carrier": "ups",
            "lines": [{"sku": "A", "quantity": 1}],
        }
    )


def test_routed_events_are_split_into_records_by_input_bytes_in_order() -> None:
    def item(n: int, size: int) -> Routed:
        return "o1", Inbound("orders:0", n, _shipped(f"e{n}"), f"orders/0/{n}", b"x" * size, 0)

    third = ROUTED_RECORD_BYTES // 3
    items = [item(n, third) for n in range(7)] + [item(7, 2 * ROUTED_RECORD_BYTES)]

    chunks = list(routed_chunks(items))

    assert [len(chunk) for chunk in chunks] == [3, 3, 1, 1], "one too big travels alone"
    assert [i for chunk in chunks for i in chunk] == items
    assert list(routed_chunks([])) == []


def test_a_closed_runner_is_freed_and_leaves_the_collector_as_it_found_it(
    live: LiveHarness,
) -> None:
    """The collector is the process's (`batch_collector`): a runner that froze its own
    start-up stayed in memory for good once closed, with all it held, in a process that
    runs one after another (the benchmark's passes: 100 MB more each)."""
    thresholds = gc.get_threshold()
    runner = Runner(live.settings)
    runner.run_once()
    runner.close()
    closed = weakref.ref(runner)
    del runner

    def freed() -> bool:
        gc.collect()
        return closed() is None

    await_condition(freed, timeout_s=10, what="the closed runner is freed")
    assert gc.get_threshold() == thresholds


def test_the_batch_collector_is_given_back_when_its_block_ends() -> None:
    thresholds = gc.get_threshold()
    with batch_collector():
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0, "what the process held on entry is frozen"
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


def test_an_inputs_offset_metadata_carries_its_watermark_and_handled_mark() -> None:
    assert input_metadata(Commit(5, 1_234, 9)) == "watermark:1234;handled:9"
    assert parse_input_metadata(input_metadata(Commit(5, 1_234, 9))) == (1_234, 9)
    assert parse_input_metadata("watermark:1234") == (1_234, None), "as committed before"
    assert parse_input_metadata(None) == (None, None)
