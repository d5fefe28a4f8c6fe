"""The refund policy as a pure function: (order state, event or timer, policy) -> (state, outputs).

Rules R1-R12 of SPEC section 4 live here and nowhere else; docs/policy.md explains them.
Nothing in this module does I/O: the replay, the test driver and the live processor all
call `apply_event` and `fire_timer` and differ only in where state and outputs go.
"""

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Final, get_args

from processor.config import PolicyConfig
from processor.events import (
    CancellationRequested,
    ClaimFiled,
    ClaimReviewed,
    Event,
    OrderCancelled,
    OrderEvent,
    OrderPlaced,
    PackageShipped,
    ReturnReceived,
    TrackingStatus,
    TrackingUpdate,
    event_to_json,
    parse_event_json,
)
from processor.ledger import (
    UNSHIPPED,
    carries_only_reships,
    settle_refund,
    settle_reship,
    ship,
    shipped_units,
)
from processor.outputs import (
    DeadLetter,
    Decision,
    Outcome,
    Output,
    RefundCommand,
    ReshipCommand,
    ReshipLine,
    decision_id,
    refund_command_id,
    reship_command_id,
)
from processor.state import (
    UNKNOWN_DIGEST,
    Cancellation,
    Claim,
    Held,
    Order,
    OrderState,
    Package,
    Priced,
    Review,
    replace_claim,
    replace_package,
)

# Scans that prove the courier has the package (R4: cancellation too late): all but a label.
_IN_COURIER_HANDS: Final = frozenset(get_args(TrackingStatus)) - {"info_received"}
# Scans the rules act on; any other scan only tells when the courier first had the package.
_DECISIVE_SCANS: Final = frozenset({"delivered", "lost", "rto_delivered"})
_FULL_REFUND_CLAIMS: Final = frozenset({"damaged", "defective", "wrong_item"})
_PARTIAL_CLAIMS: Final = frozenset({"wrong_quantity", "missing_item"})
DEADLINE_TIMER_PREFIX: Final = "deadline:"
EXPIRE_HELD_TIMER: Final = "expire-held"
_DEAD_LETTER_REASON: Final = {
    "order": "unknown_order",
    "package": "unknown_package",
    "claim": "unknown_claim",
    "tracking": "unknown_tracking_number",
}


@dataclass(slots=True)
class Result:
    """A step's new state, its outputs, and tracking numbers it linked to the order.

    `timers_before` are the timers the state needed before the step (None when the step
    was a no-op), so the caller can bring its timer index in line without recomputing.
    `timers_stale` is set by every change to what `timers()` reads (packages, held
    events): most steps make none, and their caller skips deriving the timers again.
    """

    state: OrderState
    timers_before: dict[str, int] | None
    outputs: list[Output] = field(default_factory=list)
    linked_tracking_numbers: list[str] = field(default_factory=list)
    timers_stale: bool = False


@dataclass(slots=True)
class _Step:
    """One decision step: what triggered it, and where its outputs go."""

    state: OrderState
    config: PolicyConfig
    trigger: str
    at: int
    result: Result

    def emit(self, output: Output) -> None:
        self.result.outputs.append(output)

    def decide(
        self,
        outcome: Outcome,
        code: str,
        rule: str | None,
        detail: str,
        evidence: tuple[str, ...],
        *,
        subject: str,
        package_id: str | None = None,
        claim_id: str | None = None,
        command_id: str | None = None,
        amount_minor: int | None = None,
        at: int | None = None,
    ) -> None:
        """`at`: the event time of the decision, when it is not the step's (a decision a
        late event makes for an event read before it, dated as in event-time order)."""
        order = self.state.order
        self.emit(
            Decision(
                decision_id=decision_id(self.state.order_id, self.trigger, subject, code),
                order_id=self.state.order_id,
                outcome=outcome,
                code=code,
                rule=rule,
                detail=detail,
                decided_at=self.at if at is None else at,
                evidence_event_ids=evidence,
                package_id=package_id,
                claim_id=claim_id,
                command_id=command_id,
                amount_minor=amount_minor,
                currency=order.currency if order and amount_minor is not None else None,
                policy_version=self.config.policy_version,
            )
        )

    def covered(self) -> str:
        """How a unit is paid for already, as the decision log words it."""
        return "refunded or reshipped" if self.state.ledger.reshipped else "refunded"

    def left_out(
        self, asked: Mapping[str, int], granted: Mapping[str, int], within: Package | None
    ) -> str:
        """The decision detail's tail naming the units of `asked` a refund or reship did
        not cover, and why; empty when it covered them all."""
        short = {
            sku: n - granted.get(sku, 0) for sku, n in asked.items() if n > granted.get(sku, 0)
        }
        if not short:
            return ""
        beyond = "what was ordered or the package carried" if within else "what was ordered"
        return f"; left out, as {self.covered()} already or beyond {beyond}: " + ", ".join(
            f"{n} x {sku}" for sku, n in sorted(short.items())
        )

    def deny_nothing_left(
        self,
        units: Mapping[str, int],
        within: Package | None,
        rule: str,
        what: str,
        evidence: tuple[str, ...],
        *,
        subject: str,
        package_id: str | None = None,
        claim_id: str | None = None,
    ) -> None:
        """Nothing of `units` is left to refund or reship: refunded already or, for a claim
        on package `within`, never in that package."""
        if within is not None and not set(units) & set(within.lines):
            code, why = "not_in_package", f"package {within.package_id} carried none of them"
        else:
            code, why = "already_refunded", f"every unit was already {self.covered()}"
        self.decide(
            "denied",
            code,
            rule,
            f"{what}: {why}",
            evidence,
            subject=subject,
            package_id=package_id,
            claim_id=claim_id,
        )

    def refund(
        self,
        units: Mapping[str, int],
        *,
        reason: str,
        rule: str,
        subject: str,
        evidence: tuple[str, ...],
        package_id: str | None = None,
        claim_id: str | None = None,
        within: Package | None = None,
        out_of: str | None = None,
        what: str,
    ) -> bool:
        """Refunds what is left of `units` (out of package `within`, when the refund
        concerns one, or counted against `out_of`); logs why when nothing is left."""
        order = self.state.order
        assert order is not None, "refund rules run only once order_placed is known"
        settled = settle_refund(order, self.state.ledger, units, within, out_of=out_of)
        if settled is None:
            self.deny_nothing_left(
                units,
                within,
                rule,
                what,
                evidence,
                subject=subject,
                package_id=package_id,
                claim_id=claim_id,
            )
            return False
        self.state.ledger = settled.ledger
        command_id = refund_command_id(self.state.order_id, subject)
        self.emit(
            RefundCommand(
                command_id=command_id,
                merchant_id=order.merchant_id,
                order_id=self.state.order_id,
                package_id=package_id,
                claim_id=claim_id,
                reason=reason,
                amount_minor=settled.amount_minor,
                shipping_fee_minor=settled.shipping_fee_minor,
                currency=order.currency,
                lines=settled.lines,
                evidence_event_ids=evidence,
                decided_at=self.at,
                policy_version=self.config.policy_version,
            )
        )
        granted = {line.sku: line.quantity for line in settled.lines}
        detail = f"{what}: refunded {settled.describe()}" + self.left_out(units, granted, within)
        self.decide(
            "refunded",
            reason,
            rule,
            detail,
            evidence,
            subject=subject,
            package_id=package_id,
            claim_id=claim_id,
            command_id=command_id,
            amount_minor=settled.amount_minor,
        )
        return True


