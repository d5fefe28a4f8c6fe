"""`refund-processor run` that stops itself (SIGSTOP) the first time it reaches a step, for
a test to act in that window: a fault injected into a real process, the real step runs,
only the stop is added before it. `STALL_IN` names the step:

- `claim` (the default): a task's claim, after it read Kafka's committed offsets, the
  window of docs/state-store.md, "A zombie's claim" (tests/test_runner_faults.py);
- `inputs`: the claim of its input partitions' progress (docs/live.md, "Exactly once");
  it stops again once that claim is made, for good: an instance that claimed late and
  never comes back to rejoin (tests/test_runner_faults.py);
- `apply`: a batch's apply in Redis, after Kafka committed it, where Redis going down
  leaves the processor retrying the apply rather than aborting (tests/test_metrics.py);
- `progress`: its router's first report of the input partitions it owns: on inputs with
  nothing to read, a batch of reports alone, and a zombie that writes reports once it wakes
  up (tests/test_runner_faults.py).

Each stop is logged first, as JSON like every line of the log (`Instance.stopped_after`).
"""

import os
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import structlog

from processor import cli
from processor.redis_index import RedisTrackingIndex
from processor.redis_store import RedisTaskStore
from processor.router import Progress

P = ParamSpec("P")
R = TypeVar("R")

_log = structlog.stdlib.get_logger(__name__)


def _stop(message: str) -> None:
    _log.warning(message)
    os.kill(os.getpid(), signal.SIGSTOP)


def _stalling(
    step: Callable[P, R], *, stop_after: bool = False, when: Callable[..., bool] | None = None
) -> Callable[P, R]:
    """`step` stopping itself the first time it is called (with arguments that `when`
    accepts)."""
    stalled: list[bool] = []

    def stall_once(*args: P.args, **kwargs: P.kwargs) -> R:
        if stalled or (when is not None and not when(*args, **kwargs)):
            return step(*args, **kwargs)
        stalled.append(True)
        _stop(f"stalling in {step.__qualname__}")
        done = step(*args, **kwargs)
        if stop_after:
            _stop(f"claimed late in {step.__qualname__}, stopping for good")
        return done

    return stall_once


def _reports_inputs(index: RedisTrackingIndex, reports: list[tuple[str, int, Progress]]) -> bool:
    return bool(reports)


if __name__ == "__main__":
    step = os.environ.get("STALL_IN", "claim")
    if step == "inputs":
        RedisTrackingIndex.claim_sources = _stalling(  # type: ignore[method-assign]
            RedisTrackingIndex.claim_sources, stop_after=True
        )
    elif step == "progress":
        RedisTrackingIndex.share_progress = _stalling(  # type: ignore[method-assign]
            RedisTrackingIndex.share_progress, when=_reports_inputs
        )
    elif step == "apply":
        RedisTaskStore.apply = _stalling(RedisTaskStore.apply)  # type: ignore[method-assign]
    elif step == "claim":
        RedisTaskStore.claim = _stalling(RedisTaskStore.claim)  # type: ignore[method-assign]
    else:
        raise SystemExit(f"STALL_IN={step!r}: claim, inputs, progress or apply")
    raise SystemExit(cli.main(sys.argv[1:]))
