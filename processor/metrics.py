"""Every Prometheus metric of the live processor, and its /metrics, /healthz, /readyz server.

The names are a contract with the dashboard, the alerts and the demo: rename none alone.
docs/live.md ("Metrics") says what each measures and when it is updated.

All of them live on `REGISTRY`, this module's own registry rather than prometheus_client's
global default: what /metrics serves is exactly what is declared here (plus the standard
process and Python collectors), no library or test helper can add to it or collide with
it, and a test can serve it on a port of its own. Several runners in one process (a
demo, a benchmark) share it: counters and histograms add up; the gauges of the whole
instance are moved by deltas (`GaugeShare`), so they add up too; the per-partition
gauges assume the runners own distinct partitions (one consumer group).

Cheap on the hot path: the runner counts a batch's records and outputs in a `BatchTally`
and adds it to the counters once per batch, after its transaction committed (an aborted
batch is consumed and decided again, and must not count twice); labelled children are
looked up once and kept (`labels()` takes a lock and formats its arguments every call).
"""

from __future__ import annotations

import socket
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Generic, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.samples import Sample

from processor.outputs import Decision, Output, RefundCommand, ReshipCommand
from processor.settings import MetricsSettings

REGISTRY: Final = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)
# No `<name>_created` series beside every counter and histogram (in the text format they
# read as extra gauges): Prometheus detects resets without them. Process-wide switch.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: The event type counted for an input record that could not be decoded.
UNDECODABLE: Final = "undecodable"

# --------------------------------------------------------------------------- the metrics

# Input records consumed and committed, by input topic and event type (or `undecodable`).
EVENTS_CONSUMED: Final = Counter(
    "refunds_events_consumed_total",
    "Input events consumed, by topic and event type (or undecodable)",
    ["topic", "type"],
    registry=REGISTRY,
)
# Decisions committed to the decisions topic, by outcome and code.
DECISIONS: Final = Counter(
    "refunds_decisions_total",
    "Decisions emitted, by outcome and code",
    ["outcome", "code"],
    registry=REGISTRY,
)
# Refund commands committed to the wallet topic, by reason and currency.
REFUNDS: Final = Counter(
    "refunds_refunds_total",
    "Refund commands emitted, by reason and currency",
    ["reason", "currency"],
    registry=REGISTRY,
)
# Sum of amount_minor over those refund commands (shipping fee included), in minor units.
REFUNDED_AMOUNT: Final = Counter(
    "refunds_refunded_amount_minor_total",
    "Refunded amount in minor units, by reason and currency",
    ["reason", "currency"],
    registry=REGISTRY,
)
# The same amount per merchant: the one unbounded label (one series per merchant and
# currency), kept for the per-merchant spike alert; drop the series in Prometheus
# (metric_relabel_configs) if the merchant count ever makes it too costly.
MERCHANT_REFUNDED_AMOUNT: Final = Counter(
    "refunds_merchant_refunded_amount_minor_total",
    "Refunded amount in minor units, by merchant and currency",
    ["merchant_id", "currency"],
    registry=REGISTRY,
)
# Reship commands committed to the fulfilment topic.
RESHIPS: Final = Counter("refunds_reships_total", "Reship commands emitted", registry=REGISTRY)
# Dead letters committed to the dead-letter topic, by reason (the error class header).
DEAD_LETTERS: Final = Counter(
    "refunds_dead_letters_total",
    "Dead letters emitted, by reason",
    ["reason"],
    registry=REGISTRY,
)


class BatchHistogram(Histogram):
    """A histogram that takes equal observations at once: the events a batch decides
    arrived at few distinct times (each consume stamps its records alike), so their
    latencies cost one call per time rather than one per event."""

    def observe_many(self, amount: float, count: int) -> None:
        """`observe(amount)` done `count` times (what prometheus_client's `observe` does,
        with `count` for its 1: a test holds the two equal)."""
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        self._sum.inc(amount * count)
        for bucket, bound in zip(self._buckets, self._upper_bounds, strict=True):
            if amount <= bound:
                bucket.inc(count)
                break


