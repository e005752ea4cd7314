"""One instrumented SDK call: its span, from request to priced response.

Nothing here imports ``openai``: this is the pure part of the instrumentation, shared by the sync and async
patches in ``_patch.py``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

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
from costspan.usage import ResponseSummary, StreamSummary, Usage

logger = logging.getLogger("costspan")

# POST endpoints that bill, by path: (gen_ai.operation.name, openai.api.type).
_ENDPOINTS: Mapping[str, tuple[str, str | None]] = {
    "/chat/completions": ("chat", "chat_completions"),
    "/responses": ("chat", "responses"),
    "/embeddings": ("embeddings", None),
    "/completions": ("text_completion", None),
    "/batches": ("batch", None),
    "/moderations": ("moderation", None),
    "/fine_tuning/jobs": ("fine_tuning", None),
    "/videos": ("generate_content", None),
}
_ENDPOINT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("/images/", "generate_content"),
    ("/audio/", "generate_content"),
)
# Streams whose usage can be requested with stream_options.include_usage.
_USAGE_INJECTABLE = frozenset({"/chat/completions", "/completions"})


def classify_endpoint(path: str) -> tuple[str, str | None] | None:
    """(operation, api type) for a billable POST path; None for paths that do not bill."""
    found = _ENDPOINTS.get(path)
    if found is not None:
        return found
    for prefix, operation in _ENDPOINT_PREFIXES:
        if path.startswith(prefix):
            return operation, None
    return None


@dataclass(slots=True)
class RequestInfo:
    """What the request says, read from the SDK's request options before anything is sent."""

    endpoint: str
    operation: str
    api_type: str | None
    provider: str
    model: str | None
    stream: bool
    service_tier: str | None
    prompt_cache_key: str | None
    max_output_tokens: int | None
    server_address: str | None
    server_port: int | None
    body: Mapping[str, Any]


def server_of(base_url: str) -> tuple[str | None, int | None]:
    """(host, port) of a base URL; never its userinfo, so credentials stay out of telemetry."""
    parts = urlsplit(base_url)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def read_request(
    path: str, body: Mapping[str, Any], *, stream: bool, provider: str, server: tuple[str | None, int | None]
) -> RequestInfo | None:
    classified = classify_endpoint(path)
    if classified is None:
        return None
    operation, api_type = classified
    address, port = server
    max_tokens = body.get("max_completion_tokens") or body.get("max_output_tokens") or body.get("max_tokens")
    model = body.get("model")
    tier = body.get("service_tier")
    cache_key = body.get("prompt_cache_key")
    return RequestInfo(  # positional, in field order: this runs on every call
        path,
        operation,
        api_type,
        provider,
        model if type(model) is str else None,
        stream or body.get("stream") is True,
        tier if type(tier) is str else None,
        cache_key if type(cache_key) is str else None,
        max_tokens if type(max_tokens) is int else None,
        address,
        port,
        body,
    )


def wants_usage_injection(request: RequestInfo) -> bool:
    if not request.stream or request.endpoint not in _USAGE_INJECTABLE:
        return False
    options = request.body.get("stream_options")
    return not (isinstance(options, Mapping) and options.get("include_usage") is True)


