"""The patch layer: wraps the Anthropic client's request method and the objects it returns.

Patching ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` sees every call of every surface (``messages``,
``beta.messages``, the ``messages.stream()`` helper, ``with_raw_response`` and ``with_streaming_response``, the
Bedrock and Vertex clients) and keeps the SDK's retries inside one span. The span's work is in the provider-neutral
``costspan.instrumentation.call``, the stream and raw-response stand-ins in ``costspan.instrumentation.proxies``;
what requests and responses say is in ``requests.py`` and ``usage.py``; Message Batches (a create is a call; a
batch's retrieval and results are GETs watched without a span) are in ``batches.py``; the SDK's private classes are
imported from ``sdk.py``.

The SDK traces its own calls (anthropic 2.x: an ``anthropic.messages.create`` span with ``gen_ai.usage.*``). While
costspan instruments, those spans are turned off, so that a backend summing ``gen_ai.usage.*`` counts each call
once, from the span that also carries its cost and attribution (``silence_sdk_spans``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from costspan.instrumentation import boundary
from costspan.instrumentation.call import Call, RequestInfo, Telemetry
from costspan.instrumentation.proxies import (
    AsyncRawResponseProxy,
    AsyncStreamProxy,
    BodyFinisher,
    SyncRawResponseProxy,
    SyncStreamProxy,
    end_with_response,
)
from costspan.providers.anthropic.batches import BatchRead, BatchReads, summarize_created
from costspan.providers.anthropic.limits import COUNT_TOKENS
from costspan.providers.anthropic.requests import BATCH, output_content, read_request
from costspan.providers.anthropic.sdk import (
    BEDROCK_CLIENTS,
    FOUNDRY_CLIENTS,
    LEGACY_RESPONSES,
    UNSET_TYPES,
    VERTEX_CLIENTS,
    APIResponse,
    AsyncAPIResponse,
    AsyncStream,
    BaseClient,
    BaseModel,
    Stream,
)
from costspan.providers.anthropic.streams import StreamObserver
from costspan.providers.anthropic.usage import summarize_message
from costspan.usage import ResponseSummary, Usage

logger = logging.getLogger("costspan")


def silence_sdk_spans() -> Callable[[], None]:
    """Turn the SDK's own call spans off (every client, made before or after); returns what turns them back on.
    A client without a tracer sends its requests untraced, which SDKs before 2.x always did."""
    original = BaseClient.__dict__.get("_tracer")
    if original is None:
        return lambda: None
    setattr(BaseClient, "_tracer", property(lambda self: None))  # noqa: B010  (a property on a typed class)
    return lambda: setattr(BaseClient, "_tracer", original)


def provider_of(client: Any) -> str:
    """``gen_ai.provider.name``: a cloud's Claude is billed at that cloud's prices, not Anthropic's."""
    if isinstance(client, BEDROCK_CLIENTS):
        return "aws.bedrock"
    if isinstance(client, VERTEX_CLIENTS):
        return "gcp.vertex_ai"
    if isinstance(client, FOUNDRY_CLIENTS):
        return "azure.ai.inference"
    return "anthropic"


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    """A request option that is a JSON object, else empty (the SDK's NotGiven, None...)."""
    return value if type(value) is dict or isinstance(value, Mapping) else _EMPTY


def _server(client: Any) -> tuple[str | None, int | None]:
    return boundary.server_of(client.base_url)


def _read(
    telemetry: Telemetry, batches: BatchReads, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> RequestInfo | BatchRead | None:
    """What the call asks for (a Message Batch read makes no span of its own); None when costspan does not watch
    it. Never raises."""
    try:
        options = args[1] if len(args) > 1 else kwargs["options"]
        method = options.method.lower()
        if method == "get":
            return batches.watch(options.url, provider_of(client), _server(client))
        if method != "post":
            return None
        json_data = _mapping(options.json_data)
        extra_json = _mapping(options.extra_json)
        # What is sent: extra_body wins, and the SDK's placeholders for arguments not given are dropped.
        sent = {**json_data, **extra_json} if extra_json else json_data
        body = {k: v for k, v in sent.items() if not isinstance(v, UNSET_TYPES)}
        return read_request(
            options.url,
            body,
            stream=bool(kwargs.get("stream")),
            provider=provider_of(client),
            server=_server(client),
            capture_content=telemetry.settings.capture_content,
        )
    except Exception:
        logger.exception("costspan: could not read an Anthropic request; this call is not instrumented")
        return None


def wrap_sync_request(telemetry: Telemetry, batches: BatchReads) -> Any:
    def request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = _read(telemetry, batches, instance, args, kwargs)
        if isinstance(request, BatchRead):
            return request.observe(wrapped(*args, **kwargs))
        call = None if request is None else boundary.start(telemetry, request)
        if call is None:
            return wrapped(*args, **kwargs)
        token = boundary.attach(call)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            boundary.detach(token)
        return observe(call, result)

    return request


def wrap_async_request(telemetry: Telemetry, batches: BatchReads) -> Any:
    async def request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        info = _read(telemetry, batches, instance, args, kwargs)
        if isinstance(info, BatchRead):
            return info.observe(await wrapped(*args, **kwargs))
        if telemetry.blocking_guards and info is not None:
            call = await boundary.start_in_thread(telemetry, info)
        else:
            call = None if info is None else boundary.start(telemetry, info)
        if call is None:
            return await wrapped(*args, **kwargs)
        token = boundary.attach(call)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            boundary.detach(token)
        return observe(call, result)

    return request


def finish_body(call: Call, body: Any, request_id: str | None) -> None:
    """Finish from a whole (non-streamed) response body."""
    if call.request.operation == COUNT_TOKENS:
        # Counting is free: a $0 call (its token count is the prompt's size, not usage).
        call.finish(ResponseSummary(usage=Usage(0, 0)), request_id)
        return
    if call.request.operation == BATCH:
        # Nothing is billed yet. The creator's attribution is kept for the results, which carry none.
        summary = summarize_created(body)
        if summary.batch_id:
            call.telemetry.remember_batch(summary.batch_id, call.attribution)
        call.finish(summary, request_id)
        return
    content = output_content(body) if call.telemetry.settings.capture_content else None
    call.finish(summarize_message(body), request_id, output_content=content)


BODIES = BodyFinisher(finish_body, request_id_header="request-id")


def observe(call: Call, result: Any) -> Any:
    """Hand back what the SDK returned, finishing the span now or watching the object that will finish it."""
    if call.finished:
        return result
    try:
        if isinstance(result, BaseModel):
            finish_body(call, result, getattr(result, "_request_id", None))
            return result
        if isinstance(result, (Stream, AsyncStream)):
            observer = StreamObserver(call, BODIES.request_id(result.response))
            is_async = isinstance(result, AsyncStream)
            end_with_response(result, observer, is_async=is_async)
            return AsyncStreamProxy(result, observer) if is_async else SyncStreamProxy(result, observer)
        if isinstance(result, LEGACY_RESPONSES) and not call.request.stream:
            # An older SDK's with_raw_response: the body is read already, and parse() caches it for the user.
            finish_body(call, result.parse(), BODIES.request_id(result))
            return result
        if isinstance(result, (APIResponse, AsyncAPIResponse, *LEGACY_RESPONSES)):
            observe_parsed = functools.partial(observe, call)
            proxy = AsyncRawResponseProxy if isinstance(result, AsyncAPIResponse) else SyncRawResponseProxy
            return proxy(result, call, observe_parsed, BODIES)
        finish_body(call, result, None)
    except Exception:
        logger.exception("costspan: could not read an Anthropic response; the call was not affected")
        call.finish(None, None)
    return result
