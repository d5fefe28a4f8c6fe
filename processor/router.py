"""First hop of the live topology: every input event to its order's task, by order id.

Order events already carry their order_id. A tracking update without one is resolved
through the tracking-number index, which the router itself fills as it routes each
`package_shipped`, so resolution never waits on a downstream task. An update whose
number nobody has shipped yet stays pending here (its input offset is not committed
past it) and is retried every batch until `orphan_ttl` of event time has passed; then
it becomes a dead letter, as in the replay.

After each batch the router reports, per input partition it owns, how far in event
time it has routed (a watermark). Order tasks apply nothing newer than the slowest
input's watermark, so events reach the policy in event-time order whichever instance
routed them (docs/live.md).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from processor.config import PolicyConfig
from processor.events import Event, PackageShipped, TrackingUpdate
from processor.outputs import DeadLetter


class TrackingIndex(Protocol):
    """tracking_number -> order_id, shared by every router instance; and the origins of
    the tracking updates that expired unresolved."""

    def link_many(self, links: Mapping[str, str]) -> None: ...

    def lookup_many(self, tracking_numbers: Iterable[str]) -> dict[str, str]: ...

    def expire_many(self, origins: Iterable[str]) -> None: ...

    def expired_among(self, origins: Iterable[str]) -> set[str]: ...


class Inbound(NamedTuple):
    """A decoded input event and where it came from (a tuple: one per event, made fast)."""

    source: str  # "<topic>:<partition>"
    offset: int
    event: Event
    origin: str  # "<topic>/<partition>/<offset>"
    payload: bytes  # as consumed: forwarded unchanged, in a Routed record (docs/live.md)
    arrived: int  # epoch millis the record arrived (docs/live.md, "Metrics")
    replayed: bool = False  # read again below its source's `Router.handled` mark


#: An inbound event and the order id the router resolved (a tracking update may carry
#: none); a plain tuple, one per event.
Routed = tuple[str, Inbound]


class Commit(NamedTuple):
    """What a router commits for a source: the offset, and as its metadata the watermark
    and the handled mark (`Router.assign`)."""

    offset: int
    watermark: int
    handled: int


@dataclass(slots=True)
class RouteResult:
    routed: list[Routed] = field(default_factory=list)
    dead_letters: list[tuple[Inbound, DeadLetter]] = field(default_factory=list)


#: `Progress.end` of a report that claims no idle or drained input.
NOT_IDLE: Final = -1


class Progress(NamedTuple):
    """What a router reports for one input partition it owns (shared through Redis)."""

    watermark: int  # for order tasks: routed_until, held just below a pending update
    idle: bool  # for order tasks: leave this partition out of the minimum
    routed: int  # routed_until, holds ignored: how far expiry may look
    drained: bool  # read to its end and quiet for idle_partition_wait, pending or not
    end: int = NOT_IDLE  # when drained: the offset it was read to, where its log then ended

    @property
    def idle_end(self) -> int:
        """The end an order task's idle claim rests on: `end` when idle, else `NOT_IDLE`."""
        return self.end if self.idle else NOT_IDLE


def rests_on(end: int, log_end: int | None) -> bool:
    """Whether an idle or drained claim made at `end` still holds: the log (`log_end`, as
    the broker gave it after the claim was read; None: not given) ends exactly there."""
    return end >= 0 and log_end == end


def trusted(reported: Mapping[str, Progress], ends: Mapping[str, int]) -> dict[str, Progress]:
    """The reports with their idle and drained claims taken back where the log no longer
    ends where they rest on, or its end is not known (`ends`: each input partition's end
    offset, asked of the broker after the reports were read).

    A report stands until its router reports again. One whose router stalls, in a long
    batch, a pause or a stop short of the session timeout, would otherwise leave its input
    out of every clock while new records wait in it, and tasks would fire deadlines their
    delivered scans are in that backlog for; so would a report made just before a burst
    of records arrived.
    """
    return {
        source: report
        if not report.drained or rests_on(report.end, ends.get(source))
        else report._replace(idle=False, drained=False)
        for source, report in reported.items()
    }


def claiming_idle(reported: Mapping[str, Progress]) -> list[str]:
    """The sources whose reports claim they are drained: the ends `trusted` needs."""
    return sorted(source for source, report in reported.items() if report.drained)


@dataclass(slots=True)
class _Source:
    """Routing progress of one input partition."""

    routed_until: int | None = None  # largest occurred_at routed
    next_offset: int | None = None  # the offset after the last one seen
    pending: list[Inbound] = field(default_factory=list)
    quiet_since: float = 0.0  # monotonic seconds of the last record seen
    handled: int = 0  # offsets below were read by a committed batch (`assign`)
    log_start: int = 0  # committed while nothing is read or committed (`assign`)


