"""Avro serde: Kafka message bytes <-> plain dicts.

The schemas live as ``.avsc`` files in ``schemas/`` (see :func:`schemas_dir`). Each message
type is one Avro record in namespace ``refunds``; its JSON ``type`` is the snake_case form of
the record name (``order_placed`` <-> ``refunds.OrderPlaced``). A decoded message is the dict
fastavro gives (timestamp-millis fields are timezone-aware UTC ``datetime`` objects) with a
``"type"`` key added; the encoder takes the same shape (a ``"type"`` key is optional, and
checked when present).

Two framings:

* Avro single-object encoding (default): ``C3 01`` + the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form + the Avro binary body.
* Confluent wire format (with a schema registry): ``00`` + 4-byte big-endian schema id + body.
  Schemas are registered under ``<topic>-<record full name>`` (TopicRecordNameStrategy).

A :class:`Serde` decodes both framings (a Confluent frame needs a registry client). It writes
with its *reader* schemas (one per record name, the current version) and reads any writer
schema it knows by fingerprint or registry id, resolving it to the reader schema by Avro's
schema-resolution rules: this is how schema evolution works.

Schema files may reference named types defined in other files (``refunds.SkuQuantity``);
each message schema is made self-contained by inlining every referenced named type at its
first use, as Avro's Parsing Canonical Form and schema registries expect.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal, Protocol, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _avro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

__all__ = [
    "CONFLUENT_MAGIC",
    "INPUT_TYPES",
    "INTERNAL_TYPES",
    "MESSAGE_TYPES",
    "NAMESPACE",
    "ORDER_EVENT_TYPES",
    "OUTPUT_TYPES",
    "SCHEMAS_DIR_ENV",
    "SINGLE_OBJECT_MAGIC",
    "TRACKING_EVENT_TYPES",
    "UNKNOWN_ID_RETRY_S",
    "DecodeError",
    "DecodeReason",
    "EncodeError",
    "MessageSchema",
    "RegistryClient",
    "SchemaCatalog",
    "SchemaLoadError",
    "Serde",
    "SerdeError",
    "load_schemas",
    "record_name",
    "schemas_dir",
    "topic_record_subject",
    "type_name",
]

NAMESPACE: Final = "refunds"
SCHEMAS_DIR_ENV: Final = "REFUND_PROCESSOR_SCHEMAS_DIR"
SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = 0

ORDER_EVENT_TYPES: Final = (
    "order_placed",
    "package_shipped",
    "cancellation_requested",
    "order_cancelled",
    "claim_filed",
    "claim_reviewed",
    "return_received",
)
TRACKING_EVENT_TYPES: Final = ("tracking_update",)
INPUT_TYPES: Final = ORDER_EVENT_TYPES + TRACKING_EVENT_TYPES
OUTPUT_TYPES: Final = ("refund_command", "reship_command", "decision")
#: Records only the processor's own internal topics carry.
INTERNAL_TYPES: Final = ("watermark", "routed")
#: Every message type; each must have its record in ``schemas/``. Other top-level records
#: there (``SkuQuantity``) are named types for reference only.
MESSAGE_TYPES: Final = INPUT_TYPES + OUTPUT_TYPES + INTERNAL_TYPES

_SO_HEADER_LEN: Final = 10  # C3 01 + 8-byte fingerprint
_CF_HEADER_LEN: Final = 5  # 00 + 4-byte id
_MAX_BAD_IDS: Final = 4096
#: Seconds a schema id the registry did not find counts as unknown before it is asked again.
#: Not for good: a registry replica lagging behind the one a producer registered with does
#: not find a new id for a moment, and those records must decode once it has caught up. Not
#: zero: a flood of records with a bogus id then costs a request every few seconds, not each.
UNKNOWN_ID_RETRY_S: Final = 5.0

_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_RECORD_TYPES: Final = frozenset({"record", "error"})
_NAMED_TYPES: Final = frozenset({"record", "error", "enum", "fixed"})


# --------------------------------------------------------------------------- errors


DecodeReason = Literal[
    "bad_magic", "unknown_schema", "incompatible_schema", "truncated", "avro_decode_error"
]


class SerdeError(Exception):
    """Base of the errors this module raises."""


class DecodeError(SerdeError):
    """The bytes are not a message we can read; ``reason`` is meant for the dead-letter header.

    Reasons: ``bad_magic`` (neither framing), ``unknown_schema`` (fingerprint or schema id not
    known, or no reader schema for its record), ``incompatible_schema`` (the writer schema
    cannot be resolved to our reader schema), ``truncated`` (the bytes end too early),
    ``avro_decode_error`` (the body is not valid Avro for its schema, or has trailing bytes).
    """

    def __init__(self, reason: DecodeReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: DecodeReason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[DecodeError], tuple[DecodeReason, str]]:
        return (type(self), (self.reason, self.message))


class EncodeError(SerdeError):
    """The value does not fit the schema; ``field`` is the offending field's path
    (``lines[].quantity``), ``"type"`` for an unknown or mismatched type, ``""`` if unknown."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field or '<record>'}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[EncodeError], tuple[str, str]]:
        return (type(self), (self.field, self.message))


