"""`refund-processor demo`: the whole product on a generated history, in one command.

Starts a local Kafka and Redis (or uses the ones given), creates topics of its own (unique
names per run), generates a history, publishes it, runs the live processor until it has
caught up, and prints what it decided, read back from the output topics (read_committed),
checked against the offline replay of the same history. It leaves nothing running: the
services it started are stopped and their directories removed, also on Ctrl-C, SIGTERM or
an error; on services it was given, it deletes its topics, consumer group and Redis keys.

"Caught up" (docs/live.md explains the watermarks):

1. routed: the group's committed offsets on the inputs reach their end offsets, and every
   input partition is reported idle by its router (read to its end, nothing pending, quiet
   for `idle_partition_wait_ms`), so the watermark W is the largest event time routed;
2. decided: the group's committed offsets on the internal topic reach the end offsets it
   had when 1 first held (an order task never commits past a record it still buffers, so
   every routed event has been decided), and every order task's clock in Redis has reached
   W - allowed_lateness (so every timer due by then has fired and committed).

Timers due after that clock stay pending, in the live processor as in the replay without
`--now`: event time moves only with events, and the summary says what is still waiting.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO, TypeVar

import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]
from rich.columns import Columns
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from processor.config import PolicyConfig, load_policy
from processor.deadletter import ERROR_CLASS
from processor.events import InvalidEventError, from_millis, parse_event_json
from processor.generate import write_history
from processor.localstack import poll_until
from processor.localstack.kafka import LocalKafka, kafka_version
from processor.localstack.redis import LocalRedis
from processor.metrics import MetricsServer
from processor.outputs import output_to_dict
from processor.policy import DEADLINE_TIMER_PREFIX, EXPIRE_HELD_TIMER
from processor.publish import PublishError, publish_lines
from processor.redis_index import RedisTrackingIndex
from processor.redis_store import RedisTaskStore, delete_keys, parse_timer_member
from processor.replay import replay
from processor.router import Progress as RouterProgress
from processor.runner import Runner, batch_collector, topic_partitions
from processor.serde import Serde
from processor.settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    Settings,
    load_settings,
    make_serde,
    validate_settings,
)
from processor.store import Timer
from processor.summary import (
    Summary,
    counts_table,
    refund_diff,
    refunds_table,
    summarize,
)

__all__ = [
    "DemoError",
    "DemoOptions",
    "DemoReport",
    "Observation",
    "decided",
    "print_report",
    "render_report",
    "routed_watermark",
    "run_demo",
]

#: The generator's window: orders are placed over this many days (later events run on).
HISTORY_DAYS: Final = 60
#: Partitions of the demo's input topics (the orders topic gets at least one per instance).
ORDERS_PARTITIONS: Final = 4
TRACKING_PARTITIONS: Final = 2
#: How often the demo looks at the group's offsets and the tasks' clocks.
_POLL_S: Final = 0.25
#: librdkafka's own log lines, through Python logging (the CLI shows errors only).
_rdkafka_log = logging.getLogger(f"{__name__}.rdkafka")
_T = TypeVar("_T")


class DemoError(Exception):
    """The demo could not run or finish; the message says what to look at."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    orders: int = 2000
    seed: int = 7
    instances: int = 1
    config: Path | None = None
    """Settings file; when given (or $REFUND_CONFIG), its Kafka and Redis are used."""
    bootstrap_servers: str | None = None
    redis_url: str | None = None
    stall_timeout_s: float = 120.0
    """Give up when neither routing nor any task's clock moved for this long."""


# --------------------------------------------------------------------------- catching up


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at the processor's progress, from Kafka and Redis."""

    committed: Mapping[tuple[str, int], int]  # the group's offsets (negative: none yet)
    sources: Mapping[str, RouterProgress]  # router progress per input partition "topic:p"
    clocks: Mapping[int, int | None]  # internal partition -> its order task's clock

    def routed(self, ends: Mapping[tuple[str, int], int]) -> int:
        """Input records the group has committed past (routed or dead-lettered)."""
        return sum(min(max(self.committed.get(tp, 0), 0), end) for tp, end in ends.items())

    def slowest_clock(self) -> int | None:
        """The clock of the order task furthest behind; None until every task has one."""
        clocks = list(self.clocks.values())
        known = [clock for clock in clocks if clock is not None]
        return min(known) if known and len(known) == len(clocks) else None