class Router:
    def __init__(self, index: TrackingIndex, config: PolicyConfig) -> None:
        self._index = index
        self._orphan_ttl_ms = config.orphan_ttl_ms
        self._lateness_ms = config.allowed_lateness_ms
        self._sources: dict[str, _Source] = {}

    def assign(
        self,
        source: str,
        now: float,
        committed: int | None,
        watermark: int | None = None,
        handled: int | None = None,
        *,
        log_start: int = 0,
    ) -> None:
        """Takes a source over at its `committed` offset and the `watermark` and `handled`
        mark committed with it (None: nothing committed yet).

        With nothing committed, `commit_offsets` gives its `log_start`, where the consumer
        starts reading it, until a record is read: every batch that writes a record sends
        an offset with the consumer group's metadata, so a batch of reports alone is
        fenced too (docs/live.md, "Exactly once"). Only for committing: a record below it
        (read before retention moved the start) is routed as any other.

        The offset may be held back below records a committed batch read already: behind
        an update still pending, or events it handed to a task that had not decided them
        (docs/live.md, "Direct delivery"). Those records are read again up to the
        `handled` mark (`Router.handled`): their events are handed over again and pending
        updates retried; a bad record is not dead-lettered again, and an update that
        expired is not resolved now.

        Without them a source whose records were all routed before it moved would report
        "routed until 0" from then on, and once every input is idle the order tasks'
        clocks would stop short of the deadlines still due (the combined watermark is
        then the largest reported one). Resuming from the committed watermark is safe: it
        is what the previous owner reported for exactly the committed records.
        """
        self._sources[source] = _Source(
            routed_until=watermark,
            next_offset=committed,
            quiet_since=now,
            handled=handled or 0,
            log_start=log_start,
        )

    def handled(self, source: str) -> int:
        """The offset below which a committed batch read `source` already (`assign`): an
        event read again goes to its task again (a no-op if decided), but a bad record is
        not dead-lettered again."""
        found = self._sources.get(source)
        return 0 if found is None else found.handled

    def position(self, source: str) -> int | None:
        """The next offset of `source` to route (None: nothing read or committed yet)."""
        found = self._sources.get(source)
        return None if found is None else found.next_offset

    def skip(self, source: str, offset: int, now: float) -> None:
        """A record of `source` that was dead-lettered before routing (undecodable or
        invalid): the offset to commit moves past it, or a restart would dead-letter it
        again and a partition ending with it would never read as fully committed."""
        found = self._source(source)
        found.next_offset = max(found.next_offset or 0, offset + 1)
        found.quiet_since = now

    def _source(self, name: str) -> _Source:
        found = self._sources.get(name)
        if found is None:
            found = self._sources[name] = _Source()
        return found

    def revoke(self, source: str) -> None:
        self._sources.pop(source, None)

    def route(self, batch: list[Inbound], now: float, progress: int | None) -> RouteResult:
        """Routes a batch (two index round trips at most); retries what was pending.

        `progress` is how far every input has been routed, holds ignored
        (`expiry_progress`): a pending update expires once that, less allowed_lateness
        (the replay's clock), is `orphan_ttl` past it, since the package_shipped it
        waits for may sit in another router's backlog until then.
        """
        result = RouteResult()
        links = {
            e.event.tracking_number: e.event.order_id
            for e in batch
            if isinstance(e.event, PackageShipped)
        }
        if links:
            self._index.link_many(links)
        waiting = [item for source in self._sources.values() for item in source.pending]
        for source in self._sources.values():
            source.pending = []
        unresolved = waiting + [e for e in batch if e.event.order_id is None]
        found = self._index.lookup_many({_number(e) for e in unresolved}) if unresolved else {}
        # An update read again may have expired: resolving it now would decide it after
        # its dead letter, which the replay never does. It expires again: its origin was
        # recorded before the batch that expired it committed, which may not have.
        replayed = [e.origin for e in unresolved if e.replayed]
        expired = self._index.expired_among(replayed) if replayed else set()
        newest: dict[str, int] = {}
        for item in batch:
            at = item.event.at
            if at > newest.get(item.source, at - 1):
                newest[item.source] = at
        for name, last in {item.source: item.offset for item in batch}.items():
            source = self._source(name)
            source.next_offset = last + 1
            source.quiet_since = now
            if source.routed_until is None or newest[name] > source.routed_until:
                source.routed_until = newest[name]
        routed = result.routed
        for item in waiting + batch:
            if expired and item.origin in expired:
                result.dead_letters.append((item, _unknown_number(item)))
                continue
            order_id = item.event.order_id or found.get(_number(item))
            if order_id is not None:
                routed.append((order_id, item))
                continue
            if (
                progress is not None
                and progress - self._lateness_ms >= item.event.at + self._orphan_ttl_ms
            ):
                result.dead_letters.append((item, _unknown_number(item)))
            else:
                self._sources[item.source].pending.append(item)
        if result.dead_letters:
            self._index.expire_many(item.origin for item, _ in result.dead_letters)
        return result

    def pending(self) -> int:
        """Tracking updates waiting for their tracking number, over every source."""
        return sum(len(source.pending) for source in self._sources.values())

    def commit_offsets(self) -> dict[str, Commit]:
        """Per source, the offset to commit (never past an update still pending), and the
        watermark and handled mark to commit with it, for whoever owns it next (`assign`)."""
        offsets: dict[str, Commit] = {}
        for name, source in self._sources.items():
            read_to = source.log_start if source.next_offset is None else source.next_offset
            offset = min((item.offset for item in source.pending), default=read_to)
            # Handled: everything read. A pending update read again is retried as before.
            handled = max(read_to, source.handled)
            offsets[name] = Commit(offset, _held_back(source, source.pending), handled)
        return offsets

    def watermarks(
        self,
        now: float,
        idle_after_s: float,
        caught_up: Mapping[str, int],
        progress: int | None,
        all_inputs_drained: bool,
    ) -> list[tuple[str, Progress]]:
        """What to report for every source this router owns.

        A source is drained when it has nothing left to read (`caught_up`: the offset it
        was read to, for each source read to the end the broker last told of) and nothing
        arrived for `idle_after_s`: a source that is merely slow (or paused by a
        rebalance) must hold the watermark back, or order tasks would run ahead of its
        backlog. Readers trust the claim while the log ends where it did (`trusted`).

        A pending update holds its source's watermark just below itself while its
        package_shipped may still be in some router's backlog: until `progress` (how far
        every input has been routed, `expiry_progress`, read before this batch's lookups)
        less allowed_lateness, the replay's clock, passes it. Past that, a shipment still
        to come is late data (SPEC section 6), decided as the replay decides it when
        appended to the file; holding on would stop every task's clock, and buffer every
        event in memory, until the update expires `orphan_ttl` later. Nor does it hold
        once `all_inputs_drained`: no backlog is left at all.
        """
        reports: list[tuple[str, Progress]] = []
        clock = None if progress is None else progress - self._lateness_ms
        for name, source in sorted(self._sources.items()):
            routed = source.routed_until or 0
            end = caught_up.get(name, NOT_IDLE)
            quiet = end >= 0 and now - source.quiet_since >= idle_after_s
            holding = (
                []
                if all_inputs_drained
                else [i for i in source.pending if clock is None or clock <= i.event.at]
            )
            watermark = _held_back(source, holding)
            report = Progress(
                watermark, quiet and not holding, routed, quiet, end if quiet else NOT_IDLE
            )
            reports.append((name, report))
        return reports


