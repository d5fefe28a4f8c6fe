"""The local stack itself: what later tests of the processor's guarantees rely on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer

from processor.localstack import ServiceStartError, pid_alive, poll_until
from processor.localstack.kafka import KafkaAdmin, LocalKafka
from processor.localstack.redis import LocalRedis
from processor.settings import TopicsSettings

#: What `localstack up` says when it refuses rather than delete the stack's data.
RESET_HINT = "`python -m processor.localstack down` then `up` starts a new, empty stack"


def _consume(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Message]], bool],
    isolation: str = "read_committed",
    timeout: float = 30,
) -> list[Message]:
    """Read `topic` from the start until `until(records)` holds or `timeout` passes."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{topic}-{isolation}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    records: list[Message] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while not until(records) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consume error: {error}")
            records.append(message)
    finally:
        consumer.close()
    return records


def _values(records: Iterable[Message]) -> list[bytes | None]:
    return [record.value() for record in records]


def test_produce_consume_round_trip(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: Callable[[str], str]
) -> None:
    topic = admin.create_topic(unique_topic("roundtrip"), partitions=3)
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(30)}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    records = _consume(kafka_bootstrap, topic, until=lambda got: len(got) >= len(sent))

    assert {record.key(): record.value() for record in records} == sent
    assert {record.partition() for record in records} == {0, 1, 2}


def test_read_committed_skips_aborted_transactions(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: Callable[[str], str]
) -> None:
    topic = admin.create_topic(unique_topic("txn"))
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{topic}-producer"}
    )
    producer.init_transactions(30)
    for value, commit in ((b"committed-1", True), (b"aborted", False), (b"committed-2", True)):
        producer.begin_transaction()
        producer.produce(topic, value=value)
        # Without the flush, abort would just purge the still-queued record client-side,
        # and the read_uncommitted check below would prove nothing.
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    def saw_last(records: list[Message]) -> bool:
        return b"committed-2" in _values(records)

    # One partition, so the aborted record would come before the last committed one.
    committed = _consume(kafka_bootstrap, topic, until=saw_last)
    everything = _consume(kafka_bootstrap, topic, until=saw_last, isolation="read_uncommitted")

    assert _values(committed) == [b"committed-1", b"committed-2"]
    assert _values(everything) == [b"committed-1", b"aborted", b"committed-2"]


def test_redis_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
    finally:
        client.close()


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_redis_restart_with_aof_keeps_data(redis_server: LocalRedis, crash: bool) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("refund:1", "paid")
    client.hset("wallet:7", mapping={"balance": "12.50"})
    url_before = redis_server.url

    redis_server.restart(crash=crash)

    assert redis_server.url == url_before
    assert client.get("refund:1") == b"paid"  # the client reconnects on its own
    assert client.hget("wallet:7", "balance") == b"12.50"
    client.close()


def test_redis_without_aof_starts_empty_after_restart() -> None:
    """Counter-check: the AOF, not luck, is what keeps the data above."""
    with LocalRedis(appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        client.set("refund:1", "paid")
        server.restart()
        assert client.get("refund:1") is None
        client.close()


def test_leaving_the_with_block_removes_only_a_temp_dir_and_forgets_the_port(
    tmp_path: Path,
) -> None:
    """A second start after `close()` must not reuse a port or a directory that is gone."""
    with LocalRedis() as server:
        temp_dir, pid = server.workdir, server.pid
    assert not temp_dir.exists()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for closed in (lambda: server.workdir, lambda: server.port, lambda: server.pid):
        with pytest.raises(RuntimeError, match="LocalRedis is not"):
            closed()

    with LocalRedis(workdir=tmp_path) as server:
        assert server.workdir == tmp_path.resolve()
    assert (tmp_path / "redis.log").exists()


def test_kafka_crash_restart_keeps_records_and_start_failure_quotes_log(
    unique_topic: Callable[[str], str],
) -> None:
    with LocalKafka() as kafka:
        topic = KafkaAdmin(kafka.bootstrap_servers).create_topic(unique_topic("restart"))
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "acks": "all"})
        producer.produce(topic, value=b"before-crash")
        assert producer.flush(30) == 0
        address = kafka.bootstrap_servers

        kafka.restart(crash=True)

        assert kafka.bootstrap_servers == address
        records = _consume(address, topic, until=lambda got: len(got) >= 1)
        assert _values(records) == [b"before-crash"]

        # A broker that cannot start reports why, quoting its own log. (A clean stop: after
        # a crash, startup would first wait out the old incarnation's session.)
        kafka.stop()
        port = int(address.rsplit(":", 1)[1])
        with (
            socket.create_server(("127.0.0.1", port)),
            pytest.raises(ServiceStartError, match="Address already in use") as failure,
        ):
            kafka.start()
        assert f"tail of {kafka.log_path}" in str(failure.value)


def test_kafka_bad_config_fails_fast_with_the_reason() -> None:
    kafka = LocalKafka(overrides={"num.io.threads": "not-a-number"}, startup_timeout=60)
    with pytest.raises(ServiceStartError, match=r"num\.io\.threads"):
        kafka.start()
    kafka.close()


def _localstack(stack_dir: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`python -m processor.localstack COMMAND` with its `.stack/` in `stack_dir`."""
    return subprocess.run(
        [sys.executable, "-m", "processor.localstack", command],
        cwd=stack_dir,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    """One record, acknowledged by the broker (the producer is gone when this returns, so
    it does not log refused connections while the test kills the broker)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value=value)
    assert producer.flush(30) == 0


