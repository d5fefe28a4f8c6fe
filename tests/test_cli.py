"""`refund-processor` as a user runs it: a subprocess, files, exit codes, stdout."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.factories import order_placed, scan, shipped


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_replay_writes_refunds_decisions_and_dead_letters(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text(
        "\n".join(
            [
                json.dumps(order_placed()),
                json.dumps(shipped()),
                "{broken",
                "",
                json.dumps(scan("rto_delivered")),
            ]
        )
        + "\n"
    )

    result = _cli("replay", str(history))

    assert result.returncode == 0, result.stderr
    outputs = _lines(result.stdout)
    assert [o["type"] for o in outputs] == ["dead_letter", "refund_command", "decision"]
    dead, refund, decision = outputs
    assert (dead["reason"], dead["origin"], dead["payload"]) == (
        "invalid_json",
        f"{history}:3",
        "{broken",
    )
    assert (refund["reason"], refund["amount_minor"], refund["currency"]) == (
        "rto_delivered",
        5000,
        "USD",
    )
    assert decision["command_id"] == refund["command_id"]


def test_replay_now_fires_deadlines_after_the_last_event(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps(order_placed()) + "\n" + json.dumps(shipped()) + "\n")

    without = _lines(_cli("replay", str(history)).stdout)
    with_now = _lines(_cli("replay", str(history), "--now", "2026-04-01T00:00:00Z").stdout)

    assert without == []
    assert [(o["type"], o.get("reason")) for o in with_now] == [
        ("refund_command", "lost"),
        ("decision", None),
    ]
    assert with_now[0]["decided_at"] == "2026-03-22T10:00:00.000Z"


def test_replay_of_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    result = _cli("replay", str(tmp_path / "nope.jsonl"))

    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "nope.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_rejects_a_zone_less_now(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text("")

    result = _cli("replay", str(history), "--now", "2026-04-01T00:00:00")

    assert result.returncode == 2
    assert "needs a zone" in result.stderr


def test_replay_names_a_bad_policy_key(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text("")
    policy = tmp_path / "policy.yaml"
    policy.write_text("policy_version: x\nlost_after_days: -3\n")

    result = _cli("replay", str(history), "--policy", str(policy))

    assert result.returncode == 2
    assert "lost_after_days" in result.stderr
