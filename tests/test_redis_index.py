"""The routers' progress in Redis, fenced by the epoch of each input partition's claim,
and the layout of the tracking-number index.

The index's lookups and expiries run with the router, in tests/test_router.py."""

import uuid
from collections.abc import Iterator

import pytest
import redis

from processor.redis_index import TRACKING_BUCKETS, RedisTrackingIndex
from processor.redis_store import LOST_STATE_ADVICE, StateBehindKafkaError
from processor.router import Progress

ORDERS, TRACKING = "orders:0", "tracking:0"
DRAINED = Progress(5_000, True, 5_000, True, end=42)
BEHIND = Progress(1_000, False, 1_000, False)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


@pytest.fixture
def app(client: redis.Redis) -> Iterator[str]:
    name = f"index-test-{uuid.uuid4().hex[:8]}"
    yield name
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def test_a_claim_fences_the_previous_owners_reports_and_clears_them(
    client: redis.Redis, app: str
) -> None:
    old, new = RedisTrackingIndex(client, app), RedisTrackingIndex(client, app)
    old_epochs, _ = old.claim_sources([ORDERS, TRACKING])
    assert old.share_progress(
        [(ORDERS, old_epochs[ORDERS], DRAINED), (TRACKING, old_epochs[TRACKING], DRAINED)]
    ) == ([], {ORDERS: DRAINED, TRACKING: DRAINED})

    new_epochs, seen = new.claim_sources([ORDERS])
    assert new_epochs[ORDERS] > old_epochs[ORDERS]
    assert seen == {TRACKING: DRAINED}  # unknown until the new owner reports it

    # The old owner stalled with its view of before the claim, and comes back.
    refused, seen = old.share_progress(
        [(ORDERS, old_epochs[ORDERS], DRAINED), (TRACKING, old_epochs[TRACKING], BEHIND)]
    )
    assert (refused, seen) == ([ORDERS], {TRACKING: BEHIND})

    assert new.share_progress([(ORDERS, new_epochs[ORDERS], BEHIND)]) == (
        [],
        {ORDERS: BEHIND, TRACKING: BEHIND},
    )
    assert new.read_progress() == {ORDERS: BEHIND, TRACKING: BEHIND}


def test_every_claim_of_a_partition_is_a_newer_epoch(client: redis.Redis, app: str) -> None:
    index = RedisTrackingIndex(client, app)
    firsts, _ = index.claim_sources([ORDERS, TRACKING])
    seconds, _ = index.claim_sources([TRACKING])
    thirds, _ = index.claim_sources([TRACKING, ORDERS])
    assert firsts == {ORDERS: 1, TRACKING: 1}
    assert seconds == {TRACKING: 2}
    assert thirds == {ORDERS: 2, TRACKING: 3}


def test_a_stale_router_is_refused_every_partition_claimed_since_and_writes_none(
    client: redis.Redis, app: str
) -> None:
    old, new = RedisTrackingIndex(client, app), RedisTrackingIndex(client, app)
    old_epochs, _ = old.claim_sources([ORDERS, TRACKING])
    new.claim_sources([ORDERS, TRACKING])

    assert old.share_progress(
        [(ORDERS, old_epochs[ORDERS], DRAINED), (TRACKING, old_epochs[TRACKING], DRAINED)]
    ) == ([ORDERS, TRACKING], {})


def test_a_report_is_stored_in_the_format_routers_of_every_version_read(
    client: redis.Redis, app: str
) -> None:
    """`<watermark>:<idle>:<routed>:<drained>`: routers of two versions share the hash
    during a deploy."""
    index = RedisTrackingIndex(client, app)
    epochs, _ = index.claim_sources([ORDERS])
    idle_not_drained = Progress(3_000, True, 2_000, False, end=7)

    assert index.share_progress([(ORDERS, epochs[ORDERS], idle_not_drained)]) == (
        [],
        {ORDERS: idle_not_drained},
    )
    assert client.hget(f"{app}:router-progress", ORDERS) == b"3000:1:2000:0"


def test_after_redis_lost_the_progress_a_claim_fences_a_zombie_of_a_higher_epoch(
    client: redis.Redis, app: str
) -> None:
    zombie, owner = RedisTrackingIndex(client, app), RedisTrackingIndex(client, app)
    for _ in range(3):
        zombie_epochs, _ = zombie.claim_sources([ORDERS])
    client.delete(f"{app}:router-progress")
    owner_epochs, _ = owner.claim_sources([ORDERS])
    assert owner_epochs[ORDERS] < zombie_epochs[ORDERS]  # counting starts over

    assert zombie.share_progress([(ORDERS, zombie_epochs[ORDERS], DRAINED)]) == ([ORDERS], {})
    assert owner.share_progress([(ORDERS, owner_epochs[ORDERS], BEHIND)]) == (
        [],
        {ORDERS: BEHIND},
    )


