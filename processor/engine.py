"""Routes events to their order's state in a store, keeps the event-time clock, fires timers.

The engine is the same for the offline replay (in-memory store, one clock for the whole
file) and the live processor (Redis store, one clock per task). It owns routing and
time; every decision is the policy core's.

Tracking updates without an order_id wait, per tracking number, for the
`package_shipped` that links the number to an order. In the replay both happen in this
one engine. The live processor splits them across tasks: the order's task publishes the
link (`publish_link`), the tracking number's task receives it (`link`) and forwards
the waiting updates to the order's task (`forward`).
"""

from collections.abc import Callable

from processor.config import PolicyConfig
from processor.events import Event, TrackingUpdate, event_to_json, parse_event_json
from processor.outputs import Output
from processor.policy import (
    Result,
    apply_event,
    event_digest,
    expire_orphans,
    fire_timer,
    is_redelivery,
    is_reused_id,
    reused_event_id,
    timers,
)
from processor.state import Held, OrphanBucket
from processor.store import StateStore, Timer, order_owner, tracking_owner

EXPIRE_ORPHANS_TIMER = "expire-orphans"

# (order_id, tracking update, origin, outputs): a tracking update whose order is now known.
Forward = Callable[[str, TrackingUpdate, str, list[Output]], None]
# (tracking_number, order_id, outputs): a package_shipped linked a number to its order.
PublishLink = Callable[[str, str, list[Output]], None]


class Engine:
    def __init__(
        self,
        store: StateStore,
        config: PolicyConfig,
        *,
        forward: Forward | None = None,
        publish_link: PublishLink | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self._lateness_ms = config.allowed_lateness_ms
        self._orphan_ttl_ms = config.orphan_ttl_ms
        self._forward: Forward = forward or self._apply
        self._publish_link: PublishLink = publish_link or self.link

    def process(self, event: Event, origin: str, order_id: str | None = None) -> list[Output]:
        """Applies one event, then fires the timers its advance of the clock made due.

        `order_id`: the order a router resolved the event to (live), for a tracking update
        that does not carry it; without one, the store's link resolves it (replay).
        """
        outputs: list[Output] = []
        order_id = order_id or event.order_id
        if order_id is not None:
            self._apply(order_id, event, origin, outputs)
        else:
            assert isinstance(event, TrackingUpdate)
            order_id = self.store.order_for_tracking(event.tracking_number)
            if order_id is None:
                self._hold_orphan(event, origin, outputs)
            else:
                self._forward(order_id, event, origin, outputs)
        self.advance_clock(event.at - self._lateness_ms, outputs)
        return outputs

    def link(self, tracking_number: str, order_id: str, outputs: list[Output]) -> None:
        """A package claimed this tracking number: its waiting updates go to the order."""
        self.store.link_tracking(tracking_number, order_id)
        bucket = self.store.load_orphans(tracking_number)
        if bucket is None:
            return
        self.store.delete_orphans(tracking_number)
        if bucket.held:
            self.store.cancel_timer(self._orphan_timer(bucket))
        for held in bucket.held:
            event = parse_event_json(held.event_json)
            assert isinstance(event, TrackingUpdate)
            self._forward(order_id, event, held.origin, outputs)

    def advance_clock(self, clock: int, outputs: list[Output]) -> None:
        """Moves the clock forward (never back) and fires due timers, oldest deadline first:
        also those an event set behind a clock that did not move (a package reported after
        its deadline had passed)."""
        current = self.store.get_clock()
        if current is not None and clock <= current:
            clock = current
        else:
            self.store.set_clock(clock)
        while (timer := self.store.pop_due_timer(clock)) is not None:
            self._fire(timer, outputs)

    def _apply(self, order_id: str, event: Event, origin: str, outputs: list[Output]) -> None:
        result = apply_event(self.store.load_order(order_id), order_id, event, origin, self.config)
        self._commit(result, outputs)
        for tracking_number in result.linked_tracking_numbers:
            self._publish_link(tracking_number, order_id, outputs)

    def _commit(self, result: Result, outputs: list[Output]) -> None:
        """Saves the new state and brings its timers in line with what it now needs."""
        old = result.timers_before
        if old is None:
            return
        state = result.state
        if result.timers_stale:  # most events touch nothing a timer derives from
            new = timers(state, self.config)
            if new != old:
                owner = order_owner(state.order_id)
                for name, deadline in old.items():
                    if new.get(name) != deadline:
                        self.store.cancel_timer(Timer(deadline, owner, name))
                for name, deadline in new.items():
                    if old.get(name) != deadline:
                        self.store.set_timer(Timer(deadline, owner, name))
        self.store.save_order(state)
        outputs.extend(result.outputs)

    def _fire(self, timer: Timer, outputs: list[Output]) -> None:
        kind, _, key = timer.owner.partition(":")
        if kind == "order":
            state = self.store.load_order(key)
            if state is not None:
                self._commit(fire_timer(state, timer.name, timer.deadline, self.config), outputs)
            return
        bucket = self.store.load_orphans(key)
        if bucket is None:
            return
        bucket.held, bucket.seen, dead = expire_orphans(
            bucket.held, bucket.seen, timer.deadline, self.config, key
        )
        outputs.extend(dead)
        if bucket.held:
            self.store.save_orphans(bucket)
            self.store.set_timer(self._orphan_timer(bucket))
        else:
            self.store.delete_orphans(key)

    def _hold_orphan(self, event: TrackingUpdate, origin: str, outputs: list[Output]) -> None:
        """A tracking update nobody has claimed yet waits in its tracking number's bucket."""
        tracking_number = event.tracking_number
        bucket = self.store.load_orphans(tracking_number) or OrphanBucket(tracking_number)
        known = bucket.seen.get(event.event_id)
        if is_redelivery(known, event):
            return
        if is_reused_id(known, event):
            holder = f"tracking number {tracking_number!r}"
            outputs.append(reused_event_id(event, origin, tracking_number, holder))
            return
        if bucket.held:
            self.store.cancel_timer(self._orphan_timer(bucket))
        bucket.seen[event.event_id] = event_digest(event)
        bucket.held.append(
            Held(event_to_json(event), origin, event.at, f"tracking:{tracking_number}")
        )
        self.store.save_orphans(bucket)
        self.store.set_timer(self._orphan_timer(bucket))

    def _orphan_timer(self, bucket: OrphanBucket) -> Timer:
        """Derived from the bucket: it expires when its oldest update reaches orphan_ttl."""
        deadline = min(h.at for h in bucket.held) + self._orphan_ttl_ms
        return Timer(deadline, tracking_owner(bucket.tracking_number), EXPIRE_ORPHANS_TIMER)
