"""The summary's arithmetic over output records, and the refund comparison."""

from typing import Any

from processor.summary import Tally, format_minor, refund_diff, summarize


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
