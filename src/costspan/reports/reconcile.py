"""Reconciliation: what costspan recorded against what the provider billed, day by day and model by model.

The provider's side is read from OpenAI's organization Costs API (dollars per day, per line item) and Usage API
(requests and tokens per day and model), which need an admin key. costspan's side is the store. For every UTC
day whose dollars differ by more than the tolerance, ``reconcile`` names the likely cause from the token counts:

- the provider billed requests costspan never saw (code that is not instrumented, spans lost on the way);
- costspan recorded calls it could not price (a model its price data does not know);
- costspan recorded more than was billed (two sources feeding one store, or a project filter too narrow);
- tokens agree but dollars do not: costspan's prices for a model differ from the bill.

The provider reports a day only once it is over, so today is shown as ``partial`` and never fails a run.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from costspan.store.sqlite import Store, filter_sql, round_usd, to_ns

DEFAULT_BASE_URL = "https://api.openai.com/v1"
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


def compare(
    reports: OrganizationReports,
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
SELECT start_ns / 86400000000000, coalesce(response_model, request_model, '(none)'), count(*),
       total(cost_usd), sum(input_tokens), sum(cached_tokens), sum(output_tokens), count(*) - count(cost_usd)
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


# --- the provider's side ---------------------------------------------------------------------------------------


class OrganizationReports:
    """OpenAI's organization Costs and Usage endpoints, read page by page with an admin key (stdlib HTTP, so
    it works whichever ``openai`` and ``httpx`` versions are installed, and is never instrumented)."""

    def __init__(
        self,
        admin_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        project_ids: Sequence[str] = (),
        timeout_s: float = 30.0,
        on_page: Callable[[str, int], None] | None = None,
    ) -> None:
        self.admin_key = admin_key
        self.base_url = base_url.rstrip("/")
        self.project_ids = list(project_ids)
        self.timeout_s = timeout_s
        self.on_page = on_page

    def read(self, since: datetime, until: datetime) -> Side:
        """Costs per line item, and requests and tokens per model, for each UTC day of [since, until)."""
        side = Side()
        for day, result in self._results("organization/costs", since, until, group_by=["line_item"]):
            model, _, _ = (result.get("line_item") or "(unattributed)").partition(", ")
            amount = result.get("amount") or {}
            currency = str(amount.get("currency") or "usd").lower()
            if currency != "usd":
                raise ReconcileError(f"the provider reports costs in {currency}; costspan prices in USD only")
            figures = side.at(day, model)
            figures.usd = round_usd(figures.usd + float(amount.get("value") or 0.0))
        for endpoint in ("completions", "embeddings"):
            for day, result in self._results(f"organization/usage/{endpoint}", since, until, group_by=["model"]):
                figures = side.at(day, str(result.get("model") or "(unattributed)"))
                figures.requests += int(result.get("num_model_requests") or 0)
                figures.input_tokens += int(result.get("input_tokens") or 0)
                figures.cached_tokens += int(result.get("input_cached_tokens") or 0)
                figures.output_tokens += int(result.get("output_tokens") or 0)
        return side

    def _results(
        self, path: str, since: datetime, until: datetime, group_by: list[str]
    ) -> Iterator[tuple[date, dict[str, Any]]]:
        params: dict[str, Any] = {
            "start_time": int(since.timestamp()),
            "end_time": int(until.timestamp()),
            "bucket_width": "1d",
            "limit": 31,
            "group_by": group_by,
        }
        if self.project_ids:
            params["project_ids"] = self.project_ids
        page_number = 0
        while True:
            page_number += 1
            if self.on_page is not None:
                self.on_page(path, page_number)
            page = self._get(path, params)
            try:
                buckets = [
                    (datetime.fromtimestamp(int(bucket["start_time"]), tz=UTC).date(), bucket)
                    for bucket in page.get("data") or []
                ]
            except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as error:
                raise ReconcileError(
                    f"{self.base_url}/{path} answered JSON that is not a {path} page ({error!r}); "
                    "is --base-url the API?"
                ) from None
            for day, bucket in buckets:
                for result in bucket.get("results") or []:
                    yield day, result
            if not page.get("has_more") or not page.get("next_page"):
                return
            if params.get("page") == page["next_page"]:
                raise ReconcileError(f"{self.base_url}/{path} sent the same next page twice; stopped reading")
            params["page"] = page["next_page"]

    def _get(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.admin_key}"})
        except ValueError as error:
            raise ReconcileError(f"--base-url {self.base_url!r} is not a URL ({error})") from None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                page = json.load(response)
        except urllib.error.HTTPError as error:
            raise ReconcileError(_http_advice(error, path)) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ReconcileError(
                f"cannot reach {self.base_url} ({reason}); check the network, or --base-url for a proxy"
            ) from None
        except http.client.HTTPException as error:  # the answer broke off, or was not HTTP
            raise ReconcileError(f"{self.base_url}/{path} broke off its answer ({error!r}); try again") from None
        except ValueError:
            raise ReconcileError(f"{self.base_url}/{path} did not answer JSON; is --base-url the API?") from None
        if not isinstance(page, dict):
            raise ReconcileError(f"{self.base_url}/{path} answered JSON that is not a page; is --base-url the API?")
        return page


def _http_advice(error: urllib.error.HTTPError, path: str) -> str:
    try:
        message = json.loads(error.read()).get("error", {}).get("message") or ""
    except (ValueError, AttributeError):
        message = ""
    said = f" ({message})" if message else ""
    if error.code in (401, 403):
        return (
            f"the provider refused the admin key: HTTP {error.code}{said}. The Costs and Usage APIs need an "
            "organization admin key (sk-admin-..., made by an owner under Organization settings > Admin keys), "
            "in OPENAI_ADMIN_KEY"
        )
    return f"{path} answered HTTP {error.code}{said}"
