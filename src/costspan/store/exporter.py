"""A span exporter that writes costspan's LLM spans into the embedded store.

Registered as the ``costspan`` traces exporter, so ``opentelemetry-instrument --traces_exporter
costspan,otlp_proto_http python app.py`` writes locally and to a collector at once. It keeps only LLM spans
(those carrying ``gen_ai.operation.name``) and never raises into the application: a batch that cannot be
written (damaged or locked file, full disk) is counted in ``failed_spans`` and logged at most once a minute.

The OpenTelemetry configurator creates it with no arguments, so it takes the attribution keys in force from
``OTEL_COSTSPAN_ATTRIBUTION_KEYS`` (``costspan.config.attribution_keys_in_force``): keys given only to
``instrument(attribution_keys=...)`` must be set there too, or passed as ``attribution_keys``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from costspan import semconv
from costspan.config import attribution_keys_in_force
from costspan.store.paths import default_store_path
from costspan.store.sqlite import ATTRIBUTION_COLUMNS, CostRow, Store, attribution_json

logger = logging.getLogger(__name__)

SERVICE_NAME = "service.name"  # resource attribute


def _text(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    return str(value) if value is not None and value != "" else None


def _int(attributes: Mapping[str, Any], name: str) -> int | None:
    value = attributes.get(name)  # a Python int may exceed what a store column (and OTLP) holds: not a count
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


def _float(attributes: Mapping[str, Any], name: str) -> float | None:
    value = attributes.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# Every span attribute ``row_columns`` reads besides the attribution keys, so a receiver can skip the rest.
ROW_ATTRIBUTES = frozenset(
    {
        semconv.GEN_AI_OPERATION_NAME,
        *ATTRIBUTION_COLUMNS,
        semconv.GEN_AI_PROVIDER_NAME,
        semconv.GEN_AI_REQUEST_MODEL,
        semconv.GEN_AI_RESPONSE_MODEL,
        semconv.GEN_AI_USAGE_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
        semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
        semconv.COSTSPAN_USAGE_INPUT_AUDIO_TOKENS,
        semconv.COSTSPAN_USAGE_OUTPUT_AUDIO_TOKENS,
        semconv.COSTSPAN_USAGE_INPUT_IMAGE_TOKENS,
        semconv.COSTSPAN_USAGE_OUTPUT_IMAGE_TOKENS,
        semconv.GEN_AI_USAGE_COST_AMOUNT,
        semconv.COSTSPAN_COST_INPUT,
        semconv.COSTSPAN_COST_CACHE_READ,
        semconv.COSTSPAN_COST_CACHE_WRITE,
        semconv.COSTSPAN_COST_OUTPUT,
        semconv.COSTSPAN_PRICING_STATUS,
        semconv.COSTSPAN_PRICING_SOURCE,
        semconv.COSTSPAN_PRICING_VERSION,
        semconv.COSTSPAN_PRICING_MODEL,
        semconv.ERROR_TYPE,
        semconv.COSTSPAN_REQUEST_ID,
        semconv.COSTSPAN_PROMPT_CACHE_KEY,
        *semconv.SERVICE_TIER_ATTRIBUTES,
        semconv.COSTSPAN_BATCH_ID,
    }
)


def row_from_span(span: ReadableSpan, attribution_keys: Sequence[str] = ()) -> CostRow | None:
    """The store row for one span; None for spans that are not LLM calls (or have no ids or start time).
    ``attribution_keys`` beyond the typed columns go to the row's ``attribution`` JSON."""
    context = span.context
    if context is None or span.start_time is None:
        return None
    columns = row_columns(
        span.attributes or {},
        span_id=f"{context.span_id:016x}",
        trace_id=f"{context.trace_id:032x}",
        parent_span_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
        start_ns=span.start_time,
        end_ns=span.end_time,
        resource=span.resource.attributes if span.resource is not None else {},
        attribution_keys=attribution_keys,
    )
    return CostRow(**columns) if columns is not None else None


