"""An order task decides routed events in event time and never commits past an undecided one."""

import json

from hypothesis import given
from hypothesis import strategies as st

from processor.config import load_policy
from processor.events import Event, parse_event_json
from processor.order_task import DirectEvent, OrderTask, RoutedEvent
from processor.router import NOT_IDLE
from processor.store import InMemoryStore
from tests.factories import at, at_ms, order_placed

SOURCE = "orders:0"


def placed(order_id: str, days: float) -> RoutedEvent:
    event: Event = parse_event_json(json.dumps(order_placed(order_id, when=at(days))))
    return event, order_id, f"orders/0/{order_id}", 0


def make_task() -> OrderTask:
    return OrderTask(InMemoryStore(), load_policy(), frozenset({SOURCE}))


def decide_up_to(task: OrderTask, offset: int, days: float) -> list[str]:
    task.receive_watermark(offset, SOURCE, at_ms(days), idle_at_end=NOT_IDLE)
    ready = task.take_ready()
    task.release()
    return ready


def test_a_record_is_committed_past_only_once_all_its_events_are_decided() -> None:
    task = make_task()
    task.receive(5, [placed("o1", 1), placed("o2", 3)])
    task.receive(6, [placed("o3", 2)])
    assert task.commit_offset() == 5
    assert task.buffered() == 3

    assert decide_up_to(task, 7, 2) == ["o1", "o3"], "in event time, across records"
    assert task.commit_offset() == 5, "o2 of record 5 is still buffered"
    assert task.buffered() == 1

    assert decide_up_to(task, 8, 4) == ["o2"]
    assert task.commit_offset() == 9, "everything decided: past the last watermark"
    assert task.buffered() == 0


def test_events_of_one_time_are_decided_in_the_order_they_were_routed() -> None:
    task = make_task()
    task.receive(1, [placed("o2", 1), placed("o1", 1)])
    task.receive(2, [placed("o0", 1)])

    assert decide_up_to(task, 3, 1) == ["o2", "o1", "o0"]


def test_a_record_without_events_holds_nothing_back() -> None:
    task = make_task()
    task.receive(1, [])

    assert task.commit_offset() == 2


OTHER = "tracking:1"


def make_direct_task() -> OrderTask:
    """A task that `SOURCE` hands its events to directly; `OTHER` reaches it by records."""
    return OrderTask(
        InMemoryStore(), load_policy(), frozenset({SOURCE, OTHER}), frozenset({SOURCE})
    )


def handed(offset: int, order_id: str, days: float) -> DirectEvent:
    event, resolved, origin, arrived = placed(order_id, days)
    return event.at, event, resolved, origin, arrived, SOURCE, offset


def decide_direct_up_to(task: OrderTask, days: float) -> list[str]:
    """Both inputs at `days`: the direct one from the router, the other by a record."""
    task.receive_local_watermark(SOURCE, at_ms(days), idle_at_end=NOT_IDLE)
    task.receive_watermark(0, OTHER, at_ms(days), idle_at_end=NOT_IDLE)
    ready = task.take_ready()
    task.release()
    return ready


def test_a_direct_input_is_committed_only_up_to_its_oldest_undecided_event() -> None:
    task = make_direct_task()
    task.sync()
    task.receive_direct([handed(10, "o1", 1), handed(11, "o2", 3), handed(12, "o3", 2)])
    assert task.direct_commit_offset(SOURCE) == 10
    assert task.hold() == at_ms(1) - 1

    assert decide_direct_up_to(task, 2) == ["o1", "o3"]
    assert task.direct_commit_offset(SOURCE) == 11, "o2 at offset 11 is still buffered"
    assert task.hold() == at_ms(3) - 1

    assert decide_direct_up_to(task, 3) == ["o2"]
    assert task.direct_commit_offset(SOURCE) is None
    assert task.hold() is None


def test_an_update_handed_over_after_newer_ones_holds_its_older_offset() -> None:
    task = make_direct_task()
    task.sync()
    task.receive_direct([handed(20, "o1", 1)])
    task.receive_direct([handed(15, "o2", 2)])  # it was pending in the router
    assert task.direct_commit_offset(SOURCE) == 15

    assert decide_direct_up_to(task, 1) == ["o1"]
    assert task.direct_commit_offset(SOURCE) == 15


