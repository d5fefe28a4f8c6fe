"""Output ids: the same UUIDv5 as the standard library's, for any name."""

import uuid

from hypothesis import given
from hypothesis import strategies as st

from processor.outputs import ID_NAMESPACE, decision_id, uuid5


@given(st.text())
def test_ids_are_the_standard_uuid5_of_their_name(name: str) -> None:
    assert uuid5(name) == str(uuid.uuid5(ID_NAMESPACE, name))


def test_a_decision_id_is_pinned() -> None:
    """Changing how ids are derived would change every id ever issued."""
    assert decision_id("o1", "ev-1", "package:p1", "lost") == "e30554d0-15c4-531f-bc2c-bd15846cbd89"
