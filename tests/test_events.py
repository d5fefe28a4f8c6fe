"""Every way an input can be invalid maps to its own dead-letter reason."""

import codecs
import json
from datetime import datetime
from typing import Any

import pytest

from processor.events import (
    MAX_MESSAGE_CHARS,
    ClaimFiled,
    InvalidEventError,
    OrderPlaced,
    event_to_dict,
    event_to_json,
    parse_event,
    parse_event_json,
    reject_future,
    to_millis,
)
from tests.factories import (
    claim_filed,
    claim_reviewed,
    order_cancelled,
    order_placed,
    return_received,
    scan,
    shipped,
)


def _rejected(event: dict[str, Any] | str) -> InvalidEventError:
    text = event if isinstance(event, str) else json.dumps(event)
    with pytest.raises(InvalidEventError) as caught:
        parse_event_json(text)
    return caught.value


def _reason(event: dict[str, Any] | str) -> str:
    return _rejected(event).reason


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


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (claim_filed("damaged"), "package_id"),
        (scan("delivered"), "order_id"),
        (scan("delivered"), "location"),
        (order_cancelled(), "request_id"),
        (claim_reviewed(), "resolution"),
    ],
)
def test_an_absent_nullable_field_is_read_as_null(event: dict[str, Any], field: str) -> None:
    assert getattr(parse_event_json(json.dumps(_without(event, field))), field) is None


@pytest.mark.parametrize(
    "claim", [claim_filed("damaged") | {"lines": None}, _without(claim_filed("damaged"), "lines")]
)
def test_a_claim_with_null_or_absent_lines_names_no_lines(claim: dict[str, Any]) -> None:
    event = parse_event_json(json.dumps(claim))
    assert isinstance(event, ClaimFiled)
    assert event.lines == []


@pytest.mark.parametrize(
    "event",
    [
        order_placed(lines={"A": (10**6, 1)}),
        order_placed(lines={"A": (1, 10**12)}, fee=10**12),
        order_placed(lines={"A": (2, 5 * 10**11)}),  # the lines add up to the maximum
        order_placed(lines={"A": (1, 0)}, fee=0),
        order_placed(lines={f"S{n}": (1, 1) for n in range(1000)}),
        shipped(lines={f"S{n}": 1 for n in range(1000)}),
        order_placed(event_id="e" * 128),
        order_placed(" o 1 "),  # an id is kept as it is, spaces and all
        order_placed(when="1970-01-01T00:00:00Z"),
        scan("delivered") | {"carrier_status": "s" * 256, "location": "l" * 256},
        claim_filed("damaged", package_id="p1", lines={"A": 1, "B": 2}),
        claim_reviewed(resolution="reship"),
        return_received(condition="relabeled"),
        order_cancelled(request_id=None),
    ],
)
def test_a_valid_event_even_at_the_limits_parses_and_writes_back_as_it_was(
    event: dict[str, Any],
) -> None:
    assert json.loads(event_to_json(parse_event_json(json.dumps(event)))) == event