def routed_watermark(observed: Observation, ends: Mapping[tuple[str, int], int]) -> int | None:
    """W, once every input record is routed and every input partition reported idle."""
    if observed.routed(ends) < sum(ends.values()):
        return None
    reports = [observed.sources.get(f"{topic}:{partition}") for topic, partition in ends]
    if any(report is None or not report.idle for report in reports):
        return None
    return max(report.watermark for report in reports if report is not None)


def decided(
    observed: Observation, by_order: str, mark: Mapping[int, int], clock_target: int
) -> bool:
    """Every task committed past `mark` (the internal topic's ends once routing was done)
    and moved its clock to `clock_target`."""
    return all(
        max(observed.committed.get((by_order, partition), 0), 0) >= end
        and (clock := observed.clocks.get(partition)) is not None
        and clock >= clock_target
        for partition, end in mark.items()
    )


#: Kafka errors that only mean "ask again": a group coordinator loading or moving.
_TRANSIENT: Final = frozenset(
    {
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._TIMED_OUT,
    }
)


def _unless_transient(call: Callable[[], _T]) -> _T | None:
    """`call()`, or None when Kafka answers with a transient error (asked again later)."""
    try:
        return call()
    except KafkaException as exc:
        error = exc.args[0]
        if error.retriable() or error.code() in _TRANSIENT:
            return None
        raise


class _Watcher:
    """Reads the group's committed offsets (Kafka) and the routers' and tasks' progress
    (Redis) of one run."""

    def __init__(self, settings: Settings, inputs: Iterable[tuple[str, int]]) -> None:
        self._by_order = settings.by_order_topic
        self._admin = AdminClient(settings.kafka.admin_config(), logger=_rdkafka_log)
        # Reads the group's committed offsets; it never subscribes (so it is no member of
        # the group) and never commits. Not AdminClient.list_consumer_group_offsets: an
        # admin client segfaults when the coordinator answers NOT_COORDINATOR (librdkafka
        # issue 5040), as it does while a local broker is still loading it.
        self._offsets = Consumer(
            settings.kafka.consumer_config(settings.group_id), logger=_rdkafka_log
        )
        self._redis = settings.redis.client()
        self._progress = RedisTrackingIndex(self._redis, settings.application_id)
        self._partitions = topic_partitions(self._admin, self._by_order)
        self._stores = {
            p: RedisTaskStore(self._redis, settings.application_id, f"{self._by_order}:{p}")
            for p in self._partitions
        }
        self._watched = [TopicPartition(t, p) for t, p in inputs] + [
            TopicPartition(self._by_order, p) for p in self._partitions
        ]

    def close(self) -> None:
        self._offsets.close()
        self._redis.close()

    def observe(self) -> Observation:
        found = self._offsets.committed(self._watched, timeout=10)
        committed = {(tp.topic, tp.partition): tp.offset for tp in found}
        pipe = self._redis.pipeline(transaction=False)
        for store in self._stores.values():
            pipe.hget(store.meta_key, "clock")
        clocks = {
            p: None if raw is None else int(raw)
            for p, raw in zip(self._stores, pipe.execute(), strict=True)
        }
        return Observation(committed, self._progress.read_progress(), clocks)

    def internal_ends(self) -> dict[int, int]:
        """The internal topic's end offsets for read_committed readers."""
        specs = {TopicPartition(self._by_order, p): OffsetSpec.latest() for p in self._partitions}  # type: ignore[no-untyped-call]
        futures = self._admin.list_offsets(specs, isolation_level=IsolationLevel.READ_COMMITTED)
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def pending_timers(self) -> list[Timer]:
        pipe = self._redis.pipeline(transaction=False)
        for store in self._stores.values():
            pipe.zrange(store.timers_key, 0, -1)
        members: list[list[bytes]] = pipe.execute()
        return sorted(parse_timer_member(m) for found in members for m in found)


