"""OpenAI's bill for ``costspan reconcile``: the organization Costs and Usage APIs, read with an admin key.

Stdlib HTTP, so it works whichever ``openai`` and ``httpx`` versions are installed, and is never instrumented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from costspan.providers.admin_http import get_page
from costspan.reports.reconcile import ReconcileError, Side
from costspan.store.sqlite import round_usd

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OrganizationReports:
    """OpenAI's organization Costs and Usage endpoints, read page by page with an admin key (stdlib HTTP, so
    it works whichever ``openai`` and ``httpx`` versions are installed, and is never instrumented)."""

    name = "OpenAI"
    span_providers: tuple[str, ...] = ("openai",)  # Azure OpenAI calls are on the Azure bill, not in these reports
    unbilled_tiers: Mapping[str, str] = {}

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
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        return get_page(self.base_url, path, params, headers, timeout_s=self.timeout_s, refused=_refused)


def _refused(status: int, said: str) -> str:
    return (
        f"the provider refused the admin key: HTTP {status}{said}. The Costs and Usage APIs need an "
        "organization admin key (sk-admin-..., made by an owner under Organization settings > Admin keys), "
        "in OPENAI_ADMIN_KEY"
    )
