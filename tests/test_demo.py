"""`refund-processor demo` end to end, and its notion of "caught up".

The end-to-end tests run the demo on the session's Kafka and Redis (it must accept given
ones) and check its summary against the offline replay of the same history, and that
the run leaves nothing behind: no thread, no child process, none of its topics, consumer
group or Redis keys. The CLI tests let it start its own Kafka and Redis, once to the end
and once interrupted with Ctrl-C, and look for anything it left running.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from rich.console import Console

from processor.config import load_policy
from processor.demo import (
    DemoError,
    DemoOptions,
    DemoReport,
    Observation,
    decided,
    render_report,
    routed_watermark,
    run_demo,
)
from processor.generate import generate_history
from processor.localstack import free_port
from processor.localstack.kafka import KafkaAdmin
from processor.outputs import output_to_dict
from processor.replay import replay
from processor.router import Progress
from processor.store import Timer
from processor.summary import Summary, format_minor, summarize
from tests.console import ctrl_c_as_in_a_terminal
from tests.live import await_condition

ORDERS = "o"
TRACKING = "t"
ENDS = {(ORDERS, 0): 10, (ORDERS, 1): 5, (TRACKING, 0): 0}


def _observation(
    committed: dict[tuple[str, int], int],
    sources: dict[str, tuple[int, bool]],
    clocks: dict[int, int | None] | None = None,
) -> Observation:
    """`sources`: (watermark, idle) per partition, nothing pending (routed = watermark)."""
    progress = {name: Progress(at, idle, at, idle) for name, (at, idle) in sources.items()}
    return Observation(committed, progress, clocks or {})


ALL_IDLE = {"o:0": (5_000, True), "o:1": (9_000, True), "t:0": (0, True)}
ROUTED = {(ORDERS, 0): 10, (ORDERS, 1): 5}  # t:0 is empty: nothing ever committed


def test_routing_is_done_when_every_input_is_committed_to_its_end_and_idle() -> None:
    assert routed_watermark(_observation(ROUTED, ALL_IDLE), ENDS) == 9_000


@pytest.mark.parametrize(
    ("committed", "sources"),
    [
        ({(ORDERS, 0): 10, (ORDERS, 1): 4}, ALL_IDLE),
        ({(ORDERS, 0): 10}, ALL_IDLE),
        (ROUTED, ALL_IDLE | {"o:1": (9_000, False)}),
        (ROUTED, {"o:0": (5_000, True), "o:1": (9_000, True)}),
    ],
    ids=["a record not committed", "a partition not committed", "not idle", "not reported"],
)
def test_routing_is_not_done(
    committed: dict[tuple[str, int], int], sources: dict[str, tuple[int, bool]]
) -> None:
    assert routed_watermark(_observation(committed, sources), ENDS) is None


def test_deciding_is_done_when_every_task_passed_the_mark_and_reached_the_clock() -> None:
    mark = {0: 40, 1: 30}
    done = _observation({("in", 0): 41, ("in", 1): 30}, {}, {0: 100, 1: 120})

    assert decided(done, "in", mark, clock_target=100)
    assert not decided(done, "in", mark, clock_target=101)
    behind = _observation({("in", 0): 41, ("in", 1): 29}, {}, {0: 100, 1: 120})
    assert not decided(behind, "in", mark, clock_target=100)
    unclaimed = _observation({("in", 0): 41, ("in", 1): 30}, {}, {0: 100, 1: None})
    assert not decided(unclaimed, "in", mark, clock_target=100)


def _children() -> set[int]:
    """PIDs of this process's children (the session's Kafka and Redis among them)."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


def _expected(orders: int, seed: int) -> Summary:
    lines = generate_history(orders, seed)
    return summarize(output_to_dict(o) for o in replay(lines, "history.jsonl", load_policy()))


@pytest.mark.parametrize("instances", [1, 2])
def test_demo_summarises_what_the_replay_decides_and_leaves_nothing_behind(
    kafka_bootstrap: str, redis_url: str, admin: KafkaAdmin, instances: int
) -> None:
    children = _children()
    out = io.StringIO()
    options = DemoOptions(
        orders=200,
        seed=5,
        instances=instances,
        bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
    )

    report = run_demo(options, out, Console(file=io.StringIO()))

    expected = _expected(200, seed=5)
    assert sum(expected.refund_keys.values()) > 20
    assert report.live.refund_keys == expected.refund_keys  # same ids, amounts, none twice
    assert report.live.refund_totals() == expected.refund_totals()
    assert report.live.reships == expected.reships
    assert report.live.denials == expected.denials
    assert report.live.anomalies == expected.anomalies
    assert report.live.dead_letters.total() == expected.dead_letters.total()
    text = out.getvalue()
    assert "live == replay: yes" in text
    for currency, total in expected.refund_totals().items():
        amount = re.escape(format_minor(total.amount_minor, currency))
        assert re.search(rf"total\W+{currency}\W+{total.count}\W+{amount}", text), text
    assert re.search(
        r"metrics: were served at http://127\.0\.0\.1:\d+/metrics during the run", text
    )
    # Written to a pipe, as here, Rich wraps at 80 columns: the command must stay whole.
    hint = next(line for line in text.splitlines() if line.startswith("Why, for one order"))
    assert hint.endswith("uv run refund-processor explain ORDER_ID --from demo.jsonl"), text

    app = report.application_id
    assert not [t for t in threading.enumerate() if t.name.startswith("demo-instance")]
    assert _children() == children
    await_condition(
        lambda: not [t for t in admin.client.list_topics(timeout=30).topics if app in t],
        60,
        f"the topics of {app} are deleted",
    )
    groups = admin.client.list_consumer_groups(request_timeout=30).result().valid
    assert app not in {group.group_id for group in groups}
    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter(match=f"*{app}*"))
    finally:
        client.close()


