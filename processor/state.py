"""Per-order state: the ledger and the facts the rules decide on.

Immutable records inside one mutable `OrderState`, serialised with a pydantic
TypeAdapter for the Redis store. The policy core never changes a state it was given:
it works on `clone()` and replaces the records it changes. Times are epoch
milliseconds (event time).
"""

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Annotated, Any, Final, Literal, Protocol, TypeVar, dataclass_transform

from pydantic import BeforeValidator, TypeAdapter

ClaimStatus = Literal["open", "pending", "denied", "settled"]

_Class = TypeVar("_Class")


@dataclass_transform(frozen_default=True)
def record(cls: type[_Class]) -> type[_Class]:
    """An immutable dataclass whose immutability mypy checks, not the interpreter.

    `frozen=True` builds every instance through `object.__setattr__`, field by field:
    a 13-field Package cost 21k instructions instead of under 4k, and the policy builds
    one on most events. mypy --strict (`make lint`) rejects any assignment to a field of a
    record, as it does for a frozen dataclass; instances hash by value like one.
    """
    return dataclass(slots=True, unsafe_hash=True)(cls)


@record
class Priced:
    quantity: int
    unit_price_minor: int


@record
class Order:
    merchant_id: str
    currency: str
    lines: dict[str, Priced]
    shipping_fee_minor: int
    placed_event_id: str
    placed_at: int

    @property
    def total_minor(self) -> int:
        return self.shipping_fee_minor + sum(
            line.quantity * line.unit_price_minor for line in self.lines.values()
        )


@record
class Package:
    """A shipped package and the courier facts about it.

    `settled_by` is the reason of the package rule (R1, R2, R3, R3b) that ended its refund
    life: it fires once. `refund_denied` says that rule found nothing left to refund (a
    claim had paid for the units), so the package was not refunded as `settled_by`.
    """

    package_id: str
    tracking_number: str
    lines: dict[str, int]
    shipped_at: int
    shipped_event_id: str
    deadline: int
    picked_up_at: int | None = None
    delivered_at: int | None = None
    delivered_event_id: str | None = None
    back_event_id: str | None = None
    settled_by: str | None = None
    deadline_passed: bool = False
    anomaly_reported: bool = False
    refund_denied: bool = False


@record
class Review:
    proof_accepted: bool
    resolution: str | None
    event_id: str
    at: int


@record
class Claim:
    claim_id: str
    claim_type: str
    package_id: str | None
    lines: dict[str, int]
    filed_event_id: str
    filed_at: int
    review: Review | None = None
    status: ClaimStatus = "open"


@record
class Cancellation:
    request_id: str | None
    event_id: str
    at: int


@record
class Held:
    """An event that cannot be applied yet, kept whole so it can become a dead letter.

    `waits_for` names the missing piece: "order", "package:<id>", "claim:<id>" or
    "tracking:<number>".
    """

    event_json: str
    origin: str
    at: int
    waits_for: str


@record
class Ledger:
    """Units refunded per SKU; the single place that keeps refunds within what was paid.

    `by_package` counts, per package, the units refunded out of it (its own refund, or a
    claim naming it): the SKU counts alone let a split order's second package pay again
    for a unit of the first one. Under the empty key (`ledger.UNSHIPPED`) it keeps the
    units a cancellation refunded that no package had carried since.

    `reshipped` counts the units sent again, under the package a claim named, or the empty
    key (`ledger.WHOLE_ORDER`) for a claim on the order: a unit is compensated once, by a
    refund or a reship.

    `replacements` counts, per package, its units that carry a reship (`ledger.ship`), and
    `failed_replacements` those of them whose package failed (refunded, or a claim on it
    accepted): the reship no longer covers them, so they may be refunded or sent again.
    """

    refunded: dict[str, int] = field(default_factory=dict)
    shipping_fee_refunded: bool = False
    refunded_minor: int = 0
    by_package: dict[str, dict[str, int]] = field(default_factory=dict)
    reshipped: dict[str, dict[str, int]] = field(default_factory=dict)
    replacements: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_replacements: dict[str, dict[str, int]] = field(default_factory=dict)


#: The digest of an event id kept before digests were (a list of ids in the JSON): it
#: matches any event, as the id alone did.
UNKNOWN_DIGEST: Final = 0


def _ids_with_digests(value: Any) -> Any:
    return dict.fromkeys(value, UNKNOWN_DIGEST) if isinstance(value, list) else value


SeenIds = Annotated[dict[str, int], BeforeValidator(_ids_with_digests)]


@dataclass(slots=True)
class OrderState:
    order_id: str
    order: Order | None = None
    packages: dict[str, Package] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    cancel_request: Cancellation | None = None
    cancelled: Cancellation | None = None
    held: list[Held] = field(default_factory=list)
    #: Event id -> `policy.event_digest` of the event, so that a redelivery is a no-op
    #: and another event reusing the id is not mistaken for one; below 0, for an event that
    #: changed nothing (refused, or expired waiting), a digest of its content
    #: (`policy.unapplied_digest`).
    seen: SeenIds = field(default_factory=dict)

    def packages_for_tracking(self, tracking_number: str) -> list[Package]:
        """Usually one; several when the warehouse shipped packages under one number
        (`policy._packages_scanned` says which of them a scan is news of)."""
        found = []  # a loop: half the cost of a comprehension, on every scan
        for package in self.packages.values():
            if package.tracking_number == tracking_number:
                found.append(package)
        return found

    def clone(self) -> "OrderState":
        """A copy the policy core may change without touching this one.

        Everything inside is immutable except the containers, so copying the containers
        is enough; `copy.deepcopy` would cost more than the rest of a decision. Every
        event makes one, so it skips the generated `__init__` and its default handling,
        which cost more than the nine stores (a clone takes 320 ns instead of 500).
        """
        copy = object.__new__(OrderState)
        copy.order_id = self.order_id
        copy.order = self.order
        copy.packages = self.packages.copy()
        copy.claims = self.claims.copy()
        copy.ledger = self.ledger
        copy.cancel_request = self.cancel_request
        copy.cancelled = self.cancelled
        copy.held = self.held.copy()
        copy.seen = self.seen.copy()
        return copy


@dataclass(slots=True)
class OrphanBucket:
    """Tracking updates with no order_id whose tracking number no package has claimed yet."""

    tracking_number: str
    held: list[Held] = field(default_factory=list)
    seen: SeenIds = field(default_factory=dict)


_Record = TypeVar("_Record", Package, Claim)


class _Replace(Protocol[_Record]):
    def __call__(self, original: _Record, /, **changes: Any) -> _Record: ...


def _replacer(kind: type[_Record]) -> _Replace[_Record]:
    """`dataclasses.replace` for one record class, with its field names looked up once.

    The policy replaces a package or a claim on most events, and `replace` inspects the
    fields on every call, which costs six times as much as building the record.
    """
    names = tuple(f.name for f in fields(kind))
    values = attrgetter(*names)
    position = {name: index for index, name in enumerate(names)}

    def replace(original: _Record, /, **changes: Any) -> _Record:
        arguments = list(values(original))
        for name, value in changes.items():
            arguments[position[name]] = value
        return kind(*arguments)

    return replace


replace_package: Final = _replacer(Package)
replace_claim: Final = _replacer(Claim)


ORDER_STATE_ADAPTER: Final = TypeAdapter(OrderState)
ORPHAN_BUCKET_ADAPTER: Final = TypeAdapter(OrphanBucket)
