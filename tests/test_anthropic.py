"""Anthropic through the real ``anthropic`` SDK against the loopback stand-in, with hand-computed dollars.

Rates are genai-prices 0.2.5's, frozen in tests/frozen_prices.py (USD per million tokens unless said):
- claude-haiku-4-5: input 1, output 5, cache read 0.1, 5-minute cache write 1.25, 1-hour cache write 2, web
  searches 10 per thousand.
- claude-sonnet-4-5: input 3, output 15, cache read 0.3, 5-minute write 3.75, 1-hour write 6; past 200,000 input
  tokens (cache reads and writes counted) 6 / 22.5 / 0.6 / 7.5 / 12 for the whole request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest
from anthropic.types import MessageParam
from opentelemetry import baggage, context

from costspan import semconv
from costspan.cli.reprice import reprice_row
from costspan.pricing.pricer import Pricer
from costspan.providers.anthropic.fake import FakeAnthropic, Scripted
from costspan.providers.anthropic.patch import provider_of
from costspan.store.exporter import row_from_span
from costspan.store.sqlite import Store
from tests.conftest import Pipeline, make_pipeline

HAIKU = "claude-haiku-4-5-20251001"
SONNET = "claude-sonnet-4-5-20250929"
# 25 characters: 25 // 4 + 5 = 11 input tokens at the stand-in.
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    fake.state.script.clear()
    with anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


@pytest.fixture
def async_client(fake: FakeAnthropic) -> anthropic.AsyncAnthropic:
    fake.state.script.clear()
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0)


def cost(pipeline: Pipeline) -> Decimal:
    value = pipeline.span().attributes[semconv.GEN_AI_USAGE_COST_AMOUNT]  # type: ignore[index]
    return Decimal(str(value))


def test_create_prices_uncached_input_cache_writes_by_lifetime_and_reads(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    # 1,000 uncached + 20,000 read + 3,000 written (2,000 for 5 minutes, 1,000 for an hour) = 24,000 input tokens.
    fake.script(
        Scripted(
            usage={
                "input_tokens": 1_000,
                "cache_read_input_tokens": 20_000,
                "cache_creation_input_tokens": 3_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 2_000, "ephemeral_1h_input_tokens": 1_000},
                "output_tokens": 500,
                "service_tier": "standard",
            }
        )
    )
    message = client.messages.create(model=SONNET, max_tokens=9, messages=HELLO)
    assert message.usage.input_tokens == 1_000  # the user's object is untouched
    span = pipeline.span()
    attrs = span.attributes or {}
    assert span.name == f"chat {SONNET}"
    assert attrs[semconv.GEN_AI_PROVIDER_NAME] == "anthropic"
    assert attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 24_000
    assert attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 20_000
    assert attrs[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 3_000
    assert attrs[semconv.COSTSPAN_USAGE_CACHE_WRITE_1H_TOKENS] == 1_000
    assert attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("max_tokens",)
    assert str(attrs[semconv.COSTSPAN_REQUEST_ID]).startswith("req_fake_")
    # 1,000 x $3 + 20,000 x $0.30 + 2,000 x $3.75 + 1,000 x $6 + 500 x $15, per million:
    # 0.003 + 0.006 + 0.0075 + 0.006 + 0.0075 = $0.03
    assert cost(pipeline) == Decimal("0.03")
    assert attrs[semconv.COSTSPAN_COST_CACHE_WRITE] == pytest.approx(0.0135)
    assert attrs[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_PRICED


@pytest.mark.parametrize(
    ("uncached", "expected"),
    [
        # 150,000 + 40,000 read + 10,000 written = 200,000: not past the step.
        # 150,000 x 3 + 40,000 x 0.3 + 10,000 x 3.75 + 1,000 x 15 = 0.45 + 0.012 + 0.0375 + 0.015
        (150_000, Decimal("0.5145")),
        # 200,001: the whole request at the long-context rates.
        # 150,001 x 6 + 40,000 x 0.6 + 10,000 x 7.5 + 1,000 x 22.5 = 0.900006 + 0.024 + 0.075 + 0.0225
        (150_001, Decimal("1.021506")),
    ],
)
def test_long_context_step_counts_cache_tokens(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic, uncached: int, expected: Decimal
) -> None:
    fake.script(
        Scripted(
            usage={
                "input_tokens": uncached,
                "cache_read_input_tokens": 40_000,
                "cache_creation_input_tokens": 10_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 10_000, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 1_000,
            }
        )
    )
    client.messages.create(model=SONNET, max_tokens=1_000, messages=HELLO)
    assert cost(pipeline) == expected


def test_web_searches_are_priced_per_thousand(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(
        Scripted(usage={"input_tokens": 1_000, "output_tokens": 200, "server_tool_use": {"web_search_requests": 3}})
    )
    client.messages.create(model=HAIKU, max_tokens=200, messages=HELLO)
    # 1,000 x $1 + 200 x $5 per million + 3 x $10 per thousand = 0.001 + 0.001 + 0.03
    assert cost(pipeline) == Decimal("0.032")
    assert pipeline.span().attributes[semconv.COSTSPAN_USAGE_WEB_SEARCH_REQUESTS] == 3  # type: ignore[index]


def test_stream_read_to_the_end(pipeline: Pipeline, client: anthropic.Anthropic) -> None:
    stream = client.messages.create(model=HAIKU, max_tokens=9, messages=HELLO, stream=True)
    events = [event.type for event in stream]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    attrs = pipeline.span().attributes or {}
    assert attrs[semconv.GEN_AI_REQUEST_STREAM] is True
    assert attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 9  # message_delta's count, not message_start's 1
    # 11 x $1 + 9 x $5 per million = $0.000056
    assert cost(pipeline) == Decimal("0.000056")


def test_stream_helper_text_and_final_message(pipeline: Pipeline, client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=HAIKU, max_tokens=9, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("Here is a") and final.usage.output_tokens == 9
    assert cost(pipeline) == Decimal("0.000056")


def test_stream_closed_early_is_incomplete(pipeline: Pipeline, client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=HAIKU, max_tokens=9, messages=HELLO) as stream:
        next(iter(stream))  # message_start only: its output count is a placeholder
    attrs = pipeline.span().attributes or {}
    assert attrs[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_INCOMPLETE
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in attrs


def test_stream_error_event_fails_the_span(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(Scripted(error_after=4))
    with pytest.raises(anthropic.APIStatusError):
        for _ in client.messages.create(model=HAIKU, max_tokens=9, messages=HELLO, stream=True):
            pass
    attrs = pipeline.span().attributes or {}
    assert attrs[semconv.ERROR_TYPE]
    assert attrs[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_INCOMPLETE


def test_with_raw_response_and_beta(pipeline: Pipeline, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model=HAIKU, max_tokens=9, messages=HELLO)
    assert raw.parse().usage.output_tokens == 9
    client.beta.messages.create(
        model=HAIKU, max_tokens=9, messages=[{"role": "user", "content": "Hello there, how are you?"}]
    )
    spans = pipeline.spans()
    assert len(spans) == 2
    assert all(Decimal(str(s.attributes[semconv.GEN_AI_USAGE_COST_AMOUNT])) == Decimal("0.000056") for s in spans)  # type: ignore[index]


def test_count_tokens_costs_nothing(pipeline: Pipeline, client: anthropic.Anthropic) -> None:
    assert client.messages.count_tokens(model=HAIKU, messages=HELLO).input_tokens == 11
    attrs = pipeline.span().attributes or {}
    assert attrs[semconv.GEN_AI_OPERATION_NAME] == "count_tokens"
    assert attrs[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0


def test_rate_limited_call_fails_without_cost(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.script(Scripted(status=529, retry_after=0))
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model=HAIKU, max_tokens=9, messages=HELLO)
    attrs = pipeline.span().attributes or {}
    assert attrs[semconv.ERROR_TYPE] == "529"
    assert attrs[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_NO_USAGE


def test_retries_stay_in_one_span(pipeline: Pipeline, fake: FakeAnthropic) -> None:
    fake.state.script.clear()
    fake.script(Scripted(status=429, retry_after=0))
    with anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=1) as retrying:
        retrying.messages.create(model=HAIKU, max_tokens=9, messages=HELLO)
    assert cost(pipeline) == Decimal("0.000056")


def test_vertex_and_bedrock_are_not_priced_at_anthropic_rates(pipeline: Pipeline, fake: FakeAnthropic) -> None:
    vertex = anthropic.AnthropicVertex(
        base_url=fake.base_url, region="us-east5", project_id="p", access_token="t", max_retries=0
    )
    vertex.messages.create(model="claude-haiku-4-5@20251001", max_tokens=9, messages=HELLO)
    attrs = pipeline.span().attributes or {}
    assert attrs[semconv.GEN_AI_PROVIDER_NAME] == "gcp.vertex_ai"
    assert attrs[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_UNKNOWN_MODEL
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in attrs
    # Bedrock signs requests with botocore, which the tests do not install: its name, and its price, are checked.
    bedrock = anthropic.AnthropicBedrock(aws_access_key="a", aws_secret_key="b", aws_region="us-east-1")
    assert provider_of(bedrock) == "aws.bedrock"
    from costspan.pricing.pricer import BillableCall, provider_price_id
    from costspan.usage import Usage

    telemetry = pipeline.instrumentor.telemetry
    assert telemetry is not None
    billed = telemetry.pricer.bill(
        BillableCall(
            Usage(100, 10),
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            None,
            provider_price_id("aws.bedrock"),
            None,
            False,
            0,
        )
    )
    assert billed.status == semconv.STATUS_UNKNOWN_MODEL


def test_sdk_spans_are_off_while_instrumented(pipeline: Pipeline, client: anthropic.Anthropic) -> None:
    client.messages.create(model=HAIKU, max_tokens=9, messages=HELLO)
    assert [s.instrumentation_scope.name for s in pipeline.spans()] == ["costspan.instrumentor"]  # type: ignore[union-attr]


def test_uninstrument_restores_the_sdk(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    sdk_tracer = anthropic._base_client.BaseClient.__dict__.get("_tracer")  # anthropic 2.x traces its own calls
    made = make_pipeline()
    made.instrumentor.uninstrument()
    client.messages.create(model=HAIKU, max_tokens=9, messages=HELLO)
    assert made.spans() == []
    assert type(client).__dict__.get("_tracer") is None  # the SDK's own property is back on its base class
    assert anthropic._base_client.BaseClient.__dict__.get("_tracer") is sdk_tracer


def test_async_calls_each_keep_their_attribution(pipeline: Pipeline, async_client: anthropic.AsyncAnthropic) -> None:
    count = 1_000
    # A thousand connections at once can wait past the SDK's 5 s connect timeout on a busy 2-core machine; this
    # test is about attribution, not the stand-in's accept rate.
    patient = async_client.with_options(timeout=120.0)

    async def one(i: int) -> None:
        token = context.attach(baggage.set_baggage("customer_id", f"c{i}"))
        try:
            await patient.messages.create(model=HAIKU, max_tokens=9, messages=HELLO)
        finally:
            context.detach(token)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(count)))
        await async_client.close()

    asyncio.run(main())
    spans = pipeline.spans()
    assert len(spans) == count
    customers = {s.attributes["customer_id"] for s in spans}  # type: ignore[index]
    assert customers == {f"c{i}" for i in range(count)}
    assert all(Decimal(str(s.attributes[semconv.GEN_AI_USAGE_COST_AMOUNT])) == Decimal("0.000056") for s in spans)  # type: ignore[index]


def test_async_stream(pipeline: Pipeline, async_client: anthropic.AsyncAnthropic) -> None:
    async def main() -> str:
        async with async_client.messages.stream(model=HAIKU, max_tokens=9, messages=HELLO) as stream:
            text = "".join([t async for t in stream.text_stream])
        await async_client.close()
        return text

    assert asyncio.run(main()).startswith("Here")
    assert cost(pipeline) == Decimal("0.000056")


def test_a_priority_call_stays_unpriced_after_reprice(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic, tmp_path: Path
) -> None:
    # The data has no priority rate for Haiku 4.5: the span is unknown_tier, and the stored row must say the tier
    # too, or `costspan reprice` would price it at the standard rate, a guess.
    usage = {"input_tokens": 11, "output_tokens": 9, "service_tier": "priority"}
    fake.script(Scripted(usage=usage))
    client.messages.create(model=HAIKU, max_tokens=64, messages=HELLO)
    assert pipeline.span().attributes[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_UNKNOWN_TIER  # type: ignore[index]
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        store.insert([row for span in pipeline.spans() if (row := row_from_span(span)) is not None])
        (stored,) = store.query("SELECT * FROM spans")
    assert stored["service_tier"] == "priority"
    assert reprice_row(Pricer(), stored).status == semconv.STATUS_UNKNOWN_TIER


def test_reprice_keeps_one_hour_cache_writes_and_web_searches(
    pipeline: Pipeline, fake: FakeAnthropic, client: anthropic.Anthropic, tmp_path: Path
) -> None:
    # Sonnet 4.5: 1,000 x $3 + 1,000 x $6 (1-hour write) + 100 x $15 per million, + 2 searches x $10 per thousand
    # = 0.003 + 0.006 + 0.0015 + 0.02 = $0.0305. Without the two columns, reprice priced the write at the 5-minute
    # rate ($3.75) and dropped the searches.
    usage = {
        "input_tokens": 1_000,
        "cache_creation_input_tokens": 1_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1_000},
        "output_tokens": 100,
        "server_tool_use": {"web_search_requests": 2},
    }
    fake.script(Scripted(usage=usage))
    client.messages.create(model=SONNET, max_tokens=100, messages=HELLO)
    assert cost(pipeline) == Decimal("0.0305")
    with Store(tmp_path / "store.sqlite3") as store:
        store.insert([row for span in pipeline.spans() if (row := row_from_span(span)) is not None])
        (stored,) = store.query("SELECT * FROM spans")
    assert (stored["cache_write_1h_tokens"], stored["web_search_requests"]) == (1_000, 2)
    assert reprice_row(Pricer(), stored).total == Decimal("0.0305")
