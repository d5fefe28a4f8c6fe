"""Refund arithmetic: how many units of each SKU a refund may still cover, and for how much.

This is the one place that enforces the money invariants: a unit is refunded at most
once, never more units than were ordered nor, out of a package, than it carried, and
the shipping fee is added exactly once, by the refund that leaves every ordered unit
refunded. So an order's refunds never add up to more than its total. A reshipped unit
counts as compensated too: a unit is refunded or reshipped, once, until the package that
carried the reship fails; then it is compensated by neither and may be again.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from processor.outputs import RefundLine
from processor.state import Ledger, Order, Package

#: `Ledger.by_package` key of the units an order's cancellation refunded, which no package
#: carried then (a package id is never empty): `ship` moves them.
UNSHIPPED: Final = ""

#: `Ledger.reshipped` key of the units reshipped for a claim on the whole order.
WHOLE_ORDER: Final = ""


@dataclass(frozen=True, slots=True)
class Settlement:
    """One refund's lines and amount, and the ledger as it stands after it."""

    lines: tuple[RefundLine, ...]
    shipping_fee_minor: int
    amount_minor: int
    ledger: Ledger

    def describe(self) -> str:
        parts = [f"{line.quantity} x {line.sku} ({line.amount_minor})" for line in self.lines]
        if self.shipping_fee_minor:
            parts.append(f"shipping fee ({self.shipping_fee_minor})")
        return " + ".join(parts) + f" = {self.amount_minor}"


def uncompensated(
    order: Order, ledger: Ledger, units: Mapping[str, int], package: Package | None = None
) -> dict[str, int]:
    """The part of `units` no refund or reship has covered yet, by SKU: what a refund may
    still pay for, and a reship may still send. Within what was ordered and, for a refund
    or reship concerning a `package`, within what that package carried and no refund or
    reship took out of it (SKUs the order or the package lacks are left out). The units
    of `package` that carry a reship are the claimed units again: compensating them
    means the reship failed (`_failed_replacements`)."""
    taken = ledger.by_package.get(package.package_id, {}) if package is not None else {}
    resent = ledger.reshipped.get(package.package_id, {}) if package is not None else {}
    standing = _standing_replacements(ledger, package)
    left: dict[str, int] = {}
    for sku in sorted(units):
        priced = order.lines.get(sku)
        if priced is None:
            continue
        covered = ledger.refunded.get(sku, 0) + _reship_covers(ledger, sku)
        quantity = min(units[sku], priced.quantity - covered + standing.get(sku, 0))
        if package is not None:
            carried = package.lines.get(sku, 0)
            quantity = min(quantity, carried - taken.get(sku, 0) - resent.get(sku, 0))
        if quantity > 0:
            left[sku] = quantity
    return left


def reshipped(ledger: Ledger, sku: str) -> int:
    """Units of `sku` sent again, for any claim."""
    return _total(ledger.reshipped, sku)


def _reship_covers(ledger: Ledger, sku: str) -> int:
    """Units of `sku` a reship compensates: those sent again, less those whose package
    failed."""
    return reshipped(ledger, sku) - _total(ledger.failed_replacements, sku)


def _total(counts: Mapping[str, Mapping[str, int]], sku: str) -> int:
    return sum(units.get(sku, 0) for units in counts.values())


def shipped_units(packages: Iterable[Package]) -> dict[str, int]:
    """Units of each SKU the `packages` carried, together."""
    shipped: dict[str, int] = {}
    for package in packages:
        for sku, quantity in package.lines.items():
            shipped[sku] = shipped.get(sku, 0) + quantity
    return shipped


def ship(order: Order, ledger: Ledger, package: Package, others: Iterable[Package]) -> Ledger:
    """Records a new package: which of its units carry a reship, and which the order's
    cancellation paid for already.

    A `package_shipped` names no claim, so counts are all there is: its units of a SKU
    beyond those still to ship (ordered, less those the cancellation refunded as unshipped)
    that the order's other packages (`others`) had sent already carry a reship, as long
    as reshipped units are still to ship. A package shipped beyond the order before any
    reship carries none. Its other units, if the cancellation refunded them as unshipped,
    are paid for: they count as refunded out of it (R12). Every SKU of `package` is one
    the order has: the policy dead-letters a package with another (`unknown_sku`)."""
    unshipped = ledger.by_package.get(UNSHIPPED, {})
    if not ledger.reshipped and not unshipped:
        return ledger  # most packages: counting what the others sent would find nothing
    shipped = shipped_units(others)
    carrying: dict[str, int] = {}
    moved: dict[str, int] = {}
    for sku, carried in package.lines.items():
        to_ship = order.lines[sku].quantity - unshipped.get(sku, 0)
        beyond = min(carried, shipped.get(sku, 0) + carried - to_ship)
        resent = max(0, min(beyond, reshipped(ledger, sku) - _total(ledger.replacements, sku)))
        if resent:
            carrying[sku] = resent
        if (paid := min(carried - resent, unshipped.get(sku, 0))) > 0:
            moved[sku] = paid
    if carrying:
        ledger = replace(ledger, replacements=ledger.replacements | {package.package_id: carrying})
    if moved:
        left = {sku: n - moved.get(sku, 0) for sku, n in unshipped.items() if n > moved.get(sku, 0)}
        by_package = ledger.by_package | {UNSHIPPED: left, package.package_id: moved}
        ledger = replace(ledger, by_package=by_package)
    return ledger


