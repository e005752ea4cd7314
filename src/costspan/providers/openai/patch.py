"""The patch layer: wraps the OpenAI client's request method and the objects it returns.

Patching ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` (as OpenInference does) sees every call of every
resource, including ``parse``, the ``stream()`` helpers, ``with_raw_response`` and ``with_streaming_response``, and
keeps the SDK's own retries inside one span. The sync and async wrappers differ only by ``await``; the span's work
is in the provider-neutral ``costspan.instrumentation.call``, the stream and raw-response stand-ins in
``costspan.instrumentation.proxies``, what OpenAI's requests and responses say is in ``requests.py`` and
``usage.py``, and the SDK's private classes are imported from ``sdk.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Mapping
from contextvars import Token
from typing import Any

from opentelemetry.context import Context

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


BODIES = BodyFinisher(finish_body, request_id_header="x-request-id")


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
        if isinstance(result, Stream):
            observer = StreamObserver(call, injected, BODIES.request_id(result.response))
            end_with_response(result, observer, is_async=False, drain=_drain)
            return SyncStreamProxy(result, observer)
        if isinstance(result, AsyncStream):
            observer = StreamObserver(call, injected, BODIES.request_id(result.response))
            end_with_response(result, observer, is_async=True, drain_async=_drain_async)
            return AsyncStreamProxy(result, observer)
        if isinstance(result, LegacyAPIResponse) and not call.request.stream:
            # with_raw_response: the body is read already; parse() caches, so the user's own parse() is free.
            parsed = result.parse()
            finish_body(call, parsed, BODIES.request_id(result))
            return result
        if isinstance(result, (LegacyAPIResponse, APIResponse, AsyncAPIResponse)):
            observe_parsed = functools.partial(observe, call, injected=injected)
            proxy = AsyncRawResponseProxy if isinstance(result, AsyncAPIResponse) else SyncRawResponseProxy
            return proxy(result, call, observe_parsed, BODIES)
        finish_body(call, result, None)
    except Exception:
        logger.exception("costspan: could not read an OpenAI response; the call was not affected")
        call.finish(None, None)
    return result


# How long closing a stream may wait for the usage chunk costspan asked for, once every choice has finished: the
# provider sends it right after the last finish_reason chunk, so it has arrived or is about to.
DRAIN_SECONDS = 0.25


def _drain(stream: Stream[Any], observer: StreamObserver) -> None:
    """Read the usage chunk costspan asked for, if the stream still owes it, at most ``DRAIN_SECONDS``: a read
    still waiting then is ended by shutting the socket's read side (the response is being closed anyway). Without
    a socket of this response alone to bound the read with (HTTP/2 shares one among requests; a mock transport has
    none), nothing is read."""
    if not observer.awaits_usage():
        return
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
    if not observer.awaits_usage():
        return
    observer.reading = True
    try:
        observer.hides(await asyncio.wait_for(stream.__anext__(), DRAIN_SECONDS))
    except Exception:  # ended, timed out, or not under asyncio: no usage
        logger.debug("costspan: no usage chunk after a stream was closed", exc_info=True)
    finally:
        observer.reading = False