class _Instances:
    """The processor's instances: one `Runner` each, driven by its own thread (so they
    form a real consumer group, rebalances included), as `refund-processor run` would."""

    def __init__(self) -> None:
        self._runners: list[Runner] = []
        self._threads: list[threading.Thread] = []
        self._failures: list[BaseException] = []

    def start(self, settings: Settings, policy: PolicyConfig, count: int) -> None:
        for number in range(count):
            kafka = settings.kafka.model_copy(
                update={"client_id": f"{settings.application_id}-{number}"}
            )
            runner = Runner(settings.model_copy(update={"kafka": kafka}), policy)
            self._runners.append(runner)
            thread = threading.Thread(
                target=self._drive, args=(runner,), name=f"demo-instance-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _drive(self, runner: Runner) -> None:
        try:
            while runner.running:
                runner.run_once()
        except BaseException as exc:  # reported by `check`, in the demo's thread
            self._failures.append(exc)

    def check(self) -> None:
        if self._failures:
            exc = self._failures[0]
            raise DemoError(f"the processor failed: {type(exc).__name__}: {exc}") from exc

    def stop(self) -> None:
        """Lets each instance finish its batch, leaves the group, and waits (1 s at most)
        until its Kafka clients are destroyed.

        A Runner is in a reference cycle through its consumer's callbacks, which the
        consumer lets go of shortly after it closes (not always: interrupted while joining
        the group, it may keep them). Collected then, its clients are gone before a broker
        the demo started stops, instead of logging that they cannot reach it.
        """
        for runner in self._runners:
            runner.running = False
        for thread in self._threads:
            thread.join(timeout=60)
        for runner in self._runners:
            runner.close()
        closed = [weakref.ref(runner) for runner in self._runners]
        self._runners.clear()
        self._threads.clear()

        def collected() -> bool:
            gc.collect()
            return all(ref() is None for ref in closed)

        poll_until(collected, timeout=1, interval=0.05)


# --------------------------------------------------------------------------- the report


def _explain_hint(options: DemoOptions) -> str:
    """The run's state is gone with it; the same history, regenerated, explains any order."""
    return (
        "Why, for one order (ORDER_ID: ord-1 to "
        f"ord-{options.orders}): uv run refund-processor generate --orders {options.orders} "
        f"--seed {options.seed} --out demo.jsonl && uv run refund-processor explain ORDER_ID "
        "--from demo.jsonl"
    )


@dataclass(frozen=True, slots=True)
class DemoReport:
    options: DemoOptions
    application_id: str  # prefix of the run's topics, consumer group and Redis keys
    events: int  # input records published, malformed ones included
    malformed: int
    seconds: float  # from starting the processor to caught up
    idle_wait_s: float
    clock: int  # the event-time clock every task reached
    live: Summary  # read back from the output topics
    replay: Summary  # the offline replay of the same history
    pending: list[Timer]  # timers still waiting, over all tasks
    metrics_url: str | None

    @property
    def matches_replay(self) -> bool:
        return refund_diff(self.live, self.replay).same


def metrics_line(url: str | None) -> str:
    """In the past tense: the summary comes once the run, and its server, have ended."""
    return f"metrics: were served at {url} during the run" if url else "metrics: not served"


def _when(millis: int) -> str:
    return from_millis(millis).strftime("%Y-%m-%d %H:%M UTC")


def _pending_line(pending: list[Timer], clock: int) -> str:
    reached = f"every order task's event-time clock reached {_when(clock)}"
    if not pending:
        return f"Pending: no timer waiting; {reached} (the last event minus allowed_lateness)."
    kinds: dict[str, list[int]] = {}
    for timer in pending:
        if timer.name.startswith(DEADLINE_TIMER_PREFIX):
            kind = "lost-package deadline"
        elif timer.name == EXPIRE_HELD_TIMER:
            kind = "held-event expiry"
        else:
            kind = timer.name
        kinds.setdefault(kind, []).append(timer.deadline)
    parts = [
        f"{len(deadlines)} {kind}{'s' if len(deadlines) > 1 else ''} due "
        f"{_when(min(deadlines))[:10]} to {_when(max(deadlines))[:10]}"
        for kind, deadlines in sorted(kinds.items())
    ]
    return (
        f"Pending: {len(pending)} timers ({'; '.join(parts)}); {reached}. Timers run on "
        "event time: these fire once later events move the clock past them."
    )


def render_report(report: DemoReport) -> list[RenderableType]:
    """The summary, as `Console.print` arguments, one per paragraph or table."""
    options, live = report.options, report.live
    outcomes = ", ".join(f"{name} {count:,}" for name, count in live.outcomes.most_common())
    diff = refund_diff(live, report.replay)
    if diff.same:
        verdict = f"yes, {live.refund_keys.total():,} refund commands with the same ids and amounts"
    else:
        verdict = (
            f"NO: {diff.missing} refunds missing, {diff.extra} not in the replay, "
            f"{diff.duplicated} issued more than once"
        )
    rate = report.events / report.seconds if report.seconds > 0 else 0.0
    instances = f"{options.instances} instance{'s' if options.instances > 1 else ''}"
    return [
        f"{options.orders:,} orders over {HISTORY_DAYS} days (seed {options.seed}): "
        f"{report.events:,} input events, {report.malformed} of them malformed",
        refunds_table(live),
        f"Reships: {live.reships:,}\nDecisions: {live.outcomes.total():,} ({outcomes})"
        + (
            "; a pending one is logged while its order waits, and the decision that ends "
            "the wait counts as well"
            if live.outcomes["pending"]
            else ""
        ),
        Columns(
            [
                counts_table("Denials", "code", live.denials),
                counts_table("Anomalies", "code", live.anomalies),
                counts_table("Dead letters", "reason", live.dead_letters),
            ],
            padding=(0, 2),
        ),
        _pending_line(report.pending, report.clock),
        f"Throughput: {report.events:,} events in {report.seconds:.1f} s = {rate:,.0f} "
        f"events/s ({instances}; start-up and the {report.idle_wait_s:g} s idle-partition "
        "wait included)",
        f"live == replay: {verdict}\n"
        f"dead letters: {live.dead_letters.total()} live (malformed lines sent as raw bytes), "
        f"{report.replay.dead_letters.total()} in the replay\n" + metrics_line(report.metrics_url),
        _explain_hint(report.options),
    ]


# --------------------------------------------------------------------------- the run


def _serve_metrics(settings: Settings, stack: contextlib.ExitStack) -> str:
    """Serves this run's Prometheus metrics until the demo ends; returns the /metrics URL.

    On any free port of the configured host: the demo is over before anyone would have
    pointed a scraper at a fixed one, and a busy 9108 must not stop it.
    """
    server = MetricsServer(settings.metrics.model_copy(update={"port": 0}))
    stack.callback(server.close)
    return f"{server.url}/metrics"


def _given(
    flag: tuple[str | None, str],
    env: str,
    settings_env: str,
    configured: tuple[str, str | None],
) -> tuple[str | None, str]:
    """An address the user gave and where it came from, for the messages that name it: the
    flag (its value, its name), else `$env` (as `localstack up` prints it and the tests read
    it), else the settings' (`configured`: the address and the settings file, used when a
    file was given) or `$settings_env`; a None address: the demo starts its own."""
    value, name = flag
    address, settings_file = configured
    if value:
        return value, f"from {name}"
    if os.environ.get(env):
        return os.environ[env], f"from ${env}"
    if os.environ.get(settings_env):  # over the file's, as in any settings
        return (address if settings_file else os.environ[settings_env]), f"from ${settings_env}"
    if settings_file:
        return address, f"from settings file {settings_file}"
    return None, "started by the demo"


def _run_settings(
    base: Settings, app: str, bootstrap: str | None, redis_url: str | None
) -> Settings:
    """The base settings on names of this run's own (it shares nothing with another run) and
    on the Kafka and Redis given (None: the base's), checked as a settings file is: a
    password in a Redis URL is refused, not printed with it."""
    values = base.model_dump()
    values["application_id"] = app
    values["topics"] = {role: f"{app}.{name}" for role, name in base.topics}
    if bootstrap is not None:
        values["kafka"]["bootstrap_servers"] = bootstrap
    if redis_url is not None:
        values["redis"]["url"] = redis_url
    return validate_settings(
        values,
        "the demo's --bootstrap-servers, --redis-url, $KAFKA_BOOTSTRAP_SERVERS or $REDIS_URL",
    )


def _check_reachable(settings: Settings, *, kafka_from: str, redis_from: str) -> None:
    """Fails fast, naming the address and where it came from (`localstack down` leaves
    `$REDIS_URL` and the others set), rather than deep inside the run."""
    client = settings.redis.client()
    try:
        client.ping()
    except redis.RedisError as exc:
        raise DemoError(
            f"cannot reach Redis at {settings.redis.url} ({redis_from}): {exc}"
        ) from None
    finally:
        client.close()
    admin = AdminClient(settings.kafka.admin_config(), logger=_rdkafka_log)
    try:
        admin.list_topics(timeout=15)
    except KafkaException as exc:
        raise DemoError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({kafka_from}): "
            f"{exc.args[0].str()}"
        ) from None


