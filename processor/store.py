"""Where the engine keeps state: one interface, an in-memory backend here, Redis for live.

Everything the engine needs survives in the store, so a restarted or rebalanced
processor picks up exactly where the last committed one stopped: per-order state
(which also holds the ids of the events it has seen, so deduplication commits
atomically with the state it protects), orphan buckets of tracking updates nobody has
claimed yet, the tracking-number index, timers by deadline, and the event-time clock.
"""

import heapq
from typing import NamedTuple, Protocol

from processor.state import OrderState, OrphanBucket


class Timer(NamedTuple):
    """Ordered by deadline first, so ties fire in a deterministic order."""

    deadline: int
    owner: str
    name: str


def order_owner(order_id: str) -> str:
    return f"order:{order_id}"


def tracking_owner(tracking_number: str) -> str:
    return f"tracking:{tracking_number}"


class StateStore(Protocol):
    def load_order(self, order_id: str) -> OrderState | None: ...

    def save_order(self, state: OrderState) -> None: ...

    def load_orphans(self, tracking_number: str) -> OrphanBucket | None: ...

    def save_orphans(self, bucket: OrphanBucket) -> None: ...

    def delete_orphans(self, tracking_number: str) -> None: ...

    def order_for_tracking(self, tracking_number: str) -> str | None: ...

    def link_tracking(self, tracking_number: str, order_id: str) -> None: ...

    def set_timer(self, timer: Timer) -> None: ...

    def cancel_timer(self, timer: Timer) -> None: ...

    def pop_due_timer(self, clock: int) -> Timer | None:
        """Removes and returns the earliest timer with deadline <= clock, if any."""
        ...

    def get_clock(self) -> int | None: ...

    def set_clock(self, clock: int) -> None: ...


class InMemoryStore:
    """The offline replay's store: plain dicts and a heap with lazy deletion."""

    def __init__(self) -> None:
        self._orders: dict[str, OrderState] = {}
        self._orphans: dict[str, OrphanBucket] = {}
        self._tracking: dict[str, str] = {}
        self._timers: set[Timer] = set()
        self._heap: list[Timer] = []
        self._clock: int | None = None

    def load_order(self, order_id: str) -> OrderState | None:
        return self._orders.get(order_id)

    def save_order(self, state: OrderState) -> None:
        self._orders[state.order_id] = state

    def load_orphans(self, tracking_number: str) -> OrphanBucket | None:
        return self._orphans.get(tracking_number)

    def save_orphans(self, bucket: OrphanBucket) -> None:
        self._orphans[bucket.tracking_number] = bucket

    def delete_orphans(self, tracking_number: str) -> None:
        self._orphans.pop(tracking_number, None)

    def order_for_tracking(self, tracking_number: str) -> str | None:
        return self._tracking.get(tracking_number)

    def link_tracking(self, tracking_number: str, order_id: str) -> None:
        self._tracking[tracking_number] = order_id

    def set_timer(self, timer: Timer) -> None:
        if timer not in self._timers:
            self._timers.add(timer)
            heapq.heappush(self._heap, timer)

    def cancel_timer(self, timer: Timer) -> None:
        self._timers.discard(timer)

    def pop_due_timer(self, clock: int) -> Timer | None:
        while self._heap and self._heap[0] not in self._timers:
            heapq.heappop(self._heap)
        if self._heap and self._heap[0].deadline <= clock:
            timer = heapq.heappop(self._heap)
            self._timers.discard(timer)
            return timer
        return None

    def get_clock(self) -> int | None:
        return self._clock

    def set_clock(self, clock: int) -> None:
        self._clock = clock
