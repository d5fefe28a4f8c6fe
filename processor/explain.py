"""`refund-processor explain`: why an order was refunded, denied, or is still waiting.

An `Explanation` is what the processor knows about one order: its timeline in event
time, its ledger, the timers still pending and every decision, each line saying where it
came from. This module is pure (no Kafka, no Redis): `explain_history` replays a file
offline, with the same engine as `replay`, and sees the order's events; the live shell
(processor/explain_live.py) reads the state from Redis, the decisions from the decision
topic and the dead letters from the dead-letter topic, where only the facts the state
keeps, and the events it refused, are left of the events. Both end in
`explain_state`. `to_json` is the stable machine shape (docs/explain.md), `render_text`
the human one.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, assert_never

from processor.config import PolicyConfig
from processor.events import (
    CancellationRequested,
    ClaimFiled,
    ClaimReviewed,
    Event,
    InvalidEventError,
    OrderCancelled,
    OrderPlaced,
    PackageShipped,
    ReturnReceived,
    TrackingUpdate,
    parse_event_json,
)
from processor.ledger import UNSHIPPED, reshipped
from processor.outputs import DeadLetter, Decision, iso_millis, output_to_dict
from processor.policy import (
    DEADLINE_TIMER_PREFIX,
    EXPIRE_HELD_TIMER,
    event_digest,
    is_redelivery,
    timers,
    unapplied_digest,
)
from processor.replay import replay
from processor.state import Cancellation, Claim, Order, OrderState, Package, Priced
from processor.store import InMemoryStore

#: Bumped whenever a key of `to_json`'s shape changes meaning or disappears.
JSON_FORMAT: Final = 1

EntryKind = Literal["event", "fact", "decision"]
Mode = Literal["replay", "live"]
#: Where a line of a live explanation came from when it is the order's state in Redis.
STATE_SOURCE: Final = "state"
#: Where a decision came from when `explain_history` made it.
REPLAY_SOURCE: Final = "replay"


class UnknownOrderError(LookupError):
    """Nothing is known about the order: no event, no state, no decision."""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of the timeline.

    kind: `event` (a whole input event), `fact` (what the order's state kept of an
    event, or a deadline it passed) or `decision`. `source` says where it was read.
    """

    at: int
    kind: EntryKind
    what: str
    event_id: str | None
    detail: str
    source: str


@dataclass(frozen=True, slots=True)
class SourcedDecision:
    decision: Decision
    source: str


@dataclass(frozen=True, slots=True)
class SourcedDeadLetter:
    """A dead letter under the order's key: an event the order refused or that waited in
    vain for a missing piece (its input coordinates are `dead.origin`).

    `dead.payload` is the event as JSON, what an operator publishes again; `value_note`
    says instead why the record holds none (bad input kept as it came), None if it does.
    """

    dead: DeadLetter
    source: str
    value_note: str | None = None


@dataclass(frozen=True, slots=True)
class SourcedEvent:
    """One of the order's events as read from a file; `note` says what became of it."""

    event: Event
    origin: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    order_id: str
    mode: Mode
    origin: str
    clock: int | None
    state: OrderState | None
    timeline: tuple[TimelineEntry, ...]
    timers: tuple[tuple[int, str], ...]
    decisions: tuple[SourcedDecision, ...]
    untimed_event_ids: tuple[str, ...]
    dead_letters: tuple[SourcedDeadLetter, ...] = ()


