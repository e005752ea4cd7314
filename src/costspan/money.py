"""Dollar amounts as people read them: the one format every table, message and page of costspan uses.

Machine output (CSV, JSON, span attributes) keeps plain numbers; this is only for text people read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

MIN_DECIMALS = 4  # a typical LLM call costs cents or less: $0.0123, never $0.01
SIGNIFICANT = 3  # below a cent, enough decimals for three significant digits: $0.000141, never $0.0001
MAX_DECIMALS = 10
NONE_SHOWN = "-"

Amount = float | Decimal


def decimals_for(value: Amount) -> int:
    """How many decimals ``value`` needs: MIN_DECIMALS, more below a cent so it never reads as $0.0000. An exact
    Decimal (a bill line) keeps all its decimals: a bill must not round."""
    magnitude = abs(float(value))
    needed = MIN_DECIMALS
    if 0 < magnitude < 0.01:
        needed = SIGNIFICANT - 1 - math.floor(math.log10(magnitude))
    if isinstance(value, Decimal) and value.is_finite():
        exponent = value.normalize().as_tuple().exponent
        needed = max(needed, -exponent if isinstance(exponent, int) else 0)
    return min(MAX_DECIMALS, max(MIN_DECIMALS, needed))


def usd(value: Amount | None, decimals: int | None = None) -> str:
    """``$1,234.5678``, ``$0.000141``, ``-$0.6800``; ``-`` for no amount. ``decimals`` fixes the precision, as a
    column does (see ``usd_column``)."""
    if value is None:
        return NONE_SHOWN
    places = decimals_for(value) if decimals is None else decimals
    shown = f"{abs(value):,.{places}f}"
    sign = "-" if value < 0 and shown.strip("0.,") else ""  # no "-$0.0000"
    return f"{sign}${shown}"


def column_decimals(values: Sequence[Amount | None]) -> int:
    """One precision for a whole column: what its smallest amount needs, so that the decimals line up."""
    return max((decimals_for(value) for value in values if value is not None), default=MIN_DECIMALS)


def usd_column(values: Sequence[Amount | None]) -> list[str]:
    """A column of amounts, all with the same number of decimals."""
    decimals = column_decimals(values)
    return [usd(value, decimals) for value in values]