def apply_event(
    state: OrderState | None,
    order_id: str,
    event: OrderEvent | TrackingUpdate,
    origin: str,
    config: PolicyConfig,
) -> Result:
    """Applies one event to its order; `origin` says where it came from, for dead letters.

    An event id seen before is a no-op, and so is a courier scan the rules read nothing
    from (`changes_nothing`). Before any other event, the order's own timers whose
    deadline is earlier than the event fire, so an order's decisions and deadlines come
    in event-time order whatever the stream's clock did (docs/policy.md, "Time"). An
    event whose order, package, claim or tracking number is not known yet is held and
    applied when the missing piece arrives.
    """
    if state is None:
        return apply_in_full(OrderState(order_id), event, origin, config, {})
    if event.event_id in state.seen:
        if is_redelivery(state.seen[event.event_id], event):
            return Result(state, None)
    elif changes_nothing(state, event, config):
        return Result(state, None)
    return apply_in_full(state.clone(), event, origin, config, timers(state, config))


def apply_in_full(
    state: OrderState, event: Event, origin: str, config: PolicyConfig, due: dict[str, int]
) -> Result:
    """`apply_event` without its shortcuts, on a state of the caller's own that needs the
    timers `due`: what `changes_nothing` must agree with (tests/test_properties.py)."""
    result = Result(state, due)
    at = event.at
    needed = due
    # Rare: the stream clock fires most timers. One at a time, each from the timers the
    # state needs after the last: an expiry of held events expires the oldest only, and
    # the next one's may be due before this event too. The loop ends: a firing marks its
    # package's deadline passed (R3) or expires the held events its deadline was for, so
    # no timer comes back at the deadline it fired at.
    while needed and min(needed.values()) < at:
        deadline, name = min((d, n) for n, d in needed.items())
        _fire(_Step(state, config, f"timer:{name}", deadline, result), name, event)
        needed = timers(state, config)
    step = _Step(state, config, event.event_id, at, result)
    _apply(step, event, origin)
    _revisit_pending_claims(step)
    return result


def event_digest(event: Event) -> int:
    """What `OrderState.seen` keeps of an event besides its id: a redelivery has the same,
    another event that reuses the id (a producer's bug) almost surely not."""
    return zlib.crc32(f"{event.type}|{event.at}".encode()) or 1


def unapplied_digest(event: Event) -> int:
    """What `OrderState.seen` keeps of an event that changed nothing (refused: `_refuse`,
    or held until it expired: `expire_orphans`): a negative digest of its whole content.
    The same event again, from wherever it is read (a rewind or a crash reading the input
    again, a producer's retry), is a redelivery: no second dead letter, and no decision
    now that what it waited for may be there, which a run without the retry never made.
    Another event under its id (corrected, or sent again as a new event: docs/live.md,
    "Sending dead letters again") is judged. Gaps: docs/policy.md, "Duplicates and scans
    that change nothing"."""
    return -(zlib.crc32(event_to_json(event).encode()) or 1)


def is_redelivery(known: int | None, event: Event) -> bool:
    """Whether `event`, whose id was seen with digest `known` (None: not seen), is that
    event again rather than another one under its id (ids kept before digests match any
    event)."""
    if known is None:
        return False
    if known < 0:
        return known == unapplied_digest(event)
    return known == UNKNOWN_DIGEST or known == event_digest(event)