class SchemaLoadError(SerdeError):
    """A schema file or schema text is invalid, or a referenced named type is missing."""


# --------------------------------------------------------------------------- names


def type_name(record: str) -> str:
    """``refunds.OrderPlaced`` or ``OrderPlaced`` -> ``order_placed``."""
    short = record.rpartition(".")[2]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", short).lower()


def record_name(message_type: str) -> str:
    """``order_placed`` -> ``refunds.OrderPlaced``."""
    return f"{NAMESPACE}." + "".join(part.capitalize() for part in message_type.split("_"))


def topic_record_subject(topic: str, record: str) -> str:
    """Subject name under TopicRecordNameStrategy: ``<topic>-<record full name>``."""
    return f"{topic}-{record}"


# --------------------------------------------------------------------------- schema loading


def schemas_dir() -> Path:
    """Directory holding the ``.avsc`` files.

    ``$REFUND_PROCESSOR_SCHEMAS_DIR`` if set (a copy of ``schemas/`` with its ``previous/``,
    or records an earlier version left in the internal topic cannot be read); else
    ``schemas/`` inside the package (for an installed wheel that ships them there), else
    ``schemas/`` beside the package (a source checkout). Independent of pyproject and of
    the working directory.
    """
    env = os.environ.get(SCHEMAS_DIR_ENV)
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    candidates = (package / "schemas", package.parent / "schemas")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.avsc")):
            return candidate
    raise SchemaLoadError(
        f"no schemas directory with .avsc files at {' or '.join(map(str, candidates))}; "
        f"set {SCHEMAS_DIR_ENV}"
    )


def _fullname(name: str, namespace: str) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


class _Normalizer:
    """Rewrites schemas so that named types are defined separately under their full names
    and referenced by full name everywhere; collects the definitions."""

    def __init__(self, definitions: dict[str, dict[str, Any]], origins: dict[str, str]) -> None:
        self.definitions = definitions
        self.origins = origins

    def walk(self, schema: Any, namespace: str, source: str) -> Any:
        if isinstance(schema, str):
            return schema if schema in _PRIMITIVES else _fullname(schema, namespace)
        if isinstance(schema, list):
            return [self.walk(branch, namespace, source) for branch in schema]
        if not isinstance(schema, dict) or "type" not in schema:
            raise SchemaLoadError(f"{source}: not an Avro schema: {schema!r}")
        kind = schema["type"]
        if kind in _NAMED_TYPES:
            return self._define(schema, namespace, source)
        if kind == "array":
            return {**schema, "items": self.walk(schema["items"], namespace, source)}
        if kind == "map":
            return {**schema, "values": self.walk(schema["values"], namespace, source)}
        if isinstance(kind, str) and kind in _PRIMITIVES:
            return schema  # possibly with a logicalType
        return self.walk(kind, namespace, source)  # {"type": "refunds.X"} or nested schema

    def _define(self, schema: dict[str, Any], namespace: str, source: str) -> str:
        name = schema.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaLoadError(f"{source}: named type without a name: {schema!r}")
        if "." in name:
            own_namespace = name.rpartition(".")[0]
        else:
            own_namespace = schema.get("namespace", namespace) or ""
        full = _fullname(name, own_namespace)
        definition: dict[str, Any] = {"type": schema["type"], "name": full}
        for key, value in schema.items():
            if key in ("type", "name", "namespace", "fields"):
                continue
            if key == "aliases":
                definition[key] = [_fullname(alias, own_namespace) for alias in value]
            else:
                definition[key] = value
        if schema["type"] in _RECORD_TYPES:
            fields = schema.get("fields")
            if not isinstance(fields, list):
                raise SchemaLoadError(f"{source}: record {full} has no fields list")
            definition["fields"] = [
                {**fld, "type": self.walk(fld["type"], own_namespace, source)} for fld in fields
            ]
        existing = self.definitions.get(full)
        if existing is not None and existing != definition:
            raise SchemaLoadError(
                f"{source}: named type {full} is already defined differently "
                f"in {self.origins.get(full, '?')}"
            )
        self.definitions[full] = definition
        self.origins.setdefault(full, source)
        return full


