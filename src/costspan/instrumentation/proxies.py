"""Stand-ins for what an SDK call returns before its span can end: a stream, or a raw response not parsed yet.

Provider-neutral: every Stainless-generated SDK (OpenAI, Anthropic) returns the same shapes, a ``Stream`` /
``AsyncStream`` over an HTTP response and ``APIResponse`` objects with ``parse()`` and ``close()``. What the items
of a stream say is the provider's ``StreamObserver``; how a whole body finishes a call, its ``BodyFinisher``.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import wrapt

from costspan.instrumentation.call import Call


class StreamObserver(Protocol):
    """A provider's watcher of one stream's items for its span."""

    call: Call
    # Inside the SDK stream's __next__, which closes the response as the stream ends: the reader sees that end.
    reading: bool

    def hides(self, item: Any) -> bool:
        """Record an item; True to keep it from the user (an item costspan asked for and the user did not)."""
        ...

    def ended(self, exc: BaseException) -> None:
        """The SDK stream raised: ``StopIteration`` / ``StopAsyncIteration`` at its end, else an error midway."""
        ...

    def abandon(self) -> None:
        """The stream stopped before its end (closed, left, dropped)."""
        ...


@dataclass(frozen=True, slots=True)
class BodyFinisher:
    """How a provider finishes a call from a whole response body, and the header that names its request."""

    finish_body: Callable[[Call, Any, str | None], None]
    request_id_header: str

    def request_id(self, response: Any) -> str | None:
        try:
            value = response.headers.get(self.request_id_header)
            return value if isinstance(value, str) else None
        except Exception:
            return None

    def finish_unparsed(self, call: Call, raw_response: Any) -> None:
        """A raw response closed or dropped without ``parse()``: use its body if it was read, else no usage."""
        if call.finished:
            return
        body = None
        try:
            if not call.request.stream:
                body = json.loads(raw_response.content)
        except Exception:
            body = None
        request_id = self.request_id(raw_response)
        if body is None:
            call.finish(None, request_id, incomplete=call.request.stream)
        else:
            self.finish_body(call, body, request_id)


def end_with_response(
    stream: Any,
    observer: StreamObserver,
    *,
    is_async: bool,
    drain: Callable[[Any, Any], None] | None = None,
    drain_async: Callable[[Any, Any], Awaitable[None]] | None = None,
) -> None:
    """End the span when the stream's HTTP response is closed, which every way of stopping a stream early goes
    through: ``close()`` and ``with`` on the stream, the SDKs' stream helpers (they close the response, not the
    stream) and, for a sync stream, the proxy's finalizer. The SDK also closes it as the stream ends or fails,
    while the proxy reads: the proxy then ends the span, with the error if any. ``drain`` / ``drain_async`` read
    what the stream still owes the span first (OpenAI: the usage chunk costspan asked for)."""
    response = stream.response
    if is_async:
        aclose = response.aclose

        async def closing_async() -> None:
            try:
                if not observer.reading:
                    if drain_async is not None:
                        await drain_async(stream, observer)
                    observer.abandon()
            finally:
                await aclose()

        response.aclose = closing_async
        return
    close = response.close

    def closing() -> None:
        try:
            if not observer.reading:
                if drain is not None:
                    drain(stream, observer)
                observer.abandon()
        finally:
            close()

    response.close = closing


class _ObservedStream:
    """Stands in for the SDK's stream: forwards everything (``close`` and ``with`` too: closing the response ends
    the span, see ``end_with_response``), passes ``isinstance`` checks for the SDK's class.

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
    """The user's ``Stream``, unchanged but for the items the observer hides."""

    __slots__ = ()

    def __init__(self, stream: Any, observer: StreamObserver) -> None:
        super().__init__(stream, observer)
        # Dropped before its end, it is closed like any stream stopped early (the observer's drain still reads).
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


def _close_dropped(stream: Any, observer: StreamObserver) -> None:
    if not observer.call.finished:
        stream.close()


class AsyncStreamProxy(_ObservedStream):
    """The user's ``AsyncStream``, unchanged but for the items the observer hides."""

    __slots__ = ()

    def __init__(self, stream: Any, observer: StreamObserver) -> None:
        super().__init__(stream, observer)
        # Dropped before its end, nothing can be awaited any more: the observer ends the span with what it saw.
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


class _ObservedRawResponse(wrapt.ObjectProxy):  # type: ignore[type-arg]
    def __init__(self, response: Any, call: Call, observe: Callable[[Any], Any], finisher: BodyFinisher) -> None:
        super().__init__(response)
        self._self_call = call
        self._self_observe_parsed = observe
        self._self_finisher = finisher
        self._self_finalizer = weakref.finalize(self, finisher.finish_unparsed, call, self._self_http_response)
        self._self_observed: tuple[Any, Any] | None = None  # (what parse() returned, what the user got)

    @property
    def _self_http_response(self) -> Any:
        return getattr(self.__wrapped__, "http_response", self.__wrapped__)

    def _self_observe(self, parsed: Any) -> Any:
        # The SDK caches parse(): a second call must give the user the same object again, not a second proxy.
        if self._self_observed is not None and self._self_observed[0] is parsed:
            return self._self_observed[1]
        self._self_finalizer.detach()  # from here the parsed body (or its stream proxy) ends the span
        observed = self._self_observe_parsed(parsed)
        self._self_observed = (parsed, observed)
        return observed


class SyncRawResponseProxy(_ObservedRawResponse):
    """``with_raw_response`` and ``with_streaming_response``: the span ends when the body is parsed or closed.
    ``observe`` hands back what the user gets for the parsed body and finishes the span or watches its stream."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_observe(self.__wrapped__.parse(*args, **kwargs))

    def close(self) -> None:
        self.__wrapped__.close()
        self._self_finisher.finish_unparsed(self._self_call, self._self_http_response)


class AsyncRawResponseProxy(_ObservedRawResponse):
    """The async form of ``SyncRawResponseProxy``."""

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_observe(await self.__wrapped__.parse(*args, **kwargs))

    async def close(self) -> None:
        await self.__wrapped__.close()
        self._self_finisher.finish_unparsed(self._self_call, self._self_http_response)