def is_reused_id(known: int | None, event: Event) -> bool:
    """Whether `event`'s id, seen with digest `known` (None: not seen), is another event's
    that was applied or waits (a producer's bug), rather than its own again or the id of
    one that changed nothing, which is free for the event corrected."""
    return known is not None and known >= 0 and not is_redelivery(known, event)


def changes_nothing(state: OrderState, event: Event, config: PolicyConfig) -> bool:
    """Whether `event` is a courier scan the rules read nothing from: not one they act on
    (delivered, lost, back at origin), of known packages (`_packages_scanned`), and no
    earlier than their first scan in courier hands. About half of all events are such
    scans.

    `apply_event` skips them, so they are not recorded as seen either: every event id a
    state keeps is read and written with it. That is safe because what makes a scan one
    of them never changes back (packages stay known, a pickup time only moves earlier):
    read again, after a crash say, it is skipped again. (One exception: a package shipped
    later under the same tracking number, which the scan read again then reaches; all it
    can give that package is a pickup time.) Nor does a skipped scan fire the
    order's timers due before it, as an applied event does first: it decides nothing
    they could come before, and the clock, or the order's next event that does decide
    something, fires them.
    """
    if not isinstance(event, TrackingUpdate) or event.status in _DECISIVE_SCANS:
        return False
    if state.order is None:
        return False
    packages = _packages_scanned(state, event, config)
    if not packages:
        return False
    if event.status not in _IN_COURIER_HANDS:
        return True
    for package in packages:
        if package.picked_up_at is None or package.picked_up_at > event.at:
            return False
    return True


def fire_timer(state: OrderState, name: str, deadline: int, config: PolicyConfig) -> Result:
    """Fires a timer that `timers()` derived from this state, now that the clock reached it."""
    new_state = state.clone()
    result = Result(new_state, timers(state, config))
    _fire(_Step(new_state, config, f"timer:{name}", deadline, result), name, None)
    return result


def _fire(step: _Step, name: str, next_event: Event | None) -> None:
    """A timer firing; `next_event` is the order's event that made it due, if one did."""
    if name == EXPIRE_HELD_TIMER:
        _expire_held(step, step.at)
    elif name.startswith(DEADLINE_TIMER_PREFIX):
        package = step.state.packages.get(name.removeprefix(DEADLINE_TIMER_PREFIX))
        if package is not None:
            if (
                isinstance(next_event, TrackingUpdate)
                and next_event.status == "delivered"
                and next_event.tracking_number == package.tracking_number
            ):
                # The late delivery that made the deadline due is already known (R3).
                package = _set_package(
                    step,
                    package,
                    delivered_at=next_event.at,
                    delivered_event_id=next_event.event_id,
                )
            _lost_deadline(step, package)
    _revisit_pending_claims(step)


def timers(state: OrderState, config: PolicyConfig) -> dict[str, int]:
    """The timers this state needs, by name: derived, so they never drift from the state."""
    due: dict[str, int] = {}
    for package in state.packages.values():
        if _awaits_deadline(package):
            due[DEADLINE_TIMER_PREFIX + package.package_id] = package.deadline
    if state.held:
        due[EXPIRE_HELD_TIMER] = min(h.at for h in state.held) + config.orphan_ttl_ms
    return due


def _awaits_deadline(package: Package) -> bool:
    return not (
        package.deadline_passed
        or package.settled_by is not None
        or package.back_event_id is not None
        or (package.delivered_at is not None and package.delivered_at <= package.deadline)
    )


def expire_orphans(
    held: list[Held], seen: dict[str, int], now: int, config: PolicyConfig, key: str
) -> tuple[list[Held], dict[str, int], list[Output]]:
    """Splits held events into those still waiting and dead letters for those past
    orphan_ttl, keyed by `key` (what they were held under: an order or tracking number).
    Also returns `seen` with the expired events kept by their content (`unapplied_digest`):
    they changed nothing, and read again they must change nothing either."""
    keep: list[Held] = []
    dead: list[Output] = []
    expired: dict[str, int] = {}
    for item in held:
        if item.at + config.orphan_ttl_ms <= now:
            dead.append(_dead_letter(item, key))
            event = parse_event_json(item.event_json)
            expired[event.event_id] = unapplied_digest(event)
        else:
            keep.append(item)
    if expired:
        seen = seen | expired
    return keep, seen, dead


def _dead_letter(item: Held, key: str) -> DeadLetter:
    kind, _, missing = item.waits_for.partition(":")
    reason = _DEAD_LETTER_REASON[kind]
    what = f"{kind} {missing!r}" if missing else kind
    return DeadLetter(
        origin=item.origin,
        reason=reason,
        message=f"no {what} arrived within orphan_ttl of this event",
        payload=item.event_json,
        key=key,
    )


def _set_package(step: _Step, package: Package, **changes: Any) -> Package:
    """Records are immutable: a change replaces the package in the new state."""
    updated = replace_package(package, **changes)
    step.state.packages[package.package_id] = updated
    step.result.timers_stale = True
    return updated


def _set_claim(step: _Step, claim: Claim, **changes: Any) -> Claim:
    updated = replace_claim(claim, **changes)
    step.state.claims[claim.claim_id] = updated
    return updated


def _expire_held(step: _Step, now: int) -> None:
    state = step.state
    state.held, state.seen, dead = expire_orphans(
        state.held, state.seen, now, step.config, state.order_id
    )
    step.result.outputs.extend(dead)
    step.result.timers_stale = True


