"""Offline replay throughput on a generated history (a benchmark, not a test).

Prints generate time, replay events/s, and the same lines merely parsed as JSON in the
same run, so the ratio survives a noisy machine better than the absolute figure.

    uv run python bench/replay_bench.py [--orders 100000] [--seed 1]
"""

import argparse
import contextlib
import gc
import io
import json
import tempfile
import time
from pathlib import Path

from processor.config import load_policy
from processor.generate import write_history
from processor.replay import write_replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        history = Path(folder) / "history.jsonl"
        began = time.perf_counter()
        with history.open("w", encoding="utf-8") as out:
            lines = write_history(out, orders=args.orders, seed=args.seed)
        generate_s = time.perf_counter() - began
        print(f"generate: {args.orders} orders, {lines} lines in {generate_s:.1f} s")

        text = history.read_text(encoding="utf-8").splitlines()
        began = time.perf_counter()
        for line in text:
            with contextlib.suppress(ValueError):  # the deliberately malformed lines
                json.loads(line)
        parse_s = time.perf_counter() - began

        gc.collect()
        began = time.perf_counter()
        sink = io.StringIO()
        outputs = write_replay(text, "history.jsonl", load_policy(), sink)
        replay_s = time.perf_counter() - began

    print(
        f"replay:   {lines} events -> {outputs} outputs in {replay_s:.1f} s "
        f"= {lines / replay_s:,.0f} events/s"
    )
    print(
        f"baseline: json.loads alone {lines / parse_s:,.0f} lines/s; "
        f"replay runs at {parse_s / replay_s:.2f} of it"
    )


if __name__ == "__main__":
    main()
