"""The metrics the dashboard, alerts and demo rely on, their probes, and a live scrape.

`AGREED` is the contract of METRICS.md (names, types, labels): the registry must hold
exactly these, and a running `refund-processor run` must serve every one of them, with
the samples its run produced.
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from collections import Counter, defaultdict

import prometheus_client
import pytest
from confluent_kafka import Producer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from processor import metrics
from processor.config import load_policy
from processor.generate import generate_history
from processor.localstack.redis import LocalRedis
from processor.metrics import (
    REGISTRY,
    BatchHistogram,
    BatchTally,
    GaugeShare,
    MetricsServer,
    PartitionGauges,
    ready,
)
from processor.outputs import DeadLetter, Decision, RefundCommand, ReshipCommand
from processor.replay import replay
from processor.settings import MetricsSettings
from tests.factories import at, order_placed
from tests.live import LiveHarness, await_condition

#: METRICS.md: name -> (type, label names).
AGREED: dict[str, tuple[str, frozenset[str]]] = {
    "refunds_events_consumed_total": ("counter", frozenset({"topic", "type"})),
    "refunds_decisions_total": ("counter", frozenset({"outcome", "code"})),
    "refunds_refunds_total": ("counter", frozenset({"reason", "currency"})),
    "refunds_refunded_amount_minor_total": ("counter", frozenset({"reason", "currency"})),
    "refunds_merchant_refunded_amount_minor_total": (
        "counter",
        frozenset({"merchant_id", "currency"}),
    ),
    "refunds_reships_total": ("counter", frozenset()),
    "refunds_dead_letters_total": ("counter", frozenset({"reason"})),
    "refunds_end_to_end_latency_seconds": ("histogram", frozenset()),
    "refunds_batch_records": ("histogram", frozenset()),
    "refunds_transaction_commit_seconds": ("histogram", frozenset()),
    "refunds_transaction_open_seconds": ("histogram", frozenset()),
    "refunds_transactions_committed_total": ("counter", frozenset()),
    "refunds_transactions_aborted_total": ("counter", frozenset()),
    "refunds_redis_round_trip_seconds": ("histogram", frozenset({"operation"})),
    "refunds_consumer_lag_records": ("gauge", frozenset({"topic", "partition"})),
    "refunds_timers_pending": ("gauge", frozenset()),
    "refunds_timers_fired_total": ("counter", frozenset()),
    "refunds_orphans_waiting": ("gauge", frozenset()),
    "refunds_events_buffered": ("gauge", frozenset()),
    "refunds_rebalances_total": ("counter", frozenset({"kind"})),
    "refunds_assigned_partitions": ("gauge", frozenset({"topic"})),
}
REDIS_OPERATIONS = {"prefetch", "stage", "apply", "claim", "index"}


def _agreed_name(family_name: str, kind: str) -> str:
    """prometheus_client names a counter's family without its `_total`."""
    return family_name + "_total" if kind == "counter" else family_name


SampleKey = tuple[str, frozenset[tuple[str, str]]]


def _key(name: str, **labels: str) -> SampleKey:
    return name, frozenset(labels.items())


