"""Money invariants and determinism, over histories hypothesis builds and shrinks."""

import copy
import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.config import load_policy
from processor.events import Event, InvalidEventError, parse_event_json, to_millis
from processor.generate import generate_history, iter_labelled_history
from processor.outputs import (
    DeadLetter,
    Decision,
    Output,
    RefundCommand,
    ReshipCommand,
    output_to_dict,
)
from processor.policy import (
    apply_event,
    apply_in_full,
    changes_nothing,
    event_digest,
    fire_timer,
    timers,
)
from processor.replay import replay
from processor.state import OrderState
from processor.testing import TestDriver
from tests.factories import (
    at,
    claim_filed,
    claim_reviewed,
    order_cancelled,
    order_placed,
    return_received,
    scan,
    shipped,
)
from tests.strategies import histories, jittered, merged_by_time, order_history

POLICY = load_policy()
END = "2026-06-01T00:00:00Z"


def _run(events: list[dict[str, Any]]) -> list[Output]:
    driver = TestDriver(POLICY)
    for event in events:
        driver.pipe(event)
    driver.advance_to(END)
    return driver.outputs()


def _replayed(events: list[dict[str, Any]]) -> list[Output]:
    """The file replay, which decides events in event-time order within allowed lateness."""
    lines = [json.dumps(event) for event in events]
    return list(replay(lines, "history.jsonl", POLICY, now=to_millis(datetime.fromisoformat(END))))


def _orders(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["order_id"]: e for e in events if e["type"] == "order_placed"}


def assert_money_invariants(events: list[dict[str, Any]], outputs: list[Output]) -> None:
    orders = _orders(events)
    refunds = [o for o in outputs if isinstance(o, RefundCommand)]
    paid: dict[str, int] = defaultdict(int)
    units: dict[tuple[str, str], int] = defaultdict(int)
    for refund in refunds:
        order = orders[refund.order_id]
        paid[refund.order_id] += refund.amount_minor
        assert refund.amount_minor == refund.shipping_fee_minor + sum(
            line.amount_minor for line in refund.lines
        )
        prices = {line["sku"]: line["unit_price_minor"] for line in order["lines"]}
        for line in refund.lines:
            assert line.quantity > 0
            assert line.amount_minor == line.quantity * prices[line.sku]
            units[(refund.order_id, line.sku)] += line.quantity
    reships = [o for o in outputs if isinstance(o, ReshipCommand)]
    resent: dict[tuple[str, str], int] = defaultdict(int)
    for reship in reships:
        for reshipped in reship.lines:
            assert reshipped.quantity > 0
            resent[(reship.order_id, reshipped.sku)] += reshipped.quantity
    for order_id, amount in paid.items():
        order = orders[order_id]
        total = order["shipping_fee_minor"] + sum(
            line["quantity"] * line["unit_price_minor"] for line in order["lines"]
        )
        assert amount <= total, f"{order_id} refunded {amount} of {total}"
    beyond = _shipped_beyond_what_was_to_ship(events, refunds)
    for key in units.keys() | resent.keys():
        order_id, sku = key
        ordered = {line["sku"]: line["quantity"] for line in orders[order_id]["lines"]}
        assert units[key] <= ordered[sku], f"{order_id} refunded {units[key]} x {sku}"
        # A unit is compensated again only when the package that carried its reship
        # failed, and such a package ships beyond what was still to ship.
        again = min(resent[key], beyond.get(key, 0))
        assert units[key] + resent[key] <= ordered[sku] + again, (
            f"{order_id} refunded or reshipped {units[key] + resent[key]} x {sku}"
        )
    command_ids = [r.command_id for r in refunds]
    assert len(command_ids) == len(set(command_ids)), "the same refund was issued twice"
    fees = [(r.order_id, r.shipping_fee_minor) for r in refunds if r.shipping_fee_minor]
    assert len(fees) == len({order_id for order_id, _ in fees}), "shipping fee refunded twice"
    assert_no_package_compensated_beyond_what_it_carried(events, [*refunds, *reships])


