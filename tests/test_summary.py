"""The summary's arithmetic over output records, and the refund comparison."""

import io
from collections import Counter
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from processor.summary import (
    Tally,
    counts_table,
    format_minor,
    refund_diff,
    refunds_table,
    summarize,
)


def _refund(command_id: str, reason: str, amount: int, currency: str) -> dict[str, Any]:
    return {
        "type": "refund_command",
        "command_id": command_id,
        "reason": reason,
        "amount_minor": amount,
        "currency": currency,
    }


def _decision(outcome: str, code: str) -> dict[str, Any]:
    return {"type": "decision", "outcome": outcome, "code": code}


def test_refunds_are_counted_and_summed_per_reason_and_currency() -> None:
    summary = summarize(
        [
            _refund("a", "lost", 1000, "USD"),
            _refund("b", "lost", 250, "USD"),
            _refund("c", "lost", 700, "EUR"),
            _refund("d", "damaged", 99, "USD"),
        ]
    )

    assert summary.refunds == {
        ("lost", "USD"): Tally(2, 1250),
        ("lost", "EUR"): Tally(1, 700),
        ("damaged", "USD"): Tally(1, 99),
    }
    assert summary.refund_totals() == {"EUR": Tally(1, 700), "USD": Tally(3, 1349)}


def test_decisions_reships_and_dead_letters_are_counted_by_code_and_reason() -> None:
    summary = summarize(
        [
            _decision("refunded", "lost"),
            _decision("denied", "proof_rejected"),
            _decision("denied", "proof_rejected"),
            _decision("denied", "cancellation_too_late"),
            _decision("anomaly", "delivered_after_refund"),
            _decision("pending", "awaiting_tracking"),
            {"type": "reship_command", "command_id": "r"},
            {"type": "dead_letter", "reason": "bad_magic"},
            {"type": "dead_letter", "reason": "invalid_json"},
            {"type": "dead_letter", "reason": "bad_magic"},
        ]
    )

    assert summary.outcomes == {"refunded": 1, "denied": 3, "anomaly": 1, "pending": 1}
    assert summary.denials == {"proof_rejected": 2, "cancellation_too_late": 1}
    assert summary.anomalies == {"delivered_after_refund": 1}
    assert summary.reships == 1
    assert summary.dead_letters == {"bad_magic": 2, "invalid_json": 1}
    assert summary.refunds == {}


def test_refund_diff_finds_missing_extra_and_repeated_commands() -> None:
    expected = summarize([_refund("a", "lost", 100, "USD"), _refund("b", "lost", 5, "USD")])
    same_ids_other_reason = summarize(
        [_refund("a", "late_delivery", 100, "USD"), _refund("b", "lost", 5, "USD")]
    )
    wrong = summarize(
        [
            _refund("a", "lost", 100, "USD"),
            _refund("a", "lost", 100, "USD"),
            _refund("b", "lost", 6, "USD"),
        ]
    )

    assert refund_diff(same_ids_other_reason, expected).same
    diff = refund_diff(wrong, expected)
    assert (diff.missing, diff.extra, diff.duplicated, diff.same) == (1, 1, 1, False)


def test_amounts_are_shown_in_the_currencys_major_unit() -> None:
    assert format_minor(123456, "USD") == "1,234.56"
    assert format_minor(5, "EUR") == "0.05"
    assert format_minor(-1999, "GBP") == "-19.99"
    assert format_minor(123456, "JPY") == "123,456"
    assert format_minor(1234, "KWD") == "1.234"


def test_a_command_issued_twice_is_a_difference_even_with_no_id_missing() -> None:
    expected = summarize([_refund("a", "lost", 100, "USD")])
    twice = summarize([_refund("a", "lost", 100, "USD"), _refund("a", "lost", 100, "USD")])

    diff = refund_diff(twice, expected)

    assert (diff.missing, diff.extra, diff.duplicated, diff.same) == (0, 0, 1, False)


def test_a_command_expected_but_never_issued_is_missing_not_extra() -> None:
    expected = summarize([_refund("a", "lost", 100, "USD"), _refund("b", "lost", 5, "USD")])

    diff = refund_diff(summarize([_refund("a", "lost", 100, "USD")]), expected)

    assert (diff.missing, diff.extra, diff.duplicated) == (1, 0, 0)


def test_records_of_another_type_are_ignored() -> None:
    summary = summarize([{"type": "heartbeat"}, _decision("denied", "proof_rejected")])

    assert (summary.outcomes, summary.dead_letters, summary.refunds) == ({"denied": 1}, {}, {})


def test_the_same_command_in_another_currency_is_another_refund() -> None:
    diff = refund_diff(
        summarize([_refund("a", "lost", 100, "EUR")]),
        summarize([_refund("a", "lost", 100, "USD")]),
    )

    assert (diff.missing, diff.extra) == (1, 1)


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (0, "USD", "0.00"),
        (-5, "USD", "-0.05"),
        (-1234, "JPY", "-1,234"),
        (1234567, "VND", "1,234,567"),
        (1234, "TND", "1.234"),
        (123456, "CLF", "12.3456"),
        (100, "XYZ", "1.00"),
    ],
)
def test_amounts_of_every_sign_and_iso_4217_exponent_are_shown_in_the_major_unit(
    amount: int, currency: str, shown: str
) -> None:
    assert format_minor(amount, currency) == shown


def _rows(table: Table) -> list[list[str]]:
    """The body's cells as printed, one list per row ("-" for a section's rule)."""
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(table)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    rows = []
    for line in text.splitlines():
        if line.startswith("├"):
            rows.append(["-"])
        elif line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def test_the_refunds_table_names_each_reason_once_then_totals_each_currency() -> None:
    summary = summarize(
        [
            _refund("a", "lost", 1000, "USD"),
            _refund("b", "wrong_item", 99, "USD"),
            _refund("c", "lost", 700, "EUR"),
            _refund("d", "lost", 250, "USD"),
            _refund("e", "lost", 1500, "JPY"),
            _refund("f", "damaged", 1, "USD"),
            _refund("g", "cancellation_intercepted", 2, "EUR"),
        ]
    )

    assert _rows(refunds_table(summary)) == [
        ["cancellation_intercepted", "EUR", "1", "0.02"],
        ["damaged", "USD", "1", "0.01"],
        ["lost", "EUR", "1", "7.00"],
        ["", "JPY", "1", "1,500"],
        ["", "USD", "2", "12.50"],
        ["wrong_item", "USD", "1", "0.99"],
        ["-"],
        ["total", "EUR", "2", "7.02"],
        ["total", "JPY", "1", "1,500"],
        ["total", "USD", "4", "13.50"],
    ]


def test_counts_are_listed_largest_first_then_by_name() -> None:
    counts = Counter({"b_code": 2, "c_code": 1000, "a_code": 2, "d_code": 1})

    assert _rows(counts_table("Denials", "code", counts)) == [
        ["c_code", "1,000"],
        ["a_code", "2"],
        ["b_code", "2"],
        ["d_code", "1"],
    ]


def test_no_counts_show_as_none() -> None:
    assert _rows(counts_table("Denials", "code", Counter())) == [["(none)", "0"]]
