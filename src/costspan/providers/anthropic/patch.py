"""The patch layer: wraps the Anthropic client's request method and the objects it returns.

Patching ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` sees every call of every surface (``messages``,
``beta.messages``, the ``messages.stream()`` helper, ``with_raw_response`` and ``with_streaming_response``, the
Bedrock and Vertex clients) and keeps the SDK's retries inside one span. The span's work is in the provider-neutral
``costspan.instrumentation.call``; what requests and responses say is in ``requests.py`` and ``usage.py``; Message
Batches (a create is a call; a batch's retrieval and results are GETs watched without a span) are in
``batches.py``; the SDK's private classes are imported from ``sdk.py``.

The SDK traces its own calls (anthropic 2.x: an ``anthropic.messages.create`` span with ``gen_ai.usage.*``). While
costspan instruments, those spans are turned off, so that a backend summing ``gen_ai.usage.*`` counts each call
once, from the span that also carries its cost and attribution (``silence_sdk_spans``).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import wrapt

from costspan.instrumentation import boundary
from costspan.instrumentation.call import Call, RequestInfo, Telemetry
from costspan.providers.anthropic.batches import BatchRead, BatchReads, summarize_created
from costspan.providers.anthropic.limits import COUNT_TOKENS
from costspan.providers.anthropic.requests import BATCH, output_content, read_request
from costspan.providers.anthropic.sdk import (
    BEDROCK_CLIENTS,
    FOUNDRY_CLIENTS,
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
    return value if isinstance(value, Mapping) else _EMPTY


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
        body = {k: v for k, v in {**json_data, **extra_json}.items() if not isinstance(v, UNSET_TYPES)}
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


def _request_id(response: Any) -> str | None:
    try:
        value = response.headers.get("request-id")
        return value if isinstance(value, str) else None
    except Exception:
        return None


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


def observe(call: Call, result: Any) -> Any:
    """Hand back what the SDK returned, finishing the span now or watching the object that will finish it."""
    if call.finished:
        return result
    try:
        if isinstance(result, BaseModel):
            finish_body(call, result, getattr(result, "_request_id", None))
            return result
        if isinstance(result, (Stream, AsyncStream)):
            observer = StreamObserver(call, _request_id(result.response))
            _end_with_response(result, observer)
            if isinstance(result, Stream):
                return SyncStreamProxy(result, observer)
            return AsyncStreamProxy(result, observer)
        if isinstance(result, APIResponse):
            return SyncRawResponseProxy(result, call)
        if isinstance(result, AsyncAPIResponse):
            return AsyncRawResponseProxy(result, call)
        finish_body(call, result, None)
    except Exception:
        logger.exception("costspan: could not read an Anthropic response; the call was not affected")
        call.finish(None, None)
    return result


def _end_with_response(stream: Any, observer: StreamObserver) -> None:
    """End the span when the stream's HTTP response is closed, which every way of stopping early goes through
    (``close()``, ``with``, the ``messages.stream()`` helper's exit). The SDK also closes it as the stream ends,
    while the proxy reads: the proxy then ends the span itself."""
    response = stream.response
    if isinstance(stream, AsyncStream):
        aclose = response.aclose

        async def closing_async() -> None:
            try:
                if not observer.reading:
                    observer.abandon()
            finally:
                await aclose()

        response.aclose = closing_async
        return
    close = response.close

    def closing() -> None:
        try:
            if not observer.reading:
                observer.abandon()
        finally:
            close()

    response.close = closing


class _ObservedStream:
    """Stands in for the SDK's stream: forwards everything and passes ``isinstance`` checks for its class."""

    __slots__ = ("__weakref__", "_observer", "_seen", "_stream")

    def __init__(self, stream: Any, observer: StreamObserver) -> None:
        self._stream = stream
        self._observer = observer
        self._seen = observer.seen

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __repr__(self) -> str:
        return repr(self._stream)


class SyncStreamProxy(_ObservedStream):
    __slots__ = ()

    def __init__(self, stream: Stream[Any], observer: StreamObserver) -> None:
        super().__init__(stream, observer)
        weakref.finalize(self, _close_dropped, stream, observer)  # dropped early: closed, so the span ends

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        observer = self._observer
        observer.reading = True
        try:
            item = self._stream.__next__()
        except BaseException as exc:
            observer.ended(exc)
            raise
        finally:
            observer.reading = False
        self._seen(item)
        return item

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stream.close()


def _close_dropped(stream: Stream[Any], observer: StreamObserver) -> None:
    if not observer.call.finished:
        stream.close()


class AsyncStreamProxy(_ObservedStream):
    __slots__ = ()

    def __init__(self, stream: AsyncStream[Any], observer: StreamObserver) -> None:
        super().__init__(stream, observer)
        weakref.finalize(self, observer.abandon)  # nothing can be awaited once dropped

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        observer = self._observer
        observer.reading = True
        try:
            item = await self._stream.__anext__()
        except BaseException as exc:
            observer.ended(exc)
            raise
        finally:
            observer.reading = False
        self._seen(item)
        return item

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stream.close()


def _finish_unparsed(call: Call, raw_response: Any) -> None:
    """A raw response closed or dropped without ``parse()``: its body if it was read, else no usage."""
    if call.finished:
        return
    body = None
    try:
        if not call.request.stream:
            body = json.loads(raw_response.content)
    except Exception:
        body = None
    request_id = _request_id(raw_response)
    if body is None:
        call.finish(None, request_id, incomplete=call.request.stream)
    else:
        finish_body(call, body, request_id)


class _ObservedRawResponse(wrapt.ObjectProxy):  # type: ignore[type-arg]
    def __init__(self, response: Any, call: Call) -> None:
        super().__init__(response)
        self._self_call = call
        self._self_finalizer = weakref.finalize(self, _finish_unparsed, call, response.http_response)
        self._self_observed: tuple[Any, Any] | None = None  # (what parse() returned, what the user got)

    def _self_observe(self, parsed: Any) -> Any:
        # The SDK caches parse(): a second call gives the same object again, not a second proxy.
        if self._self_observed is not None and self._self_observed[0] is parsed:
            return self._self_observed[1]
        self._self_finalizer.detach()
        observed = observe(self._self_call, parsed)
        self._self_observed = (parsed, observed)
        return observed


class SyncRawResponseProxy(_ObservedRawResponse):
    """``with_raw_response`` and ``with_streaming_response``: the span ends when the body is parsed or closed."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_observe(self.__wrapped__.parse(*args, **kwargs))

    def close(self) -> None:
        self.__wrapped__.close()
        _finish_unparsed(self._self_call, self.__wrapped__.http_response)


class AsyncRawResponseProxy(_ObservedRawResponse):
    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_observe(await self.__wrapped__.parse(*args, **kwargs))

    async def close(self) -> None:
        await self.__wrapped__.close()
        _finish_unparsed(self._self_call, self.__wrapped__.http_response)
