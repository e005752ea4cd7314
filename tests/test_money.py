"""The one money format: at least 4 decimals, 3 significant digits below a cent, one precision per column."""

from __future__ import annotations

from decimal import Decimal

from costspan.money import usd, usd_column


def test_single_amounts() -> None:
    amounts = (0, 0.1908, 0.000141, 0.005, 20, 2000, 1234.567, -0.68, None)
    assert [usd(v) for v in amounts] == [
        "$0.0000", "$0.1908", "$0.000141", "$0.00500", "$20.0000", "$2,000.0000", "$1,234.5670", "-$0.6800", "-",
    ]  # fmt: skip
    assert usd(-0.00000001, 4) == "$0.0000"  # never "-$0.0000"


def test_a_column_shares_one_precision() -> None:
    assert usd_column([0.0561, 0.000013, 20.0, None]) == ["$0.0561000", "$0.0000130", "$20.0000000", "-"]
    assert usd_column([1.0, 0.00072, -0.99928]) == ["$1.000000", "$0.000720", "-$0.999280"]
    assert usd_column([]) == []


def test_an_exact_bill_is_never_rounded() -> None:
    assert usd_column([Decimal("0.01617"), Decimal("0.006"), Decimal("0.18153")]) == [
        "$0.01617", "$0.00600", "$0.18153",
    ]  # fmt: skip
