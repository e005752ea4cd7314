"""The middleware in a real Django app served by werkzeug's WSGI server on loopback, driven by httpx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from costspan import semconv  # noqa: E402
from costspan.budgets.guard import Budget, BudgetGuard  # noqa: E402
from costspan.budgets.ledger import MemoryLedger  # noqa: E402
from costspan.providers.openai.fake import FakeOpenAI  # noqa: E402
from tests.conftest import Pipeline, make_pipeline  # noqa: E402
from tests.test_middleware import INTERNAL_TOKEN, QUOTA_BODY, serve_werkzeug  # noqa: E402

FAKE: dict[str, FakeOpenAI] = {}


def chat(request: Any, chat_id: str) -> Any:
    from django.http import JsonResponse

    client = openai.OpenAI(base_url=FAKE["fake"].base_url, api_key="sk-test-not-a-secret", max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"chat {chat_id}"}], max_tokens=16
    )
    return JsonResponse({"answer": answer.choices[0].message.content, "baggage": request.headers.get("baggage")})


urlpatterns = [path("api/v1/chat/<str:chat_id>", chat)]  # this module is the URLconf


@pytest.fixture(scope="module")
def base_url(fake_openai: FakeOpenAI) -> Iterator[str]:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=["costspan.attribution.middleware.CostspanDjangoMiddleware"],
            COSTSPAN_MIDDLEWARE={
                "resolver": "tests.test_middleware.who",
                "trusted": "tests.test_middleware.is_internal",
                "environment": "test",
            },
            SECRET_KEY="not-a-secret",
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application

    FAKE["fake"] = fake_openai
    yield from serve_werkzeug(get_wsgi_application())


def test_spoofed_baggage_is_removed_and_route_is_the_pattern(http: httpx.Client, instrumented: list[Pipeline]) -> None:
    pipeline = make_pipeline()
    instrumented.append(pipeline)
    response = http.post(
        "/api/v1/chat/8231",
        headers={"authorization": "Bearer acme", "baggage": "customer_id=victim,tenant_tier=gold"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["baggage"] == "tenant_tier=gold"
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert (attributes["customer_id"], attributes["route"], attributes["environment"]) == (
        "acme",
        "/api/v1/chat/<str:chat_id>",
        "test",
    )


def test_trusted_caller(http: httpx.Client, instrumented: list[Pipeline]) -> None:
    pipeline = make_pipeline()
    instrumented.append(pipeline)
    http.post("/api/v1/chat/1", headers={"x-internal-token": INTERNAL_TOKEN, "baggage": "customer_id=acme"})
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert attributes["customer_id"] == "acme"


def test_budget_exceeded_is_a_429(http: httpx.Client, fake_openai: FakeOpenAI, instrumented: list[Pipeline]) -> None:
    guard = BudgetGuard([Budget({"customer_id": "broke"}, "monthly", Decimal("0.000001"))], MemoryLedger())
    pipeline = make_pipeline(guards=[guard])
    instrumented.append(pipeline)
    response = http.post("/api/v1/chat/1", headers={"authorization": "Bearer broke"})
    assert response.status_code == 429
    assert json.loads(response.content) == QUOTA_BODY
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) > 0
    assert fake_openai.received == []
    attributes = pipeline.span().attributes
    assert attributes is not None
    assert attributes[semconv.COSTSPAN_REFUSED] == "BudgetExceeded"
