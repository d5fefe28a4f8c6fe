from datetime import timedelta

import pytest
from pydantic import ValidationError

from processor.config import PolicyConfig


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # The clock would run a day ahead of the events: a package delivered hours before
        # its deadline would be refunded as lost.
        ("allowed_lateness", timedelta(days=-1)),
        ("orphan_ttl", timedelta(days=-7)),
        ("orphan_ttl", timedelta(0)),
        # 0 in the milliseconds the rules count in: every held event would expire at once.
        ("orphan_ttl", timedelta(microseconds=400)),
        # Deadlines past the year 9999 cannot be shown (explain).
        ("orphan_ttl", timedelta(days=3_000_000)),
        ("allowed_lateness", timedelta(days=366)),
    ],
)
def test_a_duration_the_rules_cannot_work_with_is_refused(key: str, value: timedelta) -> None:
    with pytest.raises(ValidationError, match=key):
        PolicyConfig.model_validate({"policy_version": "x", key: value})


def test_no_lateness_is_allowed() -> None:
    assert PolicyConfig(policy_version="x", allowed_lateness=timedelta(0)).allowed_lateness_ms == 0
