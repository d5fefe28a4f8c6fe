"""Session-wide real Kafka and Redis for the tests, found or started once per run.

Each of `kafka_bootstrap` / `redis_url` takes the first that works:
1. `KAFKA_BOOTSTRAP_SERVERS` / `REDIS_URL` from the environment (CI services, or
   `python -m processor.localstack up` in another terminal: fastest edit-test loop);
2. testcontainers, if a Docker engine answers;
3. a local process (`LocalKafka`, `LocalRedis`): no Docker needed, only Java/Maven/redis-server.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processor.localstack.kafka import KafkaAdmin, LocalKafka
from processor.localstack.redis import LocalRedis
from tests.live import LiveHarness, SecuredKafka


@functools.cache
def _docker_available() -> bool:
    """True if testcontainers can reach a Docker engine (any failure means no)."""
    try:
        # Imported lazily: without Docker (or testcontainers) the fallback must still work.
        from testcontainers.core.docker_client import DockerClient  # noqa: PLC0415

        return bool(DockerClient(timeout=5).client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """`host:port` of a Kafka broker shared by the whole run (topics: use `unique_topic`)."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
    elif _docker_available():
        from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415

        # The container leaves the transaction log at replication factor 3: on one
        # broker, init_transactions() would never find a coordinator.
        container = (
            KafkaContainer()
            .with_kraft()
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            # As LocalKafka: dead producers' transactions aborted within 1 s of timing out.
            .with_env("KAFKA_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS", "1000")
        )
        with container:
            yield container.get_bootstrap_server()
    else:
        with LocalKafka() as kafka:
            yield kafka.bootstrap_servers


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis shared by the whole run (keys: make them unique per test)."""
    if url := os.environ.get("REDIS_URL"):
        yield url
    elif _docker_available():
        from testcontainers.community.redis import RedisContainer  # noqa: PLC0415

        with RedisContainer() as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(container.port)}/0"
    else:
        with LocalRedis() as server:
            yield server.url


@pytest.fixture
def redis_server() -> Iterator[LocalRedis]:
    """A private Redis with AOF on that the test may stop, kill and restart."""
    with LocalRedis(appendonly=True) as server:
        yield server


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[SecuredKafka]:
    """A second broker, with ACLs enforced (always a local process: it needs Java)."""
    with SecuredKafka() as kafka:
        yield kafka


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> KafkaAdmin:
    """Topic helper for the shared broker (`admin.create_topic(name, partitions)`)."""
    return KafkaAdmin(kafka_bootstrap)


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory: `unique_topic("orders")` -> "orders-<test-name>-<8 hex>", so tests sharing
    a broker (and reruns) never see each other's records."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]

    def make(prefix: str) -> str:
        return f"{prefix}-{slug}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def live(
    kafka_bootstrap: str,
    redis_url: str,
    admin: KafkaAdmin,
    unique_topic: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[LiveHarness]:
    """A `LiveHarness` (tests/live.py) on the session's broker and Redis: topics, settings
    and `refund-processor run` instances of one test, killed when the test ends."""
    with LiveHarness(kafka_bootstrap, redis_url, admin, unique_topic, tmp_path) as harness:
        yield harness