def carries_only_reships(ledger: Ledger, package: Package) -> bool:
    """Whether every unit of `package` carries a reship (`ship`)."""
    return ledger.replacements.get(package.package_id) == package.lines


def _standing_replacements(ledger: Ledger, package: Package | None) -> dict[str, int]:
    """The units of `package` that carry a reship that has not failed."""
    if package is None or package.package_id not in ledger.replacements:
        return {}
    failed = ledger.failed_replacements.get(package.package_id, {})
    return {
        sku: quantity - failed.get(sku, 0)
        for sku, quantity in ledger.replacements[package.package_id].items()
        if quantity > failed.get(sku, 0)
    }


def _failed_replacements(
    ledger: Ledger, package: Package | None, units: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """`Ledger.failed_replacements` once `units` are refunded or sent again out of
    `package`: its units that carry a reship count first, as that reship failed."""
    standing = _standing_replacements(ledger, package)
    failed = {
        sku: quantity
        for sku, asked in units.items()
        if (quantity := min(asked, standing.get(sku, 0))) > 0
    }
    if package is None or not failed:
        return ledger.failed_replacements
    key = package.package_id
    return ledger.failed_replacements | {
        key: _plus(ledger.failed_replacements.get(key, {}), failed)
    }


def settle_refund(
    order: Order,
    ledger: Ledger,
    units: Mapping[str, int],
    package: Package | None = None,
    *,
    out_of: str | None = None,
) -> Settlement | None:
    """Refunds what is left of `units` (out of `package`, if given); None when nothing is
    (the caller denies it). The units are counted against `package`, or the `out_of` key
    of `Ledger.by_package` (`UNSHIPPED`)."""
    left = uncompensated(order, ledger, units, package)
    if not left:
        return None
    key = package.package_id if package is not None else out_of
    refunded = _plus(ledger.refunded, left)
    by_package = ledger.by_package
    if key is not None:
        by_package = by_package | {key: _plus(by_package.get(key, {}), left)}
    lines = [
        RefundLine(sku, quantity, quantity * order.lines[sku].unit_price_minor)
        for sku, quantity in left.items()
    ]
    everything_refunded = all(
        refunded.get(sku, 0) >= priced.quantity for sku, priced in order.lines.items()
    )
    fee = (
        order.shipping_fee_minor if everything_refunded and not ledger.shipping_fee_refunded else 0
    )
    amount = sum(line.amount_minor for line in lines) + fee
    return Settlement(
        lines=tuple(lines),
        shipping_fee_minor=fee,
        amount_minor=amount,
        ledger=replace(
            ledger,
            refunded=refunded,
            shipping_fee_refunded=ledger.shipping_fee_refunded or fee > 0 or everything_refunded,
            refunded_minor=ledger.refunded_minor + amount,
            by_package=by_package,
            failed_replacements=_failed_replacements(ledger, package, left),
        ),
    )


def settle_reship(
    order: Order, ledger: Ledger, units: Mapping[str, int], package: Package | None = None
) -> tuple[dict[str, int], Ledger] | None:
    """Reships what is left of `units` (for a claim on `package`, if given): the units
    to send and the ledger after it; None when nothing is left (the caller denies it)."""
    left = uncompensated(order, ledger, units, package)
    if not left:
        return None
    key = package.package_id if package is not None else WHOLE_ORDER
    resent = _plus(ledger.reshipped.get(key, {}), left)
    return left, replace(
        ledger,
        reshipped=ledger.reshipped | {key: resent},
        failed_replacements=_failed_replacements(ledger, package, left),
    )


def _plus(counts: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """A copy of `counts` with `more` added, SKU by SKU (the ledger's records are never
    changed in place: states share them)."""
    added = dict(counts)
    for sku, quantity in more.items():
        added[sku] = added.get(sku, 0) + quantity
    return added
