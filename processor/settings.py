"""Runtime settings of the live processor and the publisher: one frozen object.

Loaded from a YAML file (``config/local.yaml`` by default) with environment variables on
top (prefix ``REFUND_``, nesting by ``__``: ``REFUND_KAFKA__BOOTSTRAP_SERVERS``), so a
deployment keeps its secrets in the environment and everything else reviewable in a file.

Why one object and why frozen: every Kafka/Redis client of the process is built from it,
and the librdkafka keys are mapped in exactly one place (:class:`KafkaSettings`), so the
guarantees SPEC section 7 depends on (idempotence, ``read_committed``, manual offsets,
murmur2 partitioning) cannot drift between the processor, the publisher and the tests.

Secrets are ``SecretStr`` (masked in ``repr``/``str``), validation errors never show input
values, and URLs may not carry passwords (they would leak wherever a URL is logged).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

import redis
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as _SourceError

from processor.config import describe_problem
from processor.serde import Serde

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KafkaSettings",
    "MetricsSettings",
    "RedisSettings",
    "SchemaRegistrySettings",
    "Settings",
    "SettingsError",
    "TopicsSettings",
    "default_settings_file",
    "load_settings",
    "make_serde",
    "validate_settings",
]

ENV_PREFIX: Final = "REFUND_"
CONFIG_ENV: Final = "REFUND_CONFIG"
"""Environment variable naming the settings file when no path is given."""

_PACKAGE = Path(__file__).resolve().parent

#: librdkafka keys the passthrough may not set: each is either a typed field (so secrets stay
#: SecretStr and there is one place to look) or a choice SPEC section 7 depends on.
_OWNED_KEYS: Final = frozenset(
    {
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
    }
)
#: Passthrough keys whose values are masked in repr (OAUTHBEARER secrets, keystore passwords,
#: inline PEM keys, JAAS-like configs).
_SECRET_KEY = re.compile(r"password|secret|token|jaas|\.pem$|oauthbearer\.config")
#: URL query parameters that carry a credential: redis-py passes any it gets to the
#: connection (``?password=``), and a URL is shown wherever it is logged.
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)

TopicName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,200}$")]


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the file (or environment variable)
    and the dotted key, never a value."""


