"""Exactly once under faults (SPEC section 7): SIGKILLed instances, a zombie, a Redis restart.

Each test publishes a generated history, runs real `refund-processor run` instances in one
consumer group against the real broker and a private Redis with AOF (`appendfsync
always`), injects its fault while they work, and ends the same way: once every refund
the offline replay issues is on the wallet topic, every instance is stopped, every
transaction has ended, and the wallet topic read with read_committed must hold exactly
the replay's refund commands: none missing, none twice.

The default sizes keep each test well under a minute; the `slow` variants (`make
test-full`) are the full-size ones. Instances use the broker's minimum session timeout
(`FAST_FAILOVER`), so a dead or stopped member loses its partitions in about 6 s.
"""

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer

from processor.generate import generate_history
from processor.localstack.kafka import KafkaAdmin, LocalKafka
from processor.localstack.redis import LocalRedis
from processor.redis_index import RedisTrackingIndex
from processor.redis_store import LOST_STATE_ADVICE
from tests.live import (
    FAST_FAILOVER,
    Instance,
    LiveHarness,
    RefundKey,
    await_condition,
    expected_refunds,
)

#: Small batches: many more transactions, so faults land in every step of one.
BATCH_RECORDS = 100
#: How long the broker stalls: over the runner's transaction.timeout.ms (10 s).
STALL_S = 40
#: How many chunks `_publish_with_bad_records` publishes, each followed by bad records.
BAD_RECORD_CHUNKS = 10


