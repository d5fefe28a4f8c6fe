import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from processor.config import PolicyConfig, PolicyConfigError, load_policy

REPO = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("policy_version", ""),
        ("policy_version", "v" * 65),
        ("lost_after_days", 0),
        ("lost_after_days", 366),
        ("orphan_ttl", timedelta(days=366)),
        ("default_partial_resolution", "credit"),
    ],
)
def test_a_policy_value_out_of_range_is_refused(key: str, value: object) -> None:
    with pytest.raises(ValidationError, match=key):
        PolicyConfig.model_validate({"policy_version": "x", key: value})


@pytest.mark.parametrize(
    "values",
    [
        {"lost_after_days": 1, "orphan_ttl": timedelta(milliseconds=1)},
        {
            "lost_after_days": 365,
            "allowed_lateness": timedelta(days=365),
            "orphan_ttl": timedelta(days=365),
        },
    ],
)
def test_the_extreme_values_a_policy_may_hold_are_accepted(values: dict[str, object]) -> None:
    PolicyConfig.model_validate({"policy_version": "v" * 64, **values})


def test_a_policy_file_that_omits_a_parameter_gets_its_documented_default() -> None:
    policy = PolicyConfig(policy_version="x")

    assert policy.lost_after_days == 20
    assert policy.allowed_lateness == timedelta(hours=1)
    assert policy.orphan_ttl == timedelta(days=7)
    assert policy.default_partial_resolution == "refund"


def test_durations_are_counted_in_milliseconds() -> None:
    policy = PolicyConfig(
        policy_version="x",
        lost_after_days=2,
        allowed_lateness=timedelta(seconds=1.5),
        orphan_ttl=timedelta(milliseconds=7),
    )

    assert policy.lost_after_ms == 2 * 86_400_000
    assert policy.allowed_lateness_ms == 1_500
    assert policy.orphan_ttl_ms == 7


def test_a_policy_is_frozen() -> None:
    policy = PolicyConfig(policy_version="x")

    with pytest.raises(ValidationError):
        policy.lost_after_days = 1  # type: ignore[misc]


def test_the_default_policy_file_is_the_checkouts_policy_yaml() -> None:
    assert load_policy() == load_policy(REPO / "config" / "policy.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "policy_version: x\nallowed_lateness: 1h\n",
            r": allowed_lateness: .* \(an ISO 8601 duration, e\.g\. PT1H or P7D\)$",
        ),
        (
            "policy_version: x\norphan_ttl_days: 7\n",
            r": orphan_ttl_days: Extra inputs are not permitted \(did you mean 'orphan_ttl'\?\)$",
        ),
        ("policy_version: x\nlost_after_days: 0\n", r": lost_after_days: .*greater than or equal"),
        ("- policy_version: x\n", r" must hold a mapping of keys to values$"),
        ("policy_version: [x\n", r" is not valid YAML: "),
    ],
)
def test_a_policy_file_that_cannot_be_used_is_named_with_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(PolicyConfigError, match=rf"^policy file {re.escape(str(path))}{expected}"):
        load_policy(path)


def test_a_missing_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError, match=r"cannot read policy file .*nope\.yaml"):
        load_policy(tmp_path / "nope.yaml")
