"""The state-store contract, run against every backend the engine can use."""

from collections.abc import Iterator

import pytest

from processor.redis_store import RedisTaskStore
from processor.state import Held, OrderState, OrphanBucket
from processor.store import InMemoryStore, StateStore, Timer, order_owner, tracking_owner
from tests.test_redis_store import ReopeningStore, scratch_app


@pytest.fixture(params=["memory", "redis", "redis-reopened"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    """Every backend: "memory"; "redis", one RedisTaskStore (reads see its overlay);
    "redis-reopened", every write staged, applied and read back through a fresh claim."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    with scratch_app(request.getfixturevalue("redis_url")) as (client, app):
        if request.param == "redis":
            redis_store = RedisTaskStore(client, app=app, task="orders.events-0")
            redis_store.claim({})
            yield redis_store
        else:
            yield ReopeningStore(client, app=app, task="orders.events-0")


def test_an_order_round_trips(store: StateStore) -> None:
    state = OrderState("o1", seen={"e1": 1, "e2": 1})
    store.save_order(state)

    assert store.load_order("o1") == state
    assert store.load_order("o2") is None


def test_orphan_buckets_round_trip_and_delete(store: StateStore) -> None:
    bucket = OrphanBucket("TN1", [Held("{}", "test:1", 5, "tracking:TN1")], {"e1": 1})
    store.save_orphans(bucket)
    assert store.load_orphans("TN1") == bucket

    store.delete_orphans("TN1")
    assert store.load_orphans("TN1") is None


def test_the_tracking_index_maps_numbers_to_orders(store: StateStore) -> None:
    assert store.order_for_tracking("TN1") is None
    store.link_tracking("TN1", "o1")
    assert store.order_for_tracking("TN1") == "o1"


def test_due_timers_pop_in_deadline_order_and_only_when_due(store: StateStore) -> None:
    late = Timer(300, order_owner("o1"), "deadline:p1")
    early = Timer(100, tracking_owner("TN"), "expire-orphans")
    tie = Timer(100, order_owner("o2"), "deadline:p2")
    for timer in (late, early, tie):
        store.set_timer(timer)

    assert store.pop_due_timer(99) is None
    assert store.pop_due_timer(200) == tie
    assert store.pop_due_timer(200) == early
    assert store.pop_due_timer(200) is None
    assert store.pop_due_timer(300) == late


def test_a_cancelled_timer_never_fires_and_can_be_set_again(store: StateStore) -> None:
    timer = Timer(100, order_owner("o1"), "deadline:p1")
    store.set_timer(timer)
    store.cancel_timer(timer)
    assert store.pop_due_timer(1_000) is None

    store.set_timer(timer)
    store.set_timer(timer)
    assert store.pop_due_timer(1_000) == timer
    assert store.pop_due_timer(1_000) is None


def test_the_clock_is_stored(store: StateStore) -> None:
    assert store.get_clock() is None
    store.set_clock(42)
    assert store.get_clock() == 42


def test_cancelled_timers_never_fire_however_many_are_due(store: StateStore) -> None:
    first = Timer(100, order_owner("o1"), "deadline:p1")
    second = Timer(200, order_owner("o2"), "deadline:p2")
    for timer in (first, second):
        store.set_timer(timer)
    for timer in (first, second):
        store.cancel_timer(timer)

    assert store.pop_due_timer(1_000) is None
