"""Avro schemas and the serde layer (processor/serde.py)."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import struct
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro.schema
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.serde import (
    MESSAGE_TYPES,
    SCHEMAS_DIR_ENV,
    UNKNOWN_ID_RETRY_S,
    DecodeError,
    EncodeError,
    MessageSchema,
    SchemaCatalog,
    SchemaLoadError,
    Serde,
    load_schemas,
    previous_schemas,
    record_name,
    schemas_dir,
    type_name,
)

TOPIC = "orders.events"
ALL_REASONS = {
    "bad_magic",
    "unknown_schema",
    "incompatible_schema",
    "truncated",
    "avro_decode_error",
}

# The example event of SPEC section 3, in the decoded form (aware UTC datetimes).
ORDER_PLACED: dict[str, Any] = {
    "type": "order_placed",
    "event_id": "e1",
    "occurred_at": datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
    "order_id": "o1",
    "merchant_id": "m1",
    "currency": "USD",
    "shipping_fee_minor": 500,
    "lines": [
        {"sku": "A", "quantity": 2, "unit_price_minor": 1000},
        {"sku": "B", "quantity": 1, "unit_price_minor": 2500},
    ],
}
CANCELLATION_REQUESTED: dict[str, Any] = {
    "type": "cancellation_requested",
    "event_id": "e2",
    "occurred_at": datetime(2026, 3, 1, 11, 0, tzinfo=UTC),
    "order_id": "o1",
    "request_id": "r1",
}


# --------------------------------------------------------------------------- registries


class NotFoundError(Exception):
    http_status_code = 404


class FakeRegistry:
    """Duck-typed registry: same schema text -> same id (as a real registry does).

    Beside confluent-kafka's `mock://` client (the contract tests run on both), for what
    that one cannot do: count calls (the hot path makes none), fail like an outage, hold
    a foreign or broken schema."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.texts: dict[int, str] = {}
        self.subjects: dict[str, set[int]] = {}
        self.types: dict[int, str] = {}
        self.calls: Counter[str] = Counter()
        self.fail_with: Exception | None = None

    def register_schema(self, subject_name: str, schema: Any) -> int:
        self.calls["register_schema"] += 1
        text = schema.schema_str
        schema_id = self.ids.setdefault(text, len(self.ids) + 1)
        self.texts[schema_id] = text
        self.subjects.setdefault(subject_name, set()).add(schema_id)
        return schema_id

    def lookup_schema(self, subject_name: str, schema: Any) -> Any:
        self.calls["lookup_schema"] += 1
        schema_id = self.ids.get(schema.schema_str)
        if schema_id is None or schema_id not in self.subjects.get(subject_name, ()):
            raise NotFoundError(subject_name)
        return SimpleNamespace(schema_id=schema_id)

    def get_schema(self, schema_id: int) -> Any:
        self.calls["get_schema"] += 1
        if self.fail_with is not None:
            raise self.fail_with
        if schema_id not in self.texts:
            raise NotFoundError(f"schema {schema_id}")
        return SimpleNamespace(
            schema_str=self.texts[schema_id], schema_type=self.types.get(schema_id, "AVRO")
        )

    def add_raw(self, text: str, schema_type: str = "AVRO") -> int:
        schema_id = len(self.ids) + 1000
        self.ids[text] = schema_id
        self.texts[schema_id] = text
        self.types[schema_id] = schema_type
        return schema_id


def confluent_mock_client() -> Any:
    return SchemaRegistryClient.new_client({"url": "mock://serde-tests"})


#: A record registered by someone else: a registry serves it, no reader schema of ours reads it.
FOREIGN_SCHEMA = json.dumps(
    {"type": "record", "name": "x.Other", "fields": [{"name": "a", "type": "long"}]}
)

RegistryFactory = Callable[[], Any]
REGISTRIES: list[Any] = [
    pytest.param(FakeRegistry, id="fake-registry"),
    pytest.param(confluent_mock_client, id="confluent-mock"),
]


# --------------------------------------------------------------------------- helpers


def catalog() -> SchemaCatalog:
    return load_schemas()


