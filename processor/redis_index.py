"""The router's shared state in Redis: the tracking-number index, every router's
progress, and the updates that expired unresolved (docs/live.md, "Topology")."""

import zlib
from collections.abc import Iterable, Mapping
from typing import Final

import redis

from processor import metrics
from processor.router import Progress

#: Hashes the tracking-number index is spread over (RedisTrackingIndex).
TRACKING_BUCKETS: Final = 64


class RedisTrackingIndex:
    """The router's tracking-number index, shared by all instances.

    Numbers are spread over `TRACKING_BUCKETS` hashes, so a batch's lookups are one HMGET
    per bucket rather than one command per number (each key is one Redis Cluster slot).
    """

    def __init__(self, client: redis.Redis, application_id: str) -> None:
        self._client = client
        self._prefix = f"{application_id}:tracking:"
        self._progress = f"{application_id}:router-progress"
        # Origins of the updates that expired unresolved (Router.route): few, kept for good.
        self._expired = f"{application_id}:expired-orphans"

    def _bucket(self, number: str) -> str:
        return f"{self._prefix}{zlib.crc32(number.encode()) % TRACKING_BUCKETS}"

    def _by_bucket(self, numbers: Iterable[str]) -> dict[str, list[str]]:
        buckets: dict[str, list[str]] = {}
        for number in numbers:
            buckets.setdefault(self._bucket(number), []).append(number)
        return buckets

    def link_many(self, links: Mapping[str, str]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for bucket, numbers in self._by_bucket(links).items():
            pipe.hset(bucket, mapping={number: links[number] for number in numbers})
        with metrics.REDIS_INDEX.time():
            pipe.execute()

    def share_progress(self, reports: list[tuple[str, Progress]]) -> dict[str, Progress]:
        """Publishes this router's progress and reads every router's, in one round trip.

        Values are `<watermark>:<idle>:<routed>:<drained>` (flags 0/1)."""
        pipe = self._client.pipeline(transaction=False)
        if reports:
            pipe.hset(
                self._progress,
                mapping={
                    source: f"{p.watermark}:{int(p.idle)}:{p.routed}:{int(p.drained)}"
                    for source, p in reports
                },
            )
        pipe.hgetall(self._progress)
        with metrics.REDIS_INDEX.time():
            reported: dict[bytes, bytes] = pipe.execute()[-1]
        progress: dict[str, Progress] = {}
        for source, value in reported.items():
            watermark, idle, routed, drained = value.decode().split(":")
            progress[source.decode()] = Progress(
                int(watermark), idle == "1", int(routed), drained == "1"
            )
        return progress

    def expire_many(self, origins: Iterable[str]) -> None:
        with metrics.REDIS_INDEX.time():
            self._client.sadd(self._expired, *origins)

    def expired_among(self, origins: Iterable[str]) -> set[str]:
        wanted = list(origins)
        with metrics.REDIS_INDEX.time():
            found = self._client.smismember(self._expired, wanted)
        return {origin for origin, member in zip(wanted, found, strict=True) if member}

    def lookup_many(self, tracking_numbers: Iterable[str]) -> dict[str, str]:
        buckets = self._by_bucket(tracking_numbers)
        pipe = self._client.pipeline(transaction=False)
        for bucket, numbers in buckets.items():
            pipe.hmget(bucket, numbers)
        with metrics.REDIS_INDEX.time():
            replies = pipe.execute()
        found: dict[str, str] = {}
        for numbers, values in zip(buckets.values(), replies, strict=True):
            for number, value in zip(numbers, values, strict=True):
                if value is not None:
                    found[number] = value.decode()
        return found
