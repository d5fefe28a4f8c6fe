"""RedisTaskStore against a real redis-server: the commit protocol, fencing, recovery.

The StateStore contract itself runs in tests/test_store.py (params "redis" and
"redis-reopened"); `ReopeningStore` below is what the second one uses.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from processor.config import load_policy
from processor.engine import EXPIRE_ORPHANS_TIMER
from processor.events import (
    Event,
    InvalidEventError,
    PackageShipped,
    TrackingUpdate,
    parse_event_json,
)
from processor.generate import generate_history
from processor.localstack import die_with_parent, free_port, poll_until, stop_process, tail
from processor.localstack.redis import LocalRedis
from processor.outputs import Output
from processor.policy import EXPIRE_HELD_TIMER
from processor.redis_store import (
    FencedError,
    RedisTaskStore,
    StateAheadOfKafkaError,
    StateBehindKafkaError,
    StateMismatchError,
    delete_keys,
    parse_timer_member,
    timer_member,
)
from processor.replay import OfflineProcessor, replay
from processor.state import ORDER_STATE_ADAPTER, Held, OrderState, OrphanBucket
from processor.store import StateStore, Timer, order_owner, tracking_owner
from processor.testing import TestDriver
from tests.factories import at, scan

POLICY = load_policy()
TASK = "orders.events-3"
PARTITION = "orders.events-3"


# Helpers (also used by the contract suite in tests/test_store.py).


@contextmanager
def scratch_app(url: str) -> Iterator[tuple[redis.Redis, str]]:
    """A client and an app name no other test uses; the app's keys are deleted afterwards."""
    client = redis.Redis.from_url(url)
    app = f"test-{uuid.uuid4().hex[:12]}"
    try:
        yield client, app
    finally:
        delete_keys(client, f"{app}:")
        client.close()


class ReopeningStore:
    """A StateStore that commits every write (stage + apply, as if Kafka committed it) and
    then serves everything from a fresh RedisTaskStore claimed at the committed offsets:
    the whole contract suite, through Redis and `claim`."""

    def __init__(self, client: redis.Redis, *, app: str, task: str) -> None:
        self._client = client
        self._app = app
        self._task = task
        self._offset = 0
        self._store = self._reopen()

    def _reopen(self) -> RedisTaskStore:
        store = RedisTaskStore(self._client, app=self._app, task=self._task)
        store.claim({PARTITION: self._offset} if self._offset else {})
        return store

    def _commit(self) -> None:
        self._offset += 1
        self._store.stage({PARTITION: self._offset})
        self._store.apply()
        self._store = self._reopen()

    def load_order(self, order_id: str) -> OrderState | None:
        return self._store.load_order(order_id)

    def save_order(self, state: OrderState) -> None:
        self._store.save_order(state)
        self._commit()

    def load_orphans(self, tracking_number: str) -> OrphanBucket | None:
        return self._store.load_orphans(tracking_number)

    def save_orphans(self, bucket: OrphanBucket) -> None:
        self._store.save_orphans(bucket)
        self._commit()

    def delete_orphans(self, tracking_number: str) -> None:
        self._store.delete_orphans(tracking_number)
        self._commit()

    def order_for_tracking(self, tracking_number: str) -> str | None:
        return self._store.order_for_tracking(tracking_number)

    def link_tracking(self, tracking_number: str, order_id: str) -> None:
        self._store.link_tracking(tracking_number, order_id)
        self._commit()

    def set_timer(self, timer: Timer) -> None:
        self._store.set_timer(timer)
        self._commit()

    def cancel_timer(self, timer: Timer) -> None:
        self._store.cancel_timer(timer)
        self._commit()

    def pop_due_timer(self, clock: int) -> Timer | None:
        timer = self._store.pop_due_timer(clock)
        if timer is not None:
            self._commit()
        return timer

    def get_clock(self) -> int | None:
        return self._store.get_clock()

    def set_clock(self, clock: int) -> None:
        self._store.set_clock(clock)
        self._commit()


class CountingConnection(redis.Connection):
    """A real connection that counts how often it writes to the socket: one per round trip
    (a pipeline sends all its commands in one write)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


@contextmanager
def counting_client(url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    try:
        yield client
    finally:
        client.close()
        pool.disconnect()


@contextmanager
def round_trips() -> Iterator[Callable[[], int]]:
    """`with round_trips() as count:` ... `count()`: the CountingConnection sends since."""
    start = CountingConnection.sends
    yield lambda: CountingConnection.sends - start


# Fixtures.


@pytest.fixture
def scratch(redis_url: str) -> Iterator[tuple[redis.Redis, str]]:
    with scratch_app(redis_url) as pair:
        yield pair


@pytest.fixture
def client(scratch: tuple[redis.Redis, str]) -> redis.Redis:
    return scratch[0]


@pytest.fixture
def new_store(scratch: tuple[redis.Redis, str]) -> Callable[[], RedisTaskStore]:
    """A factory of stores for the same task: each call is another process's instance."""
    client, app = scratch
    return lambda: RedisTaskStore(client, app=app, task=TASK)


def _write_a_batch(store: StateStore) -> OrderState:
    state = OrderState("o1", seen={"e1": 1, "e2": 1})
    store.save_order(state)
    store.save_orphans(OrphanBucket("TN9", [Held("{}", "test:1", 5, "tracking:TN9")], {"e9": 1}))
    store.link_tracking("TN1", "o1")
    store.set_timer(Timer(100, order_owner("o1"), "deadline:p1"))
    store.set_clock(42)
    return state


def _task_keys(client: redis.Redis, store: RedisTaskStore) -> set[bytes]:
    return set(client.scan_iter(match=store.hash_tag + "*", count=1000))


def test_delete_keys_removes_a_prefix_plain_and_hash_tagged_and_nothing_else(
    scratch: tuple[redis.Redis, str],
) -> None:
    client, app = scratch
    store = RedisTaskStore(client, app=app, task=TASK)
    store.claim({})
    _write_a_batch(store)
    store.stage({"in": 1})
    store.apply()
    client.set(f"{app}:plain", b"1")
    kept = [f"other-{app}:x", f"{{other-{app}}}:x", f"{app}-sibling:x"]
    for key in kept:
        client.set(key, b"1")
    assert _task_keys(client, store)

    delete_keys(client, f"{app}:")

    assert not _task_keys(client, store)
    assert client.exists(f"{app}:plain") == 0
    assert client.exists(*kept) == len(kept)
    client.delete(*kept)