def _registry_values() -> dict[SampleKey, float]:
    """(sample name, labels) -> value, of every refunds_ sample."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name.startswith("refunds_")
    }


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# --------------------------------------------------------------------------- declarations


def test_the_registry_declares_exactly_the_agreed_metrics() -> None:
    declared = {
        _agreed_name(family.name, family.type): family
        for family in REGISTRY.collect()
        if family.name.startswith("refunds_")
    }

    assert {name: family.type for name, family in declared.items()} == {
        name: kind for name, (kind, _) in AGREED.items()
    }
    assert all(family.documentation for family in declared.values())
    # Not on the global default registry: /metrics serves this module's registry only.
    assert not any(
        family.name.startswith("refunds_") for family in prometheus_client.REGISTRY.collect()
    )


# --------------------------------------------------------------------------- updates


def test_a_committed_batch_counts_its_inputs_and_outputs() -> None:
    outputs = list(replay(generate_history(300, seed=3), "history.jsonl", load_policy()))
    refunds = [o for o in outputs if isinstance(o, RefundCommand)]
    dead = [o for o in outputs if isinstance(o, DeadLetter)]
    assert refunds
    assert dead
    letters = [(o.origin, o.reason, o.message) for o in dead]
    letters.append(letters[0])  # a reason twice in a batch
    tally = BatchTally(
        outputs=[o for o in outputs if not isinstance(o, DeadLetter)],
        dead_letters=letters,
        arrivals_ms=Counter([1_000, 2_500, 2_500]),
        timers_fired=4,
    )
    tally.consumed.update({("orders-x:0", "order_placed"): 3, ("orders-x:1", "undecodable"): 1})
    before = _registry_values()

    tally.count(committed_at_ms=3_000)

    after = _registry_values()
    change = {key: after[key] - before.get(key, 0.0) for key in after}
    expected: defaultdict[SampleKey, float] = defaultdict(float)
    for refund in refunds:
        reason, currency = refund.reason, refund.currency
        expected[_key("refunds_refunds_total", reason=reason, currency=currency)] += 1
        for key in (
            _key("refunds_refunded_amount_minor_total", reason=reason, currency=currency),
            _key(
                "refunds_merchant_refunded_amount_minor_total",
                merchant_id=refund.merchant_id,
                currency=currency,
            ),
        ):
            expected[key] += refund.amount_minor
    for output in outputs:
        if isinstance(output, Decision):
            key = _key("refunds_decisions_total", outcome=output.outcome, code=output.code)
            expected[key] += 1
    for _, reason, _ in letters:
        expected[_key("refunds_dead_letters_total", reason=reason)] += 1
    expected[_key("refunds_reships_total")] += sum(isinstance(o, ReshipCommand) for o in outputs)
    consumed = "refunds_events_consumed_total"
    expected[_key(consumed, topic="orders-x", type="order_placed")] += 3
    expected[_key(consumed, topic="orders-x", type="undecodable")] += 1
    expected[_key("refunds_timers_fired_total")] += 4
    expected[_key("refunds_transactions_committed_total")] += 1
    # Latencies 2.0 s, and 0.5 s twice.
    latency = "refunds_end_to_end_latency_seconds"
    expected[_key(f"{latency}_count")] += 3
    expected[_key(f"{latency}_sum")] += 3.0
    expected[_key(f"{latency}_bucket", le="0.5")] += 2
    expected[_key(f"{latency}_bucket", le="1.0")] += 2
    for bound in ("2.5", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "600.0", "1800.0"):
        expected[_key(f"{latency}_bucket", le=bound)] += 3
    expected[_key(f"{latency}_bucket", le="+Inf")] += 3

    # approx: the histogram's sum is a float that earlier tests in this process added to.
    assert {key: value for key, value in change.items() if value} == pytest.approx(expected)


def test_a_record_stamped_after_the_commit_counts_as_no_latency() -> None:
    """LogAppendTime is the broker's clock, which may run ahead of ours."""
    latency = "refunds_end_to_end_latency_seconds"
    before = _registry_values()

    BatchTally(arrivals_ms=Counter({5_000: 2})).count(committed_at_ms=4_000)

    after = _registry_values()
    assert after[_key(f"{latency}_count")] - before[_key(f"{latency}_count")] == 2
    assert after[_key(f"{latency}_sum")] == before[_key(f"{latency}_sum")]
    bucket = _key(f"{latency}_bucket", le="0.05")
    assert after[bucket] - before[bucket] == 2


@pytest.mark.parametrize(
    ("child", "operation"),
    [
        (metrics.REDIS_PREFETCH, "prefetch"),
        (metrics.REDIS_STAGE, "stage"),
        (metrics.REDIS_APPLY, "apply"),
        (metrics.REDIS_CLAIM, "claim"),
        (metrics.REDIS_INDEX, "index"),
    ],
)
def test_each_redis_round_trip_is_timed_under_its_own_operation(
    child: Histogram, operation: str
) -> None:
    def count() -> float:
        name = "refunds_redis_round_trip_seconds_count"
        return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0

    start = count()
    child.observe(0.001)
    assert count() == start + 1


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.05, 0.07, 1.0, 2.5, 1e4]), st.integers(1, 5))))
def test_observing_many_equal_latencies_at_once_counts_as_observing_each(
    observations: list[tuple[float, int]],
) -> None:
    at_once, one_by_one = CollectorRegistry(), CollectorRegistry()
    buckets = (0.05, 0.1, 2.5)
    many = BatchHistogram("latency_seconds", "x", buckets=buckets, registry=at_once)
    each = BatchHistogram("latency_seconds", "x", buckets=buckets, registry=one_by_one)

    for amount, count in observations:
        many.observe_many(amount, count)
        for _ in range(count):
            each.observe(amount)

    def values(registry: CollectorRegistry) -> dict[SampleKey, float]:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in registry.collect()
            for s in family.samples
        }

    # approx: the sum adds amount * count once rather than the amount count times.
    assert values(at_once) == pytest.approx(values(one_by_one))


