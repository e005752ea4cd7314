"""Reconciliation: what costspan recorded against what the provider billed, day by day and model by model.

The provider's side is a ``ProviderBill``: for OpenAI, ``costspan.providers.openai.reconcile.OrganizationReports``
reads the organization Costs and Usage APIs with an admin key. costspan's side is the store. For every UTC
day whose dollars differ by more than the tolerance, ``reconcile`` names the likely cause from the token counts:

- the provider billed requests costspan never saw (code that is not instrumented, spans lost on the way);
- costspan recorded calls it could not price (a model its price data does not know);
- costspan recorded more than was billed (two sources feeding one store, or a project filter too narrow);
- tokens agree but dollars do not: costspan's prices for a model differ from the bill.

The provider reports a day only once it is over, so today is shown as ``partial`` and never fails a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

from costspan.store.sqlite import Store, filter_sql, round_usd, to_ns

DEFAULT_TOLERANCE = 0.02  # a fraction of the provider's figure
MIN_TOLERANCE_USD = 0.01  # below a cent, rounding on either side is not a finding

OK = "ok"
PARTIAL = "partial"
UNSEEN_CALLS = "unseen calls"
UNPRICED_CALLS = "unpriced calls"
OVER_COUNTED = "over-counted"
PRICE_MISMATCH = "price mismatch"


class ReconcileError(Exception):
    """The provider's reports could not be read; the message says why and what to do."""


@dataclass
class Figures:
    """One side's figures for a day (or a day and model)."""

    usd: float = 0.0
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    unpriced: int = 0  # costspan only: calls with usage but no price

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: Figures) -> None:
        self.usd = round_usd(self.usd + other.usd)
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.cached_tokens += other.cached_tokens
        self.output_tokens += other.output_tokens
        self.unpriced += other.unpriced


@dataclass
class Side:
    """One side's figures for a period: per UTC day, per model within the day."""

    days: dict[date, dict[str, Figures]] = field(default_factory=dict)

    def at(self, day: date, model: str) -> Figures:
        return self.days.setdefault(day, {}).setdefault(model, Figures())

    def total(self, day: date) -> Figures:
        total = Figures()
        for figures in self.days.get(day, {}).values():
            total.add(figures)
        return total


@dataclass
class DayResult:
    day: date
    provider: Figures
    costspan: Figures
    verdict: str
    cause: str | None
    models: dict[str, tuple[Figures, Figures]]  # model -> (provider, costspan)

    @property
    def difference_usd(self) -> float:
        return round_usd(self.costspan.usd - self.provider.usd)


def reconcile(provider: Side, ours: Side, days: Sequence[date], today: date, tolerance: float) -> list[DayResult]:
    """Compare both sides for each day. Pure: all the figures are given."""
    results = []
    for day in days:
        theirs, mine = provider.total(day), ours.total(day)
        models = {
            model: (provider.at(day, model), ours.at(day, model))
            for model in sorted({*provider.days.get(day, {}), *ours.days.get(day, {})})
        }
        verdict, cause = _verdict(theirs, mine, models, tolerance)
        if day >= today:
            verdict, cause = PARTIAL, "the provider reports a day once it is over"
        results.append(DayResult(day, theirs, mine, verdict, cause, models))
    return results


class ProviderBill(Protocol):
    """What a provider billed, read from its own reports."""

    def read(self, since: datetime, until: datetime) -> Side:
        """Dollars, requests and tokens per UTC day and model, for each day of [since, until)."""


def compare(
    reports: ProviderBill,
    store: Store,
    since: datetime,
    until: datetime,
    *,
    today: date,
    tolerance: float = DEFAULT_TOLERANCE,
    env: str | None = None,
    where: Mapping[str, str] | None = None,
) -> list[DayResult]:
    """The provider's reports against the store, for each UTC day of [since, until). Raises ``ReconcileError``."""
    billed = reports.read(since, until)
    ours = recorded(store, since, until, env, where)
    return reconcile(billed, ours, utc_days(since, until), today, tolerance)


