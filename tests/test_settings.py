"""Settings (processor/settings.py): YAML + environment, error messages, secrets, and the
librdkafka mapping, the last checked against a real broker as well as key by key."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, ValidationError

from processor.localstack.kafka import KafkaAdmin
from processor.settings import (
    CONFIG_ENV,
    KafkaSettings,
    RedisSettings,
    SchemaRegistrySettings,
    Settings,
    SettingsError,
    default_settings_file,
    load_settings,
    make_serde,
    validate_settings,
)
from tests.factories import T0, order_placed

REPO = Path(__file__).resolve().parent.parent
SECRETS = ("kafka-s3cret", "key-s3cret", "redis-s3cret", "registry-s3cret", "oauth-s3cret")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own REFUND_* variables must not change what these tests see."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith("REFUND_") and not upper.startswith("REFUND_PROCESSOR_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _sasl_yaml() -> str:
    return """
kafka:
  bootstrap_servers: broker-1:9093,broker-2:9093
  security_protocol: SASL_SSL
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: refunds
  ssl_ca_location: /etc/ca.pem
  ssl_certificate_location: /etc/client.pem
  ssl_key_location: /etc/client.key
  librdkafka:
    socket.keepalive.enable: "true"
    sasl.oauthbearer.client.secret: oauth-s3cret
redis:
  url: redis://redis.internal:6379/2
  tls: true
schema_registry_url: https://registry.internal:8081
schema_registry:
  username: refunds
"""


def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUND_KAFKA__SASL_PASSWORD", "kafka-s3cret")
    monkeypatch.setenv("REFUND_KAFKA__SSL_KEY_PASSWORD", "key-s3cret")
    monkeypatch.setenv("REFUND_REDIS__PASSWORD", "redis-s3cret")
    monkeypatch.setenv("REFUND_SCHEMA_REGISTRY__PASSWORD", "registry-s3cret")


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --------------------------------------------------------------------------- loading


def test_values_come_from_the_yaml_file_and_defaults_fill_the_rest(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
application_id: refunds-eu
kafka:
  bootstrap_servers: kafka.internal:9092
topics:
  orders: eu.orders
commit_interval_ms: 250
policy_file: /etc/policy.yaml
""",
    )

    settings = load_settings(path)

    assert settings.application_id == "refunds-eu"
    assert settings.kafka.bootstrap_servers == "kafka.internal:9092"
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.topics.orders == "eu.orders"
    assert settings.topics.tracking == "courier.tracking"
    assert settings.commit_interval_ms == 250
    assert settings.max_batch_records == 40_000
    assert settings.idle_partition_wait_ms == 500
    assert settings.policy_file == Path("/etc/policy.yaml")
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9108)
    assert settings.metrics.ready_max_lag == 10_000
    assert settings.schema_registry_url is None


@pytest.mark.parametrize("value", ['{"linger.ms": 5', ' ["linger.ms", 5'])
def test_an_environment_variable_that_is_not_json_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("REFUND_KAFKA__LIBRDKAFKA", value)
    monkeypatch.setenv("REFUND_KAFKA__CLIENT_ID", "a name")

    with pytest.raises(SettingsError) as raised:
        load_settings(_write(tmp_path, "{}\n"))

    assert str(raised.value).endswith("(REFUND_KAFKA__LIBRDKAFKA: not valid JSON)")


def test_environment_variables_win_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        "kafka:\n  bootstrap_servers: from-file:9092\n  client_id: file-client\n"
        "topics:\n  orders: file.orders\nmetrics:\n  host: 0.0.0.0\n",
    )
    monkeypatch.setenv("REFUND_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("REFUND_METRICS__PORT", "9200")
    monkeypatch.setenv("REFUND_TOPICS__TRACKING", "env.tracking")
    monkeypatch.setenv("REFUND_COMMIT_INTERVAL_MS", "40")
    monkeypatch.setenv("REFUND_KAFKA__LIBRDKAFKA", '{"socket.keepalive.enable": "true"}')

    settings = load_settings(path)

    assert settings.kafka.bootstrap_servers == "from-env:9092"
    assert settings.kafka.client_id == "file-client"  # the rest of the section stays
    assert settings.topics.orders == "file.orders"
    assert settings.topics.tracking == "env.tracking"
    assert settings.commit_interval_ms == 40
    assert settings.kafka.librdkafka == {"socket.keepalive.enable": "true"}
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9200)