def test_gauge_shares_of_several_runners_add_up() -> None:
    def pending() -> float:
        return REGISTRY.get_sample_value("refunds_timers_pending") or 0.0

    start = pending()
    one, two = GaugeShare(metrics.TIMERS_PENDING), GaugeShare(metrics.TIMERS_PENDING)
    one.set(5)
    two.set(3)
    one.set(2)
    assert pending() - start == 5
    one.set(0)
    two.set(0)
    assert pending() == start


def test_partition_gauges_follow_the_assignment() -> None:
    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    kinds = ("assign", "revoke", "lost")
    rebalances = {kind: sample("refunds_rebalances_total", kind=kind) or 0.0 for kind in kinds}
    gauges = PartitionGauges()
    gauges.assign([("gauges-t", 0), ("gauges-t", 1), ("gauges-u", 0)])
    gauges.lag("gauges-t", 0, 7)
    gauges.lag("gauges-t", 1, 2)
    assert sample("refunds_assigned_partitions", topic="gauges-t") == 2
    assert sample("refunds_consumer_lag_records", topic="gauges-t", partition="0") == 7

    gauges.revoke([("gauges-t", 0)], "lost")
    gauges.lag("gauges-t", 0, 9)  # reported late, after the partition went: ignored
    assert sample("refunds_assigned_partitions", topic="gauges-t") == 1
    assert sample("refunds_consumer_lag_records", topic="gauges-t", partition="0") is None
    assert sample("refunds_consumer_lag_records", topic="gauges-t", partition="1") == 2

    gauges.revoke([("gauges-t", 1)])
    gauges.clear()
    assert sample("refunds_assigned_partitions", topic="gauges-t") == 0
    assert sample("refunds_assigned_partitions", topic="gauges-u") == 0
    assert sample("refunds_consumer_lag_records", topic="gauges-t", partition="1") is None
    for kind, count in (("assign", 1), ("revoke", 1), ("lost", 1)):
        assert sample("refunds_rebalances_total", kind=kind) == rebalances[kind] + count


def test_the_assigned_count_ignores_a_partition_assigned_again_or_revoked_unassigned() -> None:
    def assigned() -> float | None:
        return REGISTRY.get_sample_value("refunds_assigned_partitions", {"topic": "again-t"})

    gauges = PartitionGauges()
    try:
        gauges.assign([("again-t", 0)])
        gauges.assign([("again-t", 0), ("again-t", 1)])
        assert assigned() == 2
        gauges.revoke([("again-t", 1), ("again-t", 2)])
        assert assigned() == 1
    finally:
        gauges.clear()
    assert assigned() == 0


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize(
    ("assigned", "lags", "max_lag", "expected"),
    [
        (0, [], 100, (False, "no partitions assigned")),
        (3, [1, 2], 100, (False, "lag not known yet for 1 of 3 partitions")),
        (2, [60, 41], 100, (False, "consumer lag 101 records exceeds 100")),
        (2, [60, 40], 100, (True, "2 partitions assigned, consumer lag 100 records")),
        (1, [0], 0, (True, "1 partitions assigned, consumer lag 0 records")),
    ],
)
def test_ready_needs_partitions_and_a_known_lag_within_the_bound(
    assigned: int, lags: list[float], max_lag: int, expected: tuple[bool, str]
) -> None:
    assert ready(assigned, lags, max_lag) == expected


def test_the_server_serves_metrics_and_probes_on_a_configured_address() -> None:
    gauges = PartitionGauges()
    with MetricsServer(MetricsSettings(host="127.0.0.1", port=0, ready_max_lag=10)) as server:
        status, body = _get(f"{server.url}/metrics")
        assert status == 200
        assert "# TYPE refunds_events_consumed_total counter" in body
        assert "process_resident_memory_bytes" in body
        assert "python_gc_objects_collected_total" in body
        assert "python_info" in body
        assert _get(f"{server.url}/healthz") == (200, "alive\n")
        assert _get(f"{server.url}/nothing")[0] == 404
        assert _get(f"{server.url}/readyz") == (503, "no partitions assigned\n")
        try:
            gauges.assign([("probe-t", 0), ("probe-t", 1)])
            gauges.lag("probe-t", 0, 4)
            assert _get(f"{server.url}/readyz")[0] == 503  # partition 1's lag unknown
            gauges.lag("probe-t", 1, 6)
            assert _get(f"{server.url}/readyz") == (
                200,
                "2 partitions assigned, consumer lag 10 records\n",
            )
            gauges.lag("probe-t", 1, 7)
            assert _get(f"{server.url}/readyz") == (503, "consumer lag 11 records exceeds 10\n")
        finally:
            gauges.clear()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/healthz", timeout=5)


