"""The ledger's pure functions on their own (no Kafka, no Redis, no policy): the money
invariants over arbitrary orders and sequences of shipments, refunds and reships, and
examples that read as the ledger's documentation.

Example order (`_order()`): 2 x A at 1000 + 1 x B at 2500 + shipping 500 = 5000.
"""

import copy
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from processor.ledger import (
    UNSHIPPED,
    Settlement,
    carries_only_reships,
    settle_refund,
    settle_reship,
    ship,
    shipped_units,
    uncompensated,
)
from processor.state import Ledger, Order, Package, Priced

Units = dict[str, int]
Operation = Literal["ship", "refund", "package_refund", "cancellation", "reship"]
#: Weighted: shipments, claims and package refunds (how a reship fails) most often.
OPERATIONS: list[Operation] = [
    *("ship", "refund", "package_refund", "reship"),
    *("ship", "refund", "package_refund", "reship"),
    "cancellation",
]

#: A SKU no order has: claims and packages may name one all the same.
FOREIGN_SKU = "Z"


def _order(lines: dict[str, tuple[int, int]] | None = None, *, fee: int = 500) -> Order:
    """`lines` maps SKU to (quantity, unit price); default: 2 x A at 1000, 1 x B at 2500."""
    lines = lines if lines is not None else {"A": (2, 1000), "B": (1, 2500)}
    return Order(
        merchant_id="m1",
        currency="USD",
        lines={sku: Priced(quantity, price) for sku, (quantity, price) in lines.items()},
        shipping_fee_minor=fee,
        placed_event_id="placed",
        placed_at=0,
    )


def _package(package_id: str, lines: Units) -> Package:
    return Package(
        package_id=package_id,
        tracking_number=f"TN-{package_id}",
        lines=lines,
        shipped_at=0,
        shipped_event_id=f"shipped-{package_id}",
        deadline=0,
    )


def _granted(settled: Settlement | None) -> Units:
    return {} if settled is None else {line.sku: line.quantity for line in settled.lines}


def _add(counts: Units, more: Units) -> None:
    for sku, quantity in more.items():
        counts[sku] = counts.get(sku, 0) + quantity


def _totals(per_key: dict[str, Units]) -> Units:
    totals: Units = {}
    for units in per_key.values():
        _add(totals, units)
    return totals


def _every_unit_refunded(order: Order, refunded: Units) -> bool:
    return all(refunded.get(sku, 0) >= priced.quantity for sku, priced in order.lines.items())


# --- A history of operations, threaded as the policy threads them ---------------------------


@dataclass
class _History:
    """An order's ledger threaded through a sequence of operations as the policy does, and
    what they paid and sent, counted from their results rather than from the ledger (which
    the checks hold against these counts)."""

    order: Order
    ledger: Ledger = field(default_factory=Ledger)
    #: Packages `ship` recorded, in order: the `others` of the next one.
    packages: dict[str, Package] = field(default_factory=dict)
    settlements: list[Settlement] = field(default_factory=list)
    refunded: Units = field(default_factory=dict)
    resent: Units = field(default_factory=dict)
    #: Per package id: units refunded or reshipped for a refund or claim naming it, and
    #: those `ship` counted as paid by the cancellation (R12).
    out_of: dict[str, Units] = field(default_factory=dict)
    #: What each reship sent: what a package carrying a replacement carries.
    reships: list[Units] = field(default_factory=list)
    #: Those of them no package carried yet.
    unsent: list[Units] = field(default_factory=list)


def _ship(history: _History, lines: Units) -> None:
    order, before = history.order, history.ledger
    if not set(lines) <= set(order.lines):
        return  # the policy dead-letters such a package (unknown_sku): nothing sees it
    package = _package(f"p{len(history.packages) + 1}", lines)
    untouched = copy.deepcopy(before)
    after = ship(order, before, package, list(history.packages.values()))
    assert before == untouched, "ship changed the ledger it was given"
    history.packages[package.package_id] = package
    history.ledger = after
    # Shipping pays and sends nothing; it only tells replacements and cancelled units.
    assert (after.refunded, after.refunded_minor, after.reshipped) == (
        before.refunded,
        before.refunded_minor,
        before.reshipped,
    ), "ship changed what was refunded or reshipped"
    assert after.failed_replacements == before.failed_replacements
    assert {
        package_id: units
        for package_id, units in after.replacements.items()
        if package_id != package.package_id
    } == before.replacements, "ship recorded replacements of another package than it shipped"
    moved = after.by_package.get(package.package_id, {})
    for sku, quantity in moved.items():
        assert quantity <= before.by_package.get(UNSHIPPED, {}).get(sku, 0), (
            f"ship counted {quantity} x {sku} of {package.package_id} as paid by a "
            f"cancellation that refunded fewer: {before.by_package.get(UNSHIPPED)}"
        )
    _add(history.out_of.setdefault(package.package_id, {}), moved)


