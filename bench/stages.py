"""The live processor's work per event, stage by stage, in one process (a benchmark, not a test).

Why: `live_bench.py` measures the whole processor against a consumer that only reads and
Avro-decodes, but a live pass swings by a quarter from run to run and mixes Kafka's and
Redis's costs into one figure. This runs the CPU work the processor does per event with
no Kafka and no Redis, each stage timed on its own over a generated history, so the
share of each is stable and the gap to the baseline's decode can be read off directly
(`live_bench.py` runs it too, on the history it published, to bound the ratio in the
same run):

1. decode: `Serde.decode` of each input record (the baseline does this and no more, besides
   consuming);
2. validate: `parse_event` of the decoded record (pydantic);
3. decide: the engine over an in-memory store, `--batch` events at a time (the live
   default of `max_batch_records`), each batch in event-time order, its clock moved
   after each event as the live task's is;
4. state: the JSON of each order a batch changed, once per batch, as `RedisTaskStore.stage`
   writes it;
5. outputs: `Serde.encode` of every refund, reship and decision.

Alone, it also prints what an event waiting in an order task's buffer costs in memory
(docs/live.md, "Memory").

Not here: consuming, routing, buffering, the Redis round trips and the Kafka
transaction. The sum is a floor for the processor's time per event on this machine;
against the live baseline's time per event (`live_bench.py`) it bounds the ratio the live
processor can reach.

    uv run python bench/stages.py [--orders 20000] [--seed 1] [--batch 40000]
"""

import argparse
import gc
import io
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from processor.config import load_policy
from processor.engine import Engine
from processor.events import (
    InvalidEventError,
    TrackingUpdate,
    event_to_dict,
    parse_event,
    parse_event_json,
)
from processor.generate import write_history
from processor.order_task import DirectEvent, OrderTask
from processor.outputs import DeadLetter, Output, output_to_dict
from processor.runner import batch_collector
from processor.serde import Serde
from processor.state import ORDER_STATE_ADAPTER, OrderState
from processor.store import InMemoryStore

_T = TypeVar("_T")
#: The one input partition `buffered_bytes` hands events over from.
SOURCE = "tracking:0"

#: Per event: seconds of each stage, by name, in the order they run.
Stages = dict[str, float]


def encoded(lines: Iterable[str], serde: Serde) -> list[tuple[str, bytes]]:
    """(topic, Avro value) of each valid event line, as `publish` writes them."""
    records: list[tuple[str, bytes]] = []
    for line in lines:
        try:
            event = parse_event_json(line)
        except InvalidEventError:
            continue  # the generator's deliberately malformed lines: dead letters live
        topic = "tracking" if isinstance(event, TrackingUpdate) else "orders"
        records.append((topic, serde.encode(event.type, event_to_dict(event), topic)))
    return records


class _Clock:
    """Seconds spent per stage, added up over the batches."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def run(self, stage: str, work: Callable[[], _T]) -> _T:
        began = time.perf_counter()
        result = work()
        self.spent[stage] = self.spent.get(stage, 0.0) + time.perf_counter() - began
        return result


def measure(records: list[tuple[str, bytes]], serde: Serde, batch: int) -> Stages:
    """Runs the stages over `records`, `batch` at a time as the processor reads them (so
    only a batch's events are alive at once, as in the processor); the seconds per event
    of each stage. Within a batch the engine decides in event-time order."""
    with batch_collector():
        clock = _Clock()
        store = _SavedOrders()
        engine = Engine(store, load_policy())
        for start in range(0, len(records), batch):
            _batch(clock, engine, store, serde, records[start : start + batch], first=start)
    return {stage: seconds / len(records) for stage, seconds in clock.spent.items()}


class _SavedOrders(InMemoryStore):
    """Also keeps the states saved since `take_saved`: those `RedisTaskStore.stage` writes
    (once each per batch), since an event that changes nothing saves nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._saved: dict[str, OrderState] = {}

    def save_order(self, state: OrderState) -> None:
        super().save_order(state)
        self._saved[state.order_id] = state

    def take_saved(self) -> list[OrderState]:
        saved, self._saved = list(self._saved.values()), {}
        return saved


def _batch(
    clock: _Clock,
    engine: Engine,
    store: _SavedOrders,
    serde: Serde,
    records: list[tuple[str, bytes]],
    *,
    first: int,
) -> None:
    decoded = clock.run("decode", lambda: [serde.decode(value, topic) for topic, value in records])
    events = clock.run("validate", lambda: [parse_event(record) for record in decoded])
    ordered = sorted(enumerate(events, first), key=lambda numbered: numbered[1].at)

    def decide() -> list[Output]:
        outputs: list[Output] = []
        for number, event in ordered:
            outputs += engine.process(event, f"stages/{number}")
        return outputs

    outputs = clock.run("decide", decide)
    states = store.take_saved()
    clock.run("state", lambda: [ORDER_STATE_ADAPTER.dump_json(state) for state in states])
    emitted = [output for output in outputs if not isinstance(output, DeadLetter)]
    clock.run(
        "outputs",
        lambda: [
            serde.encode(output.type, output_to_dict(output, iso_times=False), "outputs")
            for output in emitted
        ],
    )


def report(stages: Stages) -> None:
    decode = stages["decode"]
    for name, seconds in stages.items():
        print(f"  {name:9} {seconds * 1e6:6.2f} us  {seconds / decode:5.2f} x decode")
    total = sum(stages.values())
    print(
        f"  {'all':9} {total * 1e6:6.2f} us  {total / decode:5.2f} x decode "
        f"= {1 / total:,.0f} events/s with no Kafka and no Redis"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=40_000)
    args = parser.parse_args()

    serde = Serde.single_object()
    history = io.StringIO()
    write_history(history, orders=args.orders, seed=args.seed)
    records = encoded(history.getvalue().splitlines(), serde)
    del history
    print(f"{args.orders} orders, {len(records)} events; per event:")
    report(measure(records, serde, args.batch))
    print(f"memory: {buffered_bytes(records, serde):,.0f} bytes per event an order task buffers")


def buffered_bytes(records: list[tuple[str, bytes]], serde: Serde) -> float:
    """What an event waiting in an order task's buffer costs: the parsed event, its origin
    and the task's bookkeeping, as `Runner` hands events over (tracemalloc)."""
    task = OrderTask(InMemoryStore(), load_policy(), frozenset({SOURCE}), frozenset({SOURCE}))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        task.receive_direct(list(_handed(records, serde)))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / task.buffered()


def _handed(records: list[tuple[str, bytes]], serde: Serde) -> Iterator[DirectEvent]:
    """The records as a router hands them to their task, each with the order it resolved:
    for a tracking update that does not carry it, a string of its own, as from the index."""
    for offset, (topic, value) in enumerate(records):
        event = parse_event(serde.decode(value, topic))
        resolved = event.order_id
        if resolved is None:
            assert isinstance(event, TrackingUpdate)
            resolved = f"order-of-{event.tracking_number}"
        yield event.at, event, resolved, f"{topic}/0/{offset}", 0, SOURCE, offset


if __name__ == "__main__":
    main()
