"""Deployment files checked without Docker or promtool: every metric the Grafana dashboard
and the Prometheus rules name is one `processor.metrics.REGISTRY` exports; the rules are
well-formed; docker-compose.yml agrees with the files it mounts and the settings its
processors load; the Dockerfile runs as non-root the console script pyproject.toml
declares, and its install command gives a working entrypoint when run directly."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from processor.metrics import REGISTRY
from processor.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "refund-processor.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
COMPOSE = REPO / "docker-compose.yml"
PROCESSORS = ("processor-1", "processor-2")

#: Series Prometheus itself writes for every scrape target, not exported by the processor.
PROMETHEUS_SERIES = frozenset({"up"})

#: Exported series of each metric family type, by the exposition format's suffixes.
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

_FUNCTION_NAMES = """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk
    limit_ratio abs absent absent_over_time ceil changes clamp clamp_max clamp_min
    day_of_month day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum double_exponential_smoothing holt_winters hour idelta increase info irate
    label_join label_replace ln log2 log10 minute month predict_linear rate resets round
    scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector
    year avg_over_time min_over_time max_over_time sum_over_time count_over_time
    quantile_over_time stddev_over_time stdvar_over_time last_over_time present_over_time
    mad_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi
"""
_FUNCTIONS = frozenset(_FUNCTION_NAMES.split())
_KEYWORD_NAMES = "and or unless bool offset by without on ignoring group_left group_right atan2"
_KEYWORDS = frozenset(_KEYWORD_NAMES.split()) | {"inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier starting a token: not the `d` of `1d` nor the `e` of `1e3`.
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_GRAFANA_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*\w+\s*\)\s*$", re.DOTALL)
_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")


# --------------------------------------------------------------------------- PromQL


def exported_series(registry: CollectorRegistry) -> frozenset[str]:
    """Every series name `registry` exports, whether or not a labelled child exists yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def balanced(expr: str) -> bool:
    """Parentheses, brackets and braces nest properly outside string literals."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def metric_names(expr: str) -> frozenset[str]:
    """Metric names a PromQL expression selects; raises on an unknown function."""
    grafana = _GRAFANA_LABEL_VALUES.match(expr)
    if grafana is not None:
        expr = grafana["expr"]
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names: set[str] = set()
    for found in _IDENTIFIER.finditer(text):
        name = found[0]
        if text[found.end() :].lstrip().startswith("("):
            if name not in _FUNCTIONS:
                raise ValueError(f"unknown PromQL function {name!r} in {expr!r}")
        elif name not in _KEYWORDS:
            names.add(name)
    return frozenset(names)


def test_metric_names_are_the_selected_series_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, operation) (rate(x_seconds_bucket{instance=~"$i",'
        ' operation!="by(a)"}[$__rate_interval])))'
        " / ignoring (operation) group_left sum(rate(y_total[5m] offset 1d)) > 1e3"
        " and on (instance) deriv(sum(z)[10m:1m]) > bool 0"
    )

    assert metric_names(expr) == {"x_seconds_bucket", "y_total", "z"}
    assert metric_names('label_values(up{job="a"}, instance)') == {"up"}
    with pytest.raises(ValueError, match="histogram_quantil"):
        metric_names("histogram_quantil(0.9, rate(x_bucket[5m]))")


def test_a_misspelt_metric_is_not_exported() -> None:
    exported = exported_series(REGISTRY)

    assert "refunds_dead_letters_total" in exported
    assert "refunds_end_to_end_latency_seconds_bucket" in exported
    assert metric_names("rate(refunds_dead_letter_total[5m])") - exported == {
        "refunds_dead_letter_total"
    }
    # A counter is exported with _total only; a histogram has no bare series.
    assert "refunds_dead_letters" not in exported
    assert "refunds_end_to_end_latency_seconds" not in exported


def test_balanced_sees_through_strings() -> None:
    assert balanced('sum by (a) (rate(x{a=")"}[5m]))')
    assert not balanced("sum(rate(x[5m])")
    assert not balanced("sum(rate(x[5m)])")
    assert not balanced("x{a='b'")


# --------------------------------------------------------------------------- dashboard


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _datasource_uid() -> str:
    (datasource,) = _yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    uid: str = datasource["uid"]
    return uid


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    queries = _dashboard_queries(_dashboard())

    named = frozenset().union(*(metric_names(query) for query in queries))
    unknown = named - exported_series(REGISTRY) - PROMETHEUS_SERIES

    assert unknown == set()
    assert all(balanced(query) for query in queries), [q for q in queries if not balanced(q)]


def test_the_dashboard_shows_every_processor_metric() -> None:
    named = frozenset().union(*(metric_names(q) for q in _dashboard_queries(_dashboard())))

    missing = [
        family.name
        for family in REGISTRY.collect()
        if family.name.startswith("refunds_")
        and not any(family.name + suffix in named for suffix in _SUFFIXES[family.type])
    ]

    assert missing == []


def test_dashboard_panels_query_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    panels = list(_panels(dashboard["panels"]))
    uid = _datasource_uid()

    assert dashboard["uid"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == uid
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


# --------------------------------------------------------------------------- alert rules


_ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
_RECORD_KEYS = {"record", "expr", "labels"}
_ANNOTATIONS = ("summary", "description", "runbook")


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed() -> None:
    document = _yaml(ALERTS)

    assert set(document) == {"groups"}
    groups = document["groups"]
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names))
    alerts = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        assert "interval" not in group or _DURATION.match(group["interval"])
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert isinstance(rule["expr"], str), rule
            assert balanced(rule["expr"]), rule["expr"]
            if "record" in rule:
                assert set(rule) <= _RECORD_KEYS, rule["record"]
                assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"])
                continue
            assert set(rule) <= _ALERT_KEYS, rule.get("alert")
            alerts.append(rule["alert"])
            assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
            assert _DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            for key in _ANNOTATIONS:
                text = rule["annotations"][key]
                assert isinstance(text, str), (rule["alert"], key)
                assert text.strip(), (rule["alert"], key)
                assert text.count("{{") == text.count("}}"), (rule["alert"], key)
    assert len(alerts) == len(set(alerts))


def test_the_agreed_alerts_exist() -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in _rules() if "alert" in rule}

    assert "up{" in alerts["RefundProcessorDown"]
    assert "refunds_consumer_lag_records" in alerts["RefundConsumerLagGrowing"]
    assert "refunds_dead_letters_total" in alerts["RefundDeadLetterRate"]
    assert "refunds_transactions_committed_total" in alerts["RefundNoTransactionCommits"]
    assert "amount_minor" in alerts["RefundAmountSpikeByReason"]
    assert "merchant" in alerts["RefundAmountSpikeByMerchant"]
    assert "refunds_events_buffered" in alerts["RefundEventsBufferedHigh"]


def test_every_metric_the_rules_name_is_exported_or_recorded_from_one() -> None:
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}

    named = frozenset().union(*(metric_names(rule["expr"]) for rule in rules))
    unknown = named - exported_series(REGISTRY) - PROMETHEUS_SERIES - recorded

    assert unknown == set()
    for rule in rules:
        if "record" in rule:
            assert metric_names(rule["expr"]) <= exported_series(REGISTRY), rule["record"]


def test_the_rules_and_the_dashboard_name_only_scraped_jobs() -> None:
    config = _yaml(PROMETHEUS)
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    texts = [rule["expr"] for rule in _rules()] + _dashboard_queries(_dashboard())

    named_jobs = {job for text in texts for job in re.findall(r'job="([^"]+)"', text)}

    assert named_jobs
    assert named_jobs <= jobs
    (datasource,) = _yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    # Grafana's $__rate_interval is 4 x this: it must know Prometheus's real interval.
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


# --------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _yaml(COMPOSE)
    return compose


def _mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[PurePosixPath(target)] = (REPO / source).resolve()
    return mounts


def _processor_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a processor container starts with: its REFUND_CONFIG file, its env."""
    environment = {name: str(value) for name, value in service["environment"].items()}
    _only_refund_env(monkeypatch, environment)
    monkeypatch.delenv("REFUND_CONFIG")
    config = _mounts(service)[PurePosixPath(environment["REFUND_CONFIG"])]
    return load_settings(config)


