"""Outputs as data: deterministic ids, and decisions surviving the decision topic's Avro."""

import uuid

from hypothesis import given
from hypothesis import strategies as st

from processor.config import load_policy
from processor.generate import generate_history
from processor.outputs import (
    ID_NAMESPACE,
    Decision,
    decision_from_dict,
    decision_id,
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

    for decision in decisions:
        encoded = serde.encode("decision", output_to_dict(decision, iso_times=False), "decisions")
        assert decision_from_dict(serde.decode(encoded, "decisions")) == decision