def test_fields_an_event_does_not_know_are_ignored() -> None:
    """A producer may add fields before the processor knows them."""
    order = order_placed()
    lines = [line | {"colour": "red"} for line in order["lines"]]
    extended = order | {"coupon": "SPRING", "lines": lines}
    assert parse_event_json(json.dumps(extended)) == parse_event_json(json.dumps(order))


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
        (order_placed() | {"occurred_at": "2026-02-30T10:00:00Z"}, "invalid_timestamp"),
        (order_placed() | {"occurred_at": "0001-01-01T00:00:00Z"}, "invalid_timestamp"),
        (order_placed() | {"occurred_at": "1969-12-31T23:59:59.999Z"}, "invalid_timestamp"),
        (order_placed(lines={"A": (0, 1000)}), "invalid_quantity"),
        (shipped(lines={"A": -1}), "invalid_quantity"),
        (order_placed(fee=-1), "invalid_amount"),
        (order_placed(lines={"A": (1, 10**12 + 1)}), "invalid_amount"),
        # Each line within the limits, the order's refund beyond an Avro long.
        (order_placed(lines={sku: (10**6, 10**12) for sku in "ABCDEFGHIJ"}), "invalid_amount"),
        (order_placed(lines={"A": (2, 5 * 10**11 + 1)}), "invalid_amount"),
        (order_placed(lines={"A": (1, 10**12), "B": (1, 1)}), "invalid_amount"),
        (order_placed(lines={"A": (10**6 + 1, 1)}), "invalid_quantity"),
        (
            order_placed() | {"lines": [{"sku": "A", "quantity": "2", "unit_price_minor": 1}]},
            "invalid_field",
        ),
        (order_placed(lines={}), "invalid_field"),
        (shipped(lines={}), "invalid_field"),
        (order_placed(lines={f"S{n}": (1, 1) for n in range(1001)}), "too_many_lines"),
        (shipped(lines={f"S{n}": 1 for n in range(1001)}), "too_many_lines"),
        (claim_filed("damaged", lines={f"S{n}": 1 for n in range(1001)}), "too_many_lines"),
        (order_placed(currency="usd"), "invalid_currency"),
        (order_placed(currency="US"), "invalid_currency"),
        (order_placed(currency="ÉUR"), "invalid_currency"),
        (order_placed(currency="U5D"), "invalid_currency"),
        (
            order_placed() | {"lines": [{"sku": "A", "quantity": 1, "unit_price_minor": 1}] * 2},
            "duplicate_sku",
        ),
        (shipped() | {"lines": [{"sku": "A", "quantity": 1}] * 2}, "duplicate_sku"),
        (claim_filed("damaged") | {"lines": [{"sku": "A", "quantity": 1}] * 2}, "duplicate_sku"),
        (order_placed(event_id="e" * 129), "id_too_long"),
        (order_placed("o" * 129), "id_too_long"),
        (order_placed() | {"event_id": ""}, "invalid_field"),
        (scan("teleported"), "invalid_field"),
        # Free text, not an id: too long is no id_too_long.
        (scan("delivered") | {"carrier_status": "s" * 257}, "invalid_field"),
        (scan("delivered") | {"location": "l" * 257}, "invalid_field"),
        (claim_reviewed() | {"proof_accepted": "true"}, "invalid_field"),
        (claim_reviewed() | {"proof_accepted": 1}, "invalid_field"),
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
    assert caught.value.message == (
        "occurred_at: 2026-03-01T10:00:00+00:00 is more than allowed_lateness after the wall"
        " clock (2026-03-01T08:59:59.999000+00:00)"
    )


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


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            order_placed(lines={"A": (0, 1000)}),
            "lines.0.quantity: quantity must be between 1 and 1000000, got 0",
        ),
        (_without(order_placed(), "type"), "type: Field required"),
        ("[1, 2]", "event: Input should be an object"),
        (
            order_placed(currency="usd", fee=-1),
            "currency: currency must be three capital letters (ISO 4217), got 'usd'"
            " (and 1 more problem)",
        ),
        (
            order_placed(lines={"A": (0, 1000)}, currency="usd", fee=-1),
            "currency: currency must be three capital letters (ISO 4217), got 'usd'"
            " (and 2 more problems)",
        ),
    ],
)
def test_the_message_names_the_offending_field_and_counts_the_other_problems(
    event: dict[str, Any] | str, message: str
) -> None:
    assert _rejected(event).message == message


def test_a_message_of_the_maximum_length_is_whole_and_a_longer_one_says_what_was_cut() -> None:
    assert InvalidEventError("r", "m" * MAX_MESSAGE_CHARS).message == "m" * MAX_MESSAGE_CHARS
    assert InvalidEventError("r", "m" * (MAX_MESSAGE_CHARS + 3)).message == (
        "m" * MAX_MESSAGE_CHARS + "... (3 more characters)"
    )


@pytest.mark.parametrize(
    "event",
    [
        order_placed(),
        shipped(),
        scan("delivered"),
        claim_filed("damaged", package_id="p1", lines={"A": 1}),
        claim_reviewed(resolution="refund"),
        order_cancelled(),
    ],
)
def test_an_event_as_its_avro_record_data_parses_back_to_itself(event: dict[str, Any]) -> None:
    parsed = parse_event_json(json.dumps(event))
    record = event_to_dict(parsed)

    assert isinstance(record["occurred_at"], datetime)  # Avro's timestamp-millis
    assert parse_event(record) == parsed


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


def test_event_time_is_the_instant_whatever_the_offset_it_is_written_in() -> None:
    utc = parse_event_json(json.dumps(order_placed(when="2026-03-01T10:00:00Z")))
    paris = parse_event_json(json.dumps(order_placed(when="2026-03-01T11:00:00+01:00")))
    assert paris.at == utc.at == 1772359200000
