"""Routing, waiting for missing pieces, orphan expiry, deduplication and the clock."""

from processor.store import InMemoryStore, Timer
from processor.testing import TestDriver
from tests.factories import (
    at,
    claim_filed,
    claim_reviewed,
    order_placed,
    return_received,
    scan,
    shipped,
)


def _dead(driver: TestDriver) -> list[tuple[str, str, str | None]]:
    """(reason, origin, key): the key is what the event was held under, order or number."""
    return [(d.reason, d.origin, d.key) for d in driver.dead_letters()]


def test_tracking_without_order_id_waits_for_its_package_then_is_decided() -> None:
    driver = TestDriver()
    driver.pipe(scan("rto_delivered", "TN-X", order_id=None, when=at(2)))
    driver.pipe(order_placed(when=at(2, 0.1)))
    assert driver.refunds() == []

    driver.pipe(shipped(tracking_number="TN-X", when=at(2, 0.2)))

    assert [(r.reason, r.amount_minor) for r in driver.refunds()] == [("rto_delivered", 5000)]


def test_tracking_without_order_id_for_a_known_tracking_number_is_routed_at_once() -> None:
    driver = TestDriver()
    driver.pipe(order_placed())
    driver.pipe(shipped(tracking_number="TN-X"))
    driver.pipe(scan("lost", "TN-X", order_id=None, when=at(4)))

    assert [r.reason for r in driver.refunds()] == ["lost"]


def test_an_unclaimed_tracking_number_becomes_a_dead_letter_after_orphan_ttl() -> None:
    driver = TestDriver()
    driver.pipe(scan("in_transit", "TN-NOBODY", order_id=None, when=at(1)))
    driver.advance_to(at(7.9))
    assert driver.dead_letters() == []

    driver.advance_to(at(8))

    assert _dead(driver) == [("unknown_tracking_number", "test:1", "TN-NOBODY")]


def test_events_of_an_order_that_never_arrives_become_dead_letters() -> None:
    driver = TestDriver()
    driver.pipe(shipped(order_id="ghost", when=at(1)))
    driver.pipe(claim_filed("damaged", order_id="ghost", when=at(2)))
    driver.advance_to(at(8))
    assert _dead(driver) == [("unknown_order", "test:1", "ghost")]

    driver.advance_to(at(9))
    assert _dead(driver) == [
        ("unknown_order", "test:1", "ghost"),
        ("unknown_order", "test:2", "ghost"),
    ]
    assert driver.order("ghost").held == []  # type: ignore[union-attr]


def test_a_tracking_number_the_order_never_ships_becomes_a_dead_letter() -> None:
    driver = TestDriver()
    driver.pipe(order_placed())
    driver.pipe(scan("picked_up", "TN-OTHER", when=at(1)))
    driver.advance_to(at(8, 1))

    assert [d.reason for d in driver.dead_letters()] == ["unknown_tracking_number"]


def test_a_claim_for_an_unknown_package_and_a_review_for_an_unknown_claim_expire() -> None:
    driver = TestDriver()
    driver.pipe(order_placed())
    driver.pipe(claim_filed("damaged", "c1", package_id="p9", when=at(1)))
    driver.pipe(claim_reviewed("c2", when=at(1)))
    driver.pipe(return_received("p8", when=at(1)))
    driver.advance_to(at(8, 1))

    assert sorted(d.reason for d in driver.dead_letters()) == [
        "unknown_claim",
        "unknown_package",
        "unknown_package",
    ]


def test_a_held_claim_is_decided_when_its_package_ships() -> None:
    driver = TestDriver()
    driver.pipe(order_placed())
    driver.pipe(claim_filed("damaged", package_id="p1", lines={"B": 1}, when=at(1)))
    driver.pipe(claim_reviewed(when=at(1, 0.1)))
    driver.pipe(shipped("p1", when=at(1, 0.2)))

    assert [(r.reason, r.amount_minor) for r in driver.refunds()] == [("damaged", 2500)]


def test_a_package_line_with_an_sku_the_order_lacks_is_a_dead_letter() -> None:
    driver = TestDriver()
    driver.pipe(order_placed())
    driver.pipe(shipped(lines={"Z": 1}))

    (dead,) = driver.dead_letters()
    assert (dead.reason, dead.key) == ("unknown_sku", "o1")
    assert "Z" in dead.message
    assert driver.order("o1").packages == {}  # type: ignore[union-attr]