def evolved(record: str, extra_fields: list[dict[str, Any]]) -> MessageSchema:
    """The current schema of ``record`` with fields appended."""
    current = catalog()[record]
    schema = copy.deepcopy(dict(current.schema))
    schema["fields"] = [*schema["fields"], *extra_fields]
    return catalog().message_schema(schema)


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO (Rabin) exactly as the Avro specification spells it out."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def strategy_for(schema: Any, named: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Values of an Avro schema (self-contained JSON, full names), in the decoded form."""
    if isinstance(schema, list):
        return st.one_of([strategy_for(branch, named) for branch in schema])
    if isinstance(schema, str):
        primitives: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(),
            "string": st.text(max_size=12),
            "long": st.integers(-(2**63), 2**63 - 1),
            "int": st.integers(-(2**31), 2**31 - 1),
            "boolean": st.booleans(),
            "bytes": st.binary(max_size=12),
        }
        return primitives[schema] if schema in primitives else named[schema]
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis":
        return st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
        ).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
    if kind == "array":
        return st.lists(strategy_for(schema["items"], named), max_size=4)
    if kind == "record":
        fields = {
            fld["name"]: strategy_for(fld["type"], named) for fld in schema["fields"]
        }  # defines nested named types before later references to them
        named[schema["name"]] = st.fixed_dictionaries(fields)
        return named[schema["name"]]
    return strategy_for(kind, named)


def message_strategy(message_type: str) -> st.SearchStrategy[dict[str, Any]]:
    schema = catalog()[message_type]
    return strategy_for(dict(schema.schema), {}).map(lambda value: {"type": message_type, **value})


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("variable", [None, ""], ids=["unset", "empty"])
def test_schemas_dir_is_the_checkout_schemas_directory(
    variable: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if variable is None:
        monkeypatch.delenv(SCHEMAS_DIR_ENV, raising=False)
    else:
        monkeypatch.setenv(SCHEMAS_DIR_ENV, variable)
    assert schemas_dir() == Path(__file__).resolve().parent.parent / "schemas"


def test_schemas_dir_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path))
    assert schemas_dir() == tmp_path


def test_every_message_type_has_a_record_named_after_it() -> None:
    loaded = catalog()
    assert sorted(m.type_name for m in loaded) == sorted(MESSAGE_TYPES)
    for message_type in MESSAGE_TYPES:
        schema = loaded[message_type]
        assert schema.name == record_name(message_type)
        assert type_name(schema.name) == message_type
        assert loaded[schema.name.removeprefix("refunds.")] is schema
        assert schema.name.startswith("refunds.")
    assert record_name("order_placed") == "refunds.OrderPlaced"
    assert type_name("refunds.CancellationRequested") == "cancellation_requested"


def test_every_message_has_event_or_decision_time_as_timestamp_millis() -> None:
    for schema in catalog():
        expected: tuple[str, ...] = (
            ()  # internal: the events it carries have theirs
            if schema.type_name == "routed"
            else ("decided_at",)
            if schema.type_name
            in {
                "refund_command",
                "reship_command",
                "decision",
            }
            else ("occurred_at",)
        )
        assert schema.timestamp_fields == expected


def test_input_events_have_the_fields_of_spec_section_3() -> None:
    expected = {
        "order_placed": "order_id merchant_id currency lines shipping_fee_minor",
        "package_shipped": "order_id package_id tracking_number carrier lines",
        "cancellation_requested": "order_id request_id",
        "order_cancelled": "order_id request_id",
        "claim_filed": "order_id claim_id claim_type package_id lines",
        "claim_reviewed": "order_id claim_id proof_accepted resolution",
        "return_received": "order_id package_id condition",
        "tracking_update": "tracking_number carrier order_id status carrier_status location",
    }
    for message_type, fields in expected.items():
        names = [fld["name"] for fld in catalog()[message_type].schema["fields"]]
        assert names == ["event_id", "occurred_at", *fields.split()], message_type


def test_nullable_fields_default_to_null() -> None:
    nullable = {
        "order_cancelled": {"request_id"},
        "claim_filed": {"package_id"},
        "claim_reviewed": {"resolution"},
        "tracking_update": {"order_id", "location"},
        "refund_command": {"package_id", "claim_id"},
        "decision": {"rule", "package_id", "claim_id", "command_id", "amount_minor", "currency"},
    }
    for schema in catalog():
        found = {
            fld["name"]
            for fld in schema.schema["fields"]
            if isinstance(fld["type"], list) and "null" in fld["type"]
        }
        assert found == nullable.get(schema.type_name, set()), schema.name
        for fld in schema.schema["fields"]:
            if fld["name"] in found:
                assert fld["type"][0] == "null"
                assert fld["default"] is None