@pytest.mark.parametrize(
    ("host", "url"), [("127.0.0.1", "http://127.0.0.1:"), ("::1", "http://[::1]:")]
)
def test_the_server_answers_on_an_ipv4_or_ipv6_address(host: str, url: str) -> None:
    with MetricsServer(MetricsSettings(host=host, port=0)) as server:
        assert server.url.startswith(url)
        assert _get(f"{server.url}/healthz") == (200, "alive\n")


def test_the_server_writes_no_access_log(capfd: pytest.CaptureFixture[str]) -> None:
    """stderr carries JSON log lines only. Read to the end of the response: the server
    closes the connection after it would have logged the request."""
    with MetricsServer(MetricsSettings(host="127.0.0.1", port=0)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            response = b""
            while chunk := connection.recv(4096):
                response += chunk
    assert response.startswith(b"HTTP/1.0 200 OK")
    assert capfd.readouterr().err == ""


# --------------------------------------------------------------------------- live


def _scrape(url: str) -> dict[str, list[Sample]]:
    """Agreed metric name -> its samples, from a /metrics response."""
    status, body = _get(f"{url}/metrics")
    assert status == 200
    return {
        _agreed_name(family.name, family.type): family.samples
        for family in text_string_to_metric_families(body)
        if family.name.startswith("refunds_")
    }


def _total(samples: list[Sample], suffix: str = "", **labels: str) -> float:
    return sum(
        s.value for s in samples if s.name.endswith(suffix) and labels.items() <= s.labels.items()
    )


def test_a_running_processor_serves_every_metric_and_logs_json(live: LiveHarness) -> None:
    lines = generate_history(300, seed=7, malformed_share=0)
    outputs = list(replay(lines, "history.jsonl", load_policy()))
    refunds = [o for o in outputs if isinstance(o, RefundCommand)]
    amounts = Counter[str]()
    for refund in refunds:
        amounts[refund.currency] += refund.amount_minor
    assert any(o.reason == "lost" for o in refunds)  # so deadline timers fire
    producer = Producer(live.settings.kafka.producer_config())
    for topic in (live.topics["orders"], live.topics["tracking"]):
        producer.produce(topic, key=b"junk", value=b"\xffnot avro")
    assert producer.flush(30) == 0
    live.publish(lines)

    instance = live.start()
    url = instance.metrics_url()
    assert _get(f"{url}/healthz") == (200, "alive\n")
    scraped: dict[str, list[Sample]] = {}

    def refunds_counted() -> bool:
        nonlocal scraped
        live.assert_none_failed()
        scraped = _scrape(url)
        refunded = scraped["refunds_refunded_amount_minor_total"]
        return (
            _total(scraped["refunds_refunds_total"]) == len(refunds)
            and all(_total(refunded, currency=c) == a for c, a in amounts.items())
            and _total(scraped["refunds_events_consumed_total"]) == len(lines) + 2
            # Decided: the last ones once every input is idle (docs/live.md).
            and _total(scraped[latency], "_count") == len(lines)
            and _total(scraped["refunds_events_buffered"]) == 0
        )

    latency = "refunds_end_to_end_latency_seconds"
    await_condition(refunds_counted, 180, "every input decided, every refund counted")
    await_condition(lambda: _get(f"{url}/readyz")[0] == 200, 60, "/readyz answers 200")
    scraped = _scrape(url)
    assert instance.running

    # Every agreed metric, with its agreed labels.
    assert set(scraped) == set(AGREED)
    for name, samples in scraped.items():
        for sample in samples:
            assert set(sample.labels) - {"le"} == AGREED[name][1], sample

    def total(name: str, suffix: str = "", **labels: str) -> float:
        return _total(scraped[name], suffix, **labels)

    orders, tracking = live.topics["orders"], live.topics["tracking"]
    by_order = live.settings.by_order_topic
    for kind, count in Counter(json.loads(line)["type"] for line in lines).items():
        assert total("refunds_events_consumed_total", type=kind) == count, kind
    for topic in (orders, tracking):
        assert total("refunds_events_consumed_total", topic=topic, type="undecodable") == 1
    assert total("refunds_dead_letters_total", reason="bad_magic") == 2
    assert total("refunds_merchant_refunded_amount_minor_total") == sum(amounts.values())
    assert total("refunds_decisions_total", outcome="refunded") > 0
    assert total("refunds_reships_total") >= 0
    assert total("refunds_timers_fired_total") > 0
    assert total("refunds_timers_pending") >= 0
    assert total("refunds_orphans_waiting") >= 0
    assert total("refunds_transactions_committed_total") > 0
    assert total("refunds_transactions_aborted_total") == 0
    for name in (
        "refunds_batch_records",
        "refunds_transaction_commit_seconds",
        "refunds_transaction_open_seconds",
    ):
        assert total(name, "_count") > 0
    for operation in REDIS_OPERATIONS:
        assert total("refunds_redis_round_trip_seconds", "_count", operation=operation) > 0
    # Measured from arrival, not from event time (months before this run): none is older
    # than the run itself.
    assert total(latency, "_bucket", le="600.0") == len(lines)
    assert total("refunds_rebalances_total", kind="assign") >= 1
    assert {
        topic: total("refunds_assigned_partitions", topic=topic)
        for topic in (orders, tracking, by_order)
    } == {orders: 3, tracking: 2, by_order: 3}
    lag = scraped["refunds_consumer_lag_records"]
    assert len(lag) == 8
    assert {s.labels["topic"] for s in lag} == {orders, tracking, by_order}

    live.stop_all()
    log = instance.log_lines()  # every line JSON, or this raises
    assert instance.process.returncode == 0
    committed = [line for line in log if line["event"] == "refund committed"]
    assert sorted(line["command_id"] for line in committed) == sorted(r.command_id for r in refunds)
    assert all(line["order_id"] and line["level"] == "info" for line in committed)
    dead = [line for line in log if line["event"] == "dead letter committed"]
    assert {(d["topic"], d["partition"], d["reason"]) for d in dead} >= {
        (orders, d["partition"], "bad_magic") for d in dead if d["topic"] == orders
    }
    assert {d["topic"] for d in dead} == {orders, tracking}
    assert all(isinstance(d["offset"], int) for d in dead)
    claimed = [line for line in log if line["event"] == "task claimed"]
    assert {(c["topic"], c["partition"]) for c in claimed} == {(by_order, p) for p in range(3)}


def test_events_no_watermark_has_passed_are_counted_as_buffered(live: LiveHarness) -> None:
    """The tracking topic stays empty and, within the test, never idle: its watermark
    holds every order task's clock back, so every order event stays in memory."""
    live.configure(env={"REFUND_IDLE_PARTITION_WAIT_MS": "600000"})
    lines = [json.dumps(order_placed(f"o{n}", when=at(n))) for n in range(5)]
    live.publish(lines)
    url = live.start().metrics_url()

    def all_buffered() -> bool:
        live.assert_none_failed()
        return _total(_scrape(url)["refunds_events_buffered"]) == len(lines)

    await_condition(all_buffered, 120, "every order event held back by the empty input")
    live.stop_all()


@pytest.mark.parametrize("outage", ["any_time", "after_a_commit"])
def test_the_lag_grows_while_redis_is_down(
    live: LiveHarness, redis_server: LocalRedis, outage: str
) -> None:
    """Set only by batches that got past Redis (routing a shipment writes to it), the lag
    read 0 for a whole outage, and the instance stayed ready.

    Redis going down fails the batch under way and every one after, or, between a batch's
    Kafka commit and its apply, leaves the instance retrying that apply, consuming
    nothing, until Redis is back. Where it lands depends on timing (on a loaded machine,
    often in that window); `after_a_commit` puts it there every time
    (tests/stall.py)."""
    live.configure(env={"REFUND_REDIS__URL": redis_server.url})
    if outage == "after_a_commit":
        instance = live.start_stalled("p0", "apply")
        failing = "Redis unavailable: applying the committed batch"
    else:
        instance = live.start()
        live.await_stable_group({instance.name}, timeout_s=60)
        failing = "Redis unavailable"
    url = instance.metrics_url()
    marks = live.log_marks()
    redis_server.stop(crash=True)
    try:
        instance.process.send_signal(signal.SIGCONT)  # stopped or not
        live.await_logged(marks, failing, timeout_s=60)
        lines = generate_history(20, seed=3, malformed_share=0)  # shipments: index writes
        live.publish(lines)
        await_condition(
            lambda: _total(_scrape(url)["refunds_consumer_lag_records"]) >= len(lines),
            timeout_s=60,
            what="the published records counted as lag",
        )
    finally:
        redis_server.start()
    live.stop_all()