def _check_failures(before: Ledger, after: Ledger, package: Package | None, granted: Units) -> None:
    """A settlement out of a package counts the package's replacements that have not
    failed yet first, and marks exactly those failed (docs/policy.md, "Reships and the
    packages that carry them"); nothing else fails, and a failure is never forgotten."""
    expected = copy.deepcopy(before.failed_replacements)
    if package is not None:
        replacements = before.replacements.get(package.package_id, {})
        earlier = before.failed_replacements.get(package.package_id, {})
        for sku, quantity in granted.items():
            if (failed := min(quantity, replacements.get(sku, 0) - earlier.get(sku, 0))) > 0:
                _add(expected.setdefault(package.package_id, {}), {sku: failed})
    assert after.failed_replacements == expected, (
        f"{granted} settled out of {package and package.package_id}: failed replacements "
        f"{after.failed_replacements}, expected {expected}"
    )


def _refund(
    history: _History, units: Units, package: Package | None, out_of: str | None
) -> Settlement | None:
    """`settle_refund`, checked on its own: its lines, its fee, the ledger it leaves."""
    order, before = history.order, history.ledger
    untouched = copy.deepcopy(before)
    left = uncompensated(order, before, units, package)
    settled = settle_refund(order, before, units, package, out_of=out_of)
    assert before == untouched, "settle_refund changed the ledger it was given"
    granted = _granted(settled)
    assert granted == left, f"settle_refund paid for {granted}, uncompensated left {left}"
    if settled is None:
        return None
    assert settled.lines, "a settlement with no line"
    assert len(granted) == len(settled.lines), f"a SKU paid in two lines: {settled.lines}"
    for line in settled.lines:
        assert line.sku in order.lines, f"paid for {line.sku}, which the order lacks"
        assert line.quantity > 0, f"a line of {line.quantity} x {line.sku}"
        assert line.amount_minor == line.quantity * order.lines[line.sku].unit_price_minor
        if package is not None:
            assert line.sku in package.lines, f"{package.package_id} carried no {line.sku}"
    assert settled.shipping_fee_minor in (0, order.shipping_fee_minor)
    lines_minor = sum(line.amount_minor for line in settled.lines)
    assert settled.amount_minor == lines_minor + settled.shipping_fee_minor, settled.describe()

    everything_before = _every_unit_refunded(order, history.refunded)
    fee_paid_before = any(earlier.shipping_fee_minor for earlier in history.settlements)
    _add(history.refunded, granted)
    if package is not None:
        _add(history.out_of.setdefault(package.package_id, {}), granted)
    everything_after = _every_unit_refunded(order, history.refunded)
    if settled.shipping_fee_minor:
        assert not fee_paid_before, f"the shipping fee paid again by {settled.describe()}"
        assert everything_after, (
            f"the fee paid by {settled.describe()} with units unrefunded: {history.refunded}"
        )
    if everything_after and not everything_before:
        assert settled.shipping_fee_minor == order.shipping_fee_minor, (
            f"{settled.describe()} left every unit refunded without the fee"
        )
    _check_failures(before, settled.ledger, package, granted)
    history.settlements.append(settled)
    history.ledger = settled.ledger
    return settled