def test_referenced_named_type_is_inlined_at_first_use() -> None:
    shipped = catalog()["package_shipped"]
    assert '"name":"refunds.SkuQuantity","type":"record"' in shipped.canonical_form
    # registered text is self-contained: it parses with no other schema known
    fastavro.schema.parse_schema(json.loads(shipped.schema_text), {})
    reship = catalog()["reship_command"].schema
    assert [fld["type"] for fld in reship["fields"] if fld["name"] == "lines"] == [
        {"type": "array", "items": catalog().named_types["refunds.SkuQuantity"]}
    ]


def test_a_named_type_used_twice_is_defined_once_at_its_first_use() -> None:
    swap = catalog().message_schema(
        {
            "type": "record",
            "name": "refunds.Swap",
            "fields": [
                {"name": "given", "type": "refunds.SkuQuantity"},
                {"name": "taken", "type": "refunds.SkuQuantity"},
            ],
        }
    )

    assert swap.canonical_form.count('"name":"refunds.SkuQuantity"') == 1
    assert swap.schema["fields"][1]["type"] == "refunds.SkuQuantity"


def test_a_record_without_a_namespace_keeps_its_bare_name() -> None:
    plain = MessageSchema.from_schema(
        {"type": "record", "name": "Plain", "fields": [{"name": "a", "type": "long"}]}
    )

    assert plain.name == "Plain"


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "long", "logicalType": "timestamp-micros"},
        ["null", {"type": "long", "logicalType": "timestamp-millis"}],
    ],
    ids=["millis", "micros", "nullable"],
)
def test_a_naive_datetime_is_refused_in_any_timestamp_field(field_type: Any) -> None:
    stamped = MessageSchema.from_schema(
        {"type": "record", "name": "x.Stamped", "fields": [{"name": "at", "type": field_type}]}
    )

    with pytest.raises(EncodeError) as caught:
        Serde.single_object(readers=[stamped]).encode(
            "x.Stamped", {"at": datetime(2026, 3, 1, 10)}, TOPIC
        )

    assert caught.value.field == "at"


def test_fingerprint_matches_an_independent_crc64_avro() -> None:
    # The Avro specification's test vector for the schema "null".
    assert crc64_avro(b'"null"') == 7195948357588979594
    # Parsing Canonical Form written by hand from the .avsc (docs and logicalType dropped).
    pcf = (
        '{"name":"refunds.CancellationRequested","type":"record","fields":['
        '{"name":"event_id","type":"string"},{"name":"occurred_at","type":"long"},'
        '{"name":"order_id","type":"string"},{"name":"request_id","type":"string"}]}'
    )
    schema = catalog()["cancellation_requested"]
    assert schema.canonical_form == pcf
    expected = struct.pack("<Q", crc64_avro(pcf.encode()))
    assert schema.fingerprint == expected
    assert expected.hex() == fastavro.schema.fingerprint(pcf, "CRC-64-AVRO")
    data = Serde.single_object().encode("cancellation_requested", CANCELLATION_REQUESTED, TOPIC)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected


def test_schema_load_errors(tmp_path: Path) -> None:
    source = schemas_dir()
    shutil.copytree(source, tmp_path / "ok")
    assert len(load_schemas(tmp_path / "ok")) == len(MESSAGE_TYPES)

    shutil.copytree(source, tmp_path / "missing")
    (tmp_path / "missing" / "Decision.avsc").unlink()
    with pytest.raises(SchemaLoadError, match=r"refunds\.Decision"):
        load_schemas(tmp_path / "missing")

    shutil.copytree(source, tmp_path / "noref")
    (tmp_path / "noref" / "SkuQuantity.avsc").unlink()
    with pytest.raises(SchemaLoadError, match=r"refunds\.SkuQuantity"):
        load_schemas(tmp_path / "noref")

    shutil.copytree(source, tmp_path / "clash")
    other = {
        "type": "record",
        "name": "SkuQuantity",
        "namespace": "refunds",
        "fields": [{"name": "sku", "type": "string"}],
    }
    (tmp_path / "clash" / "Other.avsc").write_text(json.dumps(other))
    with pytest.raises(SchemaLoadError, match="defined differently"):
        load_schemas(tmp_path / "clash")

    with pytest.raises(SchemaLoadError, match="not JSON"):
        MessageSchema.from_schema("{nope")
    with pytest.raises(SchemaLoadError, match="must be a record"):
        MessageSchema.from_schema('"string"')


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_single_object(message_type: str, data: st.DataObject) -> None:
    serde = Serde.single_object()
    value = data.draw(message_strategy(message_type))
    encoded = serde.encode(message_type, value, TOPIC)
    assert encoded[:10] == b"\xc3\x01" + serde.schema(message_type).fingerprint
    assert serde.decode(encoded, TOPIC) == value


