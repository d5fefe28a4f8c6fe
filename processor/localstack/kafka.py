"""A real single-node Apache Kafka 4.x broker (KRaft, broker+controller) as a local process.

Why: the processor's guarantees (transactions, `read_committed`, fencing, broker restarts) can
only be tested against a real broker, and this machine has Java but no Docker.

Jars: `kafka-broker.pom.xml` (next to this file; its `kafka.version` is the version used)
is handed to Maven once, which copies the broker's runtime jars into
`<cache>/kafka-<version>/libs`. Later runs only check that folder exists. `<cache>` is
`$REFUND_PROCESSOR_CACHE`, else `~/.cache/refund-processor`.

Maven's local repository is always `<cache>/m2-repository`, never `~/.m2`: the cache folder is
then the only thing CI has to cache, deleting it resets everything, and a developer's `~/.m2`
(with its settings and mirrors) neither leaks in nor gets 60 MB of Kafka added to it.
Concurrent first runs (pytest-xdist workers, two terminals) serialise on a file lock.
"""

from __future__ import annotations

import base64
import fcntl
import importlib.resources
import logging
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from confluent_kafka import KafkaException

# The documented import path; confluent-kafka's stubs just do not mark NewTopic as re-exported.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from processor.localstack import (
    LocalService,
    ServiceStartError,
    die_with_parent,
    file_size,
    free_port,
    poll_until,
    port_open,
    read_log,
    tail,
)

__all__ = [
    "KafkaAdmin",
    "LocalKafka",
    "cache_dir",
    "ensure_kafka_libs",
    "kafka_version",
]

_POM_RESOURCE = "kafka-broker.pom.xml"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_log = logging.getLogger(__name__)
# librdkafka would print connection chatter straight to stderr; route it to Python logging.
_rdkafka_log = logging.getLogger(f"{__name__}.rdkafka")


