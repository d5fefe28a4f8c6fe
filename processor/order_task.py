"""Second hop of the live topology: one partition of `<app>-by-order`, decided in event time.

Records arrive here from every router instance, each in its own order, each with the
events one router batch routed here. The task holds the events in a buffer and releases
them in event-time order once every input partition's watermark has passed them, so the
policy sees each order's events in event-time order and its clock never outruns an
input that is still catching up. Watermarks of inputs that went idle are left out after
`idle_partition_wait_ms` (SPEC section 6).
"""

import heapq
from collections import deque

from processor.config import PolicyConfig
from processor.engine import Engine
from processor.events import Event
from processor.outputs import Output
from processor.router import combined_watermark
from processor.store import StateStore

#: An event of a routed record: (event, origin, arrived). `arrived`: epoch millis its
#: input arrived, for the latency metric.
RoutedEvent = tuple[Event, str, int]
#: A buffered event: (occurred_at, offset, index, event, origin, arrived), `index` its
#: place in the record at `offset`. (offset, index) is unique, so tuples compare on the
#: first three fields only (in C, unlike a class).
_Buffered = tuple[int, int, int, Event, str, int]


class OrderTask:
    def __init__(self, store: StateStore, config: PolicyConfig, sources: frozenset[str]) -> None:
        self.store = store
        self._engine = Engine(store, config, publish_link=_links_are_routed_upstream)
        self._lateness_ms = config.allowed_lateness_ms
        self._sources = sources
        self._watermarks: dict[str, tuple[int, bool]] = {}
        self._buffer: list[_Buffered] = []  # a heap: oldest event first
        self._ready: list[_Buffered] = []  # taken off the heap, to be decided in this order
        # Offsets of records not decided yet, in arrival (= offset) order, and how many of
        # each one's events are still to decide: the smallest undecided offset is the one
        # to commit.
        self._undecided: deque[int] = deque()
        self._remaining: dict[int, int] = {}
        self._next_offset: int | None = None
        #: When the records the last `release` decided arrived (epoch millis), for the
        #: end-to-end latency metric.
        self.released_arrivals: list[int] = []

    def receive(self, offset: int, events: list[RoutedEvent]) -> None:
        """A record of the internal topic: the events one router batch sent here."""
        buffer = self._buffer
        for index, (event, origin, arrived) in enumerate(events):
            heapq.heappush(buffer, (event.at, offset, index, event, origin, arrived))
        if events:
            self._undecided.append(offset)
            self._remaining[offset] = len(events)
        self._next_offset = offset + 1

    def receive_watermark(self, offset: int, source: str, at: int, idle: bool) -> None:
        self._watermarks[source] = (at, idle)
        self._next_offset = offset + 1

    def watermark(self) -> int | None:
        """How far every input has been routed; None until each has reported."""
        return combined_watermark(self._sources, self._watermarks)

    def clock_target(self) -> int | None:
        """The clock `release` will advance to, so the timers due by then can be prefetched."""
        limit = self.watermark()
        return None if limit is None else limit - self._lateness_ms

    def take_ready(self) -> list[str]:
        """Takes the records the watermark has passed off the buffer, for `release` to
        decide; returns their order ids, to prefetch their state."""
        limit = self.watermark()
        if limit is None:
            return []
        buffer, ready = self._buffer, self._ready
        while buffer and buffer[0][0] <= limit:
            ready.append(heapq.heappop(buffer))
        return [item[3].order_id or "" for item in ready]

    def release(self) -> list[Output]:
        """Decides the records `take_ready` took, oldest first, then moves the clock."""
        limit = self.watermark()
        outputs: list[Output] = []
        self.released_arrivals = []
        if limit is None:
            return outputs
        process, remaining, arrivals = self._engine.process, self._remaining, self.released_arrivals
        for _, offset, _, event, origin, arrived in self._ready:
            outputs.extend(process(event, origin))
            remaining[offset] -= 1
            arrivals.append(arrived)
        self._ready = []
        self._engine.advance_clock(limit - self._lateness_ms, outputs)
        return outputs

    def commit_offset(self) -> int | None:
        """The offset to commit: never past a record not decided yet."""
        undecided, remaining = self._undecided, self._remaining
        while undecided and remaining[undecided[0]] == 0:
            del remaining[undecided.popleft()]
        return undecided[0] if undecided else self._next_offset


def _links_are_routed_upstream(tracking_number: str, order_id: str, outputs: list[Output]) -> None:
    """The router links tracking numbers as it routes each package_shipped."""