def test_refund_config_names_the_file_unless_a_path_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = _write(tmp_path, "application_id: from-env-file\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("application_id: explicit-file\n")
    monkeypatch.setenv(CONFIG_ENV, str(from_env))

    assert load_settings().application_id == "from-env-file"
    assert load_settings(explicit).application_id == "explicit-file"


def test_the_default_file_is_the_checkouts_local_yaml_with_loopback_services() -> None:
    assert default_settings_file() == REPO / "config" / "local.yaml"

    settings = load_settings()

    assert settings.kafka.bootstrap_servers.startswith("127.0.0.1:")
    assert settings.redis.url.startswith("redis://127.0.0.1:")
    assert settings.topics.orders == "orders.events"


def test_the_production_example_loads_with_its_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = REPO / "config" / "production.example.yaml"
    with pytest.raises(SettingsError, match=r"kafka: .*sasl_password are required"):
        load_settings(example)

    monkeypatch.setenv("REFUND_KAFKA__SASL_PASSWORD", "kafka-s3cret")
    monkeypatch.setenv("REFUND_REDIS__PASSWORD", "redis-s3cret")
    monkeypatch.setenv("REFUND_SCHEMA_REGISTRY__PASSWORD", "registry-s3cret")
    settings = load_settings(example)

    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.redis.uses_tls
    assert settings.kafka.producer_config()["sasl.password"] == "kafka-s3cret"
    assert make_serde(settings).framing == "confluent"


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(ValidationError):
        settings.application_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.kafka.bootstrap_servers = "other:9092"  # type: ignore[misc]


def test_internal_topics_and_ids_derive_from_the_application_id() -> None:
    settings = Settings(application_id="refunds-eu")

    assert settings.by_order_topic == "refunds-eu-by-order"
    assert settings.group_id == "refunds-eu"
    assert settings.transactional_id("3") == "refunds-eu-3"


# --------------------------------------------------------------------------- errors


def test_a_bad_value_is_named_by_file_and_dotted_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  security_protocol: TLS\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    message = str(caught.value)
    assert str(path) in message
    assert "kafka.security_protocol: Input should be 'PLAINTEXT'" in message


def test_a_misspelt_key_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  bootstrap_server: typo:9092\n")

    with pytest.raises(
        SettingsError,
        match=r"kafka\.bootstrap_server: Extra inputs .* \(did you mean 'bootstrap_servers'\?\)",
    ):
        load_settings(path)


def test_a_bad_value_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "")
    monkeypatch.setenv("REFUND_MAX_BATCH_RECORDS", "lots")

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    assert str(caught.value) == (
        f"settings file {path} and environment variable REFUND_MAX_BATCH_RECORDS: "
        "max_batch_records: Input should be a valid integer, unable to parse string as an "
        "integer (from environment variable REFUND_MAX_BATCH_RECORDS)"
    )


def test_a_lowercase_environment_variable_is_named_as_the_one_that_supplied_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Variable names are case-insensitive to pydantic-settings, so must be to the message."""
    monkeypatch.setenv("refund_max_batch_records", "lots")

    with pytest.raises(SettingsError) as caught:
        load_settings(_write(tmp_path, ""))

    assert str(caught.value).endswith("(from environment variable REFUND_MAX_BATCH_RECORDS)")


def test_a_section_error_from_the_file_blames_no_variable_of_a_similar_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REFUND_SCHEMA_REGISTRY_URL starts with REFUND_SCHEMA_REGISTRY but is not in its section."""
    path = _write(tmp_path, "schema_registry:\n  username: refunds\n")
    monkeypatch.setenv("REFUND_SCHEMA_REGISTRY_URL", "https://registry:8081")

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    assert str(caught.value) == (
        f"settings file {path} and environment variable REFUND_SCHEMA_REGISTRY_URL: "
        "schema_registry: Value error, give both username and password, or neither"
    )