def _off(ours: float, theirs: float, tolerance: float, floor: float = 0.0) -> bool:
    return abs(ours - theirs) > max(abs(theirs) * tolerance, floor)


def _verdict(
    theirs: Figures, mine: Figures, models: Mapping[str, tuple[Figures, Figures]], tolerance: float
) -> tuple[str, str | None]:
    if not _off(mine.usd, theirs.usd, tolerance, MIN_TOLERANCE_USD):
        return OK, None
    # A cause is named only if it moves the recorded figure the way the gap goes.
    recorded_low = mine.usd < theirs.usd
    if recorded_low and (theirs.requests > mine.requests or theirs.tokens - mine.tokens > theirs.tokens * tolerance):
        return UNSEEN_CALLS, (
            f"the provider billed {_requests(theirs.requests - mine.requests)} and "
            f"{theirs.tokens - mine.tokens:,} more tokens than costspan recorded: calls from code that is not "
            "instrumented, or spans lost before the store (a collector down, a full export queue)"
        )
    if recorded_low and mine.unpriced:
        return UNPRICED_CALLS, (
            f"{mine.unpriced:,} recorded calls have no price (a model the price data does not know): add them to a "
            "pricing file (`costspan price --help`), then `costspan reprice`"
        )
    if not recorded_low and (
        mine.requests > theirs.requests or mine.tokens - theirs.tokens > theirs.tokens * tolerance
    ):
        return OVER_COUNTED, (
            f"costspan recorded {_requests(mine.requests - theirs.requests)} than were billed: is the store "
            "fed by apps outside the compared project(s) (--project), or by two exporters for the same spans?"
        )
    drifted = [model for model, (p, c) in models.items() if _off(c.usd, p.usd, tolerance, MIN_TOLERANCE_USD / 10)]
    return PRICE_MISMATCH, (
        f"the dollars differ {'below' if recorded_low else 'above'} the bill more than the counts explain "
        f"({', '.join(drifted) or 'no single model'}): compare "
        "`costspan price MODEL` with your invoice, add the billed rate to a pricing file, then `costspan reprice`"
    )


def _requests(count: int) -> str:
    return f"{count:,} more request{'' if count == 1 else 's'}"


def utc_midnight(day: date) -> datetime:
    """The start of a UTC day: the provider's buckets are whole UTC days."""
    return datetime.combine(day, time(), UTC)


def utc_days(since: datetime, until: datetime) -> list[date]:
    """The UTC days that [since, until) touches."""
    first = since.astimezone(UTC).date()
    last = (until.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


# --- costspan's side -------------------------------------------------------------------------------------------

_STORE_DAYS = """
SELECT start_ns // 86400000000000, coalesce(response_model, request_model, '(none)'), count(*),
       coalesce(sum(cost_usd), 0.0), sum(input_tokens), sum(cached_tokens), sum(output_tokens),
       count(*) - count(cost_usd)
FROM spans WHERE {conditions} AND input_tokens IS NOT NULL
GROUP BY 1, 2
"""


def recorded(
    store: Store, since: datetime, until: datetime, env: str | None = None, where: Mapping[str, str] | None = None
) -> Side:
    """What the store holds for the period: calls with usage (the billed ones), retries included."""
    conditions, parameters = filter_sql(env, where)
    sql = _STORE_DAYS.format(conditions=" AND ".join(conditions))
    side = Side()
    epoch = date(1970, 1, 1)
    for day, model, requests, usd, input_tokens, cached, output_tokens, unpriced in store.query(
        sql, [to_ns(since), to_ns(until), *parameters]
    ):
        figures = side.at(epoch + timedelta(days=day), model)
        figures.add(Figures(usd, requests, input_tokens or 0, cached or 0, output_tokens or 0, unpriced))
    return side
