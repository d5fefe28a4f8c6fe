"""Second hop of the live topology: one partition of `<app>-by-order`, decided in event time.

Records arrive here from every router instance, each in its own order, each with the
events one router batch routed here. The task holds the events in a buffer and releases
them in event-time order once every input partition's watermark has passed them, so the
policy sees each order's events in event-time order and its clock never outruns an
input that is still catching up. Watermarks of inputs that went idle are left out after
`idle_partition_wait_ms` (SPEC section 6).

Events routed by this instance's router skip the internal topic: the router hands them
over directly (`receive_direct`), and their input's offset is held back until the task
has decided them (docs/live.md, "Direct delivery").
"""

import bisect
import heapq
import itertools
from collections import deque
from operator import itemgetter

from processor.config import PolicyConfig
from processor.engine import Engine
from processor.events import Event
from processor.outputs import Output
from processor.router import combined_watermark
from processor.store import StateStore

#: An event of a routed record: (event, order id, origin, arrived). The order id is the
#: one its router resolved (a tracking update may not carry it); `arrived`: epoch millis
#: its input arrived, for the latency metric.
RoutedEvent = tuple[Event, str, str, int]
#: An event handed over directly: (input offset, event, order id, origin, arrived).
DirectEvent = tuple[int, Event, str, str, int]
#: How many events of one record (of the internal topic, or of a direct input) are still
#: to decide: shared by its buffered events, counted down as each is decided.
_Undecided = list[int]
#: A buffered event: (occurred_at, seq, event, order id, origin, arrived, undecided).
#: `seq` is the order it was received in, unique, so tuples compare on the first two
#: fields only (in C, unlike a class), and events of one time are decided in the order
#: they came.
_Buffered = tuple[int, int, Event, str, str, int, _Undecided]
_OFFSET = itemgetter(0)


class OrderTask:
    def __init__(
        self,
        store: StateStore,
        config: PolicyConfig,
        sources: frozenset[str],
        direct: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self._engine = Engine(store, config, publish_link=_links_are_routed_upstream)
        self._lateness_ms = config.allowed_lateness_ms
        self._sources = sources
        #: Input partitions whose events this instance's router hands over directly.
        self.direct = direct
        #: Whether the watermarks of the `direct` inputs come from the local router yet
        #: (`sync`); a task without direct inputs has nothing to wait for.
        self.synced = not direct
        self._watermarks: dict[str, tuple[int, bool]] = {}  # read from the internal topic
        self._local: dict[str, tuple[int, bool]] = {}  # the direct inputs', from the router
        self._buffer: list[_Buffered] = []  # a heap: oldest event first
        self._ready: list[_Buffered] = []  # taken off the heap, to be decided in this order
        self._seq = itertools.count()
        # Records of the internal topic, and per direct input its records, not decided yet,
        # in offset order: the smallest undecided offset is the one to commit.
        self._undecided: deque[tuple[int, _Undecided]] = deque()
        self._direct_undecided: dict[str, deque[tuple[int, _Undecided]]] = {
            source: deque() for source in direct
        }
        self._next_offset: int | None = None
        #: When the records the last `release` decided arrived (epoch millis), for the
        #: end-to-end latency metric.
        self.released_arrivals: list[int] = []

    def receive(self, offset: int, events: list[RoutedEvent]) -> None:
        """A record of the internal topic: the events one router batch sent here."""
        buffer, seq = self._buffer, self._seq
        undecided = [len(events)]
        for event, order_id, origin, arrived in events:
            heapq.heappush(
                buffer, (event.at, next(seq), event, order_id, origin, arrived, undecided)
            )
        if events:
            self._undecided.append((offset, undecided))
        self._next_offset = offset + 1

    def receive_direct(self, source: str, events: list[DirectEvent]) -> None:
        """Events of the direct input `source`, one per input record: in offset order
        but for tracking updates that were pending in the router."""
        buffer, seq = self._buffer, self._seq
        records = self._direct_undecided[source]
        for offset, event, order_id, origin, arrived in events:
            undecided = [1]
            heapq.heappush(
                buffer, (event.at, next(seq), event, order_id, origin, arrived, undecided)
            )
            if records and offset < records[-1][0]:
                bisect.insort(records, (offset, undecided), key=_OFFSET)
            else:
                records.append((offset, undecided))

    def receive_watermark(self, offset: int, source: str, at: int, idle: bool) -> None:
        self._watermarks[source] = (at, idle)
        self._next_offset = offset + 1

    def receive_local_watermark(self, source: str, at: int, idle: bool) -> None:
        """A direct input's watermark, from the router that hands its events over."""
        self._local[source] = (at, idle)

    def sync(self) -> None:
        """The task has read a record this instance wrote to its partition since it set the
        task up: every record routed here before, by whichever instance, has been read, so
        the local router's watermarks of the direct inputs may stand from now on."""
        self.synced = True

    def watermark(self) -> int | None:
        """How far every input has been routed; None until each has reported."""
        reported = self._watermarks | self._local if self.synced else self._watermarks
        return combined_watermark(self._sources, reported)

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
        return [item[3] for item in ready]

    def release(self) -> list[Output]:
        """Decides the records `take_ready` took, oldest first, then moves the clock."""
        limit = self.watermark()
        outputs: list[Output] = []
        self.released_arrivals = []
        if limit is None:
            return outputs
        process, arrivals = self._engine.process, self.released_arrivals
        for _, _, event, order_id, origin, arrived, undecided in self._ready:
            outputs.extend(process(event, origin, order_id))
            undecided[0] -= 1
            arrivals.append(arrived)
        self._ready = []
        self._engine.advance_clock(limit - self._lateness_ms, outputs)
        return outputs

    def buffered(self) -> int:
        """Events received and not decided yet: held in memory until the watermark passes
        them, so this is what a catch-up on inputs far apart in event time costs."""
        return len(self._buffer) + len(self._ready)

    def commit_offset(self) -> int | None:
        """The offset of the internal topic to commit: never past a record not decided yet."""
        first = _first_undecided(self._undecided)
        return first if first is not None else self._next_offset

    def direct_commit_offset(self, source: str) -> int | None:
        """How far the direct input `source` may be committed, if this task holds it back:
        never past an event of it not decided yet."""
        return _first_undecided(self._direct_undecided[source])

    def hold(self) -> int | None:
        """The watermark a direct input may report for this task's partition, if held:
        just below the oldest event not decided yet. Whoever takes the task over reads
        those reports before the input's events that were handed over and not decided,
        which its next router sends through the internal topic (docs/live.md)."""
        oldest = [events[0][0] for events in (self._ready, self._buffer) if events]
        return min(oldest) - 1 if oldest else None


def _first_undecided(records: deque[tuple[int, _Undecided]]) -> int | None:
    while records and records[0][1][0] == 0:
        records.popleft()
    return records[0][0] if records else None


def _links_are_routed_upstream(tracking_number: str, order_id: str, outputs: list[Output]) -> None:
    """The router links tracking numbers as it routes each package_shipped."""