def _create_inputs(settings: Settings, partitions: Mapping[str, int]) -> None:
    admin = AdminClient(settings.kafka.admin_config(), logger=_rdkafka_log)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=count) for topic, count in partitions.items()],
        operation_timeout=30,
        request_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)
    for topic in partitions:
        topic_partitions(admin, topic)  # publishing checks the topic exists: wait for it


@dataclass(frozen=True, slots=True)
class _History:
    lines: list[str]
    valid: list[str]
    malformed: list[str]  # lines the offline replay dead-letters
    first: int  # event time of the earliest valid event
    last: int  # and of the latest


def _read_history(path: Path) -> _History:
    lines = path.read_text(encoding="utf-8").splitlines()
    valid: list[str] = []
    malformed: list[str] = []
    times: list[int] = []
    for line in lines:
        try:
            times.append(parse_event_json(line).at)
        except InvalidEventError:
            malformed.append(line)
            continue
        valid.append(line)
    if not times:
        raise DemoError(f"{path}: the generated history has no valid event")
    return _History(lines, valid, malformed, min(times), max(times))


def _publish(settings: Settings, serde: Serde, history: _History) -> None:
    """Valid events as Avro, as any producer upstream would; malformed lines as their raw
    JSON bytes, as a broken producer would write them: they reach the dead-letter topic."""
    errors = io.StringIO()
    try:
        published = publish_lines(
            (line.encode() for line in history.valid),
            "history.jsonl",
            settings,
            serde,
            errors=errors,
        )
    except PublishError as exc:
        raise DemoError(f"publishing the history: {exc}") from exc
    if published.invalid:
        raise DemoError(f"the publisher refused lines the demo took as valid:\n{errors.getvalue()}")
    producer = Producer(settings.kafka.producer_config(), logger=_rdkafka_log)
    for line in history.malformed:
        producer.produce(settings.topics.orders, line.encode())
    if producer.flush(30) > 0:
        raise DemoError("the malformed lines were not all delivered within 30 s")