@pytest.mark.parametrize("make_registry", REGISTRIES)
@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_confluent(
    make_registry: RegistryFactory, message_type: str, data: st.DataObject
) -> None:
    registry = make_registry()
    producer, consumer = Serde.confluent(registry), Serde.confluent(registry)
    value = data.draw(message_strategy(message_type))
    encoded = producer.encode(message_type, value, TOPIC)
    assert encoded[0] == 0
    assert consumer.decode(encoded, TOPIC) == value
    assert producer.decode(encoded, TOPIC) == value


def test_spec_example_round_trip_and_type_names() -> None:
    serde = Serde.single_object()
    without_type = {k: v for k, v in ORDER_PLACED.items() if k != "type"}
    for record in ("order_placed", "OrderPlaced", "refunds.OrderPlaced"):
        decoded = serde.decode(serde.encode(record, without_type, TOPIC), TOPIC)
        assert decoded == ORDER_PLACED
        assert decoded["occurred_at"].tzinfo is not None
        assert decoded["occurred_at"].utcoffset() == timedelta(0)


def test_absent_nullable_fields_and_defaults() -> None:
    serde = Serde.single_object()
    tracking = {
        "event_id": "t1",
        "occurred_at": datetime(2026, 3, 2, tzinfo=UTC),
        "tracking_number": "1Z",
        "carrier": "ups",
        "status": "delivered",
        "carrier_status": "D1",
    }
    decoded = serde.decode(serde.encode("tracking_update", tracking, "courier.tracking"), "x")
    assert decoded == {**tracking, "order_id": None, "location": None, "type": "tracking_update"}

    refund = {
        "command_id": "c1",
        "merchant_id": "m1",
        "order_id": "o1",
        "reason": "lost",
        "amount_minor": 4500,
        "currency": "USD",
        "lines": [{"sku": "A", "quantity": 2, "amount_minor": 2000}],
        "evidence_event_ids": ["e1", "e3"],
        "decided_at": datetime(2026, 3, 21, 10, tzinfo=UTC),
        "policy_version": "2026-01",
    }
    decoded = serde.decode(serde.encode("refund_command", refund, "wallet.commands"), "x")
    assert decoded["shipping_fee_minor"] == 0
    assert decoded["package_id"] is None
    assert decoded["claim_id"] is None
    assert decoded["type"] == "refund_command"


def test_non_utc_aware_datetime_is_stored_as_the_same_instant() -> None:
    serde = Serde.single_object()
    berlin = datetime(2026, 3, 1, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    decoded = serde.decode(
        serde.encode("order_placed", {**ORDER_PLACED, "occurred_at": berlin}, TOPIC), TOPIC
    )
    assert decoded["occurred_at"] == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert decoded["occurred_at"].tzinfo == UTC


# --------------------------------------------------------------------------- decode errors


def test_random_bytes_raise_only_decode_errors() -> None:
    serde = Serde.single_object()

    @settings(max_examples=500, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=64),
            st.binary(max_size=64).map(lambda tail: b"\xc3\x01" + tail),
            st.sampled_from(list(catalog())).flatmap(
                lambda schema: st.binary(max_size=64).map(
                    lambda tail: b"\xc3\x01" + schema.fingerprint + tail
                )
            ),
        )
    )
    def check(data: bytes) -> None:
        reason: str | None = None
        try:
            decoded = serde.decode(data, TOPIC)
        except DecodeError as error:
            reason = error.reason
        else:  # a random body can be valid Avro (all-zero bytes: empty strings, zeros)
            assert decoded["type"] in MESSAGE_TYPES
        if reason is not None:
            assert reason in ALL_REASONS
        if not data.startswith((b"\x00", b"\xc3\x01")):
            assert reason == "bad_magic"

    check()


def test_bad_magic() -> None:
    serde = Serde.single_object()
    for data in (b"", b"{", b'{"type":"order_placed"}', b"\xc3\x02" + bytes(20), b"\x01abcd"):
        with pytest.raises(DecodeError) as caught:
            serde.decode(data, TOPIC)
        assert caught.value.reason == "bad_magic", data


def test_unknown_fingerprint() -> None:
    serde = Serde.single_object()
    good = serde.encode("order_placed", ORDER_PLACED, TOPIC)
    with pytest.raises(DecodeError) as caught:
        serde.decode(good[:2] + b"\x00" * 8 + good[10:], TOPIC)
    assert caught.value.reason == "unknown_schema"
    assert "0000000000000000" in caught.value.message