def explain_state(
    order_id: str,
    state: OrderState | None,
    decisions: Sequence[SourcedDecision],
    config: PolicyConfig,
    *,
    mode: Mode,
    origin: str,
    clock: int | None,
    events: Sequence[SourcedEvent] | None = None,
    dead_letters: Sequence[SourcedDeadLetter] = (),
) -> Explanation:
    """Puts an order's state, decisions, dead letters and (from a file) events together.

    Without `events` the timeline is rebuilt from the facts the state keeps and the
    events of the dead letters; the ids of events the state saw (applied or
    dead-lettered) but keeps nothing else of are listed as `untimed_event_ids`. A courier
    scan that changed nothing (`policy.changes_nothing`) leaves no id to list.
    """
    if state is None and not decisions and not events and not dead_letters:
        raise UnknownOrderError(
            f"order {order_id!r} is unknown: {origin} has no event, state, decision or "
            "dead letter for it"
        )
    entries: list[TimelineEntry] = []
    if events is None:
        if state is not None:
            entries.extend(_facts(state))
            entries.extend(_held_entries(state))
        entries.extend(_dead_entries(dead_letters, state))
    else:
        held = _held_waits(state)
        entries.extend(_event_entry(item, state, held) for item in events)
    entries.extend(_decision_entry(item) for item in decisions)
    # Within one instant an event comes before the decisions it caused (a stable sort).
    entries.sort(key=lambda entry: (entry.at, entry.kind == "decision"))
    untimed: tuple[str, ...] = ()
    if events is None and state is not None:
        shown = {entry.event_id for entry in entries}
        untimed = tuple(sorted(state.seen.keys() - shown))
    pending = timers(state, config) if state is not None else {}
    return Explanation(
        order_id=order_id,
        mode=mode,
        origin=origin,
        clock=clock,
        state=state,
        timeline=tuple(entries),
        timers=tuple(sorted((deadline, name) for name, deadline in pending.items())),
        decisions=tuple(decisions),
        untimed_event_ids=untimed,
        dead_letters=tuple(dead_letters),
    )


def explain_history(
    lines: Sequence[str | bytes],
    source: str,
    order_id: str,
    config: PolicyConfig,
    *,
    now: int | None = None,
    wall_clock: int | None = None,
) -> Explanation:
    """Replays the whole file (the clock and tracking links are the file's), then explains
    one order from its events, final state and decisions."""
    store = InMemoryStore()
    decisions: list[SourcedDecision] = []
    dead: dict[str, list[DeadLetter]] = {}
    dead_letters: list[SourcedDeadLetter] = []
    for output in replay(lines, source, config, now=now, wall_clock=wall_clock, store=store):
        if isinstance(output, Decision):
            if output.order_id == order_id:
                decisions.append(SourcedDecision(output, REPLAY_SOURCE))
        elif isinstance(output, DeadLetter):
            dead.setdefault(output.origin, []).append(output)
            if output.key == order_id:
                dead_letters.append(SourcedDeadLetter(output, REPLAY_SOURCE))
    state = store.load_order(order_id)
    return explain_state(
        order_id,
        state,
        decisions,
        config,
        mode="replay",
        origin=source,
        clock=store.get_clock(),
        events=_order_events(lines, source, order_id, state, dead),
        dead_letters=dead_letters,
    )


def _order_events(
    lines: Sequence[str | bytes],
    source: str,
    order_id: str,
    state: OrderState | None,
    dead: Mapping[str, list[DeadLetter]],
) -> list[SourcedEvent]:
    """The file's events of the order: its own, and tracking updates without an order_id
    whose number one of its packages carries. Origins are numbered as `replay` does."""
    numbers = {p.tracking_number for p in state.packages.values()} if state else set()
    needles = [order_id, *numbers]
    found: list[SourcedEvent] = []
    seen: dict[str, int] = {}  # as the order's state keeps them (`OrderState.seen`)
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            continue  # a dead letter in the replay
        # Cheap filter before parsing: an id can only be missing from a line that holds
        # it if the line escapes it, which takes a backslash.
        if "\\" not in line and not any(needle in line for needle in needles):
            continue
        try:
            event = parse_event_json(line.rstrip("\r\n"))
        except InvalidEventError:
            continue
        if event.order_id != order_id and not (
            event.order_id is None
            and isinstance(event, TrackingUpdate)
            and event.tracking_number in numbers
        ):
            continue
        origin = f"{source}:{number}"
        notes = [f"dead-lettered, {d.reason}: {d.message}" for d in dead.get(origin, ())]
        known = seen.get(event.event_id)
        if is_redelivery(known, event):
            notes = notes or ["a duplicate of an earlier line: ignored"]
        elif known is None or known < 0:
            seen[event.event_id] = unapplied_digest(event) if notes else event_digest(event)
        found.append(SourcedEvent(event, origin, "; ".join(notes) or None))
    return found


# --------------------------------------------------------------------------- timeline


def _units(lines: Mapping[str, int]) -> str:
    return ", ".join(f"{quantity} x {sku}" for sku, quantity in lines.items()) or "no lines"


def _order_text(order: Order) -> str:
    priced = ", ".join(
        f"{line.quantity} x {sku} at {line.unit_price_minor}" for sku, line in order.lines.items()
    )
    return (
        f"merchant {order.merchant_id}: {priced}, shipping {order.shipping_fee_minor}; "
        f"total {order.total_minor} {order.currency}"
    )