def _reship(history: _History, units: Units, package: Package | None) -> Units:
    """`settle_reship`, checked on its own: it sends what is left and pays nothing."""
    order, before = history.order, history.ledger
    untouched = copy.deepcopy(before)
    left = uncompensated(order, before, units, package)
    settled = settle_reship(order, before, units, package)
    assert before == untouched, "settle_reship changed the ledger it was given"
    sent = {} if settled is None else settled[0]
    assert sent == left, f"settle_reship sent {sent}, uncompensated left {left}"
    if settled is None:
        return {}
    after = settled[1]
    assert (after.refunded, after.refunded_minor, after.shipping_fee_refunded) == (
        before.refunded,
        before.refunded_minor,
        before.shipping_fee_refunded,
    ), "a reship paid something"
    _add(history.resent, sent)
    if package is not None:
        _add(history.out_of.setdefault(package.package_id, {}), sent)
    history.reships.append(sent)
    history.unsent.append(sent)
    _check_failures(before, after, package, sent)
    history.ledger = after
    return sent


def _check_invariants(history: _History) -> None:
    """The money invariants, after any step, failed reships or not (the bounds are
    argued in `test_a_failed_reship_lets_its_units_be_compensated_again_within_the_order_total`).
    """
    order, ledger = history.order, history.ledger
    paid = sum(settled.amount_minor for settled in history.settlements)
    assert paid == ledger.refunded_minor, f"settlements paid {paid}, the ledger says {ledger}"
    assert paid <= order.total_minor, f"refunded {paid} of an order of {order.total_minor}"
    fees = [settled for settled in history.settlements if settled.shipping_fee_minor]
    assert len(fees) <= 1, f"the shipping fee paid {len(fees)} times"
    assert {sku: n for sku, n in ledger.refunded.items() if n} == history.refunded

    failed, replaced = _totals(ledger.failed_replacements), _totals(ledger.replacements)
    strangers = (history.refunded.keys() | history.resent.keys() | replaced.keys()) - set(
        order.lines
    )
    assert not strangers, f"refunded or reshipped {strangers}, which the order lacks"
    for sku, priced in order.lines.items():
        refunded, resent = history.refunded.get(sku, 0), history.resent.get(sku, 0)
        assert replaced.get(sku, 0) <= resent, (
            f"packages carry {replaced.get(sku, 0)} replacements of {sku}, {resent} reshipped"
        )
        assert refunded <= priced.quantity, f"refunded {refunded} x {sku} of {priced.quantity}"
        assert refunded + resent <= priced.quantity + failed.get(sku, 0), (
            f"{refunded} x {sku} refunded and {resent} reshipped, {priced.quantity} ordered, "
            f"{failed.get(sku, 0)} failed replacements"
        )
    for package_id, package in history.packages.items():
        carried = package.lines
        taken = _totals(
            {
                "refunded": ledger.by_package.get(package_id, {}),
                "reshipped": ledger.reshipped.get(package_id, {}),
            }
        )
        for counts, what in ((history.out_of.get(package_id, {}), "settled"), (taken, "ledger")):
            for sku, quantity in counts.items():
                assert quantity <= carried.get(sku, 0), (
                    f"{quantity} x {sku} out of {package_id} ({what}), which carried {carried}"
                )
        replacements = ledger.replacements.get(package_id, {})
        for sku, quantity in replacements.items():
            assert 0 < quantity <= carried.get(sku, 0), f"{package_id}: {replacements}"
        for sku, quantity in ledger.failed_replacements.get(package_id, {}).items():
            assert 0 < quantity <= replacements.get(sku, 0), f"{package_id}: {ledger}"


