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
from processor.router import (
    NOT_IDLE,
    Inbound,
    Progress,
    Router,
    TrackingIndex,
    all_drained,
    claiming_idle,
    combined_watermark,
    expiry_progress,
    rests_on,
    trusted,
)
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


def test_a_pending_update_is_retried_and_routed_once_its_shipment_is_linked(
    index: TrackingIndex,
) -> None:
    """Retried before the batch's own events, so it stays ahead of what came after it."""
    router = Router(index, load_policy())
    router.route([unresolved(4)], 0.0, progress=None)
    assert router.pending() == 1

    result = router.route([inbound(5, shipped("p1"))], 1.0, progress=None)

    assert [(order_id, item.origin) for order_id, item in result.routed] == [
        ("o1", "tracking/0/4"),
        ("o1", "tracking/0/5"),
    ]
    assert router.pending() == 0
    (commit,) = router.commit_offsets().values()
    assert commit.offset == 6


def test_the_oldest_pending_update_holds_the_offset_and_the_watermark(
    index: TrackingIndex,
) -> None:
    """Offsets and event times of pending updates need not run together: the offset is
    held at the lowest one, the watermark below the oldest in event time."""
    router = Router(index, load_policy())
    router.route([unresolved(3, days=2), unresolved(5, days=1)], 0.0, progress=None)
    oldest = unresolved(5, days=1).event.at

    (commit,) = router.commit_offsets().values()
    assert (commit.offset, commit.watermark) == (3, oldest - 1)
    ((_, report),) = router.watermarks(0.0, 1.0, {}, None, all_inputs_drained=False)
    assert report.watermark == oldest - 1


def test_a_pending_update_expires_once_the_replays_clock_is_orphan_ttl_past_it(
    index: TrackingIndex,
) -> None:
    """As the replay: expired when the clock (progress less allowed_lateness) reaches
    occurred_at + orphan_ttl, not a millisecond before."""
    policy = load_policy()
    router = Router(index, policy)
    update = unresolved(4, days=1)
    due = update.event.at + policy.orphan_ttl_ms + policy.allowed_lateness_ms
    router.route([update], 0.0, progress=None)

    assert router.route([], 1.0, progress=due - 1).dead_letters == []
    assert router.pending() == 1
    assert [item.origin for item, _ in router.route([], 2.0, progress=due).dead_letters] == [
        "tracking/0/4"
    ]


def test_a_sources_watermark_never_moves_back_on_an_older_event(index: TrackingIndex) -> None:
    router = Router(index, load_policy())
    newer = inbound(1, scan("in_transit", "TN-p9", order_id="o9", when=at(5)))
    router.route([newer], 0.0, progress=None)
    router.route([inbound(2, scan("in_transit", "TN-p9", order_id="o9", when=at(2)))], 0.0, None)

    ((_, report),) = router.watermarks(0.0, 1.0, {}, None, all_inputs_drained=False)
    assert (report.watermark, report.routed) == (newer.event.at, newer.event.at)
    (commit,) = router.commit_offsets().values()
    assert (commit.offset, commit.watermark) == (3, newer.event.at)


def test_a_source_taken_over_reports_the_watermark_committed_with_its_offset(
    index: TrackingIndex,
) -> None:
    router = Router(index, load_policy())
    router.assign(SOURCE, 0.0, committed=7, watermark=12_345, handled=7)

    ((_, report),) = router.watermarks(0.0, 1.0, {}, None, all_inputs_drained=False)
    assert (report.watermark, report.routed) == (12_345, 12_345)
    assert router.position(SOURCE) == 7
    assert router.commit_offsets()[SOURCE] == (7, 12_345, 7), "nothing read: as committed"


def test_a_revoked_source_is_neither_reported_nor_committed(index: TrackingIndex) -> None:
    router = Router(index, load_policy())
    router.assign(SOURCE, 0.0, committed=7, watermark=12_345, handled=7)
    router.assign("orders:0", 0.0, committed=3)

    router.revoke(SOURCE)

    assert list(router.commit_offsets()) == ["orders:0"]
    assert [name for name, _ in router.watermarks(0.0, 1.0, {}, None, False)] == ["orders:0"]
    assert router.position(SOURCE) is None


def test_a_source_is_quiet_only_for_the_wait_after_its_last_record(index: TrackingIndex) -> None:
    router = Router(index, load_policy())
    router.assign(SOURCE, now=0.0, committed=7)
    router.route([inbound(7, shipped("p1"))], 5.0, progress=None)

    ((_, busy),) = router.watermarks(5.5, 1.0, {SOURCE: 8}, None, all_inputs_drained=False)
    ((_, quiet),) = router.watermarks(6.5, 1.0, {SOURCE: 8}, None, all_inputs_drained=False)
    assert (busy.drained, busy.idle) == (False, False)
    assert (quiet.drained, quiet.idle, quiet.end) == (True, True, 8)


def test_a_record_skipped_below_the_position_does_not_move_it_back(index: TrackingIndex) -> None:
    """A bad record read again behind a held offset is skipped, not dead-lettered again:
    the records after it were routed already."""
    router = Router(index, load_policy())
    router.route([inbound(5, shipped("p1"))], 0.0, progress=None)
    router.skip(SOURCE, 3, 0.0)

    assert router.position(SOURCE) == 6
    assert router.commit_offsets()[SOURCE].offset == 6


def test_a_drained_source_holding_a_pending_update_is_not_reported_idle(
    index: TrackingIndex,
) -> None:
    """Drained (so its end is asked, for expiries and `all_drained`), but not idle: a task
    leaving it out would let its clock pass the update."""
    router = Router(index, load_policy())
    router.route([unresolved(4, days=1)], 0.0, progress=None)
    held = unresolved(4, days=1).event.at - 1

    ((_, report),) = router.watermarks(2.0, 1.0, {SOURCE: 5}, None, all_inputs_drained=False)

    assert (report.watermark, report.idle, report.drained, report.end) == (held, False, True, 5)
    assert report.idle_end == NOT_IDLE, "the watermark record a task reads says not idle"
    assert claiming_idle({SOURCE: report}) == [SOURCE]


@pytest.mark.parametrize(
    ("end", "log_end", "rests"),
    [(0, 0, True), (7, 7, True), (7, None, False), (NOT_IDLE, NOT_IDLE, False)],
    ids=["empty log", "same end", "unknown", "no claim"],
)
def test_a_claim_rests_on_the_end_it_was_made_at(
    end: int, log_end: int | None, rests: bool
) -> None:
    assert rests_on(end, log_end) is rests


def test_the_combined_watermark_is_the_slowest_active_input_or_when_all_are_idle_the_newest() -> (
    None
):
    sources = ["a", "b", "c"]
    assert combined_watermark(sources, {"a": (10, False), "b": (30, True), "c": (20, False)}) == 10
    assert combined_watermark(sources, {"a": (10, True), "b": (30, True), "c": (20, True)}) == 30


def test_expiry_progress_ignores_holds_and_leaves_drained_inputs_out() -> None:
    reported = {
        "a": Progress(10, False, 30, True, end=7),  # drained, holding a pending update
        "b": Progress(40, False, 50, False),  # holding at 40, routed to 50
    }
    assert expiry_progress(["a", "b"], reported) == 50


def test_all_inputs_are_drained_only_when_each_has_reported_drained() -> None:
    drained = Progress(10, True, 10, True, end=7)
    assert all_drained(["a", "b"], {"a": drained, "b": drained})
    assert not all_drained(["a", "b"], {"a": drained})
    assert not all_drained(["a", "b"], {"a": drained, "b": Progress(10, False, 10, False)})
