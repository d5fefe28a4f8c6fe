"""The console script as a user runs it: a subprocess, its exit code and output kept."""

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """`refund-processor ARGS` (env None: this process's environment)."""
    return subprocess.run(
        [sys.executable, "-m", "processor.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=None if env is None else dict(env),
    )


@contextlib.contextmanager
def ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """Children started inside get SIGINT's default disposition, as from a terminal.

    A shell starts a background job (`.ci/run &`, say) with SIGINT ignored, every process
    it execs inherits that, and CPython then leaves it ignored: a child started so would
    shrug off the Ctrl-C a test sends. A handler, unlike SIG_IGN, is reset by exec.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
