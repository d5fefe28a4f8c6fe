"""The history generator: reproducible, SPEC-shaped, and keeps its ordering promises.

Demos, property tests and benchmarks trust generated histories blindly, so these tests
check the lines against SPEC section 3 independently of the processor's own parser.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import generate
from processor.generate import (
    MALFORMED_KINDS,
    generate_history,
    iter_history,
    iter_labelled_history,
    write_history,
)

# --- SPEC section 3, written out independently of the generator ------------------------
COMMON = ("type", "event_id", "occurred_at")
# type -> (required fields, nullable fields), besides the common ones
SPEC_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "order_placed": (("order_id", "merchant_id", "currency", "lines", "shipping_fee_minor"), ()),
    "package_shipped": (("order_id", "package_id", "tracking_number", "carrier", "lines"), ()),
    "cancellation_requested": (("order_id", "request_id"), ()),
    "order_cancelled": (("order_id",), ("request_id",)),
    "claim_filed": (("order_id", "claim_id", "claim_type", "lines"), ("package_id",)),
    "claim_reviewed": (("order_id", "claim_id", "proof_accepted"), ("resolution",)),
    "return_received": (("order_id", "package_id", "condition"), ()),
    "tracking_update": (
        ("tracking_number", "carrier", "status", "carrier_status"),
        ("order_id", "location"),
    ),
}
CLAIM_TYPES = {
    "not_received",
    "damaged",
    "defective",
    "wrong_item",
    "wrong_quantity",
    "missing_item",
}
STATUSES = {
    "info_received",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "attempt_failed",
    "available_for_pickup",
    "delivered",
    "exception",
    "lost",
    "rto_initiated",
    "rto_in_transit",
    "rto_delivered",
}
CONDITIONS = {"intact", "opened", "relabeled"}
UTC_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
CURRENCY = re.compile(r"[A-Z]{3}")
MAX_DISORDER = timedelta(minutes=30)
ORDERS = 2000
SEED = 7

Labelled = list[tuple[str, str | None]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def violations(line: str) -> set[str]:
    """Every way `line` breaks SPEC section 3, named like the generator's malformed kinds.

    "other" is any defect the generator never makes on purpose.
    """
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return {"invalid_json"}
    if not isinstance(event, dict):
        return {"invalid_json"}
    found: set[str] = set()
    spec = SPEC_FIELDS.get(event.get("type"))  # type: ignore[arg-type]
    if spec is None:
        return {"unknown_type"}
    required, nullable = spec
    if any(name not in event for name in (*COMMON, *required)):
        found.add("missing_field")
    if set(event) - {*COMMON, *required, *nullable}:
        found.add("other")
    event_id = event.get("event_id")
    if isinstance(event_id, str) and len(event_id) > 128:
        found.add("long_id")
    elif event_id is not None and not _is_id(event_id):
        found.add("other")
    stamp = event.get("occurred_at")
    if stamp is not None and not (isinstance(stamp, str) and UTC_STAMP.fullmatch(stamp)):
        try:
            naive = datetime.fromisoformat(stamp).tzinfo is None
        except (TypeError, ValueError):
            naive = False
        found.add("zoneless_timestamp" if naive else "other")
    for name in ("order_id", "merchant_id", "package_id", "tracking_number", "carrier"):
        if (
            name in event
            and not _is_id(event[name])
            and not (name in nullable and event[name] is None)
        ):
            found.add("other")
    for name in ("request_id", "claim_id"):
        if event.get(name) is not None and not _is_id(event[name]):
            found.add("other")
    if "shipping_fee_minor" in event:
        fee = event["shipping_fee_minor"]
        found |= {"other"} if not _is_int(fee) else {"negative_amount"} if fee < 0 else set()
    if "currency" in event and not (
        isinstance(event["currency"], str) and CURRENCY.fullmatch(event["currency"])
    ):
        found.add("bad_currency")
    found |= _line_violations(event)
    # enumerations and plain types; an absent field is already missing_field (or nullable)
    allowed: dict[str, Callable[[Any], bool]] = {
        "claim_type": CLAIM_TYPES.__contains__,
        "proof_accepted": lambda value: isinstance(value, bool),
        "resolution": {"refund", "reship", None}.__contains__,
        "condition": CONDITIONS.__contains__,
        "status": STATUSES.__contains__,
        "carrier_status": lambda value: isinstance(value, str),
        "location": lambda value: isinstance(value, str | None),
    }
    if any(not check(event[name]) for name, check in allowed.items() if name in event):
        found.add("other")
    return found


def _line_violations(event: dict[str, Any]) -> set[str]:
    """Defects in `lines`: shape, quantities, prices and duplicate SKUs."""
    if "lines" not in event:
        return set()
    lines = event["lines"]
    kind = event["type"]
    if not isinstance(lines, list) or (not lines and kind != "claim_filed"):
        return {"other"}
    found: set[str] = set()
    keys = (
        {"sku", "quantity", "unit_price_minor"} if kind == "order_placed" else {"sku", "quantity"}
    )
    skus = [line.get("sku") for line in lines if isinstance(line, dict)]
    if len(skus) != len(set(skus)):
        found.add("duplicate_sku")
    for line in lines:
        if not isinstance(line, dict) or set(line) != keys or not _is_id(line["sku"]):
            found.add("other")
            continue
        quantity = line["quantity"]
        if not _is_int(quantity):
            found.add("other")
        elif quantity < 1:
            found.add("zero_quantity")
        if kind == "order_placed":
            price = line["unit_price_minor"]
            if not _is_int(price):
                found.add("other")
            elif price < 0:
                found.add("negative_amount")
    return found


def at(event: dict[str, Any]) -> datetime:
    """occurred_at as an aware datetime (zone-less read as UTC, as the guarantee says)."""
    moment = datetime.fromisoformat(event["occurred_at"])
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def valid_events(labelled: Labelled) -> list[dict[str, Any]]:
    """The decoded non-malformed lines, duplicates included, in output order."""
    return [json.loads(line) for line, kind in labelled if kind is None]


def first_occurrences(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    firsts = []
    for event in events:
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            firsts.append(event)
    return firsts


def assert_disorder_bound(labelled: Labelled, bound: timedelta) -> None:
    """No line comes after a line whose occurred_at is more than `bound` later."""
    latest: datetime | None = None
    for line, _ in labelled:
        try:
            event = json.loads(line)
            moment = at(event)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # malformed beyond reading a time
        if latest is not None:
            assert latest - moment <= bound, line
        latest = moment if latest is None else max(latest, moment)


def events_by_order(firsts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group first occurrences by order; scans join via their package_shipped."""
    order_of_tracking: dict[str, str] = {}
    orders: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in firsts:
        if event["type"] == "tracking_update":
            # the package_shipped that links the tracking number came earlier
            order_id = order_of_tracking[event["tracking_number"]]
            assert event.get("order_id") in (None, order_id)
        else:
            order_id = event["order_id"]
            if event["type"] == "package_shipped":
                assert event["tracking_number"] not in order_of_tracking
                order_of_tracking[event["tracking_number"]] = order_id
        orders[order_id].append(event)
    return orders