def with_usage_requested(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("stream_options")
    merged = dict(options) if isinstance(options, Mapping) else {}
    merged["include_usage"] = True
    return {**body, "stream_options": merged}


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

    def start(self, request: RequestInfo) -> Call:
        """Begin the call: its span, attribution and guards. Raises ``CostspanRefusal`` to refuse the call."""
        attribution, missing = self.attributor.collect()
        call = self._open(request, time.time_ns(), attribution, missing, content=self.settings.capture_content)
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
        *,
        content: bool = False,
    ) -> Call:
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: request.operation,
            semconv.GEN_AI_PROVIDER_NAME: request.provider,
            semconv.GEN_AI_REQUEST_STREAM: request.stream,
        }
        if request.model:
            attributes[semconv.GEN_AI_REQUEST_MODEL] = request.model
        if request.api_type:
            attributes[semconv.OPENAI_API_TYPE] = request.api_type
        if request.service_tier:
            attributes[semconv.OPENAI_REQUEST_SERVICE_TIER] = request.service_tier
        if request.prompt_cache_key:
            attributes[semconv.COSTSPAN_PROMPT_CACHE_KEY] = request.prompt_cache_key
        if request.max_output_tokens is not None:
            attributes[semconv.GEN_AI_REQUEST_MAX_TOKENS] = request.max_output_tokens
        if request.server_address:
            attributes[semconv.SERVER_ADDRESS] = request.server_address
            attributes[semconv.SERVER_PORT] = request.server_port
        attributes.update(attribution)
        if missing:
            attributes[semconv.COSTSPAN_ATTRIBUTION_MISSING] = missing
        if content:
            _record_input_content(attributes, request.body)
        name = f"{request.operation} {request.model}" if request.model else request.operation
        # Started now, with what the request says, so that samplers see operation, provider, model and server at
        # creation (as the GenAI conventions ask) and the HTTP request can be sent with this span current.
        span = self.tracer.start_span(name, parent, SpanKind.CLIENT, attributes, start_time=start_ns)
        return Call(self, request, start_ns, attribution, span)

    def record_batch_job(
        self, request: RequestInfo, body: Any, summary: ResponseSummary, request_id: str | None
    ) -> None:
        """A finished Batch job's cost, once per job per process: a span of its own from creation to completion,
        attributed from the metadata costspan set at creation (it may have run in another process) and priced at
        batch rates as of its creation."""
        batch_id = summary.batch_id
        with self._batches_lock:
            if batch_id in self._batches_seen:
                return
            self._batches_seen[batch_id] = None
            if len(self._batches_seen) > 10_000:
                self._batches_seen.popitem(last=False)
        metadata = getattr(body, "metadata", None) or {}
        attribution = {key: str(metadata[key]) for key in self.attributor.keys if key in metadata}
        job = replace(request, model=summary.model)
        created_ns = int(getattr(body, "created_at", 0) or 0) * 1_000_000_000 or time.time_ns()
        completed_ns = int(getattr(body, "completed_at", 0) or 0) * 1_000_000_000 or None
        parent = set_span_in_context(NonRecordingSpan(batch_job_context(str(batch_id))))
        call = self._open(job, created_ns, attribution, [], parent)
        for guard in self.guards:
            # The job's cost reaches the budgets of whoever created it, as a call's settlement would.
            charge = getattr(guard, "charge", None)  # a guard written before charge existed has none
            if charge is not None:
                call.settlements.append(functools.partial(charge, attribution, f"batch {batch_id}"))
        call.finish(summary, request_id, end_ns=completed_ns)


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


def with_batch_attribution(body: Mapping[str, Any], attribution: Mapping[str, str]) -> dict[str, Any]:
    """The batch-create body with the caller's attribution added to its metadata (never replacing a key the
    caller set, within the API's 16 keys of 512 characters), so the job's cost attributes back to its workload."""
    metadata = dict(body.get("metadata") or {})
    for key, value in attribution.items():
        if len(metadata) >= 16:
            break
        metadata.setdefault(key, value[:512])
    return {**body, "metadata": metadata}


FINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchRetrieval:
    """A GET of one Batch. It makes no span of its own; a finished job's usage is recorded by the telemetry."""

    __slots__ = ("finished", "request", "telemetry")

    def __init__(self, telemetry: Telemetry, request: RequestInfo) -> None:
        self.telemetry = telemetry
        self.request = request
        self.finished = False

    def fail(self, exc: BaseException, summary: ResponseSummary | None = None) -> None:
        self.finished = True

    def finish_body(self, body: Any, summary: ResponseSummary, request_id: str | None) -> None:
        self.finished = True
        if summary.batch_id and summary.usage is not None and getattr(body, "status", None) in FINAL_BATCH_STATUSES:
            self.telemetry.record_batch_job(self.request, body, summary, request_id)


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


def _record_input_content(attributes: dict[str, Any], body: Mapping[str, Any]) -> None:
    content = body.get("messages", body.get("input", body.get("prompt")))
    if content is not None:
        attributes[semconv.GEN_AI_INPUT_MESSAGES] = json.dumps(content, default=str)


def _output_content(body: Any) -> str | None:
    output_text = getattr(body, "output_text", None)
    if isinstance(output_text, str):
        return json.dumps([{"role": "assistant", "content": output_text}])
    choices = getattr(body, "choices", None)
    if not choices:
        return None
    messages = []
    for choice in choices:
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
        messages.append({"role": "assistant", "content": text})
    return json.dumps(messages, default=str)


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
            logger.exception("costspan: failed to record an OpenAI error")
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

    def finish_body(self, body: Any, summary: ResponseSummary, request_id: str | None) -> None:
        """Finish from a whole (non-streamed) response body."""
        content = None
        if self.telemetry.settings.capture_content:
            content = _output_content(body)
        self.finish(summary, request_id, output_content=content)

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
            if tier:
                attributes[semconv.OPENAI_RESPONSE_SERVICE_TIER] = tier
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


