"""Harness of the live tests: real `refund-processor run` subprocesses, a real broker and Redis.

`LiveHarness` owns one test's topics, settings and processor instances. Instances are
real processes, so tests can SIGKILL, SIGSTOP and restart them, and a real consumer group
moves partitions between them. `WalletReader` reads the refund commands the way a wallet
would (read_committed). `expected_refunds` is the offline replay's answer, which the
live processor must match exactly (SPEC sections 6 and 7).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from processor.config import load_policy
from processor.deadletter import ERROR_CLASS, SOURCE_TOPIC
from processor.localstack import free_port, poll_until, process_state
from processor.localstack.kafka import KafkaAdmin, LocalKafka
from processor.outputs import RefundCommand
from processor.publish import publish_lines
from processor.redis_store import RedisTaskStore
from processor.replay import replay
from processor.serde import Serde
from processor.settings import Settings

RefundKey = tuple[str, str, str | None, str | None, int]

#: librdkafka settings for tests that kill or stall instances: the broker's minimum session
#: timeout, so a dead or stopped member loses its partitions in seconds, not 45 s.
FAST_FAILOVER: Mapping[str, str] = {
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "500",
}


#: What a topic's partitions answer until the metadata of its creation reached every broker.
_NO_LEADER_YET = frozenset(
    (
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        # The client's metadata is a leader epoch ahead of the broker's, or behind it.
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.FENCED_LEADER_EPOCH,
    )
)


#: The SASL/PLAIN user the processor connects as to `secured_kafka` (tests/conftest.py).
PROCESSOR_USER = ("processor", "processor-secret")


class SecuredKafka(LocalKafka):
    """A `LocalKafka` with an authorizer and a second listener, SASL/PLAIN, for the user
    `PROCESSOR_USER`. The PLAINTEXT listener (`bootstrap_servers`) is the super user, for
    the tests' own topics, ACLs and reads; `sasl_bootstrap_servers` gets only the ACLs it
    is granted."""

    sasl_port = 0

    @property
    def sasl_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def properties(self) -> dict[str, str]:
        props = super().properties()
        self.sasl_port = free_port()
        sasl = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
        user, password = PROCESSOR_USER
        props["listeners"] += f",{sasl}"
        props["advertised.listeners"] += f",{sasl}"
        props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        props["sasl.enabled.mechanisms"] = "PLAIN"
        props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{user}="{password}";'
        )
        props["authorizer.class.name"] = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        # The PLAINTEXT and CONTROLLER listeners authenticate nobody: the broker itself
        # and the tests' admin.
        props["super.users"] = "User:ANONYMOUS"
        return props


def refund_key(record: Mapping[str, Any]) -> RefundKey:
    return (
        record["command_id"],
        record["order_id"],
        record["package_id"],
        record["claim_id"],
        record["amount_minor"],
    )


def expected_refunds(lines: list[str]) -> set[RefundKey]:
    """The refund commands the offline replay issues for `lines`."""
    return {
        (o.command_id, o.order_id, o.package_id, o.claim_id, o.amount_minor)
        for o in replay(lines, "history.jsonl", load_policy())
        if isinstance(o, RefundCommand)
    }


def await_condition(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Polls `check` until it holds; fails the test naming `what` after `timeout_s`."""
    if not poll_until(check, timeout_s, interval=0.2):
        raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