def _claim_text(
    claim_id: str, claim_type: str, package_id: str | None, lines: Mapping[str, int]
) -> str:
    scope = f"package {package_id}" if package_id is not None else "the whole order"
    units = _units(lines) if lines else "no lines (all of it)"
    return f"claim {claim_id}: {claim_type}, {scope}, {units}"


def _review_text(claim_id: str, proof_accepted: bool, resolution: str | None) -> str:
    verdict = "proof accepted" if proof_accepted else "proof rejected"
    resolved = f", resolution {resolution}" if resolution else ""
    return f"claim {claim_id}: {verdict}{resolved}"


def describe_event(event: Event, state: OrderState | None) -> str:
    """One line saying what an input event says, in the order's terms."""
    match event:
        case OrderPlaced():
            lines = {line.sku: Priced(line.quantity, line.unit_price_minor) for line in event.lines}
            return _order_text(
                Order(
                    merchant_id=event.merchant_id,
                    currency=event.currency,
                    lines=lines,
                    shipping_fee_minor=event.shipping_fee_minor,
                    placed_event_id=event.event_id,
                    placed_at=event.at,
                )
            )
        case PackageShipped():
            units = _units({line.sku: line.quantity for line in event.lines})
            return f"package {event.package_id} ({event.carrier} {event.tracking_number}): {units}"
        case TrackingUpdate():
            packages = state.packages_for_tracking(event.tracking_number) if state else []
            which = (
                "package " + ", ".join(package.package_id for package in packages)
                if packages
                else f"tracking number {event.tracking_number}"
            )
            where = f" at {event.location}" if event.location else ""
            return f"{which}: {event.status} ({event.carrier} says {event.carrier_status!r}){where}"
        case CancellationRequested():
            return f"the merchant asked to cancel (request {event.request_id})"
        case OrderCancelled():
            request = f" (request {event.request_id})" if event.request_id else ""
            return f"the warehouse intercepted the order{request}"
        case ClaimFiled():
            return _claim_text(
                event.claim_id,
                event.claim_type,
                event.package_id,
                {line.sku: line.quantity for line in event.lines},
            )
        case ClaimReviewed():
            return _review_text(event.claim_id, event.proof_accepted, event.resolution)
        case ReturnReceived():
            return f"package {event.package_id} came back to the warehouse {event.condition}"
        case _:
            assert_never(event)


def _held_waits(state: OrderState | None) -> dict[str, str]:
    """Event id -> what it waits for, of the events the state holds back."""
    if state is None:
        return {}
    return {parse_event_json(h.event_json).event_id: h.waits_for for h in state.held}


def _waiting(waits_for: str) -> str:
    kind, _, missing = waits_for.partition(":")
    return (
        f"held until {kind} {missing!r} is known" if missing else f"held until the {kind} is known"
    )


def _event_entry(
    item: SourcedEvent, state: OrderState | None, held: Mapping[str, str]
) -> TimelineEntry:
    event = item.event
    notes = [item.note] if item.note else []
    if event.event_id in held and item.note is None:
        notes.append(_waiting(held[event.event_id]))
    return _whole_event(event, state, notes, item.origin)


def _whole_event(
    event: Event, state: OrderState | None, notes: Sequence[str], source: str
) -> TimelineEntry:
    detail = describe_event(event, state) + "".join(f" [{note}]" for note in notes)
    return TimelineEntry(event.at, "event", event.type, event.event_id, detail, source)


def _held_entries(state: OrderState) -> Iterable[TimelineEntry]:
    for item in state.held:
        event = parse_event_json(item.event_json)
        yield _whole_event(event, state, [_waiting(item.waits_for)], item.origin)


def _dead_entries(
    dead_letters: Sequence[SourcedDeadLetter], state: OrderState | None
) -> Iterable[TimelineEntry]:
    """The events of the dead letters that carry one (an input whose bytes hold no event
    has none to show, only its entry under dead letters)."""
    for item in dead_letters:
        try:
            event = parse_event_json(item.dead.payload)
        except InvalidEventError:
            continue
        yield _whole_event(event, state, [f"dead-lettered, {item.dead.reason}"], item.dead.origin)