def test_local_watermarks_count_only_once_the_task_is_synced() -> None:
    task = make_direct_task()
    task.receive_direct([handed(1, "o1", 1)])
    task.receive_local_watermark(SOURCE, at_ms(5), idle_at_end=NOT_IDLE)
    task.receive_watermark(7, OTHER, at_ms(5), idle_at_end=NOT_IDLE)
    assert task.take_ready() == [], "records routed here before may still be unread"

    # A held report, read back:
    task.receive_watermark(8, SOURCE, at_ms(1) - 1, idle_at_end=NOT_IDLE)
    assert task.take_ready() == [], "the report read back holds the handed event"

    task.sync()
    assert task.take_ready() == ["o1"]


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 10)),
        min_size=1,
        max_size=40,
        unique_by=lambda e: e[0],
    ),
    st.lists(st.tuples(st.integers(1, 10), st.integers(0, 10)), max_size=6),
)
def test_a_direct_input_is_never_committed_past_an_undecided_event(
    events: list[tuple[int, int]], steps: list[tuple[int, int]]
) -> None:
    """Offsets handed over in any order, in several parts, decided in event time as the
    watermark moves between them: the offset to commit is always the smallest one not
    decided."""
    task = make_direct_task()
    task.sync()
    undecided: dict[str, int] = {}
    rest, watermark = events, 0
    for part, days in [*steps, (len(events), 10)]:
        handing, rest = rest[:part], rest[part:]
        task.receive_direct([handed(offset, f"o{offset}", at) for offset, at in handing])
        undecided |= {f"o{offset}": offset for offset, _ in handing}
        assert task.direct_commit_offset(SOURCE) == min(undecided.values(), default=None)
        watermark = max(watermark, days)
        for order_id in decide_direct_up_to(task, watermark):
            del undecided[order_id]
        assert task.direct_commit_offset(SOURCE) == min(undecided.values(), default=None)
        assert task.buffered() == len(undecided)
    assert not undecided, "the last step passes every event"


@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 6), max_size=8), st.integers(0, 6)),
        min_size=1,
        max_size=6,
    )
)
def test_events_are_decided_oldest_first_and_in_the_order_received_within_one_time(
    steps: list[tuple[list[int], int]],
) -> None:
    """Records of events at any times, each step followed by a watermark that may or may
    not pass them: every release takes what it passed, by time, then by arrival."""
    task = make_task()
    waiting: list[tuple[int, int, str]] = []  # (days, received as n-th, order id)
    received, watermark = 0, 0
    for offset, (days, step_watermark) in enumerate(steps):
        record = [(at, received + n, f"o{received + n}") for n, at in enumerate(days)]
        task.receive(offset, [placed(name, at) for at, _, name in record])
        waiting += record
        received += len(record)
        watermark = max(watermark, step_watermark)
        passed = sorted(item for item in waiting if item[0] <= watermark)
        waiting = [item for item in waiting if item[0] > watermark]

        assert decide_up_to(task, len(steps) + offset, watermark) == [name for *_, name in passed]
        assert task.buffered() == len(waiting)


def test_an_input_reported_idle_is_left_out_only_while_its_log_ends_where_the_report_says() -> None:
    """A report stands until its router reports again: the runner gives the inputs' end
    offsets, asked after the reports were read. Records that came since may wait in the
    input, or in this task's partition behind the report it read (found in review: a
    report trusted by the router's newer one let the clock pass them)."""
    task = OrderTask(InMemoryStore(), load_policy(), frozenset({SOURCE, OTHER}))
    task.receive_watermark(0, SOURCE, at_ms(5), idle_at_end=NOT_IDLE)
    task.receive_watermark(1, OTHER, at_ms(1), idle_at_end=40)
    assert task.idle_claims() == {OTHER}
    assert task.watermark() == at_ms(1)  # no end known yet

    task.trust_idle({OTHER: 40})
    assert task.watermark() == at_ms(5)

    task.trust_idle({OTHER: 52})  # records came after the report
    assert task.watermark() == at_ms(1)