def _end_offsets(settings: Settings, topics: Mapping[str, int]) -> dict[tuple[str, int], int]:
    admin = AdminClient(settings.kafka.admin_config(), logger=_rdkafka_log)
    specs = {
        TopicPartition(topic, p): OffsetSpec.latest()  # type: ignore[no-untyped-call]
        for topic, count in topics.items()
        for p in range(count)
    }
    return {
        (tp.topic, tp.partition): future.result().offset
        for tp, future in admin.list_offsets(specs).items()
    }


def _await_caught_up(
    watcher: _Watcher,
    instances: _Instances,
    *,
    ends: Mapping[tuple[str, int], int],
    history: _History,
    settings: Settings,
    policy: PolicyConfig,
    stall_timeout_s: float,
    console: Console,
) -> int:
    """Shows progress until the processor has caught up (module docstring); returns the
    event-time clock every order task reached."""
    total = sum(ends.values())
    lateness = policy.allowed_lateness_ms
    span = max(history.last - lateness - history.first, 1)
    mark: dict[int, int] | None = None  # the internal topic's ends once all was routed
    target: int | None = None  # the clock every task must reach, known then too
    last: Observation | None = None
    moved = time.monotonic()
    columns = (
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        routing = progress.add_task("routed", total=total, detail="")
        deciding = progress.add_task("decided", total=span, detail="")
        while True:
            instances.check()
            observed = _unless_transient(watcher.observe)
            if observed is not None:
                routed, slowest = observed.routed(ends), observed.slowest_clock()
                progress.update(routing, completed=routed, detail=f"{routed:,}/{total:,} events")
                if slowest is not None:
                    done = min(max(slowest - history.first, 0), span)
                    progress.update(deciding, completed=done, detail=f"event time {_when(slowest)}")
                if mark is None and (watermark := routed_watermark(observed, ends)) is not None:
                    mark, target = _unless_transient(watcher.internal_ends), watermark - lateness
                if (
                    mark is not None
                    and target is not None
                    and decided(observed, settings.by_order_topic, mark, target)
                ):
                    progress.update(deciding, completed=span)
                    return target
                if last is None or (routed, observed.clocks) != (last.routed(ends), last.clocks):
                    moved = time.monotonic()
                last = observed
            if time.monotonic() - moved > stall_timeout_s:
                raise DemoError(_stalled(last, ends, stall_timeout_s))
            time.sleep(_POLL_S)


def _stalled(last: Observation | None, ends: Mapping[tuple[str, int], int], waited: float) -> str:
    if last is None:
        return f"no answer from Kafka about the processor's progress for {waited:.0f} s"
    slowest = last.slowest_clock()
    at = "not started" if slowest is None else _when(slowest)
    return (
        f"no progress for {waited:.0f} s: {last.routed(ends):,} of {sum(ends.values()):,} "
        f"input records routed, the slowest order task's clock at {at} (a tracking update "
        "whose package_shipped no router has seen holds every clock until each input is "
        "routed allowed_lateness past it, or drained)"
    )


def _read_outputs(settings: Settings, serde: Serde) -> Iterator[dict[str, Any]]:
    """Every record of the output topics, read_committed, from the start to the end."""
    topics = settings.topics
    config = settings.kafka.consumer_config(f"{settings.application_id}-summary")
    consumer = Consumer(config | {"enable.partition.eof": True}, logger=_rdkafka_log)
    try:
        wanted = [topics.wallet, topics.fulfilment, topics.decisions, topics.dlq]
        metadata = consumer.list_topics(timeout=30).topics
        assignment = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in wanted
            for p in metadata[topic].partitions
        ]
        consumer.assign(assignment)
        remaining = {(tp.topic, tp.partition) for tp in assignment}
        deadline = time.monotonic() + 120
        while remaining:
            if time.monotonic() > deadline:
                raise DemoError(f"reading the outputs: no end after 120 s on {sorted(remaining)}")
            for message in consumer.consume(1000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    remaining.discard((message.topic() or "", message.partition() or 0))
                elif message.topic() == topics.dlq:
                    reason = dict(message.headers() or []).get(ERROR_CLASS)
                    text = reason.decode() if isinstance(reason, bytes) else str(reason)
                    yield {"type": "dead_letter", "reason": text}
                else:
                    yield serde.decode(message.value() or b"", message.topic() or "")
    finally:
        consumer.close()


def _remove_run(settings: Settings, topics: list[str], console: Console) -> None:
    """Deletes the run's topics, consumer group and Redis keys from services it was given."""
    app = settings.application_id
    try:
        admin = AdminClient(settings.kafka.admin_config(), logger=_rdkafka_log)
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except KafkaException as exc:  # a run that failed early did not create them all
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
        for future in admin.delete_consumer_groups([settings.group_id]).values():
            with contextlib.suppress(KafkaException):  # never created if it never committed
                future.result(timeout=60)
        client = settings.redis.client()
        try:
            delete_keys(client, f"{app}:")
        finally:
            client.close()
    except Exception as exc:  # clean-up of a run that may have failed: report, go on
        console.print(f"could not remove everything of {app}: {type(exc).__name__}: {exc}")


def _run(
    options: DemoOptions, out: TextIO, console: Console, stack: contextlib.ExitStack
) -> DemoReport:
    settings_file = (
        str(options.config) if options.config is not None else os.environ.get(CONFIG_ENV) or None
    )
    base = load_settings(options.config)
    bootstrap, kafka_from = _given(
        (options.bootstrap_servers, "--bootstrap-servers"),
        "KAFKA_BOOTSTRAP_SERVERS",
        f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS",
        (base.kafka.bootstrap_servers, settings_file),
    )
    redis_url, redis_from = _given(
        (options.redis_url, "--redis-url"),
        "REDIS_URL",
        f"{ENV_PREFIX}REDIS__URL",
        (base.redis.url, settings_file),
    )
    uses_given = bootstrap is not None or redis_url is not None
    app = f"demo-{uuid.uuid4().hex[:8]}"
    _run_settings(base, app, bootstrap, redis_url)  # a bad address fails before anything starts
    if redis_url is None:
        console.print("starting Redis...")
        redis_server = LocalRedis(appendonly=True)
        stack.callback(redis_server.close)
        redis_url = redis_server.start().url
    if bootstrap is None:
        console.print(
            f"starting Kafka {kafka_version()} (the first start fetches it with Maven)..."
        )
        kafka = LocalKafka()
        stack.callback(kafka.close)
        bootstrap = kafka.start().bootstrap_servers
    settings = _run_settings(base, app, bootstrap, redis_url)
    console.print(
        f"Kafka {settings.kafka.bootstrap_servers}, Redis {settings.redis.url}; "
        f"this run's topics and keys: {app}*"
    )
    topics = settings.topics
    partitions = {
        topics.orders: max(ORDERS_PARTITIONS, options.instances),
        topics.tracking: TRACKING_PARTITIONS,
    }
    _check_reachable(settings, kafka_from=kafka_from, redis_from=redis_from)
    if uses_given:
        names = [*(name for _, name in topics), settings.by_order_topic]
        stack.callback(_remove_run, settings, names, console)
    _create_inputs(settings, partitions)

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="refund-demo-")))
    path = workdir / "history.jsonl"
    write_history(path, orders=options.orders, seed=options.seed, days=HISTORY_DAYS)
    history = _read_history(path)
    policy = load_policy(settings.policy_file)
    serde = make_serde(settings)
    _publish(settings, serde, history)
    ends = _end_offsets(settings, partitions)
    malformed = len(history.malformed)
    console.print(
        f"published {options.orders:,} orders over {HISTORY_DAYS} days (seed {options.seed}): "
        f"{len(history.valid):,} events as Avro, {malformed} malformed "
        f"line{'' if malformed == 1 else 's'} as raw bytes"
    )

    metrics_url = _serve_metrics(settings, stack)
    stack.enter_context(batch_collector())
    instances = _Instances()
    stack.callback(instances.stop)
    started = time.monotonic()
    instances.start(settings, policy, options.instances)
    console.print(f"processing with {options.instances} instance(s)...")
    watcher = _Watcher(settings, ends)
    stack.callback(watcher.close)
    clock = _await_caught_up(
        watcher,
        instances,
        ends=ends,
        history=history,
        settings=settings,
        policy=policy,
        stall_timeout_s=options.stall_timeout_s,
        console=console,
    )
    seconds = time.monotonic() - started
    instances.stop()
    pending = watcher.pending_timers()
    live = summarize(_read_outputs(settings, serde))
    expected = summarize(
        output_to_dict(output) for output in replay(history.lines, "history.jsonl", policy)
    )
    report = DemoReport(
        options=options,
        application_id=app,
        events=sum(ends.values()),
        malformed=malformed,
        seconds=seconds,
        idle_wait_s=settings.idle_partition_wait_ms / 1000,
        clock=clock,
        live=live,
        replay=expected,
        pending=pending,
        metrics_url=metrics_url,
    )
    print_report(report, out)
    return report


def print_report(report: DemoReport, out: TextIO) -> None:
    """The summary on `out`, 80 columns wide on a pipe, but the closing command on one
    line whatever the width: cut in two, it does not paste into a shell."""
    printer = Console(file=out, markup=False)
    command = _explain_hint(report.options)
    for part in render_report(report):
        printer.print(part, soft_wrap=part == command)
        printer.print()


def run_demo(options: DemoOptions, out: TextIO, console: Console) -> DemoReport:
    """Runs the demo: progress on `console`, the summary on `out`.

    In the main thread, SIGTERM interrupts it like Ctrl-C (KeyboardInterrupt), and both
    are ignored while it cleans up, so that nothing it started is left behind.
    """
    main = threading.current_thread() is threading.main_thread()
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    if main:
        signal.signal(signal.SIGTERM, _interrupt)
    stack = contextlib.ExitStack()
    started = time.monotonic()
    try:
        report = _run(options, out, console, stack)
        console.print("stopping...")
        return report
    finally:
        if main:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.close()
            console.print(f"{time.monotonic() - started:.0f} s in all; nothing left running")
        finally:
            if main:
                signal.signal(signal.SIGINT, handlers[0])
                signal.signal(signal.SIGTERM, handlers[1])


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
