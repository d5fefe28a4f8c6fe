"""Every Prometheus metric of the processor, declared once on one registry (METRICS.md).

Placeholder of the deploy branch: the names, types and labels agreed in METRICS.md, so the
dashboard and alert rules can be checked against them; the metrics branch supplies the
module that also updates them and serves them over HTTP.
"""

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY: Final = CollectorRegistry()

# Input records consumed, by topic and event type (`undecodable` when it cannot be decoded).
EVENTS_CONSUMED: Final = Counter(
    "refunds_events_consumed_total", "Input events consumed.", ["topic", "type"], registry=REGISTRY
)
# Decisions emitted, by outcome and rule code.
DECISIONS: Final = Counter(
    "refunds_decisions_total", "Decisions emitted.", ["outcome", "code"], registry=REGISTRY
)
# Refund commands emitted.
REFUNDS: Final = Counter(
    "refunds_refunds_total", "Refund commands emitted.", ["reason", "currency"], registry=REGISTRY
)
# Refunded amount in minor units.
REFUNDED_AMOUNT: Final = Counter(
    "refunds_refunded_amount_minor_total",
    "Refunded amount, minor units.",
    ["reason", "currency"],
    registry=REGISTRY,
)
# Refunded amount per merchant (unbounded merchant_id: the spike alert needs it).
MERCHANT_REFUNDED_AMOUNT: Final = Counter(
    "refunds_merchant_refunded_amount_minor_total",
    "Refunded amount per merchant, minor units.",
    ["merchant_id", "currency"],
    registry=REGISTRY,
)
# Reship commands emitted.
RESHIPS: Final = Counter("refunds_reships_total", "Reship commands emitted.", registry=REGISTRY)
# Dead letters emitted, by reason.
DEAD_LETTERS: Final = Counter(
    "refunds_dead_letters_total", "Dead letters emitted.", ["reason"], registry=REGISTRY
)
# Kafka timestamp of an input record to the commit of the transaction carrying its outputs.
END_TO_END_LATENCY: Final = Histogram(
    "refunds_end_to_end_latency_seconds",
    "Input append to output commit.",
    registry=REGISTRY,
)
# Records per consumed batch.
BATCH_RECORDS: Final = Histogram(
    "refunds_batch_records", "Records per consumed batch.", registry=REGISTRY
)
# Time to commit one Kafka transaction.
TRANSACTION_COMMIT: Final = Histogram(
    "refunds_transaction_commit_seconds", "Kafka transaction commit time.", registry=REGISTRY
)
# Kafka transactions committed.
TRANSACTIONS_COMMITTED: Final = Counter(
    "refunds_transactions_committed_total", "Kafka transactions committed.", registry=REGISTRY
)
# Batches aborted and rewound.
TRANSACTIONS_ABORTED: Final = Counter(
    "refunds_transactions_aborted_total", "Batches aborted and rewound.", registry=REGISTRY
)
# One Redis round trip, by operation.
REDIS_ROUND_TRIP: Final = Histogram(
    "refunds_redis_round_trip_seconds", "One Redis round trip.", ["operation"], registry=REGISTRY
)
# High watermark minus position, per assigned partition.
CONSUMER_LAG: Final = Gauge(
    "refunds_consumer_lag_records",
    "High watermark minus position.",
    ["topic", "partition"],
    registry=REGISTRY,
)
# Event-time timers waiting, over this instance's tasks.
TIMERS_PENDING: Final = Gauge("refunds_timers_pending", "Timers waiting.", registry=REGISTRY)
# Timers fired.
TIMERS_FIRED: Final = Counter("refunds_timers_fired_total", "Timers fired.", registry=REGISTRY)
# Events held for a missing order or tracking number.
ORPHANS_WAITING: Final = Gauge("refunds_orphans_waiting", "Orphans waiting.", registry=REGISTRY)
# Rebalance callbacks, by kind (assign, revoke, lost).
REBALANCES: Final = Counter(
    "refunds_rebalances_total", "Rebalance callbacks.", ["kind"], registry=REGISTRY
)
# Partitions currently assigned, by topic.
ASSIGNED_PARTITIONS: Final = Gauge(
    "refunds_assigned_partitions", "Partitions assigned.", ["topic"], registry=REGISTRY
)
