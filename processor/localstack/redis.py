"""A private `redis-server` process on a loopback port, for tests and demos without Docker.

Why: state lives in Redis and the guarantees must survive a Redis restart with persistence
on, so tests need a Redis they may stop, kill and restart, never the machine's shared one
(apt's `redis-server` package may have started a system service on 6379: it is ignored).
Needs the `redis-server` binary on PATH (Debian/Ubuntu: `apt-get install redis-server`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

import redis as redis_py

from processor.localstack import (
    LocalService,
    ServiceStartError,
    die_with_parent,
    file_size,
    free_port,
    poll_until,
    tail,
)

__all__ = ["LocalRedis"]


class _PortTakenError(ServiceStartError):
    """The free port we picked was grabbed before redis-server bound it."""


class LocalRedis(LocalService):
    """One `redis-server` with its own port and directory (lifecycle as `LocalService`).

    `appendonly=True` turns on the AOF with `appendfsync always`, so every acknowledged write
    survives even `restart(crash=True)` (SIGKILL); without it nothing is persisted
    (`--save ''`), and a restart starts empty. `restart()` keeps port and directory, so
    clients reconnect to the same URL. `port` starts on that port rather than a free one:
    a Redis of an earlier process with `workdir`, brought back with its AOF (`localstack up`).
    """

    def __init__(
        self,
        appendonly: bool = False,
        *,
        workdir: Path | str | None = None,
        port: int | None = None,
        startup_timeout: float = 20.0,
        detach: bool = False,
    ) -> None:
        super().__init__(workdir, startup_timeout=startup_timeout, detach=detach)
        self.appendonly = appendonly
        self._port = port

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LocalRedis is not started")
        return self._port

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0` (valid once started, unchanged by restarts)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self) -> Self:
        """Start on a fresh free port (first start) or the previous one; wait for PING."""
        if self.running:
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceStartError(
                "`redis-server` not found on PATH: apt-get install -y redis-server"
            )
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="localredis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._port is not None:
            self._launch(binary)
            return self
        for _ in range(3):
            self._port = free_port()
            try:
                self._launch(binary)
            except _PortTakenError:
                continue
            return self
        self._port = None
        raise ServiceStartError(
            f"redis-server could not bind a free port 3 times; see {self.log_path}"
        )

    def _forget(self) -> None:
        self._port = None

    def _args(self, binary: str) -> list[str]:
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        return args

    def _launch(self, binary: str) -> None:
        log_since = file_size(self.log_path)
        self._proc = subprocess.Popen(
            self._args(binary) if self._detach else die_with_parent(self._args(binary)),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # see die_with_parent
        )
        try:
            self._wait_ready(log_since)
        except BaseException:
            self.stop(crash=True)
            raise

    def _wait_ready(self, log_since: int) -> None:
        proc = self._proc
        assert proc is not None
        client = redis_py.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5
        )

        def ready() -> bool:
            if proc.poll() is not None:
                log = tail(self.log_path, since=log_since)
                text = f"redis-server exited with code {proc.returncode}:\n{log}"
                if "Address already in use" in text:
                    raise _PortTakenError(text)
                raise ServiceStartError(text)
            try:
                return bool(client.ping())
            except (redis_py.ConnectionError, redis_py.TimeoutError):  # incl. BusyLoadingError
                return False

        try:
            if not poll_until(ready, self._startup_timeout, interval=0.05):
                raise ServiceStartError(
                    f"redis-server not answering PING after {self._startup_timeout:.0f}s:\n"
                    f"{tail(self.log_path, since=log_since)}"
                )
        finally:
            client.close()