def _hold(step: _Step, event: Event, origin: str, waits_for: str) -> None:
    step.state.held.append(Held(event_to_json(event), origin, event.at, waits_for))
    step.result.timers_stale = True


def _reject(step: _Step, event: Event, origin: str, reason: str, message: str) -> None:
    """Dead-letters an event the order's state refuses (`_refuse`)."""
    dead = DeadLetter(
        origin=origin,
        reason=reason,
        message=message,
        payload=event_to_json(event),
        key=step.state.order_id,
    )
    _refuse(step, event, dead)


def _refuse(step: _Step, event: Event, dead: DeadLetter) -> None:
    """Emits the dead letter of an event the order's state refuses, and keeps its id with
    `unapplied_digest`: the same event again is a no-op, a corrected one is judged."""
    step.emit(dead)
    step.state.seen[event.event_id] = unapplied_digest(event)


def reused_event_id(event: Event, origin: str, key: str, holder: str) -> DeadLetter:
    """The dead letter of an event whose id another event already seen by `holder` (an
    order, or a tracking number's waiting updates) uses: a producer's bug, not a
    redelivery, so neither is dropped in silence."""
    return DeadLetter(
        origin=origin,
        reason="duplicate_event_id",
        message=f"event id {event.event_id!r} is already used by another event of {holder}",
        payload=event_to_json(event),
        key=key,
    )


def _apply(step: _Step, event: Event, origin: str) -> None:
    state = step.state
    if is_reused_id(state.seen.get(event.event_id), event):  # `apply_event` let it through
        step.emit(reused_event_id(event, origin, state.order_id, f"order {state.order_id!r}"))
        return
    state.seen[event.event_id] = event_digest(event)
    if state.order is None and not isinstance(event, OrderPlaced):
        _hold(step, event, origin, "order")
        return
    # Most frequent first: each class pattern that fails costs an ABC instance check.
    match event:
        case TrackingUpdate():
            _tracking_update(step, event, origin)
        case PackageShipped():
            _package_shipped(step, event, origin)
        case OrderPlaced():
            _order_placed(step, event, origin)
        case ClaimFiled():
            _claim_filed(step, event, origin)
        case ClaimReviewed():
            _claim_reviewed(step, event, origin)
        case CancellationRequested():
            _cancellation_requested(step, event)
        case OrderCancelled():
            _order_cancelled(step, event)
        case ReturnReceived():
            _return_received(step, event, origin)


def _release_held(step: _Step, waits_for: str) -> None:
    """Applies, in arrival order, the held events whose missing piece just arrived."""
    if not step.state.held:
        return
    ready = [h for h in step.state.held if h.waits_for == waits_for]
    if not ready:
        return
    step.state.held = [h for h in step.state.held if h.waits_for != waits_for]
    step.result.timers_stale = True
    for item in ready:
        event = parse_event_json(item.event_json)
        inner = _Step(step.state, step.config, event.event_id, event.at, step.result)
        _apply(inner, event, item.origin)


def _order_placed(step: _Step, event: OrderPlaced, origin: str) -> None:
    state = step.state
    if state.order is not None:
        _reject(
            step, event, origin, "duplicate_order", f"order {event.order_id!r} was already placed"
        )
        return
    state.order = Order(
        merchant_id=event.merchant_id,
        currency=event.currency,
        lines={line.sku: Priced(line.quantity, line.unit_price_minor) for line in event.lines},
        shipping_fee_minor=event.shipping_fee_minor,
        placed_event_id=event.event_id,
        placed_at=event.at,
    )
    _release_held(step, "order")


def _rejected_unknown_skus(step: _Step, event: PackageShipped | ClaimFiled, origin: str) -> bool:
    """Dead-letters an event with a line for a SKU the order does not have."""
    order = step.state.order
    assert order is not None
    unknown = [line.sku for line in event.lines if line.sku not in order.lines]
    if unknown:
        message = f"order {step.state.order_id!r} has no SKU {unknown}"
        _reject(step, event, origin, "unknown_sku", message)
    return bool(unknown)


def _package_shipped(step: _Step, event: PackageShipped, origin: str) -> None:
    state = step.state
    assert state.order is not None
    if _rejected_unknown_skus(step, event, origin):
        return
    if event.package_id in state.packages:
        _reject(
            step,
            event,
            origin,
            "duplicate_package",
            f"package {event.package_id!r} already shipped",
        )
        return
    package = Package(
        package_id=event.package_id,
        tracking_number=event.tracking_number,
        lines={line.sku: line.quantity for line in event.lines},
        shipped_at=event.at,
        shipped_event_id=event.event_id,
        deadline=event.at + step.config.lost_after_ms,
    )
    state.ledger = ship(state.order, state.ledger, package, state.packages.values())
    state.packages[package.package_id] = package
    step.result.timers_stale = True
    step.result.linked_tracking_numbers.append(event.tracking_number)
    if state.cancelled is not None and not carries_only_reships(state.ledger, package):
        step.decide(
            "anomaly",
            "shipped_after_cancellation",
            "R12",
            f"package {package.package_id} shipped after the order was cancelled",
            (state.cancelled.event_id, event.event_id),
            subject=f"package:{package.package_id}",
            package_id=package.package_id,
        )
    elif state.cancel_request is not None:
        _deny_cancellation(step, state.cancel_request, package)
    _release_held(step, f"package:{package.package_id}")
    _release_held(step, f"tracking:{event.tracking_number}")


