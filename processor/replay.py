"""The offline replay: JSON event lines through the same engine, with in-memory state.

A product feature, not a test double: it answers "what would the processor have
refunded for this history?" without Kafka or Redis, and the live processor must agree
with it (SPEC section 6 says where the two may differ).

The file is read in its order and its events are decided in event-time order: each
waits until the file has shown an event more than `allowed_lateness` newer, when no
event dated before it can come any more within the disorder SPEC section 6 allows. The
policy fires an order's deadline before the order's next event dated after it, which
is only right if no event dated before that deadline is still to come: a package
delivered on time, whose scan reaches the file after a claim dated just past its
deadline, must not be refunded as lost. The live processor gets the same from merging
its inputs in timestamp order (docs/live.md); `TestDriver` applies events as piped.
"""

import gc
import heapq
import json
from collections.abc import Iterable, Iterator
from typing import TextIO

from processor.config import PolicyConfig
from processor.engine import Engine
from processor.events import Event, InvalidEventError, parse_event_json, reject_future
from processor.outputs import DeadLetter, Output, output_to_dict
from processor.store import InMemoryStore, StateStore

# Replay allocates millions of small objects (events, states, outputs) and makes no
# reference cycles on its hot path, so the cyclic collector only rescans live objects
# again and again: with it on, replay runs at about half speed. Reference counting
# still frees every replaced state; the rare cycle (an exception's traceback, say)
# waits for the collector's next run once it is back on. A collection right at the end
# would rescan the whole store, still alive there, to find a few dozen objects: 7% of
# a replay of 20,000 orders.


def _parse_line(
    line: str | bytes, origin: str, *, now: int | None = None, lateness: int = 0
) -> Event | DeadLetter:
    """One JSON line as an event, or as the dead letter that says why it is not one.

    Bytes are decoded here, line by line, so that one that is not UTF-8 is a dead letter
    like any other bad line (SPEC section 8). With `now`, an event dated more than
    `lateness` after it is one too (`reject_future`)."""
    try:
        event = parse_event_json(line)
        if now is not None:
            reject_future(event, now, lateness)
        return event
    except InvalidEventError as exc:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        payload = text.rstrip("\r\n")
        return DeadLetter(origin=origin, reason=exc.reason, message=exc.message, payload=payload)


class OfflineProcessor:
    """Validates lines, feeds the engine, and turns bad lines into dead letters."""

    def __init__(self, config: PolicyConfig, store: StateStore | None = None) -> None:
        self.store = store if store is not None else InMemoryStore()
        self.engine = Engine(self.store, config)

    def feed(self, line: str, origin: str) -> list[Output]:
        """Decides one line at once (what `TestDriver.pipe` does)."""
        parsed = _parse_line(line, origin)
        if isinstance(parsed, DeadLetter):
            return [parsed]
        return self.engine.process(parsed, origin)

    def advance_to(self, clock: int) -> list[Output]:
        """Moves the clock to `clock` (no lateness subtracted) and fires what is due."""
        outputs: list[Output] = []
        self.engine.advance_clock(clock, outputs)
        return outputs


def replay(
    lines: Iterable[str | bytes],
    source: str,
    config: PolicyConfig,
    *,
    now: int | None = None,
    wall_clock: int | None = None,
    store: StateStore | None = None,
) -> Iterator[Output]:
    """Every output of a history, in the order the engine produced them.

    Blank lines are skipped; every other line is either decided, in event-time order
    (module docstring), or dead-lettered at once, with `source:line` as its origin. With
    `wall_clock` (epoch ms), events dated in its future are dead letters, as the live
    processor makes them (`reject_future`). Pass a `store` to look at the state afterwards.
    """
    processor = OfflineProcessor(config, store)
    decide, lateness = processor.engine.process, config.allowed_lateness_ms
    heappush, heappop = heapq.heappush, heapq.heappop
    # (occurred_at, line number, event, origin): the line number keeps file order in ties.
    waiting: list[tuple[int, int, Event, str]] = []
    newest: int | None = None
    collecting = gc.isenabled()
    gc.disable()
    try:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            origin = f"{source}:{number}"
            parsed = _parse_line(line, origin, now=wall_clock, lateness=lateness)
            if isinstance(parsed, DeadLetter):
                yield parsed
                continue
            heappush(waiting, (parsed.at, number, parsed, origin))
            if newest is None or parsed.at > newest:
                newest = parsed.at
                while waiting and waiting[0][0] < newest - lateness:
                    yield from decide(*heappop(waiting)[2:])
        while waiting:
            yield from decide(*heappop(waiting)[2:])
        if now is not None:
            yield from processor.advance_to(now)
    finally:
        if collecting:
            gc.enable()


def write_replay(
    lines: Iterable[str | bytes],
    source: str,
    config: PolicyConfig,
    out: TextIO,
    *,
    now: int | None = None,
    wall_clock: int | None = None,
) -> int:
    """Replays and writes each output as a compact JSON line; returns how many."""
    encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds one per call
    written = 0
    batch: list[str] = []
    for output in replay(lines, source, config, now=now, wall_clock=wall_clock):
        batch.append(encode(output_to_dict(output)))
        if len(batch) >= 4096:
            out.write("\n".join(batch) + "\n")
            written += len(batch)
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
        written += len(batch)
    return written
