"""Events in their JSON form, with defaults so a test states only what it is about."""

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
_ids = count(1)

Event = dict[str, Any]


def at(days: float = 0, hours: float = 0) -> str:
    """An ISO time `days` + `hours` after T0."""
    return (T0 + timedelta(days=days, hours=hours)).isoformat().replace("+00:00", "Z")


def at_ms(days: float = 0) -> int:
    """Epoch milliseconds `days` after T0: an event's `at`, a clock, a deadline."""
    return int(T0.timestamp()) * 1000 + int(days * 86_400_000)


def _common(kind: str, when: str, event_id: str | None) -> Event:
    return {"type": kind, "event_id": event_id or f"ev-{next(_ids)}", "occurred_at": when}


def order_placed(
    order_id: str = "o1",
    lines: dict[str, tuple[int, int]] | None = None,
    *,
    fee: int = 500,
    when: str = at(0),
    merchant_id: str = "m1",
    currency: str = "USD",
    event_id: str | None = None,
) -> Event:
    """`lines` maps SKU to (quantity, unit price); default: 2 x A at 1000, 1 x B at 2500."""
    lines = lines if lines is not None else {"A": (2, 1000), "B": (1, 2500)}
    return _common("order_placed", when, event_id) | {
        "order_id": order_id,
        "merchant_id": merchant_id,
        "currency": currency,
        "shipping_fee_minor": fee,
        "lines": [
            {"sku": sku, "quantity": q, "unit_price_minor": price}
            for sku, (q, price) in lines.items()
        ],
    }


def shipped(
    package_id: str = "p1",
    lines: dict[str, int] | None = None,
    *,
    order_id: str = "o1",
    tracking_number: str | None = None,
    when: str = at(1),
    event_id: str | None = None,
) -> Event:
    lines = lines if lines is not None else {"A": 2, "B": 1}
    return _common("package_shipped", when, event_id) | {
        "order_id": order_id,
        "package_id": package_id,
        "tracking_number": tracking_number or f"TN-{package_id}",
        "carrier": "ups",
        "lines": [{"sku": sku, "quantity": q} for sku, q in lines.items()],
    }


def scan(
    status: str,
    tracking_number: str = "TN-p1",
    *,
    order_id: str | None = "o1",
    when: str = at(3),
    event_id: str | None = None,
) -> Event:
    return _common("tracking_update", when, event_id) | {
        "tracking_number": tracking_number,
        "carrier": "ups",
        "order_id": order_id,
        "status": status,
        "carrier_status": status.upper(),
        "location": None,
    }


def cancellation_requested(
    order_id: str = "o1",
    *,
    request_id: str = "r1",
    when: str = at(0, 1),
    event_id: str | None = None,
) -> Event:
    return _common("cancellation_requested", when, event_id) | {
        "order_id": order_id,
        "request_id": request_id,
    }


def order_cancelled(
    order_id: str = "o1",
    *,
    request_id: str | None = "r1",
    when: str = at(0, 2),
    event_id: str | None = None,
) -> Event:
    return _common("order_cancelled", when, event_id) | {
        "order_id": order_id,
        "request_id": request_id,
    }


def claim_filed(
    claim_type: str,
    claim_id: str = "c1",
    *,
    order_id: str = "o1",
    package_id: str | None = None,
    lines: dict[str, int] | None = None,
    when: str = at(6),
    event_id: str | None = None,
) -> Event:
    return _common("claim_filed", when, event_id) | {
        "order_id": order_id,
        "claim_id": claim_id,
        "claim_type": claim_type,
        "package_id": package_id,
        "lines": [{"sku": sku, "quantity": q} for sku, q in (lines or {}).items()],
    }


def claim_reviewed(
    claim_id: str = "c1",
    *,
    accepted: bool = True,
    resolution: str | None = None,
    order_id: str = "o1",
    when: str = at(7),
    event_id: str | None = None,
) -> Event:
    return _common("claim_reviewed", when, event_id) | {
        "order_id": order_id,
        "claim_id": claim_id,
        "proof_accepted": accepted,
        "resolution": resolution,
    }


def return_received(
    package_id: str = "p1",
    condition: str = "intact",
    *,
    order_id: str = "o1",
    when: str = at(12),
    event_id: str | None = None,
) -> Event:
    return _common("return_received", when, event_id) | {
        "order_id": order_id,
        "package_id": package_id,
        "condition": condition,
    }
