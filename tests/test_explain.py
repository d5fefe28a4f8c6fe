"""`explain` from a file (processor/explain.py and the CLI): timeline, ledger, timers and
decisions of one order, in text and in the documented JSON shape (docs/explain.md)."""

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from processor.config import load_policy
from processor.events import parse_event_json, to_millis
from processor.explain import (
    UnknownOrderError,
    explain_history,
    explain_state,
    render_text,
    to_json,
)
from processor.generate import generate_history
from processor.outputs import Decision, RefundCommand, iso_millis
from processor.replay import replay
from tests.console import run_cli
from tests.factories import (
    T0,
    at,
    claim_filed,
    claim_reviewed,
    order_placed,
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
    now = to_millis(T0) + 30 * 86_400_000
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
    explained = explain_history(
        lines, "h.jsonl", "o1", load_policy(), now=to_millis(T0) + 22 * 86_400_000
    )

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