# The commit protocol.


def test_stage_then_apply_makes_the_batch_visible_to_a_fresh_instance(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    store = new_store()
    assert store.claim({}) == 1
    state = _write_a_batch(store)

    store.stage({PARTITION: 10})
    assert _task_keys(client, store) == {store.meta_key.encode(), store.pending_key.encode()}
    store.apply()
    assert not client.exists(store.pending_key)

    fresh = new_store()
    assert fresh.claim({PARTITION: 10}) == 2
    assert fresh.load_order("o1") == state
    assert fresh.load_orphans("TN9") == OrphanBucket(
        "TN9", [Held("{}", "test:1", 5, "tracking:TN9")], {"e9": 1}
    )
    assert fresh.order_for_tracking("TN1") == "o1"
    assert fresh.get_clock() == 42
    assert fresh.pop_due_timer(1_000) == Timer(100, order_owner("o1"), "deadline:p1")


def test_the_writer_keeps_reading_its_own_batch_after_apply(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    store = new_store()
    store.claim({})
    state = _write_a_batch(store)
    store.stage({PARTITION: 1})
    store.apply()

    assert store.load_order("o1") == state
    assert store.order_for_tracking("TN1") == "o1"
    assert store.get_clock() == 42
    store.delete_orphans("TN9")
    assert store.load_orphans("TN9") is None
    store.stage({PARTITION: 2})
    store.apply()
    fresh = new_store()
    fresh.claim({PARTITION: 2})
    assert fresh.load_orphans("TN9") is None


def test_discard_makes_nothing_visible(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    store = new_store()
    store.claim({})
    committed = OrderState("o1", seen={"e0": 1})
    store.save_order(committed)
    store.set_timer(Timer(50, order_owner("o1"), "deadline:p0"))
    store.stage({PARTITION: 1})
    store.apply()

    _write_a_batch(store)
    assert store.pop_due_timer(60) == Timer(50, order_owner("o1"), "deadline:p0")
    store.stage({PARTITION: 2})
    store.discard()

    assert not client.exists(store.pending_key)
    # The same instance is back at the committed state, timers included.
    assert store.load_order("o1") == committed
    assert store.load_orphans("TN9") is None
    assert store.order_for_tracking("TN1") is None
    assert store.get_clock() is None
    assert store.pop_due_timer(1_000) == Timer(50, order_owner("o1"), "deadline:p0")
    store.discard()  # an unstaged batch: nothing to delete

    fresh = new_store()
    fresh.claim({PARTITION: 1})
    assert fresh.load_order("o1") == committed
    assert fresh.order_for_tracking("TN1") is None
    assert fresh.get_clock() is None


def test_timer_counts_for_the_metrics_follow_what_is_committed(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    store = new_store()
    store.claim({})
    store.set_timer(Timer(100, order_owner("o1"), "deadline:p1"))
    store.set_timer(Timer(200, order_owner("o1"), EXPIRE_HELD_TIMER))
    store.set_timer(Timer(300, tracking_owner("TN1"), EXPIRE_ORPHANS_TIMER))
    assert (store.timers_pending, store.holders) == (0, 0)  # nothing committed yet
    store.stage({PARTITION: 1})
    store.apply()
    assert (store.timers_pending, store.holders) == (3, 2)

    assert store.pop_due_timer(250) == Timer(100, order_owner("o1"), "deadline:p1")
    assert store.pop_due_timer(250) == Timer(200, order_owner("o1"), EXPIRE_HELD_TIMER)
    assert store.timers_fired == 2
    store.stage({PARTITION: 2})
    store.discard()  # Kafka aborted the batch: nothing fired, nothing changed
    assert (store.timers_pending, store.holders, store.timers_fired) == (3, 2, 0)

    assert store.pop_due_timer(250) == Timer(100, order_owner("o1"), "deadline:p1")
    store.cancel_timer(Timer(300, tracking_owner("TN1"), EXPIRE_ORPHANS_TIMER))
    assert store.timers_fired == 1
    store.stage({PARTITION: 2})
    store.apply()
    assert (store.timers_pending, store.holders, store.timers_fired) == (1, 1, 0)

    fresh = new_store()
    fresh.claim({PARTITION: 2})
    assert (fresh.timers_pending, fresh.holders) == (1, 1)


def test_a_fenced_instance_cannot_stage_and_writes_nothing(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    zombie = new_store()
    zombie.claim({})
    _write_a_batch(zombie)
    owner = new_store()
    assert owner.claim({}) == 2

    with pytest.raises(FencedError, match="fenced in stage"):
        zombie.stage({PARTITION: 1})

    assert _task_keys(client, zombie) == {zombie.meta_key.encode()}
    zombie.discard()  # what the runner does after the Kafka abort: harmless
    assert owner.load_order("o1") is None
    with pytest.raises(RuntimeError, match="not claimed"):
        zombie.stage({PARTITION: 1})


def test_a_fenced_instance_cannot_apply_and_writes_nothing(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    zombie = new_store()
    zombie.claim({})
    _write_a_batch(zombie)
    zombie.stage({PARTITION: 1})
    owner = new_store()
    owner.claim({})  # the zombie's transaction never committed: its batch is set aside

    with pytest.raises(FencedError, match="fenced in apply"):
        zombie.apply()

    assert owner.load_order("o1") is None
    assert owner.get_clock() is None
    assert owner.pop_due_timer(1_000) is None
    owner.save_order(OrderState("o2"))
    owner.stage({PARTITION: 2})
    owner.apply()  # after the owner's own commit: the zombie's batch can never commit
    assert _task_keys(client, zombie) == {
        zombie.meta_key.encode(),
        zombie.order_key("o2").encode(),
    }


@pytest.mark.parametrize("step", ["stage", "apply"])
def test_redis_losing_the_task_mid_run_is_lost_state_not_a_fence(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore], step: str
) -> None:
    """With no epoch left, no owner will ever claim the task: read as a fence, the only
    instance waited for a rebalance that never came and decided nothing more."""
    store = new_store()
    store.claim({})
    _write_a_batch(store)
    if step == "apply":
        store.stage({PARTITION: 1})
    client.delete(store.meta_key)  # what a restart without persistence leaves

    with pytest.raises(StateBehindKafkaError, match="Redis has no epoch for the task"):
        store.stage({PARTITION: 1}) if step == "stage" else store.apply()


def _applied_3_and_staged_7(
    new_store: Callable[[], RedisTaskStore],
) -> tuple[RedisTaskStore, OrderState]:
    """An owner that applied a batch at offset 3 and staged the next, at 7, whose Kafka
    transaction has not committed yet; and the state that batch wrote."""
    owner = new_store()
    owner.claim({})
    owner.save_order(OrderState("o0"))
    owner.stage({PARTITION: 3})
    owner.apply()
    state = _write_a_batch(owner)
    owner.stage({PARTITION: 7})
    return owner, state


def test_a_stale_claim_leaves_the_current_owners_batch_for_the_next_claim(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    """The zombie read Kafka's offsets (3) just before the owner's transaction committed
    the batch it staged (7), and claims after: it must not drop that batch."""
    owner, state = _applied_3_and_staged_7(new_store)
    new_store().claim({PARTITION: 3})
    # ... the owner's transaction commits in Kafka: offset 7.
    with pytest.raises(FencedError, match="fenced in apply"):
        owner.apply()

    next_owner = new_store()
    next_owner.claim({PARTITION: 7})

    assert next_owner.load_order("o1") == state
    assert next_owner.get_clock() == 42
    assert not client.exists(next_owner.aside_key)


class _OutclaimedStore(RedisTaskStore):
    """A store whose claim loses the task to `rival`'s claim after reading the batches set
    aside and before applying the one Kafka committed: two members' claims racing."""

    rival: RedisTaskStore

    def _run_apply(
        self, epoch: int, offsets: str, keys: Sequence[str], *, batch: str, clear_aside: bool
    ) -> tuple[int, Any]:
        self.rival.claim({PARTITION: 7})
        return super()._run_apply(epoch, offsets, keys, batch=batch, clear_aside=clear_aside)


def test_a_claim_outclaimed_while_applying_a_set_aside_batch_is_fenced_and_writes_nothing(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    owner, state = _applied_3_and_staged_7(new_store)
    # ... the owner's transaction commits in Kafka (offset 7), and the owner dies.
    loser = _OutclaimedStore(client, app=owner.app, task=TASK)
    loser.rival = new_store()

    with pytest.raises(FencedError, match=r"fenced in claim \(applying a staged batch\)"):
        loser.claim({PARTITION: 7})

    assert loser.epoch is None
    with pytest.raises(RuntimeError, match="not claimed"):
        loser.stage({PARTITION: 8})
    winner = loser.rival
    assert winner.epoch == 3
    assert winner.load_order("o1") == state
    assert winner.get_clock() == 42
    assert not client.exists(winner.pending_key)


def test_a_claim_that_applies_one_set_aside_batch_keeps_the_others_until_its_own_apply(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    """Only the owner's apply after its own Kafka commit shows that no other batch can
    commit any more; a claim applying the batch Kafka committed does not."""
    _, state = _applied_3_and_staged_7(new_store)
    stale = new_store()
    stale.claim({PARTITION: 3})  # sets the owner's batch aside
    stale.save_order(OrderState("o2"))
    stale.stage({PARTITION: 5})
    # ... the owner's transaction commits in Kafka: offset 7.

    next_owner = new_store()
    next_owner.claim({PARTITION: 7})

    assert next_owner.load_order("o1") == state
    assert next_owner.load_order("o2") is None
    stale_batch = f"{next_owner.pending_key}@{stale.epoch}"
    assert client.smembers(next_owner.aside_key) == {stale_batch.encode()}
    assert client.hget(stale_batch, "o") == f'{{"{PARTITION}":5}}'.encode()
    next_owner.save_order(OrderState("o3"))
    next_owner.stage({PARTITION: 8})
    next_owner.apply()
    assert not client.exists(next_owner.aside_key, stale_batch)


def test_claim_applies_the_committed_batch_after_an_aborted_one_set_aside_before_it(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    """Crashes in a row: several before their Kafka commit, the last after it. (SMEMBERS
    order is the server's: with eight aborted batches, the committed one is rarely first.)"""
    first = new_store()
    first.claim({})
    first.save_order(OrderState("o0"))
    first.stage({PARTITION: 3})
    first.apply()
    for _ in range(8):
        crashed = new_store()
        crashed.claim({PARTITION: 3})
        crashed.save_order(OrderState("o9"))
        crashed.stage({PARTITION: 5})
        # ... the process dies before Kafka commits: Kafka still stands at offset 3.
    second = new_store()
    second.claim({PARTITION: 3})
    state = _write_a_batch(second)
    second.stage({PARTITION: 7})
    # ... Kafka commits the transaction, the process dies before apply().

    owner = new_store()
    owner.claim({PARTITION: 7})

    assert owner.load_order("o1") == state
    assert owner.load_order("o9") is None
    assert owner.get_clock() == 42


def test_claim_applies_a_pending_batch_whose_offsets_kafka_committed(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    crashed = new_store()
    crashed.claim({})
    state = _write_a_batch(crashed)
    crashed.stage({PARTITION: 7})
    # ... Kafka commits the transaction, the process dies before apply().

    owner = new_store()
    owner.claim({PARTITION: 7})

    assert not client.exists(owner.pending_key)
    assert owner.load_order("o1") == state
    assert owner.order_for_tracking("TN1") == "o1"
    assert owner.get_clock() == 42
    assert owner.pop_due_timer(1_000) == Timer(100, order_owner("o1"), "deadline:p1")
    with pytest.raises(FencedError):
        crashed.apply()


def test_claim_drops_a_pending_batch_whose_offsets_kafka_did_not_commit(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    first = new_store()
    first.claim({})
    first.save_order(OrderState("o0"))
    first.stage({PARTITION: 3})
    first.apply()
    _write_a_batch(first)
    first.stage({PARTITION: 7})
    # ... the process dies before Kafka commits: Kafka still stands at offset 3.

    owner = new_store()
    owner.claim({PARTITION: 3})

    assert not client.exists(owner.pending_key)
    assert owner.load_order("o0") == OrderState("o0")
    assert owner.load_order("o1") is None
    assert owner.get_clock() is None
    assert owner.pop_due_timer(1_000) is None


def test_claim_refuses_state_behind_kafka(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    store = new_store()
    store.claim({})
    _write_a_batch(store)
    store.stage({PARTITION: 5})
    store.apply()

    with pytest.raises(StateBehindKafkaError, match="Redis lost writes Kafka acknowledged"):
        new_store().claim({PARTITION: 9})

    for key in _task_keys(client, store):  # Redis came back empty (no persistence)
        client.delete(key)
    with pytest.raises(StateBehindKafkaError, match="Refusing to process"):
        new_store().claim({PARTITION: 5})


def test_the_owner_refuses_to_stage_on_redis_that_lost_what_it_applied(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    """Redis came back from a snapshot older than the last batch (a restart without
    fsync): the epoch is still ours, so only the applied offsets tell."""
    store = new_store()
    store.claim({})
    store.stage({PARTITION: 5})
    store.apply()
    snapshot = {key: cast(bytes, client.dump(key)) for key in _task_keys(client, store)}
    _write_a_batch(store)
    store.stage({PARTITION: 6})
    store.apply()
    for key in _task_keys(client, store):
        client.delete(key)
    for key, value in snapshot.items():
        client.restore(key, 0, value)

    store.save_order(OrderState("o2"))
    with pytest.raises(StateBehindKafkaError, match="Redis lost writes Kafka acknowledged"):
        store.stage({PARTITION: 7})
    assert not client.exists(store.pending_key)
    assert store.epoch is None


@pytest.mark.parametrize(
    ("replica", "error"),
    [("applied", "NOPENDING"), ("staged", "MISMATCH")],
)
def test_the_owner_refuses_to_apply_a_batch_redis_lost(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore], replica: str, error: str
) -> None:
    """A failover to a replica that lagged behind the stage: it holds no pending batch, or
    the one before, whose apply never reached it. Neither is the batch Kafka committed."""
    store = new_store()
    store.claim({})
    store.save_order(OrderState("o1"))
    store.stage({PARTITION: 1})
    snapshots = {
        "staged": {key: cast(bytes, client.dump(key)) for key in _task_keys(client, store)}
    }
    store.apply()
    snapshots["applied"] = {key: cast(bytes, client.dump(key)) for key in _task_keys(client, store)}
    store.save_order(OrderState("o2"))
    store.stage({PARTITION: 2})
    for key in _task_keys(client, store):
        client.delete(key)
    for key, value in snapshots[replica].items():
        client.restore(key, 0, value)

    with pytest.raises(redis.ResponseError, match=error):
        store.apply()
    assert not client.exists(store.order_key("o2"))
    assert client.exists(store.order_key("o1")) == (replica == "applied")
    assert client.hget(store.meta_key, "applied_offsets") == (
        f'{{"{PARTITION}":1}}'.encode() if replica == "applied" else None
    )


def test_claim_refuses_state_behind_kafka_even_with_a_pending_batch(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    store = new_store()
    store.claim({})
    store.stage({PARTITION: 5})
    store.apply()
    store.stage({PARTITION: 6})

    with pytest.raises(StateBehindKafkaError, match="pending batch"):
        new_store().claim({PARTITION: 9})
    assert client.smembers(store.aside_key) == {  # kept for whoever investigates
        f"{store.pending_key}@{store.epoch}".encode()
    }


def test_claim_refuses_state_ahead_of_kafka(new_store: Callable[[], RedisTaskStore]) -> None:
    store = new_store()
    store.claim({})
    store.stage({PARTITION: 5})
    store.apply()

    with pytest.raises(StateAheadOfKafkaError):
        new_store().claim({})
    with pytest.raises(StateAheadOfKafkaError):
        new_store().claim({PARTITION: 4})


def test_a_claim_refuses_two_staged_batches_with_the_committed_offsets(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    """Owner 1 stages and dies before its commit; owner 2 stages the same offsets, Kafka
    commits them, and it dies before its apply. Without batch markers in the offsets,
    which batch committed cannot be told: the claim applies neither (found by a mutation
    sweep: it applied both, the aborted one last about half the time)."""
    first = new_store()
    first.claim({})
    first.save_order(OrderState("o1"))
    first.stage({"P": 1})
    first.apply()
    for seen in ({"aborted": 1}, {"committed": 1}):
        owner = new_store()
        owner.claim({"P": 1})
        owner.save_order(OrderState("o1", seen=seen))
        owner.stage({"P": 2})

    with pytest.raises(StateMismatchError, match="2 staged batches carry"):
        new_store().claim({"P": 2})
    reader = new_store()
    reader.claim({"P": 1})  # Redis still stands where the first owner applied
    assert reader.load_order("o1") == OrderState("o1")


def test_a_zombies_discard_leaves_the_new_owners_staged_batch(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    """The zombie learns of its fence only from Kafka's abort: its discard must not delete
    the pending batch the new owner staged since."""
    zombie = new_store()
    zombie.claim({})
    _write_a_batch(zombie)
    zombie.stage({PARTITION: 1})
    owner = new_store()
    owner.claim({})
    owner.save_order(OrderState("o2"))
    owner.stage({PARTITION: 1})

    zombie.discard()  # its transaction aborted (fenced in Kafka)
    owner.apply()

    fresh = new_store()
    fresh.claim({PARTITION: 1})
    assert fresh.load_order("o2") == OrderState("o2")
    assert fresh.load_order("o1") is None


def test_claiming_the_task_again_forgets_what_the_instance_cached(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    """The task went to another instance and came back: what this one cached before is
    what that owner may have changed since."""
    store = new_store()
    store.claim({})
    store.save_order(OrderState("o1", seen={"e1": 1}))
    store.link_tracking("TN1", "o1")
    store.set_clock(10)
    store.stage({PARTITION: 1})
    store.apply()
    other = new_store()
    other.claim({PARTITION: 1})
    other.save_order(OrderState("o1", seen={"e1": 1, "e2": 1}))
    other.link_tracking("TN1", "o9")
    other.set_clock(20)
    other.stage({PARTITION: 2})
    other.apply()

    store.claim({PARTITION: 2})

    assert store.load_order("o1") == OrderState("o1", seen={"e1": 1, "e2": 1})
    assert store.order_for_tracking("TN1") == "o9"
    assert store.get_clock() == 20


def test_stage_replaces_a_leftover_pending_batch_of_its_own(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    """A discard whose DEL never reached Redis leaves the aborted batch pending: the next
    stage must replace it, not add to it."""
    store = new_store()
    store.claim({})
    _write_a_batch(store)
    store.stage({PARTITION: 1})
    leftover = cast(bytes, client.dump(store.pending_key))
    store.discard()
    client.restore(store.pending_key, 0, leftover)  # as if the DEL had been lost

    store.save_order(OrderState("o2"))
    store.stage({PARTITION: 1})
    store.apply()

    fresh = new_store()
    fresh.claim({PARTITION: 1})
    assert fresh.load_order("o2") == OrderState("o2")
    assert fresh.load_order("o1") is None
    assert fresh.order_for_tracking("TN1") is None
    assert fresh.get_clock() is None
    assert fresh.pop_due_timer(1_000) is None


def test_redis_holding_a_partition_kafka_has_no_commit_for_is_ahead_not_behind(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    store = new_store()
    store.claim({})
    store.stage({"a-0": 5, "b-0": 7})
    store.apply()

    with pytest.raises(StateAheadOfKafkaError):
        new_store().claim({"a-0": 5})  # b-0's committed offset expired or was reset
    with pytest.raises(StateAheadOfKafkaError):
        new_store().claim({"a-0": 5, "b-0": 6})
    with pytest.raises(StateBehindKafkaError):
        new_store().claim({"a-0": 5, "b-0": 8})


def test_state_survives_a_redis_crash_with_aof(redis_server: LocalRedis) -> None:
    with scratch_app(redis_server.url) as (client, app):
        store = RedisTaskStore(client, app=app, task=TASK)
        store.claim({})
        state = _write_a_batch(store)
        store.stage({PARTITION: 1})
        store.apply()
        store.save_order(OrderState("o2", seen={"e3": 1}))
        store.stage({PARTITION: 2})  # Kafka commits, then Redis dies before apply()

        redis_server.restart(crash=True)

        owner = RedisTaskStore(client, app=app, task=TASK)
        owner.claim({PARTITION: 2})
        assert owner.load_order("o1") == state
        assert owner.load_order("o2") == OrderState("o2", seen={"e3": 1})
        assert owner.order_for_tracking("TN1") == "o1"
        assert owner.get_clock() == 42
        assert owner.pop_due_timer(1_000) == Timer(100, order_owner("o1"), "deadline:p1")


# Protocol misuse is refused.


def test_the_protocol_refuses_misuse(new_store: Callable[[], RedisTaskStore]) -> None:
    store = new_store()
    with pytest.raises(RuntimeError, match="not claimed"):
        store.stage({PARTITION: 1})
    store.claim({})
    with pytest.raises(RuntimeError, match="nothing staged"):
        store.apply()
    store.save_order(OrderState("o1"))
    store.stage({PARTITION: 1})
    with pytest.raises(RuntimeError, match="is staged"):
        store.save_order(OrderState("o2"))
    with pytest.raises(RuntimeError, match="waiting for apply"):
        store.stage({PARTITION: 2})
    store.apply()
    store.stage({PARTITION: 2})  # an empty batch still moves the offsets
    store.apply()
    assert new_store().claim({PARTITION: 2}) == 2


def test_a_batch_that_changes_state_must_advance_an_offset(
    scratch: tuple[redis.Redis, str],
) -> None:
    """claim() tells a committed batch from an aborted one by its offsets alone."""
    client, app = scratch
    with counting_client(_url_of(client)) as counted:
        store = RedisTaskStore(counted, app, TASK)
        store.claim({})
        store.save_order(OrderState("o1"))
        store.stage({PARTITION: 4})
        store.apply()

        store.save_order(OrderState("o2"))
        with pytest.raises(ValueError, match="must advance an offset"):
            store.stage({PARTITION: 4})
        with pytest.raises(ValueError, match="goes back"):
            store.stage({PARTITION: 3})
        store.discard()
        with round_trips() as count:
            store.stage({PARTITION: 4})  # nothing changed, nothing moved: nothing to do
            store.apply()
            assert count() == 0
        assert RedisTaskStore(client, app, TASK).claim({PARTITION: 4}) == 2


def test_offsets_of_partitions_a_batch_leaves_out_are_kept(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    store = new_store()
    store.claim({})
    store.stage({"a-0": 5, "b-0": 7})
    store.apply()
    store.save_order(OrderState("o1"))
    store.stage({"a-0": 6})  # as in Kafka, b-0 stays committed at 7
    store.apply()

    owner = new_store()
    owner.claim({"a-0": 6, "b-0": 7})
    assert owner.load_order("o1") == OrderState("o1")


class LosingConnection(redis.Connection):
    """A real connection that, once armed, drops the next reply after Redis executed the
    command, as a network failure would; redis-py then retries the command."""

    armed = False

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().read_response(*args, **kwargs)
        if LosingConnection.armed:
            LosingConnection.armed = False
            self.disconnect()  # type: ignore[no-untyped-call]
            raise redis.ConnectionError("reply lost")
        return response


@pytest.mark.parametrize("lost", ["stage", "apply"])
def test_a_lost_reply_is_retried_safely(scratch: tuple[redis.Redis, str], lost: str) -> None:
    """A client that retries (redis-py's default unless built from a URL) runs a script
    again when its reply was lost: stage and apply are safe to run twice."""
    client, app = scratch
    pool = redis.ConnectionPool.from_url(
        _url_of(client), connection_class=LosingConnection, retry=Retry(NoBackoff(), 3)
    )
    losing = redis.Redis(connection_pool=pool)
    try:
        store = RedisTaskStore(losing, app, TASK)
        store.claim({})
        store.stage({PARTITION: 1})  # loads the scripts: the lost reply is a script's
        store.apply()
        state = _write_a_batch(store)
        LosingConnection.armed = lost == "stage"
        store.stage({PARTITION: 2})
        LosingConnection.armed = lost == "apply"
        store.apply()
        assert not LosingConnection.armed
    finally:
        LosingConnection.armed = False
        losing.close()
        pool.disconnect()

    owner = RedisTaskStore(client, app, TASK)
    owner.claim({PARTITION: 2})
    assert owner.load_order("o1") == state
    assert owner.pop_due_timer(1_000) == Timer(100, order_owner("o1"), "deadline:p1")


@pytest.mark.parametrize(("app", "task"), [("", "t"), ("a{b", "t"), ("app", "t}"), ("app", "")])
def test_names_that_would_break_the_hash_tag_are_refused(
    client: redis.Redis, app: str, task: str
) -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisTaskStore(client, app=app, task=task)


def test_a_decoding_client_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="bytes"):
        RedisTaskStore(redis.Redis.from_url(redis_url, decode_responses=True), "app", TASK)


# Keys, timers, round trips, cache.


def test_every_key_of_a_task_hashes_to_one_cluster_slot(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    store = new_store()
    store.claim({})
    odd = "o{x}y"  # braces in an id must not move its key to another slot
    store.save_order(OrderState(odd))
    _write_a_batch(store)
    store.save_orphans(OrphanBucket("T{N}"))
    store.stage({PARTITION: 1})
    names = [
        store.order_key("o1"),
        store.order_key(odd),
        store.orphans_key("T{N}"),
        store.orphans_key("TN9"),
        store.tracking_key,
        store.timers_key,
        store.meta_key,
        store.pending_key,
    ]
    slot = key_slot(store.hash_tag[1:-1].encode())  # what CLUSTER KEYSLOT answers
    assert {key_slot(name.encode()) for name in names} == {slot}
    store.apply()

    stored = _task_keys(client, store)
    assert {name.encode() for name in names} - {store.pending_key.encode()} == stored
    assert {key_slot(key) for key in stored} == {slot}
    assert store.order_key("o1") == "{" + f"{store.app}:{TASK}" + "}:order:o1"


def test_timer_members_sort_like_timers_and_round_trip() -> None:
    timers = [
        Timer(100, order_owner("o2"), "deadline:p1"),
        Timer(100, order_owner("o1"), "lost:p9"),
        Timer(100, order_owner("o1"), "deadline:p2"),
        Timer(100, order_owner("o1\x00"), "a"),
        Timer(100, order_owner("o"), "z\x00z"),
        Timer(100, tracking_owner("TN"), "expire-orphans"),
        Timer(-5, order_owner("ü"), "x"),
    ]
    for timer in timers:
        assert parse_timer_member(timer_member(timer)) == timer
    same_deadline = [t for t in timers if t.deadline == 100]
    assert sorted(same_deadline, key=timer_member) == sorted(same_deadline)


def test_redis_orders_tied_timers_as_they_pop(
    client: redis.Redis, new_store: Callable[[], RedisTaskStore]
) -> None:
    store = new_store()
    store.claim({})
    timers = [Timer(100, order_owner(f"o{i % 7}"), f"deadline:p{i}") for i in range(20)]
    timers.append(Timer(100, tracking_owner("TN"), "expire-orphans"))
    for timer in timers:
        store.set_timer(timer)
    store.stage({PARTITION: 1})
    store.apply()

    members = cast(list[bytes], client.zrange(store.timers_key, 0, -1))
    in_redis = [parse_timer_member(member) for member in members]
    fresh = new_store()
    fresh.claim({PARTITION: 1})
    popped = list(iter(lambda: fresh.pop_due_timer(100), None))
    assert in_redis == popped == sorted(timers)


def test_prefetch_loads_a_batch_in_one_round_trip(scratch: tuple[redis.Redis, str]) -> None:
    client, app = scratch
    url = _url_of(client)
    seed = RedisTaskStore(client, app=app, task=TASK)
    seed.claim({})
    for i in range(1_000):
        seed.save_order(OrderState(f"o{i}", seen={f"e{i}": 1}))
    for i in range(50):
        seed.save_orphans(OrphanBucket(f"TN{i}", seen={f"t{i}": 1}))
        seed.link_tracking(f"L{i}", f"o{i}")
    seed.set_timer(Timer(100, order_owner("o-timer"), "deadline:p1"))
    seed.set_timer(Timer(200, tracking_owner("TN-timer"), "expire-orphans"))
    seed.set_timer(Timer(900, order_owner("o-later"), "deadline:p1"))
    seed.stage({PARTITION: 1})
    seed.apply()

    with counting_client(url) as counted:
        store = RedisTaskStore(counted, app=app, task=TASK)
        store.claim({PARTITION: 1})
        order_ids = [f"o{i}" for i in range(1_000)] + ["missing"]
        numbers = [f"TN{i}" for i in range(50)] + [f"L{i}" for i in range(50)]
        with round_trips() as count:
            store.prefetch(order_ids, numbers, due_by=500)
            assert count() == 1
            for order_id in order_ids:
                store.load_order(order_id)
            for number in numbers:
                store.load_orphans(number)
                store.order_for_tracking(number)
            store.load_order("o-timer")
            store.load_orphans("TN-timer")
            store.prefetch(order_ids, numbers, due_by=500)  # all cached: no round trip
            assert count() == 1
            assert store.load_order("o-later") is None  # not due by 500: not prefetched
            assert count() == 2
        assert store.load_order("o7") == OrderState("o7", seen={"e7": 1})
        assert store.load_order("missing") is None
        assert store.load_orphans("TN3") == OrphanBucket("TN3", seen={"t3": 1})
        assert store.order_for_tracking("L3") == "o3"
        assert store.order_for_tracking("TN3") is None


def test_a_batch_of_thousands_of_writes_is_staged_and_applied_whole(
    new_store: Callable[[], RedisTaskStore],
) -> None:
    """The scripts pass arguments to Redis in chunks: none may be lost at a chunk's edge."""
    count = 2_500
    store = new_store()
    store.claim({})
    for i in range(count):
        store.save_order(OrderState(f"o{i}"))
        store.save_orphans(OrphanBucket(f"TN{i}"))
        store.link_tracking(f"L{i}", f"o{i}")
        store.set_timer(Timer(i, order_owner(f"o{i}"), "deadline:p1"))
    store.stage({PARTITION: 1})
    store.apply()
    for i in range(count):
        store.delete_orphans(f"TN{i}")
        store.cancel_timer(Timer(i, order_owner(f"o{i}"), "deadline:p1"))
    store.stage({PARTITION: 2})
    store.apply()

    fresh = new_store()
    fresh.claim({PARTITION: 2})
    ids = [f"o{i}" for i in range(count)]
    numbers = [f"TN{i}" for i in range(count)] + [f"L{i}" for i in range(count)]
    fresh.prefetch(ids, numbers)
    assert [fresh.load_order(o) for o in ids] == [OrderState(o) for o in ids]
    assert [fresh.load_orphans(f"TN{i}") for i in range(count)] == [None] * count
    assert [fresh.order_for_tracking(f"L{i}") for i in range(count)] == ids
    assert fresh.pop_due_timer(10 * count) is None


def test_a_batch_reads_each_order_once_and_the_cache_is_bounded_between_batches(
    scratch: tuple[redis.Redis, str],
) -> None:
    """A batch of a big backlog reads more orders than the cache holds: what it prefetched
    stays until it ends, and only then does the bound evict."""
    client, app = scratch
    seed = RedisTaskStore(client, app=app, task=TASK)
    seed.claim({})
    for i in range(3):
        seed.save_order(OrderState(f"o{i}"))
    seed.stage({PARTITION: 1})
    seed.apply()

    with counting_client(_url_of(client)) as counted:
        store = RedisTaskStore(counted, app=app, task=TASK, cache_size=2)
        store.claim({PARTITION: 1})
        with round_trips() as count:
            store.prefetch(["o0", "o1", "o2"])
            for order_id in ("o0", "o1", "o2"):
                assert store.load_order(order_id) == OrderState(order_id)
            assert count() == 1, "one prefetch, though the cache holds two"
            store.stage({PARTITION: 1})  # changes nothing, moves no offset: no round trip
            store.apply()

            store.load_order("o2")
            store.load_order("o1")
            assert count() == 1
            store.load_order("o0")  # the least recently used of the last batch's loads
            assert count() == 2


def test_loaded_orphan_buckets_are_copies(new_store: Callable[[], RedisTaskStore]) -> None:
    """The engine changes a bucket it loaded before saving it; an aborted batch must not
    leave that change behind in the store's cache."""
    store = new_store()
    store.claim({})
    store.save_orphans(OrphanBucket("TN", seen={"e1": 1}))
    store.stage({PARTITION: 1})
    store.apply()

    bucket = store.load_orphans("TN")
    assert bucket is not None
    bucket.seen["e2"] = 1
    assert store.load_orphans("TN") == OrphanBucket("TN", seen={"e1": 1})


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A one-node Redis Cluster (all 16384 slots on one redis-server): scripts and
    pipelines go through the cluster client and the server's cross-slot checks."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server not on PATH (.ci/run installs it)"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    args += ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
    args += ["--save", "", "--appendonly", "no"]
    args += ["--logfile", str(tmp_path / "redis.log")]
    proc = subprocess.Popen(die_with_parent(args), stdout=subprocess.DEVNULL)
    try:
        node = redis.Redis(port=port)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(tail(tmp_path / "redis.log"))
            try:
                return bool(node.ping())
            except redis.ConnectionError:
                return False

        assert poll_until(answers, 20, interval=0.05), tail(tmp_path / "redis.log")
        node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]

        def serving() -> bool:
            info = node.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            return b"cluster_state:ok" in info

        assert poll_until(serving, 20, interval=0.05), tail(tmp_path / "redis.log")
        node.close()
        cluster = RedisCluster(host="127.0.0.1", port=port)
        yield cluster
        cluster.close()
    finally:
        stop_process(proc)


def test_the_protocol_runs_on_a_redis_cluster(redis_cluster: RedisCluster) -> None:
    app = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisTaskStore(redis_cluster, app, TASK)
    store.claim({})
    state = _write_a_batch(store)
    store.stage({PARTITION: 1})
    store.apply()
    store.save_order(OrderState("o2"))
    store.stage({PARTITION: 2})  # and crash before apply(): the next owner applies it

    owner = RedisTaskStore(redis_cluster, app, TASK)
    owner.claim({PARTITION: 2})
    owner.prefetch(["o1", "o2"], ["TN1", "TN9"], due_by=1_000)
    assert owner.load_order("o1") == state
    assert owner.load_order("o2") == OrderState("o2")
    assert owner.order_for_tracking("TN1") == "o1"
    assert owner.pop_due_timer(1_000) == Timer(100, order_owner("o1"), "deadline:p1")
    owner.delete_orphans("TN9")
    owner.stage({PARTITION: 3})
    owner.discard()
    with pytest.raises(FencedError):
        store.apply()
    assert owner.load_orphans("TN9") is not None


# The engine over the store, batch by batch, through every crash point.


def _url_of(client: redis.Redis) -> str:
    kwargs = client.get_connection_kwargs()
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def _parse(lines: Sequence[str]) -> list[Event]:
    events: list[Event] = []
    for line in lines:
        with suppress(InvalidEventError):
            events.append(parse_event_json(line))
    return events


def _prefetch(store: RedisTaskStore, lines: Sequence[str]) -> None:
    """What the runner prefetches for a batch: its orders, its tracking numbers, the owners
    of the timers it will make due; then the orders its linked tracking updates go to
    (the replay's engine applies them in place, where the live one forwards them)."""
    events = _parse(lines)
    if not events:
        return
    order_ids = [e.order_id for e in events if e.order_id is not None]
    numbers = [e.tracking_number for e in events if isinstance(e, TrackingUpdate | PackageShipped)]
    due_by = max(e.at for e in events) - POLICY.allowed_lateness_ms
    store.prefetch(order_ids, numbers, due_by=due_by)
    linked = [store.order_for_tracking(n) for n in numbers]
    store.prefetch([o for o in linked if o is not None])


def test_the_engine_on_redis_agrees_with_the_replay_through_every_crash_point(
    scratch: tuple[redis.Redis, str],
) -> None:
    """Batches of a generated history through the engine on a RedisTaskStore, with a Kafka
    abort, a crash before stage, between stage and the Kafka commit, between the commit
    and apply, and a zombie, each at some batch: the committed outputs are exactly the
    offline replay's, and a batch costs at most four round trips."""
    client, app = scratch
    lines = generate_history(150, seed=11, days=40)
    expected = list(replay(lines, "h", POLICY))
    size = 40
    batches = [lines[i : i + size] for i in range(0, len(lines), size)]

    with counting_client(_url_of(client)) as counted:

        def start(offset: int) -> tuple[RedisTaskStore, OfflineProcessor]:
            store = RedisTaskStore(counted, app=app, task=TASK, cache_size=500)
            store.claim({PARTITION: offset} if offset else {})
            return store, OfflineProcessor(POLICY, store)

        def run(processor: OfflineProcessor, store: RedisTaskStore, index: int) -> list[Output]:
            _prefetch(store, batches[index])
            outputs: list[Output] = []
            for number, line in enumerate(batches[index], start=index * size + 1):
                if line.strip():
                    outputs += processor.feed(line, f"h:{number}")
            return outputs

        committed: list[Output] = []
        costs: list[int] = []
        store, processor = start(0)
        for index in range(len(batches)):
            offset, scenario = index * size, index % 8
            if scenario == 1:  # Kafka aborts the transaction
                run(processor, store, index)
                store.stage({PARTITION: offset + size})
                store.discard()
            elif scenario == 2:  # crash before stage
                run(processor, store, index)
                store, processor = start(offset)
            elif scenario == 3:  # crash between stage and the Kafka commit
                run(processor, store, index)
                store.stage({PARTITION: offset + size})
                store, processor = start(offset)
            elif scenario == 4:  # crash between the Kafka commit and apply
                committed += run(processor, store, index)
                store.stage({PARTITION: offset + size})
                store, processor = start(offset + size)
                continue
            elif scenario == 5:  # a rebalance: the old owner goes on as a zombie
                zombie, zombie_processor = store, processor
                store, processor = start(offset)
                run(zombie_processor, zombie, index)
                with pytest.raises(FencedError):
                    zombie.stage({PARTITION: offset + size})
            with round_trips() as count:
                committed += run(processor, store, index)
                store.stage({PARTITION: offset + size})
                store.apply()
                costs.append(count() - (scenario == 1))

    assert committed == expected
    # prefetch, prefetch of the linked orders, stage, apply; after a discard that touched
    # timers, one more to reload them (subtracted above); the first batch also loads the
    # scripts into the server if it has not seen them (EVALSHA, SCRIPT LOAD, EVALSHA).
    assert max(costs[1:]) == 4


def test_an_orphan_bucket_on_redis_keeps_only_the_updates_still_waiting(
    scratch: tuple[redis.Redis, str],
) -> None:
    """Redis loads copies of buckets: after its oldest update expires, the engine must save
    what is left, or that update expires again (or is forwarded) later."""
    client, app = scratch
    store = RedisTaskStore(client, app=app, task=TASK)
    store.claim({})
    driver = TestDriver(POLICY, store)
    driver.pipe(scan("in_transit", "TN-X", order_id=None, when=at(1)))
    driver.pipe(scan("in_transit", "TN-X", order_id=None, when=at(5)))
    driver.advance_to(at(8))
    driver.advance_to(at(12))

    assert [(d.reason, d.origin) for d in driver.dead_letters()] == [
        ("unknown_tracking_number", "test:1"),
        ("unknown_tracking_number", "test:2"),
    ]


# Figures (printed; run with -s to see them).


def _realistic_states(count: int) -> list[OrderState]:
    lines = generate_history(count, seed=5, days=30)
    driver = TestDriver(POLICY)
    for line in lines:
        driver.pipe(line)
    ids = dict.fromkeys(e.order_id for e in _parse(lines) if e.order_id is not None)
    states = [driver.order(order_id) for order_id in ids]
    return [s for s in states if s is not None][:count]


def test_batch_costs_are_measured(scratch: tuple[redis.Redis, str]) -> None:
    client, app = scratch
    states = _realistic_states(1_000)
    assert len(states) == 1_000
    size = sum(len(ORDER_STATE_ADAPTER.dump_json(s)) for s in states) / len(states)
    stage_us: list[float] = []
    apply_us: list[float] = []
    prefetch_us: list[float] = []
    ids = [s.order_id for s in states]
    for round_ in range(5):
        store = RedisTaskStore(client, app=app, task=TASK)
        store.claim({PARTITION: round_} if round_ else {})
        for state in states:
            store.save_order(state)
        began = time.perf_counter()
        store.stage({PARTITION: round_ + 1})
        staged = time.perf_counter()
        store.apply()
        applied = time.perf_counter()
        stage_us.append((staged - began) * 1e6 / len(states))
        apply_us.append((applied - staged) * 1e6 / len(states))

        reader = RedisTaskStore(client, app=app, task=TASK)
        reader.claim({PARTITION: round_ + 1})
        began = time.perf_counter()
        reader.prefetch(ids)
        prefetch_us.append((time.perf_counter() - began) * 1e6 / len(states))
        assert reader.load_order(ids[0]) == states[0]
    both = [a + b for a, b in zip(stage_us, apply_us, strict=True)]
    print(
        f"\n1,000 realistic orders ({size:.0f} B JSON each), median of 5: "
        f"stage {statistics.median(stage_us):.1f} us/order, "
        f"apply {statistics.median(apply_us):.1f} us/order, "
        f"stage+apply {statistics.median(both):.1f} us/order; "
        f"prefetch {statistics.median(prefetch_us):.1f} us/order"
    )