def _inline(schema: Any, definitions: Mapping[str, Mapping[str, Any]], seen: set[str]) -> Any:
    """Expand a normalized schema: each named type is defined at its first use."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES or schema in seen:
            return schema
        definition = definitions.get(schema)
        if definition is None:
            raise SchemaLoadError(f"unknown named type {schema!r}")
        seen.add(schema)
        out = dict(definition)
        if out["type"] in _RECORD_TYPES:
            out["fields"] = [
                {**fld, "type": _inline(fld["type"], definitions, seen)}
                for fld in definition["fields"]
            ]
        return out
    if isinstance(schema, list):
        return [_inline(branch, definitions, seen) for branch in schema]
    kind = schema["type"]
    if kind == "array":
        return {**schema, "items": _inline(schema["items"], definitions, seen)}
    if kind == "map":
        return {**schema, "values": _inline(schema["values"], definitions, seen)}
    return schema


def _field_paths(schema: Any, prefix: str, out: dict[str, str]) -> None:
    """Map ``<record full name>.<field>`` (fastavro's validation names) to a readable path."""
    if isinstance(schema, list):
        for branch in schema:
            _field_paths(branch, prefix, out)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in _RECORD_TYPES:
            for fld in schema["fields"]:
                path = f"{prefix}{fld['name']}"
                out.setdefault(f"{schema['name']}.{fld['name']}", path)
                _field_paths(fld["type"], f"{path}.", out)
        elif kind == "array":
            _field_paths(schema["items"], f"{prefix.removesuffix('.')}[].", out)
        elif kind == "map":
            _field_paths(schema["values"], f"{prefix.removesuffix('.')}{{}}.", out)


def _is_timestamp(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(_is_timestamp(branch) for branch in schema)
    return isinstance(schema, dict) and schema.get("logicalType") in (
        "timestamp-millis",
        "timestamp-micros",
    )


@dataclass(frozen=True, slots=True, eq=False)
class MessageSchema:
    """One version of one message record, ready for the hot path."""

    name: str
    """Record full name, e.g. ``refunds.OrderPlaced``."""
    type_name: str
    """The JSON ``type``, e.g. ``order_placed``."""
    schema: Mapping[str, Any]
    """Self-contained schema JSON (named types inlined at first use, full names)."""
    schema_text: str
    """``schema`` as compact JSON: what is registered in a schema registry."""
    parsed: Any
    """fastavro's parsed schema."""
    canonical_form: str
    """Avro Parsing Canonical Form."""
    fingerprint: bytes
    """CRC-64-AVRO of the canonical form, 8 bytes little-endian (as in the header)."""
    timestamp_fields: tuple[str, ...]
    field_paths: Mapping[str, str]

    @classmethod
    def from_schema(
        cls,
        schema: Mapping[str, Any] | str,
        named_types: Mapping[str, Mapping[str, Any]] | None = None,
        source: str = "<schema>",
    ) -> MessageSchema:
        """Build from schema JSON (text or dict) whose top level is a record. References to
        named types not defined in it are resolved from ``named_types`` (full names, as in
        :attr:`SchemaCatalog.named_types`)."""
        try:
            raw = json.loads(schema) if isinstance(schema, str) else schema
        except ValueError as exc:
            raise SchemaLoadError(f"{source}: not JSON: {exc}") from exc
        if not isinstance(raw, Mapping) or raw.get("type") not in _RECORD_TYPES:
            raise SchemaLoadError(f"{source}: the top level must be a record")
        own: dict[str, dict[str, Any]] = {}
        try:
            name = _Normalizer(own, {}).walk(dict(raw), "", source)
        except (KeyError, TypeError, AttributeError) as exc:
            raise SchemaLoadError(f"{source}: malformed schema: {exc!r}") from exc
        # types defined here win over same-named ones of ``named_types`` (another version)
        return cls._build(name, {**(named_types or {}), **own}, source)

    @classmethod
    def _build(
        cls, name: str, definitions: Mapping[str, Mapping[str, Any]], source: str
    ) -> MessageSchema:
        try:
            standalone = _inline(name, definitions, set())
            parsed = parse_schema(standalone, {})
            canonical = to_parsing_canonical_form(parsed)
        except SchemaLoadError as exc:
            raise SchemaLoadError(f"{source}: {exc}") from exc
        except Exception as exc:  # fastavro raises several kinds for a bad schema
            raise SchemaLoadError(f"{source}: invalid Avro schema {name}: {exc}") from exc
        paths: dict[str, str] = {}
        _field_paths(standalone, "", paths)
        return cls(
            name=name,
            type_name=type_name(name),
            schema=standalone,
            schema_text=json.dumps(standalone, separators=(",", ":")),
            parsed=parsed,
            canonical_form=canonical,
            fingerprint=bytes.fromhex(_avro_fingerprint(canonical, "CRC-64-AVRO")),
            timestamp_fields=tuple(
                fld["name"] for fld in standalone["fields"] if _is_timestamp(fld["type"])
            ),
            field_paths=paths,
        )


@dataclass(frozen=True, slots=True)
class SchemaCatalog:
    """The schemas of one directory: the message records and every named type."""

    messages: Mapping[str, MessageSchema]
    """Message schemas by record full name (``refunds.OrderPlaced``)."""
    named_types: Mapping[str, Mapping[str, Any]]
    """Every named type (records included), normalized, by full name."""

    def __getitem__(self, key: str) -> MessageSchema:
        """Look up by type (``order_placed``), record name or full name."""
        for candidate in (key, f"{NAMESPACE}.{key}", record_name(key)):
            found = self.messages.get(candidate)
            if found is not None:
                return found
        raise KeyError(key)

    def __iter__(self) -> Iterator[MessageSchema]:
        return iter(self.messages.values())

    def __len__(self) -> int:
        return len(self.messages)

    def message_schema(self, schema: Mapping[str, Any] | str) -> MessageSchema:
        """Another version of a record (e.g. an older or newer one), resolving references
        to this catalog's named types."""
        return MessageSchema.from_schema(schema, self.named_types)


def load_schemas(directory: Path | str | None = None) -> SchemaCatalog:
    """Load every ``*.avsc`` of ``directory`` (default :func:`schemas_dir`) into one catalog.

    Files may reference named types of other files. Each type of :data:`MESSAGE_TYPES` must
    be defined; other top-level records are named types only. The default directory's
    catalog is loaded once per process.
    """
    if directory is None:
        return _default_catalog()
    return _load_catalog(Path(directory))


@lru_cache(maxsize=1)
def _default_catalog() -> SchemaCatalog:
    return _load_catalog(schemas_dir())


@lru_cache(maxsize=1)
def previous_schemas() -> tuple[MessageSchema, ...]:
    """Earlier versions of our records (``previous/*.avsc`` in :func:`schemas_dir`), which
    every default serde still reads: after an upgrade, the internal topic still holds
    records the version before wrote."""
    catalog = _default_catalog()
    return tuple(
        catalog.message_schema(_read_json(path))
        for path in sorted((schemas_dir() / "previous").glob("*.avsc"))
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaLoadError(f"{path}: {exc}") from exc


def _load_catalog(directory: Path) -> SchemaCatalog:
    files = sorted(directory.glob("*.avsc"))
    if not files:
        raise SchemaLoadError(f"no .avsc files in {directory}")
    definitions: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    normalizer = _Normalizer(definitions, origins)
    for path in files:
        normalizer.walk(_read_json(path), "", str(path))
    messages: dict[str, MessageSchema] = {}
    for message_type in MESSAGE_TYPES:
        name = record_name(message_type)
        if name not in definitions:
            raise SchemaLoadError(f"{directory}: no schema defines record {name}")
        messages[name] = MessageSchema._build(name, definitions, origins[name])
    return SchemaCatalog(messages=messages, named_types=definitions)


# --------------------------------------------------------------------------- serde


class RegistryClient(Protocol):
    """What :class:`Serde` uses of confluent-kafka's ``SchemaRegistryClient`` (any object with
    these methods works, e.g. a test double). ``get_schema`` returns an object with
    ``schema_str`` and ``schema_type``; ``lookup_schema`` one with ``schema_id``. A "not found"
    error must carry ``http_status_code == 404`` (as ``SchemaRegistryError`` does)."""

    def register_schema(self, subject_name: str, schema: Any) -> int: ...

    def lookup_schema(self, subject_name: str, schema: Any) -> Any: ...

    def get_schema(self, schema_id: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class _PlainRegistrySchema:
    """Stand-in for confluent-kafka's ``Schema`` when its schema-registry extra is missing
    (then no real client can exist; only duck-typed clients)."""

    schema_str: str
    schema_type: str = "AVRO"


def _registry_schema_factory() -> Any:
    try:  # needs confluent-kafka[schemaregistry] (attrs, httpx, authlib, cachetools)
        from confluent_kafka.schema_registry import Schema  # noqa: PLC0415
    except ImportError:
        return _PlainRegistrySchema
    return Schema


@dataclass(frozen=True, slots=True, eq=False)
class _Encoder:
    schema: MessageSchema
    parsed: Any
    header: bytes
    type_name: str
    timestamp_fields: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class _Decoder:
    writer: MessageSchema
    writer_parsed: Any
    reader_parsed: Any  # None when the writer schema is the reader schema
    type_name: str


class Serde:
    """Encodes and decodes our messages.

    ``readers``: the current schema of each record (default: :func:`load_schemas`). Messages
    are written with it and every decoded message is resolved to it. ``writers``: other
    versions (older or newer) this instance can read; with a registry, unknown schema ids
    are fetched from it. Build with :meth:`single_object` or :meth:`confluent`.

    After the first message of each schema (and, with a registry, each topic) the per-message
    path is dictionary look-ups and fastavro calls only.
    """

    def __init__(
        self,
        readers: Iterable[MessageSchema] | None = None,
        writers: Iterable[MessageSchema] = (),
        registry: RegistryClient | None = None,
        *,
        auto_register: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._named_types: Mapping[str, Mapping[str, Any]] = {}
        if readers is None:
            catalog = load_schemas()
            readers = catalog
            writers = [*writers, *previous_schemas()]
            self._named_types = catalog.named_types
        self._registry = registry
        self._registry_schema = _registry_schema_factory() if registry is not None else None
        self._auto_register = auto_register
        self._clock = clock
        self._readers: dict[str, MessageSchema] = {}
        self._encoders: dict[str, _Encoder] = {}
        self._by_fingerprint: dict[bytes, _Decoder] = {}
        self._by_id: dict[int, _Decoder] = {}
        self._bad_ids: dict[int, tuple[str, float]] = {}  # id -> (problem, until when)
        self._prefixes: dict[tuple[str, str], bytes] = {}
        for reader in readers:
            if reader.name in self._readers:
                raise ValueError(f"two reader schemas for {reader.name}")
            self._readers[reader.name] = reader
            encoder = _Encoder(
                schema=reader,
                parsed=reader.parsed,
                header=SINGLE_OBJECT_MAGIC + reader.fingerprint,
                type_name=reader.type_name,
                timestamp_fields=reader.timestamp_fields,
            )
            for key in (reader.name, reader.name.rpartition(".")[2], reader.type_name):
                self._encoders.setdefault(key, encoder)
            self._by_fingerprint[reader.fingerprint] = _Decoder(
                reader, reader.parsed, None, reader.type_name
            )
        for writer in writers:
            if writer.fingerprint not in self._by_fingerprint:
                decoder = self._decoder_for(writer)
                if decoder is None:
                    raise ValueError(f"writer schema {writer.name} has no reader schema")
                self._by_fingerprint[writer.fingerprint] = decoder

    @classmethod
    def single_object(
        cls, readers: Iterable[MessageSchema] | None = None, writers: Iterable[MessageSchema] = ()
    ) -> Serde:
        """Avro single-object encoding (no registry)."""
        return cls(readers, writers)

    @classmethod
    def confluent(
        cls,
        client: RegistryClient,
        readers: Iterable[MessageSchema] | None = None,
        writers: Iterable[MessageSchema] = (),
        *,
        auto_register: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> Serde:
        """Confluent wire format with ``client``. ``auto_register=False`` only looks schemas up
        (they must have been registered under ``<topic>-<record full name>``). ``clock``
        (seconds, monotonic) times :data:`UNKNOWN_ID_RETRY_S`."""
        return cls(readers, writers, client, auto_register=auto_register, clock=clock)

    @property
    def framing(self) -> Literal["single_object", "confluent"]:
        return "single_object" if self._registry is None else "confluent"

    def schema(self, record: str) -> MessageSchema:
        """The schema this serde writes for ``record`` (type, record name or full name)."""
        encoder = self._encoders.get(record)
        if encoder is None:
            raise KeyError(record)
        return encoder.schema

    # ----------------------------------------------------------------- encode

    def encode(self, record: str, value: Mapping[str, Any], topic: str) -> bytes:
        """Encode ``value`` as ``record`` (type ``order_placed``, ``OrderPlaced`` or
        ``refunds.OrderPlaced``) for ``topic``. Raises :class:`EncodeError`; with a registry,
        the first message of a (topic, record) may raise the client's errors."""
        encoder = self._encoders.get(record)
        if encoder is None:
            raise EncodeError("type", f"unknown record or type {record!r}")
        declared = value.get("type")
        if declared is not None and declared != encoder.type_name:
            raise EncodeError(
                "type", f"value has type {declared!r}, encoding as {encoder.type_name!r}"
            )
        for name in encoder.timestamp_fields:
            moment = value.get(name)
            if isinstance(moment, datetime) and moment.utcoffset() is None:
                raise EncodeError(name, "naive datetime; give a timezone-aware (UTC) datetime")
        if self._registry is None:
            prefix = encoder.header
        else:
            prefix = self._prefixes.get((topic, encoder.schema.name)) or self._register(
                topic, encoder
            )
        out = io.BytesIO()
        out.write(prefix)
        try:
            schemaless_writer(out, encoder.parsed, value)
        except Exception as exc:  # fastavro raises TypeError, ValueError, OverflowError...
            raise _encode_error(encoder.schema, value, exc) from exc
        return out.getvalue()

    def _register(self, topic: str, encoder: _Encoder) -> bytes:
        assert self._registry is not None
        assert self._registry_schema is not None
        schema = encoder.schema
        subject = topic_record_subject(topic, schema.name)
        registry_schema = self._registry_schema(schema_str=schema.schema_text, schema_type="AVRO")
        if self._auto_register:
            schema_id = self._registry.register_schema(subject, registry_schema)
        else:
            found = self._registry.lookup_schema(subject, registry_schema)
            schema_id = cast(int, found.schema_id)
        prefix = bytes((CONFLUENT_MAGIC,)) + schema_id.to_bytes(4, "big")
        self._prefixes[(topic, schema.name)] = prefix
        self._by_id.setdefault(schema_id, self._by_fingerprint[schema.fingerprint])
        return prefix

    # ----------------------------------------------------------------- decode

    def decode(self, data: bytes, topic: str) -> dict[str, Any]:
        """Decode one message value into a dict with ``"type"``. ``topic`` is used in error
        messages only. Raises :class:`DecodeError` for bad input; with a registry, a registry
        failure other than "not found" propagates (retry, do not dead-letter)."""
        size = len(data)
        if size >= 2 and data[0] == 0xC3 and data[1] == 0x01:
            if size < _SO_HEADER_LEN:
                raise DecodeError("truncated", f"{topic}: {size} bytes, header needs 10")
            decoder = self._by_fingerprint.get(data[2:_SO_HEADER_LEN])
            if decoder is None:
                raise DecodeError(
                    "unknown_schema",
                    f"{topic}: unknown schema fingerprint {data[2:_SO_HEADER_LEN].hex()}",
                )
            start = _SO_HEADER_LEN
        elif size >= 1 and data[0] == CONFLUENT_MAGIC:
            if size < _CF_HEADER_LEN:
                raise DecodeError("truncated", f"{topic}: {size} bytes, header needs 5")
            schema_id = int.from_bytes(data[1:_CF_HEADER_LEN], "big")
            decoder = self._by_id.get(schema_id) or self._fetch(schema_id, topic)
            start = _CF_HEADER_LEN
        else:
            raise DecodeError(
                "bad_magic",
                f"{topic}: empty message"
                if size == 0
                else f"{topic}: starts {data[:2].hex()}, "
                "neither single-object (c301) nor Confluent (00) framing",
            )
        stream = io.BytesIO(data)
        stream.seek(start)
        try:
            value = schemaless_reader(stream, decoder.writer_parsed, decoder.reader_parsed)
        except Exception as exc:  # fastavro raises many kinds for corrupt input
            raise _decode_error(decoder.writer, topic, exc) from exc
        if stream.tell() != size:
            raise DecodeError(
                "avro_decode_error",
                f"{topic}: {size - stream.tell()} bytes after the {decoder.writer.name} record",
            )
        result = cast(dict[str, Any], value)
        result["type"] = decoder.type_name
        return result

    def _decoder_for(self, writer: MessageSchema) -> _Decoder | None:
        known = self._by_fingerprint.get(writer.fingerprint)
        if known is not None:
            return known
        reader = self._readers.get(writer.name)
        if reader is None:
            return None
        return _Decoder(writer, writer.parsed, reader.parsed, reader.type_name)

    def _fetch(self, schema_id: int, topic: str) -> _Decoder:
        known_bad = self._bad_ids.get(schema_id)
        if known_bad is not None:
            known_problem, until = known_bad
            if self._clock() < until:
                raise DecodeError("unknown_schema", f"{topic}: {known_problem}")
            del self._bad_ids[schema_id]
        if self._registry is None:
            raise DecodeError(
                "unknown_schema",
                f"{topic}: Confluent framing (schema id {schema_id}) but no registry configured",
            )
        try:
            registered = self._registry.get_schema(schema_id)
        except Exception as exc:
            if getattr(exc, "http_status_code", None) != 404:
                raise  # registry unreachable or failing: retry, do not dead-letter
            self._remember_bad(
                schema_id,
                f"schema id {schema_id} not in the registry",
                until=self._clock() + UNKNOWN_ID_RETRY_S,
            )
            raise DecodeError("unknown_schema", f"{topic}: schema id {schema_id}: {exc}") from exc
        problem: str
        try:
            if registered.schema_type not in (None, "AVRO"):
                raise SchemaLoadError(f"a {registered.schema_type} schema, not Avro")
            writer = MessageSchema.from_schema(
                registered.schema_str or "", self._named_types, f"schema id {schema_id}"
            )
        except SchemaLoadError as exc:
            problem = f"schema id {schema_id}: {exc}"
        else:
            decoder = self._decoder_for(writer)
            if decoder is not None:
                self._by_id[schema_id] = decoder
                self._by_fingerprint.setdefault(writer.fingerprint, decoder)
                return decoder
            problem = f"schema id {schema_id} is record {writer.name}, which we do not read"
        self._remember_bad(schema_id, problem, until=math.inf)  # a registered id never changes
        raise DecodeError("unknown_schema", f"{topic}: {problem}")

    def _remember_bad(self, schema_id: int, problem: str, until: float) -> None:
        if len(self._bad_ids) >= _MAX_BAD_IDS:
            self._bad_ids.clear()
        self._bad_ids[schema_id] = (problem, until)


def _decode_error(writer: MessageSchema, topic: str, exc: Exception) -> DecodeError:
    what = f"{topic}: {writer.name}: {type(exc).__name__}: {exc}"
    if isinstance(exc, EOFError) or (
        isinstance(exc, IndexError) and str(exc).startswith("string index")
    ):  # fastavro's C reader runs off the end of the buffer in a varint
        return DecodeError("truncated", what)
    if isinstance(exc, SchemaResolutionError):
        return DecodeError("incompatible_schema", what)
    return DecodeError("avro_decode_error", what)


def _encode_error(schema: MessageSchema, value: Any, exc: Exception) -> EncodeError:
    try:
        validate(value, schema.parsed, raise_errors=True)
    except ValidationError as invalid:
        first = invalid.errors[0] if invalid.errors else None
        raw_field = str(getattr(first, "field", "") or "")
        field = schema.field_paths.get(raw_field, raw_field)
        return EncodeError(field, f"{schema.name}: {first}")
    except Exception as other:  # validating garbage may fail oddly
        return EncodeError("", f"{schema.name}: {type(other).__name__}: {other}")
    found = re.search(r"on field (\w+)", str(exc))
    return EncodeError(
        found.group(1) if found else "", f"{schema.name}: {type(exc).__name__}: {exc}"
    )