def _check_uncompensated(history: _History, asked: Units) -> None:
    """What any refund or reship could get, out of any package or none: ordered SKUs only
    (and only those the package carried), positive, within what was asked and carried.
    Out of no package, exactly what docs/policy.md says: ordered - covered, where
    covered = refunded + reshipped - failed; out of a package, that plus its replacements
    not failed yet, within what it carried less what was taken out of it. Exactly, so a
    unit nothing covers is never denied, nor paid short."""
    order, ledger = history.order, history.ledger
    greedy = dict.fromkeys([*order.lines, FOREIGN_SKU], 99)
    for package in [None, *history.packages.values()]:
        for units in (asked, greedy):
            left = uncompensated(order, ledger, units, package)
            for sku, quantity in left.items():
                assert sku in order.lines, f"uncompensated returned {sku}: {left}"
                assert 0 < quantity <= units[sku], f"asked {units}, uncompensated {left}"
                if package is not None:
                    taken = history.out_of.get(package.package_id, {}).get(sku, 0)
                    assert quantity <= package.lines.get(sku, 0) - taken, (
                        f"{package.package_id} carried {package.lines}, {taken} x {sku} "
                        f"settled out of it, and uncompensated still finds {left}"
                    )
    failed = _totals(ledger.failed_replacements)
    covered = {
        sku: history.refunded.get(sku, 0) + history.resent.get(sku, 0) - failed.get(sku, 0)
        for sku in order.lines
    }
    expected = {
        sku: quantity
        for sku, priced in order.lines.items()
        if (quantity := priced.quantity - covered[sku]) > 0
    }
    assert uncompensated(order, ledger, greedy) == expected, (
        f"covered {covered} of {order.lines}: uncompensated found "
        f"{uncompensated(order, ledger, greedy)}, the policy's formula {expected}"
    )
    # Out of a package, the same within what it carried and nothing took out of it yet;
    # its replacements that have not failed are the claimed units again.
    for package_id, package in history.packages.items():
        replacements = ledger.replacements.get(package_id, {})
        failed_here = ledger.failed_replacements.get(package_id, {})
        taken_out = history.out_of.get(package_id, {})
        expected = {}
        for sku, priced in order.lines.items():
            standing = replacements.get(sku, 0) - failed_here.get(sku, 0)
            owed = priced.quantity - covered[sku] + standing
            quantity = min(owed, package.lines.get(sku, 0) - taken_out.get(sku, 0))
            if quantity > 0:
                expected[sku] = quantity
        found = uncompensated(order, ledger, greedy, package)
        assert found == expected, (
            f"out of {package_id}, carrying {package.lines} with {taken_out} taken: "
            f"uncompensated found {found}, the policy's formula {expected}"
        )


def _check_again_pays_nothing_more(
    history: _History,
    operation: Operation,
    units: Units,
    package: Package | None,
    *,
    out_of: str | None,
    first: Units,
) -> None:
    """The same settlement again, right after it (a retry, a redelivered request): a SKU
    the first could not grant in full has nothing left, and the rest stays within bounds."""
    retry = copy.deepcopy(history)
    if operation == "reship":
        again = _reship(retry, units, package)
    else:
        again = _granted(_refund(retry, units, package, out_of))
    for sku, asked in units.items():
        if first.get(sku, 0) < asked:
            assert sku not in again, (
                f"{operation} of {units} granted {first}, then {again} more when repeated"
            )
    _check_invariants(retry)


def _units(order: Order) -> st.SearchStrategy[Units]:
    """Units a claim may ask for: any SKU, the order's or not, any quantity, beyond it too."""
    quantities = st.integers(1, 2) | st.integers(1, 7)  # mostly a part of what is left
    skus = st.sampled_from([*order.lines, FOREIGN_SKU])
    return st.dictionaries(skus, quantities, min_size=1, max_size=4)


@st.composite
def orders(draw: st.DrawFn) -> Order:
    skus = draw(st.lists(st.sampled_from("ABC"), min_size=1, max_size=3, unique=True))
    return _order(
        {sku: (draw(st.integers(1, 5)), draw(st.integers(0, 10_000))) for sku in skus},
        fee=draw(st.integers(0, 2_000)),
    )


def _draw_package(data: st.DataObject, history: _History, *, named: bool) -> Package | None:
    """One of the packages shipped so far (`named`: if there is one; often one carrying a
    replacement, if any does), or none."""
    ids = list(history.packages)
    replacing = [package_id for package_id in ids if package_id in history.ledger.replacements]
    if bool(replacing) and data.draw(st.booleans(), label="a package carrying a reship"):
        return history.packages[data.draw(st.sampled_from(replacing), label="package")]
    if named and ids:
        return history.packages[data.draw(st.sampled_from(ids), label="package")]
    choice = data.draw(st.sampled_from([None, *ids]), label="package")
    return None if choice is None else history.packages[choice]


