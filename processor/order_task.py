"""Second hop of the live topology: one partition of `<app>-by-order`, decided in event time.

Records arrive here from every router instance, each in its own order. The task holds
them in a buffer and releases them in event-time order once every input partition's
watermark has passed them, so the policy sees each order's events in event-time order
and its clock never outruns an input that is still catching up. Watermarks of inputs
that went idle are left out after `idle_partition_wait_ms` (SPEC section 6).
"""

import heapq
from dataclasses import dataclass, field

from processor.config import PolicyConfig
from processor.engine import Engine
from processor.events import Event
from processor.outputs import Output
from processor.router import combined_watermark
from processor.store import StateStore


@dataclass(order=True, slots=True)
class _Buffered:
    at: int
    offset: int
    event: Event = field(compare=False)
    origin: str = field(compare=False)
    arrived: int = field(compare=False)


class OrderTask:
    def __init__(self, store: StateStore, config: PolicyConfig, sources: frozenset[str]) -> None:
        self.store = store
        self._engine = Engine(store, config, publish_link=_links_are_routed_upstream)
        self._lateness_ms = config.allowed_lateness_ms
        self._sources = sources
        self._watermarks: dict[str, tuple[int, bool]] = {}
        self._buffer: list[_Buffered] = []
        self._next_offset: int | None = None
        #: When the records the last `release` decided arrived (epoch millis), for the
        #: end-to-end latency metric.
        self.released_arrivals: list[int] = []

    def receive(self, offset: int, event: Event, origin: str, arrived: int) -> None:
        heapq.heappush(self._buffer, _Buffered(event.at, offset, event, origin, arrived))
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

    def ready(self) -> list[str]:
        """Order ids of the records the next `release` will decide (to prefetch them)."""
        limit = self.watermark()
        if limit is None:
            return []
        return [b.event.order_id or "" for b in self._buffer if b.at <= limit]

    def release(self) -> list[Output]:
        """Decides every buffered record the watermark has passed, oldest first."""
        limit = self.watermark()
        outputs: list[Output] = []
        self.released_arrivals = []
        if limit is None:
            return outputs
        while self._buffer and self._buffer[0].at <= limit:
            item = heapq.heappop(self._buffer)
            outputs.extend(self._engine.process(item.event, item.origin))
            self.released_arrivals.append(item.arrived)
        self._engine.advance_clock(limit - self._lateness_ms, outputs)
        return outputs

    def commit_offset(self) -> int | None:
        """The offset to commit: never past a record still buffered."""
        if self._buffer:
            return min(b.offset for b in self._buffer)
        return self._next_offset


def _links_are_routed_upstream(tracking_number: str, order_id: str, outputs: list[Output]) -> None:
    """The router links tracking numbers as it routes each package_shipped."""