def _left_by(package: Package, at: int) -> bool:
    """R4: the package had left the warehouse at `at` (shipped, or a picked-up-or-later
    scan, at or before it)."""
    return package.shipped_at <= at or (
        package.picked_up_at is not None and package.picked_up_at <= at
    )


def _deny_cancellation(step: _Step, request: Cancellation, package: Package) -> None:
    """R4, once the request meets a package that shipped: before it, or after it but
    before the warehouse intercepted the order. Decided when the later of the two
    happened, whichever was read first."""
    step.state.cancel_request = None
    if _left_by(package, request.at):
        why, at = "had left the warehouse when cancellation was requested", request.at
    else:
        why, at = "shipped before the warehouse intercepted the order", package.shipped_at
    step.decide(
        "denied",
        "cancellation_too_late",
        "R4",
        f"package {package.package_id} {why}",
        (request.event_id, package.shipped_event_id),
        subject=f"cancellation-request:{request.request_id}",
        at=at,
    )


def _packages_scanned(
    state: OrderState, event: TrackingUpdate, config: PolicyConfig
) -> list[Package] | None:
    """The packages a scan is news of: shipped under its number at most orphan_ttl after
    it (as long as a held event waits: `expire_orphans`), and not delivered before another
    package took the number over by the time of the scan. None while no package has the
    number: the scan waits for one.

    An older scan waited longer than orphan_ttl for its package: it is a dead letter, as
    it would have become had the clock passed its wait before the package shipped.
    Whether the clock did depended on other orders' events (in `replay`, the file's; live,
    the task's), and the scan's fate must not. A package delivered before its number was
    used again (couriers recycle numbers) is not the one a later scan is about.
    """
    packages = state.packages_for_tracking(event.tracking_number)
    if not packages:
        return None
    waited_until = event.at + config.orphan_ttl_ms
    if len(packages) == 1:  # nearly always; a scan per event makes the check add up
        return packages if packages[0].shipped_at <= waited_until else []
    return [
        p
        for p in packages
        if p.shipped_at <= waited_until
        and not any(
            p.delivered_at is not None and p.delivered_at <= q.shipped_at <= event.at
            for q in packages
            if q is not p
        )
    ]


def _tracking_update(step: _Step, event: TrackingUpdate, origin: str) -> None:
    state = step.state
    number = event.tracking_number
    packages = _packages_scanned(state, event, step.config)
    if packages is None:
        _hold(step, event, origin, f"tracking:{number}")
    elif not packages:
        held = Held(event_to_json(event), origin, event.at, f"tracking:{number}")
        _refuse(step, event, _dead_letter(held, event.order_id or number))
    else:
        for package in packages:
            _scan_package(step, package, event)


def _lost_contradicted(package: Package, event: TrackingUpdate) -> tuple[str, str, str] | None:
    """(anomaly code, what came first, its event id) when a `lost` scan contradicts what is
    known of the package, for staff to settle rather than a refund: tracking showed it
    delivered (policy.txt: no refund at all then), or it came back to the warehouse and
    was not refunded (R2b refused an opened return)."""
    if package.delivered_at is not None and package.delivered_at <= event.at:
        return (
            "lost_after_delivery",
            "tracking showed it delivered",
            package.delivered_event_id or "",
        )
    if (refused := _refused_return(package)) is not None:
        return "lost_after_return", "it came back to the warehouse", refused
    return None


def _refused_return(package: Package) -> str | None:
    """The event by which the package came back, if it was not refunded: R2b refused it
    as opened or relabeled (any other return or RTO scan settles the package)."""
    return package.back_event_id if package.settled_by is None else None


def _scan_package(step: _Step, package: Package, event: TrackingUpdate) -> None:
    if event.status in _IN_COURIER_HANDS and (
        package.picked_up_at is None or event.at < package.picked_up_at
    ):
        package = _set_package(step, package, picked_up_at=event.at)
    evidence = (package.shipped_event_id, event.event_id)
    match event.status:
        case "delivered":
            _delivered(step, package, event)
        case "lost" if (contradicted := _lost_contradicted(package, event)) is not None:
            code, after, proof = contradicted
            step.decide(
                "anomaly",
                code,
                "R3b",
                f"package {package.package_id} declared lost after {after} ({proof}); "
                "no automatic refund",
                (*evidence, proof),
                subject=f"package:{package.package_id}",
                package_id=package.package_id,
            )
        case "lost":
            _refund_package(
                step, package, "lost", "R3b", evidence=evidence, why="courier declared it lost"
            )
            # A delivery dated after the loss but read before it (out of event-time order;
            # in the replay, only by more than allowed_lateness) came after this refund.
            _report_delivered_after_refund(step, step.state.packages[package.package_id])
        case "rto_delivered" if (refused := _refused_return(package)) is not None:
            _deny_not_intact(
                step,
                package,
                f"is back at origin, but the warehouse received it opened or relabeled ({refused})",
                (*evidence, refused),
                rule="R1",
            )
        case "rto_delivered":
            if package.back_event_id is None:
                package = _set_package(step, package, back_event_id=event.event_id)
            _refund_package(
                step, package, "rto_delivered", "R1", evidence=evidence, why="returned to origin"
            )
        case _:
            pass


