"""`refund-processor run` that stops itself (SIGSTOP) in its first `RedisTaskStore.apply`:
after Kafka committed the batch, before the apply script runs. A fault injected into a
real process, for tests/test_metrics.py: Redis can be taken down in that window, where
the processor does not abort the batch but retries its apply until Redis is back."""

import os
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import structlog

from processor import cli
from processor.redis_store import RedisTaskStore

P = ParamSpec("P")
R = TypeVar("R")

_log = structlog.stdlib.get_logger(__name__)


def _stalling(apply: Callable[P, R]) -> Callable[P, R]:
    stalled: list[bool] = []

    def stall_once(*args: P.args, **kwargs: P.kwargs) -> R:
        if not stalled:
            stalled.append(True)
            # Logged, not printed: every line of the log stays JSON (Instance.log_lines).
            _log.warning(f"stalling in {apply.__qualname__}")
            os.kill(os.getpid(), signal.SIGSTOP)
        return apply(*args, **kwargs)

    return stall_once


if __name__ == "__main__":
    RedisTaskStore.apply = _stalling(RedisTaskStore.apply)  # type: ignore[method-assign]
    raise SystemExit(cli.main(sys.argv[1:]))
