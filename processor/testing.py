"""An in-process test driver, in the spirit of Kafka Streams' TopologyTestDriver.

Pipe events (dicts or JSON lines), advance the event-time clock, read what came out,
inspect an order's state. It runs the real engine over a real store: tests of the
rules go through exactly the code the replay and the live processor use. A piped event
is decided at once, in the order piped, as one input partition's would be; the file
replay (`processor.replay.replay`) first puts a file's events in event-time order.
"""

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from processor.config import PolicyConfig, load_policy
from processor.events import to_millis
from processor.outputs import DeadLetter, Decision, Output, RefundCommand, ReshipCommand
from processor.policy import timers
from processor.replay import OfflineProcessor
from processor.state import OrderState
from processor.store import StateStore

_O = TypeVar("_O", RefundCommand, ReshipCommand, Decision, DeadLetter)


class TestDriver:
    __test__ = False  # not a pytest test class

    def __init__(self, config: PolicyConfig | None = None, store: StateStore | None = None) -> None:
        self.config = config or load_policy()
        self._processor = OfflineProcessor(self.config, store)
        self._outputs: list[Output] = []
        self._piped = 0

    def pipe(self, event: Mapping[str, Any] | str, origin: str | None = None) -> list[Output]:
        """Feeds one event (a dict in the JSON form, or a raw line); returns its outputs.
        `origin`: where it was read, by default a new place (`test:<n>`); an earlier one
        (a dead letter's, say) reads that record again, as after a rewind or a crash."""
        self._piped += 1
        line = event if isinstance(event, str) else json.dumps(event)
        outputs = self._processor.feed(line, origin or f"test:{self._piped}")
        self._outputs.extend(outputs)
        return outputs

    def advance_to(self, moment: datetime | str) -> list[Output]:
        """Moves the clock to `moment` (no lateness subtracted), firing due timers."""
        when = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
        outputs = self._processor.advance_to(to_millis(when))
        self._outputs.extend(outputs)
        return outputs

    def outputs(self) -> list[Output]:
        return list(self._outputs)

    def read(self, kind: type[_O]) -> list[_O]:
        return [o for o in self._outputs if isinstance(o, kind)]

    def refunds(self) -> list[RefundCommand]:
        return self.read(RefundCommand)

    def decisions(self) -> list[Decision]:
        return self.read(Decision)

    def dead_letters(self) -> list[DeadLetter]:
        return self.read(DeadLetter)

    def order(self, order_id: str) -> OrderState | None:
        return self._processor.store.load_order(order_id)

    def timers(self, order_id: str) -> dict[str, int]:
        state = self.order(order_id)
        return timers(state, self.config) if state is not None else {}

    def clock(self) -> int | None:
        return self._processor.store.get_clock()