def _draw_lines(data: st.DataObject, history: _History) -> Units:
    """A package's lines: the rest of the order, a replacement for an earlier reship, both
    in one package, or anything (a SKU the order lacks, more units than ordered)."""
    order = history.order
    replacing = ["replacement", "replacement and rest"]
    kinds = [*replacing, "rest", "any"] if history.unsent else ["rest", "any", *replacing]
    kind = data.draw(st.sampled_from(kinds), label="lines")
    shipped = shipped_units(history.packages.values())
    rest = {
        sku: priced.quantity - shipped.get(sku, 0)
        for sku, priced in order.lines.items()
        if priced.quantity > shipped.get(sku, 0)
    }
    replacement: Units | None = None
    if kind in replacing and history.unsent:
        replacement = dict(history.unsent.pop(0))
    elif kind in replacing and history.reships:
        replacement = dict(data.draw(st.sampled_from(history.reships), label="replacement of"))
    if replacement is not None:
        if kind == "replacement":
            return replacement
        return {sku: replacement.get(sku, 0) + rest.get(sku, 0) for sku in replacement | rest}
    if kind == "rest" and rest:
        return rest
    skus = st.sampled_from([*order.lines, FOREIGN_SKU])
    return data.draw(st.dictionaries(skus, st.integers(1, 6), min_size=1, max_size=3), "lines")


def _draw_asked(data: st.DataObject, order: Order, package: Package | None) -> Units:
    """What a refund or reship asks for: a claim's lines, the whole order (a claim with no
    lines and no package), or the package's lines (a claim with no lines)."""
    kinds = ["claim", "claim", "order", *(["package"] if package is not None else [])]
    kind = data.draw(st.sampled_from(kinds), label="asking for")
    if kind == "package" and package is not None:
        return dict(package.lines)
    if kind == "order":
        return {sku: priced.quantity for sku, priced in order.lines.items()}
    return data.draw(_units(order), label="claimed")


def _step(data: st.DataObject, history: _History, operation: Operation) -> None:
    """One operation as the policy would make it, checked on its own and retried."""
    order = history.order
    package: Package | None = None
    out_of: str | None = None
    if operation == "ship":
        _ship(history, _draw_lines(data, history))
        _check_uncompensated(history, {})
        return
    if operation == "cancellation":
        shipped = shipped_units(history.packages.values())
        unshipped = {
            sku: priced.quantity - shipped.get(sku, 0) for sku, priced in order.lines.items()
        }
        units = data.draw(st.one_of(st.just(unshipped), _units(order)), label="cancelled")
        out_of = UNSHIPPED
    elif operation == "package_refund":
        package = _draw_package(data, history, named=True)
        units = dict(package.lines) if package is not None else {}
    else:
        package = _draw_package(data, history, named=False)
        units = _draw_asked(data, order, package)
    if operation == "reship":
        first = _reship(history, units, package)
    else:
        first = _granted(_refund(history, units, package, out_of))
    if first:
        _check_again_pays_nothing_more(
            history, operation, units, package, out_of=out_of, first=first
        )
    _check_uncompensated(history, units)


@settings(max_examples=400, deadline=None)
@given(orders(), st.lists(st.sampled_from(OPERATIONS), min_size=3, max_size=14), st.data())
def test_any_sequence_of_settlements_keeps_the_money_invariants(
    order: Order, operations: list[Operation], data: st.DataObject
) -> None:
    """Shipments, refunds (out of a package, of a package's lines as R1-R3b refund it,
    which is how a package carrying a reship fails, of the units no package carried as a
    cancellation does, or of anything), and reships, in any order: after every step,
    refunds add up to the ledger's `refunded_minor` and never to more than the order's
    total, even when reships fail (`_check_invariants` says why that is the true bound),
    the fee is paid once and by the refund that leaves every unit refunded, a package
    covers no more than it carried, and the same settlement again pays nothing more."""
    history = _History(order)
    for operation in operations:
        _step(data, history, operation)
        _check_invariants(history)


Failure = Literal["lost", "claim refunded", "claim reshipped"]


