"""`refund-processor run` that stops itself (SIGSTOP) in its first claim, before the claim
script runs. A fault injected into a real process, for tests/test_runner_faults.py: the
real claim runs, only the stops are added around it.

By default the claim of a task, after it read Kafka's committed offsets: the window of
docs/state-store.md, "A zombie's claim". With `STALL_IN=inputs` the claim of its input
partitions' progress (docs/live.md, "Exactly once"); then it stops again once that claim
is made, for good: an instance that claimed late and never comes back to rejoin."""

import os
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from processor import cli
from processor.redis_index import RedisTrackingIndex
from processor.redis_store import RedisTaskStore

P = ParamSpec("P")
R = TypeVar("R")


def _stop(message: str) -> None:
    print(message, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)


def _stalling(claim: Callable[P, R], *, stop_after: bool) -> Callable[P, R]:
    stalled: list[bool] = []

    def stall_once(*args: P.args, **kwargs: P.kwargs) -> R:
        if stalled:
            return claim(*args, **kwargs)
        stalled.append(True)
        _stop(f"stalling in {claim.__qualname__}")
        claimed = claim(*args, **kwargs)
        if stop_after:
            _stop(f"claimed late in {claim.__qualname__}, stopping for good")
        return claimed

    return stall_once


if __name__ == "__main__":
    if os.environ.get("STALL_IN") == "inputs":
        RedisTrackingIndex.claim_sources = _stalling(  # type: ignore[method-assign]
            RedisTrackingIndex.claim_sources, stop_after=True
        )
    else:
        RedisTaskStore.claim = _stalling(  # type: ignore[method-assign]
            RedisTaskStore.claim, stop_after=False
        )
    raise SystemExit(cli.main(sys.argv[1:]))
