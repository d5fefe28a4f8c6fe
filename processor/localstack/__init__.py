"""Real Kafka and Redis as plain local processes, for tests and demos on machines without Docker.

`processor.localstack.kafka.LocalKafka` runs an Apache Kafka 4.x KRaft broker from jars that
Maven fetches once; `processor.localstack.redis.LocalRedis` runs the distribution's
`redis-server`. `python -m processor.localstack up|down|status` runs both in the background.

This module holds what both share: the process plumbing, and `LocalService`, their
lifecycle. The classes live in the submodules (not re-exported here) so that importing the
package stays cheap and free of import cycles.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "LocalService",
    "ServiceStartError",
    "die_with_parent",
    "file_size",
    "free_port",
    "pid_alive",
    "poll_until",
    "port_open",
    "process_state",
    "read_log",
    "stop_pid",
    "stop_process",
    "tail",
]


class ServiceStartError(RuntimeError):
    """A local service did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago.

    Another process can take it before the service binds it; callers retry on bind errors.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def poll_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Call `check` until it returns True or `timeout` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def file_size(path: Path) -> int:
    """Current size of a log (0 if absent), to read only what a later run appends."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_log(path: Path, *, since: int = 0) -> str:
    """What was written to a log after byte `since` (one run's part of an appended log)."""
    try:
        with path.open("rb") as handle:
            handle.seek(since)
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no {path})"


def tail(path: Path, lines: int = 40, *, since: int = 0) -> str:
    """Last `lines` lines written to a log after byte `since`, for error messages."""
    return "\n".join(read_log(path, since=since).splitlines()[-lines:])


def die_with_parent(cmd: list[str]) -> list[str]:
    """Prefix `cmd` so the child gets SIGTERM when the thread that started it dies (Linux).

    Without it a SIGKILLed pytest leaves a JVM broker running forever. util-linux's
    `setpriv --pdeathsig` sets that up and then execs `cmd` (same PID), which avoids a
    `preexec_fn` (unsafe with librdkafka's threads running). Without `setpriv`: no guard.

    The services also start in a session of their own (`start_new_session`), so a Ctrl-C
    in the terminal reaches only the Python process, which stops its clients first and the
    services last, instead of the services dying under clients that are still working.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def stop_process(
    proc: subprocess.Popen[bytes], *, crash: bool = False, timeout: float = 30
) -> None:
    """Stop a child: SIGTERM (clean shutdown) or SIGKILL when `crash`; SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_state(pid: int) -> str | None:
    """The state letter of `/proc/<pid>/stat` (R, S, T for stopped, Z...), None if `pid`
    does not exist; OSError where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (orphans of `up` may never be reaped)."""
    try:
        state = process_state(pid)
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state is not None and state not in ("Z", "X")


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def stop_pid(pid: int, workdir: Path, *, timeout: float = 30) -> bool:
    """Stop a process we started in an earlier run (no Popen handle any more).

    Only signals `pid` if its working directory is `workdir` (both services are started
    there), so a recycled PID now belonging to something else is left alone. The command line
    cannot serve: redis-server rewrites its process title. Returns True if it was running.
    """
    if not pid_alive(pid) or _cwd(pid) != str(workdir.resolve()):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not poll_until(lambda: not pid_alive(pid), timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        poll_until(lambda: not pid_alive(pid), 5)
    return True


class LocalService(ABC):
    """One service process with its own directory: what `LocalKafka` and `LocalRedis` share.

    Use as a context manager, or `start()` ... `close()`. `stop()`, `start()` and
    `restart()` keep the directory and the ports, for outage and restart tests. Without
    `workdir` a temp dir is used and `close()` removes it; a given `workdir` is kept.
    `detach=True` lets the process outlive this Python process (the CLI); otherwise it gets
    SIGTERM when the process that started it dies (`die_with_parent`).
    """

    def __init__(self, workdir: Path | str | None, *, startup_timeout: float, detach: bool) -> None:
        self._workdir = Path(workdir).resolve() if workdir is not None else None
        self._owns_workdir = workdir is None
        self._startup_timeout = startup_timeout
        self._detach = detach
        self._proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def start(self) -> Self:
        """Launches the process (on first start: a temp dir, free ports) and waits until it
        answers; does nothing if it is running."""

    @abstractmethod
    def _forget(self) -> None:
        """Drops what the removed temp dir held (ports, formatted storage)."""

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._workdir

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, crash: bool = False) -> None:
        """Stops the process (SIGTERM, or SIGKILL if `crash`); directory and ports are kept,
        so a later `start()` brings the same service back."""
        if self._proc is not None:
            stop_process(self._proc, crash=crash)
            self._proc = None

    def restart(self, *, crash: bool = False) -> None:
        """`stop(crash=crash)` then `start()`: same ports, same directory."""
        self.stop(crash=crash)
        self.start()

    def close(self) -> None:
        """Stops, and deletes the temp dir if we made it (what leaving the `with` block does)."""
        self.stop()
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._forget()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
