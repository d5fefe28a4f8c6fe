"""`explain` from a file (processor/explain.py and the CLI): timeline, ledger, timers and
decisions of one order, in text and in the documented JSON shape (docs/explain.md)."""

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from processor.config import load_policy
from processor.events import parse_event_json
from processor.explain import (
    Explanation,
    SourcedDeadLetter,
    SourcedEvent,
    UnknownOrderError,
    describe_event,
    explain_history,
    explain_state,
    render_text,
    timer_meaning,
    to_json,
)
from processor.generate import generate_history
from processor.outputs import DeadLetter, Decision, RefundCommand, iso_millis
from processor.replay import replay
from tests.console import run_cli
from tests.factories import (
    Event,
    at,
    at_ms,
    cancellation_requested,
    claim_filed,
    claim_reviewed,
    order_cancelled,
    order_placed,
    return_received,
    scan,
    shipped,
)


def _iso(text: str) -> str:
    """A factories time as explain prints it (milliseconds, Z)."""
    return text.replace("Z", ".000Z")


# o1: 2 x A at 1000 and 1 x B at 2500 + 500 shipping, in two packages; p1 comes back to
# origin (a scan without order_id, linked by its tracking number), p2 is still on its way.
# o2: delivered, then a not_received claim: denied. o3: unrelated.
HISTORY: list[dict[str, Any]] = [
    order_placed("o1", event_id="o1-placed"),
    order_placed("o2", lines={"C": (1, 4000)}, fee=0, event_id="o2-placed"),
    shipped("p1", {"A": 2}, order_id="o1", when=at(1), event_id="o1-ship-p1"),
    shipped("p9", {"C": 1}, order_id="o2", when=at(1), event_id="o2-ship-p9"),
    order_placed("o3", when=at(1, hours=1), event_id="o3-placed"),
    shipped("p2", {"B": 1}, order_id="o1", when=at(2), event_id="o1-ship-p2"),
    # Earlier than the line above: the timeline is in event time, not file order.
    scan("in_transit", "TN-p1", order_id="o1", when=at(2, hours=-0.5), event_id="o1-transit"),
    scan("delivered", "TN-p9", order_id="o2", when=at(3), event_id="o2-delivered"),
    scan("rto_delivered", "TN-p1", order_id=None, when=at(5), event_id="o1-rto"),
    scan("rto_delivered", "TN-p1", order_id=None, when=at(5), event_id="o1-rto"),
    claim_filed("not_received", "c9", order_id="o2", package_id="p9", event_id="o2-claim"),
    claim_reviewed("c7", order_id="o1", when=at(6, hours=1), event_id="o1-review-c7"),
    shipped("p3", {"Z": 1}, order_id="o1", when=at(6, hours=2), event_id="o1-ship-unknown-sku"),
]


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in HISTORY))
    return path


def _lines(path: Path) -> list[str]:
    with path.open() as source:
        return list(source)


def _explain_json(history: Path, order_id: str, *extra: str) -> dict[str, Any]:
    result = run_cli("explain", order_id, "--from", str(history), "--json", *extra)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _sections(text: str) -> dict[str, list[list[str]]]:
    """`render_text`'s paragraphs by their first line, each line after it as its cells
    (split at two spaces or more)."""
    sections: dict[str, list[list[str]]] = {}
    for paragraph in text.split("\n\n"):
        title, *lines = paragraph.splitlines()
        sections[title] = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return sections


def test_a_refunded_order_shows_its_ledger_per_sku_and_package(history: Path) -> None:
    data = to_json(explain_history(_lines(history), "history.jsonl", "o1", load_policy()))

    ledger = data["ledger"]
    assert ledger["skus"] == [
        {
            "sku": "A",
            "unit_price_minor": 1000,
            "ordered": 2,
            "shipped": {"p1": 2},
            "refunded": 2,
            "refunded_out_of": {"p1": 2},
            "refunded_unshipped": 0,
            "reshipped": 0,
            "ordered_minor": 2000,
            "refunded_minor": 2000,
        },
        {
            "sku": "B",
            "unit_price_minor": 2500,
            "ordered": 1,
            "shipped": {"p2": 1},
            "refunded": 0,
            "refunded_out_of": {},
            "refunded_unshipped": 0,
            "reshipped": 0,
            "ordered_minor": 2500,
            "refunded_minor": 0,
        },
    ]
    assert (ledger["currency"], ledger["shipping_fee_minor"], ledger["shipping_fee_refunded"]) == (
        "USD",
        500,
        False,
    )
    assert (ledger["total_minor"], ledger["refunded_minor"], ledger["remaining_minor"]) == (
        5000,
        2000,
        3000,
    )
    assert [(p["package_id"], p["settled_by"], p["back_event_id"]) for p in data["packages"]] == [
        ("p1", "rto_delivered", "o1-rto"),
        ("p2", None, None),
    ]


