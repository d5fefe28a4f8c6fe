"""Every way an input can be invalid maps to its own dead-letter reason."""

import codecs
import json
from datetime import datetime
from typing import Any

import pytest

from processor.events import (
    MAX_MESSAGE_CHARS,
    InvalidEventError,
    OrderPlaced,
    parse_event_json,
    reject_future,
    to_millis,
)
from tests.factories import claim_filed, order_placed, scan, shipped


def _reason(event: dict[str, Any] | str) -> str:
    text = event if isinstance(event, str) else json.dumps(event)
    with pytest.raises(InvalidEventError) as caught:
        parse_event_json(text)
    return caught.value.reason


def _without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


def test_a_valid_order_parses_with_exact_fields() -> None:
    event = parse_event_json(json.dumps(order_placed(fee=700)))
    assert isinstance(event, OrderPlaced)
    assert event.shipping_fee_minor == 700
    assert [(line.sku, line.quantity, line.unit_price_minor) for line in event.lines] == [
        ("A", 2, 1000),
        ("B", 1, 2500),
    ]


def test_null_and_absent_nullable_fields_are_accepted() -> None:
    claim = claim_filed("damaged") | {"lines": None}
    del claim["package_id"]
    assert parse_event_json(json.dumps(claim)).type == "claim_filed"
    assert parse_event_json(json.dumps(_without(scan("delivered"), "order_id"))).type == (
        "tracking_update"
    )


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        (order_placed() | {"type": "order_exploded"}, "unknown_type"),
        (_without(order_placed(), "type"), "missing_field"),
        (_without(order_placed(), "merchant_id"), "missing_field"),
        (order_placed() | {"shipping_fee_minor": "500"}, "invalid_field"),
        (order_placed() | {"occurred_at": "2026-03-01T10:00:00"}, "invalid_timestamp"),
        (order_placed() | {"occurred_at": "yesterday"}, "invalid_timestamp"),
        (order_placed() | {"occurred_at": 1772359200}, "invalid_timestamp"),
        # Digits in a string are no ISO 8601 either (pydantic reads them as epoch time).
        (order_placed() | {"occurred_at": "1772359200"}, "invalid_timestamp"),
        (order_placed() | {"occurred_at": "0"}, "invalid_timestamp"),
        (order_placed() | {"occurred_at": "0001-01-01T00:00:00Z"}, "invalid_timestamp"),
        (order_placed() | {"occurred_at": "1969-12-31T23:59:59.999Z"}, "invalid_timestamp"),
        (order_placed(lines={"A": (0, 1000)}), "invalid_quantity"),
        (shipped(lines={"A": -1}), "invalid_quantity"),
        (order_placed(fee=-1), "invalid_amount"),
        (order_placed(lines={"A": (1, 10**12 + 1)}), "invalid_amount"),
        # Each line within the limits, the order's refund beyond an Avro long.
        (order_placed(lines={sku: (10**6, 10**12) for sku in "ABCDEFGHIJ"}), "invalid_amount"),
        (order_placed(lines={"A": (2, 5 * 10**11 + 1)}), "invalid_amount"),
        (order_placed(lines={f"S{n}": (1, 1) for n in range(1001)}), "too_many_lines"),
        (shipped(lines={f"S{n}": 1 for n in range(1001)}), "too_many_lines"),
        (claim_filed("damaged", lines={f"S{n}": 1 for n in range(1001)}), "too_many_lines"),
        (order_placed(currency="usd"), "invalid_currency"),
        (order_placed(currency="US"), "invalid_currency"),
        (
            order_placed() | {"lines": [{"sku": "A", "quantity": 1, "unit_price_minor": 1}] * 2},
            "duplicate_sku",
        ),
        (shipped() | {"lines": [{"sku": "A", "quantity": 1}] * 2}, "duplicate_sku"),
        (order_placed(event_id="e" * 129), "id_too_long"),
        (order_placed("o" * 129), "id_too_long"),
        (order_placed() | {"event_id": ""}, "invalid_field"),
        (scan("teleported"), "invalid_field"),
        (claim_filed("damaged") | {"claim_type": "ennui"}, "invalid_field"),
    ],
)
def test_invalid_input_gets_its_specific_reason(event: dict[str, Any] | str, reason: str) -> None:
    assert _reason(event) == reason


def test_an_event_more_than_allowed_lateness_after_the_wall_clock_is_rejected() -> None:
    event = parse_event_json(json.dumps(order_placed()))
    lateness = 3_600_000
    now = event.at - lateness

    reject_future(event, now, lateness)  # the clock would reach the wall clock, no further
    with pytest.raises(InvalidEventError) as caught:
        reject_future(event, now - 1, lateness)
    assert caught.value.reason == "occurred_in_future"
    assert caught.value.message.startswith("occurred_at: 2026-03-01T10:00:00+00:00 is more")


def test_a_huge_value_is_quoted_in_its_message_only_in_part() -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event_json(json.dumps(order_placed(currency="é" * 2_000_000)))
    message = caught.value.message
    assert message.startswith("currency: currency must be three capital letters")
    assert message.endswith(" more characters)")
    assert len(message) < MAX_MESSAGE_CHARS + 40


@pytest.mark.parametrize(
    "line",
    ["\ufeff" + json.dumps(order_placed()), codecs.BOM_UTF8 + json.dumps(order_placed()).encode()],
)
def test_a_byte_order_mark_before_the_json_is_skipped(line: str | bytes) -> None:
    assert parse_event_json(line).type == "order_placed"


def test_the_message_names_the_offending_field() -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event_json(json.dumps(order_placed(lines={"A": (0, 1000)})))
    assert caught.value.message.startswith("lines.0.quantity:")


def test_an_id_of_exactly_128_characters_is_accepted() -> None:
    assert parse_event_json(json.dumps(order_placed(event_id="e" * 128))).event_id == "e" * 128


@pytest.mark.parametrize(
    ("moment", "millis"),
    [
        ("1970-01-01T00:00:00.0019Z", 1),
        ("1970-01-01T01:00:00.000+01:00", 0),
        ("1969-12-31T23:59:59.9995Z", -1),
        ("2026-03-01T10:00:00.123456-05:30", 1772379000123),
        # Far enough out that a float timestamp rounds .999999 up to the next second.
        ("3000-01-01T00:00:00.999999Z", 32503680000999),
    ],
)
def test_event_time_is_whole_milliseconds_truncated_like_avro(moment: str, millis: int) -> None:
    assert to_millis(datetime.fromisoformat(moment)) == millis