@dataclass(slots=True)
class Instance:
    """One `refund-processor run` process; `name` is also its Kafka client.id."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False  # SIGKILLed by the test
    stopped: bool = False  # sent SIGTERM by the test
    #: Messages in its log that make an exit with an error expected (the test provoked it).
    may_fail_with: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def failed(self) -> bool:
        """Exited in a way the test did not cause: neither 0, nor by our SIGKILL, nor by our
        SIGTERM arriving before the processor installed its handler (while starting)."""
        code = self.process.poll()
        if code is None or code == 0 or self.killed:
            return False
        if self.stopped and code == -signal.SIGTERM:
            return False
        text = self.log_text()
        return not any(message in text for message in self.may_fail_with)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stopped_after(self, text: str) -> bool:
        """Whether it logged `text` and is stopped (SIGSTOP: tests/stall.py)."""
        return text in self.log_text() and process_state(self.process.pid) == "T"

    def log_lines(self) -> list[dict[str, Any]]:
        """The log's complete lines, as the JSON objects they must be (processor/logs.py)."""
        text = self.log_text()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def metrics_url(self, timeout_s: float = 60) -> str:
        """Base URL of the instance's metrics server, from its `metrics served` line."""
        found: list[str] = []

        def served() -> bool:
            found.extend(
                line["url"].removesuffix("/metrics")
                for line in self.log_lines()
                if line["event"] == "metrics served"
            )
            return bool(found)

        await_condition(served, timeout_s, f"{self.name} serves its metrics")
        return found[0]