def test_an_error_the_environment_caused_names_its_variables_not_only_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`REFUND_KAFKA__SECURITY_PROTOCOL=SASL_SSL` alone used to read as the file's fault."""
    path = _write(tmp_path, "kafka:\n  client_id: from-file\n")
    monkeypatch.setenv("REFUND_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("REFUND_REDIS__PASSWORD", "redis-s3cret")
    monkeypatch.setenv("REFUND_PROCESSOR_CACHE", str(tmp_path))  # not a setting

    with pytest.raises(SettingsError) as caught:
        load_settings(path)

    message = str(caught.value)
    assert message.startswith(
        f"settings file {path} and environment variables REFUND_KAFKA__SECURITY_PROTOCOL, "
        "REFUND_REDIS__PASSWORD: kafka: "
    ), message
    assert message.endswith(
        "sasl_mechanism is required with SASL_SSL (in part from environment variable "
        "REFUND_KAFKA__SECURITY_PROTOCOL)"
    ), message
    _assert_no_secret(message)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kafka:\n  security_protocol: SASL_SSL\n", r"kafka: .*sasl_mechanism is required"),
        (
            "kafka:\n  sasl_username: u\n",
            r"kafka: .*sasl_username set but security_protocol is PLAINTEXT",
        ),
        ("kafka:\n  librdkafka:\n    acks: '1'\n", r"kafka\.librdkafka: .*acks cannot be set"),
        ("topics:\n  dlq: orders.events\n", r"topics: .*orders and dlq are the same topic"),
        ("redis:\n  url: http://x\n", r"redis\.url: .*redis://"),
        ("metrics:\n  port: 65536\n", r"metrics\.port: .*less than or equal to 65535"),
        ("metrics:\n  ready_max_lag: -1\n", r"metrics\.ready_max_lag: .*greater than"),
        ("metrics_address: 127.0.0.1:9108\n", r"metrics_address: Extra inputs"),
        (
            "schema_registry:\n  username: u\n  password: p\n",
            r"<top level>: .*schema_registry_url is unset",
        ),
        (
            "schema_registry_url: https://r:8081\nschema_registry:\n  username: u\n",
            r"schema_registry: .*give both username and password",
        ),
        ("application_id: 'has space'\n", r"application_id: String should match"),
        ("application_id: ''\n", r"application_id: String should match"),
        (f"application_id: {'a' * 101}\n", r"application_id: String should match"),
        ("kafka:\n  librdkafka: [linger.ms]\n", r"kafka\.librdkafka: .*valid dictionary"),
        ("kafka:\n  bootstrap_servers: ''\n", r"kafka\.bootstrap_servers: .*at least 1"),
        ("kafka:\n  client_id: ''\n", r"kafka\.client_id: .*at least 1"),
        (
            "kafka:\n  sasl_password: p\n",
            r"kafka: .*sasl_password set but security_protocol is PLAINTEXT",
        ),
        (
            "kafka:\n  security_protocol: SSL\n  sasl_mechanism: PLAIN\n",
            r"kafka: .*sasl_mechanism set but security_protocol is SSL",
        ),
        (
            "kafka:\n  ssl_ca_location: /etc/ca.pem\n",
            r"kafka: .*ssl_ca_location set but security_protocol is PLAINTEXT",
        ),
        (
            "kafka:\n  ssl_certificate_location: /etc/client.pem\n",
            r"kafka: .*ssl_certificate_location set but security_protocol is PLAINTEXT",
        ),
        (
            "kafka:\n  security_protocol: SASL_PLAINTEXT\n  sasl_mechanism: OAUTHBEARER\n"
            "  ssl_key_location: /etc/client.key\n",
            r"kafka: .*ssl_key_location set but security_protocol is SASL_PLAINTEXT",
        ),
        (
            "kafka:\n  ssl_key_password: k\n",
            r"kafka: .*ssl_key_password set but security_protocol is PLAINTEXT",
        ),
        ("redis:\n  socket_timeout_s: 0\n", r"redis\.socket_timeout_s: .*greater than 0"),
        (
            "redis:\n  url: unix:///run/redis.sock\n  tls: true\n",
            r"redis: .*tls needs a redis:// or rediss:// URL",
        ),
        ("topics:\n  orders: ''\n", r"topics\.orders: String should match"),
        ("topics:\n  orders: orders events\n", r"topics\.orders: String should match"),
        (f"topics:\n  orders: {'a' * 201}\n", r"topics\.orders: String should match"),
        ("metrics:\n  host: ''\n", r"metrics\.host: .*at least 1"),
        ("commit_interval_ms: 0\n", r"commit_interval_ms: .*greater than or equal to 1"),
        ("max_batch_records: 0\n", r"max_batch_records: .*greater than or equal to 1"),
        ("idle_partition_wait_ms: -1\n", r"idle_partition_wait_ms: .*greater than or equal to 0"),
        ("purge_interval_ms: -1\n", r"purge_interval_ms: .*greater than or equal to 0"),
        ("- a list\n", r"must hold a mapping"),
    ],
)
def test_inconsistent_settings_are_rejected(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        load_settings(_write(tmp_path, text))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"cannot read settings file .*nope\.yaml"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text",
    [
        "metrics:\n  port: 0\n",  # any free port
        "metrics:\n  ready_max_lag: 0\n",
        "idle_partition_wait_ms: 0\n",
        "purge_interval_ms: 0\n",  # never purge
        "commit_interval_ms: 1\nmax_batch_records: 1\n",
        f"application_id: {'a' * 100}\n",
        f"topics:\n  orders: {'a' * 200}\n",
        # OAUTHBEARER authenticates with a token, not a username and password.
        "kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: OAUTHBEARER\n",
    ],
)
def test_settings_at_the_edge_of_what_is_allowed_are_accepted(tmp_path: Path, text: str) -> None:
    load_settings(_write(tmp_path, text))