def _facts(state: OrderState) -> Iterable[TimelineEntry]:
    """The timeline the state alone supports: the facts it keeps, with their event times."""

    def fact(at: int, what: str, event_id: str | None, detail: str) -> TimelineEntry:
        return TimelineEntry(at, "fact", what, event_id, detail, STATE_SOURCE)

    if state.order is not None:
        order = state.order
        yield fact(order.placed_at, "order_placed", order.placed_event_id, _order_text(order))
    for package in _packages(state):
        name = f"package {package.package_id}"
        yield fact(
            package.shipped_at,
            "package_shipped",
            package.shipped_event_id,
            f"{name} (tracking {package.tracking_number}): {_units(package.lines)}",
        )
        if package.picked_up_at is not None:
            yield fact(
                package.picked_up_at,
                "tracking_update",
                None,
                f"{name}: first scan in the courier's hands",
            )
        if package.delivered_at is not None:
            yield fact(
                package.delivered_at,
                "tracking_update",
                package.delivered_event_id,
                f"{name}: delivered",
            )
        if package.deadline_passed:
            yield fact(package.deadline, "deadline", None, f"{name}: lost deadline passed")
    for claim in state.claims.values():
        yield fact(
            claim.filed_at,
            "claim_filed",
            claim.filed_event_id,
            _claim_text(claim.claim_id, claim.claim_type, claim.package_id, claim.lines),
        )
        if claim.review is not None:
            review = claim.review
            yield fact(
                review.at,
                "claim_reviewed",
                review.event_id,
                _review_text(claim.claim_id, review.proof_accepted, review.resolution),
            )
    if state.cancel_request is not None:
        request = state.cancel_request
        yield fact(
            request.at,
            "cancellation_requested",
            request.event_id,
            f"the merchant asked to cancel (request {request.request_id}); awaiting the warehouse",
        )
    if state.cancelled is not None:
        yield fact(
            state.cancelled.at,
            "order_cancelled",
            state.cancelled.event_id,
            "the warehouse intercepted the order",
        )


def _decision_entry(item: SourcedDecision) -> TimelineEntry:
    d = item.decision
    rule = f" ({d.rule})" if d.rule else ""
    return TimelineEntry(
        d.decided_at, "decision", d.outcome, None, f"{d.code}{rule}: {d.detail}", item.source
    )


def _packages(state: OrderState) -> list[Package]:
    return sorted(state.packages.values(), key=lambda p: (p.shipped_at, p.package_id))


def timer_meaning(name: str) -> str:
    """What happens when a pending timer fires, in words."""
    if name.startswith(DEADLINE_TIMER_PREFIX):
        package = name.removeprefix(DEADLINE_TIMER_PREFIX)
        return (
            f"R3: package {package} is refunded as lost unless tracking shows it delivered "
            "or it comes back by then"
        )
    if name == EXPIRE_HELD_TIMER:
        return "held events still waiting then go to the dead-letter topic (orphan_ttl)"
    return name


# --------------------------------------------------------------------------- JSON


def _iso(millis: int | None) -> str | None:
    return None if millis is None else iso_millis(millis)


def _ledger_json(state: OrderState) -> dict[str, Any] | None:
    order = state.order
    if order is None:
        return None
    packages = _packages(state)
    by_package = state.ledger.by_package
    skus = []
    for sku, priced in order.lines.items():
        refunded = state.ledger.refunded.get(sku, 0)
        skus.append(
            {
                "sku": sku,
                "unit_price_minor": priced.unit_price_minor,
                "ordered": priced.quantity,
                "shipped": {p.package_id: p.lines[sku] for p in packages if sku in p.lines},
                "refunded": refunded,
                "refunded_out_of": {
                    p.package_id: by_package[p.package_id][sku]
                    for p in packages
                    if by_package.get(p.package_id, {}).get(sku)
                },
                "refunded_unshipped": by_package.get(UNSHIPPED, {}).get(sku, 0),
                "reshipped": reshipped(state.ledger, sku),
                "ordered_minor": priced.quantity * priced.unit_price_minor,
                "refunded_minor": refunded * priced.unit_price_minor,
            }
        )
    return {
        "currency": order.currency,
        "skus": skus,
        "shipping_fee_minor": order.shipping_fee_minor,
        "shipping_fee_refunded": state.ledger.shipping_fee_refunded,
        "total_minor": order.total_minor,
        "refunded_minor": state.ledger.refunded_minor,
        "remaining_minor": order.total_minor - state.ledger.refunded_minor,
    }


