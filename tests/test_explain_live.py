"""`explain` against the live processor (processor/explain_live.py): a real broker, Redis and
`refund-processor run`. Once the processor has caught up, an order's explanation from
Redis and the decision topic must say what the offline replay's says of the same order."""

import functools
import json
import subprocess
import sys
from collections import defaultdict

import pytest
from confluent_kafka import Producer, TopicPartition

from processor.config import load_policy
from processor.events import (
    Event,
    InvalidEventError,
    event_to_dict,
    parse_event_json,
    to_millis,
)
from processor.explain import UnknownOrderError, explain_history, to_json
from processor.explain_live import ExplainError, explain_live
from processor.generate import generate_history
from processor.outputs import Decision
from processor.replay import replay
from processor.serde import Serde
from tests.console import run_cli
from tests.factories import T0, at, cancellation_requested, claim_filed, order_placed, shipped
from tests.live import LiveHarness, await_condition, expected_refunds

DAY_MS = 86_400_000
GHOST = "o-ghost"
#: What `explain` says of the value of a dead letter of 16 bytes of junk.
NOTE = "16 bytes that hold no valid event (the reason says why)"


def _cli(live: LiveHarness, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("explain", *args, env=live.env)


def _history() -> tuple[list[str], str, str, str]:
    """A generated history plus one order whose package is still on its way at the end,
    and a claim for an order never placed (`GHOST`, dead-lettered `orphan_ttl` later);
    returns the lines and three orders: refunded, denied, with a pending deadline.

    The refunded and denied orders are settled long before the history ends, and their
    refunds are not `lost`/`late_delivery` (the one difference SPEC section 6 allows
    between the replay and the live processor).
    """
    lines = generate_history(60, seed=3)
    last = max(event.at for event in _events(lines))
    days = (last - to_millis(T0)) / DAY_MS
    lines += [
        json.dumps(order_placed("o-pending", when=at(days - 2), event_id="o-pending-placed")),
        json.dumps(shipped("p-pending", order_id="o-pending", when=at(days - 1))),
    ]
    lines.insert(0, json.dumps(claim_filed("damaged", "c", order_id=GHOST, event_id=GHOST)))
    decisions: dict[str, list[Decision]] = defaultdict(list)
    for output in replay(lines, "history.jsonl", load_policy()):
        if isinstance(output, Decision):
            decisions[output.order_id].append(output)
    settled = {
        order_id: found
        for order_id, found in decisions.items()
        if max(d.decided_at for d in found) < last - 10 * DAY_MS
        and not {d.code for d in found} & {"lost", "late_delivery"}
    }
    refunded = min(o for o, found in settled.items() if any(d.amount_minor for d in found))
    denied = min(o for o, found in settled.items() if {d.outcome for d in found} == {"denied"})
    return lines, refunded, denied, "o-pending"


def _events(lines: list[str]) -> list[Event]:
    events = []
    for line in lines:
        try:
            events.append(parse_event_json(line))
        except InvalidEventError:
            continue
    return events


def test_a_live_explanation_says_what_the_replay_says(live: LiveHarness) -> None:
    lines, refunded, denied, pending = _history()
    config = load_policy()
    offline = {
        o: explain_history(lines, "history.jsonl", o, config) for o in (refunded, denied, pending)
    }
    assert offline[pending].timers, "the pending order's deadline is still ahead at the end"
    offline_ghost = explain_history(lines, "history.jsonl", GHOST, config)
    live.publish(lines)
    live.start()
    live.read_refunds_until(expected_refunds(lines), timeout_s=180)

    def decisions_agree(order_id: str) -> bool:
        try:
            explanation = explain_live(live.settings, order_id, config)
        except (UnknownOrderError, ExplainError):
            return False
        return [d.decision for d in explanation.decisions] == [
            d.decision for d in offline[order_id].decisions
        ] and explanation.state == offline[order_id].state

    for order_id in (refunded, denied, pending):
        await_condition(
            functools.partial(decisions_agree, order_id),
            120,
            f"the live decisions and state of {order_id} equal the replay's",
        )

    for order_id in (refunded, denied, pending):
        result = _cli(live, order_id, "--json")
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        want = to_json(offline[order_id])
        assert (got["mode"], got["order_id"]) == ("live", order_id)
        for key in ("order", "ledger", "packages", "claims", "cancellation", "timers"):
            assert got[key] == want[key], key
        assert [{k: v for k, v in d.items() if k != "source"} for d in got["decisions"]] == [
            {k: v for k, v in d.items() if k != "source"} for d in want["decisions"]
        ]
        decisions_topic = live.topics["decisions"]
        assert all(d["source"].startswith(f"{decisions_topic}/") for d in got["decisions"])
        assert {e["source"] for e in got["timeline"] if e["kind"] == "fact"} == {"state"}
        assert got["clock"] is not None

    refund = next(d for d in to_json(offline[refunded])["decisions"] if d["amount_minor"])
    text = _cli(live, refunded).stdout
    assert f"Order {refunded}: merchant" in text
    assert "Explained from the live state in Redis task " in text
    assert f"{refund['amount_minor']} {refund['currency']}" in text
    assert "deadline:p-pending" in _cli(live, pending).stdout

    # Decisions older than the topic's retention are gone, and the explanation says so.
    kept = explain_live(live.settings, refunded, config)
    topic, partition, offset = kept.decisions[0].source.rsplit("/", 2)
    deletion = live.admin.client.delete_records(
        [TopicPartition(topic, int(partition), int(offset) + 1)]
    )
    for future in deletion.values():
        future.result()
    trimmed = explain_live(live.settings, refunded, config)
    assert f"records below offset {int(offset) + 1} are deleted" in trimmed.origin
    assert trimmed.decisions == kept.decisions[1:]

    # An event the policy dead-lettered is read back from the dead-letter topic.
    def ghost_dead_lettered() -> bool:
        try:
            return bool(explain_live(live.settings, GHOST, config).dead_letters)
        except UnknownOrderError:
            return False

    await_condition(ghost_dead_lettered, 60, f"the claim for {GHOST} is dead-lettered")
    ghost = explain_live(live.settings, GHOST, config)
    (dead,) = ghost.dead_letters
    assert (dead.dead.reason, dead.dead.key) == ("unknown_order", GHOST)
    assert dead.source.startswith(f"{live.topics['dlq']}/")
    assert dead.dead.origin.startswith(f"{live.topics['orders']}/")
    assert [(e.what, e.event_id, e.source) for e in ghost.timeline if e.kind == "event"] == [
        ("claim_filed", GHOST, dead.dead.origin)
    ]
    assert [d.dead.reason for d in offline_ghost.dead_letters] == ["unknown_order"]
    assert "unknown_order: no order arrived within orphan_ttl" in _cli(live, GHOST).stdout

    unknown = _cli(live, "o-never-placed")
    assert unknown.returncode == 2
    assert "order 'o-never-placed' is unknown" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    live.stop_all()
    live.assert_none_failed()


def test_each_dead_letter_shows_the_event_to_publish_again(live: LiveHarness) -> None:
    """What an operator sends again (docs/live.md, "Sending dead letters again"): each
    dead letter's event as the JSON line `publish` takes, whether the policy wrote it as
    JSON or the runner kept its input's Avro; bytes that hold no event are said to."""
    unknown_sku = shipped("p1", {"NOPE": 1}, event_id="o1-ship-nope")
    live.publish([json.dumps(order_placed("o1")), json.dumps(unknown_sku)])
    future = parse_event_json(
        json.dumps(cancellation_requested(when="9999-01-01T00:00:00Z", event_id="o1-future"))
    )
    orders = live.topics["orders"]
    producer = Producer(live.settings.kafka.producer_config())
    avro = Serde.single_object().encode(future.type, event_to_dict(future), orders)
    producer.produce(orders, key=b"o1", value=avro)
    producer.produce(orders, key=b"o1", value=b"\xffnot avro at all")
    assert producer.flush(30) == 0
    live.start()

    def three_dead_letters() -> bool:
        try:
            return len(explain_live(live.settings, "o1", load_policy()).dead_letters) == 3
        except (UnknownOrderError, ExplainError):
            return False

    await_condition(three_dead_letters, 120, "o1's three inputs are dead-lettered")
    result = _cli(live, "o1", "--json")
    assert result.returncode == 0, result.stderr
    dead = {d["reason"]: d for d in json.loads(result.stdout)["dead_letters"]}
    assert set(dead) == {"unknown_sku", "occurred_in_future", "bad_magic"}
    assert parse_event_json(dead["unknown_sku"]["value"]) == parse_event_json(
        json.dumps(unknown_sku)
    )
    assert parse_event_json(dead["occurred_in_future"]["value"]) == future
    assert dead["bad_magic"]["value"] is None
    assert dead["bad_magic"]["value_note"] == NOTE
    assert all(d["value_note"] is None for d in (dead["unknown_sku"], dead["occurred_in_future"]))
    text = _cli(live, "o1").stdout
    assert f"      value: {dead['unknown_sku']['value']}\n" in text
    assert f"      value: none, {NOTE}\n" in text
    live.stop_all()
    live.assert_none_failed()


def test_explaining_before_the_processor_ever_ran_names_the_missing_topic(
    live: LiveHarness,
) -> None:
    result = _cli(live, "o1")

    assert result.returncode == 2
    assert "cannot explain order 'o1'" in result.stderr
    assert f"topic '{live.settings.by_order_topic}' does not exist" in result.stderr


@pytest.mark.parametrize("what", ["kafka", "redis"])
def test_an_unreachable_store_is_a_clear_error(live: LiveHarness, what: str) -> None:
    live.start()
    live.partitions(live.settings.by_order_topic)
    if what == "kafka":
        env = {"REFUND_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
        expected = "cannot read Kafka at 127.0.0.1:1"
    else:
        env = {"REFUND_REDIS__URL": "redis://127.0.0.1:1/0"}
        expected = "cannot read Redis at redis://127.0.0.1:1/0"
    result = subprocess.run(
        [sys.executable, "-m", "processor.cli", "explain", "o1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=live.env | env,
    )

    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    live.stop_all()
