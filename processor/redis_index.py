"""The router's shared state in Redis: the tracking-number index, every router's
progress, and the updates that expired unresolved (docs/live.md, "Topology")."""

import zlib
from collections.abc import Iterable, Mapping
from typing import Final, cast

import redis

from processor import metrics
from processor.redis_store import lost_state
from processor.router import NOT_IDLE, Progress

#: Hashes the tracking-number index is spread over (RedisTrackingIndex).
TRACKING_BUCKETS: Final = 64

# The progress hash holds, per input partition, `<source>`: its router's report,
# `<watermark>:<idle>:<routed>:<drained>` (flags 0/1), `<source>#end`: the offset a
# drained report rests on (`Progress.end`; a field of its own, which routers of before it
# skip), and `<source>#epoch`: how many times a router claimed it (Kafka topic names
# cannot hold a `#`).

#: ARGV: sources. Bumps each one's epoch and deletes its report; returns the new epochs
#: and the whole hash.
_CLAIM_SOURCES_LUA: Final = """
local epochs = {}
for i, source in ipairs(ARGV) do
  epochs[i] = redis.call('HINCRBY', KEYS[1], source .. '#epoch', 1)
  redis.call('HDEL', KEYS[1], source, source .. '#end')
end
return {epochs, redis.call('HGETALL', KEYS[1])}
"""

#: ARGV: (source, epoch, report, end) quadruples. Writes a report under the epoch that
#: holds its source; returns the sources refused (another epoch holds them), the whole
#: hash, and the sources no epoch holds. A claim never removes an epoch, so with none
#: Redis lost the hash: then nothing is written at all.
_SHARE_PROGRESS_LUA: Final = """
local refused, lost, held = {}, {}, {}
for i = 1, #ARGV, 4 do
  held[i] = redis.call('HGET', KEYS[1], ARGV[i] .. '#epoch')
  if not held[i] then
    lost[#lost + 1] = ARGV[i]
  end
end
if #lost > 0 then
  return {refused, {}, lost}
end
for i = 1, #ARGV, 4 do
  local source = ARGV[i]
  if held[i] == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], source, ARGV[i + 2], source .. '#end', ARGV[i + 3])
  else
    refused[#refused + 1] = source
  end
end
return {refused, redis.call('HGETALL', KEYS[1]), lost}
"""


def _parse_progress(fields: Mapping[bytes, bytes] | list[bytes]) -> dict[str, Progress]:
    """The reports in the progress hash (HGETALL as a dict, or as a script's flat list)."""
    pairs = (
        fields.items()
        if isinstance(fields, Mapping)
        else zip(fields[::2], fields[1::2], strict=True)
    )
    progress: dict[str, Progress] = {}
    ends: dict[str, int] = {}
    for field, value in pairs:
        source, _, suffix = field.decode().partition("#")
        if not suffix:
            watermark, idle, routed, drained = value.decode().split(":")
            progress[source] = Progress(int(watermark), idle == "1", int(routed), drained == "1")
        elif suffix == "end":
            ends[source] = int(value)
    return {
        source: report._replace(end=ends.get(source, NOT_IDLE))
        for source, report in progress.items()
    }


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
        self._claim_script = client.register_script(_CLAIM_SOURCES_LUA)
        self._share_script = client.register_script(_SHARE_PROGRESS_LUA)

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

    def claim_sources(self, sources: list[str]) -> tuple[dict[str, int], dict[str, Progress]]:
        """Claims input partitions after a rebalance gave them to this router: bumps each
        one's epoch and clears its progress, then reads every router's, in one round trip.

        Until the new owner reports a cleared partition, every router reads the inputs'
        progress as unknown (`combined_watermark`): nothing expires, and every pending
        update is held. The previous owner, if it is a stalled instance that comes back,
        can no longer write its report: what it saw before it stalled (say, an input
        drained) is not true any more.
        """
        with metrics.REDIS_INDEX.time():
            epochs, reported = self._claim_script(keys=[self._progress], args=sources)
        return dict(zip(sources, epochs, strict=True)), _parse_progress(reported)

    def share_progress(
        self, reports: list[tuple[str, int, Progress]]
    ) -> tuple[list[str], dict[str, Progress]]:
        """Publishes this router's progress, one report per (source, epoch it claimed it at,
        progress), and reads every router's, in one round trip.

        Returns the sources another router claimed since, whose reports are not written
        (this instance is a zombie for them, or their claim came late: `Runner._process`),
        and every router's progress. Raises `StateBehindKafkaError`, writing nothing, if a
        source has no epoch: Redis lost the hash, most likely the tracking index with it,
        and routing on would dead-letter the updates it can no longer resolve.
        """
        args: list[str | int] = []
        for source, epoch, p in reports:
            args += [
                source,
                epoch,
                f"{p.watermark}:{int(p.idle)}:{p.routed}:{int(p.drained)}",
                p.end,
            ]
        with metrics.REDIS_INDEX.time():
            refused, reported, lost = self._share_script(keys=[self._progress], args=args)
        if lost:
            raise lost_state(
                f"input partitions {', '.join(source.decode() for source in lost)}: Redis has "
                "no epoch for their router's progress any more"
            )
        return [source.decode() for source in refused], _parse_progress(reported)

    def read_progress(self) -> dict[str, Progress]:
        """Every router's progress, as the routers read it (for the demo and benchmarks)."""
        with metrics.REDIS_INDEX.time():
            return _parse_progress(cast(dict[bytes, bytes], self._client.hgetall(self._progress)))

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
