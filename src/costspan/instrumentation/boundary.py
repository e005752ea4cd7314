"""The never-raise boundary every provider's patch layer calls around the SDK's request.

Starting a call, making its span current, and reading the server address must never break the user's call: a
failure here is logged and the call goes on uninstrumented. Only a ``CostspanRefusal`` (strict attribution,
budget caps) escapes, before anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextvars import Token
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context
from opentelemetry.context import Context

from costspan.attribution.baggage import CostspanRefusal
from costspan.instrumentation.call import Call, RequestInfo, Telemetry

logger = logging.getLogger("costspan")


def start(telemetry: Telemetry, request: RequestInfo) -> Call | None:
    """Open the call's span and run the guards; None when that failed (the call goes on uninstrumented)."""
    try:
        return telemetry.start(request)
    except CostspanRefusal:
        raise
    except Exception:
        logger.exception("costspan: could not start a span; this call is not instrumented")
        return None


async def start_in_thread(telemetry: Telemetry, request: RequestInfo) -> Call | None:
    """``start`` for guards that wait on a ledger on disk or across the network: in a worker thread (which sees
    this task's context, hence its Baggage), so that the event loop runs other tasks meanwhile.

    A task cancelled meanwhile cannot stop the thread: the call it starts is then failed as cancelled, which ends
    its span and releases what its guards reserved (nothing was sent). Whichever of the two finishes second,
    the thread or the cancellation, does it, so it happens even if the event loop is gone by then."""
    lock = threading.Lock()
    started: list[Call | None] = []
    cancelled = False

    def start_here() -> Call | None:
        call = start(telemetry, request)
        with lock:
            started.append(call)
            if not cancelled:
                return call
        if call is not None:
            call.fail(asyncio.CancelledError())
        return None

    try:
        return await asyncio.to_thread(start_here)
    except asyncio.CancelledError:
        with lock:
            cancelled = True
            call = started[0] if started else None
        if call is not None:
            call.fail(asyncio.CancelledError())
        raise


def attach(call: Call) -> Token[Context] | None:
    """The call's span made current while the SDK sends the request and parses a whole response: an HTTP
    instrumentation's span is then its child, and a propagator names it in ``traceparent``."""
    try:
        return call.attach()
    except Exception:
        logger.exception("costspan: could not make the span current; the call goes on")
        return None


def detach(token: Token[Context] | None) -> None:
    if token is not None:
        context.detach(token)  # logs, never raises


_servers: dict[int, tuple[Any, tuple[str | None, int | None]]] = {}


def server_of(base_url: Any) -> tuple[str | None, int | None]:
    """(host, port) of a client's base URL, never its userinfo (credentials stay out of telemetry). Cached per
    URL object: formatting the URL costs more than the rest of reading a request."""
    cached = _servers.get(id(base_url))
    if cached is not None and cached[0] is base_url:
        return cached[1]
    if len(_servers) > 256:  # apps that make a client per request must not grow this forever
        _servers.clear()
    parts = urlsplit(str(base_url))
    server = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    _servers[id(base_url)] = (base_url, server)
    return server
