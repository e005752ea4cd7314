"""Anthropic's bill for ``costspan reconcile``: the Admin API's usage report and cost report, read with an Admin
API key (``GET /v1/organizations/usage_report/messages`` and ``GET /v1/organizations/cost_report``).

Three things the reports do not hold, as Anthropic documents them (docs/reconcile.md cites the pages):

- the cost report has no priority-tier dollars: costspan's priority-tier calls are set aside, never compared;
- the usage report has no code execution: its dollars in the cost report are a gap, not unseen calls;
- the usage report counts tokens, not requests: only tokens and dollars are compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from costspan.providers.admin_http import get_page
from costspan.reports.reconcile import ReconcileError, Side, set_aside_key
from costspan.store.sqlite import round_usd

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
USAGE_REPORT = "v1/organizations/usage_report/messages"
COST_REPORT = "v1/organizations/cost_report"
PRIORITY_GAP = "priority tier, not in the cost report"
PRIORITY_TIERS = {"priority": PRIORITY_GAP, "priority_on_demand": PRIORITY_GAP}
CODE_EXECUTION = "(code execution)"
CODE_EXECUTION_GAP = "code execution, in the cost report but not the usage report, nor recorded by costspan"


class AdminReports:
    """Anthropic's usage and cost reports, read page by page with an Admin API key (sk-ant-admin...)."""

    name = "Anthropic"
    span_providers: tuple[str, ...] = ("anthropic",)  # Claude on Bedrock, Vertex AI and Foundry is on that cloud's bill
    unbilled_tiers: Mapping[str, str] = PRIORITY_TIERS

    def __init__(
        self,
        admin_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        workspace_ids: Sequence[str] = (),
        timeout_s: float = 30.0,
        on_page: Callable[[str, int], None] | None = None,
    ) -> None:
        self.admin_key = admin_key
        self.base_url = base_url.rstrip("/")
        self.workspace_ids = list(workspace_ids)
        self.timeout_s = timeout_s
        self.on_page = on_page

    def read(self, since: datetime, until: datetime) -> Side:
        """Dollars per model (cost report) and tokens per model and tier (usage report), each UTC day of
        [since, until)."""
        side = Side(counts_requests=False)
        for day, result in self._results(COST_REPORT, since, until, ["workspace_id", "description"]):
            if self.workspace_ids and result.get("workspace_id") not in self.workspace_ids:
                continue  # the cost report has no workspace filter: only a grouping
            currency = str(result.get("currency") or "USD").lower()
            if currency != "usd":
                raise ReconcileError(f"the provider reports costs in {currency}; costspan prices in USD only")
            figures = side.at(day, _cost_key(result))
            figures.usd = round_usd(figures.usd + float(_cents(result.get("amount")) / 100))
            if result.get("cost_type") == "code_execution":
                side.gap(day, CODE_EXECUTION, CODE_EXECUTION_GAP)
        filters = {"workspace_ids[]": self.workspace_ids} if self.workspace_ids else {}
        for day, result in self._results(USAGE_REPORT, since, until, ["model", "service_tier"], filters):
            model, tier = str(result.get("model") or "(unattributed)"), result.get("service_tier")
            if tier in PRIORITY_TIERS:
                model = set_aside_key(model, tier)
                side.gap(day, model, PRIORITY_TIERS[tier])
            cache = result.get("cache_creation") or {}
            cache_read = _count(result.get("cache_read_input_tokens"))
            figures = side.at(day, model)
            # costspan's input tokens are the whole prompt: uncached, cache reads and cache writes.
            figures.input_tokens += (
                _count(result.get("uncached_input_tokens"))
                + cache_read
                + _count(cache.get("ephemeral_5m_input_tokens"))
                + _count(cache.get("ephemeral_1h_input_tokens"))
            )
            figures.cached_tokens += cache_read
            figures.output_tokens += _count(result.get("output_tokens"))
        return side

    def _results(
        self,
        path: str,
        since: datetime,
        until: datetime,
        group_by: list[str],
        filters: Mapping[str, list[str]] | None = None,
    ) -> Iterator[tuple[date, dict[str, Any]]]:
        params: dict[str, Any] = {
            "starting_at": _rfc3339(since),
            "ending_at": _rfc3339(until),
            "bucket_width": "1d",
            "limit": 31,  # the most daily buckets a page holds
            "group_by[]": group_by,
            **(filters or {}),
        }
        headers = {"x-api-key": self.admin_key, "anthropic-version": API_VERSION}
        page_number = 0
        while True:
            page_number += 1
            if self.on_page is not None:
                self.on_page(path, page_number)
            page = get_page(self.base_url, path, params, headers, timeout_s=self.timeout_s, refused=_refused)
            try:
                buckets = [
                    (datetime.fromisoformat(bucket["starting_at"]).astimezone(UTC).date(), bucket)
                    for bucket in page.get("data") or []
                ]
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                raise ReconcileError(
                    f"{self.base_url}/{path} answered JSON that is not a report page ({error!r}); "
                    "is --base-url the API?"
                ) from None
            for day, bucket in buckets:
                yield from ((day, result) for result in bucket.get("results") or [] if isinstance(result, dict))
            if not page.get("has_more") or not page.get("next_page"):
                return
            if params.get("page") == page["next_page"]:
                raise ReconcileError(f"{self.base_url}/{path} sent the same next page twice; stopped reading")
            params["page"] = page["next_page"]


def _cost_key(result: Mapping[str, Any]) -> str:
    """Token costs under their model; code execution, web search and the like (no model) under their type."""
    if result.get("model"):
        return str(result["model"])
    if result.get("cost_type") == "code_execution":
        return CODE_EXECUTION
    return f"({result.get('cost_type') or result.get('description') or 'unattributed'})"


def _cents(amount: Any) -> Decimal:
    """The cost report's amount: a decimal string in cents, fractions kept ("123.45" is $1.2345)."""
    try:
        return Decimal(str(amount or "0"))
    except InvalidOperation:
        raise ReconcileError(f"the cost report sent {amount!r} as an amount, not a number of cents") from None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refused(status: int, said: str) -> str:
    return (
        f"the provider refused the admin key: HTTP {status}{said}. The usage and cost reports need an Admin API "
        "key (sk-ant-admin..., made by an organization admin in the Claude Console under Settings > Admin keys), "
        "in ANTHROPIC_ADMIN_KEY"
    )