def test_a_refund_decision_carries_rule_amount_and_evidence(history: Path) -> None:
    data = to_json(explain_history(_lines(history), "history.jsonl", "o1", load_policy()))

    [decision] = data["decisions"]
    assert {k: decision[k] for k in ("outcome", "code", "rule", "amount_minor", "currency")} == {
        "outcome": "refunded",
        "code": "rto_delivered",
        "rule": "R1",
        "amount_minor": 2000,
        "currency": "USD",
    }
    assert decision["evidence_event_ids"] == ["o1-ship-p1", "o1-rto"]
    assert (decision["package_id"], decision["decided_at"]) == ("p1", _iso(at(5)))
    assert decision["source"] == "replay"
    assert decision["command_id"] is not None


def test_pending_timers_are_the_deadlines_still_ahead(history: Path) -> None:
    data = to_json(explain_history(_lines(history), "history.jsonl", "o1", load_policy()))

    # p2 shipped at day 2: lost_after_days is 20. The held review of unknown claim c7
    # expires orphan_ttl (7 days) after its own time.
    assert [(t["name"], t["deadline"]) for t in data["timers"]] == [
        ("expire-held", _iso(at(13, hours=1))),
        ("deadline:p2", _iso(at(22))),
    ]
    assert "lost" in data["timers"][1]["meaning"]
    # The clock is the file's: its last event minus allowed_lateness (1 hour).
    assert data["clock"] == _iso(at(6, hours=1))


def test_moving_the_clock_past_a_deadline_fires_it(history: Path) -> None:
    now = at_ms(30)
    data = to_json(explain_history(_lines(history), "history.jsonl", "o1", load_policy(), now=now))

    assert [(d["code"], d["amount_minor"]) for d in data["decisions"]] == [
        ("rto_delivered", 2000),
        ("lost", 3000),  # 1 x B + the shipping fee: every unit is now refunded
    ]
    assert [t["name"] for t in data["timers"]] == []
    assert data["ledger"]["remaining_minor"] == 0
    assert data["clock"] == iso_millis(now)


def test_a_denied_order_shows_the_denial_and_its_evidence(history: Path) -> None:
    data = to_json(explain_history(_lines(history), "history.jsonl", "o2", load_policy()))

    assert [
        (d["outcome"], d["code"], d["rule"], d["amount_minor"], d["evidence_event_ids"])
        for d in data["decisions"]
    ] == [("denied", "tracking_shows_delivered", "R6", None, ["o2-claim", "o2-delivered"])]
    assert data["ledger"]["refunded_minor"] == 0
    assert data["timers"] == []  # delivered before its deadline: nothing pending
    assert [(c["claim_id"], c["status"]) for c in data["claims"]] == [("c9", "denied")]


def test_the_timeline_is_in_event_time_and_names_each_line(history: Path) -> None:
    data = to_json(explain_history(_lines(history), "history.jsonl", "o1", load_policy()))

    timeline = [
        (e["at"], e["kind"], e["event_id"] or e["what"], e["source"]) for e in data["timeline"]
    ]
    assert timeline == [
        (_iso(at(0)), "event", "o1-placed", "history.jsonl:1"),
        (_iso(at(1)), "event", "o1-ship-p1", "history.jsonl:3"),
        (_iso(at(2, hours=-0.5)), "event", "o1-transit", "history.jsonl:7"),
        (_iso(at(2)), "event", "o1-ship-p2", "history.jsonl:6"),
        (_iso(at(5)), "event", "o1-rto", "history.jsonl:9"),
        (_iso(at(5)), "event", "o1-rto", "history.jsonl:10"),
        (_iso(at(5)), "decision", "refunded", "replay"),
        (_iso(at(6, hours=1)), "event", "o1-review-c7", "history.jsonl:12"),
        (_iso(at(6, hours=2)), "event", "o1-ship-unknown-sku", "history.jsonl:13"),
    ]
    details = [e["detail"] for e in data["timeline"]]
    assert "package p1: rto_delivered" in details[4]
    assert "duplicate" in details[5]
    assert "held until claim 'c7' is known" in details[7]
    assert "dead-lettered, unknown_sku" in details[8]