def assert_causal_order(labelled: Labelled) -> None:
    """Per order: generation order, non-decreasing time, causes before effects."""
    for order_id, events in events_by_order(first_occurrences(valid_events(labelled))).items():
        assert events[0]["type"] == "order_placed", order_id
        assert [e["type"] for e in events].count("order_placed") == 1
        counters = [int(e["event_id"].rsplit("-", 1)[1]) for e in events]
        assert counters == sorted(counters), order_id  # ids are handed out in story order
        times = [at(e) for e in events]
        assert times == sorted(times), order_id
        seen: set[tuple[str, str]] = set()
        for event in events:
            kind = event["type"]
            if kind == "claim_reviewed":
                assert ("claim", event["claim_id"]) in seen
            if kind == "order_cancelled" and event.get("request_id") is not None:
                assert ("request", event["request_id"]) in seen
            if kind == "claim_filed":
                seen.add(("claim", event["claim_id"]))
            if kind == "cancellation_requested":
                seen.add(("request", event["request_id"]))


@pytest.fixture(scope="module")
def history() -> Labelled:
    return list(iter_labelled_history(ORDERS, SEED))


@pytest.fixture(scope="module")
def events(history: Labelled) -> list[dict[str, Any]]:
    return first_occurrences(valid_events(history))


