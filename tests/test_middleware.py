"""The middleware end to end: a real FastAPI app under uvicorn and a real Flask app under werkzeug's server, both on
loopback, driven by httpx, calling the real openai SDK against FakeOpenAI, with spans from the real OTel SDK."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from opentelemetry import baggage, context
from opentelemetry.baggage.propagation import W3CBaggagePropagator

from costspan import semconv
from costspan.attribution.middleware import (
    CostspanASGIMiddleware,
    CostspanWSGIMiddleware,
    InboundRequest,
    refusal_response,
    starlette_route,
    strip_baggage,
)
from costspan.budgets.guard import Budget, BudgetGuard
from costspan.budgets.ledger import MemoryLedger, RedisLedger
from costspan.providers.openai.fake import FakeOpenAI
from tests.conftest import Pipeline, make_pipeline
from tests.ports import free_port

INTERNAL_TOKEN = "internal-secret"
ATTRIBUTION = frozenset({"feature", "route", "customer_id", "environment"})
QUOTA_BODY = {
    "error": "monthly_ai_quota_exceeded",
    "message": "Your monthly AI quota has been exceeded. Upgrade your plan or contact billing.",
}


def who(request: InboundRequest) -> Mapping[str, str]:
    """Stands in for the app's authentication: ``Authorization: Bearer <customer>``."""
    auth = request.headers.get("authorization", "")
    return {"customer_id": auth.removeprefix("Bearer "), "feature": "chat"} if auth.startswith("Bearer ") else {}


def is_internal(request: InboundRequest) -> bool:
    return request.headers.get("x-internal-token") == INTERNAL_TOKEN


MIDDLEWARE_OPTIONS: dict[str, Any] = {"resolver": who, "trusted": is_internal, "environment": "test"}


# --- pure parts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("customer_id=victim", ""),
        ("customer_id=victim,tenant_tier=gold", "tenant_tier=gold"),
        ("tenant_tier=gold, customer_id=victim;prop=1 ,route=/x", "tenant_tier=gold"),
        ("customer%5Fid=victim,feature=free", ""),  # percent-encoded keys decode to the same key
        (" customer_id = victim ,a=b", "a=b"),
        ("malformed,a=b", "malformed,a=b"),
    ],
)
def test_strip_baggage(header: str, kept: str) -> None:
    assert strip_baggage(header, ATTRIBUTION) == kept


def test_refusal_response_for_other_refusals_is_none() -> None:
    from costspan.attribution.baggage import MissingAttributionError

    assert refusal_response(MissingAttributionError(["customer_id"])) is None


# --- servers ----------------------------------------------------------------------------------------------------


def fastapi_app(fake: FakeOpenAI) -> Any:
    app = FastAPI()
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test-not-a-secret", max_retries=0)

    @app.post("/api/v1/chat/{chat_id}")
    async def chat(chat_id: str, request: Request) -> dict[str, Any]:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"chat {chat_id}"}], max_tokens=16
        )
        return {"answer": answer.choices[0].message.content, "baggage": request.headers.get("baggage")}

    app.add_middleware(CostspanASGIMiddleware, **MIDDLEWARE_OPTIONS)
    return app


def flask_app(fake: FakeOpenAI) -> Any:
    from flask import Flask, request

    app = Flask(__name__)
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test-not-a-secret", max_retries=0)

    @app.post("/api/v1/chat/<chat_id>")
    def chat(chat_id: str) -> dict[str, Any]:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"chat {chat_id}"}], max_tokens=16
        )
        return {"answer": answer.choices[0].message.content, "baggage": request.headers.get("baggage")}

    CostspanWSGIMiddleware.for_flask(app, **MIDDLEWARE_OPTIONS)
    return app


def _wait(ready: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)


def serve_uvicorn(app: Any) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: server.started, "uvicorn")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve_werkzeug(app: Any) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=30)


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def base_url(request: pytest.FixtureRequest, fake_openai: FakeOpenAI) -> Iterator[str]:
    if request.param == "fastapi":
        yield from serve_uvicorn(fastapi_app(fake_openai))
    else:
        yield from serve_werkzeug(flask_app(fake_openai))


def route_template(base_url: str, request: pytest.FixtureRequest) -> str:
    flask = "flask" in request.node.callspec.id
    return "/api/v1/chat/<chat_id>" if flask else "/api/v1/chat/{chat_id}"


# --- attribution ------------------------------------------------------------------------------------------------