def test_a_file_that_sets_nothing_gets_the_documented_defaults(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, "")).model_dump() == {
        "application_id": "refund-processor",
        "kafka": {
            "bootstrap_servers": "127.0.0.1:9092",
            "security_protocol": "PLAINTEXT",
            "sasl_mechanism": None,
            "sasl_username": None,
            "sasl_password": None,
            "ssl_ca_location": None,
            "ssl_certificate_location": None,
            "ssl_key_location": None,
            "ssl_key_password": None,
            "client_id": "refund-processor",
            "librdkafka": {},
        },
        "redis": {
            "url": "redis://127.0.0.1:6379/0",
            "password": None,
            "tls": False,
            "tls_ca_location": None,
            "socket_timeout_s": 5.0,
        },
        "topics": {
            "orders": "orders.events",
            "tracking": "courier.tracking",
            "wallet": "wallet.commands",
            "fulfilment": "fulfilment.commands",
            "decisions": "refunds.decisions",
            "dlq": "refunds.dlq",
        },
        "schema_registry_url": None,
        "schema_registry": {"username": None, "password": None},
        "policy_file": None,
        "commit_interval_ms": 100,
        "max_batch_records": 40_000,
        "idle_partition_wait_ms": 500,
        "purge_interval_ms": 30_000,
        "metrics": {"host": "127.0.0.1", "port": 9108, "ready_max_lag": 10_000},
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"application_id: caf\xe9\n", r"is not UTF-8 text$"),
        (
            b"kafka:\n  client_id: a: b\n",
            r"is not valid YAML at line 2, column 15: mapping values are not allowed here$",
        ),
    ],
)
def test_a_file_that_is_not_yaml_text_is_a_clear_error(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_bytes(content)

    with pytest.raises(SettingsError, match=expected):
        load_settings(path)


# --------------------------------------------------------------------------- secrets


def test_secrets_never_appear_in_repr_str_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _secret_env(monkeypatch)
    settings = load_settings(_write(tmp_path, _sasl_yaml()))

    logging.getLogger("test").warning("settings: %s / %r", settings, settings)
    for shown in (repr(settings), str(settings), repr(settings.kafka), str(settings.redis)):
        _assert_no_secret(shown)
    _assert_no_secret(caplog.text)
    assert "**********" in repr(settings.kafka)
    assert "socket.keepalive.enable" in repr(settings.kafka)  # non-secret passthrough shows
    dumped = json.dumps(settings.model_dump(mode="json"))  # what `run` logs at start
    _assert_no_secret(dumped)
    assert "socket.keepalive.enable" in dumped
    # ...while the clients get them in clear.
    assert settings.kafka.producer_config()["sasl.password"] == "kafka-s3cret"
    assert settings.kafka.consumer_config("g")["ssl.key.password"] == "key-s3cret"


def test_secrets_never_appear_in_error_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _secret_env(monkeypatch)
    monkeypatch.setenv("REFUND_REDIS__SOCKET_TIMEOUT_S", "-1")  # an unrelated error
    with pytest.raises(SettingsError) as unrelated:
        load_settings(_write(tmp_path, _sasl_yaml()))
    _assert_no_secret(str(unrelated.value))

    # The secret itself invalid, in the file: malformed YAML on its line...
    bad_yaml = _write(tmp_path, 'kafka:\n  sasl_password: "kafka-s3cret\n')
    with pytest.raises(SettingsError) as broken:
        load_settings(bad_yaml)
    _assert_no_secret(str(broken.value))
    # ...or of the wrong type, or a password in a URL.
    for text in (
        "kafka:\n  sasl_password: [kafka-s3cret]\n",
        "redis:\n  url: redis://user:redis-s3cret@host:6379/0\n",
        "schema_registry_url: https://u:registry-s3cret@registry:8081\n",
    ):
        with pytest.raises(SettingsError) as caught:
            load_settings(_write(tmp_path, text))
        _assert_no_secret(str(caught.value))
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "REFUND_REDIS__URL",
            "redis://redis:6379/0?password=redis-s3cret",
            r"redis\.url: .*put the password in redis\.password, not in a query parameter",
        ),
        (
            "REFUND_REDIS__URL",
            "unix:///run/redis.sock?db=0&PWD=redis-s3cret",
            r"redis\.url: .*not in a query parameter",
        ),
        (
            "REFUND_SCHEMA_REGISTRY_URL",
            "http://registry-1:8081,http://u:registry-s3cret@registry-2:8081",
            r"schema_registry_url: .*put the password in schema_registry\.password",
        ),
        (
            "REFUND_SCHEMA_REGISTRY_URL",
            "https://registry-1:8081, https://registry-2:8081?pass=registry-s3cret",
            r"schema_registry_url: .*not in a query parameter",
        ),
        (
            "REFUND_REDIS__URL",
            "redis://redis:6379/0?client_secret=redis-s3cret",
            r"redis\.url: .*not in a query parameter",
        ),
        (
            "REFUND_SCHEMA_REGISTRY_URL",
            "https://registry:8081?access_token=registry-s3cret",
            r"schema_registry_url: .*not in a query parameter",
        ),
        (
            "REFUND_REDIS__URL",
            "redis://redis-s3cret@redis:6379/0",
            r"redis: .*a user in redis\.url needs redis\.password",
        ),
        (
            "REFUND_SCHEMA_REGISTRY_URL",
            "https://registry-s3cret@registry:8081",
            r"schema_registry_url: .*put the user in schema_registry\.username",
        ),
        (
            "REFUND_SCHEMA_REGISTRY_URL",
            "https://registry-1:8081,registry-2:8081",
            r"schema_registry_url: .*http:// or https:// URLs",
        ),
    ],
)
def test_a_password_anywhere_in_a_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError, match=expected) as caught:
        load_settings(_write(tmp_path, ""))

    _assert_no_secret(str(caught.value))
    assert variable in str(caught.value)


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (Settings, {"kafka": {"sasl_password": ["kafka-s3cret"]}}),
        (Settings, {"application_id": "kafka-s3cret!"}),
        (KafkaSettings, {"ssl_key_password": ["key-s3cret"]}),
        (RedisSettings, {"password": ["redis-s3cret"]}),
    ],
)
def test_secrets_never_appear_in_errors_of_settings_built_in_code(
    model: type[BaseModel], values: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(values)

    _assert_no_secret(str(caught.value))


@pytest.mark.parametrize(
    "key",
    [
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.token",
        "sasl.jaas.config",
        "ssl.key.pem",
    ],
)
def test_secret_passthrough_values_are_masked_in_repr_and_json(key: str) -> None:
    kafka = KafkaSettings(librdkafka={key: "oauth-s3cret", "socket.keepalive.enable": "true"})

    for shown in (repr(kafka), str(kafka), kafka.model_dump_json()):
        _assert_no_secret(shown)
        assert "socket.keepalive.enable" in shown
    assert kafka.admin_config()[key] == "oauth-s3cret"


def test_urls_without_passwords_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFUND_REDIS__URL", "redis://user@redis:6379/0?socket_keepalive=yes")
    monkeypatch.setenv("REFUND_REDIS__PASSWORD", "redis-s3cret")  # the ACL user's
    monkeypatch.setenv("REFUND_SCHEMA_REGISTRY_URL", "http://registry-1:8081, http://registry-2")

    settings = load_settings(_write(tmp_path, ""))

    assert settings.redis.url == "redis://user@redis:6379/0?socket_keepalive=yes"
    assert settings.schema_registry_url == "http://registry-1:8081, http://registry-2"


def test_changed_settings_are_checked_as_loaded_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _secret_env(monkeypatch)
    settings = load_settings(_write(tmp_path, _sasl_yaml()))
    values = settings.model_dump()
    assert validate_settings(values, "unchanged") == settings

    values["redis"]["url"] = "redis://redis:6379/0?password=redis-s3cret"
    with pytest.raises(SettingsError, match=r"^changed: redis\.url: .*put the password") as caught:
        validate_settings(values, "changed")
    _assert_no_secret(str(caught.value))


# --------------------------------------------------------------------------- librdkafka


def test_producer_consumer_and_admin_configs_map_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _secret_env(monkeypatch)
    kafka = load_settings(_write(tmp_path, _sasl_yaml())).kafka
    common = {
        "bootstrap.servers": "broker-1:9093,broker-2:9093",
        "security.protocol": "SASL_SSL",
        "client.id": "refund-processor",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "refunds",
        "sasl.password": "kafka-s3cret",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/client.pem",
        "ssl.key.location": "/etc/client.key",
        "ssl.key.password": "key-s3cret",
    }
    passthrough = {
        "socket.keepalive.enable": "true",
        "sasl.oauthbearer.client.secret": "oauth-s3cret",
    }

    assert kafka.producer_config() == {
        **common,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        **passthrough,
    }
    assert kafka.producer_config("tx-7")["transactional.id"] == "tx-7"
    assert kafka.consumer_config("refund-processor") == {
        **common,
        "group.id": "refund-processor",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        **passthrough,
    }
    assert kafka.admin_config() == {**common, **passthrough}


@pytest.mark.parametrize(
    "key",
    [
        "bootstrap.servers",
        "metadata.broker.list",
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "client.id",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "partitioner",
        "transactional.id",
        "group.id",
        "isolation.level",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "partition.assignment.strategy",
    ],
)
def test_the_passthrough_cannot_set_a_typed_setting_or_a_guarantee(key: str) -> None:
    """Nor its librdkafka alias (metadata.broker.list, sasl.mechanisms, request.required.acks)."""
    with pytest.raises(ValidationError, match=rf"{key} cannot be set here"):
        KafkaSettings(librdkafka={key: "x"})


def test_the_passthrough_is_applied_last() -> None:
    kafka = KafkaSettings(librdkafka={"linger.ms": "50", "auto.commit.interval.ms": "1"})

    assert kafka.producer_config()["linger.ms"] == "50"
    assert list(kafka.consumer_config("g"))[-2:] == ["linger.ms", "auto.commit.interval.ms"]


def test_passthrough_numbers_and_booleans_in_yaml_are_librdkafkas_text(tmp_path: Path) -> None:
    text = (
        "kafka:\n  librdkafka:\n    linger.ms: 0.5\n    batch.num.messages: 1000\n"
        "    socket.keepalive.enable: true\n    enable.ssl.certificate.verification: false\n"
    )

    settings = load_settings(_write(tmp_path, text))

    assert settings.kafka.librdkafka == {
        "linger.ms": "0.5",
        "batch.num.messages": "1000",
        "socket.keepalive.enable": "true",
        "enable.ssl.certificate.verification": "false",
    }


def test_clients_built_from_the_configs_work_against_a_real_broker(
    kafka_bootstrap: str, admin: KafkaAdmin, unique_topic: Callable[[str], str]
) -> None:
    """librdkafka accepts every mapped key, transactions work, read_committed reads them."""
    topic = admin.create_topic(unique_topic("settings"), 1)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)

    assert topic in AdminClient(kafka.admin_config()).list_topics(timeout=10).topics
    producer = Producer(kafka.producer_config(f"test-{uuid.uuid4().hex}"))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"v", b"k")
    producer.commit_transaction(30)

    consumer = Consumer(kafka.consumer_config(f"group-{uuid.uuid4().hex}"))
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        received = None
        while received is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                received = msg
        assert received is not None, "the committed record never arrived"
        assert (received.key(), received.value()) == (b"k", b"v")
    finally:
        consumer.close()


