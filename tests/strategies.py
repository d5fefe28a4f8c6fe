"""Hypothesis strategies for order histories: small, but reaching every rule and edge."""

from datetime import timedelta
from typing import Any, get_args

from hypothesis import strategies as st

from processor.events import ClaimType, TrackingStatus
from tests.factories import T0

MINUTE = timedelta(minutes=1)
# "delivered" twice, twice as likely as any other scan: the claims for missing items and
# wrong quantities wait until every package is delivered.
_STATUSES = [*get_args(TrackingStatus), "delivered"]
_CLAIM_TYPES = list(get_args(ClaimType))
_PARTIAL_CLAIMS = ["wrong_quantity", "missing_item"]

Timed = tuple[int, dict[str, Any]]  # (minutes after T0, event in JSON form)


def _iso(minutes: int) -> str:
    return (T0 + minutes * MINUTE).isoformat().replace("+00:00", "Z")


@st.composite
def order_history(
    draw: st.DrawFn, order_id: str, *, shared_tracking_numbers: bool = True
) -> list[Timed]:
    """One order's events with their times, sorted by time (ties keep causal order).
    `shared_tracking_numbers`: now and then two packages ship under one number."""
    events: list[Timed] = []
    counter = iter(range(1_000))

    def add(minutes: int, kind: str, **fields: Any) -> None:
        event_id = f"{order_id}-e{next(counter)}"
        event = {"type": kind, "event_id": event_id, "occurred_at": _iso(minutes)} | fields
        events.append((minutes, event))

    placed = draw(st.integers(0, 3 * 24 * 60))
    skus = draw(st.lists(st.sampled_from("ABC"), min_size=1, max_size=3, unique=True))
    ordered = {sku: draw(st.integers(1, 3)) for sku in skus}
    add(
        placed,
        "order_placed",
        order_id=order_id,
        merchant_id=f"m-{order_id}",
        currency="USD",
        shipping_fee_minor=draw(st.integers(0, 1000)),
        lines=[
            {"sku": sku, "quantity": q, "unit_price_minor": draw(st.integers(0, 5000))}
            for sku, q in ordered.items()
        ],
    )
    packages: list[str] = []

    def ship_package(package_id: str, lines: dict[str, int], ship: int) -> None:
        """The package's `package_shipped`, some scans and now and then a return."""
        shared = shared_tracking_numbers and packages and draw(st.integers(0, 5)) == 0
        tracking_number = f"TN-{packages[-1]}" if shared else f"TN-{package_id}"
        packages.append(package_id)
        add(
            ship,
            "package_shipped",
            order_id=order_id,
            package_id=package_id,
            tracking_number=tracking_number,
            carrier="ups",
            lines=[{"sku": sku, "quantity": q} for sku, q in lines.items()],
        )
        for status in draw(st.lists(st.sampled_from(_STATUSES), max_size=4)):
            add(
                ship + draw(st.integers(1, 30 * 24 * 60)),
                "tracking_update",
                tracking_number=tracking_number,
                carrier="ups",
                order_id=draw(st.sampled_from([order_id, None])),
                status=status,
                carrier_status=status.upper(),
                location=None,
            )
        if draw(st.integers(0, 4)) == 0:
            add(
                ship + draw(st.integers(1, 40 * 24 * 60)),
                "return_received",
                order_id=order_id,
                package_id=package_id,
                condition=draw(st.sampled_from(["intact", "opened", "relabeled"])),
            )

    for index in range(draw(st.integers(0, 3))):
        lines = {sku: share for sku in skus if (share := draw(st.integers(0, ordered[sku]))) > 0}
        if lines:
            ship_package(f"{order_id}-p{index}", lines, placed + draw(st.integers(0, 3 * 24 * 60)))
    shipped = list(packages)  # what the claims name: a replacement ships after them
    if draw(st.booleans()):
        add(
            placed + draw(st.integers(1, 3 * 24 * 60)),
            "cancellation_requested",
            order_id=order_id,
            request_id=f"{order_id}-r",
        )
    # Mostly none, sometimes one, now and then a second (the warehouse's event resent
    # under a new id): one cancellation is refunded at most once.
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 1, 2]))):
        add(
            placed + draw(st.integers(1, 3 * 24 * 60)),
            "order_cancelled",
            order_id=order_id,
            request_id=None,
        )

    def add_claim(
        claim_id: str, package_id: str | None, filed: int, *, reship: bool = False
    ) -> tuple[int, dict[str, int]]:
        """A claim and up to two reviews, the last one an accepted reship if `reship`: the
        last review's time and the claim's lines."""
        lines = {
            sku: draw(st.integers(1, 4))
            for sku in draw(st.lists(st.sampled_from(skus), max_size=2, unique=True))
        }
        add(
            filed,
            "claim_filed",
            order_id=order_id,
            claim_id=claim_id,
            claim_type=draw(st.sampled_from(_PARTIAL_CLAIMS if reship else _CLAIM_TYPES)),
            package_id=package_id,
            lines=[{"sku": sku, "quantity": q} for sku, q in lines.items()],
        )
        reviewed = filed
        reviews = draw(st.integers(1 if reship else 0, 2))
        for review in range(reviews):
            reviewed = filed + draw(st.integers(1, 5 * 24 * 60))
            last_reship = reship and review == reviews - 1
            add(
                reviewed,
                "claim_reviewed",
                order_id=order_id,
                claim_id=claim_id,
                proof_accepted=last_reship or draw(st.booleans()),
                resolution="reship"
                if last_reship
                else draw(st.sampled_from([None, "refund", "reship"])),
            )
        return reviewed, lines

    for index in range(draw(st.integers(0, 2))):
        # Often within days, so that a package's refund (returned, lost) can follow its
        # claim's refund or reship and must not pay for the same units again.
        filed = placed + draw(st.integers(1, draw(st.sampled_from([5, 35])) * 24 * 60))
        claim_id = f"{order_id}-c{index}"
        package_id = draw(st.sampled_from([None, *shipped]))
        reship = draw(st.booleans())
        reviewed, claimed = add_claim(claim_id, package_id, filed, reship=reship)
        if reship:
            # What the reship may have sent, in a package of its own, which can fail as
            # any package can (lost, late, back), or be claimed for.
            sent = {sku: min(q, ordered[sku]) for sku, q in claimed.items()} or ordered
            replacement = f"{order_id}-r{index}"
            shipped_at = reviewed + draw(st.integers(1, 2 * 24 * 60))
            ship_package(replacement, sent, shipped_at)
            if draw(st.booleans()):
                add_claim(
                    f"{claim_id}r", replacement, shipped_at + draw(st.integers(1, 5 * 24 * 60))
                )
    # A stable sort keeps the causal order of events that share a minute.
    return sorted(events, key=lambda timed: timed[0])