def test_the_summary_says_which_timers_are_still_pending() -> None:
    day = 86_400_000
    start = 1_780_000_000_000  # 2026-05-28
    report_lines = render_report(
        _report(
            pending=[
                Timer(start + day, "order:o1", "deadline:p1"),
                Timer(start + 3 * day, "order:o2", "deadline:p2"),
                Timer(start + 2 * day, "order:o3", "expire-held"),
            ],
            clock=start,
        )
    )
    text = "\n".join(str(line) for line in report_lines if isinstance(line, str))

    assert "Pending: 3 timers" in text
    assert "2 lost-package deadlines due 2026-05-29 to 2026-05-31" in text
    assert "1 held-event expiry due 2026-05-30 to 2026-05-30" in text
    assert "clock reached 2026-05-28" in text


def _report(pending: list[Timer], clock: int) -> DemoReport:
    return DemoReport(
        options=DemoOptions(),
        application_id="demo-test",
        events=10,
        malformed=0,
        seconds=1.0,
        idle_wait_s=2.0,
        clock=clock,
        live=Summary(),
        replay=Summary(),
        pending=pending,
        metrics_url=None,
    )


def _processes_in(directory: Path) -> list[str]:
    """Processes whose working directory is in `directory` (local services run there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:  # not a process, gone, or not ours to look at
            continue
        if cwd.startswith(str(directory)):
            found.append(f"{proc.name} in {cwd}")
    return found


@pytest.mark.parametrize("interrupted", [False, True], ids=["to the end", "ctrl-c"])
def test_demo_stops_the_kafka_and_redis_it_started(tmp_path: Path, interrupted: bool) -> None:
    temp = tmp_path / "temp"  # the demo's TMPDIR: its services' directories are made there
    temp.mkdir()
    given = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "REFUND_CONFIG")
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in given and not name.startswith(("REFUND_KAFKA__", "REFUND_REDIS__"))
    } | {"TMPDIR": str(temp)}
    log = tmp_path / "stderr.log"
    orders = "2000" if interrupted else "30"
    with log.open("wb") as stderr, ctrl_c_as_in_a_terminal():
        demo = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "demo", "--orders", orders],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    try:
        if interrupted:
            await_condition(
                lambda: demo.poll() is not None or "processing with" in log.read_text(),
                300,
                "the demo starts processing",
            )
            os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        stdout, _ = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()

    if interrupted:
        assert demo.returncode == 130, log.read_text()
    else:
        assert demo.returncode == 0, log.read_text()
        assert b"live == replay: yes" in stdout
    assert "nothing left running" in log.read_text()
    assert list(temp.iterdir()) == []
    assert _processes_in(temp) == []


def test_demo_names_the_service_it_cannot_reach(kafka_bootstrap: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    options = DemoOptions(orders=10, bootstrap_servers=kafka_bootstrap, redis_url=closed)

    with pytest.raises(DemoError, match=f"cannot reach Redis at {closed} \\(from --redis-url\\)"):
        run_demo(options, io.StringIO(), Console(file=io.StringIO()))


def test_demo_says_which_variable_named_the_service_it_cannot_reach(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`localstack up` exports REDIS_URL, and `localstack down` does not unset it: a
    demo run after that is sent to a Redis that is gone, and should say why it went there."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    for name in ("REFUND_CONFIG", "REFUND_REDIS__URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", closed)
    options = DemoOptions(orders=10, bootstrap_servers=kafka_bootstrap)

    with pytest.raises(DemoError, match=f"cannot reach Redis at {closed} \\(from \\$REDIS_URL\\)"):
        run_demo(options, io.StringIO(), Console(file=io.StringIO()))


def test_demo_refuses_a_bad_count_before_starting_anything() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor.cli", "demo", "--orders", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "--orders must be at least 1" in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--redis-url", "redis://:DEMOPW@127.0.0.1:1/0"], {}),
        ([], {"REDIS_URL": "redis://127.0.0.1:1/0?password=DEMOPW"}),
    ],
    ids=["flag", "environment"],
)
def test_demo_refuses_a_password_in_the_redis_url_and_never_shows_it(
    args: list[str], env: dict[str, str]
) -> None:
    given = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "REFUND_CONFIG")
    clean = {
        name: value
        for name, value in os.environ.items()
        if name not in given and not name.startswith(("REFUND_KAFKA__", "REFUND_REDIS__"))
    }
    demo = [sys.executable, "-m", "processor.cli", "demo", "--bootstrap-servers", "127.0.0.1:1"]
    result = subprocess.run(
        [*demo, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean | env,
    )

    assert "DEMOPW" not in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr
    assert "redis.url: Value error, put the password in redis.password" in result.stderr