def test_second_order_placed_package_and_claim_with_the_same_id_are_dead_letters() -> None:
    driver = TestDriver()
    driver.pipe(order_placed())
    driver.pipe(order_placed())
    driver.pipe(shipped("p1"))
    driver.pipe(shipped("p1"))
    driver.pipe(claim_filed("damaged", "c1"))
    driver.pipe(claim_filed("damaged", "c1"))

    assert [d.reason for d in driver.dead_letters()] == [
        "duplicate_order",
        "duplicate_package",
        "duplicate_claim",
    ]


def test_a_redelivered_event_is_a_no_op() -> None:
    """Also one the order refused: the live processor reads an input again after a
    rewind, and its dead letter must not be written twice."""
    once, twice = TestDriver(), TestDriver()
    refused = shipped("p9", lines={"Z": 1})
    events = [order_placed(), shipped(), refused, scan("rto_delivered", when=at(4))]
    for offset, event in enumerate(events):
        once.pipe(event, origin=f"orders/0/{offset}")
        twice.pipe(event, origin=f"orders/0/{offset}")
        twice.pipe(event, origin=f"orders/0/{offset}")

    assert twice.outputs() == once.outputs()
    assert len(twice.refunds()) == 1
    assert [d.origin for d in twice.dead_letters()] == ["orders/0/2"]


def test_the_clock_is_the_newest_event_minus_allowed_lateness_and_never_goes_back() -> None:
    driver = TestDriver()
    driver.pipe(order_placed(when=at(1)))
    first = driver.clock()
    driver.pipe(order_placed("o2", when=at(0)))

    assert first is not None
    assert driver.clock() == first
    assert first == driver.order("o1").order.placed_at - 3_600_000  # type: ignore[union-attr]


def test_a_timer_set_behind_the_clock_fires_at_once() -> None:
    """A package shipped on day 1, reported after the clock passed its day-21 deadline."""
    driver = TestDriver()
    driver.pipe(order_placed(when=at(0)))
    driver.pipe(order_placed("o2", when=at(30)))

    driver.pipe(shipped(when=at(1)))

    assert [(r.package_id, r.reason) for r in driver.refunds()] == [("p1", "lost")]
    assert driver.timers("o1") == {}


def test_an_update_reusing_the_id_of_one_waiting_for_its_package_is_a_dead_letter() -> None:
    """Another update with the id of one waiting in its tracking number's bucket is a
    `duplicate_event_id` dead letter, as it is once the number is linked; the same update
    again is a redelivery. Before, the bucket dropped both in silence."""
    driver = TestDriver()
    driver.pipe(order_placed())
    waiting = scan("in_transit", "TN-X", order_id=None, when=at(1), event_id="s1")
    driver.pipe(waiting)
    driver.pipe(waiting)
    driver.pipe(scan("delivered", "TN-X", order_id=None, when=at(2), event_id="s1"))

    assert _dead(driver) == [("duplicate_event_id", "test:4", "TN-X")]
    assert "tracking number 'TN-X'" in driver.dead_letters()[0].message


def test_an_update_read_again_after_its_dead_letter_is_a_redelivery() -> None:
    """Its tracking number's bucket keeps it, by its content, when it expires while another
    update still waits there: the same update again changes nothing; under a new id, it
    is decided again (a dead letter again, still older than orphan_ttl)."""
    driver = TestDriver()
    first = scan("in_transit", "TN-X", order_id=None, when=at(1), event_id="s1")
    driver.pipe(first)
    driver.pipe(scan("in_transit", "TN-X", order_id=None, when=at(5), event_id="s2"))
    driver.advance_to(at(8))
    driver.pipe(first)
    driver.pipe(first | {"event_id": "s1-redriven"})

    assert _dead(driver) == [
        ("unknown_tracking_number", "test:1", "TN-X"),
        ("unknown_tracking_number", "test:4", "TN-X"),
    ]


def test_every_update_waiting_for_a_tracking_number_goes_to_the_order_in_arrival_order() -> None:
    """All of the bucket, not its first update only, and in the order the updates came: a
    loss reported after an on-time delivery is an anomaly, not a refund."""
    driver = TestDriver()
    driver.pipe(scan("delivered", "TN-X", order_id=None, when=at(2)))
    driver.pipe(scan("lost", "TN-X", order_id=None, when=at(3)))
    driver.pipe(order_placed(when=at(0)))
    driver.pipe(shipped(tracking_number="TN-X", when=at(1)))

    assert driver.refunds() == []
    assert [(d.outcome, d.code) for d in driver.decisions()] == [("anomaly", "lost_after_delivery")]