@settings(max_examples=200, deadline=None)
@given(
    orders(),
    st.lists(st.sampled_from(OPERATIONS), max_size=4),
    st.sampled_from(["lost", "claim refunded", "claim reshipped"]),
    st.lists(st.sampled_from(OPERATIONS), max_size=6),
    st.data(),
)
def test_a_failed_reship_lets_its_units_be_compensated_again_within_the_order_total(
    order: Order,
    before: list[Operation],
    failure: Failure,
    after: list[Operation],
    data: st.DataObject,
) -> None:
    """The whole order ships (in one package or two), anything happens, a claim is
    reshipped and the reship's package fails as the policy fails one (refunded as lost,
    or a claim on it refunded or reshipped), and anything happens again. The reship's
    package carries only replacements; its loss refunds every unit it carried, once, and
    marks them failed; the money invariants (`_check_invariants`) hold at every step.

    The true bound when reships fail is still the order's total, not the total plus the
    price of the failed reships' units: those units were reshipped, not refunded, so
    refunding them after the failure takes the place of the reship, not of a refund.
    Per SKU the ledger keeps refunded + reshipped - failed <= ordered, and failed <=
    reshipped (a package carries no more replacements than were reshipped), so refunded
    <= ordered and the fee comes once. What failures loosen is the units compensated:
    refunded + reshipped <= ordered + failed. Without failures (as in the other property,
    until one happens) that is refunded + reshipped <= ordered."""
    history = _History(order)
    ordered = {sku: priced.quantity for sku, priced in order.lines.items()}
    first = {sku: data.draw(st.integers(0, quantity)) for sku, quantity in ordered.items()}
    for share in (first, {sku: quantity - first[sku] for sku, quantity in ordered.items()}):
        if lines := {sku: quantity for sku, quantity in share.items() if quantity}:
            _ship(history, lines)
    for operation in before:
        _step(data, history, operation)
        _check_invariants(history)

    # A claim on what is still owed (one may be left: the operations before may have
    # compensated everything, and then there is nothing to reship).
    claimed_package = _draw_package(data, history, named=False)
    owed = uncompensated(order, history.ledger, dict(ordered), claimed_package)
    assume(owed)
    skus = data.draw(st.lists(st.sampled_from(sorted(owed)), min_size=1, unique=True))
    claim = {sku: data.draw(st.integers(1, owed[sku]), label=f"claimed {sku}") for sku in skus}
    sent = _reship(history, claim, claimed_package)
    assert sent == claim, f"{claim} was owed, the reship sent {sent}"
    _check_invariants(history)
    history.unsent.remove(sent)
    _ship(history, sent)
    replacement = list(history.packages.values())[-1]
    assert carries_only_reships(history.ledger, replacement), (
        f"{replacement.package_id} carries {sent}, reshipped after the whole order "
        f"shipped, but its replacements are {history.ledger.replacements}"
    )
    if failure == "lost":
        lost = _granted(_refund(history, dict(replacement.lines), replacement, None))
        assert lost == sent, f"the loss of {replacement.package_id} paid for {lost}"
        assert history.ledger.failed_replacements[replacement.package_id] == sent
        _check_again_pays_nothing_more(
            history, "package_refund", sent, replacement, out_of=None, first=lost
        )
    elif failure == "claim refunded":
        _refund(history, _draw_asked(data, order, replacement), replacement, None)
    else:
        _reship(history, _draw_asked(data, order, replacement), replacement)
    _check_invariants(history)
    for operation in after:
        _step(data, history, operation)
        _check_invariants(history)


# --- Examples -----------------------------------------------------------------------------


def test_a_refund_out_of_one_package_of_a_split_order_never_pays_for_the_others_units() -> None:
    """Counted per SKU alone, the first package's loss would pay for the A the second
    carried, and the second's return would then find A refunded already."""
    order = _order()
    first, second = _package("p1", {"A": 1}), _package("p2", {"A": 1, "B": 1})
    ledger = ship(order, Ledger(), first, [])
    ledger = ship(order, ledger, second, [first])

    lost = settle_refund(order, ledger, {"A": 2, "B": 1}, first)
    assert lost is not None
    assert lost.describe() == "1 x A (1000) = 1000"
    assert settle_refund(order, lost.ledger, {"A": 2, "B": 1}, first) is None

    returned = settle_refund(order, lost.ledger, second.lines, second)
    assert returned is not None
    assert returned.describe() == "1 x A (1000) + 1 x B (2500) + shipping fee (500) = 4000"
    assert returned.ledger.refunded_minor == order.total_minor == 5000