@st.composite
def histories(draw: st.DrawFn, max_orders: int = 3) -> list[list[Timed]]:
    """Several orders' histories, each in its own time order."""
    count = draw(st.integers(1, max_orders))
    return [draw(order_history(f"o{n}")) for n in range(count)]


def merged_by_time(orders: list[list[Timed]]) -> list[dict[str, Any]]:
    """The stream in event-time order (stable, so per-order order is kept)."""
    timed = [
        (minutes, n, i, event)
        for n, order in enumerate(orders)
        for i, (minutes, event) in enumerate(order)
    ]
    return [event for *_, event in sorted(timed, key=lambda t: (t[0], t[1], t[2]))]


@st.composite
def jittered(
    draw: st.DrawFn,
    orders: list[list[Timed]],
    max_minutes: int = 59,
    *,
    within_orders: bool = False,
) -> list[dict[str, Any]]:
    """Another interleaving of the same orders whose disorder stays under `max_minutes`.

    Each event's sort key is its time plus a jitter in [0, max_minutes], raised to its
    predecessor's key within the same order, so an order's own sequence is unchanged
    and an event never follows one that is `max_minutes` or more newer than itself.
    `within_orders` raises it only to a predecessor of the same time, so an order's
    events of different times may swap too (its order events and courier scans come
    from different topics).
    """
    keyed: list[tuple[int, int, int, dict[str, Any]]] = []
    for n, order in enumerate(orders):
        previous, previous_minutes = -1, None
        priority = draw(st.integers(0, 1_000))  # per order, so ties keep the order's sequence
        for i, (minutes, event) in enumerate(order):
            key = minutes + draw(st.integers(0, max_minutes))
            if not within_orders or minutes == previous_minutes:
                key = max(previous, key)
            previous, previous_minutes = key, minutes
            keyed.append((key, priority, n * 10_000 + i, event))
    return [event for *_, event in sorted(keyed, key=lambda t: (t[0], t[1], t[2]))]
