"""What one stored span holds: the row a span becomes (``CostRow``) and every stored column with its DuckDB type.

The bottom of the store: the landing table (``sqlite``), the segments (``segments``) and the reader all take their
columns from here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class CostRow:
    """One priced (or unpriceable) LLM call, as stored. Field order is the table's column order."""

    span_id: str  # 16 hex digits
    trace_id: str  # 32 hex digits
    parent_span_id: str | None
    start_ns: int  # span start, Unix nanoseconds (UTC)
    feature: str | None = None
    route: str | None = None
    customer_id: str | None = None
    environment: str | None = None
    service: str | None = None
    provider: str | None = None
    operation: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    input_tokens: int | None = None  # None: the call reported no usage
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    output_image_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None  # None unless pricing_status is "priced"
    cost_input: float | None = None
    cost_cache_read: float | None = None
    cost_cache_write: float | None = None
    cost_output: float | None = None
    pricing_status: str | None = None
    pricing_source: str | None = None
    pricing_version: str | None = None
    pricing_model: str | None = None
    error_type: str | None = None
    request_id: str | None = None  # the provider's x-request-id
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    batch_id: str | None = None
    attribution: str | None = None  # the other attribution keys, as attribution_json() writes them
    # What a client sending the span over OTLP said it cost: kept to compare with cost_usd, which ``costspan serve``
    # computes itself; never summed as spend. None for spans priced in-process.
    claimed_cost_usd: float | None = None
    cache_write_1h_tokens: int | None = None  # the part of cache_write_tokens written for an hour (Anthropic)
    web_search_requests: int | None = None  # server-side searches, billed per search

    def __getitem__(self, column: str) -> Any:
        """A column by name, as a ``sqlite3.Row`` gives it: so a row about to be stored can be priced by
        ``costspan.pricing.pricer.billable_from_row`` exactly as a stored one is."""
        return getattr(self, column)


ROW_COLUMNS: Final = tuple(f.name for f in fields(CostRow))
row_values = operator.attrgetter(*ROW_COLUMNS)  # a CostRow as the tuple of its columns

# Every column a stored span has: what a span gives, then what the store and `costspan reprice` add. The DuckDB
# type of each, for segments and the landed rows read beside them.
STORED_COLUMNS: Final = (*ROW_COLUMNS, "is_retry", "original_cost_usd", "original_pricing_version", "repriced_at_ns")
_DUCKDB_TYPES: Final = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE"}
STORED_TYPES: Final = {
    **{f.name: _DUCKDB_TYPES[str(f.type).split(" ")[0]] for f in fields(CostRow)},
    "is_retry": "BIGINT",
    "original_cost_usd": "DOUBLE",
    "original_pricing_version": "VARCHAR",
    "repriced_at_ns": "BIGINT",
}