def _shipped_beyond_what_was_to_ship(
    events: list[dict[str, Any]], refunds: list[RefundCommand]
) -> dict[tuple[str, str], int]:
    """(order, SKU) -> the units its packages carried beyond what was to ship: the ordered
    quantity, less the units its cancellation refunded as unshipped."""
    ordered = {
        (order_id, line["sku"]): line["quantity"]
        for order_id, order in _orders(events).items()
        for line in order["lines"]
    }
    to_ship = dict(ordered)
    for refund in refunds:
        if refund.reason == "cancellation_intercepted":
            for line in refund.lines:
                to_ship[(refund.order_id, line.sku)] -= line.quantity
    shipped: dict[tuple[str, str], int] = defaultdict(int)
    packages: set[tuple[str, str]] = set()
    for event in events:
        if event["type"] != "package_shipped":
            continue
        order_id, package_id = event["order_id"], event["package_id"]
        lines = {(order_id, line["sku"]): line["quantity"] for line in event["lines"]}
        if (order_id, package_id) not in packages and lines.keys() <= ordered.keys():
            packages.add((order_id, package_id))  # the first: another is a dead letter
            for key, quantity in lines.items():
                shipped[key] += quantity
    return {key: n - to_ship.get(key, 0) for key, n in shipped.items() if n > to_ship.get(key, 0)}


def assert_no_package_compensated_beyond_what_it_carried(
    events: list[dict[str, Any]], compensations: list[RefundCommand | ReshipCommand]
) -> None:
    """The refunds of a package and the refunds and reships of the claims naming it cover
    its units at most once: per SKU alone, a split order's second package could pay again
    for the first's. (A missing-item claim is the order's, whichever package it names.)"""
    carried: dict[tuple[str, str], dict[str, int]] = {}
    claimed: dict[tuple[str, str], str] = {}
    for event in events:
        key = (event.get("order_id") or "", event.get("package_id") or "")
        if event["type"] == "package_shipped":
            carried.setdefault(key, {line["sku"]: line["quantity"] for line in event["lines"]})
        elif event["type"] == "claim_filed" and key[1] and event["claim_type"] != "missing_item":
            claimed.setdefault((key[0], event["claim_id"]), key[1])
    covered: dict[tuple[str, str, str], int] = defaultdict(int)
    for output in compensations:
        own = output.package_id if isinstance(output, RefundCommand) else None
        package_id = own or claimed.get((output.order_id, output.claim_id or ""))
        if package_id is None:
            continue
        lines = carried[(output.order_id, package_id)]
        for line in output.lines:
            covered[(output.order_id, package_id, line.sku)] += line.quantity
            assert covered[(output.order_id, package_id, line.sku)] <= lines.get(line.sku, 0), (
                f"{output.order_id}: package {package_id} covered {line.sku} beyond its units"
            )


def assert_every_command_has_its_decision(outputs: list[Output]) -> None:
    decided = {
        (d.command_id, d.outcome) for d in outputs if isinstance(d, Decision) and d.command_id
    }
    for output in outputs:
        if isinstance(output, RefundCommand):
            assert (output.command_id, "refunded") in decided
        if isinstance(output, ReshipCommand):
            assert (output.command_id, "reshipped") in decided


def _refund_set(outputs: list[Output]) -> set[tuple[str, str, int, tuple[Any, ...]]]:
    return {
        (o.command_id, o.order_id, o.amount_minor, o.lines)
        for o in outputs
        if isinstance(o, RefundCommand)
    }


@settings(max_examples=300, deadline=None)
@given(histories())
def test_money_invariants_hold_in_event_time_order(orders: list[list[Any]]) -> None:
    events = merged_by_time(orders)
    outputs = _run(events)
    assert_money_invariants(events, outputs)
    assert_every_command_has_its_decision(outputs)


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_money_invariants_hold_in_any_arrival_order(orders: list[list[Any]], rng: Any) -> None:
    events = merged_by_time(orders)
    rng.shuffle(events)
    outputs = _run(events)
    assert_money_invariants(events, outputs)
    assert_every_command_has_its_decision(outputs)