def _delivered(step: _Step, package: Package, event: TrackingUpdate) -> None:
    if package.delivered_at is None or event.at < package.delivered_at:
        package = _set_package(
            step, package, delivered_at=event.at, delivered_event_id=event.event_id
        )
    _report_delivered_after_refund(step, package)


def _report_delivered_after_refund(step: _Step, package: Package) -> None:
    """R11, once per package: tracking shows it delivered on time (its earliest delivery
    scan), and it was refunded as lost or late. Decided when the later of the delivery and
    the refund happened, whichever was read first."""
    delivered_at = package.delivered_at
    refunded_as_lost = package.settled_by in ("lost", "late_delivery") and not package.refund_denied
    if (
        not refunded_as_lost
        or delivered_at is None
        or delivered_at > package.deadline
        or package.anomaly_reported
    ):
        return
    package = _set_package(step, package, anomaly_reported=True)
    step.decide(
        "anomaly",
        "delivered_after_refund",
        "R11",
        f"package {package.package_id} delivered on time after it was refunded as "
        f"{package.settled_by}; no automatic action",
        (package.shipped_event_id, package.delivered_event_id or ""),
        subject=f"package:{package.package_id}",
        package_id=package.package_id,
        at=max(step.at, delivered_at),
    )


def _refund_package(
    step: _Step, package: Package, reason: str, rule: str, *, evidence: tuple[str, ...], why: str
) -> None:
    """R1, R2, R3, R3b: a package-level refund happens at most once per package."""
    subject = f"package:{package.package_id}"
    if package.settled_by is not None:
        step.decide(
            "denied",
            "already_refunded",
            rule,
            f"package {package.package_id} {why}, but it was already {_settled_as(package)}",
            evidence,
            subject=subject,
            package_id=package.package_id,
        )
        return
    refunded = step.refund(
        package.lines,
        reason=reason,
        rule=rule,
        subject=subject,
        evidence=evidence,
        package_id=package.package_id,
        within=package,
        what=f"package {package.package_id} {why}",
    )
    _set_package(step, package, settled_by=reason, refund_denied=not refunded)


def _settled_as(package: Package) -> str:
    """How the package rule that fired settled the package, as the decision log words it."""
    if package.refund_denied:
        return f"settled as {package.settled_by} with nothing left to refund"
    return f"refunded as {package.settled_by}"


def _lost_deadline(step: _Step, package: Package) -> None:
    """R3: the lost/late deadline of a package has passed on the event-time clock."""
    if not _awaits_deadline(package):
        return
    package = _set_package(step, package, deadline_passed=True)
    days = step.config.lost_after_days
    if package.delivered_at is not None:
        evidence = (package.shipped_event_id, package.delivered_event_id or "")
        _refund_package(
            step,
            package,
            "late_delivery",
            "R3",
            evidence=evidence,
            why=f"delivered more than {days} days after shipping",
        )
    else:
        _refund_package(
            step,
            package,
            "lost",
            "R3",
            evidence=(package.shipped_event_id,),
            why=f"not delivered within {days} days of shipping",
        )


def _cancellation_requested(step: _Step, event: CancellationRequested) -> None:
    state = step.state
    request = Cancellation(event.request_id, event.event_id, event.at)
    shipped = [p for p in state.packages.values() if _left_by(p, event.at)]
    if shipped:
        _deny_cancellation(step, request, shipped[0])
        return
    if state.cancelled is not None:
        _already_cancelled(
            step, state.cancelled, event.event_id, f"cancellation-request:{event.request_id}"
        )
        return
    state.cancel_request = request
    step.decide(
        "pending",
        "awaiting_interception",
        "R4",
        "cancellation requested before any package shipped; waiting for the warehouse",
        (event.event_id,),
        subject=f"cancellation-request:{event.request_id}",
    )
    if state.packages:
        # Shipped after the request, but read before it (out of event-time order; in the
        # replay, only by more than allowed_lateness): in event-time order the first of
        # them found the request pending.
        _deny_cancellation(
            step, request, min(state.packages.values(), key=attrgetter("shipped_at"))
        )


def _order_cancelled(step: _Step, event: OrderCancelled) -> None:
    """R5: refund every ordered unit that is in no shipped package."""
    state = step.state
    order = state.order
    assert order is not None
    if state.cancelled is not None:
        # The first one settled the cancellation; what shipped since is no longer unshipped.
        _already_cancelled(step, state.cancelled, event.event_id, "cancellation")
        return
    state.cancelled = Cancellation(event.request_id, event.event_id, event.at)
    state.cancel_request = None
    shipped = shipped_units(state.packages.values())
    unshipped = {
        sku: line.quantity - shipped.get(sku, 0)
        for sku, line in order.lines.items()
        if line.quantity > shipped.get(sku, 0)
    }
    evidence = (order.placed_event_id, event.event_id)
    if not unshipped:
        step.decide(
            "denied",
            "cancellation_too_late",
            "R5",
            "order cancelled but every ordered unit had already shipped",
            evidence,
            subject="cancellation",
        )
        return
    step.refund(
        unshipped,
        reason="cancellation_intercepted",
        rule="R5",
        subject="cancellation",
        evidence=evidence,
        out_of=UNSHIPPED,
        what="order cancelled: the units no package carried",
    )


def _already_cancelled(step: _Step, cancelled: Cancellation, event_id: str, subject: str) -> None:
    step.decide(
        "denied",
        "already_cancelled",
        "R5",
        f"order already cancelled by event {cancelled.event_id}, which decided its refund",
        (cancelled.event_id, event_id),
        subject=subject,
    )


