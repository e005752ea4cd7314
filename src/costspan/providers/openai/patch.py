"""The patch layer: wraps the OpenAI client's request method and the objects it returns.

Patching ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` (as OpenInference does) sees every call of every
resource, including ``parse``, the ``stream()`` helpers, ``with_raw_response`` and ``with_streaming_response``, and
keeps the SDK's own retries inside one span. The sync and async wrappers differ only by ``await``; the span's work
is in the provider-neutral ``costspan.instrumentation.call``, what OpenAI's requests and responses say is in
``requests.py`` and ``usage.py``, and the SDK's private classes are imported from ``sdk.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import weakref
from collections.abc import Mapping
from contextvars import Token
from typing import Any

import wrapt
from opentelemetry.context import Context

from costspan.instrumentation import boundary
from costspan.instrumentation.call import Call, RequestInfo, Telemetry
from costspan.providers.openai.batches import BatchRetrieval
from costspan.providers.openai.requests import (
    output_content,
    read_request,
    wants_usage_injection,
    with_batch_attribution,
    with_usage_requested,
)
from costspan.providers.openai.sdk import (
    RAW_RESPONSE_HEADER,
    APIResponse,
    AsyncAPIResponse,
    AsyncStream,
    BaseAzureClient,
    BaseModel,
    LegacyAPIResponse,
    Stream,
)
from costspan.providers.openai.streams import StreamObserver
from costspan.providers.openai.usage import summarize_response

logger = logging.getLogger("costspan")


def _read(
    telemetry: Telemetry, client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[RequestInfo | BatchRetrieval | None, tuple[Any, ...], dict[str, Any], bool]:
    """What the call asks for (None: not a call that bills), its (possibly rewritten) arguments, and whether
    usage was injected. Never raises: a failure here leaves the call uninstrumented."""
    try:
        options = args[1] if len(args) > 1 else kwargs["options"]
        method = options.method.lower()
        provider = "azure.ai.openai" if isinstance(client, BaseAzureClient) else "openai"
        if method == "get":
            if not options.url.startswith("/batches/") or options.url.count("/") != 2:
                return None, args, kwargs, False
            batch = read_request("/batches", {}, stream=False, provider=provider, server=_server(client))
            return (BatchRetrieval(telemetry, batch) if batch else None), args, kwargs, False
        if method != "post":
            return None, args, kwargs, False
        json_data = _mapping(options.json_data)
        extra_json = _mapping(options.extra_json)
        # What is sent: the SDK merges extra_body over the body, key by key.
        body = {**json_data, **extra_json} if extra_json else json_data
        stream = bool(kwargs.get("stream"))
        request = read_request(
            options.url,
            body,
            stream=stream,
            provider=provider,
            server=_server(client),
            capture_content=telemetry.settings.capture_content,
        )
        if request is None:
            return None, args, kwargs, False
        update: dict[str, Any] | None = None
        # A raw streamed response may be read as lines or bytes, where a hidden chunk cannot be hidden.
        injected = telemetry.settings.stream_usage and wants_usage_injection(request) and not _raw_response(options)
        if injected:
            # Into the part that carries stream_options, so the merge keeps it.
            if "stream_options" in extra_json:
                update = {"extra_json": with_usage_requested(extra_json)}
            else:
                update = {"json_data": with_usage_requested(json_data)}
        elif request.endpoint == "/batches":
            attribution, _ = telemetry.attributor.collect()
            if attribution:
                update = {"json_data": with_batch_attribution(json_data, attribution)}
        if update is not None:
            options = _copy_options(options, update)
            if len(args) > 1:
                args = (args[0], options, *args[2:])
            else:
                kwargs = {**kwargs, "options": options}
    except Exception:
        logger.exception("costspan: could not read an OpenAI request; this call is not instrumented")
        return None, args, kwargs, False
    return request, args, kwargs, injected


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    """A request option that is a JSON object, else empty (the SDK's NotGiven, None, a list body...)."""
    return value if type(value) is dict or isinstance(value, Mapping) else _EMPTY


def _raw_response(options: Any) -> bool:
    """``with_raw_response`` / ``with_streaming_response``: the SDK marks their requests with this header."""
    headers = options.headers
    return isinstance(headers, Mapping) and bool(headers.get(RAW_RESPONSE_HEADER))


def _copy_options(options: Any, update: dict[str, Any]) -> Any:
    if hasattr(options, "model_copy"):
        return options.model_copy(update=update)
    return options.copy(update=update)  # pydantic v1


def _start(telemetry: Telemetry, request: RequestInfo | BatchRetrieval | None) -> Call | BatchRetrieval | None:
    """A billable call's span, started at the boundary; a Batch retrieval makes none of its own."""
    return boundary.start(telemetry, request) if isinstance(request, RequestInfo) else request


def _attach(call: Call | BatchRetrieval) -> Token[Context] | None:
    return None if isinstance(call, BatchRetrieval) else boundary.attach(call)


def _server(client: Any) -> tuple[str | None, int | None]:
    # The attribute behind the public property, which in openai 3.x runs an import statement on every read.
    return boundary.server_of(getattr(client, "_base_url", None) or client.base_url)


def wrap_sync_request(telemetry: Telemetry) -> Any:
    def request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request, args, kwargs, injected = _read(telemetry, instance, args, kwargs)
        call = _start(telemetry, request)
        if call is None:
            return wrapped(*args, **kwargs)
        token = _attach(call)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            boundary.detach(token)
        return observe(call, result, injected)

    return request


def wrap_async_request(telemetry: Telemetry) -> Any:
    async def request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request, args, kwargs, injected = _read(telemetry, instance, args, kwargs)
        call: Call | BatchRetrieval | None
        if telemetry.blocking_guards and isinstance(request, RequestInfo):
            call = await boundary.start_in_thread(telemetry, request)
        else:
            call = _start(telemetry, request)
        if call is None:
            return await wrapped(*args, **kwargs)
        token = _attach(call)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            boundary.detach(token)
        return observe(call, result, injected)

    return request


def finish_body(call: Call, body: Any, request_id: str | None) -> None:
    """Finish from a whole (non-streamed) response body, with its content when the user opted in."""
    content = output_content(body) if call.telemetry.settings.capture_content else None
    call.finish(summarize_response(body), request_id, output_content=content)


def observe(call: Call | BatchRetrieval, result: Any, injected: bool) -> Any:
    """Hand back what the SDK returned, finishing the span now or watching the object that will finish it."""
    if call.finished:
        return result
    if isinstance(call, BatchRetrieval):
        try:
            call.finish_body(result, summarize_response(result), getattr(result, "_request_id", None))
        except Exception:
            logger.exception("costspan: could not record a finished batch job; the call was not affected")
        return result
    try:
        if isinstance(result, BaseModel):  # the common case first: a parsed body
            finish_body(call, result, getattr(result, "_request_id", None))
            return result
        if isinstance(result, (Stream, AsyncStream)):
            observer = StreamObserver(call, injected, _header_request_id(result.response))
            _end_with_response(result, observer)
            if isinstance(result, Stream):
                return SyncStreamProxy(result, observer)
            return AsyncStreamProxy(result, observer)
        if isinstance(result, LegacyAPIResponse) and not call.request.stream:
            # with_raw_response: the body is read already; parse() caches, so the user's own parse() is free.
            parsed = result.parse()
            finish_body(call, parsed, _header_request_id(result))
            return result
        if isinstance(result, (LegacyAPIResponse, APIResponse)):
            return SyncRawResponseProxy(result, call, injected)
        if isinstance(result, AsyncAPIResponse):
            return AsyncRawResponseProxy(result, call, injected)
        finish_body(call, result, None)
    except Exception:
        logger.exception("costspan: could not read an OpenAI response; the call was not affected")
        call.finish(None, None)
    return result


# How long closing a stream may wait for the usage chunk costspan asked for, once every choice has finished: the
# provider sends it right after the last finish_reason chunk, so it has arrived or is about to.
DRAIN_SECONDS = 0.25


def _end_with_response(stream: Any, observer: StreamObserver) -> None:
    """End the span when the stream's HTTP response is closed, which every way of stopping a stream early goes
    through: ``close()`` and ``with`` on the stream, the stream helpers (``chat.completions.stream``,
    ``responses.stream``: they close the response, not the stream) and, for a sync stream, the proxy's
    finalizer. The SDK also closes it as the stream ends or fails, while the proxy reads: the proxy then ends
    the span, with the error if any."""
    response = stream.response
    if isinstance(stream, AsyncStream):
        aclose = response.aclose

        async def closing_async() -> None:
            try:
                if not observer.reading:
                    if observer.awaits_usage():
                        await _drain_async(stream, observer)
                    observer.abandon()
            finally:
                await aclose()

        response.aclose = closing_async
        return
    close = response.close

    def closing() -> None:
        try:
            if not observer.reading:
                if observer.awaits_usage():
                    _drain(stream, observer)
                observer.abandon()
        finally:
            close()

    response.close = closing


def _drain(stream: Stream[Any], observer: StreamObserver) -> None:
    """Read the usage chunk costspan asked for, at most ``DRAIN_SECONDS``: a read still waiting then is ended by
    shutting the socket's read side (the response is being closed anyway). Without a socket of this response
    alone to bound the read with (HTTP/2 shares one among requests; a mock transport has none), nothing is
    read."""
    try:
        response = stream.response
        if response.http_version != "HTTP/1.1":
            return
        sock = response.extensions["network_stream"].get_extra_info("socket")
    except Exception:
        return
    if not isinstance(sock, socket.socket):
        return
    timer = threading.Timer(DRAIN_SECONDS, _shut_read, (sock,))
    timer.daemon = True
    observer.reading = True  # the SDK closes the response itself if the stream ends here
    try:
        timer.start()
        observer.hides(stream.__next__())
    except Exception:  # the stream ended, or the bound cut the read short: no usage
        logger.debug("costspan: no usage chunk after a stream was closed", exc_info=True)
    finally:
        timer.cancel()
        observer.reading = False


def _shut_read(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile
        socket.socket.shutdown(sock, socket.SHUT_RD)  # the plain socket's, also under TLS: wakes a blocked recv


async def _drain_async(stream: AsyncStream[Any], observer: StreamObserver) -> None:
    """``_drain`` for an async stream: the read is cancelled after ``DRAIN_SECONDS``."""
    observer.reading = True
    try:
        observer.hides(await asyncio.wait_for(stream.__anext__(), DRAIN_SECONDS))
    except Exception:  # ended, timed out, or not under asyncio: no usage
        logger.debug("costspan: no usage chunk after a stream was closed", exc_info=True)
    finally:
        observer.reading = False


def _header_request_id(response: Any) -> str | None:
    try:
        value = response.headers.get("x-request-id")
        return value if isinstance(value, str) else None
    except Exception:
        return None


class _ObservedStream:
    """Stands in for the SDK's stream: forwards everything (``close`` and ``with`` too: closing the response ends
    the span, see ``_end_with_response``), passes ``isinstance`` checks for the SDK's class.

    A plain slotted class rather than a ``wrapt.ObjectProxy``: its ``__next__`` runs for every chunk, and a method
    on an ObjectProxy subclass costs ~350 ns a call against ~100 ns here.
    """

    __slots__ = ("__weakref__", "_hides", "_observer", "_stream")

    def __init__(self, stream: Any, observer: StreamObserver) -> None:
        self._stream = stream
        self._observer = observer
        self._hides = observer.hides  # bound once

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(proxy, openai.Stream) stays true
        return type(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __repr__(self) -> str:
        return repr(self._stream)


class SyncStreamProxy(_ObservedStream):
    """The user's ``Stream``, unchanged but for the usage-only chunk costspan asked for."""

    __slots__ = ()

    def __init__(self, stream: Stream[Any], observer: StreamObserver) -> None:
        super().__init__(stream, observer)
        # Dropped before its end, it is closed like any stream stopped early (the usage chunk still read).
        weakref.finalize(self, _close_dropped, stream, observer)

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        observer = self._observer
        while True:
            observer.reading = True
            try:
                item = self._stream.__next__()
            except BaseException as exc:
                observer.ended(exc)
                raise
            finally:
                observer.reading = False
            if not self._hides(item):
                return item

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stream.close()


def _close_dropped(stream: Stream[Any], observer: StreamObserver) -> None:
    if not observer.call.finished:
        stream.close()


class AsyncStreamProxy(_ObservedStream):
    """The user's ``AsyncStream``, unchanged but for the usage-only chunk costspan asked for."""

    __slots__ = ()

    def __init__(self, stream: AsyncStream[Any], observer: StreamObserver) -> None:
        super().__init__(stream, observer)
        # Dropped before its end, nothing can be awaited any more: priced if its usage arrived, else incomplete.
        weakref.finalize(self, observer.abandon)

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        observer = self._observer
        while True:
            observer.reading = True
            try:
                item = await self._stream.__anext__()
            except BaseException as exc:
                observer.ended(exc)
                raise
            finally:
                observer.reading = False
            if not self._hides(item):
                return item

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stream.close()


def _finish_unparsed(call: Call, raw_response: Any) -> None:
    """A raw response closed or dropped without ``parse()``: use its body if it was read, else no usage."""
    if call.finished:
        return
    body = None
    try:
        if not call.request.stream:
            body = json.loads(raw_response.content)
    except Exception:
        body = None
    request_id = _header_request_id(raw_response)
    if body is None:
        call.finish(None, request_id, incomplete=call.request.stream)
    else:
        finish_body(call, body, request_id)


class _ObservedRawResponse(wrapt.ObjectProxy):  # type: ignore[type-arg]
    def __init__(self, response: Any, call: Call, injected: bool) -> None:
        super().__init__(response)
        self._self_call = call
        self._self_injected = injected
        self._self_finalizer = weakref.finalize(self, _finish_unparsed, call, self._self_http_response)
        self._self_observed: tuple[Any, Any] | None = None  # (what parse() returned, what the user got)

    @property
    def _self_http_response(self) -> Any:
        return getattr(self.__wrapped__, "http_response", self.__wrapped__)

    def _self_observe(self, parsed: Any) -> Any:
        # The SDK caches parse(): a second call must give the user the same object again, not a second proxy.
        if self._self_observed is not None and self._self_observed[0] is parsed:
            return self._self_observed[1]
        self._self_finalizer.detach()  # from here the parsed body (or its stream proxy) ends the span
        observed = observe(self._self_call, parsed, self._self_injected)
        self._self_observed = (parsed, observed)
        return observed


class SyncRawResponseProxy(_ObservedRawResponse):
    """``with_raw_response`` (streamed) and ``with_streaming_response``: the span ends when the body is parsed."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_observe(self.__wrapped__.parse(*args, **kwargs))

    def close(self) -> None:
        self.__wrapped__.close()
        _finish_unparsed(self._self_call, self._self_http_response)


class AsyncRawResponseProxy(_ObservedRawResponse):
    """The async form of ``SyncRawResponseProxy``."""

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_observe(await self.__wrapped__.parse(*args, **kwargs))

    async def close(self) -> None:
        await self.__wrapped__.close()
        _finish_unparsed(self._self_call, self._self_http_response)