def test_spoofed_baggage_never_reaches_a_span_or_the_ledger(
    http: httpx.Client, base_url: str, instrumented: list[Pipeline], request: pytest.FixtureRequest
) -> None:
    ledger = MemoryLedger()
    pipeline = make_pipeline(guards=[BudgetGuard([Budget({"customer_id": "*"}, "monthly", Decimal(10))], ledger)])
    instrumented.append(pipeline)
    response = http.post(
        "/api/v1/chat/8231",
        headers={
            "authorization": "Bearer acme",
            "baggage": "customer_id=victim,feature=free,route=/spoofed,environment=prod,tenant_tier=gold",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["baggage"] == "tenant_tier=gold"  # other baggage passes untouched
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert attributes["customer_id"] == "acme"
    assert attributes["feature"] == "chat"
    assert attributes["environment"] == "test"
    assert attributes["route"] == route_template(base_url, request)  # the template, never the id
    assert "victim" not in repr(dict(attributes))
    assert list(ledger._counters) and all("victim" not in key for key in ledger._counters)
    assert all("customer_id=acme" in key for key in ledger._counters)


def test_spoof_without_a_principal_leaves_customer_unset(http: httpx.Client, instrumented: list[Pipeline]) -> None:
    pipeline = make_pipeline()
    instrumented.append(pipeline)
    response = http.post("/api/v1/chat/1", headers={"baggage": "customer%5Fid=victim"})
    assert response.status_code == 200
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert "customer_id" not in attributes
    assert set(attributes[semconv.COSTSPAN_ATTRIBUTION_MISSING]) == {"customer_id", "feature"}  # type: ignore[arg-type]


def test_a_trusted_internal_callers_baggage_is_honoured(http: httpx.Client, instrumented: list[Pipeline]) -> None:
    pipeline = make_pipeline()
    instrumented.append(pipeline)
    response = http.post(
        "/api/v1/chat/77",
        headers={
            "x-internal-token": INTERNAL_TOKEN,
            "baggage": "customer_id=acme,feature=nightly-digest,route=queue:digest",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["baggage"] == "customer_id=acme,feature=nightly-digest,route=queue:digest"
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert (attributes["customer_id"], attributes["feature"], attributes["route"]) == (
        "acme",
        "nightly-digest",
        "queue:digest",
    )
    assert attributes["environment"] == "test"  # not sent: the service's own value fills it


def test_a_wrong_internal_token_is_not_trusted(http: httpx.Client, instrumented: list[Pipeline]) -> None:
    pipeline = make_pipeline()
    instrumented.append(pipeline)
    http.post("/api/v1/chat/1", headers={"x-internal-token": "guess", "baggage": "customer_id=victim"})
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert "customer_id" not in attributes


# --- budgets as HTTP ------------------------------------------------------------------------------------------


def test_budget_exceeded_is_a_429_with_retry_after(
    http: httpx.Client, fake_openai: FakeOpenAI, instrumented: list[Pipeline]
) -> None:
    guard = BudgetGuard([Budget({"customer_id": "broke"}, "monthly", Decimal("0.000001"))], MemoryLedger())
    pipeline = make_pipeline(guards=[guard])
    instrumented.append(pipeline)
    response = http.post("/api/v1/chat/1", headers={"authorization": "Bearer broke"})
    assert response.status_code == 429
    assert response.json() == QUOTA_BODY
    assert response.headers["content-type"] == "application/json"
    assert 0 < int(response.headers["retry-after"]) <= 31 * 86400
    assert fake_openai.received == []
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert attributes[semconv.COSTSPAN_REFUSED] == "BudgetExceeded"
    # Another customer is not affected.
    assert http.post("/api/v1/chat/1", headers={"authorization": "Bearer acme"}).status_code == 200


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_ledger_down(policy: str, http: httpx.Client, fake_openai: FakeOpenAI, instrumented: list[Pipeline]) -> None:
    dead = RedisLedger.from_url(f"redis://127.0.0.1:{free_port()}/0")
    guard = BudgetGuard([Budget({"customer_id": "*"}, "monthly", Decimal(1))], dead, on_ledger_error=policy)
    instrumented.append(make_pipeline(guards=[guard]))
    response = http.post("/api/v1/chat/1", headers={"authorization": "Bearer acme"})
    if policy == "open":
        assert response.status_code == 200  # a billing guard must not take production down
        assert len(fake_openai.received) == 1
    else:
        assert response.status_code == 503
        assert response.json()["error"] == "ai_budget_unavailable"
        assert response.headers["retry-after"] == "30"
        assert fake_openai.received == []
    assert guard.ledger_errors == 1


# --- without a server -------------------------------------------------------------------------------------------


def test_baggage_an_outer_middleware_extracted_is_removed_too() -> None:
    """OpenTelemetry's own ASGI middleware may have put the inbound baggage in the context already."""
    seen: dict[str, object] = {}

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        seen.update(baggage.get_all())

    middleware = CostspanASGIMiddleware(endpoint, environment="test")
    header = b"customer_id=victim,tenant_tier=gold"
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [(b"baggage", header)]}

    async def outer() -> None:
        token = context.attach(W3CBaggagePropagator().extract({"baggage": header.decode()}))
        try:
            await middleware(scope, None, None)
        finally:
            context.detach(token)

    asyncio.run(outer())
    assert seen == {"tenant_tier": "gold", "environment": "test"}


def test_route_templates_inside_mounted_apps() -> None:
    inner = FastAPI()

    @inner.get("/items/{item_id}")
    def item(item_id: int) -> None: ...

    app = FastAPI()
    app.mount("/shop", inner)

    @app.get("/health")
    def health() -> None: ...

    def scope(method: str, path: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}

    assert starlette_route(app.router.routes, scope("GET", "/shop/items/42")) == "/shop/items/{item_id}"
    assert starlette_route(app.router.routes, scope("GET", "/health")) == "/health"
    assert starlette_route(app.router.routes, scope("POST", "/health")) == "/health"  # 405, still that route
    assert starlette_route(app.router.routes, scope("GET", "/nowhere")) is None
