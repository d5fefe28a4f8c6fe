"""`refund-processor` as a user runs it: a subprocess, files, exit codes, stdout."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.console import ctrl_c_as_in_a_terminal, run_cli
from tests.factories import order_placed, scan, shipped


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

    result = run_cli("replay", str(history))

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

    without = _lines(run_cli("replay", str(history)).stdout)
    with_now = _lines(run_cli("replay", str(history), "--now", "2026-04-01T00:00:00Z").stdout)

    assert without == []
    assert [(o["type"], o.get("reason")) for o in with_now] == [
        ("refund_command", "lost"),
        ("decision", None),
    ]
    assert with_now[0]["decided_at"] == "2026-03-22T10:00:00.000Z"


def test_replay_dead_letters_an_event_dated_in_the_future_and_fires_nothing(
    tmp_path: Path,
) -> None:
    """One stray date must not move the clock past every deadline: the package in flight
    would be refunded as lost, 100% and the fee."""
    history = tmp_path / "history.jsonl"
    from_the_future = order_placed("o-other") | {"occurred_at": "9999-12-31T00:00:00Z"}
    history.write_text(
        "\n".join(json.dumps(e) for e in [order_placed(), shipped(), from_the_future]) + "\n"
    )

    outputs = _lines(run_cli("replay", str(history)).stdout)

    assert [(o["type"], o.get("reason"), o.get("origin")) for o in outputs] == [
        ("dead_letter", "occurred_in_future", f"{history}:3")
    ]


def test_replay_dead_letters_a_line_that_is_not_utf8_and_decides_the_rest(
    tmp_path: Path,
) -> None:
    history = tmp_path / "history.jsonl"
    history.write_bytes(
        json.dumps(order_placed()).encode()
        + b"\n"
        + b'{"type": "order_placed", "order_id": "\xff"}\n'
        + json.dumps(shipped()).encode()
        + b"\n"
        + json.dumps(scan("rto_delivered")).encode()
        + b"\n"
    )

    result = run_cli("replay", str(history))

    assert result.returncode == 0, result.stderr
    outputs = _lines(result.stdout)
    assert [(o["type"], o.get("reason")) for o in outputs] == [
        ("dead_letter", "invalid_json"),
        ("refund_command", "rto_delivered"),
        ("decision", None),
    ]
    assert outputs[0]["origin"] == f"{history}:2"
    assert "\ufffd" in outputs[0]["payload"]


def test_replay_of_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("replay", str(tmp_path / "nope.jsonl"))

    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "nope.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_into_a_missing_folder_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("generate", "--orders", "3", "--out", str(tmp_path / "nope" / "h.jsonl"))

    assert result.returncode == 2
    assert result.stderr.startswith("refund-processor: error: cannot write ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("given", "example"),
    [("2026-04-01T00:00:00", "2026-04-01T00:00:00Z"), ("2026-04-01", "2026-04-01T00:00:00Z")],
)
def test_replay_rejects_a_zone_less_now_with_an_example_it_takes(
    tmp_path: Path, given: str, example: str
) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text("")

    result = run_cli("replay", str(history), "--now", given)

    assert result.returncode == 2
    assert f"time needs a zone, e.g. {example}: " in result.stderr
    assert run_cli("replay", str(history), "--now", example).returncode == 0


def _replay_with_policy(tmp_path: Path, policy_text: str) -> subprocess.CompletedProcess[str]:
    """`replay` of an empty history under a policy file holding `policy_text`."""
    history = tmp_path / "history.jsonl"
    history.write_text("")
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    return run_cli("replay", str(history), "--policy", str(policy))


def test_replay_names_a_bad_policy_key(tmp_path: Path) -> None:
    result = _replay_with_policy(tmp_path, "policy_version: x\nlost_after_days: -3\n")

    assert result.returncode == 2
    assert "lost_after_days" in result.stderr


def test_replay_says_what_a_bad_policy_value_or_key_should_be(tmp_path: Path) -> None:
    text = "policy_version: x\nallowed_lateness: 1h\nlost_afterdays: 3\n"
    result = _replay_with_policy(tmp_path, text)

    assert result.returncode == 2
    assert "allowed_lateness: " in result.stderr
    assert "(an ISO 8601 duration, e.g. PT1H or P7D)" in result.stderr
    assert "lost_afterdays: Extra inputs are not permitted (did you mean 'lost_after_days'?)" in (
        result.stderr
    )


SECRETS = {
    "REFUND_KAFKA__SASL_PASSWORD": "kafka-s3cret",
    "REFUND_KAFKA__SSL_KEY_PASSWORD": "key-s3cret",
    "REFUND_REDIS__PASSWORD": "redis-s3cret",
    "REFUND_SCHEMA_REGISTRY__PASSWORD": "registry-s3cret",
}


def test_run_logs_json_lines_with_every_secret_masked(tmp_path: Path) -> None:
    """The startup line shows the settings; the CA file does not exist, so the first Kafka
    client fails at once and the error is logged too (its traceback without locals: a
    client's config dict holds the passwords in clear)."""
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "kafka:\n"
        "  bootstrap_servers: 127.0.0.1:1\n"
        "  security_protocol: SASL_SSL\n"
        "  sasl_mechanism: SCRAM-SHA-512\n"
        "  sasl_username: refunds\n"
        f"  ssl_ca_location: {tmp_path / 'no-ca.pem'}\n"
        "  librdkafka:\n"
        "    sasl.oauthbearer.client.secret: oauth-s3cret\n"
        "redis:\n"
        "  url: redis://127.0.0.1:1/0\n"
        "schema_registry_url: https://registry.invalid:8081\n"
        "schema_registry:\n"
        "  username: refunds\n"
        "metrics:\n"
        "  port: 0\n"
    )

    result = subprocess.run(
        [sys.executable, "-m", "processor.cli", "run", "--config", str(settings)],
        env=os.environ | SECRETS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    for secret in [*SECRETS.values(), "oauth-s3cret"]:
        assert secret not in result.stderr + result.stdout
    logged = _lines(result.stderr)  # every line is JSON
    shown = next(line for line in logged if line["event"] == "processor starting")["settings"]
    assert shown["kafka"]["sasl_password"] == "**********"
    assert shown["kafka"]["ssl_key_password"] == "**********"
    assert shown["kafka"]["librdkafka"] == {"sasl.oauthbearer.client.secret": "**********"}
    assert shown["redis"]["password"] == "**********"
    assert shown["schema_registry"] == {"username": "refunds", "password": "**********"}
    failure = logged[-1]
    assert (failure["event"], failure["level"]) == ("processor stopped on an error", "error")
    assert "ssl.ca.location" in failure["exception"][0]["exc_value"]
    assert not any("locals" in frame for frame in failure["exception"][0]["frames"])


def test_ctrl_c_while_run_waits_for_kafka_stops_it_at_once_without_a_traceback(
    tmp_path: Path,
) -> None:
    """No broker answers, so `run` is still starting (before it handles SIGINT itself)."""
    settings = tmp_path / "settings.yaml"
    settings.write_text("kafka:\n  bootstrap_servers: 127.0.0.1:1\nmetrics:\n  port: 0\n")
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("REFUND_")}
    with ctrl_c_as_in_a_terminal():
        process = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "run", "--config", str(settings)],
            env=clean,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            bufsize=0,  # bytes, unbuffered: communicate() reads on after what readline() took
        )
    try:
        assert process.stderr is not None
        seen = [process.stderr.readline()]
        while b'"metrics served"' not in seen[-1] and seen[-1]:
            seen.append(process.stderr.readline())
        process.send_signal(signal.SIGINT)
        try:
            # Read while waiting: a child blocked on a full stderr pipe would never exit.
            _, rest = process.communicate(timeout=10)  # the first broker wait is 30 s
        except subprocess.TimeoutExpired:
            process.kill()
            _, rest = process.communicate()
            pytest.fail(f"still running 10 s after SIGINT:\n{(b''.join(seen) + rest).decode()}")
    finally:
        process.kill()
        process.wait()  # reaped: no zombie left for a later test's count of children
    stderr = (b"".join(seen) + rest).decode()

    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "refund-processor: interrupted"
    assert "Traceback" not in stderr
