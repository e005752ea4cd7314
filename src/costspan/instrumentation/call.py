"""One instrumented call, whatever the provider: its span, from request to priced response.

The provider-neutral core. A provider's patch layer (``costspan.providers.<name>``) reads what its SDK is about
to send into a ``RequestInfo``, starts a ``Call`` with ``Telemetry.start``, and ends it with the response's
normalized ``ResponseSummary``; this module makes the span, applies attribution and guards, prices the call
through ``Pricer.bill`` and records the metrics. Nothing here knows a provider's wire format.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass, replace
from typing import Any, Protocol

from opentelemetry.context import Context, attach
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    set_span_in_context,
    use_span,
)

from costspan import semconv
from costspan.attribution.baggage import Attributor, CostspanRefusal, MissingAttributionError
from costspan.config import Settings
from costspan.instrumentation.metrics import CallMetrics
from costspan.pricing.pricer import STANDARD_TIERS, BillableCall, Cost, Pricer, provider_price_id
from costspan.usage import ResponseSummary, Usage

logger = logging.getLogger("costspan")


class RequestLimits(Protocol):
    """What a provider knows about the most one of its requests can bill: budgets reserve it before the call."""

    def estimate_input_tokens(self, request: RequestInfo) -> int: ...

    def worst_case_usage(self, request: RequestInfo, input_tokens: int, default_output_ceiling: int) -> Usage: ...


@dataclass(slots=True)
class RequestInfo:
    """What the request says, read by its provider from the SDK's request options before anything is sent."""

    endpoint: str
    operation: str  # gen_ai.operation.name
    provider: str  # gen_ai.provider.name
    model: str | None
    stream: bool
    service_tier: str | None
    max_output_tokens: int | None
    server_address: str | None
    server_port: int | None
    body: Mapping[str, Any]
    limits: RequestLimits
    attributes: dict[str, Any]  # the provider's own request attributes (openai.api.type, ...)
    tier_attribute: str | None  # where the response's service tier is recorded (openai.response.service_tier)
    input_content: str | None = None  # gen_ai.input.messages, only when content capture is on


class CallGuard(Protocol):
    """Runs before a request is sent (e.g. a budget check).

    ``admit`` may raise a ``CostspanRefusal`` to refuse the call; it returns a callback that is given the
    final ``Cost`` (``None`` when the call failed) so that reservations settle. ``charge`` is given the cost of
    work billed without a call to admit first (a finished Batch job, attributed from its metadata), once per
    ``charge_id`` in this process; a guard without it does not see such costs. A guard whose ``blocking``
    attribute is true waits on I/O: for ``AsyncOpenAI`` calls, costspan runs its ``admit``, settlement and charge
    in a worker thread, never on the event loop.
    """

    def admit(self, request: RequestInfo, attribution: Mapping[str, str]) -> Callable[[Cost | None], None] | None: ...

    def charge(self, attribution: Mapping[str, str], charge_id: str, cost: Cost | None) -> None: ...


class BatchOrigins(Protocol):
    """Who created each batch, kept from its creation until its results are read, for providers whose batches
    carry no metadata of their own (Anthropic's Message Batches). Either method may raise: costspan logs it, and
    the results are recorded without attribution."""

    def remember(self, batch_id: str, attribution: Mapping[str, str]) -> None: ...

    def recall(self, batch_id: str) -> Mapping[str, str] | None: ...