def test_without_events_the_timeline_is_rebuilt_from_the_state(history: Path) -> None:
    """What a live explanation sees: the state's facts, the events of its dead letters,
    and the ids of the rest."""
    config = load_policy()
    from_file = explain_history(_lines(history), "history.jsonl", "o1", config)

    live = explain_state(
        "o1",
        from_file.state,
        from_file.decisions,
        config,
        mode="live",
        origin="Redis task t and decisions partition 0",
        clock=from_file.clock,
        dead_letters=from_file.dead_letters,
    )

    assert [(e.kind, e.what, e.event_id) for e in live.timeline] == [
        ("fact", "order_placed", "o1-placed"),
        ("fact", "package_shipped", "o1-ship-p1"),
        ("fact", "tracking_update", None),  # p1's first scan in the courier's hands
        ("fact", "package_shipped", "o1-ship-p2"),
        ("decision", "refunded", None),
        ("event", "claim_reviewed", "o1-review-c7"),  # held, kept whole in the state
        ("event", "package_shipped", "o1-ship-unknown-sku"),  # from its dead letter
    ]
    assert {e.source for e in live.timeline if e.kind == "fact"} == {"state"}
    assert live.timeline[-1].source == "history.jsonl:13"
    assert "dead-lettered, unknown_sku" in live.timeline[-1].detail
    assert live.untimed_event_ids == ("o1-rto", "o1-transit")
    assert to_json(live)["untimed_event_ids"] == ["o1-rto", "o1-transit"]
    assert "(the state keeps only their ids): o1-rto, o1-transit\n" in render_text(live)
    assert to_json(live)["ledger"] == to_json(from_file)["ledger"]
    assert live.timers == from_file.timers


def test_explanations_agree_with_the_replay_on_a_generated_history() -> None:
    lines = generate_history(80, seed=21)
    config = load_policy()
    decisions: dict[str, list[Decision]] = defaultdict(list)
    refunded: dict[str, int] = defaultdict(int)
    for output in replay(lines, "history.jsonl", config):
        if isinstance(output, Decision):
            decisions[output.order_id].append(output)
        elif isinstance(output, RefundCommand):
            refunded[output.order_id] += output.amount_minor
    orders = sorted(refunded)[:4] + sorted(set(decisions) - set(refunded))[:2]
    assert len(orders) == 6

    for order_id in orders:
        explanation = explain_history(lines, "history.jsonl", order_id, config)
        assert [item.decision for item in explanation.decisions] == decisions[order_id]
        ledger = to_json(explanation)["ledger"]
        assert ledger["refunded_minor"] == refunded[order_id]
        assert ledger["remaining_minor"] >= 0
        assert sum(s["refunded_minor"] for s in ledger["skus"]) <= ledger["refunded_minor"]


def _explain_events(events: list[Event], order_id: str = "o1", *, days: int = 0) -> Explanation:
    """`explain_history` of these events as the file h.jsonl, the clock `days` after T0."""
    now = at_ms(days) if days else None
    lines = [json.dumps(event) for event in events]
    return explain_history(lines, "h.jsonl", order_id, load_policy(), now=now)


def _live(explanation: Explanation) -> Explanation:
    """What a live explanation of the same state, decisions and dead letters shows."""
    return explain_state(
        explanation.order_id,
        explanation.state,
        explanation.decisions,
        load_policy(),
        mode="live",
        origin="Redis task t",
        clock=explanation.clock,
        dead_letters=explanation.dead_letters,
    )


# p1 delivered then a wrong_quantity claim on it resolved by a reship; p2 lost on day 22.
CLAIMED: list[Event] = [
    order_placed(event_id="placed"),
    shipped("p1", {"A": 2}, when=at(1), event_id="ship-p1"),
    shipped("p2", {"B": 1}, when=at(2), event_id="ship-p2"),
    scan("delivered", "TN-p1", when=at(3), event_id="p1-delivered"),
    claim_filed("wrong_quantity", package_id="p1", lines={"A": 1}, event_id="filed"),
    claim_reviewed(resolution="reship", event_id="reviewed"),
]