def cache_dir() -> Path:
    """Root of the download cache (`$REFUND_PROCESSOR_CACHE` or `~/.cache/refund-processor`)."""
    env = os.environ.get("REFUND_PROCESSOR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "refund-processor"


def _pom_text() -> str:
    return importlib.resources.files("processor.localstack").joinpath(_POM_RESOURCE).read_text()


def kafka_version() -> str:
    """The broker version pinned in the pom (one place to change it)."""
    node = ET.fromstring(_pom_text()).find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not node.text:
        raise RuntimeError(f"{_POM_RESOURCE} has no <kafka.version> property")
    return node.text.strip()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_kafka_libs(cache: Path | None = None, *, timeout: float = 900) -> Path:
    """Return the folder of broker jars, running Maven first if it is not there yet.

    The jars are copied into a staging folder and renamed into place, so a `libs` folder
    that exists is always complete, even after an interrupted download.
    """
    root = cache or cache_dir()
    home = root / f"kafka-{kafka_version()}"
    libs = home / "libs"
    if libs.is_dir():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".lock"):
        if libs.is_dir():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceStartError(
                "`mvn` not found on PATH: install Maven (apt-get install maven)"
            )
        pom = home / "pom.xml"
        pom.write_text(_pom_text())
        staging = home / f"libs.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
            f"-Dmaven.repo.local={root / 'm2-repository'}",
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        _log.info("fetching Kafka broker jars with Maven into %s", libs)
        started = time.monotonic()
        result = subprocess.run(
            cmd, cwd=home, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise ServiceStartError(
                f"Maven could not fetch the Kafka jars (exit {result.returncode}):\n"
                f"{' '.join(cmd)}\n{output}"
            )
        staging.rename(libs)
        _log.info("Kafka jars ready in %.1fs", time.monotonic() - started)
    return libs


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ServiceStartError("`java` not found: install a JDK 17+ or set JAVA_HOME")
    return java


_LOG4J2_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="file" fileName="{log}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="state.change.logger" level="warn"/>
    <Root level="info"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


class _PortTakenError(ServiceStartError):
    """The free port we picked was grabbed by someone else before the broker bound it."""


class LocalKafka(LocalService):
    """One Kafka broker+controller process on loopback ports, with its data in `workdir`.

    Lifecycle as `LocalService`; a given `workdir` has its `data/` reformatted on the first
    `start()`, unless `port` names the broker port an earlier process ran it on: then
    `start()` runs that broker again as it was (its `server.properties`, its data), as
    `localstack up` does for a broker that died. A failed `start()` raises
    `ServiceStartError` quoting the broker log and leaves the workdir for inspection.
    Unless detached, killed test runs leave no JVMs behind.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        port: int | None = None,
        heap: str = "512m",
        overrides: Mapping[str, str] | None = None,
        startup_timeout: float = 90.0,
        detach: bool = False,
        cache: Path | None = None,
    ) -> None:
        super().__init__(workdir, startup_timeout=startup_timeout, detach=detach)
        self._heap = heap
        self._overrides = dict(overrides or {})
        self._cache = cache
        self._broker_port = port
        self._controller_port: int | None = None
        self._formatted = port is not None
        self._log_offsets = (0, 0)

    # -- addresses and paths -------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` of the PLAINTEXT listener (valid once started)."""
        if self._broker_port is None:
            raise RuntimeError("LocalKafka is not started")
        return f"127.0.0.1:{self._broker_port}"

    @property
    def log_path(self) -> Path:
        """The broker's log4j log (what failures quote)."""
        return self.workdir / "logs" / "server.log"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Fetch jars if needed, format storage on first start, launch, wait until ready."""
        if self.running:
            return self
        libs = ensure_kafka_libs(self._cache)
        java = _java()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="localkafka-"))
        if self._formatted:
            self._launch(java, libs)
            return self
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
        for attempt in range(3):
            self._broker_port = free_port()
            self._controller_port = free_port()
            while self._controller_port == self._broker_port:
                self._controller_port = free_port()
            self._write_config()
            if attempt == 0:
                self._format(java, libs)
            try:
                self._launch(java, libs)
            except _PortTakenError:
                _log.warning("Kafka port taken before the broker bound it; retrying")
                continue
            self._formatted = True
            return self
        raise ServiceStartError(f"Kafka could not bind free ports 3 times; see {self.log_path}")

    def _forget(self) -> None:
        self._formatted = False
        self._broker_port = self._controller_port = None

    # -- internals -----------------------------------------------------------------------

    def properties(self) -> dict[str, str]:
        """The server.properties used: single-node settings, then `overrides`."""
        bport, cport = self._broker_port, self._controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{bport},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{bport}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            # Internal topics default to replication factor 3: on one node, groups and
            # transactions would never get a coordinator. One partition each also spares
            # loading 50 partitions before the first group or transaction can start.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the restarted broker cannot register until the controller
            # times out its previous incarnation (DuplicateBrokerRegistrationException):
            # 9 s by default. A shorter session makes crash-restart tests cheaper.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            # Replayed histories carry their event time as the Kafka timestamp (months
            # ago): with the default 7-day retention the broker deletes them within
            # minutes of writing them, under the tests' and the demo's feet.
            "log.retention.ms": "-1",
            # A producer that died mid-transaction blocks read_committed readers of the
            # partitions it wrote until the broker aborts its transaction, which it looks
            # for every 10 s by default, on top of transaction.timeout.ms: every second
            # makes crash tests cheaper and their stalls what the timeout promises.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        }
        props.update(self._overrides)
        return props

    def _write_config(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.properties().items()]
        (self.workdir / "server.properties").write_text("\n".join(lines) + "\n")
        (self.workdir / "log4j2.xml").write_text(_LOG4J2_XML.format(log=self.log_path))

    def _jvm(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            f"-Xmx{self._heap}",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            "-cp",
            f"{libs}/*",
        ]

    def _format(self, java: str, libs: Path) -> None:
        # Like Kafka's Uuid.randomUuid(): an id starting with "-" would be taken for an
        # option by the tool's argument parser (1 start in 64 failed before).
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        cmd = [
            *self._jvm(java, libs),
            "kafka.tools.StorageTool", "format",
            "-t", cluster_id, "-c", str(self.workdir / "server.properties"),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise ServiceStartError(
                f"kafka StorageTool format failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- {self.log_path} ---\n{tail(self.log_path)}"
            )

    def _launch(self, java: str, libs: Path) -> None:
        out_path = self.workdir / "logs" / "broker.out"
        cmd = [*self._jvm(java, libs), "kafka.Kafka", str(self.workdir / "server.properties")]
        self._log_offsets = (file_size(self.log_path), file_size(out_path))
        with out_path.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd if self._detach else die_with_parent(cmd),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # see die_with_parent
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(crash=True)
            raise

    def _failure(self, reason: str) -> ServiceStartError:
        """An error quoting this launch's log: its ERROR lines first, then the tail."""
        out = self.workdir / "logs" / "broker.out"
        log_since, out_since = self._log_offsets
        run_log = read_log(self.log_path, since=log_since).splitlines()
        errors = [line for line in run_log if " ERROR " in line or "Exception:" in line]
        text = (
            f"Kafka broker {reason} (workdir {self.workdir})\n"
            f"--- errors in {self.log_path} ---\n" + "\n".join(errors[:10]) + "\n"
            f"--- tail of {self.log_path} ---\n" + "\n".join(run_log[-40:]) + "\n"
            f"--- tail of {out} ---\n{tail(out, 15, since=out_since)}"
        )
        if any("Address already in use" in line for line in errors):
            return _PortTakenError(text)
        return ServiceStartError(text)

    def _wait_ready(self) -> None:
        """Poll until the broker answers a metadata request listing itself."""
        proc, port = self._proc, self._broker_port
        assert proc is not None
        assert port is not None
        admin: AdminClient | None = None

        def ready() -> bool:
            nonlocal admin
            if proc.poll() is not None:
                raise self._failure(f"exited with code {proc.returncode} during startup")
            if not port_open(port):  # before this, librdkafka would only log refusals
                return False
            if admin is None:
                admin = AdminClient(
                    {"bootstrap.servers": self.bootstrap_servers}, logger=_rdkafka_log
                )
            try:
                metadata = admin.list_topics(timeout=2)
            except KafkaException:
                return False
            return bool(metadata.brokers)

        started = time.monotonic()
        if not poll_until(ready, self._startup_timeout, interval=0.1):
            raise self._failure(f"not ready after {self._startup_timeout:.0f}s")
        _log.info("Kafka ready at %s in %.1fs", self.bootstrap_servers, time.monotonic() - started)


class KafkaAdmin:
    """Blocking topic helpers over `AdminClient` for tests and demos.

    `create_topic` returns only once every partition has a leader, so the first produce
    never races topic creation (the broker does not auto-create topics).
    """

    def __init__(self, bootstrap_servers: str, *, timeout: float = 30.0) -> None:
        self.client = AdminClient({"bootstrap.servers": bootstrap_servers}, logger=_rdkafka_log)
        self.timeout = timeout

    def create_topic(
        self, name: str, partitions: int = 1, *, config: Mapping[str, str] | None = None
    ) -> str:
        """Create `name` (broker-default replication) and wait for leaders; return the name."""
        futures = self.client.create_topics(
            [NewTopic(name, num_partitions=partitions, config=dict(config or {}))],
            operation_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        futures[name].result(timeout=self.timeout)

        def has_leaders() -> bool:
            topic = self.client.list_topics(topic=name, timeout=5).topics.get(name)
            return (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            )

        if not poll_until(has_leaders, self.timeout):
            raise TimeoutError(f"topic {name!r} has no leader after {self.timeout}s")
        return name

    def delete_topic(self, name: str) -> None:
        """Delete `name` and wait for the broker to confirm."""
        futures = self.client.delete_topics([name], operation_timeout=self.timeout)
        futures[name].result(timeout=self.timeout)
