"""`refund-processor run` that stops itself (SIGSTOP) in its first claim of a task, after
it read Kafka's committed offsets and before its claim script runs: the window of
docs/state-store.md, "A zombie's claim". A fault injected into a real process, for
tests/test_runner_faults.py: the real claim runs, only the stop is added before it."""

import os
import signal
import sys
from collections.abc import Mapping

from processor import cli
from processor.redis_store import RedisTaskStore

_claim = RedisTaskStore.claim
_stalled: list[str] = []


def _stall_once(store: RedisTaskStore, committed_offsets: Mapping[str, int]) -> int:
    if not _stalled:
        _stalled.append(store.task)
        print(f"stalling in the claim of {store.task}", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    return _claim(store, committed_offsets)


if __name__ == "__main__":
    RedisTaskStore.claim = _stall_once  # type: ignore[method-assign, assignment]
    raise SystemExit(cli.main(sys.argv[1:]))
