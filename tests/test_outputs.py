"""Outputs as data: a decision survives the decision topic's Avro both ways."""

from processor.config import load_policy
from processor.generate import generate_history
from processor.outputs import Decision, decision_from_dict, output_to_dict
from processor.replay import replay
from processor.serde import Serde


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