class _Section(BaseModel):
    """Frozen, closed (a misspelt key is an error, not a silently ignored default)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def _no_password_in_url(url: str, where: str) -> str:
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError(f"put the password in {where}, not in the URL")
    if any(
        _SECRET_QUERY_KEY.search(key) for key, _ in parse_qsl(parts.query, keep_blank_values=True)
    ):
        raise ValueError(f"put the password in {where}, not in a query parameter of the URL")
    return url


# --------------------------------------------------------------------------- kafka


class KafkaSettings(_Section):
    """Connection to Kafka, and THE place librdkafka configuration is made."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = Field(default="refund-processor", min_length=1)
    librdkafka: dict[str, str] = Field(default_factory=dict)
    """Any other librdkafka property, applied last to every client (not the owned keys)."""

    @field_validator("librdkafka", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        """librdkafka takes every value as text; YAML reads `linger.ms: 5` as a number and
        `enable.ssl.certificate.verification: false` as a boolean."""
        if not isinstance(value, Mapping):
            return value
        return {
            key: ("true" if item else "false")
            if isinstance(item, bool)
            else str(item)
            if isinstance(item, int | float)
            else item
            for key, item in value.items()
        }

    @field_validator("librdkafka")
    @classmethod
    def _not_owned(cls, value: dict[str, str]) -> dict[str, str]:
        owned = sorted(key for key in value if key in _OWNED_KEYS)
        if owned:
            raise ValueError(
                f"{', '.join(owned)} cannot be set here: use the kafka settings field or "
                "keep the processor's fixed choice"
            )
        return value

    @model_validator(mode="after")
    def _auth_consistent(self) -> KafkaSettings:
        """Credentials the protocol would not use are a misconfiguration, not a no-op."""
        sasl_given = [
            name
            for name in ("sasl_mechanism", "sasl_username", "sasl_password")
            if getattr(self, name) is not None
        ]
        if sasl_given and not self.security_protocol.startswith("SASL_"):
            raise ValueError(
                f"{', '.join(sasl_given)} set but security_protocol is {self.security_protocol}"
            )
        ssl_given = [
            name
            for name in (
                "ssl_ca_location",
                "ssl_certificate_location",
                "ssl_key_location",
                "ssl_key_password",
            )
            if getattr(self, name) is not None
        ]
        if ssl_given and not self.security_protocol.endswith("SSL"):
            raise ValueError(
                f"{', '.join(ssl_given)} set but security_protocol is {self.security_protocol}"
            )
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"sasl_mechanism is required with {self.security_protocol}")
            if self.sasl_mechanism != "OAUTHBEARER" and (
                self.sasl_username is None or self.sasl_password is None
            ):
                raise ValueError(
                    f"sasl_username and sasl_password are required with {self.sasl_mechanism}"
                )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (self._masked(self.librdkafka) if name == "librdkafka" else value)

    @field_serializer("librdkafka", when_used="json")
    def _masked(self, librdkafka: dict[str, str]) -> dict[str, str]:
        """As SecretStr is: secret passthrough values masked in repr and in JSON dumps (the
        startup log line), in clear for the clients."""
        return {
            key: "**********" if _SECRET_KEY.search(key) else item
            for key, item in librdkafka.items()
        }

    def _common(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        optional: dict[str, str | SecretStr | None] = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
        }
        for key, value in optional.items():
            if isinstance(value, SecretStr):
                config[key] = value.get_secret_value()
            elif value is not None:
                config[key] = value
        return config

    def producer_config(self, transactional_id: str | None = None) -> dict[str, Any]:
        """librdkafka config of a producer (transactional when ``transactional_id`` is given).

        Holds secrets in clear: pass it to the client, never log it."""
        config = self._common()
        # A retried send is deduplicated by the broker: retries never duplicate a message.
        config["enable.idempotence"] = True
        # A write is acknowledged only once every in-sync replica has it: no loss on failover.
        config["acks"] = "all"
        # Java's default partition for a key, so order_id-keyed topics are co-partitioned
        # whichever client wrote them (librdkafka's default, consistent_random, is CRC32).
        config["partitioner"] = "murmur2_random"
        # Wait up to 5 ms to fill batches: far more throughput for a negligible delay.
        config["linger.ms"] = 5
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
        config.update(self.librdkafka)
        return config

    def consumer_config(self, group_id: str) -> dict[str, Any]:
        """librdkafka config of a consumer in ``group_id``. Holds secrets: never log it."""
        config = self._common()
        config["group.id"] = group_id
        # Never see writes of aborted or still-open transactions (exactly-once reads).
        config["isolation.level"] = "read_committed"
        # Offsets are committed with the outputs, in the producer's transaction.
        config["enable.auto.commit"] = False
        # Nothing stores an offset behind the processor's back.
        config["enable.auto.offset.store"] = False
        # A new group starts at the beginning: no input is skipped.
        config["auto.offset.reset"] = "earliest"
        # Co-partitioned topics: partition N of each input goes to the same member.
        config["partition.assignment.strategy"] = "range"
        config.update(self.librdkafka)
        return config

    def admin_config(self) -> dict[str, Any]:
        """librdkafka config of an admin client. Holds secrets: never log it."""
        config = self._common()
        config.update(self.librdkafka)
        return config


# --------------------------------------------------------------------------- redis


class RedisSettings(_Section):
    """Where the state store lives."""

    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None
    tls: bool = False
    """TLS even for a ``redis://`` URL (a ``rediss://`` URL always uses TLS)."""
    tls_ca_location: str | None = None
    socket_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return _no_password_in_url(value, "redis.password")

    @property
    def uses_tls(self) -> bool:
        return self.tls or urlsplit(self.url).scheme == "rediss"

    @model_validator(mode="after")
    def _user_with_password(self) -> RedisSettings:
        """A user alone cannot log in, and may be a password written where the user goes:
        refused, since the URL is logged."""
        if urlsplit(self.url).username is not None and self.password is None:
            raise ValueError(
                "a user in redis.url needs redis.password (a password goes there, never in the URL)"
            )
        return self

    @model_validator(mode="after")
    def _tls_over_tcp(self) -> RedisSettings:
        if self.uses_tls and urlsplit(self.url).scheme == "unix":
            raise ValueError("tls needs a redis:// or rediss:// URL, not a unix socket")
        return self

    def client(self) -> redis.Redis:
        """A client returning bytes (the store decodes its own values)."""
        url = self.url
        options: dict[str, Any] = {}
        if self.uses_tls:
            url = "rediss" + url[url.index(":") :]
            if self.tls_ca_location is not None:
                options["ssl_ca_certs"] = self.tls_ca_location
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        return redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=self.socket_timeout_s,
            socket_connect_timeout=self.socket_timeout_s,
            **options,
        )


# --------------------------------------------------------------------------- topics


class TopicsSettings(_Section):
    """Names of the topics of SPEC section 2 (internal ones derive from application_id)."""

    orders: TopicName = "orders.events"
    tracking: TopicName = "courier.tracking"
    wallet: TopicName = "wallet.commands"
    fulfilment: TopicName = "fulfilment.commands"
    decisions: TopicName = "refunds.decisions"
    dlq: TopicName = "refunds.dlq"

    @model_validator(mode="after")
    def _distinct(self) -> TopicsSettings:
        by_name: dict[str, str] = {}
        for role, name in self:
            if name in by_name:
                raise ValueError(f"{by_name[name]} and {role} are the same topic {name!r}")
            by_name[name] = role
        return self


