"""Deterministic generator of realistic JSONL event histories (SPEC section 3).

Why: demos, property-based tests and benchmarks need order/courier histories that look
like production (split orders, late and lost parcels, RTOs, cancellations, every claim
type, duplicates, disorder, bad lines) yet are byte-for-byte reproducible from a seed.
Pure stdlib, no global state: the same arguments always give the same lines.

Each line is one flat JSON object in the event form of SPEC section 3: ISO-8601 UTC
timestamps with ``Z`` (whole seconds), amounts in integer minor units, compact
separators, keys in SPEC order. A nullable field is usually an explicit ``null`` and
sometimes absent (the SPEC allows both, so consumers get exercised on both).

Ordering guarantee (property tests rely on it), with ``D = max_disorder`` (30 minutes
by default, strictly inside the default ``allowed_lateness`` of 1 hour):

1. Bounded disorder: every line that precedes a line L in the output has
   ``occurred_at <= L.occurred_at + D``. Equivalently, no event ever appears after an
   event whose occurred_at is more than D later than its own. This holds for every
   line with a readable occurred_at: valid events, duplicates, and malformed lines
   that still carry a timestamp (a zone-less one read as UTC).
2. Per-order causal order: the first occurrences of one order's events (its order
   events and the tracking updates of its packages, with or without ``order_id``)
   appear in the order they were generated, which is non-decreasing ``occurred_at``.
   In particular ``order_placed`` comes first, a ``package_shipped`` precedes every
   scan of its tracking number, ``cancellation_requested`` precedes its
   ``order_cancelled``, ``claim_filed`` precedes its ``claim_reviewed``, and each
   step of a causal pair is at least one second later than its cause.
3. A duplicate is the byte-identical line of an earlier event (same event_id, same
   content); it appears after that original, at most D after the original's
   occurred_at (so: seconds to 30 minutes later with the defaults).

Malformed lines (``malformed_share`` per valid event, kinds in ``MALFORMED_KINDS``
taken round-robin) are extra lines with fresh event ids that reuse the ids of a real
order; they take part in guarantee 1 only. ``iter_labelled_history`` tells which
lines they are.

Histories are complete stories: orders are placed over ``days`` days from ``start``
and their later events (deliveries, returns, claims) run past the window: almost all
within 40 days of placement, at most ~55 (a split order returned after an unclaimed
pickup). Ids: event ``evt-<seed>-<counter>``, order ``ord-<n>`` (n in placement order),
package ``pkg-<n>-<k>``, claim ``clm-<n>-<k>``, request ``req-<n>-<k>``. Tracking
numbers are unique within a history (up to 10 million packages).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, Protocol

__all__ = [
    "DEFAULT_START",
    "MALFORMED_KINDS",
    "generate_history",
    "iter_history",
    "iter_labelled_history",
    "write_history",
]

DEFAULT_START = datetime(2026, 3, 1, tzinfo=UTC)

#: Kinds of deliberately malformed lines, emitted round-robin.
MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_json",
    "unknown_type",
    "missing_field",
    "zoneless_timestamp",
    "negative_amount",
    "zero_quantity",
    "bad_currency",
    "duplicate_sku",
    "long_id",
)

Event = dict[str, Any]
# One generated event before ids are assigned: (occurred_at seconds after start, type,
# the JSON text of its other fields starting with "," and ending with "}").
_Story = list[tuple[int, str, str]]
# (emission second, emission sequence, line, malformed kind or None): the sequence is
# unique, so lines never get compared, and small ints keep the sorts on the fast path.
_Entry = tuple[int, int, str, str | None]

_MIN = 60
_HOUR = 3600
_DAY = 86400
_FLUSH_EVERY = 2000  # orders between two flushes of the pending buffer

# --- order mix -------------------------------------------------------------------
_MERCHANTS = 50
_CATALOG = 4000
_P_INTERCEPT = 0.06  # cancellation requested and intercepted before shipping
_P_WAREHOUSE_CANCEL = 0.01  # warehouse cancels on its own (out of stock): no request
_P_SPLIT = 0.25  # of shipped orders with >= 2 units (~65% of them): ~15% of all orders
_P_PARTIAL_INTERCEPT = 0.08  # of split orders: cancelled after the first package
_P_TOO_LATE = 0.03  # of shipped orders: cancellation requested after shipping
_P_TOO_LATE_REFUSED = 0.4  # of those (single package): buyer refuses, RTO
# package fates, cumulative on one draw; the rest is delivered in 2-10 days
_P_LATE = 0.03
_P_LOST_SILENT = _P_LATE + 0.02
_P_LOST_EXPLICIT = _P_LOST_SILENT + 0.012
_P_RTO = _P_LOST_EXPLICIT + 0.045
_P_ACCEPTED = 0.7

_FEES = (0, 0, 0, 299, 399, 499, 599, 699, 799, 999, 1200, 1500)
_LINE_COUNTS = (1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4)  # 1-4, mostly 1
_QUANTITIES = (1, 1, 1, 1, 1, 1, 1, 2, 2, 3)  # 1-3, mostly 1
_SKU_FAMILIES = ("TEE", "HOOD", "MUG", "CASE", "LAMP", "SOCK", "CAP", "RING", "BAG", "TOY")
_SKU_VARIANTS = ("", "", "-BLK", "-WHT", "-RED-M", "-BLU-L", "-S", "-XL")

_ORIGINS = ("Shenzhen, CN", "Guangzhou, CN", "Yiwu, CN", "Dongguan, CN", "Hong Kong, HK")
_REGIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # currency: (carriers (weighted by repetition), transit hubs, destinations)
    "USD": (
        (
            "usps",
            "usps",
            "usps",
            "ups",
            "ups",
            "fedex",
            "dhl",
            "yanwen",
            "4px",
            "cainiao",
            "yunexpress",
        ),
        (
            "Hong Kong, HK",
            "Anchorage, AK, US",
            "Los Angeles, CA, US",
            "Louisville, KY, US",
            "Memphis, TN, US",
            "Chicago, IL, US",
            "Jamaica, NY, US",
        ),
        (
            "Austin, TX, US",
            "Denver, CO, US",
            "Columbus, OH, US",
            "Portland, OR, US",
            "Miami, FL, US",
            "Brooklyn, NY, US",
            "Phoenix, AZ, US",
            "Raleigh, NC, US",
        ),
    ),
    "EUR": (
        ("dhl", "dhl", "dpd", "4px", "cainiao", "cainiao", "yunexpress", "yanwen"),
        ("Hong Kong, HK", "Leipzig, DE", "Liege, BE", "Amsterdam, NL", "Frankfurt, DE"),
        ("Berlin, DE", "Paris, FR", "Madrid, ES", "Milan, IT", "Rotterdam, NL", "Vienna, AT"),
    ),
    "GBP": (
        ("royalmail", "royalmail", "royalmail", "dpd", "dhl", "yanwen", "4px", "cainiao"),
        ("Hong Kong, HK", "East Midlands, GB", "London Heathrow, GB", "Coventry, GB"),
        ("Manchester, GB", "Leeds, GB", "Bristol, GB", "Glasgow, GB", "London, GB"),
    ),
}

# Raw courier codes per normalised status, plus the code a courier uses for "refused".
_S = "info_received picked_up in_transit out_for_delivery attempt_failed available_for_pickup"
_STATUSES = (
    *_S.split(),
    "delivered",
    "exception",
    "lost",
    "rto_initiated",
    "rto_in_transit",
    "rto_delivered",
)


def _codes(*per_status: str) -> dict[str, tuple[str, ...]]:
    """Map each normalised status (in _STATUSES order) to a few raw carrier codes."""
    return {s: tuple(c.split()) for s, c in zip(_STATUSES, per_status, strict=True)}


_CARRIER_CODES: dict[str, dict[str, tuple[str, ...]]] = {
    "ups": _codes(
        "MP",
        "OR PU",
        "AR DP IP EP",
        "OT",
        "48 NA",
        "ZP 2Q",
        "KB KM FS",
        "X DJ",
        "LS",
        "RS UR",
        "RT",
        "RD",
    ),
    "usps": _codes(
        "GX MA",
        "03 OA",
        "10 T1 07 L1",
        "OF",
        "02 53",
        "08 52",
        "01",
        "05 14",
        "LF",
        "09",
        "21",
        "RD",
    ),
    "fedex": _codes(
        "OC", "PU", "IT AR DP", "OD", "DE", "HL", "DL", "SE CD", "LO", "RS", "RT", "RD"
    ),
    "dhl": _codes(
        "SA", "PU", "PL AF DF AR", "WC", "NH CA", "CC", "OK", "CR MS HP", "LT", "RT BA", "RR", "RTD"
    ),
    "dpd": _codes("00", "01", "02 03 05", "04", "14", "18", "13", "09", "99", "20", "22", "23"),
    "royalmail": _codes(
        "EVNMI",
        "EVAIP",
        "EVIMC EVDAV EVORI",
        "EVODO",
        "EVKNR",
        "EVKOP",
        "EVKSP",
        "EVHLD",
        "EVLST",
        "EVRTS",
        "EVRTT",
        "EVRTD",
    ),
    "yanwen": _codes("10", "20", "30 31 35", "40", "41", "45", "50", "60", "70", "80", "85", "90"),
    "4px": _codes(
        "FPX_L_RPIF",
        "FPX_C_PKUP",
        "FPX_C_AAF FPX_C_ADF FPX_I_ICA",
        "FPX_S_OFD",
        "FPX_S_DAF",
        "FPX_S_APU",
        "FPX_S_OK",
        "FPX_E_HLD",
        "FPX_E_LST",
        "FPX_R_RTS",
        "FPX_R_RTT",
        "FPX_R_RTD",
    ),
    "cainiao": _codes(
        "GWMS_ACCEPT CW_ACCEPT",
        "SC_INBOUND_SUCCESS",
        "SC_OUTBOUND_SUCCESS LH_DEPART LH_ARRIVE CC_IM_SUCCESS GTMS_ACCEPT",
        "GTMS_DO_DEPART",
        "GTMS_DELIVERY_FAILED",
        "CWS_WAIT_SELF_PICK",
        "GTMS_SIGNED",
        "CC_HO_DELAY GTMS_EXCEPTION",
        "GTMS_LOST",
        "GTMS_RETURN_START",
        "RTS_TRANSIT",
        "RTS_SIGNED",
    ),
    "yunexpress": _codes(
        "IR", "PU", "TR HA DC", "OD", "AF", "RP", "DL", "EX", "LS", "RS", "RT", "RD"
    ),
}
_REFUSED_CODE = {
    "ups": "RF",
    "usps": "04",
    "fedex": "RF",
    "dhl": "RD",
    "dpd": "21",
    "royalmail": "EVREF",
    "yanwen": "81",
    "4px": "FPX_R_REF",
    "cainiao": "GTMS_REJECTED",
    "yunexpress": "RF",
}

# Required fields besides type/event_id/occurred_at (nullable ones are not listed).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "order_placed": ("order_id", "merchant_id", "currency", "shipping_fee_minor", "lines"),
    "package_shipped": ("order_id", "package_id", "tracking_number", "carrier", "lines"),
    "cancellation_requested": ("order_id", "request_id"),
    "order_cancelled": ("order_id",),
    "claim_filed": ("order_id", "claim_id", "claim_type", "lines"),
    "claim_reviewed": ("order_id", "claim_id", "proof_accepted"),
    "return_received": ("order_id", "package_id", "condition"),
    "tracking_update": ("tracking_number", "carrier", "status", "carrier_status"),
}
_UNKNOWN_TYPES = ("order_refunded", "parcel_scanned", "OrderPlaced", "claim_escalated")
_GARBAGE = ("<html><body>502 Bad Gateway</body></html>", "null,", "{'type': 'order_placed'}")


def _compact_encoder() -> Callable[[Any], str]:
    """A compact JSON encoder whose C core is built once, not on every call.

    `JSONEncoder.encode` rebuilds its C encoder per call, which dominated the run time.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pure-Python json: same output, slower
        return json.JSONEncoder(check_circular=False, separators=(",", ":")).encode

    def default(obj: Any) -> Any:
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    # markers, default, encoder, indent, key_sep, item_sep, sort_keys, skipkeys, allow_nan
    chunks = make(
        None, default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def encode(obj: Any) -> str:
        return "".join(chunks(obj, 0))

    return encode


class _Writer(Protocol):
    def write(self, s: str, /) -> object: ...


class _Package:
    """Mutable facts about one package that the story and its claims need."""

    __slots__ = (
        "carrier",
        "codes",
        "delivered_at",
        "fate",
        "lines",
        "package_id",
        "shipped_at",
        "tracking_fields",
        "tracking_number",
    )

    def __init__(
        self,
        package_id: str,
        tracking_number: str,
        carrier: str,
        lines: list[tuple[str, int]],
        shipped_at: int,
    ) -> None:
        self.package_id = package_id
        self.tracking_number = tracking_number
        self.carrier = carrier
        self.codes = _CARRIER_CODES[carrier]
        self.tracking_fields = f',"tracking_number":"{tracking_number}","carrier":"{carrier}"'
        self.lines = lines
        self.shipped_at = shipped_at
        self.fate = "delivered"
        self.delivered_at: int | None = None


class _Order:
    """Per-order context: its events so far and the counters of its ids."""

    __slots__ = ("claims", "destination", "hubs", "n", "oid", "requests", "story")

    def __init__(self, n: int, hubs: tuple[str, ...], destination: str) -> None:
        self.n = n
        self.oid = f"ord-{n}"
        self.hubs = hubs
        self.destination = destination
        self.story: _Story = []
        self.requests = 0
        self.claims = 0


class _Builder:
    """Holds the seeded RNG and counters of one history; `chunks` drives it."""

    def __init__(
        self,
        orders: int,
        seed: int,
        *,
        start: datetime,
        days: int,
        malformed_share: float,
        duplicate_share: float,
        tracking_without_order_id_share: float,
        max_disorder: timedelta,
    ) -> None:
        if orders < 0:
            raise ValueError("orders must be >= 0")
        if days < 1:
            raise ValueError("days must be >= 1")
        for name, share in (
            ("malformed_share", malformed_share),
            ("duplicate_share", duplicate_share),
            ("tracking_without_order_id_share", tracking_without_order_id_share),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if max_disorder < timedelta(0):
            raise ValueError("max_disorder must be >= 0")
        self.orders = orders
        self.seed = seed
        self.days = days
        self.p_malformed = malformed_share
        self.p_duplicate = duplicate_share
        self.p_no_order_id = tracking_without_order_id_share
        self.disorder = int(max_disorder.total_seconds())
        if start.tzinfo is None:  # a naive start is read as UTC
            start = start.replace(tzinfo=UTC)
        self.base = math.floor(start.timestamp())
        self.rng = random.Random(seed)
        self.rnd = self.rng.random
        self.event_counter = 0
        self.package_counter = 0
        self.emit_counter = 0
        self.malformed_counter = 0
        self.hour_cache: dict[int, str] = {}
        self.mmss = [f"{m:02d}:{sec:02d}Z" for m in range(60) for sec in range(60)]
        self.encode = _compact_encoder()
        rnd = self.rnd
        self.sku_names = [
            f"{_SKU_FAMILIES[i % len(_SKU_FAMILIES)]}-{1000 + i:04d}"
            f"{_SKU_VARIANTS[int(rnd() * len(_SKU_VARIANTS))]}"
            for i in range(_CATALOG)
        ]
        # log-uniform prices ending in 99, within 500-20000 minor units
        self.sku_prices = [
            min(19999, int(math.exp(math.log(500) + rnd() * math.log(40))) // 100 * 100 + 99)
            for _ in range(_CATALOG)
        ]

    # --- small helpers ---------------------------------------------------------------
    def u(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + int(self.rnd() * (hi - lo + 1))

    def pick(self, seq: tuple[str, ...]) -> str:
        """Uniform choice, cheaper than Random.choice."""
        return seq[int(self.rnd() * len(seq))]

    def timestamp(self, t: int) -> str:
        """ISO-8601 UTC with 'Z' for t seconds after start; hour prefixes are cached."""
        hour, sec = divmod(self.base + t, _HOUR)
        prefix = self.hour_cache.get(hour)
        if prefix is None:
            prefix = datetime.fromtimestamp(hour * _HOUR, UTC).strftime("%Y-%m-%dT%H:")
            self.hour_cache[hour] = prefix
        return prefix + self.mmss[sec]

    def add(self, o: _Order, t: int, event_type: str, fields: Event) -> None:
        """Append an event to the order's story; its fields are encoded right away."""
        o.story.append((t, event_type, "," + self.encode(fields)[1:]))

    def nullable(self, ev: Event, key: str, value: Any) -> None:
        """Set a nullable field; a null is left out entirely one time in ten."""
        if value is not None or self.rnd() >= 0.1:
            ev[key] = value

    def tracking_number(self, carrier: str) -> str:
        """Carrier-shaped tracking number; the package counter makes it unique."""
        self.package_counter += 1
        c = f"{self.package_counter:07d}"
        r = f"{int(self.rnd() * 1e9):09d}"
        if carrier == "ups":
            return f"1Z{r[:3]}E{r[3:5]}03{c}{r[5]}"
        if carrier == "usps":
            return f"94001{r}{c}{r[0]}"
        if carrier == "fedex":
            return f"{r[:5]}{c}"
        if carrier == "dhl":
            return f"JJD00{r[:6]}{c}"
        if carrier == "dpd":
            return f"0{r[:6]}{c}"
        if carrier == "royalmail":
            return f"RM{r[:2]}{c}GB"
        if carrier == "yanwen":
            return f"UG{r[:2]}{c}YP"
        if carrier == "4px":
            return f"4PX300{r[:4]}{c}CN"
        if carrier == "cainiao":
            return f"LP00{r}{c}"
        return f"YT{r}{c}"  # yunexpress

    # --- the driver -------------------------------------------------------------------
    def chunks(self) -> Iterator[list[_Entry]]:
        """Yield sorted runs of entries; each run precedes everything not yet yielded.

        Orders are built in placement order; every entry of a later order has a key
        at or after that order's placement, so pending entries keyed before it are final.
        """
        window = self.days * _DAY
        rnd = self.rnd
        placements = sorted(int(rnd() * window) for _ in range(self.orders))
        pending: list[_Entry] = []
        for i, placed in enumerate(placements):
            if i and i % _FLUSH_EVERY == 0:
                pending.sort()
                cut = bisect.bisect_left(pending, placed, key=itemgetter(0))
                if cut:
                    yield pending[:cut]
                    del pending[:cut]
            self.emit(self.order(i + 1, placed), pending)
        pending.sort()
        if pending:
            yield pending

    def emit(self, story: _Story, out: list[_Entry]) -> None:
        """Serialise one order's events with ids, jitter, duplicates and bad lines.

        The jittered emission key never decreases within the order (causal order) and
        never exceeds occurred_at + max_disorder (bounded disorder).
        """
        story.sort(key=itemgetter(0))  # stable: equal times keep story order
        rnd = self.rnd
        timestamp = self.timestamp
        disorder = self.disorder
        short = min(disorder, 300)
        p_duplicate = self.p_duplicate
        p_malformed = self.p_malformed
        prefix = f"evt-{self.seed}-"
        placed_t = story[0][0]
        placed_line = ""
        prev_key = 0
        counter = self.event_counter
        seq = self.emit_counter
        append = out.append
        for t, event_type, tail in story:
            counter += 1
            line = (
                f'{{"type":"{event_type}","event_id":"{prefix}{counter}",'
                f'"occurred_at":"{timestamp(t)}"{tail}'
            )
            placed_line = placed_line or line
            r = rnd()
            if r < 0.6:
                key = t
            elif r < 0.9:
                key = t + int(rnd() * short + 0.5)
            else:
                key = t + int(rnd() * (disorder + 1))
            key = max(key, prev_key)
            prev_key = key
            seq += 1
            append((key, seq, line, None))
            if rnd() < p_duplicate:
                seq += 1
                append((key + int(rnd() * (t + disorder - key + 1)), seq, line, None))
            if rnd() < p_malformed:
                kind = MALFORMED_KINDS[self.malformed_counter % len(MALFORMED_KINDS)]
                self.malformed_counter += 1
                counter += 1
                bad_t, bad_line = self.malformed(
                    kind, f"{prefix}{counter}", (t, line), (placed_t, placed_line)
                )
                seq += 1
                append((bad_t + int(rnd() * (disorder + 1)), seq, bad_line, kind))
        self.event_counter = counter
        self.emit_counter = seq

    def malformed(
        self, kind: str, event_id: str, source: tuple[int, str], placed: tuple[int, str]
    ) -> tuple[int, str]:
        """Build one deliberately invalid line of `kind` from a real line of the order.

        Amount, currency and SKU defects need the order_placed line, so they use it.
        """
        rnd = self.rnd
        t, line = source
        if kind in ("negative_amount", "bad_currency", "duplicate_sku") or (
            kind == "zero_quantity" and '"type":"package_shipped"' not in line
        ):
            t, line = placed
        bad = json.loads(line)
        bad["event_id"] = event_id
        if kind == "invalid_json":
            variant = int(rnd() * 3)
            if variant == 0:
                text = self.encode(bad)
                return t, text[: 1 + int(rnd() * (len(text) - 2))]  # a proper prefix
            if variant == 1:
                return t, self.encode(bad)[:-1] + ",}"
            return t, self.pick(_GARBAGE)
        if kind == "unknown_type":
            bad["type"] = self.pick(_UNKNOWN_TYPES)
        elif kind == "missing_field":
            fields = ("event_id", "occurred_at", *_REQUIRED[bad["type"]])
            del bad[self.pick(fields)]
        elif kind == "zoneless_timestamp":
            bad["occurred_at"] = bad["occurred_at"][:-1]
        elif kind == "negative_amount":
            if rnd() < 0.5:
                bad["shipping_fee_minor"] = -(bad["shipping_fee_minor"] or 500)
            else:
                bad["lines"][0]["unit_price_minor"] = -bad["lines"][0]["unit_price_minor"]
        elif kind == "zero_quantity":
            bad["lines"][int(rnd() * len(bad["lines"]))]["quantity"] = 0
        elif kind == "bad_currency":
            bad["currency"] = bad["currency"].lower()
        elif kind == "duplicate_sku":
            first = bad["lines"][0]
            bad["lines"].append(
                {
                    "sku": first["sku"],
                    "quantity": self.u(1, 3),
                    "unit_price_minor": first["unit_price_minor"],
                }
            )
        else:  # long_id
            bad["event_id"] = f"{bad['event_id']}-" + "x" * 128
        return t, self.encode(bad)

    # --- one order's story ------------------------------------------------------------
    def order(self, n: int, placed: int) -> _Story:
        """Generate every event of order `n`, in story (causal) order."""
        rnd = self.rnd
        u = self.u
        merchant_index = int(_MERCHANTS * rnd() ** 2)  # a few big merchants
        currency = ("USD", "USD", "USD", "EUR", "USD", "USD", "USD", "GBP", "USD", "EUR")[
            merchant_index % 10
        ]
        carriers, hubs, destinations = _REGIONS[currency]
        o = _Order(n, hubs, self.pick(destinations))
        n_lines = _LINE_COUNTS[int(rnd() * len(_LINE_COUNTS))]
        sku_indexes = sorted(self.rng.sample(range(_CATALOG), n_lines))
        ordered = [
            (self.sku_names[i], _QUANTITIES[int(rnd() * len(_QUANTITIES))]) for i in sku_indexes
        ]
        self.add(
            o,
            placed,
            "order_placed",
            {
                "order_id": o.oid,
                "merchant_id": f"mer-{merchant_index + 1:03d}",
                "currency": currency,
                "shipping_fee_minor": _FEES[int(rnd() * len(_FEES))],
                "lines": [
                    {"sku": sku, "quantity": q, "unit_price_minor": self.sku_prices[i]}
                    for (sku, q), i in zip(ordered, sku_indexes, strict=True)
                ],
            },
        )

        r = rnd()
        if r < _P_INTERCEPT:
            self.cancellation(o, placed + u(2 * _MIN, 20 * _HOUR), then_cancel=True)
            return o.story
        if r < _P_INTERCEPT + _P_WAREHOUSE_CANCEL:
            ev: Event = {"order_id": o.oid}
            self.nullable(ev, "request_id", None)
            self.add(o, placed + u(_HOUR, 30 * _HOUR), "order_cancelled", ev)
            return o.story

        # split the units over packages; every ordered unit ships exactly once
        units = [sku for sku, q in ordered for _ in range(q)]
        n_packages = 1
        if len(units) >= 2 and rnd() < _P_SPLIT:
            n_packages = min(len(units), 2 if rnd() < 0.7 else 3)
        if n_packages == 1:
            allocations = [list(ordered)]
        else:
            self.rng.shuffle(units)
            owner = list(range(n_packages)) + [
                int(rnd() * n_packages) for _ in range(len(units) - n_packages)
            ]
            allocations = []
            for k in range(n_packages):
                mine = [sku for sku, o_k in zip(units, owner, strict=True) if o_k == k]
                allocations.append([(sku, mine.count(sku)) for sku, _ in ordered if sku in mine])
        partial_intercept = n_packages > 1 and rnd() < _P_PARTIAL_INTERCEPT
        if partial_intercept:
            allocations = allocations[:1]
        too_late = not partial_intercept and rnd() < _P_TOO_LATE
        refused = too_late and n_packages == 1 and rnd() < _P_TOO_LATE_REFUSED

        packages: list[_Package] = []
        t_ship = placed + u(30 * _MIN, 2 * _DAY)
        for k, lines in enumerate(allocations):
            if k:
                t_ship += u(2 * _HOUR, 3 * _DAY)
            carrier = self.pick(carriers)
            pkg = _Package(
                f"pkg-{n}-{k + 1}", self.tracking_number(carrier), carrier, lines, t_ship
            )
            packages.append(pkg)
            self.add(
                o,
                t_ship,
                "package_shipped",
                {
                    "order_id": o.oid,
                    "package_id": pkg.package_id,
                    "tracking_number": pkg.tracking_number,
                    "carrier": carrier,
                    "lines": [{"sku": sku, "quantity": q} for sku, q in lines],
                },
            )
            self.track(o, pkg, refused)
        first = packages[0].shipped_at
        if partial_intercept:
            self.cancellation(o, first + u(_HOUR, 12 * _HOUR), then_cancel=True)
        elif too_late:
            self.cancellation(o, first + u(30 * _MIN, 3 * _DAY), then_cancel=False)
        self.claims(o, packages, ordered)
        return o.story

    def cancellation(self, o: _Order, t: int, *, then_cancel: bool) -> None:
        """A merchant's cancellation request, intercepted (order_cancelled) or not."""
        o.requests += 1
        rid = f"req-{o.n}-{o.requests}"
        fields = {"order_id": o.oid, "request_id": rid}
        self.add(o, t, "cancellation_requested", fields)
        if then_cancel:
            self.add(o, t + self.u(5 * _MIN, 8 * _HOUR), "order_cancelled", fields)

    def scan(
        self,
        o: _Order,
        pkg: _Package,
        t: int,
        status: str,
        location: str | None,
        *,
        code: str | None = None,
    ) -> None:
        """Append one courier tracking_update for `pkg`.

        Rendered by hand (three times faster than the json module): every value comes
        from this module's tables or id formats, none needs escaping.
        """
        rnd = self.rnd
        if rnd() >= self.p_no_order_id:
            order_id = f',"order_id":"{o.oid}"'
        else:
            order_id = ',"order_id":null' if rnd() >= 0.1 else ""
        if location is not None and rnd() >= 0.12:
            where = f',"location":"{location}"'
        else:
            where = ',"location":null' if rnd() >= 0.1 else ""
        code = code or self.pick(pkg.codes[status])
        o.story.append(
            (
                t,
                "tracking_update",
                (
                    f'{pkg.tracking_fields}{order_id},"status":"{status}",'
                    f'"carrier_status":"{code}"{where}}}'
                ),
            )
        )

    def track(self, o: _Order, pkg: _Package, refused: bool) -> None:
        """Courier scans of one package; decides and records the package's fate."""
        rnd = self.rnd
        u = self.u
        pick = self.pick
        hubs = o.hubs
        dest = o.destination
        s = pkg.shipped_at
        origin = pick(_ORIGINS)

        def transit(lo: int, hi: int, count: int, exception: bool) -> None:
            times = sorted(u(lo, hi) for _ in range(count))
            for i, t in enumerate(times):
                last = exception and i == len(times) - 1
                self.scan(o, pkg, t, "exception" if last else "in_transit", pick(hubs))

        t_info = s + u(10 * _MIN, 6 * _HOUR)
        self.scan(o, pkg, t_info, "info_received", None if rnd() < 0.5 else origin)
        r = 1.0 if refused else rnd()
        if _P_LATE <= r < _P_LOST_SILENT and rnd() < 0.1:
            pkg.fate = "lost"  # never handed over: only the label exists
            return
        t_pick = t_info + u(2 * _HOUR, 30 * _HOUR)  # <= s + 36h
        self.scan(o, pkg, t_pick, "picked_up", origin)

        if r < _P_LATE:  # delivered 21-30 days after shipping
            pkg.fate = "late"
            delivered = s + u(21 * _DAY, 30 * _DAY)
            ofd = delivered - u(_HOUR, 8 * _HOUR)
            transit(t_pick + 1, ofd - 1, u(2, 4), rnd() < 0.5)
            self.scan(o, pkg, ofd, "out_for_delivery", dest)
            self.scan(o, pkg, delivered, "delivered", dest)
            pkg.delivered_at = delivered
            return
        if r < _P_LOST_EXPLICIT:  # tracking stops in transit, sometimes declared lost
            pkg.fate = "lost"
            last = t_pick + u(_DAY, 8 * _DAY)
            transit(t_pick + 1, last, u(1, 3), r >= _P_LOST_SILENT and rnd() < 0.4)
            if r >= _P_LOST_SILENT:
                self.scan(
                    o,
                    pkg,
                    max(last + _HOUR, s + u(10 * _DAY, 28 * _DAY)),
                    "lost",
                    None if rnd() < 0.5 else pick(hubs),
                )
            return
        if r < _P_RTO or refused:
            pkg.fate = "rto"
            self.track_rto(o, pkg, origin, t_pick, refused)
            return

        delivered = s + u(2 * _DAY, 10 * _DAY)
        ofd = delivered - u(_HOUR, 8 * _HOUR)  # >= s + 40h > t_pick
        transit(t_pick + 1, ofd - 1, u(1, 3), rnd() < 0.06)
        r = rnd()
        if r < 0.09:  # a failed attempt first, then delivered or collected at a point
            self.scan(o, pkg, ofd, "out_for_delivery", dest)
            t = ofd + u(_HOUR, 6 * _HOUR)
            self.scan(o, pkg, t, "attempt_failed", dest)
            if r < 0.05:
                t += u(16 * _HOUR, 26 * _HOUR)
                self.scan(o, pkg, t, "out_for_delivery", dest)
                delivered = t + u(_HOUR, 8 * _HOUR)
            else:
                t += u(2 * _HOUR, 20 * _HOUR)
                self.scan(o, pkg, t, "available_for_pickup", dest)
                delivered = t + u(_DAY, 5 * _DAY)
        elif r < 0.12:  # parcel locker / pickup point, no van
            self.scan(o, pkg, ofd, "available_for_pickup", dest)
            delivered = ofd + u(4 * _HOUR, 4 * _DAY)
        else:
            self.scan(o, pkg, ofd, "out_for_delivery", dest)
        self.scan(o, pkg, delivered, "delivered", dest)
        pkg.delivered_at = delivered

    def track_rto(self, o: _Order, pkg: _Package, origin: str, t_pick: int, refused: bool) -> None:
        """Return to origin: refused, failed attempts, or unclaimed at a pickup point."""
        rnd = self.rnd
        u = self.u
        dest = o.destination
        ofd = pkg.shipped_at + u(3 * _DAY, 9 * _DAY)
        for t in sorted(u(t_pick + 1, ofd - 1) for _ in range(u(1, 3))):
            self.scan(o, pkg, t, "in_transit", self.pick(o.hubs))
        self.scan(o, pkg, ofd, "out_for_delivery", dest)
        r = rnd()
        if refused or r < 0.4:
            t = ofd + u(_HOUR, 6 * _HOUR)
            self.scan(o, pkg, t, "rto_initiated", dest, code=_REFUSED_CODE[pkg.carrier])
        elif r < 0.8:
            t = ofd
            for attempt in range(u(1, 3)):
                if attempt:
                    t += u(16 * _HOUR, 26 * _HOUR)
                    self.scan(o, pkg, t, "out_for_delivery", dest)
                t += u(_HOUR, 6 * _HOUR)
                self.scan(o, pkg, t, "attempt_failed", dest)
            t += u(2 * _HOUR, 2 * _DAY)
            self.scan(o, pkg, t, "rto_initiated", dest)
        else:  # unclaimed at the pickup point
            t = ofd + u(_HOUR, 6 * _HOUR)
            self.scan(o, pkg, t, "attempt_failed", dest)
            t += u(2 * _HOUR, 20 * _HOUR)
            self.scan(o, pkg, t, "available_for_pickup", dest)
            t += u(7 * _DAY, 14 * _DAY)
            self.scan(o, pkg, t, "rto_initiated", dest)
        for _ in range(u(1, 2)):
            t += u(12 * _HOUR, 4 * _DAY)
            self.scan(o, pkg, t, "rto_in_transit", self.pick(o.hubs))
        if rnd() < 0.92:
            t += u(2 * _DAY, 8 * _DAY)
            self.scan(o, pkg, t, "rto_delivered", origin)
            if rnd() >= 0.4:
                return
            t += u(_DAY, 6 * _DAY)
        else:  # the courier never scans it back in; the warehouse does
            t += u(5 * _DAY, 12 * _DAY)
        r = rnd()
        condition = "intact" if r < 0.85 else "opened" if r < 0.95 else "relabeled"
        self.add(
            o,
            t,
            "return_received",
            {"order_id": o.oid, "package_id": pkg.package_id, "condition": condition},
        )

    # --- claims -----------------------------------------------------------------------
    def claim_lines(self, lines: list[tuple[str, int]], count: int) -> list[dict[str, Any]]:
        """Up to `count` of the given lines (in order), each with 1..quantity units."""
        chosen = sorted(self.rng.sample(range(len(lines)), min(count, len(lines))))
        return [{"sku": lines[i][0], "quantity": self.u(1, lines[i][1])} for i in chosen]

    def claim(
        self,
        o: _Order,
        t: int,
        claim_type: str,
        package_id: str | None,
        lines: list[dict[str, Any]],
    ) -> None:
        """A claim_filed and its claim_reviewed 1-5 days later."""
        rnd = self.rnd
        o.claims += 1
        cid = f"clm-{o.n}-{o.claims}"
        filed: Event = {"order_id": o.oid, "claim_id": cid, "claim_type": claim_type}
        self.nullable(filed, "package_id", package_id)
        filed["lines"] = lines
        self.add(o, t, "claim_filed", filed)
        accepted = rnd() < _P_ACCEPTED
        r = rnd()
        if claim_type in ("wrong_quantity", "missing_item"):
            resolution = "refund" if r < 0.5 else "reship" if r < 0.85 else None
        else:
            resolution = "refund" if r < 0.85 else None
        if not accepted and rnd() < 0.8:
            resolution = None
        reviewed: Event = {"order_id": o.oid, "claim_id": cid, "proof_accepted": accepted}
        self.nullable(reviewed, "resolution", resolution)
        self.add(o, t + self.u(_DAY, 5 * _DAY), "claim_reviewed", reviewed)

    def claims(self, o: _Order, packages: list[_Package], ordered: list[tuple[str, int]]) -> None:
        """Buyer complaints, driven by what tracking says happened to each package."""
        rnd = self.rnd
        u = self.u
        for pkg in packages:
            r = rnd()
            pid = None if rnd() < 0.15 else pkg.package_id
            empty = rnd() < 0.25
            s = pkg.shipped_at
            if pkg.fate == "delivered":
                assert pkg.delivered_at is not None
                t = pkg.delivered_at + u(6 * _HOUR, 14 * _DAY)
                if r < 0.025:
                    claim_type = "not_received"  # tracking says delivered: denied
                elif r < 0.045:
                    claim_type = "damaged"
                elif r < 0.065:
                    claim_type = "defective"
                elif r < 0.08:
                    claim_type = "wrong_item"
                elif r < 0.09:
                    claim_type = "wrong_quantity"
                    empty = rnd() < 0.1
                else:
                    continue
                lines = (
                    []
                    if empty
                    else self.claim_lines(
                        pkg.lines, 1 if claim_type == "wrong_quantity" else u(1, len(pkg.lines))
                    )
                )
            elif pkg.fate == "late" and r < 0.5:
                claim_type, t = "not_received", s + u(8 * _DAY, 26 * _DAY)
                lines = [] if empty else self.claim_lines(pkg.lines, len(pkg.lines))
            elif pkg.fate == "lost" and r < 0.6:
                claim_type, t = "not_received", s + u(8 * _DAY, 30 * _DAY)
                lines = [] if empty else self.claim_lines(pkg.lines, len(pkg.lines))
            elif pkg.fate == "rto" and r < 0.08:
                claim_type, t = "not_received", s + u(4 * _DAY, 14 * _DAY)
                lines = [] if empty else self.claim_lines(pkg.lines, len(pkg.lines))
            else:
                continue
            self.claim(o, t, claim_type, pid, lines)

        # missing_item: on split orders often filed before the last package arrives
        first = packages[0]
        if first.delivered_at is None:
            return
        if len(packages) > 1 and rnd() < 0.15:
            later = [line for pkg in packages[1:] for line in pkg.lines]
            t = first.delivered_at + u(6 * _HOUR, 3 * _DAY)
            lines = [] if rnd() < 0.1 else self.claim_lines(later, 1)
            self.claim(o, t, "missing_item", None, lines)
        elif len(packages) == 1 and rnd() < 0.01:
            t = first.delivered_at + u(_DAY, 10 * _DAY)
            lines = [] if rnd() < 0.1 else self.claim_lines(ordered, 1)
            pid = None if rnd() < 0.5 else first.package_id
            self.claim(o, t, "missing_item", pid, lines)


# --- public API ---------------------------------------------------------------------------
def iter_labelled_history(
    orders: int,
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    days: int = 60,
    malformed_share: float = 0.002,
    duplicate_share: float = 0.01,
    tracking_without_order_id_share: float = 0.3,
    max_disorder: timedelta = timedelta(minutes=30),
) -> Iterator[tuple[str, str | None]]:
    """Yield (line, malformed kind or None), so tests know which lines are bad on purpose.

    Streams: memory holds only the orders still in flight, not the whole history.
    """
    builder = _Builder(
        orders,
        seed,
        start=start,
        days=days,
        malformed_share=malformed_share,
        duplicate_share=duplicate_share,
        tracking_without_order_id_share=tracking_without_order_id_share,
        max_disorder=max_disorder,
    )
    for chunk in builder.chunks():
        for _, _, line, kind in chunk:
            yield line, kind


def iter_history(
    orders: int,
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    days: int = 60,
    malformed_share: float = 0.002,
    duplicate_share: float = 0.01,
    tracking_without_order_id_share: float = 0.3,
    max_disorder: timedelta = timedelta(minutes=30),
) -> Iterator[str]:
    """Stream the lines of `generate_history` without holding them all."""
    builder = _Builder(
        orders,
        seed,
        start=start,
        days=days,
        malformed_share=malformed_share,
        duplicate_share=duplicate_share,
        tracking_without_order_id_share=tracking_without_order_id_share,
        max_disorder=max_disorder,
    )
    for chunk in builder.chunks():
        for entry in chunk:
            yield entry[2]


def generate_history(
    orders: int,
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    days: int = 60,
    malformed_share: float = 0.002,
    duplicate_share: float = 0.01,
    tracking_without_order_id_share: float = 0.3,
    max_disorder: timedelta = timedelta(minutes=30),
) -> list[str]:
    """Return the JSON lines (no newline) of a history of `orders` orders.

    The same arguments always give byte-identical output; see the module docstring for
    the ordering guarantees and the mix.
    """
    builder = _Builder(
        orders,
        seed,
        start=start,
        days=days,
        malformed_share=malformed_share,
        duplicate_share=duplicate_share,
        tracking_without_order_id_share=tracking_without_order_id_share,
        max_disorder=max_disorder,
    )
    get_line = itemgetter(2)
    result: list[str] = []
    for chunk in builder.chunks():
        result.extend(map(get_line, chunk))
    return result


def write_history(
    out: str | os.PathLike[str] | _Writer,
    orders: int,
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    days: int = 60,
    malformed_share: float = 0.002,
    duplicate_share: float = 0.01,
    tracking_without_order_id_share: float = 0.3,
    max_disorder: timedelta = timedelta(minutes=30),
) -> int:
    """Write the history as JSONL (one line per event, '\\n' terminated) to a path or a
    text stream, streaming; return the number of lines written."""
    builder = _Builder(
        orders,
        seed,
        start=start,
        days=days,
        malformed_share=malformed_share,
        duplicate_share=duplicate_share,
        tracking_without_order_id_share=tracking_without_order_id_share,
        max_disorder=max_disorder,
    )
    if isinstance(out, str | os.PathLike):
        with open(out, "w", encoding="utf-8", newline="\n") as stream:
            return _write_chunks(stream, builder)
    return _write_chunks(out, builder)


def _write_chunks(stream: _Writer, builder: _Builder) -> int:
    """Write each flushed chunk with one write call (fast on big histories)."""
    count = 0
    for chunk in builder.chunks():
        stream.write("".join(entry[2] + "\n" for entry in chunk))
        count += len(chunk)
    return count