# --------------------------------------------------------------------------- redis, serde


def test_the_redis_client_talks_bytes_to_the_configured_server(redis_url: str) -> None:
    client = RedisSettings(url=redis_url, socket_timeout_s=2).client()
    key = f"test-settings-{uuid.uuid4().hex}"
    try:
        client.set(key, "v")
        assert client.get(key) == b"v"
    finally:
        client.delete(key)


@pytest.mark.parametrize(
    ("url", "tls"),
    [("redis://redis.internal:6380/1", True), ("rediss://redis.internal:6380/1", False)],
)
def test_redis_tls_and_password_reach_the_connection_pool(url: str, tls: bool) -> None:
    """A rediss:// URL is TLS with its CA whatever `tls` says."""
    client = RedisSettings(
        url=url, password="redis-s3cret", tls=tls, tls_ca_location="/etc/redis-ca.pem"
    ).client()

    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["password"] == "redis-s3cret"
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/redis-ca.pem"
    assert pool.connection_kwargs["db"] == 1


def test_the_redis_socket_timeout_bounds_connecting_and_every_command() -> None:
    kwargs = RedisSettings(socket_timeout_s=2.5).client().connection_pool.connection_kwargs

    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (2.5, 2.5)


class _RegistryHandler(BaseHTTPRequestHandler):
    """Gives every schema id 1 and records the credentials each request carried."""

    server: _RecordingRegistry

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.authorizations.append(self.headers["Authorization"])
        body = json.dumps({"id": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingRegistry(ThreadingHTTPServer):
    """A schema registry on a free local port, for what clients send it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.authorizations: list[str | None] = []


@pytest.mark.parametrize(
    ("credentials", "authorization"),
    [
        (
            {"username": "refunds", "password": "registry-s3cret"},
            "Basic " + base64.b64encode(b"refunds:registry-s3cret").decode(),
        ),
        ({}, None),
    ],
)
def test_the_schema_registry_gets_the_configured_basic_auth(
    credentials: dict[str, str], authorization: str | None
) -> None:
    server = _RecordingRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = Settings(
            schema_registry_url=f"http://127.0.0.1:{server.server_port}",
            schema_registry=SchemaRegistrySettings.model_validate(credentials),
        )
        make_serde(settings).encode("order_placed", order_placed() | {"occurred_at": T0}, "orders")
    finally:
        server.shutdown()
        server.server_close()

    assert server.authorizations == [authorization]


def test_make_serde_uses_the_confluent_framing_only_with_a_registry() -> None:
    assert make_serde(Settings()).framing == "single_object"
    with_registry = Settings(schema_registry_url="http://127.0.0.1:8081")
    assert make_serde(with_registry).framing == "confluent"