def test_a_report_after_redis_lost_the_progress_is_lost_state(
    client: redis.Redis, app: str
) -> None:
    """A claim never removes an epoch: with none, Redis lost the routers' state. Until
    2026-12-07 the first report took the epoch and its router routed on, dead-lettering
    the updates the lost index could not resolve (docs/live.md, "Exactly once")."""
    index = RedisTrackingIndex(client, app)
    epochs, _ = index.claim_sources([ORDERS, TRACKING])
    client.delete(f"{app}:router-progress")  # what a restart without persistence leaves

    with pytest.raises(StateBehindKafkaError, match="Redis has no epoch") as raised:
        index.share_progress(
            [(ORDERS, epochs[ORDERS], DRAINED), (TRACKING, epochs[TRACKING], BEHIND)]
        )
    assert f"input partitions {ORDERS}, {TRACKING}:" in str(raised.value)
    assert LOST_STATE_ADVICE in str(raised.value)
    assert index.read_progress() == {}


def test_a_report_of_a_source_with_no_epoch_writes_none_of_the_others(
    client: redis.Redis, app: str
) -> None:
    """All or nothing, as a task's stage: the process stops on what the script found. A
    source claimed after the loss holds an epoch again; one claimed before does not."""
    index = RedisTrackingIndex(client, app)
    before, _ = index.claim_sources([TRACKING])
    client.delete(f"{app}:router-progress")
    after, _ = index.claim_sources([ORDERS])

    with pytest.raises(StateBehindKafkaError, match=f"input partitions {TRACKING}:"):
        index.share_progress(
            [(ORDERS, after[ORDERS], DRAINED), (TRACKING, before[TRACKING], DRAINED)]
        )
    assert client.hgetall(f"{app}:router-progress") == {f"{ORDERS}#epoch".encode(): b"1"}


def test_a_report_of_a_router_of_before_the_end_offsets_reads_as_resting_on_no_end(
    client: redis.Redis, app: str
) -> None:
    """Routers of before `Progress.end` write the report alone: readable, and trusted
    drained by no one (`router.trusted`). Routers of before read the new hash as they
    did, skipping the `#end` fields with the `#epoch` ones; a claim clears both."""
    index = RedisTrackingIndex(client, app)
    epochs, _ = index.claim_sources([ORDERS])
    client.hset(f"{app}:router-progress", ORDERS, "5000:1:5000:1")
    assert index.read_progress() == {ORDERS: DRAINED._replace(end=-1)}

    index.share_progress([(ORDERS, epochs[ORDERS], DRAINED)])
    assert client.hget(f"{app}:router-progress", f"{ORDERS}#end") == b"42"
    index.claim_sources([ORDERS])
    assert client.hget(f"{app}:router-progress", f"{ORDERS}#end") is None


@pytest.mark.parametrize(
    ("number", "bucket"), [("TN-1", 54), ("TN-2", 12), ("1Z999AA10123456784", 3)]
)
def test_a_tracking_number_lives_in_the_bucket_every_version_puts_it_in(
    client: redis.Redis, app: str, number: str, bucket: int
) -> None:
    """The index outlives the routers that wrote it, and routers of two versions share it
    during a deploy: a number's bucket (crc32 % 64) is for good."""
    index = RedisTrackingIndex(client, app)
    index.link_many({number: "o1"})
    assert client.hgetall(f"{app}:tracking:{bucket}") == {number.encode(): b"o1"}

    client.hset(f"{app}:tracking:{bucket}", number, "o2")
    assert index.lookup_many([number]) == {number: "o2"}


def test_a_batch_of_lookups_finds_every_linked_number_however_they_share_buckets(
    client: redis.Redis, app: str
) -> None:
    index = RedisTrackingIndex(client, app)
    links = {f"TN-{n}": f"o{n}" for n in range(5 * TRACKING_BUCKETS)}
    index.link_many(links)

    assert index.lookup_many(["TN-unknown", *links, f"TN-{len(links)}"]) == links
    assert len(list(client.scan_iter(f"{app}:tracking:*"))) == TRACKING_BUCKETS


def test_every_origin_expired_in_a_batch_is_recorded_and_no_other(
    client: redis.Redis, app: str
) -> None:
    index = RedisTrackingIndex(client, app)
    index.expire_many(["tracking/0/1", "tracking/0/2"])
    index.expire_many(origin for origin in ["tracking/1/5"])

    assert index.expired_among(
        ["tracking/0/1", "tracking/0/3", "tracking/0/2", "tracking/1/5"]
    ) == {"tracking/0/1", "tracking/0/2", "tracking/1/5"}