def _forget_null_usage(item: Any) -> None:
    """Asked for usage, the server sends ``"usage": null`` on every chunk; unasked, it sends no such field. Mark
    the field unset again, so that ``to_dict()`` / ``to_json()`` (which leave unset fields out) give the user
    the chunk they would have had."""
    try:  # an SDK chunk under pydantic 2: the common case, on every chunk, tried first
        if item.__dict__["usage"] is None:
            item.__pydantic_fields_set__.discard("usage")
    except (AttributeError, KeyError):  # a plain-dict chunk (client.post without a model class), or pydantic 1
        if type(item) is dict and item.get("usage", True) is None:
            del item["usage"]


def _usage_only(item: Any) -> bool:
    """A chunk with usage and no choices: the shape of the one costspan asks for. Never raises."""
    try:
        fields = item if type(item) is dict else getattr(item, "__dict__", None) or {}
        return not fields.get("choices") and fields.get("usage") is not None and "type" not in fields
    except Exception:
        return False


class StreamObserver:
    """Watches a stream's items for the span; shared by the sync and async stream proxies."""

    __slots__ = ("_add", "broken", "call", "choices", "hide_usage_chunk", "reading", "request_id", "state", "texts")

    def __init__(self, call: Call, hide_usage_chunk: bool, request_id: str | None) -> None:
        self.call = call
        n = call.request.body.get("n")
        self.choices = n if type(n) is int and n > 0 else 1
        self.hide_usage_chunk = hide_usage_chunk
        self.request_id = request_id
        self.state = StreamSummary()
        self._add = self.state.add
        self.broken = False
        # Inside the SDK stream's __next__, which closes the response as the stream ends: the reader sees that end.
        self.reading = False
        self.texts: list[str] | None = [] if call.telemetry.settings.capture_content else None

    def hides(self, item: Any) -> bool:
        """Record an item; True when it is the usage-only chunk costspan asked for, to be kept from the user."""
        if self.broken:
            return self.hide_usage_chunk and _usage_only(item)
        try:
            usage_only = self._add(item)
            if self.texts is not None:
                self._collect_text(item)
            if self.hide_usage_chunk:
                if usage_only:
                    return True
                _forget_null_usage(item)
            return False
        except Exception:
            self.broken = True
            logger.exception("costspan: could not read a stream item; this stream's usage is not recorded")
            # Even so, the chunk costspan asked for must not reach the user.
            return self.hide_usage_chunk and _usage_only(item)

    def _collect_text(self, item: Any) -> None:
        assert self.texts is not None
        delta = getattr(item, "delta", None)
        if isinstance(delta, str):  # Responses API text delta events
            self.texts.append(delta)
            return
        for choice in getattr(item, "choices", None) or ():
            text = getattr(getattr(choice, "delta", None), "content", None) or getattr(choice, "text", None)
            if isinstance(text, str):
                self.texts.append(text)

    def _content(self) -> str | None:
        if self.texts is None:
            return None
        return json.dumps([{"role": "assistant", "content": "".join(self.texts)}])

    def ended(self, exc: BaseException) -> None:
        """The SDK stream raised: ``StopIteration`` / ``StopAsyncIteration`` at its end, else an error midway
        (it was billed, and may still have reported usage)."""
        if isinstance(exc, (StopIteration, StopAsyncIteration)):
            self.call.finish(self.state.summary, self.request_id, output_content=self._content())
        else:
            self.call.fail(exc, self.state.summary)

    def awaits_usage(self) -> bool:
        """Stopped now, the stream's next and last event is the usage chunk costspan asked for: every choice
        has finished and no usage came yet."""
        summary = self.state.summary
        return (
            self.hide_usage_chunk
            and not self.broken
            and summary.usage is None
            and len(summary.finish_reasons) >= self.choices
            and not self.call.finished
        )

    def abandon(self) -> None:
        """The stream stopped before its end (closed, left, dropped): priced if its usage arrived, else
        ``incomplete``, since the provider billed an amount the stream did not say."""
        if not self.call.finished:
            self.call.finish(self.state.summary, self.request_id, incomplete=True, output_content=self._content())