class MemoryBatchOrigins:
    """The batches created in this process (the latest 10,000): their results are attributed only when read here."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._origins: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, batch_id: str, attribution: Mapping[str, str]) -> None:
        with self._lock:
            self._origins[batch_id] = dict(attribution)
            if len(self._origins) > self.LIMIT:
                self._origins.popitem(last=False)

    def recall(self, batch_id: str) -> Mapping[str, str] | None:
        with self._lock:
            return self._origins.get(batch_id)


class Telemetry:
    """Everything one ``instrument()`` call configured: tracer, metrics, prices, attribution, guards."""

    def __init__(
        self,
        tracer: Tracer,
        metrics: CallMetrics | None,
        pricer: Pricer,
        attributor: Attributor,
        settings: Settings,
        guards: tuple[CallGuard, ...] = (),
        batch_origins: BatchOrigins | None = None,
    ) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.pricer = pricer
        self.attributor = attributor
        self.settings = settings
        self.guards = guards
        self.blocking_guards = any(getattr(guard, "blocking", False) for guard in guards)
        self._batches_seen: OrderedDict[str | None, None] = OrderedDict()
        self._batches_lock = threading.Lock()
        self.batch_origins = batch_origins if batch_origins is not None else MemoryBatchOrigins()

    def start(self, request: RequestInfo) -> Call:
        """Begin the call: its span, attribution and guards. Raises ``CostspanRefusal`` to refuse the call."""
        attribution, missing = self.attributor.collect()
        call = self._open(request, time.time_ns(), attribution, missing)
        try:
            if missing and self.attributor.refuses_missing:
                raise MissingAttributionError(missing)
            if self.guards:
                # The span is current while guards run, so that they can add events (budget refusals, large
                # prompts) to it.
                with use_span(call.span, record_exception=False, set_status_on_exception=False):
                    for guard in self.guards:
                        settle = _admit(guard, request, attribution)
                        if settle is not None:
                            call.settlements.append(settle)
        except CostspanRefusal as refusal:
            call.refuse(refusal)
            raise
        return call

    def _open(
        self,
        request: RequestInfo,
        start_ns: int,
        attribution: dict[str, str],
        missing: list[str],
        parent: Context | None = None,
    ) -> Call:
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: request.operation,
            semconv.GEN_AI_PROVIDER_NAME: request.provider,
            semconv.GEN_AI_REQUEST_STREAM: request.stream,
        }
        if request.model:
            attributes[semconv.GEN_AI_REQUEST_MODEL] = request.model
        if request.attributes:
            attributes.update(request.attributes)
        if request.max_output_tokens is not None:
            attributes[semconv.GEN_AI_REQUEST_MAX_TOKENS] = request.max_output_tokens
        if request.server_address:
            attributes[semconv.SERVER_ADDRESS] = request.server_address
            attributes[semconv.SERVER_PORT] = request.server_port
        attributes.update(attribution)
        if missing:
            attributes[semconv.COSTSPAN_ATTRIBUTION_MISSING] = missing
        if request.input_content is not None:
            attributes[semconv.GEN_AI_INPUT_MESSAGES] = request.input_content
        name = f"{request.operation} {request.model}" if request.model else request.operation
        # Started now, with what the request says, so that samplers see operation, provider, model and server at
        # creation (as the GenAI conventions ask) and the HTTP request can be sent with this span current.
        span = self.tracer.start_span(name, parent, SpanKind.CLIENT, attributes, start_time=start_ns)
        return Call(self, request, start_ns, attribution, span)

    def record_batch_job(
        self,
        request: RequestInfo,
        summary: ResponseSummary,
        request_id: str | None,
        *,
        metadata: Mapping[str, Any],
        created_ns: int | None,
        completed_ns: int | None,
    ) -> None:
        """A finished Batch job's cost, once per job per process: a span of its own from creation to completion,
        attributed from the metadata costspan set at creation (it may have run in another process) and priced at
        batch rates as of its creation.

        Where a provider bills a batch result by result, each result is recorded on its own: ``summary.batch_id``
        then names the result (``<batch id>/<custom id>``), the unit counted once, with a trace of its own."""
        batch_id = summary.batch_id
        with self._batches_lock:
            if batch_id in self._batches_seen:
                return
            self._batches_seen[batch_id] = None
            if len(self._batches_seen) > 10_000:
                self._batches_seen.popitem(last=False)
        attribution = {key: str(metadata[key]) for key in self.attributor.keys if key in metadata}
        job = replace(request, model=summary.model)
        parent = set_span_in_context(NonRecordingSpan(batch_job_context(str(batch_id))))
        call = self._open(job, created_ns or time.time_ns(), attribution, [], parent)
        for guard in self.guards:
            # The job's cost reaches the budgets of whoever created it, as a call's settlement would.
            charge = getattr(guard, "charge", None)  # a guard written before charge existed has none
            if charge is not None:
                call.settlements.append(functools.partial(charge, attribution, f"batch {batch_id}"))
        call.finish(summary, request_id, end_ns=completed_ns)

    def remember_batch(self, batch_id: str, attribution: Mapping[str, str]) -> None:
        """Keep a new batch's attribution (the creating call's) for its results, which carry none."""
        try:
            self.batch_origins.remember(batch_id, attribution)
        except Exception:
            logger.exception(
                "costspan: could not keep who created batch %s; its results will be unattributed", batch_id
            )

    def batch_attribution(self, batch_id: str) -> Mapping[str, str]:
        """The attribution ``remember_batch`` kept for a batch; empty when it was created elsewhere unseen."""
        try:
            return self.batch_origins.recall(batch_id) or {}
        except Exception:
            logger.exception("costspan: could not look up who created batch %s; its results are unattributed", batch_id)
            return {}


def batch_job_context(batch_id: str) -> SpanContext:
    """A remote parent whose trace id follows from the batch id alone.

    Every process that records the same finished job puts its span in this one trace, so a warehouse keyed (and
    sharded) by trace id meets all the copies in one place and keeps one; it is also where to look for a job.
    """
    digest = hashlib.sha256(f"costspan batch {batch_id}".encode()).digest()
    return SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def _admit(
    guard: CallGuard, request: RequestInfo, attribution: Mapping[str, str]
) -> Callable[[Cost | None], None] | None:
    try:
        return guard.admit(request, attribution)
    except CostspanRefusal:
        raise
    except Exception:
        logger.exception("costspan: call guard %r failed; the call goes on", guard)
        return None


class Call:
    """One SDK call and its span, ended exactly once by ``finish``, ``fail`` or ``refuse``.

    The span starts before the request is sent, with the request's attributes; the response's are added in one
    write when the call ends.
    """

    __slots__ = ("attribution", "finished", "request", "settlements", "span", "start_ns", "telemetry")

    def __init__(
        self, telemetry: Telemetry, request: RequestInfo, start_ns: int, attribution: dict[str, str], span: Span
    ) -> None:
        self.telemetry = telemetry
        self.request = request
        self.start_ns = start_ns
        self.attribution = attribution
        self.span = span
        self.settlements: list[Callable[[Cost | None], None]] = []
        self.finished = False

    def attach(self) -> Token[Context]:
        """Make the span current (e.g. while the SDK sends the request, for HTTP spans and propagators); returns
        the token for ``opentelemetry.context.detach``."""
        return attach(set_span_in_context(self.span))

    def _end_after_error(self) -> None:
        try:
            self.span.end()
        except Exception:
            logger.exception("costspan: could not end a span")

    def _claim(self) -> bool:
        if self.finished:
            return False
        self.finished = True
        return True

    def refuse(self, refusal: CostspanRefusal) -> None:
        if not self._claim():
            return
        refused = type(refusal).__name__
        span = self.span
        span.set_attributes(
            {
                semconv.COSTSPAN_REFUSED: refused,
                semconv.ERROR_TYPE: refused,
                semconv.COSTSPAN_PRICING_STATUS: semconv.STATUS_NO_USAGE,
            }
        )
        span.set_status(Status(StatusCode.ERROR, str(refusal)))
        self._settle(None)
        span.end()

    def fail(self, exc: BaseException, summary: ResponseSummary | None = None) -> None:
        """The SDK raised: record the error. ``summary`` is given for a stream that failed (or was cancelled)
        midway: it was billed, and may still have reported usage."""
        if not self._claim():
            return
        try:
            status_code = getattr(exc, "status_code", None)
            error_type = str(status_code) if isinstance(status_code, int) else type(exc).__qualname__
            self._complete(summary, None, error_type=error_type, incomplete=summary is not None)
        except Exception:
            logger.exception("costspan: failed to record an SDK error")
            self._end_after_error()

    def finish(
        self,
        summary: ResponseSummary | None,
        request_id: str | None,
        *,
        incomplete: bool = False,
        output_content: str | None = None,
        end_ns: int | None = None,
    ) -> None:
        if not self._claim():
            return
        try:
            self._complete(summary, request_id, incomplete=incomplete, end_ns=end_ns, output_content=output_content)
        except Exception:
            logger.exception("costspan: failed to complete a span; the call was not affected")
            self._end_after_error()

    def _settle(self, cost: Cost | None) -> None:
        for settle in self.settlements:
            try:
                settle(cost)
            except Exception:
                logger.exception("costspan: settling a call guard failed")

    def _complete(
        self,
        summary: ResponseSummary | None,
        request_id: str | None,
        *,
        incomplete: bool = False,
        error_type: str | None = None,
        end_ns: int | None = None,
        output_content: str | None = None,
    ) -> None:
        end_ns = end_ns or time.time_ns()
        telemetry = self.telemetry
        request = self.request
        attributes: dict[str, Any] = {}
        if error_type is not None:
            attributes[semconv.ERROR_TYPE] = error_type
        if output_content is not None:
            attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = output_content
        usage: Usage | None = None
        response_model = tier = None
        if summary is not None:
            usage = summary.usage
            response_model = summary.model
            tier = summary.service_tier
            if response_model:
                attributes[semconv.GEN_AI_RESPONSE_MODEL] = response_model
            if summary.response_id:
                attributes[semconv.GEN_AI_RESPONSE_ID] = summary.response_id
            if summary.finish_reasons:
                attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = summary.finish_reasons
            if tier and request.tier_attribute:
                attributes[request.tier_attribute] = tier
            if summary.batch_id:
                attributes[semconv.COSTSPAN_BATCH_ID] = summary.batch_id
        if request_id:
            attributes[semconv.COSTSPAN_REQUEST_ID] = request_id
        if usage is not None:
            _usage_attributes(usage, attributes)

        if incomplete and usage is None:
            cost = Cost(semconv.STATUS_INCOMPLETE, note="the stream ended before it reported usage")
        elif error_type is not None and usage is None:
            cost = Cost(semconv.STATUS_NO_USAGE, note="the call failed without reporting usage")
        else:
            if tier is None and request.service_tier not in STANDARD_TIERS:
                tier = request.service_tier  # the response did not say; bill what was asked for
            cost = telemetry.pricer.bill(
                BillableCall(  # positional, in field order: this runs on every call
                    usage,
                    response_model,
                    request.model,
                    provider_price_id(request.provider),
                    tier,
                    summary is not None and summary.batch_id is not None,  # a Batch object's usage: batch rates
                    self.start_ns,
                )
            )
        cost_usd = _cost_attributes(cost, attributes, telemetry.settings.cost_compat)
        span = self.span
        span.set_attributes(attributes)
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, error_type))
        if telemetry.metrics is not None:
            telemetry.metrics.record(
                (
                    request.operation,
                    request.provider,
                    request.model,
                    response_model,
                    request.server_address,
                    request.server_port,
                    error_type,
                ),
                self.attribution,
                (end_ns - self.start_ns) / 1e9,
                usage.input_tokens if usage else None,
                usage.output_tokens if usage else None,
                cost_usd,
            )
        if self.settlements:
            # Guards are told what was billed: nothing when the call failed before the provider answered; the
            # cost otherwise, whose status says when the amount is unknown (a stream cut short, no usage).
            billed = None if error_type is not None and not incomplete and usage is None else cost
            loop = _running_loop() if telemetry.blocking_guards else None
            if loop is not None:
                # Settling waits on the ledger: do it in a worker thread, not on the app's event loop. The span
                # ends there once settled (budget alerts are events on it); its end time is already fixed.
                loop.run_in_executor(None, self._settle_and_end, billed, end_ns)
                return
            self._settle(billed)
        span.end(end_time=end_ns)

    def _settle_and_end(self, cost: Cost | None, end_ns: int) -> None:
        self._settle(cost)
        self.span.end(end_time=end_ns)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _usage_attributes(usage: Usage, attributes: dict[str, Any]) -> None:
    attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
    if not usage.output_unknown:  # a count the response left out is unknown, not 0
        attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
    attributes[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
    attributes[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
    attributes[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
    # Parts most calls lack, only when present (plain ifs: this runs on every call).
    if usage.input_audio_tokens:
        attributes[semconv.COSTSPAN_USAGE_INPUT_AUDIO_TOKENS] = usage.input_audio_tokens
    if usage.output_audio_tokens:
        attributes[semconv.COSTSPAN_USAGE_OUTPUT_AUDIO_TOKENS] = usage.output_audio_tokens
    if usage.input_image_tokens:
        attributes[semconv.COSTSPAN_USAGE_INPUT_IMAGE_TOKENS] = usage.input_image_tokens
    if usage.output_image_tokens:
        attributes[semconv.COSTSPAN_USAGE_OUTPUT_IMAGE_TOKENS] = usage.output_image_tokens
    if usage.prediction_accepted_tokens:
        attributes[semconv.COSTSPAN_USAGE_PREDICTION_ACCEPTED_TOKENS] = usage.prediction_accepted_tokens
    if usage.prediction_rejected_tokens:
        attributes[semconv.COSTSPAN_USAGE_PREDICTION_REJECTED_TOKENS] = usage.prediction_rejected_tokens
    if usage.cache_write_1h_tokens:
        attributes[semconv.COSTSPAN_USAGE_CACHE_WRITE_1H_TOKENS] = usage.cache_write_1h_tokens
    if usage.web_search_requests:
        attributes[semconv.COSTSPAN_USAGE_WEB_SEARCH_REQUESTS] = usage.web_search_requests


def _cost_attributes(cost: Cost, attributes: dict[str, Any], compat: bool) -> float | None:
    """Adds the cost attributes; returns the amount in USD (None when not priced)."""
    attributes[semconv.COSTSPAN_PRICING_STATUS] = cost.status
    if cost.source:
        attributes[semconv.COSTSPAN_PRICING_SOURCE] = cost.source
    if cost.version:
        attributes[semconv.COSTSPAN_PRICING_VERSION] = cost.version
    if cost.model_id:
        attributes[semconv.COSTSPAN_PRICING_MODEL] = cost.model_id
    if cost.model_source:
        attributes[semconv.COSTSPAN_PRICING_MODEL_SOURCE] = cost.model_source
    if cost.note:
        attributes[semconv.COSTSPAN_PRICING_NOTE] = cost.note
    floats = cost.floats()
    if floats is None:
        return None
    amount = floats[0]
    attributes[semconv.GEN_AI_USAGE_COST_AMOUNT] = amount
    attributes[semconv.GEN_AI_USAGE_COST_CURRENCY] = "USD"
    attributes[semconv.GEN_AI_USAGE_COST_SOURCE] = "local"
    attributes[semconv.COSTSPAN_COST_INPUT] = floats[1]
    attributes[semconv.COSTSPAN_COST_CACHE_READ] = floats[2]
    attributes[semconv.COSTSPAN_COST_CACHE_WRITE] = floats[3]
    attributes[semconv.COSTSPAN_COST_OUTPUT] = floats[4]
    if compat:
        attributes[semconv.GEN_AI_USAGE_COST_COMPAT] = amount
    return amount
