"""An order task decides routed events in event time and never commits past an undecided one."""

import json

from processor.config import load_policy
from processor.events import Event, parse_event_json, to_millis
from processor.order_task import OrderTask, RoutedEvent
from processor.store import InMemoryStore
from tests.factories import T0, at, order_placed

SOURCE = "orders:0"


def placed(order_id: str, days: float) -> RoutedEvent:
    event: Event = parse_event_json(json.dumps(order_placed(order_id, when=at(days))))
    return event, f"orders/0/{order_id}", 0


def day(days: float) -> int:
    return to_millis(T0) + int(days * 86_400_000)


def make_task() -> OrderTask:
    return OrderTask(InMemoryStore(), load_policy(), frozenset({SOURCE}))


def decide_up_to(task: OrderTask, offset: int, days: float) -> list[str]:
    task.receive_watermark(offset, SOURCE, day(days), idle=False)
    ready = task.take_ready()
    task.release()
    return ready


def test_a_record_is_committed_past_only_once_all_its_events_are_decided() -> None:
    task = make_task()
    task.receive(5, [placed("o1", 1), placed("o2", 3)])
    task.receive(6, [placed("o3", 2)])
    assert task.commit_offset() == 5

    assert decide_up_to(task, 7, 2) == ["o1", "o3"], "in event time, across records"
    assert task.commit_offset() == 5, "o2 of record 5 is still buffered"

    assert decide_up_to(task, 8, 4) == ["o2"]
    assert task.commit_offset() == 9, "everything decided: past the last watermark"


def test_events_of_one_time_are_decided_in_the_order_they_were_routed() -> None:
    task = make_task()
    task.receive(1, [placed("o2", 1), placed("o1", 1)])
    task.receive(2, [placed("o0", 1)])

    assert decide_up_to(task, 3, 1) == ["o2", "o1", "o0"]


def test_a_record_without_events_holds_nothing_back() -> None:
    task = make_task()
    task.receive(1, [])

    assert task.commit_offset() == 2