def test_the_shipping_fee_comes_once_with_the_refund_that_leaves_every_unit_refunded() -> None:
    """A partial refund pays no fee; the one that refunds the last unit pays it; nothing
    is left after it, however many units are asked for."""
    order = _order()
    partial = settle_refund(order, Ledger(), {"A": 2})
    assert partial is not None
    assert (partial.describe(), partial.shipping_fee_minor) == ("2 x A (2000) = 2000", 0)

    last = settle_refund(order, partial.ledger, {"A": 5, "B": 1})
    assert last is not None
    assert last.describe() == "1 x B (2500) + shipping fee (500) = 3000"
    assert settle_refund(order, last.ledger, {"A": 1, "B": 1}) is None
    assert last.ledger.refunded_minor == order.total_minor


def test_a_reshipped_unit_is_refunded_once_when_the_package_carrying_the_reship_is_lost() -> None:
    """The reship compensates the claimed unit while its package may still arrive; once
    that package is refunded as lost, the merchant never got the unit: it is refunded,
    once, and the order's total is the most it ever gets."""
    order = _order({"A": (1, 1000)}, fee=500)
    first = _package("p1", {"A": 1})
    ledger = ship(order, Ledger(), first, [])
    reshipped = settle_reship(order, ledger, {"A": 1}, first)  # a damaged claim on p1
    assert reshipped is not None
    sent, ledger = reshipped
    assert sent == {"A": 1}
    assert settle_refund(order, ledger, {"A": 1}) is None, "the reship compensates it"
    assert settle_reship(order, ledger, {"A": 1}) is None

    replacement = _package("p2", {"A": 1})
    ledger = ship(order, ledger, replacement, [first])
    assert carries_only_reships(ledger, replacement)
    lost = settle_refund(order, ledger, replacement.lines, replacement)
    assert lost is not None
    assert lost.describe() == "1 x A (1000) + shipping fee (500) = 1500"
    for package in (None, first, replacement):
        assert settle_refund(order, lost.ledger, {"A": 1}, package) is None
    assert lost.ledger.refunded_minor == order.total_minor


def test_units_a_cancellation_refunded_are_not_paid_again_when_a_package_ships_them() -> None:
    """R12: a package that ships after the cancellation carries units it refunded as
    unshipped; its loss pays nothing for them, and the order is still paid in full once."""
    order = _order()
    first = _package("p1", {"A": 1})
    ledger = ship(order, Ledger(), first, [])
    cancelled = settle_refund(order, ledger, {"A": 1, "B": 1}, out_of=UNSHIPPED)
    assert cancelled is not None
    assert cancelled.describe() == "1 x A (1000) + 1 x B (2500) = 3500"

    late = _package("p2", {"A": 1, "B": 1})
    ledger = ship(order, cancelled.ledger, late, [first])
    assert ledger.by_package == {UNSHIPPED: {}, "p2": {"A": 1, "B": 1}}
    assert settle_refund(order, ledger, late.lines, late) is None
    lost = settle_refund(order, ledger, first.lines, first)
    assert lost is not None
    assert lost.describe() == "1 x A (1000) + shipping fee (500) = 1500"
    assert lost.ledger.refunded_minor == order.total_minor


def test_a_ledger_that_refunded_the_fee_never_pays_it_again() -> None:
    """The flag alone keeps the fee to one payment, whatever the units say. The functions
    never make a ledger with the flag set and units left (once every unit is refunded,
    nothing is left to refund), so the check is defence in depth that no sequence of
    settlements reaches: only a ledger built by hand, or restored from the store, does."""
    order = _order()
    restored = Ledger(refunded={"A": 2}, shipping_fee_refunded=True, refunded_minor=2500)
    last = settle_refund(order, restored, {"B": 1})
    assert last is not None
    assert (last.describe(), last.shipping_fee_minor) == ("1 x B (2500) = 2500", 0)
    assert last.ledger.refunded_minor == order.total_minor


def test_a_refund_lists_its_lines_in_sku_order_whatever_order_it_was_asked_in() -> None:
    """As a reship's lines are: the refund command is the same whatever order a claim or
    a package listed its SKUs in."""
    order = _order()
    asked = settle_refund(order, Ledger(), {"B": 1, "A": 2})
    assert asked is not None
    assert [line.sku for line in asked.lines] == ["A", "B"]


def test_a_refund_out_of_no_package_counts_its_units_out_of_none() -> None:
    """A claim on the whole order: a key for it in `by_package` would be stored as the
    package id "None"."""
    order = _order()
    claimed = settle_refund(order, Ledger(), {"A": 1})
    assert claimed is not None
    assert claimed.ledger.by_package == {}


