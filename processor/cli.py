"""The `refund-processor` console script."""

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

import structlog
from rich.console import Console

from processor import logs
from processor.config import PolicyConfigError, load_policy
from processor.demo import DemoError, DemoOptions, run_demo
from processor.events import to_millis
from processor.explain import UnknownOrderError, explain_history, render_text, to_json
from processor.explain_live import ExplainError, explain_live
from processor.generate import write_history
from processor.localstack import ServiceStartError
from processor.metrics import MetricsServer
from processor.publish import PublishError, publish_lines
from processor.replay import write_replay
from processor.runner import Runner, batch_collector
from processor.settings import (
    Settings,
    SettingsError,
    load_settings,
    make_serde,
    validate_settings,
)

_log = structlog.stdlib.get_logger("processor.cli")  # not __main__ under python -m


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if moment.tzinfo is None:
        example = f"{moment.isoformat()}Z"  # a date alone takes no zone: 2026-01-01Z fails
        raise argparse.ArgumentTypeError(f"time needs a zone, e.g. {example}: {text!r}")
    return moment


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refund-processor",
        description="Pays the refunds a dropshipping fulfiller's policy promises.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    replay_cmd = commands.add_parser(
        "replay", help="decide a JSONL history offline; outputs as JSON lines on stdout"
    )
    replay_cmd.add_argument("events", type=Path, help="JSON events, one per line")
    replay_cmd.add_argument(
        "--now", type=_moment, help="after the last event, move the clock to this time"
    )
    replay_cmd.add_argument("--policy", type=Path, help="policy YAML (default config/policy.yaml)")

    generate_cmd = commands.add_parser("generate", help="write a realistic JSONL history")
    generate_cmd.add_argument("--orders", type=int, required=True, help="how many orders")
    generate_cmd.add_argument(
        "--seed", type=int, default=1, help="same seed, same history (default 1; the demo's is 7)"
    )
    generate_cmd.add_argument("--out", type=Path, help="file to write (default stdout)")

    publish_cmd = commands.add_parser(
        "publish",
        help="write JSONL events into the input topics as Avro",
        description="Writes JSONL events into the input topics as Avro. An invalid line is "
        "reported with its number and not published; the others are, and the exit status "
        "is then 1 (generated histories hold about 0.2% malformed lines on purpose). Exit "
        "status 2: it could not go on (Kafka unreachable, a missing topic, events not "
        "delivered).",
    )
    publish_cmd.add_argument("events", type=Path, help="JSON events, one per line")
    run_cmd = commands.add_parser("run", help="the live processor (Kafka + Redis)")

    explain_cmd = commands.add_parser(
        "explain",
        help="why an order was refunded, denied or is waiting: timeline, ledger, timers, "
        "decisions (live from Redis and the decision topic, or from a file)",
    )
    explain_cmd.add_argument("order_id", help="the order to explain")
    explain_cmd.add_argument(
        "--from",
        dest="history",
        type=Path,
        metavar="FILE",
        help="replay this JSONL history offline instead of reading Kafka and Redis",
    )
    explain_cmd.add_argument(
        "--now", type=_moment, help="with --from: after the last event, move the clock to this time"
    )
    explain_cmd.add_argument(
        "--policy", type=Path, help="with --from: policy YAML (default config/policy.yaml)"
    )
    explain_cmd.add_argument(
        "--json", action="store_true", help="one JSON object (docs/explain.md) instead of text"
    )
    demo_cmd = commands.add_parser(
        "demo",
        help="generate a history, process it live (local Kafka and Redis unless given), "
        "print what was refunded and why",
    )
    demo_cmd.add_argument("--orders", type=int, default=2000, help="how many (default 2000)")
    demo_cmd.add_argument(
        "--seed", type=int, default=7, help="of the generated history (default 7)"
    )
    demo_cmd.add_argument("--instances", type=int, default=1, help="processor instances")
    for command in (publish_cmd, run_cmd, explain_cmd):
        command.add_argument(
            "--config",
            type=Path,
            help="settings YAML (default $REFUND_CONFIG or config/local.yaml)",
        )
        command.add_argument(
            "--bootstrap-servers", metavar="HOST:PORT", help="Kafka to use (overrides settings)"
        )
    # The demo starts its own Kafka and Redis unless it is given some (processor/demo.py).
    demo_cmd.add_argument(
        "--config",
        type=Path,
        help="settings YAML; given, or named by $REFUND_CONFIG, its Kafka and Redis are used, "
        "on topics and keys of the demo's own (default config/local.yaml, whose addresses "
        "the demo does not use)",
    )
    demo_cmd.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka to use (default $KAFKA_BOOTSTRAP_SERVERS, $REFUND_KAFKA__BOOTSTRAP_SERVERS "
        "or the settings file's if one is given, else one the demo starts)",
    )
    demo_cmd.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis to use (default $REDIS_URL, $REFUND_REDIS__URL or the settings file's if "
        "one is given, else one the demo starts)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    if args.bootstrap_servers is not None:
        values = settings.model_dump()
        values["kafka"]["bootstrap_servers"] = args.bootstrap_servers.strip()
        try:
            settings = validate_settings(values, "--bootstrap-servers")
        except SettingsError as exc:
            raise CliError(str(exc)) from None
    return settings


def _wall_clock() -> int:
    """Epoch ms now: what the replay's events may not be dated after, as live."""
    return int(time.time() * 1000)


def _replay(args: argparse.Namespace, out: TextIO) -> None:
    config = load_policy(args.policy)
    now = to_millis(args.now) if args.now is not None else None
    try:
        source = args.events.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {args.events}: {exc.strerror}") from exc
    with source:
        write_replay(source, str(args.events), config, out, now=now, wall_clock=_wall_clock())


def _generate(args: argparse.Namespace, out: TextIO) -> None:
    if args.orders < 1:
        raise CliError("--orders must be at least 1")
    if args.out is None:
        write_history(out, orders=args.orders, seed=args.seed)
        return
    try:
        target = args.out.open("w", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror}") from exc
    with target:
        write_history(target, orders=args.orders, seed=args.seed)


def _errors_only() -> None:
    """Only errors are logged, as JSON lines on stderr, for a command a person reads: its
    own report says what went wrong, and librdkafka's warnings about what it retries or
    ignores by itself (a coordinator still loading right after a broker starts, a consumer
    property the passthrough gives a producer too) read as failures among it."""
    logs.configure(level=logging.ERROR)


def _publish(args: argparse.Namespace) -> int:
    """1 if some lines were invalid (reported, not published; the rest are)."""
    settings = _settings(args)
    _errors_only()
    try:
        source = args.events.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {args.events}: {exc.strerror}") from exc
    with source:
        try:
            summary = publish_lines(
                source, str(args.events), settings, make_serde(settings), errors=sys.stderr
            )
        except PublishError as exc:
            raise CliError(str(exc)) from exc
    print(summary.line(), file=sys.stderr)
    return 1 if summary.invalid else 0


def _run(args: argparse.Namespace) -> int:
    """The live processor, logging JSON lines on stderr; 1 if it stops on an error."""
    settings = _settings(args)
    logs.configure()
    # JSON-mode dump: secrets masked (SecretStr, and the librdkafka passthrough's).
    _log.info("processor starting", settings=settings.model_dump(mode="json"))
    try:
        server = MetricsServer(settings.metrics)
    except OSError as exc:
        where = f"{settings.metrics.host}:{settings.metrics.port}"
        raise CliError(
            f"cannot serve metrics on {where} (metrics.host/port): {exc}; for another "
            f"instance on this host, REFUND_METRICS__PORT=0 takes any free port"
        ) from None
    try:
        with server, batch_collector():
            _log.info("metrics served", url=f"{server.url}/metrics")
            Runner(settings).run()
    except PolicyConfigError:
        raise
    except Exception:
        # A fatal Kafka error, Redis state that disagrees with Kafka...: its supervisor
        # restarts the process (docs/live.md); the reason goes to the log as JSON.
        _log.exception("processor stopped on an error")
        return 1
    _log.info("processor stopped")
    return 0


def _explain(args: argparse.Namespace, out: TextIO) -> None:
    if args.history is None:
        for option, value in (("--now", args.now), ("--policy", args.policy)):
            if value is not None:
                raise CliError(f"{option} only applies with --from FILE")
        settings = _settings(args)
        try:
            explanation = explain_live(settings, args.order_id, load_policy(settings.policy_file))
        except ExplainError as exc:
            raise CliError(f"cannot explain order {args.order_id!r}: {exc}") from exc
    else:
        for option, value in (
            ("--config", args.config),
            ("--bootstrap-servers", args.bootstrap_servers),
        ):
            if value is not None:
                raise CliError(f"{option} does not apply with --from FILE (no Kafka or Redis)")
        try:
            # Read as `replay` reads a file, so origins name the same line numbers.
            with args.history.open("rb") as source:
                lines = list(source)
        except OSError as exc:
            raise CliError(f"cannot read {args.history}: {exc.strerror}") from exc
        now = to_millis(args.now) if args.now is not None else None
        explanation = explain_history(
            lines,
            str(args.history),
            args.order_id,
            load_policy(args.policy),
            now=now,
            wall_clock=_wall_clock(),
        )
    if args.json:
        out.write(json.dumps(to_json(explanation), indent=2) + "\n")
    else:
        out.write(render_text(explanation))


def _demo(args: argparse.Namespace) -> int:
    if args.orders < 1:
        raise CliError("--orders must be at least 1")
    if args.instances < 1:
        raise CliError("--instances must be at least 1")
    console = Console(stderr=True, markup=False)
    _errors_only()  # the summary reports dead letters, each a warning in `run`'s log
    options = DemoOptions(
        orders=args.orders,
        seed=args.seed,
        instances=args.instances,
        config=args.config,
        bootstrap_servers=args.bootstrap_servers,
        redis_url=args.redis_url,
    )
    try:
        report = run_demo(options, sys.stdout, console)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    except (DemoError, ServiceStartError) as exc:
        print(f"refund-processor: demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "refund-processor: demo interrupted; everything it started is stopped", file=sys.stderr
        )
        return 130
    return 0 if report.matches_replay else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "replay":
            _replay(args, sys.stdout)
        elif args.command == "generate":
            _generate(args, sys.stdout)
        elif args.command == "publish":
            return _publish(args)
        elif args.command == "explain":
            _explain(args, sys.stdout)
        elif args.command == "demo":
            return _demo(args)
        elif args.command == "run":
            return _run(args)
    except (CliError, PolicyConfigError, UnknownOrderError) as exc:
        print(f"refund-processor: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        # Before `run` handles SIGINT itself, or in any other command: no traceback.
        print("refund-processor: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