def combined_watermark(
    sources: Iterable[str], reported: Mapping[str, tuple[int, bool]]
) -> int | None:
    """How far every input has been routed: the slowest active source's watermark.

    None until every source has reported. Idle sources are left out (SPEC section 6: an
    idle partition must not stop timers); when all are idle, everything has been routed.
    """
    known = [reported.get(source) for source in sources]
    if not known or any(entry is None for entry in known):
        return None
    entries = [entry for entry in known if entry is not None]
    active = [at for at, idle in entries if not idle]
    return min(active) if active else max(at for at, _ in entries)


def expiry_progress(sources: Iterable[str], reported: Mapping[str, Progress]) -> int | None:
    """How far every input has been routed, pending updates' holds ignored."""
    return combined_watermark(sources, {s: (p.routed, p.drained) for s, p in reported.items()})


def all_drained(sources: Iterable[str], reported: Mapping[str, Progress]) -> bool:
    return all(source in reported and reported[source].drained for source in sources)


def _held_back(source: _Source, holding: list[Inbound]) -> int:
    """The source's watermark held just below the pending updates in `holding`: those
    whose package_shipped may be in some router's backlog, which must not let a task's
    clock pass them (a delivered scan must not let the lost deadline fire).

    The watermark committed with the offset is held below every pending update: whoever
    owns the source next reports it until it has read them again (the offset is held at
    the oldest), and cannot tell yet which of them `watermarks` would still hold.
    """
    routed = source.routed_until or 0
    if holding:
        return min(routed, min(item.event.at for item in holding) - 1)
    return routed


def _number(item: Inbound) -> str:
    assert isinstance(item.event, TrackingUpdate)
    return item.event.tracking_number


def _unknown_number(item: Inbound) -> DeadLetter:
    return DeadLetter(
        origin=item.origin,
        reason="unknown_tracking_number",
        message=f"no package shipped with tracking number {_number(item)!r} within orphan_ttl",
        payload="",
        key=_number(item),
    )
