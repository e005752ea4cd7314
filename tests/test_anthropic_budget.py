"""Budgets on Anthropic calls: ``max_tokens`` is always present, so the worst case reserved before the call is its
exact output ceiling. Rates: claude-haiku-4-5 in genai-prices 0.2.5 (tests/frozen_prices.py), USD per million:
input 1, 1-hour cache write 2, output 5."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anthropic
import pytest
from anthropic.types import MessageParam

import costspan
from costspan import semconv
from costspan.budgets.guard import Budget, BudgetGuard
from costspan.budgets.ledger import MemoryLedger
from costspan.providers.anthropic.fake import FakeAnthropic
from costspan.providers.anthropic.limits import estimate_input_tokens
from tests.conftest import Pipeline, make_pipeline

HAIKU = "claude-haiku-4-5-20251001"
# "role" + "user" + "content" + the 25-character text = 40 characters: 10 tokens, + 3 x (1 message + 1) = 16.
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    fake.state.received.clear()
    with anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


def guarded(instrumented: list[Pipeline], cap: str) -> Pipeline:
    guard = BudgetGuard([Budget({"customer_id": "acme"}, "monthly", Decimal(cap))], MemoryLedger())
    pipeline = make_pipeline(guards=[guard])
    instrumented.append(pipeline)
    return pipeline


def reserved(pipeline: Pipeline) -> float:
    (event,) = [e for e in pipeline.span().events if e.name == semconv.EVENT_BUDGET_EXCEEDED]
    return float(event.attributes[semconv.COSTSPAN_BUDGET_RESERVED_USD])  # type: ignore[index, arg-type]


def test_refused_before_sending_with_the_exact_output_ceiling(
    fake: FakeAnthropic, client: anthropic.Anthropic, instrumented: list[Pipeline]
) -> None:
    assert estimate_input_tokens({"messages": HELLO}) == 16
    pipeline = guarded(instrumented, "0.005")
    with costspan.attribute(customer_id="acme"), pytest.raises(costspan.BudgetExceeded):
        client.messages.create(model=HAIKU, max_tokens=1_000, messages=HELLO)
    assert fake.received == []  # nothing was sent
    assert pipeline.span().attributes[semconv.COSTSPAN_REFUSED] == "BudgetExceeded"  # type: ignore[index]
    # 16 x $1 + 1,000 x $5 per million = $0.005016
    assert reserved(pipeline) == pytest.approx(0.005016)


def test_a_one_hour_cache_breakpoint_reserves_the_prompt_at_the_write_rate(
    fake: FakeAnthropic, client: anthropic.Anthropic, instrumented: list[Pipeline]
) -> None:
    cached: list[MessageParam] = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "Hello there, how are you?",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                }
            ],
        }
    ]
    # role, user, content, type, text, text and the 25-character text = 52 characters: 13 tokens, + 6 = 19.
    assert estimate_input_tokens({"messages": cached}) == 19
    pipeline = guarded(instrumented, "0.005")
    with costspan.attribute(customer_id="acme"), pytest.raises(costspan.BudgetExceeded):
        client.messages.create(model=HAIKU, max_tokens=1_000, messages=cached)
    # All 19 written for an hour: 19 x $2 + 1,000 x $5 per million = $0.005038
    assert reserved(pipeline) == pytest.approx(0.005038)


def test_count_tokens_is_never_refused(
    fake: FakeAnthropic, client: anthropic.Anthropic, instrumented: list[Pipeline]
) -> None:
    pipeline = guarded(instrumented, "0.000001")
    with costspan.attribute(customer_id="acme"):
        assert client.messages.count_tokens(model=HAIKU, messages=HELLO).input_tokens == 11
    assert semconv.COSTSPAN_REFUSED not in (pipeline.span().attributes or {})