# Arrival of an input record (docs/live.md, "Metrics") -> commit of the batch deciding it.
END_TO_END_LATENCY: Final = BatchHistogram(
    "refunds_end_to_end_latency_seconds",
    "Arrival of an input record to the commit of the transaction carrying its outputs",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
# Records returned by one consume call (one batch, one transaction), empty batches included.
BATCH_RECORDS: Final = Histogram(
    "refunds_batch_records",
    "Records per consumed batch",
    buckets=(0, 1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 40000, 80000),
    registry=REGISTRY,
)
# begin_transaction to the end of the commit of one batch: must stay well under the
# producer's transaction.timeout.ms, or the broker aborts it and fences the producer.
TRANSACTION_OPEN: Final = Histogram(
    "refunds_transaction_open_seconds",
    "Time one batch's Kafka transaction was open, until it committed",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 30, 60),
    registry=REGISTRY,
)
# send_offsets_to_transaction + commit_transaction (retries included) of one batch.
TRANSACTION_COMMIT: Final = Histogram(
    "refunds_transaction_commit_seconds",
    "Time to commit one Kafka transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
# Kafka transactions committed: one per batch, even an empty one (alert when it stops).
TRANSACTIONS_COMMITTED: Final = Counter(
    "refunds_transactions_committed_total",
    "Kafka transactions committed",
    registry=REGISTRY,
)
# Batches whose transaction was aborted and whose partitions were rewound.
TRANSACTIONS_ABORTED: Final = Counter(
    "refunds_transactions_aborted_total",
    "Batches aborted and rewound",
    registry=REGISTRY,
)
# One Redis round trip, by operation: prefetch, stage, apply, claim (task store), index.
REDIS_ROUND_TRIP: Final = Histogram(
    "refunds_redis_round_trip_seconds",
    "One Redis round trip, by operation",
    ["operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
# High watermark minus the consumer's position, per assigned partition (`PartitionGauges`).
CONSUMER_LAG: Final = Gauge(
    "refunds_consumer_lag_records",
    "High watermark minus position, per assigned partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
# Event-time timers in the committed state of this instance's order tasks.
TIMERS_PENDING: Final = Gauge(
    "refunds_timers_pending",
    "Event-time timers waiting, over this instance's tasks",
    registry=REGISTRY,
)
# Input events this instance's order tasks hold in memory until the watermark passes them.
EVENTS_BUFFERED: Final = Gauge(
    "refunds_events_buffered",
    "Input events held by this instance's tasks until every input's watermark passes them",
    registry=REGISTRY,
)
# Timers fired in committed batches.
TIMERS_FIRED: Final = Counter("refunds_timers_fired_total", "Timers fired", registry=REGISTRY)
# Tracking updates the routers hold for an unknown tracking number, plus the orders (and
# tracking numbers) whose committed state holds events for a missing piece, one each.
ORPHANS_WAITING: Final = Gauge(
    "refunds_orphans_waiting",
    "Events held for a missing order or tracking number",
    registry=REGISTRY,
)
# Rebalance callbacks of this instance's consumer, by kind: assign, revoke, lost.
REBALANCES: Final = Counter(
    "refunds_rebalances_total",
    "Rebalance callbacks (assign, revoke, lost)",
    ["kind"],
    registry=REGISTRY,
)
# Partitions assigned to this instance's consumer, by topic.
ASSIGNED_PARTITIONS: Final = Gauge(
    "refunds_assigned_partitions",
    "Partitions currently assigned",
    ["topic"],
    registry=REGISTRY,
)

REDIS_PREFETCH, REDIS_STAGE, REDIS_APPLY, REDIS_CLAIM, REDIS_INDEX = (
    REDIS_ROUND_TRIP.labels(operation)
    for operation in ("prefetch", "stage", "apply", "claim", "index")
)

# --------------------------------------------------------------------------- updating them

_M = TypeVar("_M", Counter, Gauge, Histogram)


class _Children(Generic[_M]):
    """A labelled metric's children, looked up once each."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


_events_consumed = _Children(EVENTS_CONSUMED)
_decisions = _Children(DECISIONS)
_refunds = _Children(REFUNDS)
_refunded_amount = _Children(REFUNDED_AMOUNT)
_merchant_refunded_amount = _Children(MERCHANT_REFUNDED_AMOUNT)
_dead_letters = _Children(DEAD_LETTERS)
_rebalances = _Children(REBALANCES)
_assigned_partitions = _Children(ASSIGNED_PARTITIONS)


@dataclass(slots=True)
class BatchTally:
    """What one batch consumed and emitted, added to the metrics by `count` once the
    batch's transaction committed."""

    consumed: Tally[tuple[str, str]] = field(default_factory=Tally)
    """(source "<topic>:<partition>", event type or UNDECODABLE) -> records."""
    outputs: list[Output] = field(default_factory=list)
    """Refund commands, reships and decisions (dead letters are in `dead_letters`)."""
    dead_letters: list[tuple[str, str, str]] = field(default_factory=list)
    """(origin, reason, message) of each dead letter."""
    arrivals_ms: Tally[int] = field(default_factory=Tally)
    """When the input records decided in the batch arrived (docs/live.md, "Metrics"),
    epoch millis -> records."""
    timers_fired: int = 0

    def count(self, committed_at_ms: int) -> None:
        """Adds the batch to the counters and histograms; once, after its commit."""
        TRANSACTIONS_COMMITTED.inc()
        for (source, kind), records in self.consumed.items():
            _events_consumed(source.rpartition(":")[0], kind).inc(records)
        decisions: Tally[tuple[str, str]] = Tally()
        refunds: Tally[tuple[str, str]] = Tally()
        refunded: Tally[tuple[str, str]] = Tally()
        by_merchant: Tally[tuple[str, str]] = Tally()
        reships = 0
        for output in self.outputs:
            if isinstance(output, Decision):
                decisions[(output.outcome, output.code)] += 1
            elif isinstance(output, RefundCommand):
                refunds[(output.reason, output.currency)] += 1
                refunded[(output.reason, output.currency)] += output.amount_minor
                by_merchant[(output.merchant_id, output.currency)] += output.amount_minor
            elif isinstance(output, ReshipCommand):
                reships += 1
        for labels, n in decisions.items():
            _decisions(*labels).inc(n)
        for labels, n in refunds.items():
            _refunds(*labels).inc(n)
        for labels, n in refunded.items():
            _refunded_amount(*labels).inc(n)
        for labels, n in by_merchant.items():
            _merchant_refunded_amount(*labels).inc(n)
        if reships:
            RESHIPS.inc(reships)
        for reason, n in Tally(reason for _, reason, _ in self.dead_letters).items():
            _dead_letters(reason).inc(n)
        if self.timers_fired:
            TIMERS_FIRED.inc(self.timers_fired)
        for arrived_ms, records in self.arrivals_ms.items():
            # Clamped: LogAppendTime is the broker's clock, which may run ahead of ours.
            END_TO_END_LATENCY.observe_many(max(0, committed_at_ms - arrived_ms) / 1000, records)


class GaugeShare:
    """One runner's part of an unlabelled gauge: set by deltas, so runners add up."""

    __slots__ = ("_gauge", "_value")

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._value = 0.0

    def set(self, value: float) -> None:
        if value != self._value:
            self._gauge.inc(value - self._value)
            self._value = value


class PartitionGauges:
    """One consumer's assigned partitions and their lag, in the per-partition gauges."""

    __slots__ = ("_assigned", "_lag")

    def __init__(self) -> None:
        self._assigned: set[tuple[str, int]] = set()
        self._lag: dict[tuple[str, int], Gauge] = {}

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        _rebalances("assign").inc()
        for key in partitions:
            if key not in self._assigned:
                self._assigned.add(key)
                _assigned_partitions(key[0]).inc()

    def revoke(self, partitions: Iterable[tuple[str, int]], kind: str = "revoke") -> None:
        """`kind`: revoke, or lost (the group moved them on without us)."""
        _rebalances(kind).inc()
        self._drop(partitions)

    def lag(self, topic: str, partition: int, records: int) -> None:
        key = (topic, partition)
        gauge = self._lag.get(key)
        if gauge is None:
            if key not in self._assigned:
                return  # revoked meanwhile: its series is gone and stays gone
            gauge = self._lag[key] = CONSUMER_LAG.labels(topic, str(partition))
        gauge.set(records)

    def clear(self) -> None:
        """Takes this consumer's partitions out of the gauges (it closed)."""
        self._drop([*self._assigned, *self._lag])

    def _drop(self, partitions: Iterable[tuple[str, int]]) -> None:
        for key in partitions:
            if key in self._assigned:
                self._assigned.discard(key)
                _assigned_partitions(key[0]).dec()
            if self._lag.pop(key, None) is not None:
                CONSUMER_LAG.remove(key[0], str(key[1]))


# --------------------------------------------------------------------------- readiness


def ready(assigned: int, lags: Sequence[float], max_lag: int) -> tuple[bool, str]:
    """(ready?, why): partitions assigned, the lag of each known, their sum <= max_lag."""
    if assigned <= 0:
        return False, "no partitions assigned"
    if len(lags) < assigned:
        return False, f"lag not known yet for {assigned - len(lags)} of {assigned} partitions"
    total = int(sum(lags))
    if total > max_lag:
        return False, f"consumer lag {total} records exceeds {max_lag}"
    return True, f"{assigned} partitions assigned, consumer lag {total} records"


def readiness(max_lag: int) -> tuple[bool, str]:
    """`ready` over what the gauges say now, for every consumer of the process."""
    assigned = int(sum(sample.value for sample in _samples(ASSIGNED_PARTITIONS)))
    return ready(assigned, [sample.value for sample in _samples(CONSUMER_LAG)], max_lag)


def _samples(metric: Gauge) -> Iterator[Sample]:
    for family in metric.collect():
        yield from family.samples


# --------------------------------------------------------------------------- the server


class _QuietHandler(WSGIRequestHandler):
    """No access log: stderr carries JSON log lines only."""

    def log_message(self, format: str, *args: object) -> None:
        return


def _app(max_lag: int) -> WSGIApplication:
    metrics = make_wsgi_app(REGISTRY)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body = "200 OK", "alive"
        elif path == "/readyz":
            is_ready, body = readiness(max_lag)
            status = "200 OK" if is_ready else "503 Service Unavailable"
        else:
            status, body = "404 Not Found", "not found: try /metrics, /healthz or /readyz"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode() + b"\n"]

    return app


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on a daemon thread until `close`.

    prometheus_client's own threading WSGI server and exposition app; only the two probes
    are ours. /healthz: the process is alive. /readyz: `readiness(settings.ready_max_lag)`.
    """

    def __init__(self, settings: MetricsSettings) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server_class = type("_Server", (ThreadingWSGIServer,), {"address_family": family})
        self._httpd: ThreadingWSGIServer = make_server(
            str(address[0]),
            settings.port,
            _app(settings.ready_max_lag),
            server_class,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-server", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. http://127.0.0.1:9108 (the port bound if 0 was asked)."""
        host, port = self._httpd.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
