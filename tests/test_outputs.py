"""Outputs as data: deterministic ids, and decisions surviving the decision topic's Avro."""

import uuid
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.config import load_policy
from processor.generate import generate_history
from processor.outputs import (
    ID_NAMESPACE,
    DeadLetter,
    Decision,
    Output,
    RefundCommand,
    RefundLine,
    ReshipCommand,
    ReshipLine,
    decision_from_dict,
    decision_id,
    iso_millis,
    output_to_dict,
    refund_command_id,
    reship_command_id,
    uuid5,
)
from processor.replay import replay
from processor.serde import Serde


@given(st.text())
def test_ids_are_the_standard_uuid5_of_their_name(name: str) -> None:
    assert uuid5(name) == str(uuid.uuid5(ID_NAMESPACE, name))


def test_a_decision_id_is_pinned() -> None:
    """Changing how ids are derived would change every id ever issued."""
    assert decision_id("o1", "ev-1", "package:p1", "lost") == "e30554d0-15c4-531f-bc2c-bd15846cbd89"


def test_command_ids_of_ids_without_separators_are_those_ever_issued() -> None:
    assert refund_command_id("o1", "package:p1") == uuid5("refund|o1|package:p1")
    assert reship_command_id("o1", "c1") == uuid5("reship|o1|claim:c1")


def test_ids_that_contain_the_separator_name_different_refunds() -> None:
    """Joined as they were, these two refunds of two orders had one command id."""
    assert refund_command_id("o1", "claim:c|cancellation") != refund_command_id(
        "o1|claim:c", "cancellation"
    )
    assert refund_command_id("o\\", "package:p") != refund_command_id("o", "\\package:p")
    assert refund_command_id("a\\", "b|c") != refund_command_id("a|b\\", "c")


@pytest.mark.parametrize(
    ("order_id", "subject", "name"),
    [
        ("o|1", "cancellation", "refund|o\\|1|cancellation"),
        ("o\\1", "cancellation", "refund|o\\\\1|cancellation"),
        ("o1", "claim:c|\\", "refund|o1|claim:c\\|\\\\"),
    ],
)
def test_a_separator_or_backslash_in_an_id_is_escaped_in_the_name_of_its_command_id(
    order_id: str, subject: str, name: str
) -> None:
    """Pinned as the plain names are: changing the escaping would change issued ids."""
    assert refund_command_id(order_id, subject) == uuid5(name)


@given(st.tuples(st.text("ab|\\"), st.text("ab|\\")), st.tuples(st.text("ab|\\"), st.text("ab|\\")))
def test_different_order_and_subject_never_share_a_command_id(
    one: tuple[str, str], other: tuple[str, str]
) -> None:
    if one != other:
        assert refund_command_id(*one) != refund_command_id(*other)


def test_decisions_read_back_from_avro_equal_the_decisions_written() -> None:
    serde = Serde.single_object()
    decisions = [
        o
        for o in replay(generate_history(60, seed=3), "h.jsonl", load_policy())
        if isinstance(o, Decision)
    ]
    # Both kinds of nullable fields are exercised: amounts and rules present and absent.
    assert {d.amount_minor is None for d in decisions} == {True, False}
    assert {d.rule is None for d in decisions} == {True, False}
    # And a time that is not a whole second.
    decisions.append(replace(decisions[0], decided_at=decisions[0].decided_at + 123))

    for decision in decisions:
        encoded = serde.encode("decision", output_to_dict(decision, iso_times=False), "decisions")
        assert decision_from_dict(serde.decode(encoded, "decisions")) == decision


@pytest.mark.parametrize(
    ("millis", "text"),
    [(0, "1970-01-01T00:00:00.000Z"), (1772359200123, "2026-03-01T10:00:00.123Z")],
)
def test_a_time_is_written_in_utc_to_the_millisecond(millis: int, text: str) -> None:
    assert iso_millis(millis) == text


_REFUND = RefundCommand(
    command_id="cmd-1",
    merchant_id="m1",
    order_id="o1",
    package_id="p1",
    claim_id=None,
    reason="lost",
    amount_minor=4500,
    shipping_fee_minor=500,
    currency="USD",
    lines=(RefundLine("A", 2, 2000),),
    evidence_event_ids=("ev-1", "ev-2"),
    decided_at=1772359200123,
    policy_version="v1",
)
_RESHIP = ReshipCommand(
    command_id="cmd-2",
    merchant_id="m1",
    order_id="o1",
    claim_id="c1",
    lines=(ReshipLine("A", 1),),
    evidence_event_ids=("ev-3",),
    decided_at=1772359200000,
    policy_version="v1",
)
_DEAD_LETTER = DeadLetter(
    origin="h.jsonl:4", reason="invalid_json", message="m", payload="{broken", key="o1"
)


@pytest.mark.parametrize(
    ("output", "record"),
    [
        (
            _REFUND,
            {
                "type": "refund_command",
                "command_id": "cmd-1",
                "merchant_id": "m1",
                "order_id": "o1",
                "package_id": "p1",
                "claim_id": None,
                "reason": "lost",
                "amount_minor": 4500,
                "shipping_fee_minor": 500,
                "currency": "USD",
                "lines": [{"sku": "A", "quantity": 2, "amount_minor": 2000}],
                "evidence_event_ids": ["ev-1", "ev-2"],
                "decided_at": "2026-03-01T10:00:00.123Z",
                "policy_version": "v1",
            },
        ),
        (
            _RESHIP,
            {
                "type": "reship_command",
                "command_id": "cmd-2",
                "merchant_id": "m1",
                "order_id": "o1",
                "claim_id": "c1",
                "lines": [{"sku": "A", "quantity": 1}],
                "evidence_event_ids": ["ev-3"],
                "decided_at": "2026-03-01T10:00:00.000Z",
                "policy_version": "v1",
            },
        ),
        (
            _DEAD_LETTER,
            {
                "type": "dead_letter",
                "origin": "h.jsonl:4",
                "reason": "invalid_json",
                "message": "m",
                "key": "o1",
                "payload": "{broken",
            },
        ),
    ],
)
def test_an_output_as_json_data_has_every_field_and_times_in_iso(
    output: Output, record: dict[str, Any]
) -> None:
    assert output_to_dict(output) == record