@pytest.fixture
def live(
    kafka_bootstrap: str,
    redis_server: LocalRedis,
    admin: KafkaAdmin,
    unique_topic: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[LiveHarness]:
    """A harness whose instances use the private, restartable Redis of `redis_server`."""
    with LiveHarness(
        kafka_bootstrap,
        redis_server.url,
        admin,
        unique_topic,
        tmp_path,
        librdkafka=FAST_FAILOVER,
        # Purges all along: a purge past what a task committed would lose routed events.
        env={"REFUND_MAX_BATCH_RECORDS": str(BATCH_RECORDS), "REFUND_PURGE_INTERVAL_MS": "200"},
    ) as harness:
        yield harness


@dataclass(frozen=True, slots=True)
class Size:
    orders: int
    instances: int
    faults: int


SMALL = Size(orders=400, instances=2, faults=4)
FULL = Size(orders=5000, instances=3, faults=12)
SIZES = [
    pytest.param(SMALL, id="small"),
    pytest.param(FULL, id="full", marks=pytest.mark.slow),
]


def _generated(orders: int, seed: int) -> tuple[list[str], set[RefundKey]]:
    """A history and the refunds the replay issues for it: enough for a fault to matter."""
    lines = generate_history(orders, seed=seed)
    expected = expected_refunds(lines)
    assert len(expected) > 20
    return lines, expected


def _history(live: LiveHarness, orders: int, seed: int) -> set[RefundKey]:
    lines, expected = _generated(orders, seed)
    live.publish(lines)
    return expected


def _publish_with_bad_records(live: LiveHarness, lines: list[str], part: int) -> set[bytes]:
    """Publishes `lines` in chunks, each followed by an undecodable record on every input:
    bad records all along every partition, where an offset held behind undecided events
    reads them again after a rewind. Returns the bad records (unique per `part`)."""
    producer = Producer(live.settings.kafka.producer_config())
    bad: set[bytes] = set()
    chunk = len(lines) // BAD_RECORD_CHUNKS + 1
    for start in range(0, len(lines), chunk):
        live.publish(lines[start : start + chunk])
        for topic in (live.topics["orders"], live.topics["tracking"]):
            value = b"\xffnot avro %d.%d" % (part, len(bad))
            producer.produce(topic, key=value, value=value)
            bad.add(value)
        assert producer.flush(30) == 0
    return bad


def _assert_exactly_once(
    seen: list[RefundKey], expected: set[RefundKey], live: LiveHarness
) -> None:
    twice = {key: n for key, n in Counter(seen).items() if n > 1}
    assert not twice, f"{len(twice)} refund commands issued more than once: {list(twice)[:5]}"
    missing, extra = expected - set(seen), set(seen) - expected
    assert not missing, f"{len(missing)} refunds missing\n{live.logs()[-8000:]}"
    assert not extra, f"{len(extra)} refunds the replay does not issue: {sorted(extra)[:5]}"


@pytest.mark.parametrize("size", SIZES)
def test_sigkilled_instances_pay_every_refund_exactly_once(live: LiveHarness, size: Size) -> None:
    """A driver SIGKILLs a random instance every couple of seconds and restarts it.

    Most kills land at a random moment of normal work: the group is stable again, the
    order tasks commit again (the previous victim's open transaction, which holds back
    every read_committed reader of the partitions it wrote, has been aborted), then
    0.2-2.5 s pass. Every third kill lands right after the previous restart instead,
    while the group rebalances and tasks are being claimed. The first lands as soon as
    the first refunds are committed.
    """
    # The broker aborts a dead instance's transaction after this: 6 s instead of the
    # runner's 10 s keeps the stall after each kill about as long as the dead member's
    # session (6 s, the broker's minimum), so kills can come every few seconds.
    live.configure(librdkafka={"transaction.timeout.ms": "6000"})
    rng = random.Random(size.orders)
    expected = _history(live, size.orders, seed=21)
    names = {f"i{n}" for n in range(size.instances)}
    for name in sorted(names):
        live.start(name)
    progress: list[int] = []
    with live.reader() as reader:

        def some_refunds_seen() -> bool:
            reader.poll(0.1)
            return bool(reader.seen)

        # The first kill as soon as refunds come out: on a fast machine the small history
        # was done within the waits below (CI on 2026-12-07).
        await_condition(some_refunds_seen, timeout_s=120, what="the first refunds")
        for kill in range(size.faults):
            if kill > 0:
                if kill % 3 != 2:
                    live.await_stable_group(names, timeout_s=60)
                    live.await_task_progress(timeout_s=60)
                reader.poll(rng.uniform(0.2, 2.5))
            victim = rng.choice(live.running())
            live.kill(victim)
            progress.append(len(set(reader.seen) & expected))
            live.assert_none_failed()
            live.start(victim.name)
        reader.read_until(expected, timeout_s=240)
        live.stop_all()
        live.assert_none_failed()
        seen = reader.read_all(timeout_s=120)

    _assert_exactly_once(seen, expected, live)
    assert sum(i.killed for i in live.instances) == size.faults
    print(f"distinct refunds seen at each kill: {progress} of {len(expected)}")
    # The kills hit work in progress, not an idle processor.
    assert progress[0] < len(expected), progress


@pytest.mark.parametrize("size", SIZES)
def test_a_stalled_instance_that_comes_back_writes_nothing(live: LiveHarness, size: Size) -> None:
    """SIGSTOP one instance until its partitions (and tasks) moved, then SIGCONT it.

    The zombie wakes up in the middle of whatever it was doing. Kafka's group generation
    fences its offsets and its transaction, the epochs the new owners bumped fence its
    Redis writes: it must write neither state nor output, and find out it was fenced.
    If it had sent offsets into its open transaction, the new owners could only read the
    committed offsets (and claim) once the broker aborted that transaction on its timeout,
    which also fenced the zombie's producer: then it exits on that fatal error when it
    wakes up, for its supervisor to restart it (most runs). Either way its log says so.
    """
    expected = _history(live, size.orders, seed=31)
    names = {f"i{n}" for n in range(size.instances)}
    for name in sorted(names):
        live.start(name)
    with live.reader() as reader:
        tasks = live.await_stable_group(names, timeout_s=60)
        zombie = next(i for i in live.running() if i.name == "i0")
        zombie.process.send_signal(signal.SIGSTOP)
        marks = {zombie.name: len(zombie.log_text())}
        reader.poll(1.0)
        assert len(set(reader.seen)) < len(expected), "the work was done before the stall"
        held = live.task_epochs()
        others = names - {"i0"}
        try:
            moved = live.await_stable_group(others, timeout_s=60)
            assert set().union(*moved.values()) >= tasks["i0"]
            await_condition(
                lambda: all(live.task_epochs().get(t, 0) > held.get(t, 0) for t in tasks["i0"]),
                timeout_s=60,
                what="the new owners claimed the zombie's tasks",
            )
        finally:
            # If the stall outlasted the zombie's transaction timeout in mid-transaction,
            # the broker aborted that transaction and fenced its producer (a fatal error),
            # or a Kafka call of its batch timed out meanwhile: either way the processor
            # exits for its supervisor to restart it.
            zombie.may_fail_with = (
                "This instance has been fenced by a newer instance",
                "TransactionStuckError",
            )
            zombie.process.send_signal(signal.SIGCONT)
        await_condition(
            lambda: (
                "partitions lost" in zombie.log_text()[marks[zombie.name] :]
                or (not zombie.failed() and not zombie.running)
            ),
            timeout_s=60,
            what="the resumed instance learns it lost its partitions, or exits fenced",
        )
        reader.read_until(expected, timeout_s=240)
        live.stop_all()
        live.assert_none_failed()
        seen = reader.read_all(timeout_s=120)

    _assert_exactly_once(seen, expected, live)
    assert not zombie.failed(), zombie.log_text()[-5000:]


def test_a_claim_stalled_past_a_newer_owners_commits_leaves_the_task_to_it(
    live: LiveHarness,
) -> None:
    """i0 stops itself in its first claim, after it read the committed offsets; i1 takes
    every task and decides the whole history; i0 wakes up to find Redis ahead of what it
    read. The offsets moved since its read, so the task is another member's: i0 leaves it
    to the rebalance it is about to notice instead of stopping on an error
    (docs/state-store.md, "A zombie's claim"), and every refund is paid once."""
    expected = _history(live, SMALL.orders, seed=37)
    stalled = live.start_stalled("i0", "claim")
    live.start("i1")
    with live.reader() as reader:
        reader.read_until(expected, timeout_s=240)
        stalled.process.send_signal(signal.SIGCONT)
        await_condition(
            lambda: "claim raced a newer owner" in stalled.log_text(),
            timeout_s=60,
            what="i0 finds its read of the offsets overtaken and leaves the task",
        )
        live.stop_all()
        live.assert_none_failed()
        seen = reader.read_all(timeout_s=120)

    _assert_exactly_once(seen, expected, live)


def test_a_late_claim_of_input_partitions_is_taken_back_by_their_owner(
    live: LiveHarness,
) -> None:
    """i0 stops itself in its first claim of its input partitions, before the script runs;
    i1 takes everything over and decides the whole history. i0 wakes, claims the inputs
    late (their epochs go past i1's) and stops again, for good: it never rejoins, so no
    rebalance sorts it out. i1's progress reports are refused, but its transactions still
    commit, so it claims the inputs again and its reports stand (docs/live.md, "Exactly
    once"): otherwise every router would read them as unknown from then on."""
    expected = _history(live, SMALL.orders, seed=41)
    stalled = live.start_stalled("i0", "inputs")
    owner = live.start("i1")
    inputs = {
        f"{topic}:{partition}"
        for topic in (live.topics["orders"], live.topics["tracking"])
        for partition in live.partitions(topic)
    }
    index = RedisTrackingIndex(redis.Redis.from_url(live.redis_url), live.app)
    with live.reader() as reader:
        reader.read_until(expected, timeout_s=240)
        marks = live.log_marks(owner.name)
        stalled.process.send_signal(signal.SIGCONT)
        await_condition(
            lambda: stalled.stopped_after("claimed late"),
            timeout_s=60,
            what="i0 claims its inputs late and stops for good",
        )
        live.await_logged(marks, "claiming input partitions again", timeout_s=60)
        await_condition(
            lambda: set(index.read_progress()) == inputs,
            timeout_s=60,
            what="i1's progress stands for every input partition",
        )
        live.kill(stalled)
        live.stop_all()
        live.assert_none_failed()
        seen = reader.read_all(timeout_s=120)

    _assert_exactly_once(seen, expected, live)


def _producers_first_keys(keys: list[bytes]) -> set[bytes]:
    """The keys among `keys` that are the first record a producer wrote to the internal
    topic (`Runner._new_key`: its transactional id, then a counter from 0)."""
    return {key for key in keys if key.rpartition(b":")[2] == b"0"}


def test_a_stalled_instance_that_comes_back_commits_no_reports(live: LiveHarness) -> None:
    """i0 stops itself in its first batch, as it reports its input partitions, which have
    nothing committed and nothing to read; i1 takes every partition over. i0 wakes up to
    finish that batch: reports only, so it had no offset to send, and its transaction,
    without the group's metadata, committed, a zombie's reports in i1's tasks' partitions.
    Now it sends its inputs' offsets with the group's metadata: the broker refuses them,
    and nothing of the batch commits (docs/live.md, "Exactly once")."""
    live.configure(env={"REFUND_PURGE_INTERVAL_MS": "0"})  # every record stays to be read
    zombie = live.start_stalled("i0", "progress")
    live.start("i1")
    live.await_stable_group({"i1"}, timeout_s=60)
    live.await_task_progress(timeout_s=60)
    by_order = live.settings.by_order_topic
    (owners_first,) = _producers_first_keys(live.committed_keys(by_order))
    marks = live.log_marks(zombie.name)
    zombie.process.send_signal(signal.SIGCONT)
    live.await_logged(marks, "partitions lost", timeout_s=60)  # i0 ends its batch
    live.await_logged(marks, "partitions assigned", timeout_s=60)  # and rejoins the group

    committed = _producers_first_keys(live.committed_keys(by_order))
    live.stop_all()
    live.assert_none_failed()
    assert committed == {owners_first}, "the zombie's batch committed"


def _assert_stops_on_lost_state(instance: Instance) -> None:
    """The instance exits 1 on a StateBehindKafkaError that says what to do."""
    await_condition(lambda: not instance.running, timeout_s=60, what="the instance stops")
    assert instance.process.returncode == 1
    (stopped,) = [
        line["exception"][0]
        for line in instance.log_lines()
        if line["event"] == "processor stopped on an error"
    ]
    assert stopped["exc_type"] == "StateBehindKafkaError"
    assert stopped["exc_value"].endswith(LOST_STATE_ADVICE)


def test_a_router_whose_progress_redis_lost_stops_the_process(live: LiveHarness) -> None:
    """Only the progress hash goes, so the order tasks, their state intact, would go on:
    the router alone has to stop the instance, as an instance holding no task must. It
    used to take the missing epochs and route on (docs/live.md, "Exactly once")."""
    live.publish(generate_history(20, seed=47, malformed_share=0))
    instance = live.start("i0")
    live.await_stable_group({"i0"}, timeout_s=60)
    live.await_task_progress(timeout_s=60)
    instance.may_fail_with = ("Redis has no epoch for their router's progress",)

    redis.Redis.from_url(live.redis_url).delete(f"{live.app}:router-progress")

    _assert_stops_on_lost_state(instance)
    live.assert_none_failed()


def test_a_router_without_tasks_refuses_a_redis_that_lost_everything_between_runs(
    live: LiveHarness,
) -> None:
    """A run commits tasks and inputs; Redis loses everything (FLUSHALL); the next run's
    instance owns only input partitions, since test consumers in the group hold every
    partition of the orders and the internal topic. Its claim must find the tasks' state
    gone, Kafka having committed their offsets, and stop, writing nothing: it used to
    claim its inputs at a first epoch and route on, with the tracking index lost
    (docs/live.md, "Exactly once")."""
    live.publish(generate_history(20, seed=53, malformed_share=0))
    live.start("i0")
    live.await_stable_group({"i0"}, timeout_s=60)
    live.await_task_progress(timeout_s=60)
    live.stop_all()
    live.assert_none_failed()
    client = redis.Redis.from_url(live.redis_url)
    client.flushall()

    by_order = live.settings.by_order_topic
    holders = [
        Consumer(live.settings.kafka.consumer_config(live.settings.group_id) | {"client.id": name})
        for name in ("a0", "a1", "a2")  # member ids sort before the processor's: range
    ]
    try:
        for holder in holders:
            holder.subscribe([live.topics["orders"], by_order])

        def holding(names: set[str]) -> bool:
            for holder in holders:
                holder.poll(0.1)  # serves the rebalances
            assignment = live.group_assignment()
            return assignment is not None and set(assignment) == names

        await_condition(lambda: holding({"a0", "a1", "a2"}), 60, "the holders own the tasks")
        router = live.start("i1")
        router.may_fail_with = ("StateBehindKafkaError",)
        await_condition(
            lambda: holding({"a0", "a1", "a2", "i1"}) or not router.running,
            timeout_s=60,
            what="i1 joins, owning only tracking partitions, or stops",
        )
        await_condition(
            lambda: holding({"a0", "a1", "a2"}) and not router.running,
            timeout_s=60,
            what="i1 stops",
        )
    finally:
        for holder in holders:
            holder.close()

    _assert_stops_on_lost_state(router)
    assert client.dbsize() == 0, "the refused claim wrote to Redis"
    assert not any(line["event"] == "task claimed" for line in router.log_lines())


@pytest.mark.parametrize("size", SIZES)
def test_a_redis_restart_mid_run_loses_and_repeats_nothing(
    live: LiveHarness, redis_server: LocalRedis, size: Size
) -> None:
    """Redis dies (SIGKILL, or a clean shutdown) while the instances work, stays down
    until every instance has seen it fail, and comes back with its AOF. The instances
    retry with backoff and go on. A part of the history is published before the
    instances start and one during each outage, so work goes on across every restart
    however fast the instances are."""
    lines, expected = _generated(size.orders, seed=41)
    restarts = 1 if size is SMALL else 3
    step = len(lines) // (restarts + 1) + 1
    first, *later = [lines[start : start + step] for start in range(0, len(lines), step)]
    assert len(later) == restarts
    bad = _publish_with_bad_records(live, first, part=0)
    names = {f"i{n}" for n in range(size.instances)}
    for name in sorted(names):
        live.start(name)
    with live.reader() as reader:
        live.await_stable_group(names, timeout_s=60)
        for restart, lines_now in enumerate(later):
            marks = live.log_marks()
            redis_server.stop(crash=restart % 2 == 0)
            try:
                live.await_logged(marks, "Redis unavailable", timeout_s=60)
                bad |= _publish_with_bad_records(live, lines_now, part=restart + 1)
            finally:
                redis_server.start()
            live.assert_none_failed()
        reader.read_until(expected, timeout_s=240)
        live.stop_all()
        live.assert_none_failed()
        seen = reader.read_all(timeout_s=120)

    _assert_exactly_once(seen, expected, live)
    # Every transaction has ended: a dead letter written twice would be here by now.
    dead = Counter(value for _, _, value in live.read_dead_letters(len(bad) + 1, timeout_s=5))
    assert {value for value in dead if value in bad} == bad
    assert not {value: n for value, n in dead.items() if n > 1}, "dead-lettered twice"


def test_a_broker_stalled_past_the_transaction_timeout_is_survived(
    redis_url: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    """The broker (a private one) stops answering for longer than transaction.timeout.ms
    while an instance works, and comes back: the instance goes on, or stops so that its
    supervisor (here the test) restarts it, and it stops on SIGTERM. It used to wait
    for ever inside the next batch's commit, deaf to SIGTERM."""
    lines, expected = _generated(200, seed=43)
    half = len(lines) // 2
    with (
        LocalKafka() as kafka,
        LiveHarness(
            kafka.bootstrap_servers,
            redis_url,
            KafkaAdmin(kafka.bootstrap_servers),
            unique_topic,
            tmp_path,
        ) as live,
    ):
        live.publish(lines[:half])
        live.start("i0")
        live.await_stable_group({"i0"}, timeout_s=60)
        live.await_task_progress(timeout_s=60)
        os.kill(kafka.pid, signal.SIGSTOP)
        try:
            time.sleep(STALL_S)  # the fault itself, not a wait for something
        finally:
            os.kill(kafka.pid, signal.SIGCONT)
        live.publish(lines[half:])
        with live.reader() as reader:

            def refunded_or_restarted() -> bool:
                if not live.running():
                    live.start("i0")  # exited 1 on a fatal error: its supervisor's move
                reader.poll(0.5)
                return expected <= set(reader.seen)

            await_condition(refunded_or_restarted, timeout_s=180, what="every refund")
            live.stop_all()
            seen = reader.read_all(timeout_s=120)
    _assert_exactly_once(seen, expected, live)