@pytest.mark.parametrize(
    ("events", "days", "expected"),
    [
        (
            CLAIMED,
            30,
            [
                (
                    "order_placed",
                    "placed",
                    "merchant m1: 2 x A at 1000, 1 x B at 2500, shipping 500; total 5000 USD",
                ),
                ("package_shipped", "ship-p1", "package p1 (tracking TN-p1): 2 x A"),
                ("package_shipped", "ship-p2", "package p2 (tracking TN-p2): 1 x B"),
                ("tracking_update", None, "package p1: first scan in the courier's hands"),
                ("tracking_update", "p1-delivered", "package p1: delivered"),
                ("claim_filed", "filed", "claim c1: wrong_quantity, package p1, 1 x A"),
                ("claim_reviewed", "reviewed", "claim c1: proof accepted, resolution reship"),
                ("reshipped", None, "wrong_quantity (R9): wrong_quantity claim c1: reship 1 x A"),
                ("deadline", None, "package p2: lost deadline passed"),
                (
                    "refunded",
                    None,
                    "lost (R3): package p2 not delivered within 20 days of "
                    "shipping: refunded 1 x B (2500) = 2500",
                ),
            ],
        ),
        (
            [
                order_placed(event_id="placed", fee=0, lines={"A": (1, 700)}),
                cancellation_requested(request_id="r7", event_id="asked"),
            ],
            0,
            [
                ("order_placed", "placed", "merchant m1: 1 x A at 700, shipping 0; total 700 USD"),
                (
                    "cancellation_requested",
                    "asked",
                    "the merchant asked to cancel (request r7); awaiting the warehouse",
                ),
                (
                    "pending",
                    None,
                    "awaiting_interception (R4): cancellation requested before "
                    "any package shipped; waiting for the warehouse",
                ),
            ],
        ),
    ],
)
def test_a_live_timeline_shows_each_fact_the_state_keeps_and_each_decisions_rule(
    events: list[Event], days: int, expected: list[tuple[str, str | None, str]]
) -> None:
    live = _live(_explain_events(events, days=days))

    assert [(e.what, e.event_id, e.detail) for e in live.timeline] == expected


def test_a_live_timeline_shows_the_warehouse_interception() -> None:
    events = [order_placed(), cancellation_requested(), order_cancelled(event_id="intercepted")]

    facts = [(e.what, e.event_id, e.detail) for e in _live(_explain_events(events)).timeline]

    assert ("order_cancelled", "intercepted", "the warehouse intercepted the order") in facts


def test_the_json_states_the_order_its_packages_and_its_claims() -> None:
    data = to_json(_explain_events(CLAIMED, days=30))

    assert data["order"] == {
        "merchant_id": "m1",
        "currency": "USD",
        "placed_at": _iso(at(0)),
        "placed_event_id": "placed",
        "total_minor": 5000,
    }
    assert data["packages"] == [
        {
            "package_id": "p1",
            "tracking_number": "TN-p1",
            "lines": {"A": 2},
            "shipped_at": _iso(at(1)),
            "shipped_event_id": "ship-p1",
            "deadline": _iso(at(21)),
            "picked_up_at": _iso(at(3)),
            "delivered_at": _iso(at(3)),
            "delivered_event_id": "p1-delivered",
            "back_event_id": None,
            "settled_by": None,
            "refund_denied": False,
            "deadline_passed": False,
        },
        {
            "package_id": "p2",
            "tracking_number": "TN-p2",
            "lines": {"B": 1},
            "shipped_at": _iso(at(2)),
            "shipped_event_id": "ship-p2",
            "deadline": _iso(at(22)),
            "picked_up_at": None,
            "delivered_at": None,
            "delivered_event_id": None,
            "back_event_id": None,
            "settled_by": "lost",
            "refund_denied": False,
            "deadline_passed": True,
        },
    ]
    assert data["claims"] == [
        {
            "claim_id": "c1",
            "claim_type": "wrong_quantity",
            "package_id": "p1",
            "lines": {"A": 1},
            "status": "settled",
            "filed_at": _iso(at(6)),
            "filed_event_id": "filed",
            "review": {
                "proof_accepted": True,
                "resolution": "reship",
                "event_id": "reviewed",
                "at": _iso(at(7)),
            },
        }
    ]
    assert [(s["sku"], s["reshipped"]) for s in data["ledger"]["skus"]] == [("A", 1), ("B", 0)]


def test_the_text_lays_out_ledger_packages_claims_and_decisions_in_columns() -> None:
    text = render_text(_explain_events(CLAIMED, days=30))

    sections = _sections(text)
    assert sections["Ledger (amounts in minor units of USD)"] == [
        [
            "SKU",
            "unit price",
            "ordered",
            "shipped",
            "refunded",
            "reshipped",
            "paid",
            "refunded amount",
        ],
        ["A", "1000", "2", "2 (p1: 2)", "0", "1", "2000", "0"],
        ["B", "2500", "1", "1 (p2: 1)", "1 (p2: 1)", "0", "2500", "2500"],
        ["shipping fee 500: not refunded"],
        ["total paid 5000, refunded 2500, remaining 2500"],
    ]
    # Each column as wide as its widest cell.
    assert (
        "  SKU  unit price  ordered  shipped    refunded   reshipped  paid  refunded amount\n"
        in text
    )
    assert sections["Packages"] == [
        [
            "p1",
            "tracking TN-p1",
            f"shipped {_iso(at(1))}",
            f"deadline {_iso(at(21))}",
            f"delivered {_iso(at(3))}",
            "not refunded",
        ],
        [
            "p2",
            "tracking TN-p2",
            f"shipped {_iso(at(2))}",
            f"deadline {_iso(at(22))}",
            "delivered -",
            "refunded as lost",
        ],
    ]
    assert sections["Claims"] == [
        ["c1", "wrong_quantity", "package p1", f"filed {_iso(at(6))}", "settled"]
    ]
    assert (sections["Dead letters"], sections["Pending timers"]) == ([["none"]], [["none"]])
    reship, refund = sections["Decisions"][0:3], sections["Decisions"][3:6]
    assert reship[:2] == [
        [_iso(at(7)), "reshipped", "wrong_quantity", "rule R9", "-", "claim c1"],
        ["wrong_quantity claim c1: reship 1 x A"],
    ]
    assert refund[:2] == [
        [_iso(at(22)), "refunded", "lost", "rule R3", "2500 USD", "package p2"],
        ["package p2 not delivered within 20 days of shipping: refunded 1 x B (2500) = 2500"],
    ]
    assert re.fullmatch(r"evidence: filed, reviewed; decision \S+, command \S+", reship[2][0])
    assert reship[2][1] == "<replay>"


