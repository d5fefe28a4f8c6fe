"""The router: tracking updates resolved through the index, pending ones held and
expired, and records read again behind a held offset handled once.

Each test runs with the Redis index the live processor uses and with one in a dict."""

import json
import uuid
from collections.abc import Iterable, Mapping

import pytest
import redis

from processor.config import load_policy
from processor.events import Event, parse_event_json, to_millis
from processor.redis_index import RedisTrackingIndex
from processor.router import Inbound, Progress, Router, TrackingIndex, claiming_idle, trusted
from tests.factories import T0, at, scan, shipped

SOURCE = "tracking:0"
DAY_MS = 86_400_000


class MemoryIndex:
    """The tracking index in a dict and a set."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}
        self.expired: set[str] = set()

    def link_many(self, links: Mapping[str, str]) -> None:
        self.links.update(links)

    def lookup_many(self, tracking_numbers: Iterable[str]) -> dict[str, str]:
        return {n: self.links[n] for n in tracking_numbers if n in self.links}

    def expire_many(self, origins: Iterable[str]) -> None:
        self.expired.update(origins)

    def expired_among(self, origins: Iterable[str]) -> set[str]:
        return self.expired.intersection(origins)


@pytest.fixture(params=["redis", "memory"])
def index(request: pytest.FixtureRequest) -> TrackingIndex:
    if request.param == "memory":
        return MemoryIndex()
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    return RedisTrackingIndex(client, f"router-test-{uuid.uuid4().hex[:8]}")


def inbound(offset: int, event: dict[str, object], *, replayed: bool = False) -> Inbound:
    parsed: Event = parse_event_json(json.dumps(event))
    origin = f"tracking/0/{offset}"
    return Inbound(SOURCE, offset, parsed, origin, b"", 0, replayed)


def unresolved(offset: int, days: float = 3, *, replayed: bool = False) -> Inbound:
    update = scan("delivered", "TN-p1", order_id=None, when=at(days), event_id=f"scan-{offset}")
    return inbound(offset, update, replayed=replayed)


def far_past_ttl() -> int:
    return to_millis(T0) + 10_000 * DAY_MS


def test_an_update_nobody_ships_expires_once_and_its_origin_is_recorded(
    index: TrackingIndex,
) -> None:
    router = Router(index, load_policy())

    held = router.route([unresolved(4)], 0.0, progress=None)
    assert (held.routed, held.dead_letters, router.pending()) == ([], [], 1)

    expired = router.route([], 1.0, progress=far_past_ttl())
    assert [(dead.reason, dead.key) for _, dead in expired.dead_letters] == [
        ("unknown_tracking_number", "TN-p1")
    ]
    assert index.expired_among(["tracking/0/4", "tracking/0/5"]) == {"tracking/0/4"}
    assert router.pending() == 0


def test_a_pending_update_holds_its_watermark_until_the_replays_clock_passes_it(
    index: TrackingIndex,
) -> None:
    """Until every input has been routed allowed_lateness past it, its shipment may be in
    a backlog; after that, holding would stop every clock until the update expires."""
    policy = load_policy()
    router = Router(index, policy)
    update = unresolved(4, days=1)
    later = inbound(5, scan("in_transit", "TN-p9", order_id="o9", when=at(2)))
    router.route([update, later], 0.0, progress=None)
    scanned, routed = update.event.at, later.event.at
    lateness = policy.allowed_lateness_ms

    def report(progress: int | None, *, drained: bool = False) -> tuple[int, int]:
        ((_, progress_report),) = router.watermarks(0.0, 1.0, {}, progress, drained)
        return progress_report.watermark, progress_report.routed

    assert report(None) == (scanned - 1, routed)
    assert report(scanned + lateness) == (scanned - 1, routed)
    assert report(scanned + lateness + 1) == (routed, routed)
    assert report(None, drained=True) == (routed, routed)
    assert router.pending() == 1, "still pending: it expires orphan_ttl past it"
    (commit,) = router.commit_offsets().values()
    assert (commit.offset, commit.watermark) == (4, scanned - 1), "a next owner holds it"


def test_records_read_again_below_the_handled_mark_are_replayed(index: TrackingIndex) -> None:
    router = Router(index, load_policy())
    router.assign(SOURCE, 0.0, committed=3, watermark=None, handled=7)

    assert router.handled(SOURCE) == 7, "records 3 to 6 are read again"
    assert router.handled("orders:9") == 0, "a source never assigned replays nothing"
    router.route([unresolved(3, days=1)], 0.0, progress=None)  # pending: holds the offset
    (commit,) = router.commit_offsets().values()
    assert (commit.offset, commit.handled) == (3, 7), "the mark stays until read past"


def test_a_source_with_nothing_committed_commits_its_log_start_and_routes_what_is_below(
    index: TrackingIndex,
) -> None:
    """Its log start is committed, so a batch of its reports alone sends an offset (and is
    fenced); but retention may have moved the start past records the consumer had read
    already, and those are routed like any other, never skipped as read before."""
    router = Router(index, load_policy())
    router.assign(SOURCE, 0.0, committed=None, log_start=5)

    (commit,) = router.commit_offsets().values()
    assert (commit.offset, commit.handled) == (5, 5)
    assert router.position(SOURCE) is None, "nothing read: no record is skipped"
    below = inbound(3, scan("in_transit", "TN-p9", order_id="o9", when=at(2)))
    assert [item.offset for _, item in router.route([below], 0.0, progress=None).routed] == [3]
    (commit,) = router.commit_offsets().values()
    assert commit.offset == 4


def test_the_handled_mark_passes_a_pending_update_that_holds_the_offset(
    index: TrackingIndex,
) -> None:
    router = Router(index, load_policy())
    router.route([unresolved(3), inbound(4, shipped("p2"))], 0.0, progress=None)
    router.skip(SOURCE, 5, 0.0)  # dead-lettered undecodable

    (commit,) = router.commit_offsets().values()
    assert (commit.offset, commit.handled) == (3, 6)


def test_an_update_read_again_after_it_expired_expires_again_though_it_resolves_now(
    index: TrackingIndex,
) -> None:
    """Again, not dropped: the batch that expired it may have been aborted."""
    index.expire_many(["tracking/0/4"])
    router = Router(index, load_policy())
    router.assign(SOURCE, 0.0, committed=4, watermark=None, handled=9)
    router.route([inbound(2, shipped("p1"))], 0.0, progress=None)  # links TN-p1 now

    result = router.route([unresolved(4, replayed=True), unresolved(5)], 0.0, progress=None)

    assert [item.origin for _, item in result.routed] == ["tracking/0/5"]
    assert [(item.origin, dead.reason) for item, dead in result.dead_letters] == [
        ("tracking/0/4", "unknown_tracking_number")
    ]
    assert router.pending() == 0


def test_an_update_read_again_that_resolved_before_is_routed_again(index: TrackingIndex) -> None:
    """Its task may not have decided it: it goes there again (a no-op if it had)."""
    router = Router(index, load_policy())
    router.route([inbound(1, shipped("p1"))], 0.0, progress=None)
    assert [order_id for order_id, _ in router.route([unresolved(4)], 0.0, None).routed] == ["o1"]

    again = router.route([unresolved(4, replayed=True)], 0.0, progress=None)

    assert [order_id for order_id, _ in again.routed] == ["o1"]


def test_a_source_read_to_its_end_and_quiet_is_reported_drained_at_the_offset_it_ended(
    index: TrackingIndex,
) -> None:
    router = Router(index, load_policy())
    router.assign(SOURCE, now=0.0, committed=7)

    ((_, early),) = router.watermarks(0.5, 1.0, {SOURCE: 7}, None, all_inputs_drained=False)
    ((_, behind),) = router.watermarks(2.0, 1.0, {}, None, all_inputs_drained=False)
    ((_, quiet),) = router.watermarks(2.0, 1.0, {SOURCE: 7}, None, all_inputs_drained=False)

    assert (early.drained, early.end) == (False, -1)
    assert (behind.drained, behind.end) == (False, -1)
    assert (quiet.idle, quiet.drained, quiet.end) == (True, True, 7)


DRAINED_AT_7 = Progress(100, True, 100, True, end=7)


@pytest.mark.parametrize(
    ("ends", "trusted_drained"),
    [
        ({SOURCE: 7}, True),
        ({SOURCE: 8}, False),  # a record came after the report
        ({SOURCE: 6}, False),  # the log was cut below it (a topic made again, say)
        ({}, False),  # the broker did not say
    ],
    ids=["same end", "grown", "cut", "unknown"],
)
def test_a_drained_report_is_trusted_while_the_log_ends_where_it_did(
    ends: dict[str, int], trusted_drained: bool
) -> None:
    behind = Progress(50, False, 50, False)
    reported = {SOURCE: DRAINED_AT_7, "orders:0": behind}

    assert claiming_idle(reported) == [SOURCE]
    taken_back = DRAINED_AT_7._replace(idle=False, drained=False)
    assert trusted(reported, ends) == {
        SOURCE: DRAINED_AT_7 if trusted_drained else taken_back,
        "orders:0": behind,
    }


def test_a_drained_report_of_a_router_of_before_the_end_offsets_is_not_trusted() -> None:
    old = Progress(100, True, 100, True)
    assert not trusted({SOURCE: old}, {SOURCE: 0})[SOURCE].drained
