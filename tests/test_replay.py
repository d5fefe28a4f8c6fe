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