def test_truncated_at_every_length() -> None:
    serde = Serde.single_object()
    good = serde.encode("order_placed", ORDER_PLACED, TOPIC)
    for length in range(2, len(good)):
        with pytest.raises(DecodeError) as caught:
            serde.decode(good[:length], TOPIC)
        assert caught.value.reason == "truncated", length


def test_trailing_bytes_and_corrupt_body() -> None:
    serde = Serde.single_object()
    good = serde.encode("cancellation_requested", CANCELLATION_REQUESTED, TOPIC)
    with pytest.raises(DecodeError) as caught:
        serde.decode(good + b"\x00", TOPIC)
    assert caught.value.reason == "avro_decode_error"
    # event_id: length 2 (zigzag 4), then invalid UTF-8
    corrupt = good[:10] + b"\x04\xff\xfe" + good[10 + 1 + len("e2") :]
    with pytest.raises(DecodeError) as caught:
        serde.decode(corrupt, TOPIC)
    assert caught.value.reason == "avro_decode_error"
    # a negative string length
    with pytest.raises(DecodeError) as caught:
        serde.decode(good[:10] + b"\x03" + good[11:], TOPIC)
    assert caught.value.reason in {"avro_decode_error", "truncated"}


@pytest.mark.parametrize(
    "header",
    [b"\xc3\x01" + bytes(8), b"\x00" + (4242).to_bytes(4, "big")],
    ids=["single-object", "confluent"],
)
def test_a_whole_header_naming_an_unknown_schema_is_unknown_schema_even_without_a_body(
    header: bytes,
) -> None:
    """Without the schema there is no telling that a body is missing."""
    with pytest.raises(DecodeError) as caught:
        Serde.confluent(FakeRegistry()).decode(header, TOPIC)

    assert caught.value.reason == "unknown_schema"


def test_confluent_frame_without_a_registry_is_unknown_schema() -> None:
    with pytest.raises(DecodeError) as caught:
        Serde.single_object().decode(b"\x00\x00\x00\x00\x07" + b"\x02", TOPIC)
    assert caught.value.reason == "unknown_schema"
    with pytest.raises(DecodeError) as caught:
        Serde.single_object().decode(b"\x00\x00\x00", TOPIC)
    assert caught.value.reason == "truncated"


def test_errors_pickle() -> None:
    decode_error = pickle.loads(pickle.dumps(DecodeError("truncated", "msg")))
    assert (decode_error.reason, decode_error.message) == ("truncated", "msg")
    encode_error = pickle.loads(pickle.dumps(EncodeError("lines[].sku", "msg")))
    assert (encode_error.field, encode_error.message) == ("lines[].sku", "msg")


# --------------------------------------------------------------------------- confluent


@pytest.mark.parametrize("make_registry", REGISTRIES)
def test_confluent_subjects_and_unknown_ids(make_registry: RegistryFactory) -> None:
    registry = make_registry()
    serde = Serde.confluent(registry)
    placed = serde.encode("order_placed", ORDER_PLACED, "orders.events")
    serde.encode("cancellation_requested", CANCELLATION_REQUESTED, "orders.events")
    serde.encode("order_placed", ORDER_PLACED, "replay.orders")
    subjects = (
        set(registry.get_subjects())
        if hasattr(registry, "get_subjects")
        else set(registry.subjects)
    )
    assert subjects == {
        "orders.events-refunds.OrderPlaced",
        "orders.events-refunds.CancellationRequested",
        "replay.orders-refunds.OrderPlaced",
    }
    schema_id = int.from_bytes(placed[1:5], "big")
    assert registry.get_schema(schema_id).schema_str == serde.schema("order_placed").schema_text

    with pytest.raises(DecodeError) as caught:
        serde.decode(b"\x00" + (99999).to_bytes(4, "big") + placed[5:], TOPIC)
    assert caught.value.reason == "unknown_schema"


@pytest.mark.parametrize("make_registry", REGISTRIES)
def test_a_confluent_frame_cut_at_any_length_is_truncated(make_registry: RegistryFactory) -> None:
    registry = make_registry()
    good = Serde.confluent(registry).encode("order_placed", ORDER_PLACED, TOPIC)
    consumer = Serde.confluent(registry)

    for length in range(1, len(good)):
        with pytest.raises(DecodeError) as caught:
            consumer.decode(good[:length], TOPIC)
        assert caught.value.reason == "truncated", length