def _package_json(package: Package) -> dict[str, Any]:
    return {
        "package_id": package.package_id,
        "tracking_number": package.tracking_number,
        "lines": dict(package.lines),
        "shipped_at": _iso(package.shipped_at),
        "shipped_event_id": package.shipped_event_id,
        "deadline": _iso(package.deadline),
        "picked_up_at": _iso(package.picked_up_at),
        "delivered_at": _iso(package.delivered_at),
        "delivered_event_id": package.delivered_event_id,
        "back_event_id": package.back_event_id,
        "settled_by": package.settled_by,
        "refund_denied": package.refund_denied,
        "deadline_passed": package.deadline_passed,
    }


def _claim_json(claim: Claim) -> dict[str, Any]:
    review = claim.review
    return {
        "claim_id": claim.claim_id,
        "claim_type": claim.claim_type,
        "package_id": claim.package_id,
        "lines": dict(claim.lines),
        "status": claim.status,
        "filed_at": _iso(claim.filed_at),
        "filed_event_id": claim.filed_event_id,
        "review": None
        if review is None
        else {
            "proof_accepted": review.proof_accepted,
            "resolution": review.resolution,
            "event_id": review.event_id,
            "at": _iso(review.at),
        },
    }


def _cancellation_json(cancellation: Cancellation | None) -> dict[str, Any] | None:
    if cancellation is None:
        return None
    return {
        "request_id": cancellation.request_id,
        "event_id": cancellation.event_id,
        "at": _iso(cancellation.at),
    }


def to_json(explanation: Explanation) -> dict[str, Any]:
    """The machine shape (docs/explain.md): plain JSON values, ISO-8601 UTC times."""
    state = explanation.state
    order = state.order if state is not None else None
    return {
        "format": JSON_FORMAT,
        "order_id": explanation.order_id,
        "mode": explanation.mode,
        "origin": explanation.origin,
        "clock": _iso(explanation.clock),
        "order": None
        if order is None
        else {
            "merchant_id": order.merchant_id,
            "currency": order.currency,
            "placed_at": _iso(order.placed_at),
            "placed_event_id": order.placed_event_id,
            "total_minor": order.total_minor,
        },
        "ledger": _ledger_json(state) if state is not None else None,
        "packages": [_package_json(p) for p in _packages(state)] if state else [],
        "claims": [_claim_json(c) for c in state.claims.values()] if state else [],
        "cancellation": {
            "requested": _cancellation_json(state.cancel_request if state else None),
            "cancelled": _cancellation_json(state.cancelled if state else None),
        },
        "timers": [
            {"name": name, "deadline": iso_millis(deadline), "meaning": timer_meaning(name)}
            for deadline, name in explanation.timers
        ],
        "timeline": [
            {
                "at": iso_millis(entry.at),
                "kind": entry.kind,
                "what": entry.what,
                "event_id": entry.event_id,
                "detail": entry.detail,
                "source": entry.source,
            }
            for entry in explanation.timeline
        ],
        "decisions": [
            output_to_dict(item.decision) | {"source": item.source}
            for item in explanation.decisions
        ],
        "untimed_event_ids": list(explanation.untimed_event_ids),
        "dead_letters": [
            {
                "origin": item.dead.origin,
                "reason": item.dead.reason,
                "message": item.dead.message,
                "source": item.source,
                "value": item.dead.payload if item.value_note is None else None,
                "value_note": item.value_note,
            }
            for item in explanation.dead_letters
        ],
    }


# --------------------------------------------------------------------------- text


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        indent
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + ("  " if len(row) > 1 else "")
        + row[-1]
        for row in rows
    ]


def _settlement_text(package: dict[str, Any]) -> str:
    """The package's refund, or what the package rule that settled it found instead."""
    if package["settled_by"] is None:
        return "not refunded"
    if package["refund_denied"]:
        return f"settled as {package['settled_by']}, nothing left to refund"
    return f"refunded as {package['settled_by']}"