def _claim_filed(step: _Step, event: ClaimFiled, origin: str) -> None:
    state = step.state
    assert state.order is not None
    if _rejected_unknown_skus(step, event, origin):
        return
    if event.claim_id in state.claims:
        _reject(
            step, event, origin, "duplicate_claim", f"claim {event.claim_id!r} was already filed"
        )
        return
    if event.package_id is not None and event.package_id not in state.packages:
        _hold(step, event, origin, f"package:{event.package_id}")
        return
    claim = Claim(
        claim_id=event.claim_id,
        claim_type=event.claim_type,
        package_id=event.package_id,
        lines={line.sku: line.quantity for line in event.lines},
        filed_event_id=event.event_id,
        filed_at=event.at,
    )
    state.claims[claim.claim_id] = claim
    if claim.claim_type == "not_received":
        _judge_not_received(step, claim, (event.event_id,), initial=True)
    _release_held(step, f"claim:{claim.claim_id}")


def _claim_packages(state: OrderState, claim: Claim) -> list[Package]:
    if claim.package_id is not None:
        return [state.packages[claim.package_id]]
    return list(state.packages.values())


def _judge_not_received(
    step: _Step, claim: Claim, evidence: tuple[str, ...], *, initial: bool
) -> None:
    """R6: courier tracking is the only proof of delivery, in both directions."""
    packages = _claim_packages(step.state, claim)
    delivered = [p for p in packages if p.delivered_event_id is not None]
    refunded = [p for p in packages if p.delivered_event_id is None and p.settled_by is not None]
    if packages and len(delivered) + len(refunded) == len(packages):
        # Each package delivered (that part is denied by tracking) or refunded (that part
        # is paid, its decision says so): nothing is left to wait for.
        claim = _set_claim(step, claim, status="settled" if refunded else "denied")
        if delivered:
            detail = "courier tracking shows " + ", ".join(
                f"{p.package_id} delivered" for p in delivered
            )
            if refunded:
                detail += "; refunded already: " + ", ".join(
                    f"{p.package_id} ({p.settled_by})" for p in refunded
                )
            step.decide(
                "denied",
                "tracking_shows_delivered",
                "R6",
                detail,
                evidence + tuple(p.delivered_event_id or "" for p in delivered),
                subject=f"claim:{claim.claim_id}",
                claim_id=claim.claim_id,
            )
    elif initial:
        claim = _set_claim(step, claim, status="pending")
        step.decide(
            "pending",
            "awaiting_tracking",
            "R6",
            "no delivery scan yet: refunded automatically if the package is lost or "
            "returned, denied if tracking shows it delivered",
            evidence,
            subject=f"claim:{claim.claim_id}",
            claim_id=claim.claim_id,
        )


def _claim_reviewed(step: _Step, event: ClaimReviewed, origin: str) -> None:
    state = step.state
    claim = state.claims.get(event.claim_id)
    if claim is None:
        _hold(step, event, origin, f"claim:{event.claim_id}")
        return
    subject = f"claim:{claim.claim_id}"
    evidence = (claim.filed_event_id, event.event_id)
    if claim.status == "settled":
        step.decide(
            "denied",
            "claim_already_settled",
            None,
            f"claim {claim.claim_id} already yielded its one refund or reship",
            evidence,
            subject=subject,
            claim_id=claim.claim_id,
        )
        return
    claim = _set_claim(
        step, claim, review=Review(event.proof_accepted, event.resolution, event.event_id, event.at)
    )
    if not event.proof_accepted:
        claim = _set_claim(step, claim, status="denied")
        step.decide(
            "denied",
            "proof_rejected",
            "R7",
            f"staff rejected the buyer's proof for the {claim.claim_type} claim",
            evidence,
            subject=subject,
            claim_id=claim.claim_id,
        )
        return
    if claim.claim_type == "not_received":
        _judge_not_received(step, claim, evidence, initial=claim.status != "pending")
    elif claim.claim_type in _FULL_REFUND_CLAIMS:
        claim = _set_claim(step, claim, status="settled")
        step.refund(
            _claimed_units(state, claim),
            reason=claim.claim_type,
            rule="R8",
            subject=subject,
            evidence=evidence,
            claim_id=claim.claim_id,
            within=_claimed_package(state, claim),
            what=f"{claim.claim_type} claim {claim.claim_id} with accepted proof",
        )
    elif claim.claim_type == "wrong_quantity":
        _resolve_partial(step, claim, "R9", evidence)
    else:
        _judge_missing_item(step, claim, evidence, initial=True)


def _claimed_units(state: OrderState, claim: Claim) -> Mapping[str, int]:
    if claim.lines:
        return claim.lines
    if claim.package_id is not None:
        return state.packages[claim.package_id].lines
    assert state.order is not None
    return {sku: line.quantity for sku, line in state.order.lines.items()}


def _claimed_package(state: OrderState, claim: Claim) -> Package | None:
    """The package a claim names: its refund or reship comes out of that package only.

    Not for a missing item: R10 waits for every package because a unit missing from a
    split order belongs to none in particular, whichever one the buyer names.
    """
    if claim.package_id is None or claim.claim_type == "missing_item":
        return None
    return state.packages[claim.package_id]