def test_a_registered_schema_may_name_our_named_types_without_defining_them() -> None:
    """As a registry with schema references serves it: `refunds.SkuQuantity` by name only."""
    registry = FakeRegistry()
    by_reference = registry.add_raw(json.dumps(catalog().named_types["refunds.PackageShipped"]))
    shipped = {
        "type": "package_shipped",
        "event_id": "e3",
        "occurred_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        "order_id": "o1",
        "package_id": "p1",
        "tracking_number": "1Z",
        "carrier": "ups",
        "lines": [{"sku": "A", "quantity": 2}],
    }
    body = Serde.single_object().encode("package_shipped", shipped, TOPIC)[10:]

    decoded = Serde.confluent(registry).decode(
        b"\x00" + by_reference.to_bytes(4, "big") + body, TOPIC
    )

    assert decoded == shipped


def test_confluent_hot_path_makes_no_registry_calls() -> None:
    registry = FakeRegistry()
    producer, consumer = Serde.confluent(registry), Serde.confluent(registry)
    first = producer.encode("order_placed", ORDER_PLACED, TOPIC)
    assert registry.calls == Counter({"register_schema": 1})
    for _ in range(5):
        assert producer.encode("order_placed", ORDER_PLACED, TOPIC) == first
        producer.decode(first, TOPIC)  # the producer knows the id from registering
    assert registry.calls == Counter({"register_schema": 1})
    for _ in range(5):
        consumer.decode(first, TOPIC)
    assert registry.calls == Counter({"register_schema": 1, "get_schema": 1})

    bogus = b"\x00" + (4242).to_bytes(4, "big") + first[5:]
    for _ in range(5):
        with pytest.raises(DecodeError):
            consumer.decode(bogus, TOPIC)
    assert registry.calls["get_schema"] == 2  # unknown ids are remembered too


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("make_registry", REGISTRIES)
def test_confluent_id_not_found_decodes_once_the_registry_has_it(
    make_registry: RegistryFactory,
) -> None:
    """As from a registry replica that has not yet caught up with the one the producer
    registered with: valid records must not be dead-lettered for good."""
    registry, clock = make_registry(), Clock()
    consumer = Serde.confluent(registry, clock=clock)
    body = Serde.single_object().encode("order_placed", ORDER_PLACED, TOPIC)[10:]
    early = b"\x00" + (1).to_bytes(4, "big") + body
    with pytest.raises(DecodeError) as caught:
        consumer.decode(early, TOPIC)
    assert caught.value.reason == "unknown_schema"

    assert Serde.confluent(registry).encode("order_placed", ORDER_PLACED, TOPIC) == early
    clock.now += UNKNOWN_ID_RETRY_S - 0.5
    with pytest.raises(DecodeError) as caught:
        consumer.decode(early, TOPIC)
    assert caught.value.reason == "unknown_schema"
    clock.now += 0.5
    assert consumer.decode(early, TOPIC) == ORDER_PLACED


def test_confluent_bogus_id_costs_a_registry_call_per_retry_interval() -> None:
    registry, clock = FakeRegistry(), Clock()
    consumer = Serde.confluent(registry, clock=clock)
    foreign = registry.add_raw(FOREIGN_SCHEMA)
    for _ in range(3):
        for schema_id in (4242, foreign):
            for _ in range(100):
                with pytest.raises(DecodeError):
                    consumer.decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x02", TOPIC)
        clock.now += UNKNOWN_ID_RETRY_S
    # the id not found is asked for again each interval; a registered foreign one never is
    assert registry.calls["get_schema"] == 3 + 1


def broken_schema(*fields: Any) -> str:
    return json.dumps({"type": "record", "name": "x.Broken", "fields": list(fields)})


@pytest.mark.parametrize(
    ("text", "schema_type"),
    [
        pytest.param(FOREIGN_SCHEMA, "AVRO", id="foreign"),
        pytest.param(catalog()["order_placed"].schema_text, "JSON", id="ours-but-not-avro"),
        pytest.param("{", "AVRO", id="not-json"),
        pytest.param(broken_schema({"name": 1}), "AVRO", id="field-without-type"),
        pytest.param(broken_schema(1), "AVRO", id="field-not-an-object"),
        pytest.param(
            broken_schema({"name": "a", "type": {"type": "fixed", "name": "F"}}),
            "AVRO",
            id="fixed-without-size",
        ),
    ],
)
def test_confluent_foreign_and_non_avro_schemas_are_unknown(text: str, schema_type: str) -> None:
    """Not a failure to retry: the registry answered, and will answer the same again."""
    registry = FakeRegistry()
    schema_id = registry.add_raw(text, schema_type)
    body = Serde.single_object().encode("order_placed", ORDER_PLACED, TOPIC)[10:]

    with pytest.raises(DecodeError) as caught:
        Serde.confluent(registry).decode(b"\x00" + schema_id.to_bytes(4, "big") + body, TOPIC)

    assert caught.value.reason == "unknown_schema"