_REPLACEMENT_FAILURES: dict[str, list[dict[str, Any]]] = {
    "lost": [scan("lost", "TN-p2", when=at(9))],
    "deadline": [],
    "rto_delivered": [scan("rto_delivered", "TN-p2", when=at(12))],
    "intact return": [return_received("p2", when=at(13))],
}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_units_a_failed_reship_carried_are_refunded(data: st.DataObject) -> None:
    """An order shipped in one package and delivered, or part of it, the rest cancelled;
    a claim is reshipped, and the reship's own package fails (lost, late, back, or a
    claim on it is accepted): the units it failed to deliver are refunded, like any unit,
    within what the merchant paid, and the reship is no shipment after the cancellation."""
    skus = data.draw(st.lists(st.sampled_from("ABC"), min_size=1, unique=True))
    ordered = {sku: (data.draw(st.integers(1, 3)), data.draw(st.integers(0, 5000))) for sku in skus}
    fee = data.draw(st.integers(0, 1000))
    cancelled = data.draw(st.booleans())
    carried = {
        sku: data.draw(st.integers(0, q)) if cancelled else q for sku, (q, _) in ordered.items()
    }
    carried = {sku: q for sku, q in carried.items() if q} or {skus[0]: 1}
    events = [order_placed(lines=ordered, fee=fee), shipped("p1", carried)]
    if cancelled:
        events.append(order_cancelled(when=at(1, 2)))
    events.append(scan("delivered", "TN-p1", when=at(3)))
    claimed = data.draw(
        st.dictionaries(st.sampled_from(sorted(carried)), st.integers(1, 4), min_size=1)
    )
    claim_type = data.draw(st.sampled_from(["wrong_quantity", "missing_item"]))
    on_p1 = claim_type == "wrong_quantity" and data.draw(st.booleans())
    events += [
        claim_filed(
            claim_type, "c1", package_id="p1" if on_p1 else None, lines=claimed, when=at(4)
        ),
        claim_reviewed("c1", resolution="reship", when=at(5)),
    ]
    driver = TestDriver(POLICY)
    for event in events:
        driver.pipe(event)
    piped = len(events)
    (reship,) = driver.read(ReshipCommand)
    sent = {line.sku: line.quantity for line in reship.lines}
    events.append(shipped("p2", sent, when=at(6)))
    failure = data.draw(st.sampled_from([*_REPLACEMENT_FAILURES, "claim"]))
    if failure == "claim":
        lost = data.draw(st.dictionaries(st.sampled_from(sorted(sent)), st.integers(1, 4)))
        claim = data.draw(st.sampled_from(["damaged", "defective", "wrong_item", "wrong_quantity"]))
        events += [
            scan("delivered", "TN-p2", when=at(8)),
            claim_filed(claim, "c2", package_id="p2", lines=lost, when=at(9)),
            claim_reviewed("c2", resolution="refund", when=at(10)),
        ]
        expected = {sku: min(n, sent[sku]) for sku, n in (lost or sent).items()}
    else:
        events += _REPLACEMENT_FAILURES[failure]
        expected = sent
    for event in events[piped:]:
        driver.pipe(event)
    driver.advance_to(END)

    *cancellation, refund = driver.refunds()
    assert len(cancellation) == (cancelled and carried != {s: q for s, (q, _) in ordered.items()})
    assert {line.sku: line.quantity for line in refund.lines} == expected
    refunded = [line for r in driver.refunds() for line in r.lines]
    everything = all(
        sum(line.quantity for line in refunded if line.sku == sku) == q
        for sku, (q, _) in ordered.items()
    )
    assert refund.shipping_fee_minor == (fee if everything else 0)
    assert not [d for d in driver.decisions() if d.code == "shipped_after_cancellation"]
    assert_money_invariants(events, driver.outputs())


@settings(max_examples=100, deadline=None)
@given(histories())
def test_replaying_twice_gives_identical_outputs(orders: list[list[Any]]) -> None:
    events = merged_by_time(orders)
    first = [json.dumps(output_to_dict(o)) for o in _run(events)]
    second = [json.dumps(output_to_dict(o)) for o in _run(events)]
    assert first == second


@settings(max_examples=150, deadline=None)
@given(histories())
def test_delivering_every_event_twice_changes_nothing(orders: list[list[Any]]) -> None:
    events = merged_by_time(orders)
    doubled = [e for event in events for e in (event, event)]
    assert _run(doubled) == _run(events)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_interleaving_within_allowed_lateness_changes_no_refund(data: st.DataObject) -> None:
    orders = data.draw(histories())
    in_order = merged_by_time(orders)
    shuffled = data.draw(jittered(orders, max_minutes=59))
    assert _refund_set(_run(shuffled)) == _refund_set(_run(in_order))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_replay_grants_the_same_refunds_whatever_the_disorder_within_allowed_lateness(
    data: st.DataObject,
) -> None:
    """Disorder inside an order too: the replay decides a file in event-time order."""
    orders = data.draw(histories())
    in_order = merged_by_time(orders)
    shuffled = data.draw(jittered(orders, max_minutes=59, within_orders=True))
    assert _refund_set(_replayed(shuffled)) == _refund_set(_replayed(in_order))


def _events_of(history: list[Any]) -> list[Event]:
    """One order's history (`order_history("o1")`) as events, each with the order id that
    a tracking update may leave out, as the engine would resolve it."""
    return [parse_event_json(json.dumps(raw | {"order_id": "o1"})) for _, raw in history]


