"""Input events (SPEC section 3) as validated, immutable models.

Every way an event can be wrong maps to one stable reason code (`InvalidEventError.reason`),
because a dead letter is only useful if an operator can count and fix it by reason.
"""

import codecs
import re
from collections.abc import Mapping
from dataclasses import field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypeVar, cast

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

MAX_AMOUNT_MINOR: Final = 10**12
MAX_QUANTITY: Final = 1_000_000
#: Lines (SKUs) in one event at most: a refund's decision lists every line it pays, and
#: an order of tens of thousands made a decision over Kafka's 1 MB message limit.
MAX_LINES: Final = 1_000
MAX_MESSAGE_CHARS: Final = 500
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def to_millis(moment: datetime) -> int:
    """Integer milliseconds since the epoch, truncating like Avro's timestamp-millis.

    Integer timedelta arithmetic, so nothing is rounded; it also costs less than
    `moment.timestamp()`, and every event needs it once.
    """
    return (moment - _EPOCH) // _MILLISECOND


def from_millis(millis: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=millis)


def _quantity(value: int) -> int:
    if not 1 <= value <= MAX_QUANTITY:
        raise PydanticCustomError(
            "invalid_quantity",
            "quantity must be between 1 and {maximum}, got {value}",
            {"maximum": MAX_QUANTITY, "value": value},
        )
    return value


def _amount(value: int) -> int:
    if not 0 <= value <= MAX_AMOUNT_MINOR:
        raise PydanticCustomError(
            "invalid_amount",
            "amount must be between 0 and {maximum} minor units, got {value}",
            {"maximum": MAX_AMOUNT_MINOR, "value": value},
        )
    return value


#: ISO 8601 text starts with the date. Pydantic also reads a string of digits as epoch
#: seconds or milliseconds, whichever its size suggests: a guess, and "0" would be 1970.
_ISO_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_text(value: object) -> object:
    """A datetime (Avro's timestamp-millis), or text that starts as ISO 8601 does."""
    if not isinstance(value, datetime) and not (
        isinstance(value, str) and _ISO_DATE.match(value) is not None
    ):
        raise PydanticCustomError(
            "not_iso_8601", "not an ISO 8601 date and time: {value}", {"value": repr(value)}
        )
    return value


def _since_1970(value: datetime) -> datetime:
    """Kafka timestamps start at the epoch, and so does every history a fulfiller has."""
    if value < _EPOCH:
        raise PydanticCustomError(
            "before_epoch", "before 1970: {value}", {"value": value.isoformat()}
        )
    return value


def _currency(value: str) -> str:
    if len(value) != 3 or not value.isascii() or not value.isalpha() or not value.isupper():
        raise PydanticCustomError(
            "invalid_currency",
            "currency must be three capital letters (ISO 4217), got '{value}'",
            {"value": value},
        )
    return value


# Strict per field, not per model: a strict pydantic dataclass accepts only instances of
# itself, not the dicts an event is validated from.
Id = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=128)]
Quantity = Annotated[int, Strict(), AfterValidator(_quantity)]
AmountMinor = Annotated[int, Strict(), AfterValidator(_amount)]
Currency = Annotated[str, Strict(), AfterValidator(_currency)]
Text = Annotated[str, Strict(), StringConstraints(max_length=256)]

# Events are slotted, frozen pydantic dataclasses rather than BaseModels: validated as
# strictly and as fast, with no per-instance __dict__ or set of the fields given, so an
# event an order task buffers costs 0.9 KB instead of 2.1 (docs/live.md, "Memory").
_CONFIG: Final = ConfigDict(extra="ignore")


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class OrderLine:
    sku: Id
    quantity: Quantity
    unit_price_minor: AmountMinor


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class ItemLine:
    """Units of one SKU in a package or a claim (no price: the order holds it)."""

    sku: Id
    quantity: Quantity


_L = TypeVar("_L", OrderLine, ItemLine)