class LiveHarness:
    """Topics, settings and processor instances of one test (a context manager)."""

    def __init__(
        self,
        kafka_bootstrap: str,
        redis_url: str,
        admin: KafkaAdmin,
        unique_topic: Callable[[str], str],
        tmp_path: Path,
        *,
        librdkafka: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.app = unique_topic("app")
        self.topics = {
            name: unique_topic(name)
            for name in ("orders", "tracking", "wallet", "fulfilment", "decisions", "dlq")
        }
        admin.create_topic(self.topics["orders"], 3)
        admin.create_topic(self.topics["tracking"], 2)
        self.admin = admin
        self.redis_url = redis_url
        self.env = (
            os.environ
            | {
                "REFUND_APPLICATION_ID": self.app,
                "REFUND_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
                "REFUND_REDIS__URL": redis_url,
                "REFUND_METRICS__PORT": "0",  # any free port: see Instance.metrics_url
            }
            | {f"REFUND_TOPICS__{name.upper()}": topic for name, topic in self.topics.items()}
        )
        self._librdkafka: dict[str, str] = {}
        self.configure(librdkafka=librdkafka, env=env)
        self.settings = Settings(
            application_id=self.app,
            kafka={"bootstrap_servers": kafka_bootstrap},
            redis={"url": redis_url},
            topics=self.topics,
        )
        self.tmp_path = tmp_path
        self.instances: list[Instance] = []

    def configure(
        self,
        *,
        librdkafka: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Adds settings (environment variables, librdkafka passthrough) for the instances
        started from now on."""
        self.env.update(env or {})
        self._librdkafka.update(librdkafka or {})
        if self._librdkafka:
            self.env["REFUND_KAFKA__LIBRDKAFKA"] = json.dumps(self._librdkafka)

    def __enter__(self) -> LiveHarness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for instance in self.instances:
            if instance.running:
                instance.process.kill()
                instance.process.wait(timeout=30)

    # Instances.

    def publish(self, lines: list[str]) -> None:
        source = io.BytesIO(("\n".join(lines) + "\n").encode())
        publish_lines(
            source, "history.jsonl", self.settings, Serde.single_object(), errors=io.StringIO()
        )

    def start(
        self,
        name: str | None = None,
        *,
        module: str = "processor.cli",
        env: Mapping[str, str] | None = None,
    ) -> Instance:
        """Starts an instance; a `name` used before (a restart) gets a new log file. Another
        `module` runs the processor with a fault injected (`start_stalled`), `env` adds
        variables for this instance alone."""
        name = name or f"p{len(self.instances)}"
        log = self.tmp_path / f"processor-{len(self.instances):02d}-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "run"],
                env=self.env | dict(env or {}) | {"REFUND_KAFKA__CLIENT_ID": name},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        instance = Instance(name, process, log)
        self.instances.append(instance)
        return instance

    def start_stalled(self, name: str, step: str) -> Instance:
        """Starts an instance that stops itself the first time it reaches `step`
        (tests/stall.py), and waits until it has."""
        instance = self.start(name, module="tests.stall", env={"STALL_IN": step})
        await_condition(
            lambda: instance.stopped_after("stalling in"),
            timeout_s=90,
            what=f"{name} stops in its first {step}",
        )
        return instance

    def running(self) -> list[Instance]:
        return [i for i in self.instances if i.running]

    def kill(self, instance: Instance) -> None:
        """SIGKILL: no clean-up of any kind (open transaction, group membership, Redis)."""
        instance.killed = True
        instance.process.kill()
        instance.process.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGTERM to every running instance, then waits for them to leave."""
        for instance in self.running():
            instance.stopped = True
            instance.process.send_signal(signal.SIGTERM)
        for instance in self.instances:
            instance.process.wait(timeout=60)

    def assert_none_failed(self) -> None:
        """Every instance is running or ended as the test meant it to (`Instance.failed`)."""
        failed = [i for i in self.instances if i.failed()]
        assert not failed, "\n".join(
            f"{i.name} exited {i.process.returncode}:\n{i.log_text()[-5000:]}" for i in failed
        )

    def logs(self) -> str:
        return "\n".join(f"== {i.log.name}\n{i.log_text()}" for i in self.instances)

    def log_marks(self, *names: str) -> dict[str, int]:
        """Where each running instance's log (of those `names`, if given) ends now, for
        `await_logged`."""
        return {i.name: len(i.log_text()) for i in self.running() if not names or i.name in names}

    def await_logged(self, marks: Mapping[str, int], text: str, timeout_s: float) -> None:
        """Waits until each instance in `marks` has logged `text` after its mark."""
        instances = [i for i in self.running() if i.name in marks]
        await_condition(
            lambda: all(text in i.log_text()[marks[i.name] :] for i in instances),
            timeout_s,
            f"{sorted(marks)} logged {text!r}",
        )

    # What the group, Redis and the wallet topic say.

    def group_assignment(self) -> dict[str, set[tuple[str, int]]] | None:
        """client.id -> assigned partitions, or None while the group is not stable."""
        group = self.settings.group_id
        try:
            description = self.admin.client.describe_consumer_groups([group], request_timeout=10)[
                group
            ].result()
        except Exception:  # the coordinator may be moving or loading: not stable either
            return None
        if description.state.name != "STABLE":
            return None
        return {
            member.client_id: {
                (tp.topic, tp.partition) for tp in member.assignment.topic_partitions
            }
            for member in description.members
        }

    def await_stable_group(self, names: set[str], timeout_s: float) -> dict[str, set[str]]:
        """Waits until exactly `names` share every partition of the group; returns
        each name's assigned partitions of the internal topic as task names."""
        found: dict[str, set[tuple[str, int]]] = {}

        def stable() -> bool:
            nonlocal found
            assignment = self.group_assignment()
            if assignment is None or set(assignment) != names:
                return False
            found = assignment
            return all(found.values())

        await_condition(stable, timeout_s, f"a stable group of {sorted(names)}")
        by_order = self.settings.by_order_topic
        return {
            name: {f"{by_order}:{p}" for t, p in partitions if t == by_order}
            for name, partitions in found.items()
        }

    def task_offsets(self) -> int:
        """The sum of the group's committed offsets on the internal topic: it grows
        whenever an order task commits a batch (watermarks arrive even when idle)."""
        offsets = self.committed_offsets(self.settings.by_order_topic)
        return sum(max(offset, 0) for offset in offsets.values())

    def committed_offsets(self, topic: str) -> dict[int, int]:
        """partition -> the group's committed offset on `topic` (negative: none).

        Read by a consumer in the group that never subscribes (no member) nor commits:
        AdminClient.list_consumer_group_offsets segfaults when the coordinator answers
        NOT_COORDINATOR (librdkafka issue 5040)."""
        consumer = Consumer(self.settings.kafka.consumer_config(self.settings.group_id))
        try:
            wanted = [TopicPartition(topic, p) for p in self.partitions(topic)]
            return {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=30)}
        finally:
            consumer.close()

    def end_offsets(
        self, topic: str, isolation: IsolationLevel = IsolationLevel.READ_UNCOMMITTED
    ) -> dict[int, int]:
        """partition -> the end offset of `topic`: the high watermark (read_uncommitted), or
        where its committed part ends (read_committed: before the first open transaction)."""
        return self._list_offsets(
            topic,
            OffsetSpec.latest(),  # type: ignore[no-untyped-call]
            isolation,
        )

    def committed_keys(self, topic: str) -> list[bytes]:
        """The keys of every record of `topic` that a committed transaction wrote (or that
        no transaction wrote), read_committed up to where the topic's committed part ended
        when asked."""
        ends = self.end_offsets(topic, IsolationLevel.READ_COMMITTED)
        consumer = Consumer(self.settings.kafka.consumer_config(f"{self.app}-key-reader"))
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        keys: list[bytes] = []

        def read_to_end() -> bool:
            keys.extend(
                message.key() or b""
                for message in consumer.consume(500, timeout=0.5)
                if message.error() is None
            )
            positions = consumer.position([TopicPartition(topic, p) for p in ends])
            return all(max(tp.offset, 0) >= ends[tp.partition] for tp in positions)

        try:
            await_condition(read_to_end, timeout_s=60, what=f"{topic} read to its end")
            return keys
        finally:
            consumer.close()

    def start_offsets(self, topic: str) -> dict[int, int]:
        """partition -> the first offset `topic` still holds (the log start offset)."""
        return self._list_offsets(topic, OffsetSpec.earliest())  # type: ignore[no-untyped-call]

    def _list_offsets(
        self,
        topic: str,
        spec: OffsetSpec,
        isolation: IsolationLevel = IsolationLevel.READ_UNCOMMITTED,
    ) -> dict[int, int]:
        """Retried while a topic just created has no settled leader everywhere yet."""
        specs = {TopicPartition(topic, p): spec for p in self.partitions(topic)}
        found: dict[int, int] = {}

        def listed() -> bool:
            try:
                futures = self.admin.client.list_offsets(specs, isolation_level=isolation)
                found.update({tp.partition: f.result().offset for tp, f in futures.items()})
            except KafkaException as exc:
                if exc.args[0].code() not in _NO_LEADER_YET:
                    raise
                return False
            return True

        await_condition(listed, timeout_s=30, what=f"the offsets of {topic} listed")
        return found

    def await_task_progress(self, timeout_s: float) -> None:
        """Waits until an order task commits a batch (after a kill: once the victim's open
        transaction, which blocks read_committed readers, has been aborted)."""
        before = self.task_offsets()
        await_condition(lambda: self.task_offsets() > before, timeout_s, "an order task commits")

    def task_epochs(self) -> dict[str, int]:
        """task -> its fencing epoch in Redis (tasks never claimed are left out)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            by_order = self.settings.by_order_topic
            epochs: dict[str, int] = {}
            for partition in range(len(self.partitions(self.topics["orders"]))):
                task = f"{by_order}:{partition}"
                meta_key = RedisTaskStore(client, self.app, task).meta_key
                epoch = client.hget(meta_key, "epoch")
                if epoch is not None:
                    epochs[task] = int(epoch)
            return epochs
        finally:
            client.close()

    def reader(self) -> WalletReader:
        return WalletReader(self)

    def refunds_when_done(self, expected: set[RefundKey], timeout_s: float) -> list[RefundKey]:
        """Every refund command (read_committed) once the processor is done.

        Waits until all of `expected` is on the wallet topic, stops every instance
        (SIGTERM), waits until no transaction is left open on the wallet topic (a killed
        instance's times out) and returns all refund commands on it, duplicates included.
        """
        with self.reader() as reader:
            reader.read_until(expected, timeout_s)
            self.stop_all()
            self.assert_none_failed()
            return reader.read_all(timeout_s=120)

    def read_refunds_until(self, expected: set[RefundKey], timeout_s: float) -> list[RefundKey]:
        """Every refund command on the wallet topic (read_committed) once `expected` is met,
        and 2 s more (a duplicate would arrive now, not later)."""
        with self.reader() as reader:
            reader.read_until(expected, timeout_s)
            reader.poll(2.0)
            return reader.seen

    def read_dead_letters(self, count: int, timeout_s: float) -> list[tuple[str, bytes, bytes]]:
        """(reason, source topic, original value) of the first `count` dead letters."""
        consumer = Consumer(self.settings.kafka.consumer_config(f"{self.app}-dlq-reader"))
        consumer.subscribe([self.topics["dlq"]])
        found: list[tuple[str, bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < count and time.monotonic() < deadline:
                for message in consumer.consume(100, timeout=0.5):
                    if message.error() is None:
                        headers = dict(message.headers() or [])
                        found.append(
                            (
                                (headers.get(ERROR_CLASS) or b"").decode(),  # type: ignore[union-attr]
                                headers.get(SOURCE_TOPIC) or b"",  # type: ignore[arg-type]
                                message.value() or b"",
                            )
                        )
            return found
        finally:
            consumer.close()

    def partitions(self, topic: str) -> list[int]:
        """The partitions of `topic`, once it exists (the processor creates its outputs)."""
        found: list[int] = []

        def exists() -> bool:
            nonlocal found
            metadata = self.admin.client.list_topics(topic, timeout=30).topics.get(topic)
            found = sorted(metadata.partitions) if metadata and metadata.error is None else []
            return bool(found)

        await_condition(exists, 60, f"topic {topic} exists")
        return found


class WalletReader:
    """Reads every refund command on the wallet topic from the start, read_committed."""

    def __init__(self, harness: LiveHarness) -> None:
        self._harness = harness
        self._topic = harness.topics["wallet"]
        self._serde = Serde.single_object()
        self._consumer = Consumer(
            harness.settings.kafka.consumer_config(f"{harness.app}-wallet-reader")
        )
        self._consumer.assign(
            [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in self._wallet_partitions()]
        )
        self.seen: list[RefundKey] = []

    def __enter__(self) -> WalletReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._consumer.close()

    def poll(self, seconds: float) -> None:
        """Reads for `seconds` (also the pacing of tests that act every so often)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._read(min(left, 0.5))

    def read_until(self, expected: set[RefundKey], timeout_s: float) -> None:
        """Reads until every expected refund was seen; fails if an instance died."""
        deadline = time.monotonic() + timeout_s
        while not set(self.seen) >= expected:
            self._harness.assert_none_failed()
            missing = len(expected - set(self.seen))
            assert time.monotonic() < deadline, (
                f"{missing} of {len(expected)} refunds missing after {timeout_s:.0f} s\n"
                + self._harness.logs()[-8000:]
            )
            self._read(0.5)

    def read_all(self, timeout_s: float) -> list[RefundKey]:
        """Waits until no transaction is open on the topic, then reads to its end."""
        partitions = [TopicPartition(self._topic, p) for p in self._wallet_partitions()]
        ends: dict[int, int] = {}

        def settled() -> bool:
            committed = self._harness.end_offsets(self._topic, IsolationLevel.READ_COMMITTED)
            ends.update(committed)
            return committed == self._harness.end_offsets(self._topic)

        await_condition(settled, timeout_s, "every transaction on the wallet topic ended")

        def read_to_end() -> bool:
            self._read(0.5)
            positions = self._consumer.position(partitions)
            return all(max(tp.offset, 0) >= ends[tp.partition] for tp in positions)

        await_condition(read_to_end, timeout_s, "the wallet topic read to its end")
        return self.seen

    def _read(self, timeout_s: float) -> None:
        for message in self._consumer.consume(500, timeout=timeout_s):
            if message.error() is None:
                self.seen.append(refund_key(self._serde.decode(message.value() or b"", "")))

    def _wallet_partitions(self) -> list[int]:
        return self._harness.partitions(self._topic)
