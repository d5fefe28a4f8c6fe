"""Copies of order state: the policy core relies on them to leave a given state untouched."""

import json
from dataclasses import fields

import pytest

from processor.config import load_policy
from processor.events import parse_event_json
from processor.policy import apply_event, is_redelivery
from processor.state import (
    ORDER_STATE_ADAPTER,
    ORPHAN_BUCKET_ADAPTER,
    UNKNOWN_DIGEST,
    Cancellation,
    Claim,
    Held,
    Ledger,
    Order,
    OrderState,
    Package,
    Priced,
    Review,
    replace_claim,
    replace_package,
)
from tests.factories import order_cancelled, scan


def _package() -> Package:
    """Every field set, and to a value no other field has, so a misplaced one shows."""
    return Package(
        package_id="p1",
        tracking_number="TN-1",
        lines={"A": 1},
        shipped_at=1,
        shipped_event_id="ev-shipped",
        deadline=2,
        picked_up_at=3,
        delivered_at=4,
        delivered_event_id="ev-delivered",
        back_event_id="ev-back",
        settled_by="lost",
        deadline_passed=True,
        anomaly_reported=False,
    )


def _claim() -> Claim:
    return Claim(
        claim_id="c1",
        claim_type="damaged",
        package_id="p1",
        lines={"A": 1},
        filed_event_id="ev-filed",
        filed_at=5,
        review=Review(True, "refund", "ev-review", 6),
        status="pending",
    )


def _state() -> OrderState:
    return OrderState(
        order_id="o1",
        order=Order("m1", "USD", {"A": Priced(1, 1000)}, 500, "ev-placed", 0),
        packages={"p1": _package()},
        claims={"c1": _claim()},
        ledger=Ledger({"A": 1}, False, 1000),
        cancel_request=Cancellation("r1", "ev-request", 7),
        cancelled=Cancellation("r2", "ev-cancelled", 8),
        held=[Held("{}", "test:1", 9, "order")],
        seen={"ev-placed": 1},
    )


def test_a_clone_equals_its_state_and_shares_none_of_its_containers() -> None:
    state = _state()

    copy = state.clone()

    assert copy == state
    for name in ("packages", "claims", "held", "seen"):
        assert getattr(copy, name) is not getattr(state, name), name


def test_replacing_a_package_changes_only_the_named_fields() -> None:
    package = _package()

    updated = replace_package(package, delivered_at=40, settled_by=None)

    assert (updated.delivered_at, updated.settled_by) == (40, None)
    for field in fields(Package):
        if field.name not in ("delivered_at", "settled_by"):
            assert getattr(updated, field.name) == getattr(package, field.name), field.name
    assert package == _package()


def test_replacing_a_claim_changes_only_the_named_fields() -> None:
    claim = _claim()

    assert replace_claim(claim) == claim
    assert replace_claim(claim, status="settled") == Claim(
        **{f.name: getattr(claim, f.name) for f in fields(Claim)} | {"status": "settled"}
    )


def test_a_state_stored_before_digests_loads_and_takes_every_id_as_a_redelivery() -> None:
    """Redis holds states whose `seen` is a list of ids: each reads as a known id of
    unknown content, deduplicated by id alone as it was."""
    state = ORDER_STATE_ADAPTER.validate_json(b'{"order_id": "o1", "seen": ["e1"]}')
    assert state.seen == {"e1": UNKNOWN_DIGEST}

    again = parse_event_json(json.dumps(order_cancelled(event_id="e1")))
    result = apply_event(state, "o1", again, "test", load_policy())

    assert (result.state, result.timers_before, result.outputs) == (state, None, [])


def test_a_state_stored_before_reships_were_counted_loads_with_none_reshipped() -> None:
    stored = {"refunded": {"A": 1}, "shipping_fee_refunded": False, "refunded_minor": 1000}
    state = ORDER_STATE_ADAPTER.validate_json(json.dumps({"order_id": "o1", "ledger": stored}))
    assert state.ledger == Ledger({"A": 1}, False, 1000, by_package={}, reshipped={})

    reshipped = Ledger({"A": 1}, False, 1000, reshipped={"p1": {"A": 1}})
    stored_now = ORDER_STATE_ADAPTER.dump_json(OrderState("o1", ledger=reshipped))
    assert ORDER_STATE_ADAPTER.validate_json(stored_now).ledger == reshipped


def test_an_orphan_bucket_stored_before_digests_loads_and_takes_every_id_as_a_redelivery() -> None:
    """As an order's state: Redis holds buckets of tracking updates whose `seen` is a list."""
    bucket = ORPHAN_BUCKET_ADAPTER.validate_json(b'{"tracking_number": "TN-1", "seen": ["e1"]}')
    assert bucket.seen == {"e1": UNKNOWN_DIGEST}

    again = parse_event_json(json.dumps(scan("delivered", "TN-1", order_id=None, event_id="e1")))
    assert is_redelivery(bucket.seen["e1"], again)


@pytest.mark.parametrize(
    ("records", "record_id", "name", "default"),
    [
        ("packages", "p1", "refund_denied", False),
        ("claims", "c1", "review", None),
        ("claims", "c1", "status", "open"),
    ],
)
def test_a_record_stored_without_a_defaulted_field_loads_with_its_default(
    records: str, record_id: str, name: str, default: object
) -> None:
    """A package settled before `refund_denied` was kept reads as refunded by its rule, as
    the policy read it then; a claim without a review was never reviewed."""
    stored = json.loads(ORDER_STATE_ADAPTER.dump_json(_state()))
    del stored[records][record_id][name]
    state = ORDER_STATE_ADAPTER.validate_json(json.dumps(stored))
    assert getattr(getattr(state, records)[record_id], name) == default