@pytest.mark.parametrize("lines", [{"A": 1, "B": 1}, {"A": 2}], ids=["another SKU", "another A"])
def test_a_package_carrying_a_reship_and_another_unit_does_not_carry_only_reships(
    lines: Units,
) -> None:
    """Shipped after a cancellation, such a package is an anomaly (R12): only one A it
    carries replaces the one reshipped; the other unit is beyond the order."""
    order = _order()
    first = _package("p1", {"A": 2, "B": 1})
    ledger = ship(order, Ledger(), first, [])
    reshipped = settle_reship(order, ledger, {"A": 1}, first)
    assert reshipped is not None
    second = _package("p2", lines)
    ledger = ship(order, reshipped[1], second, [first])
    assert ledger.replacements == {"p2": {"A": 1}}
    assert not carries_only_reships(ledger, second)


def test_a_package_carrying_reships_and_an_ordered_unit_fails_no_more_than_its_reships() -> None:
    """Refunded in two parts, the first failing one reship, the package's second refund
    fails the other reship and pays the ordered unit: nothing is left to refund after it."""
    order = _order({"A": (3, 1000)}, fee=500)
    first = _package("p1", {"A": 2})
    ledger = ship(order, Ledger(), first, [])
    reshipped = settle_reship(order, ledger, {"A": 2}, first)  # a damaged claim on p1
    assert reshipped is not None
    second = _package("p2", {"A": 3})  # the two reships and the unit still to ship
    ledger = ship(order, reshipped[1], second, [first])
    assert ledger.replacements == {"p2": {"A": 2}}

    lost = settle_refund(order, ledger, {"A": 1}, second)
    assert lost is not None
    assert lost.describe() == "1 x A (1000) = 1000"
    rest = settle_refund(order, lost.ledger, {"A": 2}, second)
    assert rest is not None
    assert rest.describe() == "2 x A (2000) + shipping fee (500) = 2500"
    assert rest.ledger.failed_replacements == {"p2": {"A": 2}}
    for package in (None, first, second):
        assert settle_refund(order, rest.ledger, {"A": 1}, package) is None
    assert rest.ledger.refunded_minor == order.total_minor


def test_packages_shipped_after_a_cancellation_take_the_units_it_refunded_one_by_one() -> None:
    """R12: each late package counts as paid only the cancelled units no earlier one took."""
    order = _order({"A": (3, 1000)})
    first = _package("p1", {"A": 1})
    ledger = ship(order, Ledger(), first, [])
    cancelled = settle_refund(order, ledger, {"A": 2}, out_of=UNSHIPPED)
    assert cancelled is not None
    second, third = _package("p2", {"A": 1}), _package("p3", {"A": 1})

    ledger = ship(order, cancelled.ledger, second, [first])
    assert ledger.by_package == {UNSHIPPED: {"A": 1}, "p2": {"A": 1}}
    ledger = ship(order, ledger, third, [first, second])
    assert ledger.by_package == {UNSHIPPED: {}, "p2": {"A": 1}, "p3": {"A": 1}}


@pytest.mark.parametrize("fee", [500, 0])
def test_the_refund_that_leaves_every_unit_refunded_marks_the_fee_refunded(fee: int) -> None:
    """Even a fee of 0: the ledger then says the fee is settled, as `explain` shows it."""
    order = _order(fee=fee)
    partial = settle_refund(order, Ledger(), {"A": 2})
    assert partial is not None
    assert not partial.ledger.shipping_fee_refunded
    last = settle_refund(order, partial.ledger, {"B": 1})
    assert last is not None
    assert (last.shipping_fee_minor, last.ledger.shipping_fee_refunded) == (fee, True)


def test_a_ledger_that_refunded_the_fee_keeps_it_refunded_through_a_partial_refund() -> None:
    """The defence in depth of the test above, one refund later."""
    order = _order()
    restored = Ledger(refunded={"A": 1}, shipping_fee_refunded=True, refunded_minor=1000)
    partial = settle_refund(order, restored, {"A": 1})
    assert partial is not None
    assert partial.ledger.shipping_fee_refunded
    last = settle_refund(order, partial.ledger, {"B": 1})
    assert last is not None
    assert last.shipping_fee_minor == 0
