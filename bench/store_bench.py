"""What the Redis state store costs per event, step by step (a benchmark, not a test).

Why: `stages.py` bounds the live processor's time with no Redis at all, and a live pass
mixes the store's cost with Kafka's. This decides a generated history over one
`RedisTaskStore` on a real redis-server, `--batch` events at a time in event-time order,
each batch as an order task runs it: `prefetch` of the batch's orders and due timers,
the deciding, then `stage` (the states' JSON and the write-ahead script) and `apply`
(the script that makes them the state). The same deciding over the in-memory store, in
alternate runs, tells what the store adds to the deciding itself. Tracking updates
carry the order id the router would resolve, so no read leaves the batch's prefetch.
The collector runs at the thresholds a `Runner` sets, as in a live pass.

    uv run python bench/store_bench.py [--orders 20000] [--seed 1] [--batch 40000]
        [--runs 2]

Uses REDIS_URL if set (keys under a fresh `store-bench-<hex>` prefix, deleted at the
end), else a private `LocalRedis`.
"""

import argparse
import contextlib
import io
import os
import statistics
import time
import uuid
from collections.abc import Iterator

import redis
from stages import Stages, encoded

from processor.config import load_policy
from processor.engine import Engine
from processor.events import Event, PackageShipped, TrackingUpdate, parse_event
from processor.generate import write_history
from processor.localstack.redis import LocalRedis
from processor.outputs import Output
from processor.redis_store import RedisTaskStore, delete_keys
from processor.runner import batch_collector
from processor.serde import Serde
from processor.store import InMemoryStore, StateStore

#: This run's prefix of application ids, so its keys in a shared Redis can be found.
RUN = f"store-bench-{uuid.uuid4().hex[:8]}"
#: (input number, event, the order id a router resolves it to)
Routed = tuple[int, Event, str]


def routed(events: list[Event]) -> list[Routed]:
    """Each event with its order: a tracking update without one gets its package's."""
    links = {e.tracking_number: e.order_id for e in events if isinstance(e, PackageShipped)}
    found: list[Routed] = []
    for number, event in enumerate(events):
        order_id = event.order_id
        if order_id is None and isinstance(event, TrackingUpdate):
            order_id = links.get(event.tracking_number)
        if order_id is not None:
            found.append((number, event, order_id))
    return found


def _no_links(tracking_number: str, order_id: str, outputs: list[Output]) -> None:
    """As in an order task: the router links tracking numbers."""


def measure(events: list[Routed], batch: int, redis_url: str | None) -> Stages:
    """Seconds per event of each step, over Redis (`redis_url`) or in memory (None)."""
    redis_store = None
    if redis_url is not None:
        app = f"{RUN}-{uuid.uuid4().hex[:8]}"  # each run's own keys, none read before
        redis_store = RedisTaskStore.from_url(redis_url, app, "by-order:0")
        redis_store.claim({})
    store: StateStore = redis_store or InMemoryStore()
    engine = Engine(store, load_policy(), publish_link=_no_links)
    spent = dict.fromkeys(("prefetch", "decide", "stage", "apply"), 0.0)
    for start in range(0, len(events), batch):
        ordered = sorted(events[start : start + batch], key=lambda item: item[1].at)
        began = time.perf_counter()
        if redis_store is not None:
            redis_store.prefetch([order_id for *_, order_id in ordered], due_by=ordered[-1][1].at)
        prefetched = time.perf_counter()
        for number, event, order_id in ordered:
            engine.process(event, f"bench/0/{number}", order_id)
        decided = time.perf_counter()
        if redis_store is not None:
            redis_store.stage({"input": start + batch})
            staged = time.perf_counter()
            redis_store.apply()
            spent["stage"] += staged - decided
            spent["apply"] += time.perf_counter() - staged
        spent["prefetch"] += prefetched - began
        spent["decide"] += decided - prefetched
    return {step: seconds / len(events) for step, seconds in spent.items()}


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        try:
            yield url
        finally:
            client = redis.Redis.from_url(url)
            try:
                delete_keys(client, RUN)
            finally:
                client.close()
        return
    with LocalRedis() as local:
        yield local.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=2, help="of each store, alternating")
    args = parser.parse_args()

    serde = Serde.single_object()
    history = io.StringIO()
    write_history(history, orders=args.orders, seed=args.seed)
    records = encoded(history.getvalue().splitlines(), serde)
    events = routed([parse_event(serde.decode(value, topic)) for topic, value in records])
    del history
    print(f"{args.orders} orders, {len(events)} events, {args.batch} a batch; us per event:")
    runs: dict[str, list[Stages]] = {"memory": [], "redis": []}
    with batch_collector(), redis_server() as url:
        for _ in range(args.runs):
            runs["memory"].append(measure(events, args.batch, None))
            runs["redis"].append(measure(events, args.batch, url))
    for store, figures in runs.items():
        steps = "  ".join(
            f"{step} {statistics.median(f[step] for f in figures) * 1e6:5.2f}"
            for step in figures[0]
            if store == "redis" or step == "decide"
        )
        print(f"  {store:6}  {steps}  (median of {len(figures)})")


if __name__ == "__main__":
    main()