def test_a_claim_whose_proof_was_rejected_says_so_in_its_review() -> None:
    events = [
        order_placed(),
        shipped(),
        claim_filed("wrong_item", event_id="filed"),
        claim_reviewed(accepted=False, event_id="rejected"),
    ]
    explained = _explain_events(events)

    (claim,) = to_json(explained)["claims"]
    assert (claim["package_id"], claim["status"], claim["review"]) == (
        None,
        "denied",
        {"proof_accepted": False, "resolution": None, "event_id": "rejected", "at": _iso(at(7))},
    )
    sections = _sections(render_text(explained))
    assert sections["Claims"] == [
        ["c1", "wrong_item", "whole order", f"filed {_iso(at(6))}", "denied"]
    ]
    # A denial commands nothing.
    assert re.fullmatch(r"evidence: filed, rejected; decision \S+", sections["Decisions"][2][0])


def test_a_decision_without_a_rule_shows_none_in_text_or_timeline() -> None:
    """A second review of a settled claim is denied by no rule."""
    events = [
        order_placed(),
        shipped(),
        claim_filed("wrong_quantity", lines={"A": 1}),
        claim_reviewed(resolution="refund"),
        claim_reviewed(resolution="refund", when=at(8)),
    ]
    explained = _explain_events(events)

    assert explained.timeline[-1].detail == (
        "claim_already_settled: claim c1 already yielded its one refund or reship"
    )
    assert _sections(render_text(explained))["Decisions"][3] == [
        _iso(at(8)),
        "denied",
        "claim_already_settled",
        "rule -",
        "-",
        "claim c1",
    ]


def test_a_package_picked_up_before_its_delivery_shows_both_times() -> None:
    events = [
        order_placed(),
        shipped(),
        scan("in_transit", when=at(2)),
        scan("delivered", when=at(3)),
    ]

    (package,) = to_json(_explain_events(events))["packages"]

    assert (package["picked_up_at"], package["delivered_at"]) == (_iso(at(2)), _iso(at(3)))


def test_a_cancellation_awaiting_the_warehouse_is_requested_not_cancelled() -> None:
    events = [order_placed(), cancellation_requested(request_id="r7", event_id="asked")]

    data = to_json(_explain_events(events))

    assert data["cancellation"] == {
        "requested": {"request_id": "r7", "event_id": "asked", "at": _iso(at(0, 1))},
        "cancelled": None,
    }


def test_an_intercepted_order_refunds_every_unit_and_the_fee_before_shipping() -> None:
    events = [
        order_placed(),
        cancellation_requested(),
        order_cancelled(request_id="r1", event_id="intercepted"),
    ]

    data = to_json(_explain_events(events))

    assert data["cancellation"] == {
        "requested": None,
        "cancelled": {"request_id": "r1", "event_id": "intercepted", "at": _iso(at(0, 2))},
    }
    ledger = data["ledger"]
    assert [(s["sku"], s["refunded_unshipped"]) for s in ledger["skus"]] == [("A", 2), ("B", 1)]
    assert (ledger["shipping_fee_refunded"], ledger["remaining_minor"]) == (True, 0)
    sections = _sections(render_text(_explain_events(events)))
    assert sections["Ledger (amounts in minor units of USD)"][1:] == [
        ["A", "1000", "2", "0", "2 (cancelled before shipping: 2)", "0", "2000", "2000"],
        ["B", "2500", "1", "0", "1 (cancelled before shipping: 1)", "0", "2500", "2500"],
        ["shipping fee 500: refunded"],
        ["total paid 5000, refunded 5000, remaining 0"],
    ]
    assert sections["Decisions"][3] == [
        _iso(at(0, 2)),
        "refunded",
        "cancellation_intercepted",
        "rule R5",
        "5000 USD",
        "order",
    ]