class SchemaRegistrySettings(_Section):
    """Basic-auth credentials for the schema registry (its URL is ``schema_registry_url``)."""

    username: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> SchemaRegistrySettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self


class MetricsSettings(_Section):
    """Where `run` serves /metrics, /healthz and /readyz (processor/metrics.py)."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9108, ge=0, le=65535)
    """0: any free port (the `metrics served` log line names it)."""
    ready_max_lag: int = Field(default=10_000, ge=0)
    """/readyz answers 200 only while the summed lag of the assigned partitions is at most
    this many records."""


# --------------------------------------------------------------------------- settings


_file_values: ContextVar[dict[str, Any] | None] = ContextVar("_file_values", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The already-read YAML mapping, below the environment in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class Settings(BaseSettings):
    """Everything the live processor and the publisher need to connect and run."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    application_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,100}$")] = (
        "refund-processor"
    )
    """Consumer group id, and prefix of transactional ids and internal topic names."""
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicsSettings = TopicsSettings()
    schema_registry_url: str | None = None
    """When set, Avro uses the Confluent wire format with this registry."""
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    policy_file: Path | None = None
    """Policy YAML (None: ``config/policy.yaml``); relative to the working directory."""
    commit_interval_ms: int = Field(default=100, ge=1)
    """A batch, one transaction, starts at most once per interval (`runner.Intake`)."""
    max_batch_records: int = Field(default=40_000, ge=1)
    """Records per batch (one transaction) at most; it matters only catching up (live
    traffic fills far smaller batches). Bigger batches spread the commit and the Redis
    round trips over more events, and write an order's state once for more of its events
    (bench/live_bench.py: 11.9k events/s at 5,000, 16.1k at 20,000; with direct delivery
    17.5-18.2k at 20,000, 20.6-22.0k at 40,000). But a batch's transaction stays open
    while it is decided (about 2.3 s at 40,000 on the 2-core bench machine) and must end
    within the producer's transaction.timeout.ms (10 s, `Runner`), or the producer is
    fenced and the process exits; and its Redis scripts block the node for a few ms per
    1,000 orders they touch. Lower it on slower machines."""
    idle_partition_wait_ms: int = Field(default=500, ge=0)
    """How long an input partition read to its end stays quiet before order tasks leave it
    out of their clock (SPEC section 6; Kafka Streams' ``max.task.idle.ms``, 0 there by
    default). Records already on the broker, and committed, do not need it: a partition
    counts as idle only once read to the end the broker told of, and only while its log
    still ends there (docs/live.md). It covers records still on their way from a
    producer, or in a producer's open transaction (read_committed ends before it), which
    matter only when they are over `allowed_lateness` of event time behind the other
    inputs (a history published while the processor runs). Every burst's last events
    wait for it."""
    purge_interval_ms: int = Field(default=30_000, ge=0)
    """How often each instance deletes the internal topic's records below the offsets its
    tasks committed (Kafka Streams' ``repartition.purge.interval.ms``): no owner reads
    them again unless an operator resets the group's offsets of that topic. The topic has
    no time-based retention, so without it the topic grows forever, by watermark records
    alone while the inputs are idle. 0: never (to keep them for such a reset)."""
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the file (no .env or secrets dir)."""
        return (init_settings, env_settings, _FileSource(settings_cls))

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        """confluent-kafka's client splits it on commas and uses each URL: each is checked."""
        if value is None:
            return None
        for url in value.split(","):
            if urlsplit(url.strip()).scheme not in ("http", "https"):
                raise ValueError("must be http:// or https:// URLs, separated by commas")
            _no_password_in_url(url.strip(), "schema_registry.password")
            if urlsplit(url.strip()).username is not None:
                raise ValueError("put the user in schema_registry.username, not in the URL")
        return value

    @model_validator(mode="after")
    def _registry_credentials_need_url(self) -> Settings:
        if self.schema_registry.username is not None and self.schema_registry_url is None:
            raise ValueError("schema_registry credentials given but schema_registry_url is unset")
        return self

    @property
    def group_id(self) -> str:
        """Consumer group of the processor's instances."""
        return self.application_id

    def transactional_id(self, suffix: str) -> str:
        """A transactional id owned by this application (suffix: e.g. the task/partition)."""
        return f"{self.application_id}-{suffix}"

    @property
    def by_order_topic(self) -> str:
        """Internal topic: every input event re-keyed by order_id, plus watermarks."""
        return f"{self.application_id}-by-order"