# --- determinism ------------------------------------------------------------------------
def test_same_arguments_give_identical_lines() -> None:
    first = generate_history(300, 5)
    assert first == generate_history(300, 5)
    assert first == list(iter_history(300, 5))
    assert first == [line for line, _ in iter_labelled_history(300, 5)]
    assert all("\n" not in line for line in first)


def test_different_seeds_give_different_histories() -> None:
    assert generate_history(300, 5) != generate_history(300, 6)


def test_output_does_not_depend_on_hash_randomisation() -> None:
    """Set iteration or str hashing would make "reproducible" fixtures flaky across runs."""
    code = (
        "import hashlib, sys; from processor.generate import generate_history;"
        "sys.stdout.write(hashlib.sha256('\\n'.join(generate_history(200, 3)).encode())"
        ".hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(done.stdout)
    assert digests == {hashlib.sha256("\n".join(generate_history(200, 3)).encode()).hexdigest()}


def test_streaming_in_chunks_does_not_change_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffer is flushed every few thousand orders; where it flushes must not show."""
    whole = generate_history(400, 11, days=5)
    monkeypatch.setattr(generate, "_FLUSH_EVERY", 7)
    assert generate_history(400, 11, days=5) == whole
    monkeypatch.setattr(generate, "_FLUSH_EVERY", 1)
    assert generate_history(400, 11, days=5) == whole


def test_zero_orders_is_an_empty_history() -> None:
    assert generate_history(0, 1) == []


@pytest.mark.parametrize(
    "options",
    [
        {"days": 0},
        {"malformed_share": 1.5},
        {"duplicate_share": -0.1},
        {"tracking_without_order_id_share": 2.0},
        {"max_disorder": timedelta(seconds=-1)},
    ],
)
def test_rejects_nonsense_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        generate_history(10, 1, **options)


def test_write_history_to_a_path_and_a_stream(tmp_path: Path) -> None:
    expected = "".join(line + "\n" for line in generate_history(150, 9))
    target = tmp_path / "events.jsonl"
    assert write_history(target, 150, 9) == expected.count("\n")
    assert target.read_text(encoding="utf-8") == expected
    stream = io.StringIO()
    assert write_history(stream, orders=150, seed=9) == expected.count("\n")
    assert stream.getvalue() == expected


# --- shape ------------------------------------------------------------------------------
def test_valid_lines_follow_spec_and_malformed_ones_break_exactly_their_rule(
    history: Labelled,
) -> None:
    for line, kind in history:
        assert violations(line) == (set() if kind is None else {kind}), (kind, line)


def test_ids_amounts_and_times_are_realistic(events: list[dict[str, Any]]) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    placed = [e for e in events if e["type"] == "order_placed"]
    assert len(placed) == ORDERS
    assert {e["order_id"] for e in placed} == {f"ord-{n}" for n in range(1, ORDERS + 1)}
    assert all(start <= at(e) < start + timedelta(days=60) for e in placed)
    assert all(start <= at(e) < start + timedelta(days=120) for e in events)
    assert all(re.fullmatch(rf"evt-{SEED}-\d+", e["event_id"]) for e in events)
    assert len({e["merchant_id"] for e in placed}) <= 50
    for event in placed:
        assert 1 <= len(event["lines"]) <= 4
        assert 0 <= event["shipping_fee_minor"] <= 1500
        for line in event["lines"]:
            assert 1 <= line["quantity"] <= 3
            assert 500 <= line["unit_price_minor"] <= 20000
    shipped = [e for e in events if e["type"] == "package_shipped"]
    assert len({e["tracking_number"] for e in shipped}) == len(shipped)
    assert all(re.fullmatch(r"pkg-\d+-[123]", e["package_id"]) for e in shipped)


def test_units_ship_exactly_once_unless_the_order_is_cancelled(
    events: list[dict[str, Any]],
) -> None:
    for order_id, story in events_by_order(events).items():
        ordered = {line["sku"]: line["quantity"] for line in story[0]["lines"]}
        shipped: Counter[str] = Counter()
        for event in story:
            if event["type"] == "package_shipped":
                shipped.update({line["sku"]: line["quantity"] for line in event["lines"]})
        cancelled = any(e["type"] == "order_cancelled" for e in story)
        if not cancelled:
            assert shipped == Counter(ordered), order_id
        else:
            assert all(shipped[sku] <= ordered.get(sku, 0) for sku in shipped), order_id
            assert shipped != Counter(ordered), order_id
        for event in story:
            if event["type"] == "claim_filed":
                assert all(line["quantity"] <= ordered[line["sku"]] for line in event["lines"])


# --- ordering guarantees ----------------------------------------------------------------
def test_disorder_never_exceeds_thirty_minutes(history: Labelled) -> None:
    assert_disorder_bound(history, MAX_DISORDER)
    moments = [at(e) for e in valid_events(history)]
    assert moments != sorted(moments), "expected some disorder, got a sorted file"


def test_each_orders_events_keep_their_causal_order(history: Labelled) -> None:
    assert_causal_order(history)


def test_duplicates_are_identical_redeliveries_after_the_original(history: Labelled) -> None:
    position: dict[str, tuple[int, str]] = {}
    duplicates = 0
    for index, (line, kind) in enumerate(history):
        if kind is not None:
            continue
        event_id = json.loads(line)["event_id"]
        if event_id in position:
            duplicates += 1
            first_index, first_line = position[event_id]
            assert first_line == line
            assert first_index < index
        else:
            position[event_id] = (index, line)
    assert 0.005 < duplicates / len(position) < 0.02


# --- the mix ----------------------------------------------------------------------------
def test_mix_covers_every_type_status_and_claim(
    history: Labelled, events: list[dict[str, Any]]
) -> None:
    types = Counter(e["type"] for e in events)
    assert set(types) == set(SPEC_FIELDS)
    scans = [e for e in events if e["type"] == "tracking_update"]
    assert {e["status"] for e in scans} == STATUSES
    claims = [e for e in events if e["type"] == "claim_filed"]
    assert {e["claim_type"] for e in claims} == CLAIM_TYPES
    assert any(not c["lines"] for c in claims)
    assert any(c["lines"] for c in claims)
    assert any(c.get("package_id") is None for c in claims)
    reviews = [e for e in events if e["type"] == "claim_reviewed"]
    assert {r.get("resolution") for r in reviews} == {"refund", "reship", None}
    accepted = sum(r["proof_accepted"] for r in reviews) / len(reviews)
    assert 0.6 < accepted < 0.8
    returns = {e["condition"] for e in events if e["type"] == "return_received"}
    assert "intact" in returns
    assert len(returns) >= 2
    assert {e["currency"] for e in events if e["type"] == "order_placed"} == {"USD", "EUR", "GBP"}
    assert len({e["carrier"] for e in scans}) >= 8
    without_order = sum(e.get("order_id") is None for e in scans) / len(scans)
    assert 0.27 < without_order < 0.33
    assert any("order_id" not in e for e in scans)
    assert any("location" not in e for e in scans)
    assert any(e.get("location") is None for e in scans)
    malformed = Counter(kind for _, kind in history if kind is not None)
    assert set(malformed) == set(MALFORMED_KINDS)


def test_mix_has_the_stories_the_policy_cares_about(events: list[dict[str, Any]]) -> None:
    stories = events_by_order(events)
    counts: Counter[str] = Counter()
    for story in stories.values():
        kinds = [e["type"] for e in story]
        shipped = {e["tracking_number"]: at(e) for e in story if e["type"] == "package_shipped"}
        delivered = {
            e["tracking_number"]: at(e)
            for e in story
            if e["type"] == "tracking_update" and e["status"] == "delivered"
        }
        last_status: dict[str, str] = {}
        for e in story:
            if e["type"] == "tracking_update":
                last_status[e["tracking_number"]] = e["status"]
        if len(shipped) > 1:
            counts["split"] += 1
        if "order_cancelled" in kinds and not shipped:
            counts["intercepted"] += 1
        if "order_cancelled" in kinds and shipped:
            counts["partially_intercepted"] += 1
        if "cancellation_requested" in kinds and "order_cancelled" not in kinds:
            assert kinds.index("cancellation_requested") > kinds.index("package_shipped")
            counts["too_late"] += 1
        if any(delivered[tn] - shipped[tn] >= timedelta(days=21) for tn in delivered):
            counts["late"] += 1
        if any(
            s in {"info_received", "picked_up", "in_transit", "exception"}
            for s in last_status.values()
        ) or len(last_status) < len(shipped):
            counts["lost_silently"] += 1
        for e in story:
            if (
                e["type"] == "claim_filed"
                and e["claim_type"] == "missing_item"
                and (len(delivered) < len(shipped) or at(e) < max(delivered.values()))
            ):
                counts["missing_item_before_last_delivery"] += 1
            if (
                e["type"] == "claim_filed"
                and e["claim_type"] == "not_received"
                and any(at(e) > moment for moment in delivered.values())
            ):
                counts["not_received_but_delivered"] += 1
    for story_kind in (
        "split",
        "intercepted",
        "partially_intercepted",
        "too_late",
        "late",
        "lost_silently",
        "missing_item_before_last_delivery",
        "not_received_but_delivered",
    ):
        assert counts[story_kind] > 0, story_kind
    assert 0.12 < counts["split"] / ORDERS < 0.18


def test_shares_are_honoured() -> None:
    clean = list(
        iter_labelled_history(
            300, 2, malformed_share=0, duplicate_share=0, tracking_without_order_id_share=0
        )
    )
    assert all(kind is None for _, kind in clean)
    decoded = [json.loads(line) for line, _ in clean]
    assert len({e["event_id"] for e in decoded}) == len(decoded)
    assert all(e["order_id"] for e in decoded if e["type"] == "tracking_update")
    anonymous = generate_history(100, 2, tracking_without_order_id_share=1, malformed_share=0)
    scans = [json.loads(line) for line in anonymous if '"tracking_update"' in line]
    assert scans
    assert all(e.get("order_id") is None for e in scans)


def test_start_and_days_place_the_orders() -> None:
    start = datetime(2025, 12, 30, 22, 0, tzinfo=UTC)
    lines = generate_history(200, 4, start=start, days=3, malformed_share=0, duplicate_share=0)
    placed = [at(json.loads(line)) for line in lines if '"order_placed"' in line]
    assert len(placed) == 200
    assert all(start <= moment < start + timedelta(days=3) for moment in placed)


# --- properties over many small histories ---------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    orders=st.integers(1, 40),
    seed=st.integers(-(2**31), 2**31),
    options=st.fixed_dictionaries(
        {
            "days": st.integers(1, 10),
            "malformed_share": st.floats(0, 0.3),
            "duplicate_share": st.floats(0, 0.5),
            "tracking_without_order_id_share": st.floats(0, 1),
            "max_disorder": st.integers(0, 120).map(lambda m: timedelta(minutes=m)),
        }
    ),
)
def test_guarantees_hold_for_any_arguments(orders: int, seed: int, options: dict[str, Any]) -> None:
    history = list(iter_labelled_history(orders, seed, **options))
    bound = options["max_disorder"]
    for line, kind in history:
        assert violations(line) == (set() if kind is None else {kind})
    assert_disorder_bound(history, bound)
    assert_causal_order(history)


# --- speed ----------------------------------------------------------------------------------