def test_unknown_schema_ids_are_remembered_in_bounded_memory() -> None:
    """A flood of bogus ids pushes out even an id remembered for good: it is asked again."""
    registry = FakeRegistry()
    consumer = Serde.confluent(registry)
    foreign = registry.add_raw(FOREIGN_SCHEMA)
    flood = range(10_000, 20_000)

    for schema_id in (foreign, *flood, foreign):
        with pytest.raises(DecodeError):
            consumer.decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x02", TOPIC)

    assert registry.calls["get_schema"] == 1 + len(flood) + 1


def test_confluent_registry_outage_is_not_a_decode_error() -> None:
    registry = FakeRegistry()
    data = Serde.confluent(registry).encode("order_placed", ORDER_PLACED, TOPIC)
    registry.fail_with = ConnectionError("registry down")
    with pytest.raises(ConnectionError):
        Serde.confluent(registry).decode(data, TOPIC)


def test_confluent_without_auto_register_looks_up() -> None:
    registry = FakeRegistry()
    lookup_only = Serde.confluent(registry, auto_register=False)
    with pytest.raises(NotFoundError):
        lookup_only.encode("order_placed", ORDER_PLACED, TOPIC)
    registered = Serde.confluent(registry).encode("order_placed", ORDER_PLACED, TOPIC)
    assert lookup_only.encode("order_placed", ORDER_PLACED, TOPIC) == registered


def test_single_object_serde_also_reads_confluent_serde_fingerprints() -> None:
    data = Serde.single_object().encode("order_placed", ORDER_PLACED, TOPIC)
    assert Serde.confluent(FakeRegistry()).decode(data, TOPIC) == ORDER_PLACED


# --------------------------------------------------------------------------- evolution

CHANNEL = {"name": "channel", "type": "string", "default": "web"}
NOTE = {"name": "note", "type": ["null", "string"], "default": None}


def readers_with(schema: MessageSchema) -> list[MessageSchema]:
    return [schema, *(m for m in catalog() if m.name != schema.name)]


def test_newer_reader_fills_defaults_for_data_of_the_current_writer() -> None:
    newer = evolved("order_placed", [CHANNEL, NOTE])
    data = Serde.single_object().encode("order_placed", ORDER_PLACED, TOPIC)
    reader = Serde.single_object(readers=readers_with(newer), writers=[catalog()["order_placed"]])
    assert reader.decode(data, TOPIC) == {**ORDER_PLACED, "channel": "web", "note": None}
    # without knowing the old writer schema the fingerprint is unknown
    with pytest.raises(DecodeError) as caught:
        Serde.single_object(readers=readers_with(newer)).decode(data, TOPIC)
    assert caught.value.reason == "unknown_schema"


def test_records_of_an_earlier_version_in_schemas_previous_still_decode() -> None:
    """After an upgrade the internal topic still holds watermarks the version before wrote,
    without `end_offset`: they read as not resting on any end."""
    (earlier,) = (m for m in previous_schemas() if m.name == "refunds.Watermark")
    assert earlier.fingerprint != catalog()["watermark"].fingerprint
    before = Serde.single_object(readers=readers_with(earlier))
    watermark = {
        "source": "orders:0",
        "occurred_at": datetime(2026, 3, 1, tzinfo=UTC),
        "idle": True,
    }
    data = before.encode("watermark", watermark, TOPIC)

    decoded = Serde.single_object().decode(data, TOPIC)
    assert decoded == {"type": "watermark", **watermark, "end_offset": -1}


def test_current_reader_drops_the_field_a_newer_writer_added() -> None:
    newer = evolved("order_placed", [CHANNEL])
    writer = Serde.single_object(readers=readers_with(newer))
    data = writer.encode("order_placed", {**ORDER_PLACED, "channel": "app"}, TOPIC)
    assert data[2:10] == newer.fingerprint != catalog()["order_placed"].fingerprint
    assert Serde.single_object(writers=[newer]).decode(data, TOPIC) == ORDER_PLACED


