"""What a run decided, in numbers: refunds, denials, anomalies, dead letters.

Pure, over plain output records: those decoded from the output topics (Avro dicts, a dead
letter as ``{"type": "dead_letter", "reason": ...}`` from its headers) or the offline
replay's (`output_to_dict`). One function summarises both, so the demo can put the live
processor's numbers beside the replay's and compare them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from rich.table import Table

#: (command_id, amount_minor, currency): what a wallet would credit, and deduplicate by.
RefundKey = tuple[str, int, str]

#: ISO 4217 currencies whose minor unit is not 1/100 (all others have two decimals).
_DECIMALS: Final = {
    **{code: 0 for code in ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG")},
    **{code: 0 for code in ("RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF")},
    **{code: 3 for code in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")},
    **{code: 4 for code in ("CLF", "UYW")},
}


@dataclass(slots=True)
class Tally:
    count: int = 0
    amount_minor: int = 0


@dataclass(slots=True)
class Summary:
    """Counts of one run's outputs; `refund_keys` counts each refund command issued."""

    refunds: dict[tuple[str, str], Tally] = field(default_factory=dict)  # (reason, currency)
    refund_keys: Counter[RefundKey] = field(default_factory=Counter)
    reships: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # decisions by outcome
    denials: Counter[str] = field(default_factory=Counter)  # denied decisions by code
    anomalies: Counter[str] = field(default_factory=Counter)  # anomaly decisions by code
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason

    def refund_totals(self) -> dict[str, Tally]:
        """Per currency (in currency order), over every reason."""
        totals: dict[str, Tally] = {}
        for (_, currency), tally in sorted(self.refunds.items()):
            total = totals.setdefault(currency, Tally())
            total.count += tally.count
            total.amount_minor += tally.amount_minor
        return dict(sorted(totals.items()))


def summarize(records: Iterable[Mapping[str, Any]]) -> Summary:
    """Tallies output records by their `type`; other types (none today) are ignored."""
    summary = Summary()
    for record in records:
        kind = record["type"]
        if kind == "refund_command":
            currency = record["currency"]
            tally = summary.refunds.setdefault((record["reason"], currency), Tally())
            tally.count += 1
            tally.amount_minor += record["amount_minor"]
            summary.refund_keys[(record["command_id"], record["amount_minor"], currency)] += 1
        elif kind == "reship_command":
            summary.reships += 1
        elif kind == "decision":
            outcome = record["outcome"]
            summary.outcomes[outcome] += 1
            if outcome == "denied":
                summary.denials[record["code"]] += 1
            elif outcome == "anomaly":
                summary.anomalies[record["code"]] += 1
        elif kind == "dead_letter":
            summary.dead_letters[record["reason"]] += 1
    return summary


@dataclass(frozen=True, slots=True)
class RefundDiff:
    """How one run's refund commands differ from another's (the expected ones)."""

    missing: int  # expected, never issued
    extra: int  # issued, not expected
    duplicated: int  # issued more than once

    @property
    def same(self) -> bool:
        return not (self.missing or self.extra or self.duplicated)


def refund_diff(actual: Summary, expected: Summary) -> RefundDiff:
    issued, wanted = set(actual.refund_keys), set(expected.refund_keys)
    return RefundDiff(
        missing=len(wanted - issued),
        extra=len(issued - wanted),
        duplicated=sum(1 for count in actual.refund_keys.values() if count > 1),
    )


def format_minor(amount_minor: int, currency: str) -> str:
    """`123456, "USD"` -> "1,234.56"; `1234, "JPY"` -> "1,234" (ISO 4217 minor units)."""
    decimals = _DECIMALS.get(currency, 2)
    if decimals == 0:
        return f"{amount_minor:,}"
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), 10**decimals)
    return f"{sign}{major:,}.{minor:0{decimals}d}"


def refunds_table(summary: Summary) -> Table:
    """Refunds by reason, one row per currency, then the totals per currency."""
    table = Table(title="Refunds by reason", title_justify="left")
    table.add_column("reason")
    table.add_column("currency")
    table.add_column("refunds", justify="right")
    table.add_column("amount", justify="right")
    reasons = sorted({reason for reason, _ in summary.refunds})
    for reason in reasons:
        shown = reason
        for (of, currency), tally in sorted(summary.refunds.items()):
            if of == reason:
                amount = format_minor(tally.amount_minor, currency)
                table.add_row(shown, currency, f"{tally.count:,}", amount)
                shown = ""
    table.add_section()
    for currency, tally in summary.refund_totals().items():
        amount = format_minor(tally.amount_minor, currency)
        table.add_row("total", currency, f"{tally.count:,}", amount)
    return table


def counts_table(title: str, label: str, counts: Counter[str]) -> Table:
    """A count per label (e.g. denials by code), largest first."""
    table = Table(title=title, title_justify="left")
    table.add_column(label)
    table.add_column("count", justify="right")
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(name, f"{count:,}")
    if not counts:
        table.add_row("(none)", "0")
    return table
