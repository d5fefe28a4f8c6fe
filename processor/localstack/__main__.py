"""`python -m processor.localstack up|down|status`: Kafka and Redis in the background for demos.

`up` starts a Kafka broker and a Redis (AOF on) that outlive the command and prints
`KAFKA_BOOTSTRAP_SERVERS=...` and `REDIS_URL=...` (for the tests and the demo) and the same
as `REFUND_KAFKA__BOOTSTRAP_SERVERS` and `REFUND_REDIS__URL` (for every other command) on
stdout, progress on stderr: `set -a; eval "$(python -m processor.localstack up)"; set +a`.
The broker creates no topic by itself, so `up` creates the default input topics, 6
partitions each, with time retention off: `publish` stamps records with their event
times, months old for a generated history, which the default 7-day retention would
delete. It is idempotent: a stack that is already up is reused, and a service of it
that died (or stopped answering) is started again on its port with its data, the other
left running. Only `down` deletes data: `up` refuses (exit code 2) when it cannot bring
the recorded stack back as it was, rather than start over. Everything lives in
`.stack/` under the current directory: `state.json` (addresses, PIDs, dirs), `env` (the
same KEY=VALUE lines), and each service's data and logs in `kafka/` and `redis/`. `down`
stops both and removes `.stack/`'s contents.
With those variables set, the test fixtures use this stack instead of starting their own.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import TypedDict

from processor.localstack import ServiceStartError, pid_alive, port_open, stop_pid
from processor.localstack.kafka import KafkaAdmin, LocalKafka
from processor.localstack.redis import LocalRedis
from processor.settings import TopicsSettings

STACK_DIR = Path(".stack")
_SERVICES = ("kafka", "redis")


class ServiceState(TypedDict):
    pid: int
    port: int
    address: str
    workdir: str


def _state_path() -> Path:
    return STACK_DIR / "state.json"


def _load() -> dict[str, ServiceState]:
    try:
        state: dict[str, ServiceState] = json.loads(_state_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state


def _alive(service: ServiceState) -> bool:
    return pid_alive(service["pid"]) and port_open(service["port"])


def _env_lines(state: dict[str, ServiceState]) -> list[str]:
    """The tests' and the demo's names, and the settings' own, which every other
    command reads (processor/settings.py)."""
    kafka, redis = state["kafka"]["address"], state["redis"]["address"]
    return [
        f"KAFKA_BOOTSTRAP_SERVERS={kafka}",
        f"REDIS_URL={redis}",
        f"REFUND_KAFKA__BOOTSTRAP_SERVERS={kafka}",
        f"REFUND_REDIS__URL={redis}",
    ]


def _stop_all(state: dict[str, ServiceState]) -> None:
    for name in _SERVICES:
        if name in state and stop_pid(state[name]["pid"], Path(state[name]["workdir"])):
            print(f"stopped {name} (pid {state[name]['pid']})", file=sys.stderr)
    for name in _SERVICES:
        shutil.rmtree(STACK_DIR / name, ignore_errors=True)
    for leftover in (_state_path(), STACK_DIR / "env"):
        leftover.unlink(missing_ok=True)


def _save(state: dict[str, ServiceState]) -> list[str]:
    """Writes `state.json` and `env`; returns the variables, for stdout."""
    _state_path().write_text(json.dumps(state, indent=2) + "\n")
    lines = _env_lines(state)
    (STACK_DIR / "env").write_text("\n".join(lines) + "\n")
    return lines


def _refuse(problem: str) -> int:
    print(
        f"error: {problem}\nThe stack's data in {STACK_DIR.resolve()} is kept. "
        "`python -m processor.localstack down` then `up` starts a new, empty stack "
        "(deleting that data).",
        file=sys.stderr,
    )
    return 2


def up() -> int:
    """Start both services, or those of the recorded stack that are not running."""
    if not _state_path().exists():
        return _start_new()
    state = _load()
    if not all(name in state for name in _SERVICES):
        return _refuse(f"{_state_path()} cannot be read, or does not record both services")
    dead = [name for name in _SERVICES if not _alive(state[name])]
    if not dead:
        print("stack already up", file=sys.stderr)
        print("\n".join(_env_lines(state)))
        return 0
    for name in _SERVICES:
        if name not in dead:
            print(f"{name} is up, kept (pid {state[name]['pid']})", file=sys.stderr)
    for name in dead:
        recorded = state[name]
        if stop_pid(recorded["pid"], Path(recorded["workdir"])):
            print(f"stopped {name} (pid {recorded['pid']}): not answering", file=sys.stderr)
        print(
            f"{name} is down: starting it again on port {recorded['port']} with its data "
            f"in {recorded['workdir']}...",
            file=sys.stderr,
        )
        service = _recorded(name, recorded)
        try:
            service.start()
        except ServiceStartError as error:
            _save(state)  # the PIDs of those started again before it
            return _refuse(f"{name} did not start again: {error}")
        state[name] = ServiceState(**(recorded | {"pid": service.pid}))
        print(f"started {name} again (pid {service.pid})", file=sys.stderr)
    print("\n".join(_save(state)))
    return 0


def _recorded(name: str, recorded: ServiceState) -> LocalKafka | LocalRedis:
    """The service `up` recorded, on its port and in its directory, with its data."""
    workdir, port = recorded["workdir"], recorded["port"]
    if name == "kafka":
        return LocalKafka(workdir=workdir, port=port, detach=True)
    return LocalRedis(appendonly=True, workdir=workdir, port=port, detach=True)


def _start_new() -> int:
    """A new stack: nothing is recorded, so what `.stack/` holds is what an `up` that
    failed left behind."""
    _stop_all({})
    STACK_DIR.mkdir(exist_ok=True)
    (STACK_DIR / ".gitignore").write_text("*\n")
    redis = LocalRedis(appendonly=True, workdir=STACK_DIR / "redis", detach=True)
    kafka = LocalKafka(workdir=STACK_DIR / "kafka", detach=True)
    try:
        print("starting redis...", file=sys.stderr)
        redis.start()
        print("starting kafka (first run downloads jars with Maven)...", file=sys.stderr)
        kafka.start()
        admin, topics = KafkaAdmin(kafka.bootstrap_servers), TopicsSettings()
        for topic in (topics.orders, topics.tracking):
            admin.create_topic(topic, 6, config={"retention.ms": "-1"})
    except BaseException as error:  # incl. Ctrl-C: detached servers must not be left behind
        redis.close()
        kafka.close()
        if not isinstance(error, ServiceStartError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    state = {
        "kafka": ServiceState(
            pid=kafka.pid,
            port=int(kafka.bootstrap_servers.rsplit(":", 1)[1]),
            address=kafka.bootstrap_servers,
            workdir=str(kafka.workdir),
        ),
        "redis": ServiceState(
            pid=redis.pid, port=redis.port, address=redis.url, workdir=str(redis.workdir)
        ),
    }
    print("\n".join(_save(state)))
    return 0


def down() -> int:
    """Stop whatever `up` started here and remove its data."""
    state = _load()
    if not state:
        print("no stack recorded in .stack/", file=sys.stderr)
    _stop_all(state)
    return 0


def status() -> int:
    """Report each service; exit 0 only if both are up."""
    state = _load()
    healthy = True
    for name in _SERVICES:
        service = state.get(name)
        if service is None:
            print(f"{name}: not started")
            healthy = False
        elif _alive(service):
            print(f"{name}: up pid={service['pid']} {service['address']}")
        else:
            print(f"{name}: DOWN (was pid={service['pid']} {service['address']})")
            healthy = False
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processor.localstack",
        description="Run Kafka and Redis locally in the background (state in ./.stack/).",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("processor.localstack.kafka.rdkafka").setLevel(logging.WARNING)
    command: str = args.command
    return {"up": up, "down": down, "status": status}[command]()


if __name__ == "__main__":
    sys.exit(main())