def _unique_skus(lines: list[_L]) -> list[_L]:
    seen: set[str] = set()
    for line in lines:
        if line.sku in seen:
            raise PydanticCustomError(
                "duplicate_sku", "SKU '{sku}' appears twice in one event", {"sku": line.sku}
            )
        seen.add(line.sku)
    return lines


def _payable(lines: list[OrderLine]) -> list[OrderLine]:
    """Each line within the limits can still add up to more than an Avro long holds, and a
    refund of the order could then not be written."""
    total = sum(line.quantity * line.unit_price_minor for line in lines)
    if total > MAX_AMOUNT_MINOR:
        raise PydanticCustomError(
            "invalid_amount",
            "the lines add up to {total} minor units, over the maximum of {maximum}",
            {"total": total, "maximum": MAX_AMOUNT_MINOR},
        )
    return lines


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class _Event:
    event_id: Id
    occurred_at: Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_since_1970)]
    #: Event time in epoch milliseconds, the unit the policy core computes in: derived
    #: once, neither given nor serialized.
    at: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", to_millis(self.occurred_at))


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class OrderPlaced(_Event):
    type: Literal["order_placed"]
    order_id: Id
    merchant_id: Id
    currency: Currency
    lines: Annotated[
        list[OrderLine],
        Field(min_length=1, max_length=MAX_LINES),
        AfterValidator(_unique_skus),
        AfterValidator(_payable),
    ]
    shipping_fee_minor: AmountMinor


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class PackageShipped(_Event):
    type: Literal["package_shipped"]
    order_id: Id
    package_id: Id
    tracking_number: Id
    carrier: Id
    lines: Annotated[
        list[ItemLine], Field(min_length=1, max_length=MAX_LINES), AfterValidator(_unique_skus)
    ]


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class CancellationRequested(_Event):
    type: Literal["cancellation_requested"]
    order_id: Id
    request_id: Id


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class OrderCancelled(_Event):
    type: Literal["order_cancelled"]
    order_id: Id
    request_id: Id | None = None


ClaimType = Literal[
    "not_received", "damaged", "defective", "wrong_item", "wrong_quantity", "missing_item"
]


def _null_as_empty(value: object) -> object:
    return [] if value is None else value


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class ClaimFiled(_Event):
    type: Literal["claim_filed"]
    order_id: Id
    claim_id: Id
    claim_type: ClaimType
    package_id: Id | None = None
    lines: Annotated[
        list[ItemLine],
        BeforeValidator(_null_as_empty),
        Field(max_length=MAX_LINES),
        AfterValidator(_unique_skus),
    ] = Field(default_factory=list)


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class ClaimReviewed(_Event):
    type: Literal["claim_reviewed"]
    order_id: Id
    claim_id: Id
    proof_accepted: Annotated[bool, Strict()]
    resolution: Literal["refund", "reship"] | None = None


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class ReturnReceived(_Event):
    type: Literal["return_received"]
    order_id: Id
    package_id: Id
    condition: Literal["intact", "opened", "relabeled"]


TrackingStatus = Literal[
    "info_received",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "attempt_failed",
    "available_for_pickup",
    "delivered",
    "exception",
    "lost",
    "rto_initiated",
    "rto_in_transit",
    "rto_delivered",
]


@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=_CONFIG)
class TrackingUpdate(_Event):
    type: Literal["tracking_update"]
    tracking_number: Id
    carrier: Id
    order_id: Id | None = None
    status: TrackingStatus
    carrier_status: Text
    location: Text | None = None


OrderEvent = (
    OrderPlaced
    | PackageShipped
    | CancellationRequested
    | OrderCancelled
    | ClaimFiled
    | ClaimReviewed
    | ReturnReceived
)
Event = OrderEvent | TrackingUpdate

_EVENT_ADAPTER: Final[TypeAdapter[Event]] = TypeAdapter(
    Annotated[Event, Field(discriminator="type")]
)
# Its compiled validator, called directly: `TypeAdapter.validate_json` and
# `validate_python` handle their keyword options in Python first, an eighth of parsing a
# JSON tracking update and a fifth of validating an Avro-decoded one.
_VALIDATE_EVENT_JSON: Final = _EVENT_ADAPTER.validator.validate_json
_VALIDATE_EVENT: Final = _EVENT_ADAPTER.validator.validate_python