def test_packages_are_listed_by_ship_time_then_by_id() -> None:
    events = [
        order_placed(lines={"A": (3, 1000)}),
        shipped("p2", {"A": 1}, when=at(1)),
        shipped("p1", {"A": 1}, when=at(2)),
        shipped("p0", {"A": 1}, when=at(2)),
    ]

    data = to_json(_explain_events(events))

    assert [p["package_id"] for p in data["packages"]] == ["p2", "p0", "p1"]
    assert list(data["ledger"]["skus"][0]["shipped"]) == ["p2", "p0", "p1"]


@pytest.mark.parametrize(
    ("name", "meaning"),
    [
        (
            "deadline:p2",
            "R3: package p2 is refunded as lost unless tracking shows it delivered or it "
            "comes back by then",
        ),
        ("expire-held", "held events still waiting then go to the dead-letter topic (orphan_ttl)"),
        ("something-new", "something-new"),
    ],
)
def test_each_pending_timer_says_what_happens_when_it_fires(name: str, meaning: str) -> None:
    assert timer_meaning(name) == meaning


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        (
            order_placed(lines={"A": (3, 250)}, fee=99, currency="EUR"),
            "merchant m1: 3 x A at 250, shipping 99; total 849 EUR",
        ),
        (shipped("p4", {"A": 1, "B": 2}), "package p4 (ups TN-p4): 1 x A, 2 x B"),
        (
            scan("out_for_delivery", "TN-p1") | {"location": "Lyon"},
            "tracking number TN-p1: out_for_delivery (ups says 'OUT_FOR_DELIVERY') at Lyon",
        ),
        (cancellation_requested(request_id="r5"), "the merchant asked to cancel (request r5)"),
        (order_cancelled(request_id="r5"), "the warehouse intercepted the order (request r5)"),
        (order_cancelled(request_id=None), "the warehouse intercepted the order"),
        (claim_filed("wrong_item"), "claim c1: wrong_item, the whole order, no lines (all of it)"),
        (
            claim_filed("damaged", package_id="p1", lines={"A": 1}),
            "claim c1: damaged, package p1, 1 x A",
        ),
        (claim_reviewed(accepted=False), "claim c1: proof rejected"),
        (claim_reviewed(resolution="refund"), "claim c1: proof accepted, resolution refund"),
        (return_received(condition="opened"), "package p1 came back to the warehouse opened"),
    ],
)
def test_each_event_is_described_in_the_orders_terms(event: Event, detail: str) -> None:
    assert describe_event(parse_event_json(json.dumps(event)), None) == detail


def test_an_event_held_for_its_missing_order_says_it_waits_for_the_order() -> None:
    data = to_json(_explain_events([shipped(order_id="o5")], "o5"))

    [entry] = data["timeline"]
    assert entry["detail"].endswith("[held until the order is known]")


def test_a_held_event_sent_twice_is_held_once_and_then_a_duplicate() -> None:
    review = claim_reviewed("c7", event_id="review")
    data = to_json(_explain_events([order_placed(), review, review]))

    details = [e["detail"] for e in data["timeline"] if e["kind"] == "event"]
    assert details[1:] == [
        "claim c7: proof accepted [held until claim 'c7' is known]",
        "claim c7: proof accepted [a duplicate of an earlier line: ignored]",
    ]


def test_a_corrected_event_sent_again_after_its_refused_copy_is_a_duplicate() -> None:
    """The refused copy's id is kept as not applied: the correction applies, and only a
    copy of the correction is a duplicate."""
    refused = shipped("p1", {"Z": 1}, event_id="ship1")
    corrected = shipped("p1", event_id="ship1")
    data = to_json(_explain_events([order_placed(), refused, corrected, corrected]))

    details = {e["source"]: e["detail"] for e in data["timeline"] if e["kind"] == "event"}
    assert "duplicate" not in details["h.jsonl:3"]
    assert "a duplicate of an earlier line: ignored" in details["h.jsonl:4"]


def test_an_order_id_escaped_in_the_file_still_finds_its_event() -> None:
    line = json.dumps(order_placed(event_id="placed")).replace('"o1"', '"\\u006f1"')
    assert "o1" not in line

    explained = explain_history([line], "h.jsonl", "o1", load_policy())

    assert [e.event_id for e in explained.timeline] == ["placed"]