def test_each_update_waiting_for_a_tracking_number_expires_at_its_own_orphan_ttl() -> None:
    """Oldest deadline first across buckets, even when the clock jumps past several: the
    bucket's timer is its oldest update's, and the next one's is set when that fires."""
    driver = TestDriver()
    driver.pipe(scan("in_transit", "TN-A", order_id=None, when=at(3)))
    driver.pipe(scan("in_transit", "TN-B", order_id=None, when=at(2)))
    driver.pipe(scan("in_transit", "TN-A", order_id=None, when=at(1)))
    driver.advance_to(at(20))

    assert _dead(driver) == [
        ("unknown_tracking_number", "test:3", "TN-A"),
        ("unknown_tracking_number", "test:2", "TN-B"),
        ("unknown_tracking_number", "test:1", "TN-A"),
    ]


def test_a_deadline_the_clock_jumped_past_is_decided_at_the_deadline() -> None:
    """decided_at is the deadline's event time, not how far another order moved the clock."""
    driver = TestDriver()
    driver.pipe(order_placed(when=at(0)))
    driver.pipe(shipped(when=at(1)))
    driver.pipe(order_placed("o2", when=at(30)))

    (refund,) = driver.refunds()
    assert refund.reason == "lost"
    assert refund.decided_at == driver.order("o1").packages["p1"].deadline  # type: ignore[union-attr]


def test_an_update_corrected_after_it_expired_waiting_for_its_tracking_number_is_judged() -> None:
    """The bucket keeps an expired update by its whole content: the same update again is a
    redelivery, but a corrected one under its id (same type and time) is judged again."""
    driver = TestDriver()
    first = scan("in_transit", "TN-X", order_id=None, when=at(1), event_id="s1")
    driver.pipe(first)
    driver.pipe(scan("in_transit", "TN-X", order_id=None, when=at(5), event_id="s2"))
    driver.advance_to(at(8))
    driver.pipe(first | {"status": "delivered", "carrier_status": "DELIVERED"})

    assert _dead(driver) == [
        ("unknown_tracking_number", "test:1", "TN-X"),
        ("unknown_tracking_number", "test:3", "TN-X"),
    ]


def _stored_timers(store: InMemoryStore) -> set[Timer]:
    """Every timer the store holds (popping them all)."""
    popped: set[Timer] = set()
    while (timer := store.pop_due_timer(2**62)) is not None:
        popped.add(timer)
    return popped


def test_the_store_keeps_the_timers_the_states_need_and_no_stale_ones() -> None:
    """docs/policy.md, "Time": the engine keeps the store's timers in line with what the
    states need. Here they need none: an expiry that moved earlier, then released; a
    deadline met by a delivery; a bucket's timer, moved earlier, once a package claims
    its number. None of them may be left behind to fire."""
    store = InMemoryStore()
    driver = TestDriver(store=store)
    driver.pipe(scan("delivered", "TN-X", order_id=None, when=at(5)))
    driver.pipe(scan("picked_up", "TN-X", order_id=None, when=at(3)))
    driver.pipe(claim_filed("damaged", order_id="o2", when=at(2)))
    driver.pipe(claim_reviewed(order_id="o2", when=at(1)))
    driver.pipe(order_placed(when=at(0)))
    driver.pipe(shipped(tracking_number="TN-X", when=at(2)))
    driver.pipe(order_placed("o2", when=at(0)))

    assert driver.timers("o1") == driver.timers("o2") == {}
    assert _stored_timers(store) == set()


def test_a_bucket_goes_once_its_updates_are_forwarded_or_expired() -> None:
    store = InMemoryStore()
    driver = TestDriver(store=store)
    driver.pipe(scan("in_transit", "TN-X", order_id=None, when=at(1)))
    driver.pipe(scan("in_transit", "TN-Y", order_id=None, when=at(1)))
    driver.pipe(order_placed(when=at(1)))
    driver.pipe(shipped(tracking_number="TN-X", when=at(1, 1)))
    driver.advance_to(at(8))

    assert _dead(driver) == [("unknown_tracking_number", "test:2", "TN-Y")]
    assert store.load_orphans("TN-X") is None
    assert store.load_orphans("TN-Y") is None