@pytest.mark.parametrize("make_registry", REGISTRIES)
def test_evolution_through_the_registry(make_registry: RegistryFactory) -> None:
    registry = make_registry()
    newer = evolved("order_placed", [CHANNEL])
    newer_serde = Serde.confluent(registry, readers=readers_with(newer))
    current_serde = Serde.confluent(registry)
    new_data = newer_serde.encode("order_placed", {**ORDER_PLACED, "channel": "app"}, TOPIC)
    old_data = current_serde.encode("order_placed", ORDER_PLACED, TOPIC)
    assert new_data[1:5] != old_data[1:5]
    assert current_serde.decode(new_data, TOPIC) == ORDER_PLACED
    assert newer_serde.decode(old_data, TOPIC) == {**ORDER_PLACED, "channel": "web"}


def test_a_writer_schema_learned_from_the_registry_also_reads_its_single_object_frames() -> None:
    registry = FakeRegistry()
    newer = evolved("order_placed", [CHANNEL])
    value = {**ORDER_PLACED, "channel": "app"}
    consumer = Serde.confluent(registry)
    consumer.decode(
        Serde.confluent(registry, readers=readers_with(newer)).encode("order_placed", value, TOPIC),
        TOPIC,
    )
    single_object = Serde.single_object(readers=readers_with(newer)).encode(
        "order_placed", value, TOPIC
    )

    assert consumer.decode(single_object, TOPIC) == ORDER_PLACED


def test_two_reader_schemas_for_one_record_are_rejected() -> None:
    with pytest.raises(ValueError, match="two reader schemas"):
        Serde.single_object(readers=[*catalog(), evolved("order_placed", [CHANNEL])])


def test_incompatible_writer_is_reported() -> None:
    schema = copy.deepcopy(dict(catalog()["cancellation_requested"].schema))
    schema["fields"] = [
        {**fld, "type": "long"} if fld["name"] == "request_id" else fld for fld in schema["fields"]
    ]
    incompatible = catalog().message_schema(schema)
    writer = Serde.single_object(readers=readers_with(incompatible))
    data = writer.encode("cancellation_requested", {**CANCELLATION_REQUESTED, "request_id": 7}, "t")
    with pytest.raises(DecodeError) as caught:
        Serde.single_object(writers=[incompatible]).decode(data, TOPIC)
    assert caught.value.reason == "incompatible_schema"


def test_writer_without_reader_is_rejected_up_front() -> None:
    stranger = MessageSchema.from_schema(
        {"type": "record", "name": "x.Stranger", "fields": [{"name": "a", "type": "long"}]}
    )
    with pytest.raises(ValueError, match="no reader"):
        Serde.single_object(writers=[stranger])


# --------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda v: v.pop("merchant_id"), "merchant_id"),
        (lambda v: v.update(merchant_id=7), "merchant_id"),
        (lambda v: v.update(shipping_fee_minor="5"), "shipping_fee_minor"),
        (lambda v: v.update(shipping_fee_minor=2**63), "shipping_fee_minor"),
        (
            lambda v: v.update(lines=[{"sku": "A", "quantity": "2", "unit_price_minor": 1}]),
            "lines[].quantity",
        ),
        (lambda v: v.update(lines=[{"sku": "A", "quantity": 2}]), "lines[].unit_price_minor"),
        (lambda v: v.update(occurred_at=datetime(2026, 3, 1, 10)), "occurred_at"),
        (lambda v: v.update(occurred_at="2026-03-01T10:00:00Z"), "occurred_at"),
        (lambda v: v.update(type="package_shipped"), "type"),
    ],
)
def test_encode_error_names_the_field(
    change: Callable[[dict[str, Any]], object], field: str
) -> None:
    value = copy.deepcopy(ORDER_PLACED)
    change(value)
    with pytest.raises(EncodeError) as caught:
        Serde.single_object().encode("order_placed", value, TOPIC)
    assert caught.value.field == field, caught.value


def test_encode_unknown_record() -> None:
    with pytest.raises(EncodeError) as caught:
        Serde.single_object().encode("order_exploded", ORDER_PLACED, TOPIC)
    assert caught.value.field == "type"


def test_nullable_field_with_wrong_type() -> None:
    value = {**CANCELLATION_REQUESTED, "type": "order_cancelled", "request_id": 5}
    with pytest.raises(EncodeError) as caught:
        Serde.single_object().encode("order_cancelled", value, TOPIC)
    assert caught.value.field == "request_id"