def test_a_scan_is_on_the_timeline_only_of_the_order_it_names_or_whose_package_it_tracks() -> None:
    """o12's id holds o1's: a scan of o12's package that names no order, and a scan naming
    o12 with o1's tracking number, are both o12's."""
    events = [
        order_placed("o1", event_id="o1-placed"),
        order_placed("o12", event_id="o12-placed"),
        shipped("p1", order_id="o1", event_id="o1-ship"),
        shipped("p12", order_id="o12", event_id="o12-ship"),
        scan("in_transit", "TN-p12", order_id=None, when=at(2), event_id="o12-scan"),
        scan("in_transit", "TN-p1", order_id="o12", when=at(2), event_id="o12-misrouted"),
    ]

    explained = _explain_events(events)

    assert [e.event_id for e in explained.timeline] == ["o1-placed", "o1-ship"]


@pytest.mark.parametrize("known_by", ["decisions", "dead_letters", "events"])
def test_an_order_without_state_is_explained_from_whatever_else_is_known(
    history: Path, known_by: str
) -> None:
    """Its state expired from Redis, say, while its decisions and dead letters remain."""
    from_file = explain_history(_lines(history), "history.jsonl", "o1", load_policy())
    known: dict[str, Any] = {
        "decisions": from_file.decisions,
        "dead_letters": from_file.dead_letters,
        "events": [SourcedEvent(parse_event_json(_lines(history)[0]), "history.jsonl:1")],
    }

    explained = explain_state(
        **{"order_id": "o1", "state": None, "decisions": (), known_by: known[known_by]},
        config=load_policy(),
        mode="live",
        origin="Redis task t",
        clock=None,
    )

    assert len(explained.timeline) == 1
    assert to_json(explained)["order"] is None


def test_a_dead_letter_holding_no_event_says_why_instead_of_a_value() -> None:
    note = "16 bytes that hold no valid event (the reason says why)"
    dead = DeadLetter("orders/0/7", "avro_decode_error", "bad magic byte 0x7b", "", key="o1")
    explained = explain_state(
        "o1",
        None,
        (),
        load_policy(),
        mode="live",
        origin="Redis task t",
        clock=None,
        dead_letters=[SourcedDeadLetter(dead, "dlq/0/3", note)],
    )

    assert to_json(explained)["dead_letters"] == [
        {
            "origin": "orders/0/7",
            "reason": "avro_decode_error",
            "message": "bad magic byte 0x7b",
            "source": "dlq/0/3",
            "value": None,
            "value_note": note,
        }
    ]
    assert render_text(explained) == (
        "Order o1: its order_placed is not known\n"
        "Explained from the live state in Redis task t\n"
        "Event-time clock: not started\n"
        "\n"
        "Timeline (event time)\n"
        "\n"
        "Dead letters\n"
        "  orders/0/7  avro_decode_error: bad magic byte 0x7b  <dlq/0/3>\n"
        f"      value: none, {note}\n"
        "\n"
        "Pending timers\n"
        "  none\n"
        "\n"
        "Decisions\n"
        "  none\n"
    )


def test_an_unknown_order_is_an_error_naming_it(history: Path) -> None:
    with pytest.raises(UnknownOrderError, match="'o404'"):
        explain_history(_lines(history), "history.jsonl", "o404", load_policy())


# --------------------------------------------------------------------------- CLI


def test_cli_json_has_the_documented_shape(history: Path) -> None:
    data = _explain_json(history, "o1")

    assert set(data) == {
        "format",
        "order_id",
        "mode",
        "origin",
        "clock",
        "order",
        "ledger",
        "packages",
        "claims",
        "cancellation",
        "timers",
        "timeline",
        "decisions",
        "untimed_event_ids",
        "dead_letters",
    }
    assert [(d["origin"], d["reason"], d["source"]) for d in data["dead_letters"]] == [
        (f"{history}:13", "unknown_sku", "replay")
    ]
    (dead,) = data["dead_letters"]  # its event, to publish again (docs/live.md)
    assert (parse_event_json(dead["value"]), dead["value_note"]) == (
        parse_event_json(_lines(history)[12]),
        None,
    )
    assert (data["format"], data["order_id"], data["mode"], data["origin"]) == (
        1,
        "o1",
        "replay",
        str(history),
    )
    assert set(data["order"]) == {
        "merchant_id",
        "currency",
        "placed_at",
        "placed_event_id",
        "total_minor",
    }
    assert set(data["ledger"]) == {
        "currency",
        "skus",
        "shipping_fee_minor",
        "shipping_fee_refunded",
        "total_minor",
        "refunded_minor",
        "remaining_minor",
    }
    assert set(data["cancellation"]) == {"requested", "cancelled"}
    assert {frozenset(t) for t in data["timers"]} == {frozenset({"name", "deadline", "meaning"})}
    assert {frozenset(e) for e in data["timeline"]} == {
        frozenset({"at", "kind", "what", "event_id", "detail", "source"})
    }
    # A decision is the `replay` output line of the decision, plus where it was read.
    [decision] = data["decisions"]
    replayed = [
        json.loads(line)
        for line in run_cli("replay", str(history)).stdout.splitlines()
        if json.loads(line)["type"] == "decision" and json.loads(line)["order_id"] == "o1"
    ]
    assert decision == replayed[0] | {"source": "replay"}
    assert set(data["packages"][0]) == {
        "package_id",
        "tracking_number",
        "lines",
        "shipped_at",
        "shipped_event_id",
        "deadline",
        "picked_up_at",
        "delivered_at",
        "delivered_event_id",
        "back_event_id",
        "settled_by",
        "refund_denied",
        "deadline_passed",
    }
    claims = _explain_json(history, "o2")["claims"]
    assert set(claims[0]) == {
        "claim_id",
        "claim_type",
        "package_id",
        "lines",
        "status",
        "filed_at",
        "filed_event_id",
        "review",
    }


