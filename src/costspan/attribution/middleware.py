"""Request middleware: trusted attribution for every OpenAI call a request makes, and budget refusals as HTTP.

For each request it

- removes the attribution keys (``feature``, ``route``, ``customer_id``, ``environment`` by default) from the
  inbound ``baggage`` header and from any baggage already extracted, unless the app's ``trusted`` predicate
  accepts the caller: a client cannot bill another customer or dodge a cap. Other baggage passes untouched;
- sets ``route`` to the framework's route template (``/api/v1/chat/{chat_id}``, never the id), ``environment``
  from its argument, and whatever the app's ``resolver`` returns (``customer_id`` and ``feature``, typically from
  the authenticated principal);
- answers ``BudgetExceeded`` with ``429`` and ``Retry-After``, ``BudgetUnavailable`` with ``503`` and
  ``PromptTooLarge`` with ``413``, each with a JSON body ``{"error": ..., "message": ...}``.

FastAPI / Starlette::

    app.add_middleware(CostspanASGIMiddleware, resolver=who, trusted=is_internal, environment="prod")

Flask::

    CostspanWSGIMiddleware.for_flask(app, resolver=who, trusted=is_internal, environment="prod")

Django: ``"costspan.attribution.middleware.CostspanDjangoMiddleware"`` in ``MIDDLEWARE``, options in
``settings.COSTSPAN_MIDDLEWARE``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from opentelemetry import baggage, context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context

from costspan.attribution.baggage import CostspanRefusal
from costspan.config import Settings

logger = logging.getLogger("costspan")

_WARN_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """What the resolver and the trust predicate see of a request, the same for ASGI and WSGI."""

    method: str
    path: str
    route: str | None  # the route template, when the framework matched one
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    client: str | None  # the peer address
    raw: Any  # the ASGI scope or the WSGI environ, for anything framework-specific (e.g. scope["user"])


Resolver = Callable[[InboundRequest], Mapping[str, str] | None]
Trusted = Callable[[InboundRequest], bool]


def _member_key(member: str) -> str:
    # Decoded as the W3C propagator decodes it, so "customer%5Fid=x" is recognised as customer_id too.
    return unquote_plus(member.split(";", 1)[0].split("=", 1)[0].strip(" \t")).strip()


def strip_baggage(header: str, keys: frozenset[str]) -> str:
    """The baggage header without its members for ``keys``; the other members are kept byte for byte."""
    return ",".join(member for member in header.split(",") if _member_key(member) not in keys)


def refusal_response(refusal: CostspanRefusal) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, JSON body) for a refusal an HTTP caller can act on; None for the others."""
    if refusal.http_status is None:
        return None  # e.g. MissingAttributionError: a bug in the app, not the caller's doing
    headers = {"content-type": "application/json"}
    if refusal.retry_after_s is not None:
        headers["retry-after"] = str(refusal.retry_after_s)
    return refusal.http_status, headers, _body(refusal.error_code, refusal.client_message)


def _body(error: str, message: str) -> bytes:
    return json.dumps({"error": error, "message": message}).encode()


def _find_refusal(exc: BaseException) -> CostspanRefusal | None:
    if isinstance(exc, CostspanRefusal):
        return exc
    for inner in getattr(exc, "exceptions", ()):  # an ExceptionGroup from a task group
        found = _find_refusal(inner)
        if found is not None:
            return found
    return None


