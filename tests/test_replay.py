"""The offline replay: a file's events decided in event-time order within allowed lateness."""

import json
from datetime import datetime
from typing import Any

from processor.config import load_policy
from processor.events import to_millis
from processor.outputs import DeadLetter, Output, RefundCommand
from processor.replay import replay
from tests.factories import at, claim_filed, order_placed, scan, shipped

POLICY = load_policy()
LONG_AFTER = to_millis(datetime.fromisoformat("2026-06-01T00:00:00+00:00"))


def _replayed(events: list[dict[str, Any]]) -> list[Output]:
    lines = [json.dumps(e) for e in events]
    return list(replay(lines, "history.jsonl", POLICY, now=LONG_AFTER))


def _refunds(outputs: list[Output]) -> list[tuple[str | None, str, int]]:
    return [
        (o.package_id, o.reason, o.amount_minor) for o in outputs if isinstance(o, RefundCommand)
    ]


def test_a_package_delivered_on_time_is_not_refunded_as_lost_when_its_scan_comes_late() -> None:
    # The deadline is day 21 (shipped on day 1). The claim, dated a quarter of an hour
    # after it, reaches the file before the delivery scan dated a quarter of an hour
    # before it: half an hour of disorder, within the hour of allowed lateness.
    delivered = scan("delivered", when=at(21, -0.25))
    claim = claim_filed("not_received", package_id="p1", when=at(21, 0.25))
    file_order = [order_placed(), shipped(), claim, delivered]
    event_time_order = [order_placed(), shipped(), delivered, claim]

    assert _refunds(_replayed(file_order)) == []
    assert _replayed(file_order) == _replayed(event_time_order)


def test_a_scan_later_than_allowed_lateness_comes_after_the_deadline_it_missed() -> None:
    """The other side of the bound: once the file is more than the allowed lateness past
    the claim, the claim is decided, its order's deadline first (SPEC section 6), and
    the scan that comes after that is too late to count."""
    delivered = scan("delivered", when=at(21, -0.25))
    claim = claim_filed("not_received", package_id="p1", when=at(21, 0.25))
    another_order = order_placed("o2", when=at(21, 1.5))
    history = [order_placed(), shipped(), claim, another_order, delivered]

    assert _refunds(_replayed(history)) == [("p1", "lost", 5000)]


def test_a_bad_line_is_dead_lettered_at_once_and_the_events_before_it_at_the_end() -> None:
    history = [order_placed(), shipped(), scan("rto_delivered"), "{broken"]
    lines = [e if isinstance(e, str) else json.dumps(e) for e in history]

    outputs = list(replay(lines, "history.jsonl", POLICY))

    assert [o.type for o in outputs] == ["dead_letter", "refund_command", "decision"]
    assert isinstance(outputs[0], DeadLetter)
    assert outputs[0].origin == "history.jsonl:4"


def _reasons(lines: list[str]) -> list[str]:
    return [o.reason for o in replay(lines, "history.jsonl", POLICY) if isinstance(o, DeadLetter)]


def test_an_event_waits_while_the_file_is_at_most_allowed_lateness_newer() -> None:
    """The package with an unknown SKU is decided (a dead letter) only at the end: the file
    shows an event exactly one hour newer, no more, so the bad line after it comes first."""
    history = [
        order_placed(when=at(0)),
        shipped(lines={"Z": 1}, when=at(1)),
        order_placed("o2", when=at(1, 1)),
    ]
    lines = [json.dumps(e) for e in history] + ["{broken"]

    assert _reasons(lines) == ["invalid_json", "unknown_sku"]


def test_every_event_is_decided_once_the_file_is_more_than_allowed_lateness_newer() -> None:
    """One millisecond past the bound, the order and its package, both waiting, are decided
    before the bad line that follows."""
    history = [
        order_placed(when=at(0)),
        shipped(lines={"Z": 1}, when=at(0, 0.5)),
        order_placed("o2", when="2026-03-01T11:30:00.001Z"),
    ]
    lines = [json.dumps(e) for e in history] + ["{broken"]

    assert _reasons(lines) == ["unknown_sku", "invalid_json"]


def test_every_event_still_waiting_when_the_file_ends_is_decided() -> None:
    """The package and its scan are both within the last hour of the file: both wait to
    the end, and both are decided there."""
    history = [
        order_placed(when=at(0)),
        shipped(when=at(1)),
        scan("rto_delivered", when=at(1, 0.5)),
    ]

    assert _refunds(list(replay([json.dumps(e) for e in history], "h.jsonl", POLICY))) == [
        ("p1", "rto_delivered", 5000)
    ]


def test_now_moves_the_clock_to_that_time_without_lateness_after_the_last_event() -> None:
    lines = [json.dumps(e) for e in (order_placed(when=at(0)), shipped(when=at(1)))]
    deadline = to_millis(datetime.fromisoformat(at(21)))

    assert _refunds(list(replay(lines, "h.jsonl", POLICY))) == []
    assert _refunds(list(replay(lines, "h.jsonl", POLICY, now=deadline - 1))) == []
    assert _refunds(list(replay(lines, "h.jsonl", POLICY, now=deadline))) == [("p1", "lost", 5000)]


def test_events_of_one_time_are_decided_in_file_order() -> None:
    history = [order_placed(fee=500, when=at(0)), order_placed(fee=700, when=at(0))]
    outputs = list(replay([json.dumps(e) for e in history], "h.jsonl", POLICY))

    assert [(o.reason, o.origin) for o in outputs if isinstance(o, DeadLetter)] == [
        ("duplicate_order", "h.jsonl:2")
    ]


def test_with_a_wall_clock_an_event_up_to_allowed_lateness_ahead_of_it_is_decided() -> None:
    """As the live processor: only an event more than allowed_lateness in the future of the
    wall clock is an `occurred_in_future` dead letter."""
    wall_clock = to_millis(datetime.fromisoformat(at(0)))
    history = [order_placed(when=at(0, 1)), order_placed("o2", when="2026-03-01T11:00:00.001Z")]
    outputs = list(
        replay([json.dumps(e) for e in history], "h.jsonl", POLICY, wall_clock=wall_clock)
    )

    assert [(o.reason, o.origin) for o in outputs if isinstance(o, DeadLetter)] == [
        ("occurred_in_future", "h.jsonl:2")
    ]


def test_blank_lines_are_skipped_but_counted_in_origins() -> None:
    lines = ["", json.dumps(order_placed()), "  \n", json.dumps(order_placed(fee=700))]
    outputs = list(replay(lines, "h.jsonl", POLICY))

    assert [(o.reason, o.origin) for o in outputs if isinstance(o, DeadLetter)] == [
        ("duplicate_order", "h.jsonl:4")
    ]