def _only_refund_env(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> None:
    """Exactly `environment` among the REFUND_* variables (a developer's own are hidden)."""
    for name in list(os.environ):
        if name.upper().startswith("REFUND_") and not name.upper().startswith("REFUND_PROCESSOR_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def test_compose_has_the_stack_and_no_interpolation() -> None:
    services = _compose()["services"]

    assert {"kafka", "topics", "redis", *PROCESSORS, "prometheus", "grafana"} <= set(services)
    # Compose would substitute a single $ from the host's environment: only $$ (a literal
    # $ for the container's shell) may appear, so the file runs the same everywhere.
    assert "$" not in COMPOSE.read_text(encoding="utf-8").replace("$$", "")


def test_compose_kafka_is_a_single_kraft_node_with_transactions() -> None:
    kafka = _compose()["services"]["kafka"]
    env = {name: str(value) for name, value in kafka["environment"].items()}

    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "healthcheck" in kafka


def test_compose_redis_persists_every_write_before_acknowledging_it() -> None:
    redis = _compose()["services"]["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))

    assert command[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "always"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_processors_are_one_group_using_the_compose_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    services = compose["services"]
    kafka_env = services["kafka"]["environment"]
    advertised = {
        listener.split("://")[1] for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }

    settings = [_processor_settings(services[name], monkeypatch) for name in PROCESSORS]

    assert settings[0] == settings[1]  # one file, one environment: one group
    for name in PROCESSORS:
        service = services[name]
        assert service["build"] == "."
        assert "command" not in service or service["command"] == ["run"]
        assert service["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "topics": {"condition": "service_completed_successfully"},
        }
    used = settings[0]
    assert used.kafka.bootstrap_servers in advertised
    assert used.redis.url.startswith("redis://redis:")
    host, port = used.metrics.host, used.metrics.port
    assert host == "0.0.0.0"  # Prometheus scrapes from another container
    healthcheck = " ".join(services[PROCESSORS[0]]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck
    (job,) = _yaml(PROMETHEUS)["scrape_configs"]
    (targets,) = [static["targets"] for static in job["static_configs"]]
    assert sorted(targets) == [f"{name}:{port}" for name in PROCESSORS]


def test_compose_creates_the_input_topics_the_processors_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    settings = _processor_settings(services[PROCESSORS[0]], monkeypatch)

    created = str(services["topics"]["environment"]["INPUT_TOPICS"]).split()

    assert sorted(created) == sorted([settings.topics.orders, settings.topics.tracking])
    assert "kafka-topics.sh" in " ".join(services["topics"]["command"])


def test_compose_mounts_only_files_that_exist() -> None:
    services = _compose()["services"]

    mounted = [path for service in services.values() for path in _mounts(service).values()]

    assert len(mounted) >= 6
    assert [path for path in mounted if not path.exists()] == []


def test_compose_depends_only_on_health_a_service_reports() -> None:
    services = _compose()["services"]

    for service in services.values():
        depends = service.get("depends_on", [])
        conditions = depends.items() if isinstance(depends, dict) else []
        for name, condition in conditions:
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[name], name


def test_prometheus_reads_the_rules_compose_mounts() -> None:
    mounts = _mounts(_compose()["services"]["prometheus"])

    rule_files = _yaml(PROMETHEUS)["rule_files"]

    assert [mounts[PurePosixPath(path)] for path in rule_files] == [ALERTS]
    assert mounts[PurePosixPath("/etc/prometheus/prometheus.yml")] == PROMETHEUS


def test_grafana_provisions_the_dashboard_from_where_compose_mounts_it() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    (provider,) = _yaml(PROVISIONING / "dashboards" / "refund-processor.yaml")["providers"]
    (datasource,) = _yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]

    assert mounts[PurePosixPath("/etc/grafana/provisioning")] == PROVISIONING
    assert mounts[PurePosixPath(provider["options"]["path"])] == DASHBOARD.parent
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()["services"]


# --------------------------------------------------------------------------- Dockerfile


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def _install_command() -> list[str]:
    """The Dockerfile's last `uv sync`: the one that installs the project."""
    runs = [shlex.split(args) for keyword, args in _instructions() if keyword == "RUN"]
    return [run for run in runs if run[:2] == ["uv", "sync"]][-1]


def test_the_image_runs_the_console_script_as_a_non_root_user() -> None:
    final = _final_stage()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    values = {keyword: args for keyword, args in final}

    assert final[0][1].startswith("python:3.11-slim")
    users = [args for keyword, args in final if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(values["ENTRYPOINT"]) == list(pyproject["project"]["scripts"])
    assert json.loads(values["CMD"]) == ["run"]


def test_the_image_installs_the_locked_runtime_dependencies_with_the_makefiles_uv() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    (pinned,) = re.findall(r'"uv==([\d.]+)"', makefile)
    copies = [args for keyword, args in _instructions() if keyword == "COPY"]

    assert {"--frozen", "--no-dev"} <= set(_install_command())
    assert f"--from=ghcr.io/astral-sh/uv:{pinned} /uv /bin/uv" in copies
    for args in copies:
        if not args.startswith("--from"):
            *sources, _ = args.split()
            assert all((REPO / source).exists() for source in sources), args


def test_the_images_install_command_gives_a_working_entrypoint(tmp_path: Path) -> None:
    """The Dockerfile's own `uv sync` into a fresh environment, then its ENTRYPOINT and
    CMD run from outside the checkout, as in the image (packaged policy, no sources)."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed (make install installs it)"
    environment = tmp_path / "venv"
    _, *arguments = _install_command()
    env = os.environ | {"UV_PROJECT_ENVIRONMENT": str(environment)}
    installed = subprocess.run(
        [uv, *arguments], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert installed.returncode == 0, installed.stderr
    values = dict(_final_stage())
    entrypoint = json.loads(values["ENTRYPOINT"])
    command = [str(environment / "bin" / entrypoint[0]), *entrypoint[1:]]
    cmd = json.loads(values["CMD"])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )

    usage = run("--help")
    run_usage = run(*cmd, "--help")
    history = run("generate", "--orders", "20", "--seed", "3", "--out", "history.jsonl")
    replay = run("replay", "history.jsonl", "--now", "2030-01-01T00:00:00Z")

    assert usage.returncode == 0, usage.stderr
    assert "run" in usage.stdout
    assert run_usage.returncode == 0, run_usage.stderr
    assert "--config" in run_usage.stdout
    assert history.returncode == 0, history.stderr
    assert replay.returncode == 0, replay.stderr
    assert "decision" in {json.loads(line)["type"] for line in replay.stdout.splitlines()}


# --------------------------------------------------------------------------- config/


_CONFIGS = sorted(
    path.name for path in (REPO / "config").glob("*.y*ml") if path.name != "policy.yaml"
)


def test_the_config_examples_are_all_there() -> None:
    assert {"local.yaml", "production.example.yaml", "compose.yaml"} <= set(_CONFIGS)


@pytest.mark.parametrize("name", _CONFIGS)
def test_every_config_file_loads_with_the_secrets_it_documents(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file names the secret variables it needs in its comments; with those set (and no
    other REFUND_* variable), it loads."""
    path = REPO / "config" / name
    text = path.read_text(encoding="utf-8")
    names = set(re.findall(r"\bREFUND_[A-Z_]+(?:PASSWORD|SECRET|TOKEN)\b", text))
    secrets = {name: f"s3cret-{i}" for i, name in enumerate(sorted(names))}
    _only_refund_env(monkeypatch, secrets)

    settings = load_settings(path)

    assert set(_secret_values(settings.model_dump())) == set(secrets.values())


def _secret_values(dumped: Any) -> Iterator[str]:
    """Every secret a settings dump holds (each documented secret must be one in use)."""
    if isinstance(dumped, SecretStr):
        yield dumped.get_secret_value()
    elif isinstance(dumped, dict):
        for value in dumped.values():
            yield from _secret_values(value)