class _Attribution:
    """The policy both middlewares apply: which baggage to drop, which to set."""

    def __init__(
        self,
        resolver: Resolver | None,
        trusted: Trusted | None,
        environment: str | None,
        attribution_keys: Iterable[str] | None,
    ) -> None:
        self.resolver = resolver
        self.trusted = trusted
        self.environment = environment
        self.keys = frozenset(attribution_keys if attribution_keys is not None else Settings.load().attribution_keys)
        self._last_warning: dict[str, float] = {}

    def is_trusted(self, request: InboundRequest) -> bool:
        if self.trusted is None:
            return False
        try:
            return bool(self.trusted(request))
        except Exception:
            self._warn("trusted", "costspan: the trusted-caller predicate failed; treating the caller as untrusted")
            return False

    def context(self, request: InboundRequest, trusted: bool, inbound_baggage: str | None) -> Context:
        """The request's context: untrusted attribution removed, ours set."""
        ctx = context.get_current()
        honoured: dict[str, str] = {}
        if trusted:
            if inbound_baggage:
                extracted = W3CBaggagePropagator().extract({"baggage": inbound_baggage}, Context())
                honoured = {k: str(v) for k, v in baggage.get_all(extracted).items() if k in self.keys}
        else:
            for key in self.keys:  # in case an outer middleware extracted the header already
                ctx = baggage.remove_baggage(key, ctx)
        ours: dict[str, str] = {}
        if request.route:
            ours["route"] = request.route
        if self.environment:
            ours["environment"] = self.environment
        if self.resolver is not None:
            try:
                resolved = self.resolver(request) or {}
                ours.update({k: str(v) for k, v in resolved.items() if v})
            except Exception:
                self._warn("resolver", "costspan: the attribution resolver failed; the request goes on without it")
        for key, value in {**ours, **honoured}.items():  # a trusted caller's values win
            ctx = baggage.set_baggage(key, value, ctx)
        return ctx

    def _warn(self, topic: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(topic, -_WARN_INTERVAL_S) >= _WARN_INTERVAL_S:
            self._last_warning[topic] = now
            logger.exception(message)


# --- ASGI ---------------------------------------------------------------------------------------------------


def starlette_route(routes: Iterable[Any], scope: Mapping[str, Any], prefix: str = "") -> str | None:
    """The template of the Starlette/FastAPI route that will handle ``scope``, looking into mounted routers.

    The router itself only records the route after middleware has run, so this matches the way it will.
    """
    from starlette.routing import Match, Mount

    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        if isinstance(route, Mount):
            inner = starlette_route(route.routes, {**scope, **child}, prefix + path)
            return inner or prefix + path
        if match is Match.FULL:
            return prefix + path
        if partial is None:
            partial = prefix + path  # the path matched but not the method: the router answers 405 from it
    return partial


def _asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


class CostspanASGIMiddleware:
    """ASGI middleware (Starlette, FastAPI). Add it with ``app.add_middleware`` so that it sits inside Starlette's
    error handling and sees a ``BudgetExceeded`` raised by an endpoint before any 500 is sent."""

    def __init__(
        self,
        app: Any,
        *,
        resolver: Resolver | None = None,
        trusted: Trusted | None = None,
        environment: str | None = None,
        attribution_keys: Iterable[str] | None = None,
        route_resolver: Callable[[MutableMapping[str, Any]], str | None] | None = None,
    ) -> None:
        self.app = app
        self.attribution = _Attribution(resolver, trusted, environment, attribution_keys)
        self.route_resolver = route_resolver

    def _route(self, scope: MutableMapping[str, Any]) -> str | None:
        if self.route_resolver is not None:
            return self.route_resolver(scope)
        router = getattr(scope.get("app"), "router", None) or getattr(self.app, "router", None)
        routes = getattr(router, "routes", None)
        return starlette_route(routes, scope) if routes else None

    def _prepare(self, scope: MutableMapping[str, Any]) -> tuple[MutableMapping[str, Any], Context]:
        keys = self.attribution.keys
        headers: list[tuple[bytes, bytes]] = []
        inbound: list[str] = []
        for name, value in scope.get("headers") or ():
            if name.lower() != b"baggage":
                headers.append((name, value))
                continue
            text = value.decode("latin-1")
            inbound.append(text)
            kept = strip_baggage(text, keys)
            if kept.strip():
                headers.append((name, kept.encode("latin-1")))
        client = scope.get("client")
        request = InboundRequest(
            method=scope.get("method", ""),
            path=scope.get("path", ""),
            route=None,
            headers=_asgi_headers(scope.get("headers") or ()),
            client=client[0] if client else None,
            raw=scope,
        )
        trusted = self.attribution.is_trusted(request)
        scope = {**scope, "headers": scope["headers"] if trusted else headers}
        try:
            route = self._route(scope)
        except Exception:
            logger.exception("costspan: could not match the request's route template")
            route = None
        request = InboundRequest(request.method, request.path, route, request.headers, request.client, scope)
        return scope, self.attribution.context(request, trusted, ", ".join(inbound) or None)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            scope, ctx = self._prepare(scope)
        except Exception:
            # Never let attribution break a request, and never let a failure here leak inbound baggage.
            logger.exception("costspan: could not attribute a request; its baggage header is dropped")
            scope = {**scope, "headers": [(n, v) for n, v in scope.get("headers") or () if n.lower() != b"baggage"]}
            ctx = context.get_current()
            for key in self.attribution.keys:
                ctx = baggage.remove_baggage(key, ctx)
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        token = context.attach(ctx)
        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            refusal = _find_refusal(exc)
            answer = refusal_response(refusal) if refusal is not None else None
            if answer is None or started or scope["type"] != "http":
                raise
            status, headers, body = answer
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (k.encode(), v.encode()) for k, v in {**headers, "content-length": str(len(body))}.items()
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            context.detach(token)


# --- WSGI ---------------------------------------------------------------------------------------------------


def _wsgi_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    headers = {
        key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = str(environ[key])
    return headers


class _AttributedBody:
    """A WSGI response body whose iteration runs in the request's context (streamed responses call OpenAI too)."""

    def __init__(self, body: Iterable[bytes], ctx: Context) -> None:
        self._body = body
        self._iterator: Iterator[bytes] = iter(body)
        self._ctx = ctx

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = context.attach(self._ctx)
        try:
            return next(self._iterator)
        finally:
            context.detach(token)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


class CostspanWSGIMiddleware:
    """WSGI middleware. ``route_resolver`` maps the environ to the route template. For Flask use
    ``CostspanWSGIMiddleware.for_flask(app)``, which also installs the error handler for refusals; for Django,
    ``CostspanDjangoMiddleware``."""

    def __init__(
        self,
        app: Any,
        *,
        resolver: Resolver | None = None,
        trusted: Trusted | None = None,
        environment: str | None = None,
        attribution_keys: Iterable[str] | None = None,
        route_resolver: Callable[[Mapping[str, Any]], str | None] | None = None,
    ) -> None:
        self.app = app
        self.attribution = _Attribution(resolver, trusted, environment, attribution_keys)
        self.route_resolver = route_resolver

    @classmethod
    def for_flask(cls, flask_app: Any, **options: Any) -> CostspanWSGIMiddleware:
        """Wrap ``flask_app.wsgi_app`` and answer refusals from views (Flask turns exceptions into 500 itself)."""
        from flask import Response

        def answer(refusal: CostspanRefusal) -> Any:
            answered = refusal_response(refusal)
            if answered is None:
                raise refusal  # the app's own bug: Flask's usual 500, logged
            status, headers, body = answered
            return Response(body, status=status, headers=headers)

        flask_app.register_error_handler(CostspanRefusal, answer)
        options.setdefault("route_resolver", flask_route(flask_app))
        middleware = cls(flask_app.wsgi_app, **options)
        flask_app.wsgi_app = middleware
        return middleware

    def _prepare(self, environ: dict[str, Any]) -> Context:
        inbound = environ.get("HTTP_BAGGAGE")
        request = InboundRequest(
            method=environ.get("REQUEST_METHOD", ""),
            path=environ.get("PATH_INFO", ""),
            route=None,
            headers=_wsgi_headers(environ),
            client=environ.get("REMOTE_ADDR"),
            raw=environ,
        )
        trusted = self.attribution.is_trusted(request)
        if inbound is not None and not trusted:
            kept = strip_baggage(inbound, self.attribution.keys)
            if kept.strip():
                environ["HTTP_BAGGAGE"] = kept
            else:
                del environ["HTTP_BAGGAGE"]
        route = None
        if self.route_resolver is not None:
            try:
                route = self.route_resolver(environ)
            except Exception:
                logger.exception("costspan: could not match the request's route template")
        request = InboundRequest(request.method, request.path, route, request.headers, request.client, environ)
        return self.attribution.context(request, trusted, inbound)

    def context_for(self, environ: dict[str, Any]) -> Context:
        """Strip the untrusted baggage from ``environ``; the request's context. Never raises."""
        try:
            return self._prepare(environ)
        except Exception:
            logger.exception("costspan: could not attribute a request; its baggage header is dropped")
            environ.pop("HTTP_BAGGAGE", None)
            ctx = context.get_current()
            for key in self.attribution.keys:
                ctx = baggage.remove_baggage(key, ctx)
            return ctx

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ctx = self.context_for(environ)
        token = context.attach(ctx)
        try:
            body = self.app(environ, start_response)
        except CostspanRefusal as refusal:
            answer = refusal_response(refusal)
            if answer is None:
                raise
            status, headers, payload = answer
            phrase = {413: "Payload Too Large", 429: "Too Many Requests", 503: "Service Unavailable"}[status]
            start_response(f"{status} {phrase}", [*headers.items(), ("content-length", str(len(payload)))])
            return [payload]
        finally:
            context.detach(token)
        return _AttributedBody(body, ctx)


def flask_route(flask_app: Any) -> Callable[[Mapping[str, Any]], str | None]:
    """A route resolver from Flask's URL map: ``/api/v1/chat/<chat_id>`` as Flask writes it."""
    from werkzeug.exceptions import HTTPException

    def resolve(environ: Mapping[str, Any]) -> str | None:
        try:
            rule, _ = flask_app.url_map.bind_to_environ(environ).match(return_rule=True)
        except HTTPException:
            return None
        return str(rule.rule)

    return resolve


# --- Django -------------------------------------------------------------------------------------------------


def django_route(environ: Mapping[str, Any]) -> str | None:
    """A route resolver from Django's URLconf: ``/api/v1/chat/<str:chat_id>`` as the pattern writes it."""
    from django.urls import Resolver404, resolve

    try:
        route = resolve(environ.get("PATH_INFO") or "/").route
    except Resolver404:
        return None
    return "/" + str(route).lstrip("^/") if route else None


class CostspanDjangoMiddleware:
    """Django middleware: put ``"costspan.attribution.middleware.CostspanDjangoMiddleware"`` in ``MIDDLEWARE`` (after
    OpenTelemetry's, if any) and its options in ``settings.COSTSPAN_MIDDLEWARE``, e.g.
    ``{"resolver": "myapp.auth.who", "trusted": "myapp.auth.is_internal", "environment": "prod"}`` (callables or
    dotted paths). It answers refusals raised by views, which Django would otherwise turn into 500s."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.conf import settings
        from django.utils.module_loading import import_string

        options = {
            key: import_string(value) if isinstance(value, str) and key in ("resolver", "trusted") else value
            for key, value in getattr(settings, "COSTSPAN_MIDDLEWARE", {}).items()
        }
        options.setdefault("route_resolver", django_route)
        self.get_response = get_response
        self._wsgi = CostspanWSGIMiddleware(None, **options)

    def __call__(self, request: Any) -> Any:
        token = context.attach(self._wsgi.context_for(request.META))
        try:
            return self.get_response(request)
        finally:
            context.detach(token)

    def process_exception(self, request: Any, exception: Exception) -> Any:
        answer = refusal_response(exception) if isinstance(exception, CostspanRefusal) else None
        if answer is None:
            return None
        from django.http import HttpResponse

        status, headers, body = answer
        return HttpResponse(body, status=status, headers=headers)