def row_columns(
    attributes: Mapping[str, Any],
    *,
    span_id: str,
    trace_id: str,
    parent_span_id: str | None,
    start_ns: int,
    end_ns: int | None,
    resource: Mapping[str, Any],
    attribution_keys: Sequence[str],
) -> dict[str, Any] | None:
    """A ``CostRow``'s fields for one span, by name; None unless the span is an LLM call. A dict rather than the
    row, so ``costspan serve`` can price it and build the row once (``dataclasses.replace`` costs ~20 µs a row).
    Reads only ``ROW_ATTRIBUTES`` and ``attribution_keys`` of the span, and ``SERVICE_NAME`` of its resource."""
    operation = _text(attributes, semconv.GEN_AI_OPERATION_NAME)
    if operation is None:
        return None
    has_usage = semconv.GEN_AI_USAGE_INPUT_TOKENS in attributes

    def tokens(name: str) -> int | None:
        # Breakdown counts are zero, not unknown, whenever the call reported usage at all.
        return (_int(attributes, name) or 0) if has_usage else None

    carried = {}
    for key in attribution_keys:
        value = _text(attributes, key)
        if value is not None:
            carried[key] = value

    return {
        "span_id": span_id,
        "trace_id": trace_id,
        "parent_span_id": parent_span_id,
        "start_ns": start_ns,
        "feature": _text(attributes, "feature"),
        "route": _text(attributes, "route"),
        "customer_id": _text(attributes, "customer_id"),
        "environment": _text(attributes, "environment"),
        "service": _text(resource, SERVICE_NAME),
        "provider": _text(attributes, semconv.GEN_AI_PROVIDER_NAME),
        "operation": operation,
        "request_model": _text(attributes, semconv.GEN_AI_REQUEST_MODEL),
        "response_model": _text(attributes, semconv.GEN_AI_RESPONSE_MODEL),
        "input_tokens": _int(attributes, semconv.GEN_AI_USAGE_INPUT_TOKENS),
        "cached_tokens": tokens(semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        "cache_write_tokens": tokens(semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        "output_tokens": _int(attributes, semconv.GEN_AI_USAGE_OUTPUT_TOKENS),
        "reasoning_tokens": tokens(semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
        "input_audio_tokens": tokens(semconv.COSTSPAN_USAGE_INPUT_AUDIO_TOKENS),
        "output_audio_tokens": tokens(semconv.COSTSPAN_USAGE_OUTPUT_AUDIO_TOKENS),
        "input_image_tokens": tokens(semconv.COSTSPAN_USAGE_INPUT_IMAGE_TOKENS),
        "output_image_tokens": tokens(semconv.COSTSPAN_USAGE_OUTPUT_IMAGE_TOKENS),
        "latency_ms": (end_ns - start_ns) / 1e6 if end_ns is not None else None,
        "cost_usd": _float(attributes, semconv.GEN_AI_USAGE_COST_AMOUNT),
        "cost_input": _float(attributes, semconv.COSTSPAN_COST_INPUT),
        "cost_cache_read": _float(attributes, semconv.COSTSPAN_COST_CACHE_READ),
        "cost_cache_write": _float(attributes, semconv.COSTSPAN_COST_CACHE_WRITE),
        "cost_output": _float(attributes, semconv.COSTSPAN_COST_OUTPUT),
        "pricing_status": _text(attributes, semconv.COSTSPAN_PRICING_STATUS),
        "pricing_source": _text(attributes, semconv.COSTSPAN_PRICING_SOURCE),
        "pricing_version": _text(attributes, semconv.COSTSPAN_PRICING_VERSION),
        "pricing_model": _text(attributes, semconv.COSTSPAN_PRICING_MODEL),
        "error_type": _text(attributes, semconv.ERROR_TYPE),
        "request_id": _text(attributes, semconv.COSTSPAN_REQUEST_ID),
        "prompt_cache_key": _text(attributes, semconv.COSTSPAN_PROMPT_CACHE_KEY),
        "service_tier": next(filter(None, (_text(attributes, name) for name in semconv.SERVICE_TIER_ATTRIBUTES)), None),
        "batch_id": _text(attributes, semconv.COSTSPAN_BATCH_ID),
        "attribution": attribution_json(carried),
    }


class CostspanSpanExporter(SpanExporter):
    """Writes LLM spans to the costspan store at ``path`` (default: ``costspan.store.paths.default_store_path()``).

    The file is opened on first export, so a bad file never stops the application from starting.
    ``failed_spans`` counts the LLM spans that could not be stored; ``stored_spans`` those newly stored.
    """

    LOG_INTERVAL_S = 60.0

    def __init__(
        self, path: str | Path | None = None, *, timeout_s: float = 5.0, attribution_keys: Sequence[str] | None = None
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.attribution_keys = attribution_keys_in_force(keyword=attribution_keys)
        self.timeout_s = timeout_s
        self.failed_spans = 0
        self.stored_spans = 0
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._last_log = -self.LOG_INTERVAL_S
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = []
        for span in spans:  # one span that cannot be read must not take its batch with it
            try:
                row = row_from_span(span, self.attribution_keys)
            except Exception as error:
                with self._lock:
                    self._failed(1, error)
                continue
            if row is not None:
                rows.append(row)
        return self.write_rows(rows)

    def write_rows(self, rows: Sequence[CostRow]) -> SpanExportResult:
        """Store rows already mapped (and, by ``costspan serve``, re-priced) in one transaction."""
        with self._lock:
            if self._shutdown:
                return SpanExportResult.FAILURE
            if not rows:
                return SpanExportResult.SUCCESS
            try:
                if self._store is None:
                    self._store = Store(self.path, timeout_s=self.timeout_s)
                self.stored_spans += self._store.insert(rows)
            except Exception as error:
                self._close_store()  # reopen next time: the file may have been moved aside or repaired
                return self._failed(len(rows), error)
        return SpanExportResult.SUCCESS

    def _failed(self, count: int, error: Exception) -> SpanExportResult:
        self.failed_spans += count  # under self._lock
        now = time.monotonic()
        if now - self._last_log >= self.LOG_INTERVAL_S:
            self._last_log = now
            logger.error(
                "costspan: %d LLM span(s) not stored (%d so far); the application is not affected: %s",
                count,
                self.failed_spans,
                error,
            )
        return SpanExportResult.FAILURE

    def _close_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                logger.debug("costspan: closing the store failed", exc_info=True)
            self._store = None

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            self._close_store()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is written before it returns