def test_cli_text_tells_the_story(history: Path) -> None:
    result = run_cli("explain", "o1", "--from", str(history))

    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("Order o1: merchant m1, USD")
    assert "Timeline (event time)" in text
    assert "Ledger (amounts in minor units of USD)" in text
    assert "total paid 5000, refunded 2000, remaining 3000" in text
    assert f"{_iso(at(22))}  deadline:p2" in text
    assert "refunded  rto_delivered  rule R1  2000 USD  package p1" in text
    assert "evidence: o1-ship-p1, o1-rto" in text
    assert text == render_text(explain_history(_lines(history), str(history), "o1", load_policy()))


def test_a_package_whose_rule_found_nothing_left_is_not_shown_as_refunded() -> None:
    """A damaged claim paid all of p1 before its deadline, which then found nothing left."""
    lines = [
        json.dumps(event)
        for event in [
            order_placed(),
            shipped(),
            claim_filed("damaged", package_id="p1", when=at(3)),
            claim_reviewed(when=at(4)),
        ]
    ]
    explained = explain_history(lines, "h.jsonl", "o1", load_policy(), now=at_ms(22))

    (package,) = to_json(explained)["packages"]
    assert (package["settled_by"], package["refund_denied"]) == ("lost", True)
    assert "settled as lost, nothing left to refund" in render_text(explained)


def test_a_refused_event_sent_twice_then_corrected_is_labelled_as_the_replay_decides() -> None:
    """The second refused copy is the one ignored as a duplicate, not the correction,
    which ships the package (found in review)."""
    refused = shipped("p1", {"Z": 1}, event_id="ship1")
    lines = [
        json.dumps(event)
        for event in [order_placed(), refused, refused, shipped("p1", event_id="ship1")]
    ]

    explained = to_json(explain_history(lines, "h.jsonl", "o1", load_policy()))

    details = {e["source"]: e["detail"] for e in explained["timeline"] if e["kind"] == "event"}
    assert "dead-lettered, unknown_sku" in details["h.jsonl:2"]
    assert "a duplicate of an earlier line: ignored" in details["h.jsonl:3"]
    assert "duplicate" not in details["h.jsonl:4"]
    assert [p["package_id"] for p in explained["packages"]] == ["p1"]


def test_cli_now_and_policy_apply_to_the_file(history: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("policy_version: short\nlost_after_days: 3\n")

    data = _explain_json(history, "o1", "--policy", str(policy), "--now", at(40))

    # Deadlines 3 days after shipping: p1 is lost on day 4, before it comes back on day 5.
    assert [
        (d["code"], d["amount_minor"], d["decided_at"], d["policy_version"])
        for d in data["decisions"]
    ] == [
        ("lost", 2000, _iso(at(4)), "short"),
        ("already_refunded", None, _iso(at(5)), "short"),
        ("lost", 3000, _iso(at(5)), "short"),
    ]
    assert data["clock"] == _iso(at(40))


def test_cli_unknown_order_exits_2_naming_it(history: Path) -> None:
    result = run_cli("explain", "o404", "--from", str(history))

    assert result.returncode == 2
    assert "order 'o404' is unknown" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--now", "2026-04-01T00:00:00Z"], "--now only applies with --from FILE"),
        (["--policy", "p.yaml"], "--policy only applies with --from FILE"),
        (["--from", "h.jsonl", "--config", "c.yaml"], "--config does not apply with --from"),
    ],
)
def test_cli_refuses_options_of_the_other_mode(args: list[str], message: str) -> None:
    result = run_cli("explain", "o1", *args)

    assert result.returncode == 2
    assert message in result.stderr


def test_cli_missing_file_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("explain", "o1", "--from", str(tmp_path / "nope.jsonl"))

    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "nope.jsonl" in result.stderr
