"""Reconciliation: what costspan recorded against what the provider billed, day by day and model by model.

The provider's side is a ``ProviderBill``: for OpenAI, ``costspan.providers.openai.reconcile.OrganizationReports``
reads the organization Costs and Usage APIs with an admin key; for Anthropic,
``costspan.providers.anthropic.reconcile.AdminReports`` reads the Admin API's cost and usage reports. costspan's
side is the store, that provider's calls only. For every UTC
day whose dollars differ by more than the tolerance, ``reconcile`` names the likely cause from the token counts:

- the provider billed requests costspan never saw (code that is not instrumented, spans lost on the way);
- costspan recorded calls it could not price (a model its price data does not know);
- costspan recorded more than was billed (two sources feeding one store, or a project filter too narrow);
- tokens agree but dollars do not: costspan's prices for a model differ from the bill.

A provider's reports may leave a part of the bill out (Anthropic's cost report has no priority-tier dollars, its
usage report no code execution). The bill marks those parts as gaps, per day and model, and costspan's calls in a
tier the bill omits are set aside under their own key: the rest of the day is compared, and the gap is stated as
``provider gap``, never reported as a difference costspan could act on.

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
PROVIDER_GAP = "provider gap"  # the rest agrees; a part the provider's reports leave out cannot be checked
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
    """One side's figures for a period: per UTC day, per model within the day. ``gaps`` names, per day and model,
    what one of the provider's reports leaves out, so that model's figures cannot be compared that day."""

    days: dict[date, dict[str, Figures]] = field(default_factory=dict)
    gaps: dict[date, dict[str, str]] = field(default_factory=dict)
    counts_requests: bool = True  # False when the provider's usage report has no request counts

    def at(self, day: date, model: str) -> Figures:
        return self.days.setdefault(day, {}).setdefault(model, Figures())

    def gap(self, day: date, model: str, reason: str) -> None:
        self.gaps.setdefault(day, {})[model] = reason

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
    provider_counts_requests: bool = True

    @property
    def difference_usd(self) -> float:
        return round_usd(self.costspan.usd - self.provider.usd)


def reconcile(provider: Side, ours: Side, days: Sequence[date], today: date, tolerance: float) -> list[DayResult]:
    """Compare both sides for each day. Pure: all the figures are given."""
    results = []
    for day in days:
        models = {
            model: (provider.at(day, model), ours.at(day, model))
            for model in sorted({*provider.days.get(day, {}), *ours.days.get(day, {})})
        }
        gaps = {**ours.gaps.get(day, {}), **provider.gaps.get(day, {})}
        comparable = {model: pair for model, pair in models.items() if model not in gaps}
        theirs, mine = Figures(), Figures()
        for their_figures, my_figures in comparable.values():
            theirs.add(their_figures)
            mine.add(my_figures)
        if not provider.counts_requests:  # nothing to compare: the counts agree by construction
            theirs.requests = mine.requests
        verdict, cause = _verdict(theirs, mine, comparable, tolerance)
        if gaps:
            stated = "; ".join(_gap_statement(model, reason, *models[model]) for model, reason in sorted(gaps.items()))
            if verdict == OK:
                verdict, cause = PROVIDER_GAP, f"{stated}. Everything else agrees within the tolerance"
            else:
                cause = f"{cause}. Set aside, not compared: {stated}"
        if day >= today:
            verdict, cause = PARTIAL, "the provider reports a day once it is over"
        results.append(
            DayResult(day, provider.total(day), ours.total(day), verdict, cause, models, provider.counts_requests)
        )
    return results


def _gap_statement(model: str, reason: str, theirs: Figures, mine: Figures) -> str:
    calls = f"{mine.requests:,} call{'' if mine.requests == 1 else 's'}"
    return f"{model}: {reason} (billed ${theirs.usd:,.4f}, recorded ${mine.usd:,.4f} for {calls})"


class ProviderBill(Protocol):
    """What a provider billed, read from its own reports."""

    name: str  # as the output names the provider
    span_providers: tuple[str, ...]  # the store's ``provider`` values of the calls this bill covers
    # Service tiers whose dollars the bill leaves out, and why: costspan's calls in them are set aside.
    unbilled_tiers: Mapping[str, str]

    def read(self, since: datetime, until: datetime) -> Side:
        """Dollars, requests and tokens per UTC day and model, for each day of [since, until)."""


def set_aside_key(model: str, tier: str) -> str:
    """The key under which both sides hold a model's calls in a tier the bill leaves out."""
    return f"{model} ({tier} tier)"


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
    ours = recorded(store, since, until, env, where, reports.span_providers, reports.unbilled_tiers)
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
            f"the provider billed {_more(theirs.requests - mine.requests, theirs.tokens - mine.tokens)} than "
            "costspan recorded: calls from code that is not instrumented, or spans lost before the store (a "
            "collector down, a full export queue)"
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
            f"costspan recorded {_more(mine.requests - theirs.requests, mine.tokens - theirs.tokens)} than were "
            "billed: is the store fed by apps outside the compared project(s) or workspace(s) (--project, "
            "--workspace), or by two exporters for the same spans?"
        )
    drifted = [model for model, (p, c) in models.items() if _off(c.usd, p.usd, tolerance, MIN_TOLERANCE_USD / 10)]
    return PRICE_MISMATCH, (
        f"the dollars differ {'below' if recorded_low else 'above'} the bill more than the counts explain "
        f"({', '.join(drifted) or 'no single model'}): compare "
        "`costspan price MODEL` with your invoice, add the billed rate to a pricing file, then `costspan reprice`"
    )


def _more(requests: int, tokens: int) -> str:
    said = [f"{requests:,} more request{'' if requests == 1 else 's'}"] if requests > 0 else []
    if tokens > 0:
        said.append(f"{tokens:,} more tokens")
    return " and ".join(said) or "more"


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
SELECT start_ns // 86400000000000, coalesce(response_model, request_model, '(none)'), service_tier, count(*),
       coalesce(sum(cost_usd), 0), sum(input_tokens), sum(cached_tokens), sum(output_tokens),
       count(*) - count(cost_usd)
FROM spans WHERE {conditions} AND input_tokens IS NOT NULL
GROUP BY 1, 2, 3
"""


def recorded(
    store: Store,
    since: datetime,
    until: datetime,
    env: str | None = None,
    where: Mapping[str, str] | None = None,
    providers: Sequence[str] = (),
    unbilled_tiers: Mapping[str, str] | None = None,
) -> Side:
    """What the store holds for the period: calls with usage (the billed ones), retries included; only the given
    providers' calls when some are named. Calls in an ``unbilled_tiers`` tier are set aside under their own key."""
    conditions, parameters = filter_sql(env, where)
    if providers:
        conditions.append(f"provider IN ({', '.join('?' * len(providers))})")
        parameters.extend(providers)
    sql = _STORE_DAYS.format(conditions=" AND ".join(conditions))
    unbilled = unbilled_tiers or {}
    side = Side()
    epoch = date(1970, 1, 1)
    for day_number, model, tier, requests, usd, input_tokens, cached, output_tokens, unpriced in store.query(
        sql, [to_ns(since), to_ns(until), *parameters]
    ):
        day = epoch + timedelta(days=day_number)
        if tier in unbilled:
            model = set_aside_key(model, tier)
            side.gap(day, model, unbilled[tier])
        figures = side.at(day, model)
        figures.add(Figures(usd, requests, input_tokens or 0, cached or 0, output_tokens or 0, unpriced))
    return side