class InvalidEventError(ValueError):
    """An input that can never become a valid event; `reason` is the dead-letter code.

    Messages quote the input they reject, cut at `MAX_MESSAGE_CHARS`: a value of
    megabytes must not become a log line or a replay line of megabytes."""

    def __init__(self, reason: str, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            cut = len(message) - MAX_MESSAGE_CHARS
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({cut} more characters)"
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


_REASON_BY_ERROR_TYPE: Final = {
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "dict_type": "not_an_object",
    "union_tag_invalid": "unknown_type",
    "union_tag_not_found": "missing_field",
    "missing": "missing_field",
    "string_too_long": "id_too_long",
    "timezone_aware": "invalid_timestamp",
    "datetime_type": "invalid_timestamp",
    "datetime_parsing": "invalid_timestamp",
    "datetime_from_date_parsing": "invalid_timestamp",
    "before_epoch": "invalid_timestamp",
    "not_iso_8601": "invalid_timestamp",
    "invalid_quantity": "invalid_quantity",
    "invalid_amount": "invalid_amount",
    "invalid_currency": "invalid_currency",
    "duplicate_sku": "duplicate_sku",
    "too_long": "too_many_lines",  # the only lists are lines
}


def _invalid(exc: ValidationError) -> InvalidEventError:
    first = exc.errors(include_url=False)[0]
    reason = _REASON_BY_ERROR_TYPE.get(first["type"], "invalid_field")
    if first["type"] == "string_too_long" and first["loc"][-1] in ("carrier_status", "location"):
        reason = "invalid_field"
    if first["type"] == "union_tag_not_found":
        return InvalidEventError(reason, "type: Field required")
    # loc[0] is the discriminator value; the field path starts after it.
    where = ".".join(str(part) for part in first["loc"][1:]) or "event"
    others = exc.error_count() - 1
    extra = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return InvalidEventError(reason, f"{where}: {first['msg']}{extra}")


def reject_future(event: Event, now: int, allowed_lateness: int) -> None:
    """An event dated more than `allowed_lateness` after `now` (the wall clock, epoch ms)
    is absurd: it would move the event-time clock past the wall clock, and fire every
    deadline before it (a refund for every package in flight), on its word alone. Within
    that, the clock (the newest event time less allowed_lateness) stays behind the wall
    clock. The shells know the wall clock; the policy core never reads it."""
    if event.at > now + allowed_lateness:
        raise InvalidEventError(
            "occurred_in_future",
            f"occurred_at: {event.occurred_at.isoformat()} is more than allowed_lateness "
            f"after the wall clock ({from_millis(now).isoformat()})",
        )


def parse_event_json(text: str | bytes) -> Event:
    """Parses one JSON event (a replay line); raises InvalidEventError with a specific reason.

    A UTF-8 byte order mark before it, which Windows editors write at the start of a
    file, is not part of the JSON: it is skipped rather than reported as invalid_json."""
    if isinstance(text, bytes):
        text = text.removeprefix(codecs.BOM_UTF8)
    else:
        text = text.removeprefix("\ufeff")
    try:
        return cast(Event, _VALIDATE_EVENT_JSON(text))
    except ValidationError as exc:
        raise _invalid(exc) from None


def parse_event(value: Mapping[str, Any]) -> Event:
    """Validates an already-decoded event (from Avro: timestamps are datetimes)."""
    try:
        return cast(Event, _VALIDATE_EVENT(value))
    except ValidationError as exc:
        raise _invalid(exc) from None


def event_to_json(event: Event) -> str:
    return _EVENT_ADAPTER.dump_json(event).decode()


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event as plain data, timestamps as datetimes: what its Avro record holds."""
    return cast(dict[str, Any], _EVENT_ADAPTER.dump_python(event))