def _kill(pid: int) -> None:
    """SIGKILL a service of the stack, and wait until it is gone (or a zombie: the `up`
    that started it has exited, and its orphans may never be reaped)."""
    os.kill(pid, signal.SIGKILL)
    assert poll_until(lambda: not pid_alive(pid), 10)


def _take_port(port: int) -> socket.socket:
    """A listening socket on `port`, once the killed service's is gone: `_kill` sees the
    process's main thread a zombie while its other threads may still hold its sockets
    (CI failed once binding at that moment: "Address already in use")."""
    taken: list[socket.socket] = []

    def bound() -> bool:
        try:
            taken.append(socket.create_server(("127.0.0.1", port)))
        except OSError:
            return False
        return True

    assert poll_until(bound, 10), f"port {port} still in use after the kill"
    return taken[0]


def test_cli_up_status_down(tmp_path: Path) -> None:
    def cli(command: str) -> subprocess.CompletedProcess[str]:
        return _localstack(tmp_path, command)

    up = cli("up")
    try:
        assert up.returncode == 0, up.stderr
        env = dict(line.split("=", 1) for line in up.stdout.splitlines())
        assert env == {
            "KAFKA_BOOTSTRAP_SERVERS": env["REFUND_KAFKA__BOOTSTRAP_SERVERS"],
            "REDIS_URL": env["REFUND_REDIS__URL"],
            "REFUND_KAFKA__BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"],
            "REFUND_REDIS__URL": env["REDIS_URL"],
        }
        assert redis.Redis.from_url(env["REDIS_URL"]).ping()
        brokers = KafkaAdmin(env["KAFKA_BOOTSTRAP_SERVERS"]).client.list_topics(timeout=10).brokers
        assert len(brokers) == 1
        assert cli("status").returncode == 0
        assert cli("up").stdout == up.stdout  # idempotent: reuses the running stack
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert cli("status").returncode == 1
    assert not (tmp_path / ".stack" / "state.json").exists()


def test_cli_up_starts_a_dead_service_again_with_its_data_and_keeps_the_other(
    tmp_path: Path,
) -> None:
    """`up` after Redis, then Kafka, of a running stack died: the dead one comes back on
    its port with its data (Redis's AOF, Kafka's log), the other keeps running, and the
    variables stay the same. What it cannot bring back as it was, it refuses to replace
    (exit 2): only `down` deletes the stack's data."""
    first = _localstack(tmp_path, "up")
    try:
        assert first.returncode == 0, first.stderr
        env = dict(line.split("=", 1) for line in first.stdout.splitlines())
        client = redis.Redis.from_url(env["REDIS_URL"])
        client.set("refund:1", "paid")
        topic, bootstrap = TopicsSettings().orders, env["KAFKA_BOOTSTRAP_SERVERS"]
        _produce(bootstrap, topic, b"before-crash")

        def pids() -> dict[str, int]:
            state = json.loads((tmp_path / ".stack" / "state.json").read_text())
            return {name: service["pid"] for name, service in state.items()}

        before = pids()
        _kill(before["redis"])
        port = int(env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        with _take_port(port):  # someone took its port meanwhile
            refused = _localstack(tmp_path, "up")
        assert refused.returncode == 2
        assert "redis did not start again" in refused.stderr
        assert RESET_HINT in refused.stderr
        assert refused.stdout == ""
        assert pid_alive(before["kafka"])

        redis_again = _localstack(tmp_path, "up")
        assert redis_again.returncode == 0, redis_again.stderr
        assert redis_again.stdout == first.stdout
        assert f"kafka is up, kept (pid {before['kafka']})" in redis_again.stderr
        assert pids()["kafka"] == before["kafka"]
        assert client.get("refund:1") == b"paid"  # the client reconnects on its own
        client.close()

        after_redis = pids()
        _kill(after_redis["kafka"])
        kafka_again = _localstack(tmp_path, "up")
        assert kafka_again.returncode == 0, kafka_again.stderr
        assert kafka_again.stdout == first.stdout
        assert pids()["redis"] == after_redis["redis"]
        records = _consume(bootstrap, topic, until=lambda got: len(got) >= 1)
        assert _values(records) == [b"before-crash"]
        assert _localstack(tmp_path, "status").returncode == 0
    finally:
        assert _localstack(tmp_path, "down").returncode == 0


def test_cli_up_refuses_to_start_over_on_a_state_it_cannot_read(tmp_path: Path) -> None:
    """Which services run where is unknown: starting a new stack would delete the data
    of one that may still be running."""
    aof = tmp_path / ".stack" / "redis" / "appendonlydir"
    aof.mkdir(parents=True)
    (aof / "appendonly.aof.1.incr.aof").write_text("*1\r\n$4\r\nPING\r\n")
    (tmp_path / ".stack" / "state.json").write_text("{")
    try:
        up = _localstack(tmp_path, "up")

        assert up.returncode == 2
        assert "state.json cannot be read" in up.stderr
        assert RESET_HINT in up.stderr
        assert (aof / "appendonly.aof.1.incr.aof").exists()
    finally:  # had `up` started a new stack after all
        _localstack(tmp_path, "down")
