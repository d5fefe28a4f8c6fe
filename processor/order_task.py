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
import itertools
from collections.abc import Mapping
from operator import itemgetter

from processor.config import PolicyConfig
from processor.engine import Engine
from processor.events import Event
from processor.outputs import Output
from processor.router import combined_watermark, rests_on
from processor.store import StateStore

#: An event of a routed record: (event, order id, origin, arrived). The order id is the
#: one its router resolved (a tracking update may not carry it); `arrived`: epoch millis
#: its input arrived, for the latency metric.
RoutedEvent = tuple[Event, str, str, int]
#: A buffered event: (occurred_at, event, order id, origin, arrived, input, offset).
#: `input` is the direct input that handed it over, and `offset` its offset there; or
#: None, and the offset of the internal topic's record it came in.
Buffered = tuple[int, Event, str, str, int, str | None, int]
#: An event handed over directly: buffered as it is, its `input` never None.
DirectEvent = Buffered
_AT = itemgetter(0)


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
        # Per input: its watermark and, when reported idle, the end offset that rests on
        # (-1: not idle). Read from the internal topic, and the direct inputs' from the router.
        self._watermarks: dict[str, tuple[int, int]] = {}
        self._local: dict[str, tuple[int, int]] = {}
        self._log_ends: Mapping[str, int] = {}  # `trust_idle`
        # Received, not decided yet. Sorted when taken from (`take_ready`): a stable sort
        # keeps events of one time in the order they came, and costs little on what are
        # mostly sorted runs already (the rest of the last sort, each input's events).
        self._buffer: list[Buffered] = []
        self._oldest: int | None = None  # the smallest occurred_at in `_buffer`
        self._ready: list[Buffered] = []  # taken off the buffer, to be decided in this order
        # The smallest offset not decided, per direct input and (None) of the internal
        # topic: computed from the buffer when asked, and kept until it changes.
        self._undecided: dict[str | None, int] | None = {}
        self._next_offset: int | None = None
        #: When the records the last `release` decided arrived (epoch millis), for the
        #: end-to-end latency metric.
        self.released_arrivals: list[int] = []

    def receive(self, offset: int, events: list[RoutedEvent]) -> None:
        """A record of the internal topic: the events one router batch sent here."""
        self._take_in(
            [
                (event.at, event, order_id, origin, arrived, None, offset)
                for event, order_id, origin, arrived in events
            ]
        )
        self._next_offset = offset + 1

    def receive_direct(self, events: list[DirectEvent]) -> None:
        """Events of direct inputs, one per input record: in offset order but for tracking
        updates that were pending in the router."""
        self._take_in(events)

    def _take_in(self, events: list[Buffered]) -> None:
        if not events:
            return
        self._buffer += events
        oldest = min(events, key=_AT)[0]
        self._oldest = oldest if self._oldest is None else min(self._oldest, oldest)
        self._undecided = None

    def receive_watermark(self, offset: int, source: str, at: int, idle_at_end: int) -> None:
        """`idle_at_end`: for an input reported idle, the offset its router had read it to
        (where its log ended then); -1 when not idle."""
        self._watermarks[source] = (at, idle_at_end)
        self._next_offset = offset + 1

    def receive_local_watermark(self, source: str, at: int, idle_at_end: int) -> None:
        """A direct input's watermark, from the router that hands its events over."""
        self._local[source] = (at, idle_at_end)

    def idle_claims(self) -> set[str]:
        """The inputs the reports this task holds say are idle: `trust_idle` needs their
        logs' ends."""
        return {source for source, (_, end) in self._reports().items() if end >= 0}

    def trust_idle(self, log_ends: Mapping[str, int]) -> None:
        """The inputs' end offsets, asked of the broker after this batch's reports were
        read: an input reported idle is left out of the watermark only while its log still
        ends where that report says it did. A report stands until its router reports
        again, and records that came since may wait in the input, or in this task's
        partition behind the report (found in review)."""
        self._log_ends = log_ends

    def sync(self) -> None:
        """The task has read a record this instance wrote to its partition since it set the
        task up: every record routed here before, by whichever instance, has been read, so
        the local router's watermarks of the direct inputs may stand from now on."""
        self.synced = True

    def watermark(self) -> int | None:
        """How far every input has been routed; None until each has reported."""
        ends = self._log_ends
        return combined_watermark(
            self._sources,
            {
                source: (at, rests_on(end, ends.get(source)))
                for source, (at, end) in self._reports().items()
            },
        )

    def _reports(self) -> dict[str, tuple[int, int]]:
        """Per input, the report this task goes by: the local router's for a direct input
        once synced, else the last one read from the internal topic."""
        return self._watermarks | self._local if self.synced else self._watermarks

    def clock_target(self) -> int | None:
        """The clock `release` will advance to, so the timers due by then can be prefetched."""
        limit = self.watermark()
        return None if limit is None else limit - self._lateness_ms

    def take_ready(self) -> list[str]:
        """Takes the records the watermark has passed off the buffer, for `release` to
        decide; returns their order ids, to prefetch their state."""
        limit = self.watermark()
        buffer = self._buffer
        if limit is None or self._oldest is None or self._oldest > limit:
            return []
        buffer.sort(key=_AT)
        taken = bisect.bisect_right(buffer, limit, key=_AT)
        ready = buffer[:taken]
        del buffer[:taken]
        self._oldest = buffer[0][0] if buffer else None
        self._ready += ready
        return [item[2] for item in ready]

    def release(self) -> list[Output]:
        """Decides the records `take_ready` took, oldest first, then moves the clock."""
        limit = self.watermark()
        outputs: list[Output] = []
        self.released_arrivals = []
        if limit is None:
            return outputs
        process, ready = self._engine.process, self._ready
        for _, event, order_id, origin, _, _, _ in ready:
            outputs += process(event, origin, order_id)
        self.released_arrivals = [item[4] for item in ready]
        if ready:
            self._ready = []
            self._undecided = None
        self._engine.advance_clock(limit - self._lateness_ms, outputs)
        return outputs

    def buffered(self) -> int:
        """Events received and not decided yet: held in memory until the watermark passes
        them, so this is what a catch-up on inputs far apart in event time costs."""
        return len(self._buffer) + len(self._ready)

    def commit_offset(self) -> int | None:
        """The offset of the internal topic to commit: never past a record not decided yet."""
        first = self._first_undecided().get(None)
        return first if first is not None else self._next_offset

    def direct_commit_offset(self, source: str) -> int | None:
        """How far the direct input `source` may be committed, if this task holds it back:
        never past an event of it not decided yet."""
        return self._first_undecided().get(source)

    def _first_undecided(self) -> dict[str | None, int]:
        if self._undecided is None:
            first: dict[str | None, int] = {}
            for *_, source, offset in itertools.chain(self._ready, self._buffer):
                if offset < first.get(source, offset + 1):
                    first[source] = offset
            self._undecided = first
        return self._undecided

    def hold(self) -> int | None:
        """The watermark a direct input may report for this task's partition, if held:
        just below the oldest event not decided yet. Whoever takes the task over reads
        those reports before the input's events that were handed over and not decided,
        which its next router sends through the internal topic (docs/live.md)."""
        oldest = [min(self._ready, key=_AT)[0]] if self._ready else []
        if self._oldest is not None:
            oldest.append(self._oldest)
        return min(oldest) - 1 if oldest else None


def _links_are_routed_upstream(tracking_number: str, order_id: str, outputs: list[Output]) -> None:
    """The router links tracking numbers as it routes each package_shipped."""