def render_text(explanation: Explanation) -> str:
    """The human-readable explanation: amounts in minor units of the order's currency."""
    data = to_json(explanation)
    out: list[str] = []
    order = data["order"]
    if order is None:
        out.append(f"Order {explanation.order_id}: its order_placed is not known")
    else:
        out.append(
            f"Order {explanation.order_id}: merchant {order['merchant_id']}, "
            f"{order['currency']}, placed {order['placed_at']} (event {order['placed_event_id']})"
        )
    how = "offline replay of" if explanation.mode == "replay" else "live state in"
    out.append(f"Explained from the {how} {explanation.origin}")
    out.append(f"Event-time clock: {data['clock'] or 'not started'}")

    out += ["", "Timeline (event time)"]
    out += _table(
        [
            [e["at"], e["kind"], e["what"], e["event_id"] or "-", f"{e['detail']}  <{e['source']}>"]
            for e in data["timeline"]
        ]
    )
    if explanation.untimed_event_ids:
        out.append(
            "  also seen, applied or dead-lettered (the state keeps only their ids): "
            + ", ".join(explanation.untimed_event_ids)
        )

    ledger = data["ledger"]
    if ledger is not None:
        out += ["", f"Ledger (amounts in minor units of {ledger['currency']})"]
        header = "SKU|unit price|ordered|shipped|refunded|reshipped|paid|refunded amount"
        rows = [header.split("|")]
        for sku in ledger["skus"]:
            shipped = sum(sku["shipped"].values())
            per_package = ", ".join(f"{p}: {q}" for p, q in sku["shipped"].items())
            out_of = [f"{p}: {q}" for p, q in sku["refunded_out_of"].items()]
            if sku["refunded_unshipped"]:
                out_of.append(f"cancelled before shipping: {sku['refunded_unshipped']}")
            rows.append(
                [
                    sku["sku"],
                    str(sku["unit_price_minor"]),
                    str(sku["ordered"]),
                    f"{shipped} ({per_package})" if per_package else "0",
                    f"{sku['refunded']} ({', '.join(out_of)})" if out_of else str(sku["refunded"]),
                    str(sku["reshipped"]),
                    str(sku["ordered_minor"]),
                    str(sku["refunded_minor"]),
                ]
            )
        out += _table(rows)
        fee_state = "refunded" if ledger["shipping_fee_refunded"] else "not refunded"
        out.append(f"  shipping fee {ledger['shipping_fee_minor']}: {fee_state}")
        out.append(
            f"  total paid {ledger['total_minor']}, refunded {ledger['refunded_minor']}, "
            f"remaining {ledger['remaining_minor']}"
        )

    if data["packages"]:
        out += ["", "Packages"]
        out += _table(
            [
                [
                    p["package_id"],
                    f"tracking {p['tracking_number']}",
                    f"shipped {p['shipped_at']}",
                    f"deadline {p['deadline']}",
                    f"delivered {p['delivered_at'] or '-'}",
                    _settlement_text(p),
                ]
                for p in data["packages"]
            ]
        )
    if data["claims"]:
        out += ["", "Claims"]
        out += _table(
            [
                [
                    c["claim_id"],
                    c["claim_type"],
                    f"package {c['package_id']}" if c["package_id"] else "whole order",
                    f"filed {c['filed_at']}",
                    c["status"],
                ]
                for c in data["claims"]
            ]
        )

    out += ["", "Dead letters"]
    dead_rows = _table(
        [
            [d["origin"], f"{d['reason']}: {d['message']}  <{d['source']}>"]
            for d in data["dead_letters"]
        ]
    )
    for row, d in zip(dead_rows, data["dead_letters"], strict=True):
        value = d["value"] if d["value"] is not None else f"none, {d['value_note']}"
        out += [row, f"      value: {value}"]
    if not dead_rows:
        out.append("  none")

    out += ["", "Pending timers"]
    out += _table([[t["deadline"], t["name"], t["meaning"]] for t in data["timers"]]) or ["  none"]

    out += ["", "Decisions"]
    if not data["decisions"]:
        out.append("  none")
    for d in data["decisions"]:
        amount = f"{d['amount_minor']} {d['currency']}" if d["amount_minor"] is not None else "-"
        subject = (
            f"package {d['package_id']}"
            if d["package_id"]
            else f"claim {d['claim_id']}"
            if d["claim_id"]
            else "order"
        )
        out.append(
            f"  {d['decided_at']}  {d['outcome']}  {d['code']}  rule {d['rule'] or '-'}  "
            f"{amount}  {subject}"
        )
        out.append(f"      {d['detail']}")
        command = f", command {d['command_id']}" if d["command_id"] else ""
        out.append(
            f"      evidence: {', '.join(d['evidence_event_ids']) or '-'}; "
            f"decision {d['decision_id']}{command}  <{d['source']}>"
        )
    return "\n".join(out) + "\n"