# --------------------------------------------------------------------------- loading


def default_settings_file() -> Path:
    """config/local.yaml of a source checkout, or the copy an installed wheel carries."""
    installed = _PACKAGE / "default-config" / "local.yaml"
    return installed if installed.exists() else _PACKAGE.parent / "config" / "local.yaml"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"settings file {path} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Position and problem only: PyYAML's own message quotes the line, maybe a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SettingsError(f"settings file {path} is not valid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of keys to values")
    return raw


def _env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable of the setting at ``loc``: ``REFUND_KAFKA__CLIENT_ID``."""
    return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def _named_variables(names: list[str]) -> str:
    """Variables by name only, never a value: many are secrets."""
    return f"environment variable{'s' if len(names) > 1 else ''} {', '.join(names)}"


def _env_var_for(loc: tuple[int | str, ...]) -> str | None:
    """The environment variable that supplied the value at ``loc`` (or a parent), if any."""
    present = {name.upper() for name in os.environ}
    for end in range(len(loc), 0, -1):
        name = _env_name(loc[:end])
        if name in present:
            return name
    return None


def _settings_variables(loc: tuple[int | str, ...] = ()) -> list[str]:
    """The environment variables set that supply settings at or under ``loc``, by name (never
    a value: many are secrets). A check of a whole section (``kafka``) fails on what its
    keys say together, and some of them may come from the environment, not the file.
    ``$REFUND_CONFIG`` and other ``REFUND_*`` names that are no setting do not count."""
    roots = [loc] if loc else [(name,) for name in Settings.model_fields]
    prefixes = [_env_name(root) for root in roots]
    return sorted(
        name
        for name in os.environ
        if any(
            name.upper() == prefix or name.upper().startswith(prefix + "__") for prefix in prefixes
        )
    )


def _from_env(loc: tuple[int | str, ...]) -> str:
    """Where in the environment the value at ``loc`` came from, as a suffix of its problem."""
    exact = _env_var_for(loc)
    if exact is not None:
        return f" (from environment variable {exact})"
    under = _settings_variables(loc)
    if not under:
        return ""
    return f" (in part from {_named_variables(under)})"


def _not_json(exc: _SourceError) -> str:
    """pydantic-settings names the field whose environment value it could not parse, not
    the variable: these are the variables under that field meant as JSON and not JSON."""
    field = re.search(r'field "(\w+)"', str(exc))
    if field is None:
        return ""
    prefix = _env_name((field.group(1),))
    names = []
    for name, value in os.environ.items():
        if name.upper().startswith(prefix) and value.lstrip().startswith(("{", "[")):
            try:
                json.loads(value)
            except ValueError:
                names.append(name)
    return f" ({', '.join(sorted(names))}: not valid JSON)" if names else ""


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path`` (else ``$REFUND_CONFIG``, else :func:`default_settings_file`)
    with ``REFUND_*`` environment variables on top; raises :class:`SettingsError`."""
    if path is None:
        from_env = os.environ.get(CONFIG_ENV)
        path = Path(from_env) if from_env else default_settings_file()
    token = _file_values.set(_read_yaml(path))
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{describe_problem(error, Settings)}{_from_env(error['loc'])}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
        variables = _settings_variables()
        source = f"settings file {path}" + (
            f" and {_named_variables(variables)}" if variables else ""
        )
        raise SettingsError(f"{source}: {'; '.join(problems)}") from None
    except _SourceError as exc:  # an environment variable that is not valid JSON, etc.
        raise SettingsError(
            f"{ENV_PREFIX}* environment with settings file {path}: {exc}{_not_json(exc)}"
        ) from None
    finally:
        _file_values.reset(token)


def validate_settings(values: Mapping[str, Any], source: str) -> Settings:
    """Settings of ``values`` (all of them: a changed ``model_dump()``), checked as loaded
    settings are, which ``model_copy(update=...)`` skips (a password in a URL included);
    raises :class:`SettingsError` naming ``source``."""
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = [
            describe_problem(error, Settings)
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise SettingsError(f"{source}: {'; '.join(problems)}") from None


# --------------------------------------------------------------------------- serde


def make_serde(settings: Settings) -> Serde:
    """Single-object Avro without a registry; Confluent wire format with one."""
    if settings.schema_registry_url is None:
        return Serde.single_object()
    # Imported here: the registry client pulls in httpx & co., needless without a registry.
    from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: PLC0415

    conf: dict[str, str] = {"url": settings.schema_registry_url}
    credentials = settings.schema_registry
    if credentials.username is not None and credentials.password is not None:
        conf["basic.auth.user.info"] = (
            f"{credentials.username}:{credentials.password.get_secret_value()}"
        )
    return Serde.confluent(SchemaRegistryClient(conf))