@settings(max_examples=150, deadline=None)
@given(order_history("o1"))
def test_the_policy_never_changes_the_state_it_is_given(history: list[Any]) -> None:
    state: OrderState | None = None
    for event in _events_of(history):
        snapshot = copy.deepcopy(state)
        result = apply_event(state, "o1", event, "test", POLICY)
        assert state == snapshot
        state = result.state
    assert state is not None
    for name, deadline in timers(state, POLICY).items():
        snapshot = copy.deepcopy(state)
        fire_timer(state, name, deadline, POLICY)
        assert state == snapshot


@settings(max_examples=150, deadline=None)
@given(order_history("o1"))
def test_a_step_that_leaves_its_timers_fresh_needs_the_timers_it_started_with(
    history: list[Any],
) -> None:
    state: OrderState | None = None
    for event in _events_of(history):
        result = apply_event(state, "o1", event, "test", POLICY)
        if not result.timers_stale:
            assert result.timers_before in (None, timers(result.state, POLICY))
        state = result.state
    assert state is not None
    for name, deadline in timers(state, POLICY).items():
        result = fire_timer(state, name, deadline, POLICY)
        if not result.timers_stale:
            assert result.timers_before == timers(result.state, POLICY)


@settings(max_examples=150, deadline=None)
@given(order_history("o1"))
def test_a_scan_apply_event_skips_would_add_nothing_but_its_id(history: list[Any]) -> None:
    """Applied in full, each scan `changes_nothing` holds for would fire the order's
    timers due before it, as any event does first, and add nothing but its id."""
    state: OrderState | None = None
    for event in _events_of(history):
        if state is not None and changes_nothing(state, event, POLICY):
            due = timers(state, POLICY)
            full = apply_in_full(state.clone(), event, "test", POLICY, due)
            expected, fired = state, list[Output]()
            for deadline, name in sorted((d, n) for n, d in due.items() if d < event.at):
                result = fire_timer(expected, name, deadline, POLICY)
                expected, fired = result.state, fired + result.outputs
            expected = expected.clone()
            expected.seen[event.event_id] = event_digest(event)
            assert (full.state, full.outputs) == (expected, fired)
        state = apply_event(state, "o1", event, "test", POLICY).state


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_scan_apply_event_skips_is_skipped_in_every_later_state(data: st.DataObject) -> None:
    """Its id is not kept, so a skipped scan read again after a crash meets a later state
    of its order: it must be skipped there too, as a kept id would make it. In any
    arrival order: events may come late."""
    # One exception, documented at `changes_nothing`: a package shipped later under the
    # scan's number, which the scan read again then reaches (a pickup time, which decides
    # nothing the other package's earlier pickup had not decided already).
    history = data.draw(
        st.permutations(data.draw(order_history("o1", shared_tracking_numbers=False)))
    )
    state: OrderState | None = None
    skipped: list[Event] = []
    for event in _events_of(history):
        if state is not None and changes_nothing(state, event, POLICY):
            skipped.append(event)
        state = apply_event(state, "o1", event, "test", POLICY).state
        assert all(changes_nothing(state, scan, POLICY) for scan in skipped)
    assert state is not None
    for deadline, name in sorted((d, n) for n, d in timers(state, POLICY).items()):
        state = fire_timer(state, name, deadline, POLICY).state
        assert all(changes_nothing(state, scan, POLICY) for scan in skipped)


def _valid_events(lines: list[str]) -> list[dict[str, Any]]:
    valid = []
    for line in lines:
        try:
            parse_event_json(line)
        except InvalidEventError:
            continue
        valid.append(json.loads(line))
    return valid


def _replay_lines(lines: list[str]) -> list[Output]:
    driver = TestDriver(POLICY)
    for line in lines:
        driver.pipe(line)
    driver.advance_to(END)
    return driver.outputs()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_generated_histories_keep_the_money_invariants(seed: int) -> None:
    lines = generate_history(60, seed)
    outputs = _replay_lines(lines)
    assert_money_invariants(_valid_events(lines), outputs)
    assert_every_command_has_its_decision(outputs)
    malformed = sum(1 for _, kind in iter_labelled_history(60, seed) if kind)
    assert sum(1 for o in outputs if isinstance(o, DeadLetter)) >= malformed


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_generated_histories_replay_identically_and_ignore_redelivery(seed: int) -> None:
    lines = generate_history(40, seed, malformed_share=0)
    once = _replay_lines(lines)
    assert _replay_lines(lines) == once
    assert _replay_lines([line for line in lines for _ in (0, 1)]) == once