def _resolve_partial(step: _Step, claim: Claim, rule: str, evidence: tuple[str, ...]) -> None:
    """R9 (and R10 once ready): a refund of the claimed units, or a reship of them."""
    state = step.state
    assert state.order is not None
    assert claim.review is not None
    resolution = claim.review.resolution or step.config.default_partial_resolution
    claim = _set_claim(step, claim, status="settled")
    subject = f"claim:{claim.claim_id}"
    what = f"{claim.claim_type} claim {claim.claim_id} with accepted proof"
    if resolution == "refund":
        step.refund(
            _claimed_units(state, claim),
            reason=claim.claim_type,
            rule=rule,
            subject=subject,
            evidence=evidence,
            claim_id=claim.claim_id,
            within=_claimed_package(state, claim),
            what=what,
        )
        return
    # A unit refunded (its package lost, say) or reshipped already is not sent again.
    claimed, within = _claimed_units(state, claim), _claimed_package(state, claim)
    settled = settle_reship(state.order, state.ledger, claimed, within)
    if settled is None:
        step.deny_nothing_left(
            claimed, within, rule, what, evidence, subject=subject, claim_id=claim.claim_id
        )
        return
    units, ledger = settled
    left_out = step.left_out(claimed, units, within)  # worded by the ledger before it
    state.ledger = ledger
    command_id = reship_command_id(state.order_id, claim.claim_id)
    step.emit(
        ReshipCommand(
            command_id=command_id,
            merchant_id=state.order.merchant_id,
            order_id=state.order_id,
            claim_id=claim.claim_id,
            lines=tuple(ReshipLine(sku, quantity) for sku, quantity in sorted(units.items())),
            evidence_event_ids=evidence,
            decided_at=step.at,
            policy_version=step.config.policy_version,
        )
    )
    step.decide(
        "reshipped",
        claim.claim_type,
        rule,
        f"{claim.claim_type} claim {claim.claim_id}: reship "
        + ", ".join(f"{q} x {sku}" for sku, q in sorted(units.items()))
        + left_out,
        evidence,
        subject=subject,
        claim_id=claim.claim_id,
        command_id=command_id,
    )


def _all_packages_concluded(state: OrderState) -> bool:
    """R10's precondition: everything shipped (or cancelled) and every package concluded."""
    order = state.order
    assert order is not None
    if state.cancelled is None:
        shipped = shipped_units(state.packages.values())
        if any(shipped.get(sku, 0) < line.quantity for sku, line in order.lines.items()):
            return False
    return all(
        p.delivered_event_id is not None or p.settled_by is not None
        for p in state.packages.values()
    )


def _judge_missing_item(
    step: _Step, claim: Claim, evidence: tuple[str, ...], *, initial: bool
) -> None:
    """R10: a missing item is only missing once every package of the order has arrived."""
    if _all_packages_concluded(step.state):
        packages = step.state.packages.values()
        proof = tuple(p.delivered_event_id for p in packages if p.delivered_event_id is not None)
        _resolve_partial(step, claim, "R10", evidence + proof)
        return
    if initial:
        claim = _set_claim(step, claim, status="pending")
        step.decide(
            "pending",
            "awaiting_packages",
            "R10",
            "not every package of the order is delivered or refunded yet",
            evidence,
            subject=f"claim:{claim.claim_id}",
            claim_id=claim.claim_id,
        )


def _revisit_pending_claims(step: _Step) -> None:
    """Whatever waited on the state that just changed is decided again, at once."""
    if not step.state.claims:
        return
    for claim in _pending(step.state):
        assert claim.review is not None or claim.claim_type == "not_received"
        evidence = (claim.filed_event_id,) + ((claim.review.event_id,) if claim.review else ())
        if claim.claim_type == "not_received":
            _judge_not_received(step, claim, evidence, initial=False)
        else:
            _judge_missing_item(step, claim, evidence, initial=False)


def _pending(state: OrderState) -> Iterator[Claim]:
    return (c for c in list(state.claims.values()) if c.status == "pending")


def _return_received(step: _Step, event: ReturnReceived, origin: str) -> None:
    state = step.state
    package = state.packages.get(event.package_id)
    if package is None:
        _hold(step, event, origin, f"package:{event.package_id}")
        return
    if package.back_event_id is None:
        package = _set_package(step, package, back_event_id=event.event_id)
    evidence = (package.shipped_event_id, event.event_id)
    if event.condition == "intact":
        _refund_package(
            step, package, "return_received", "R2", evidence=evidence, why="came back intact"
        )
    elif package.settled_by is None:
        _deny_not_intact(step, package, f"came back {event.condition}", evidence, rule="R2b")
    else:
        step.decide(
            "denied",
            "already_refunded",
            "R2b",
            f"package {package.package_id} came back {event.condition}; it was already "
            f"{_settled_as(package)}",
            evidence,
            subject=f"package:{package.package_id}",
            package_id=package.package_id,
        )


def _deny_not_intact(
    step: _Step, package: Package, what: str, evidence: tuple[str, ...], *, rule: str
) -> None:
    """R2b, and R1 after it: a return the warehouse found opened or relabeled is not paid,
    whatever the courier's scan says of where the package is (policy.txt: an RTO "must
    be unopened and with its original address label")."""
    step.decide(
        "denied",
        "return_not_intact",
        rule,
        f"package {package.package_id} {what}: the policy refunds only unopened returns "
        "with their original label",
        evidence,
        subject=f"package:{package.package_id}",
        package_id=package.package_id,
    )