def test_a_direct_inputs_idle_claim_comes_from_its_router_once_synced() -> None:
    """The local router's report of a direct input carries its idle claim too: the task
    asks for that input's end and leaves it out while the log ends there."""
    task = make_direct_task()
    task.sync()
    task.receive_local_watermark(SOURCE, at_ms(1), idle_at_end=40)
    task.receive_watermark(0, OTHER, at_ms(5), idle_at_end=NOT_IDLE)
    assert task.idle_claims() == {SOURCE}

    task.trust_idle({SOURCE: 40})
    assert task.watermark() == at_ms(5)


def test_an_input_idle_at_offset_0_is_left_out_like_any_other() -> None:
    """A partition nobody ever wrote to ends at offset 0: SPEC section 6, an empty
    partition must not stop timers."""
    task = OrderTask(InMemoryStore(), load_policy(), frozenset({SOURCE, OTHER}))
    task.receive_watermark(0, SOURCE, at_ms(5), idle_at_end=NOT_IDLE)
    task.receive_watermark(1, OTHER, 0, idle_at_end=0)
    assert task.idle_claims() == {OTHER}

    task.trust_idle({OTHER: 0})
    assert task.watermark() == at_ms(5)


def test_the_clock_trails_the_watermark_by_allowed_lateness() -> None:
    """SPEC section 6: the clock is the watermark less allowed_lateness, and timers due by
    then are what `clock_target` tells the store to prefetch."""
    task = make_task()
    lateness = load_policy().allowed_lateness_ms
    task.receive_watermark(0, SOURCE, at_ms(2), idle_at_end=NOT_IDLE)
    assert task.clock_target() == at_ms(2) - lateness

    task.take_ready()
    task.release()
    assert task.store.get_clock() == at_ms(2) - lateness


def test_release_tells_when_the_events_it_decided_arrived() -> None:
    task = make_task()
    event, order_id, origin, _ = placed("o1", 1)
    task.receive(0, [(event, order_id, origin, 1234)])

    decide_up_to(task, 1, 1)
    assert task.released_arrivals == [1234]
    decide_up_to(task, 2, 2)
    assert task.released_arrivals == [], "nothing decided this time"


def test_events_taken_and_not_released_yet_are_still_undecided() -> None:
    """Between `take_ready` and `release` (the store prefetches their state) the taken
    events hold the offset and the held watermark as the buffered ones do; and what two
    takes took, one release decides."""
    task = make_direct_task()
    task.sync()
    task.receive_direct([handed(10, "o1", 1), handed(11, "o2", 2), handed(12, "o3", 4)])
    task.receive_local_watermark(SOURCE, at_ms(2), idle_at_end=NOT_IDLE)
    task.receive_watermark(0, OTHER, at_ms(2), idle_at_end=NOT_IDLE)
    assert task.take_ready() == ["o1", "o2"]

    assert task.direct_commit_offset(SOURCE) == 10
    assert task.hold() == at_ms(1) - 1

    task.receive_local_watermark(SOURCE, at_ms(4), idle_at_end=NOT_IDLE)
    task.receive_watermark(1, OTHER, at_ms(4), idle_at_end=NOT_IDLE)
    assert task.take_ready() == ["o3"]
    task.release()
    assert len(task.released_arrivals) == 3
    assert (task.direct_commit_offset(SOURCE), task.hold(), task.buffered()) == (None, None, 0)


def test_direct_events_leave_the_internal_topics_offset_alone() -> None:
    task = make_direct_task()
    task.sync()
    task.receive(5, [])
    task.receive_direct([handed(10, "o1", 1)])

    assert task.commit_offset() == 6
    assert task.direct_commit_offset(SOURCE) == 10


def test_a_task_no_input_has_reported_to_yet_decides_nothing_and_keeps_its_clock() -> None:
    task = make_task()
    task.receive(0, [placed("o1", 1)])

    assert task.take_ready() == []
    assert task.release() == []
    assert task.store.get_clock() is None
    assert task.buffered() == 1
