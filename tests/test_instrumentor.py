"""Every covered SDK surface, sync and async, through the real SDK and a real loopback HTTP server.

Expected dollars are computed by hand from the genai-prices 0.2.5 data frozen in tests/frozen_prices.py (OpenAI
list prices as of 2026-11):
- gpt-4.1: $2.00 input, $0.50 cached input, $8.00 output per million tokens
- gpt-5: $1.25 input, $0.125 cached input, $10.00 output per million
- text-embedding-3-small: $0.02 input per million
- gpt-3.5-turbo-instruct: $1.50 input, $2.00 output per million
- gpt-image-1: $5.00 text input, $10.00 image input, $40.00 output per million
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import baggage, context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import Attributes
from pydantic import BaseModel

from costspan import MissingAttributionError, semconv
from costspan.instrumentation.call import batch_job_context
from costspan.instrumentor import CostspanInstrumentor
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from tests.conftest import Pipeline, make_pipeline

CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
# (1200 - 1024) * 2.00 + 1024 * 0.50 + 300 * 8.00 = 352 + 512 + 2400 = 3264 micro-dollars
CHAT_COST = 0.003264

RESPONSES_USAGE = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 0},
    "output_tokens": 800,
    "output_tokens_details": {"reasoning_tokens": 600},
    "total_tokens": 2800,
}
# gpt-5: 500 * 1.25 + 1500 * 0.125 + 800 * 10.00 = 625 + 187.5 + 8000 = 8812.5 micro-dollars.
# The 600 reasoning tokens are inside the 800 output tokens: adding them again would bill 6000 more.
RESPONSES_COST = 0.0088125

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "How do I reset my password?"}]


def run(maybe_awaitable: Any) -> Any:
    if asyncio.iscoroutine(maybe_awaitable):
        return asyncio.run(maybe_awaitable)
    return maybe_awaitable


def attrs(pipeline: Pipeline) -> dict[str, Any]:
    return dict(pipeline.span().attributes or {})


def assert_chat_priced(pipeline: Pipeline, *, stream: bool) -> dict[str, Any]:
    span = pipeline.span()
    a: dict[str, Any] = dict(span.attributes or {})
    assert span.kind is SpanKind.CLIENT
    assert span.name == "chat gpt-4.1"
    assert a[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert a[semconv.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[semconv.OPENAI_API_TYPE] == "chat_completions"
    assert a[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4.1"
    assert a[semconv.GEN_AI_RESPONSE_MODEL] == "gpt-4.1-2025-04-14"
    assert a[semconv.GEN_AI_REQUEST_STREAM] is stream
    assert a[semconv.GEN_AI_RESPONSE_ID].startswith("chatcmpl-fake")
    assert a[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert a[semconv.SERVER_ADDRESS] == "127.0.0.1"
    assert isinstance(a[semconv.SERVER_PORT], int)
    assert a[semconv.COSTSPAN_REQUEST_ID].startswith("req_fake_")
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 1200
    assert a[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1024
    assert a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 300
    assert a[semconv.COSTSPAN_PRICING_STATUS] == "priced"
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(CHAT_COST, abs=1e-12)
    assert a[semconv.GEN_AI_USAGE_COST_CURRENCY] == "USD"
    assert a[semconv.GEN_AI_USAGE_COST_SOURCE] == "local"
    assert a[semconv.COSTSPAN_COST_INPUT] == pytest.approx(0.000352, abs=1e-12)
    assert a[semconv.COSTSPAN_COST_CACHE_READ] == pytest.approx(0.000512, abs=1e-12)
    assert a[semconv.COSTSPAN_COST_OUTPUT] == pytest.approx(0.0024, abs=1e-12)
    assert a[semconv.COSTSPAN_PRICING_SOURCE] == "genai-prices"
    assert a[semconv.COSTSPAN_PRICING_VERSION]
    assert semconv.GEN_AI_USAGE_COST_COMPAT not in a
    return a


@pytest.fixture(params=["sync", "async"])
def any_client(request: pytest.FixtureRequest, fake_openai: FakeOpenAI) -> Any:
    cls = openai.OpenAI if request.param == "sync" else openai.AsyncOpenAI
    return cls(base_url=fake_openai.base_url, api_key="sk-test-not-a-secret", max_retries=0)


def call_and_consume(make: Callable[[], Any]) -> list[Any]:
    async def both() -> list[Any]:
        stream = await make()
        return [item async for item in stream]

    result = make()
    if asyncio.iscoroutine(result):
        result.close()
        return asyncio.run(both())
    return list(result)


# --- chat.completions ----------------------------------------------------------------------------------


def test_chat_create(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    response = run(any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES))
    assert response.usage.prompt_tokens == 1200
    assert_chat_priced(pipeline, stream=False)


def test_chat_stream_without_usage_requests_it_and_hides_the_extra_chunk(
    pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    chunks = call_and_consume(
        lambda: any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    )
    # The user sees exactly the stream they asked for: content chunks only, no usage-only chunk, and no
    # "usage": null in what the chunks serialize to (the server sends it once usage is asked for).
    assert all(chunk.choices for chunk in chunks)
    assert all("usage" not in chunk.to_dict() for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake_openai.received[-1].body["stream_options"] == {"include_usage": True}
    assert_chat_priced(pipeline, stream=True)


@pytest.mark.parametrize(
    "ask",
    [
        {"stream_options": {"include_usage": True}},
        # extra_body is merged into the request the SDK sends: a usage request there is the user's own too.
        {"extra_body": {"stream_options": {"include_usage": True}}},
    ],
    ids=["stream_options", "extra_body"],
)
def test_chat_stream_with_user_requested_usage_is_untouched(
    pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI, ask: dict[str, Any]
) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    chunks = call_and_consume(
        lambda: any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True, **ask)
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 1200
    assert_chat_priced(pipeline, stream=True)


def test_stream_usage_injection_can_be_turned_off(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    pipeline = make_pipeline(stream_usage=False)
    try:
        list(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True))
        assert "stream_options" not in fake_openai.received[-1].body
        assert attrs(pipeline)[semconv.COSTSPAN_PRICING_STATUS] == "no_usage"
    finally:
        pipeline.instrumentor.uninstrument()


def test_chat_stream_helper(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    with client.chat.completions.stream(model="gpt-4.1", messages=MESSAGES) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert events
    assert final.choices[0].message.content
    assert_chat_priced(pipeline, stream=True)


def test_async_chat_stream_helper(
    pipeline: Pipeline, async_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))

    async def go() -> None:
        async with async_client.chat.completions.stream(model="gpt-4.1", messages=MESSAGES) as stream:
            async for _ in stream:
                pass

    asyncio.run(go())
    assert_chat_priced(pipeline, stream=True)


def test_chat_with_raw_response(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    raw = run(any_client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES))
    assert raw.headers["x-request-id"].startswith("req_fake_")
    assert raw.parse().usage.completion_tokens == 300
    assert_chat_priced(pipeline, stream=False)


def test_chat_with_streaming_response(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    with client.chat.completions.with_streaming_response.create(model="gpt-4.1", messages=MESSAGES) as response:
        usage = response.parse().usage
        assert usage is not None
        assert usage.prompt_tokens == 1200
    assert_chat_priced(pipeline, stream=False)


def test_async_chat_with_streaming_response_read_raw(
    pipeline: Pipeline, async_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    """The user reads the bytes instead of parse(): the span still gets the usage from the body."""
    fake_openai.script(Scripted(usage=CHAT_USAGE))

    async def go() -> bytes:
        async with async_client.chat.completions.with_streaming_response.create(
            model="gpt-4.1", messages=MESSAGES
        ) as response:
            return await response.read()

    assert b"chatcmpl-fake" in asyncio.run(go())
    assert_chat_priced(pipeline, stream=False)


class Answer(BaseModel):
    answer: str


def test_chat_parse(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    completion = run(any_client.chat.completions.parse(model="gpt-4.1", messages=MESSAGES, response_format=Answer))
    assert completion.choices[0].message.parsed.answer.startswith("Here is")
    assert_chat_priced(pipeline, stream=False)


# --- responses -----------------------------------------------------------------------------------------


def assert_responses_priced(pipeline: Pipeline, *, stream: bool) -> None:
    a = attrs(pipeline)
    assert pipeline.span().name == "chat gpt-5"
    assert a[semconv.OPENAI_API_TYPE] == "responses"
    assert a[semconv.GEN_AI_RESPONSE_MODEL] == "gpt-5-2025-08-07"
    assert a[semconv.GEN_AI_RESPONSE_ID].startswith("resp_fake")
    assert a[semconv.GEN_AI_REQUEST_STREAM] is stream
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 2000
    assert a[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1500
    assert a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 800
    assert a[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 600
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(RESPONSES_COST, abs=1e-12)


def test_responses_create(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=RESPONSES_USAGE))
    response = run(any_client.responses.create(model="gpt-5", input="Summarize my tickets"))
    assert response.output_text.startswith("Here is")
    assert_responses_priced(pipeline, stream=False)
    assert attrs(pipeline)[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("completed",)


def test_responses_create_stream(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=RESPONSES_USAGE))
    events = call_and_consume(lambda: any_client.responses.create(model="gpt-5", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert "stream_options" not in fake_openai.received[-1].body  # Responses streams always carry usage
    assert_responses_priced(pipeline, stream=True)


def test_responses_stream_helper(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=RESPONSES_USAGE))
    with client.responses.stream(model="gpt-5", input="hi") as stream:
        for _ in stream:
            pass
        usage = stream.get_final_response().usage
        assert usage is not None
        assert usage.output_tokens == 800
    assert_responses_priced(pipeline, stream=True)


def test_async_responses_stream_helper(
    pipeline: Pipeline, async_client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Scripted(usage=RESPONSES_USAGE))

    async def go() -> None:
        async with async_client.responses.stream(model="gpt-5", input="hi") as stream:
            async for _ in stream:
                pass

    asyncio.run(go())
    assert_responses_priced(pipeline, stream=True)


def test_responses_parse(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=RESPONSES_USAGE))
    response = run(any_client.responses.parse(model="gpt-5", input="hi", text_format=Answer))
    assert response.output_parsed.answer.startswith("Here is")
    assert_responses_priced(pipeline, stream=False)


# --- embeddings, legacy completions, images, batches --------------------------------------------------


def test_embeddings(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage={"prompt_tokens": 1000, "total_tokens": 1000}))
    run(any_client.embeddings.create(model="text-embedding-3-small", input=["a", "b"]))
    a = attrs(pipeline)
    assert pipeline.span().name == "embeddings text-embedding-3-small"
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 1000
    assert a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(0.00002, abs=1e-15)  # 1000 * $0.02 / 1M


LEGACY_USAGE = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
LEGACY_COST = 0.00025  # 100 * $1.50 / 1M + 50 * $2.00 / 1M = 0.00015 + 0.0001


def test_legacy_completions(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=LEGACY_USAGE))
    run(any_client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi"))
    a = attrs(pipeline)
    assert a[semconv.GEN_AI_OPERATION_NAME] == "text_completion"
    assert a[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(LEGACY_COST, abs=1e-15)


def test_legacy_completions_stream(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=LEGACY_USAGE))
    chunks = call_and_consume(
        lambda: any_client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True)
    )
    assert all(chunk.choices for chunk in chunks)
    assert attrs(pipeline)[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(LEGACY_COST, abs=1e-15)


def test_images_generate(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    usage = {
        "input_tokens": 50,
        "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
        "output_tokens": 1056,
        "total_tokens": 1106,
    }
    fake_openai.script(Scripted(usage=usage))
    client.images.generate(model="gpt-image-1", prompt="a cat in a hat")
    a = attrs(pipeline)
    assert a[semconv.GEN_AI_OPERATION_NAME] == "generate_content"
    # 50 * $5.00 / 1M + 1056 * $40.00 / 1M = 0.00025 + 0.04224
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(0.04249, abs=1e-12)


def test_batch_job_cost_is_recorded_once_and_attributed_to_its_submitter(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    with costspan_attribute(feature="nightly-summarize", customer_id="cust_9", route="cron:nightly"):
        batch = client.batches.create(
            input_file_id="file-abc",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"customer_id": "set-by-the-app"},
        )
    (created,) = pipeline.spans()
    a = dict(created.attributes or {})
    assert a[semconv.COSTSPAN_BATCH_ID] == batch.id
    assert a[semconv.COSTSPAN_PRICING_STATUS] == "no_usage"
    # The attribution travels with the job, without replacing what the app put in its metadata.
    assert fake_openai.received[-1].body["metadata"] == {
        "customer_id": "set-by-the-app",
        "feature": "nightly-summarize",
        "route": "cron:nightly",
    }

    # A poller with no baggage at all: the in-progress read makes no span; the finished one makes exactly one.
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert len(pipeline.spans()) == 1
    assert client.batches.retrieve(batch.id).status == "completed"
    client.batches.retrieve(batch.id)
    job = pipeline.spans()[1:]
    assert len(job) == 1
    a = dict(job[0].attributes or {})
    assert job[0].name == "batch gpt-4o-mini-2024-07-18"
    assert (a["feature"], a["customer_id"], a["route"]) == ("nightly-summarize", "set-by-the-app", "cron:nightly")
    assert a[semconv.COSTSPAN_BATCH_ID] == batch.id
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 120_000
    # gpt-4o-mini at batch rates (genai-prices 0.2.5, from 2026-10-14): $0.075 input, $0.30 output per million.
    # 120,000 x 0.075 + 30,000 x 0.30 = 9,000 + 9,000 micro-dollars.
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(0.018, abs=1e-12)
    assert job[0].start_time == batch.created_at * 1_000_000_000
    # Every process recording this job puts it in one trace, derived from the batch id, so warehouses dedupe it.
    assert job[0].context.trace_id == batch_job_context(batch.id).trace_id


def test_azure_client_reports_azure_provider(pipeline: Pipeline, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    azure = openai.AzureOpenAI(
        azure_endpoint=fake_openai.root_url, api_key="k", api_version="2025-01-01", max_retries=0
    )
    azure.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert fake_openai.received[-1].path.startswith("/openai/deployments/gpt-4.1/chat/completions")
    a = attrs(pipeline)
    assert a[semconv.GEN_AI_PROVIDER_NAME] == "azure.ai.openai"
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(CHAT_COST, abs=1e-12)


def test_get_requests_are_not_spans(pipeline: Pipeline, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.models.list()
    assert pipeline.spans() == []


# --- attribution -----------------------------------------------------------------------------------------


def test_baggage_is_copied_onto_the_span(pipeline: Pipeline, client: openai.OpenAI) -> None:
    ctx = context.get_current()
    for key, value in {
        "feature": "support-chat",
        "route": "/api/v1/chat/answer",
        "customer_id": "cust_4291",
        "environment": "prod",
        "unrelated": "x",
    }.items():
        ctx = baggage.set_baggage(key, value, ctx)
    token = context.attach(ctx)
    try:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    finally:
        context.detach(token)
    a = attrs(pipeline)
    assert a["feature"] == "support-chat"
    assert a["route"] == "/api/v1/chat/answer"
    assert a["customer_id"] == "cust_4291"
    assert a["environment"] == "prod"
    assert "unrelated" not in a
    assert semconv.COSTSPAN_ATTRIBUTION_MISSING not in a


def test_missing_keys_are_recorded_by_default(pipeline: Pipeline, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert attrs(pipeline)[semconv.COSTSPAN_ATTRIBUTION_MISSING] == ("feature", "route", "customer_id", "environment")


def test_strict_mode_refuses_before_sending(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    pipeline = make_pipeline(on_missing="raise", required_keys=["feature", "customer_id"])
    try:
        with costspan_attribute(feature="search"), pytest.raises(MissingAttributionError, match="customer_id"):
            client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert fake_openai.received == []
        a = attrs(pipeline)
        assert a[semconv.COSTSPAN_REFUSED] == "MissingAttributionError"
        assert pipeline.span().status.status_code is StatusCode.ERROR
    finally:
        pipeline.instrumentor.uninstrument()


def costspan_attribute(**values: str) -> Any:
    from costspan import attribute

    return attribute(**values)


def test_attribute_decorator_on_async_function(pipeline: Pipeline, async_client: openai.AsyncOpenAI) -> None:
    from costspan import attribute

    @attribute(feature="nightly-summarize", route="cron:nightly-summarize", customer_id="system")
    async def job() -> None:
        await async_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)

    asyncio.run(job())
    a = attrs(pipeline)
    assert (a["feature"], a["route"], a["customer_id"]) == ("nightly-summarize", "cron:nightly-summarize", "system")


def test_environment_falls_back_to_the_resource(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from costspan.instrumentor import CostspanInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"deployment.environment.name": "staging"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        (span,) = exporter.get_finished_spans()
        assert (span.attributes or {})["environment"] == "staging"
    finally:
        instrumentor.uninstrument()


# --- errors, retries, bad input ---------------------------------------------------------------------------


def test_api_error_reaches_the_caller_unchanged(pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        run(any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES))
    assert caught.value.status_code == 500
    span = pipeline.span()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[semconv.ERROR_TYPE] == "500"
    assert (span.attributes or {})[semconv.COSTSPAN_PRICING_STATUS] == "no_usage"


def test_sdk_retries_stay_inside_one_span(fake_openai: FakeOpenAI, pipeline: Pipeline) -> None:
    fake_openai.script(Scripted(status=500), Scripted(usage=CHAT_USAGE))
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="k", max_retries=1)
    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert len(fake_openai.received) == 2
    assert_chat_priced(pipeline, stream=False)


def test_connection_error_is_recorded(pipeline: Pipeline) -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert attrs(pipeline)[semconv.ERROR_TYPE] == "APIConnectionError"


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": -2},
        {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 50}},
        {"prompt_tokens": 10, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": 9}},
    ],
    ids=["negative", "cached-exceeds-input", "reasoning-exceeds-output"],
)
def test_malformed_usage_is_no_usage(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI, usage: dict[str, Any]
) -> None:
    fake_openai.script(Scripted(usage=usage))
    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    a = attrs(pipeline)
    assert a[semconv.COSTSPAN_PRICING_STATUS] == "no_usage"
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a


def test_missing_usage_is_no_usage(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(omit_usage=True))
    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert attrs(pipeline)[semconv.COSTSPAN_PRICING_STATUS] == "no_usage"


def test_unknown_model_is_never_guessed(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE), Scripted(usage=CHAT_USAGE))
    client.chat.completions.create(model="gpt-4.1-turbo-imaginary", messages=MESSAGES)
    client.chat.completions.create(model="gpt-4.1-turbo-imaginary", messages=MESSAGES)
    for span in pipeline.spans():
        a = dict(span.attributes or {})
        assert a[semconv.COSTSPAN_PRICING_STATUS] == "unknown_model"
        assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a
        assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 1200
    warnings = [r for r in caplog.records if "gpt-4.1-turbo-imaginary" in r.getMessage()]
    assert len(warnings) == 1  # one warning per model, not per call


def test_a_bug_inside_costspan_never_reaches_the_caller(
    pipeline: Pipeline, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    telemetry = pipeline.instrumentor.telemetry
    assert telemetry is not None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug in pricing")

    monkeypatch.setattr(telemetry.pricer, "price", broken)
    response = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert response.choices[0].message.content
    assert len(pipeline.spans()) == 1  # the span still ended


def test_a_bug_in_stream_reading_never_reaches_the_caller(
    pipeline: Pipeline, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from costspan.providers.openai.usage import StreamSummary

    def broken(self: Any, item: Any) -> bool:
        raise RuntimeError("bug in stream reading")

    monkeypatch.setattr(StreamSummary, "add", broken)
    chunks = list(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True))
    assert chunks
    assert all(chunk.choices for chunk in chunks)  # the usage chunk costspan asked for stays hidden all the same
    assert len(pipeline.spans()) == 1


# --- streams the user abandons ------------------------------------------------------------------------


def test_abandoned_stream_ends_incomplete(pipeline: Pipeline, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    a = attrs(pipeline)
    assert a[semconv.COSTSPAN_PRICING_STATUS] == "incomplete"
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a


def test_dropped_stream_does_not_leak_its_span(pipeline: Pipeline, client: openai.OpenAI) -> None:
    def start_and_drop() -> None:
        stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        next(iter(stream))

    start_and_drop()
    gc.collect()
    assert attrs(pipeline)[semconv.COSTSPAN_PRICING_STATUS] == "incomplete"


def test_a_stream_helper_left_early_ends_its_span_at_once(
    pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI
) -> None:
    """The helpers close the HTTP response, not the stream, and their objects live until a garbage collection:
    the span must end when the user leaves the block, not then."""

    async def leave_async() -> None:
        async with any_client.chat.completions.stream(model="gpt-4.1", messages=MESSAGES) as stream:
            async for _ in stream:
                break
        async with any_client.responses.stream(model="gpt-4.1", input="hi") as events:
            async for _ in events:
                break

    def leave() -> None:
        with any_client.chat.completions.stream(model="gpt-4.1", messages=MESSAGES) as stream:
            for _ in stream:
                break
        with any_client.responses.stream(model="gpt-4.1", input="hi") as events:
            for _ in events:
                break

    gc.disable()
    try:
        asyncio.run(leave_async()) if isinstance(any_client, openai.AsyncOpenAI) else leave()
        statuses = [(s.attributes or {})[semconv.COSTSPAN_PRICING_STATUS] for s in pipeline.spans()]
    finally:
        gc.enable()
    assert statuses == ["incomplete", "incomplete"]


def test_a_stream_cut_off_midway_records_the_error(
    pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE, cut_after=2))
    with pytest.raises(Exception) as raised:  # the SDK's error or the HTTP library's, by SDK version
        call_and_consume(lambda: any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True))
    a = attrs(pipeline)
    assert a[semconv.ERROR_TYPE] == type(raised.value).__qualname__
    assert a[semconv.COSTSPAN_PRICING_STATUS] == "incomplete"


def finished(chunk: Any) -> bool:
    return bool(chunk.choices) and chunk.choices[0].finish_reason is not None


def stop_after_finish(client: Any, end: str) -> None:
    """Read a chat stream up to its finish_reason chunk, then stop it there, before the usage chunk costspan
    asked for: by ``close()``, by leaving a ``stream()`` helper's block, or by dropping it."""
    create = dict(model="gpt-4.1", messages=MESSAGES, max_tokens=3)

    def sync() -> None:
        if end == "helper":
            with client.chat.completions.stream(**create) as events:
                for event in events:
                    if event.type == "chunk" and finished(event.chunk):
                        break
            return
        stream = client.chat.completions.create(stream=True, **create)
        for chunk in stream:
            if finished(chunk):
                break
        if end == "close":
            stream.close()
        else:
            del stream
            gc.collect()

    async def asynchronous() -> None:
        if end == "helper":
            async with client.chat.completions.stream(**create) as events:
                async for event in events:
                    if event.type == "chunk" and finished(event.chunk):
                        break
            return
        stream = await client.chat.completions.create(stream=True, **create)
        async for chunk in stream:
            if finished(chunk):
                break
        if end == "close":
            await stream.close()
        else:
            del stream
            gc.collect()

    asyncio.run(asynchronous()) if isinstance(client, openai.AsyncOpenAI) else sync()


@pytest.mark.parametrize("end", ["close", "helper", "dropped"])
def test_a_stream_stopped_after_its_finish_reason_is_priced_from_the_usage_chunk(
    pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI, end: str
) -> None:
    """The usage chunk costspan asked for is the next and last event: closing the stream reads it (bounded) and
    prices the call as billed. An async stream dropped without closing cannot be read any more: incomplete."""
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    stop_after_finish(any_client, end)
    a = attrs(pipeline)
    if end == "dropped" and isinstance(any_client, openai.AsyncOpenAI):
        assert a[semconv.COSTSPAN_PRICING_STATUS] == "incomplete"
        assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a
        return
    assert a[semconv.COSTSPAN_PRICING_STATUS] == "priced"
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(CHAT_COST, abs=1e-12)
    assert a[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


@pytest.mark.parametrize("end", ["close", "helper"])
@pytest.mark.parametrize("server", ["cut", "stalled"])
def test_a_stream_stopped_before_its_usage_arrives_is_incomplete_and_closing_it_does_not_wait(
    pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI, end: str, server: str
) -> None:
    """After the finish_reason chunk the connection drops, or the server goes quiet: closing waits at most
    ``DRAIN_SECONDS`` for the usage chunk, and a call whose usage never came is incomplete, never priced at $0."""
    from costspan.providers.openai.patch import DRAIN_SECONDS

    # Events: the role chunk, 3 words, the finish_reason chunk (4), then the usage chunk (5).
    quiet = Scripted(usage=CHAT_USAGE, stall_after=5, stall_s=3)
    fake_openai.script(Scripted(usage=CHAT_USAGE, cut_after=5) if server == "cut" else quiet)
    started = time.monotonic()
    stop_after_finish(any_client, end)
    assert time.monotonic() - started < DRAIN_SECONDS + 1.5
    a = attrs(pipeline)
    assert a[semconv.COSTSPAN_PRICING_STATUS] == "incomplete"
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a


def test_async_abandoned_stream(pipeline: Pipeline, async_client: openai.AsyncOpenAI) -> None:
    async def go() -> None:
        stream = await async_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        async with stream:
            async for _ in stream:
                break

    asyncio.run(go())
    assert attrs(pipeline)[semconv.COSTSPAN_PRICING_STATUS] == "incomplete"


# --- privacy ---------------------------------------------------------------------------------------------


def test_no_content_headers_or_keys_by_default(pipeline: Pipeline, fake_openai: FakeOpenAI) -> None:
    client = openai.OpenAI(
        base_url=fake_openai.base_url.replace("http://", "http://user:pw@"), api_key="sk-secret-123", max_retries=0
    )
    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    flat = repr(sorted((pipeline.span().attributes or {}).items()))
    for secret in ("sk-secret-123", "pw", "reset my password", "Here is", "authorization"):
        assert secret not in flat
    headers = fake_openai.received[-1].headers
    assert "traceparent" not in headers and "baggage" not in headers


def test_content_capture_is_opt_in(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    pipeline = make_pipeline(capture_content=True)
    try:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        list(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True))
        for span in pipeline.spans():
            a: dict[str, Any] = dict(span.attributes or {})
            assert "reset my password" in a[semconv.GEN_AI_INPUT_MESSAGES]
            assert "Here is a concise answer" in a[semconv.GEN_AI_OUTPUT_MESSAGES]
    finally:
        pipeline.instrumentor.uninstrument()


def test_cost_compat_attribute_is_opt_in(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    pipeline = make_pipeline(cost_compat=True)
    try:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert attrs(pipeline)[semconv.GEN_AI_USAGE_COST_COMPAT] == pytest.approx(CHAT_COST, abs=1e-12)
    finally:
        pipeline.instrumentor.uninstrument()


# --- metrics, lifecycle ------------------------------------------------------------------------------------


def test_metrics(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    with costspan_attribute(feature="support-chat", customer_id="cust_1", environment="prod", route="/r"):
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    (cost,) = pipeline.metric_points(semconv.METRIC_OPERATION_COST)
    assert cost.sum == pytest.approx(CHAT_COST, abs=1e-12)
    assert cost.attributes["feature"] == "support-chat"
    assert "customer_id" not in cost.attributes
    tokens = {
        p.attributes[semconv.GEN_AI_TOKEN_TYPE]: p.sum for p in pipeline.metric_points(semconv.METRIC_TOKEN_USAGE)
    }
    assert tokens == {"input": 1200, "output": 300}
    (duration,) = pipeline.metric_points(semconv.METRIC_OPERATION_DURATION)
    assert duration.count == 1
    # server.port is conditionally required with server.address on every GenAI client metric
    for point in [cost, duration, *pipeline.metric_points(semconv.METRIC_TOKEN_USAGE)]:
        assert (point.attributes[semconv.SERVER_ADDRESS], point.attributes[semconv.SERVER_PORT]) == (
            "127.0.0.1",
            fake_openai.server.server_address[1],
        )


def test_metric_points_of_failed_calls(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    (duration,) = pipeline.metric_points(semconv.METRIC_OPERATION_DURATION)
    assert duration.attributes[semconv.ERROR_TYPE] == "400"
    assert pipeline.metric_points(semconv.METRIC_TOKEN_USAGE) == []  # no usage; and never an error.type there


def test_metrics_after_instrumenting_again_on_the_same_provider(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    """The meter keeps the backlog gauge of the first instrument(), callback and all: the points queued after
    the second must still be recorded when the reader collects."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    instrumentor.uninstrument()
    instrumentor.instrument(meter_provider=provider)
    try:
        for _ in range(3):
            client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    finally:
        instrumentor.uninstrument()
    data = reader.get_metrics_data()
    assert data is not None
    counts = [
        point.count
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == semconv.METRIC_OPERATION_DURATION
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    ]
    assert counts == [3]  # queued before uninstrument(), recorded by it


def test_metrics_can_be_turned_off(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    """OTEL_COSTSPAN_METRICS=false: spans only, still priced (each SDK histogram point costs ~12 µs at collection)."""
    pipeline = make_pipeline(metrics=False)
    instrumented.append(pipeline)
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert (pipeline.span().attributes or {})[semconv.GEN_AI_USAGE_COST_AMOUNT] == pytest.approx(CHAT_COST, abs=1e-12)
    for name in (semconv.METRIC_OPERATION_COST, semconv.METRIC_TOKEN_USAGE, semconv.METRIC_OPERATION_DURATION):
        assert pipeline.metric_points(name) == []


def test_uninstrument_restores_the_sdk(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    pipeline = make_pipeline()
    pipeline.instrumentor.uninstrument()
    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    stream = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    assert type(stream) is openai.Stream
    assert pipeline.spans() == []


def test_async_stream_is_a_proper_async_iterator(pipeline: Pipeline, async_client: openai.AsyncOpenAI) -> None:
    async def go() -> list[Any]:
        stream = await async_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        assert isinstance(stream, openai.AsyncStream)  # the proxy still passes isinstance checks
        return [chunk async for chunk in stream]

    assert asyncio.run(go())


def test_raw_streamed_response_parsed_into_a_stream(
    pipeline: Pipeline, any_client: Any, fake_openai: FakeOpenAI
) -> None:
    """The raw wrapper is dropped right after parse(): the stream, not the wrapper, ends the span."""
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    ask = {"model": "gpt-4.1", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}

    async def consume_async() -> list[Any]:
        raw = await any_client.chat.completions.with_raw_response.create(**ask)
        stream = raw.parse()
        del raw
        gc.collect()
        return [chunk async for chunk in stream]

    if isinstance(any_client, openai.AsyncOpenAI):
        chunks = asyncio.run(consume_async())
    else:
        stream = any_client.chat.completions.with_raw_response.create(**ask).parse()
        gc.collect()
        chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens == 1200
    assert_chat_priced(pipeline, stream=True)


def test_a_stream_of_plain_dicts_is_read_and_kept_as_sent(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    """client.post with a plain stream class, the SDK's way to call an endpoint by hand: chunks are dicts."""
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    stream = client.post(
        "/chat/completions",
        body={"model": "gpt-4.1", "messages": MESSAGES, "stream": True},
        cast_to=object,
        stream=True,
        stream_cls=openai.Stream[object],
    )
    chunks = list(stream)
    assert all(isinstance(chunk, dict) and chunk["choices"] and "usage" not in chunk for chunk in chunks)
    assert_chat_priced(pipeline, stream=True)


def test_raw_streamed_response_is_never_rewritten(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    """A raw stream may be read as lines or bytes, where no chunk can be hidden: costspan does not ask for usage
    the user did not ask for, so the lines are exactly what the user's request gets. costspan does not read raw
    lines, so that span says incomplete; a raw stream the user parses says no_usage."""
    fake_openai.script(Scripted(usage=CHAT_USAGE), Scripted(usage=CHAT_USAGE))
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4.1", messages=MESSAGES, stream=True
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert "stream_options" not in fake_openai.received[-1].body
    assert not any('"prompt_tokens"' in line for line in lines)
    assert attrs(pipeline)[semconv.COSTSPAN_PRICING_STATUS] == "incomplete"
    pipeline.exporter.clear()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    assert raw.parse() is raw.parse()  # the SDK caches parse(); so does the proxy
    assert all(chunk.choices for chunk in raw.parse())
    assert attrs(pipeline)[semconv.COSTSPAN_PRICING_STATUS] == "no_usage"


def test_usage_is_requested_where_extra_body_would_override_it(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    """extra_body's stream_options replaces the body's whole: costspan's request for usage goes into it."""
    fake_openai.script(Scripted(usage=CHAT_USAGE))
    chunks = list(
        client.chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,
            stream=True,
            extra_body={"stream_options": {"include_obfuscation": False}},
        )
    )
    assert fake_openai.received[-1].body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert all(chunk.choices for chunk in chunks)
    assert_chat_priced(pipeline, stream=True)


class RecordingSampler(Sampler):
    """Samples everything, and keeps what each span offered it at creation."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def should_sample(
        self,
        parent_context: context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.seen.append((name, dict(attributes or {})))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "RecordingSampler"


def test_samplers_see_the_request_at_creation_and_the_span_keeps_its_parent(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    """The span starts before the request is sent, with what the request says (the attributes the GenAI
    conventions ask samplers to see); the response's attributes are on it when it ends, even for a stream read
    after the context it started in is gone."""
    sampler = RecordingSampler()
    provider = TracerProvider(sampler=sampler)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with provider.get_tracer("app").start_as_current_span("POST /answer") as handler:
            before_ns = time.time_ns()
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        for _ in stream:  # read after the handler's span has ended
            pass
    finally:
        instrumentor.uninstrument()
    ((_, offered),) = [seen for seen in sampler.seen if seen[0].startswith("chat")]
    assert offered[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert offered[semconv.GEN_AI_PROVIDER_NAME] == "openai"
    assert offered[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert offered[semconv.SERVER_ADDRESS] == "127.0.0.1"
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat")]
    assert span.parent is not None and span.parent.span_id == handler.get_span_context().span_id
    assert span.start_time is not None and before_ns <= span.start_time
    a: dict[str, Any] = dict(span.attributes or {})
    assert a[semconv.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini-2024-07-18"
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] > 0


# --- the span is current while the request is sent -------------------------------------------------------------


@pytest.fixture
def http_instrumented(pipeline: Pipeline) -> Iterator[Pipeline]:
    """The HTTP instrumentation of the client the SDK actually uses (httpx2 from openai 3, httpx before), on the
    same tracer provider, with the W3C propagator it injects with."""
    from opentelemetry.instrumentation import httpx as otel_httpx

    instrumentor: Any = (
        otel_httpx.HTTPX2ClientInstrumentor()
        if vars(openai._base_client).get("httpx2") is not None
        else otel_httpx.HTTPXClientInstrumentor()
    )
    instrumentor.instrument(tracer_provider=pipeline.tracer_provider)
    try:
        yield pipeline
    finally:
        instrumentor.uninstrument()


def test_the_http_span_is_a_child_of_the_genai_span(
    http_instrumented: Pipeline, fake_openai: FakeOpenAI, any_client: Any
) -> None:
    """With an HTTP instrumentation on, the request is sent with the GenAI span current: the HTTP span is its
    child, and the traceparent the provider receives names that HTTP span, in the GenAI span's trace."""
    fake_openai.script(Scripted(usage=CHAT_USAGE), Scripted(usage=CHAT_USAGE))

    async def both_async() -> None:  # one event loop for both: the client keeps its connections
        await any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        async for _ in await any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True):
            pass

    if isinstance(any_client, openai.AsyncOpenAI):
        asyncio.run(both_async())
    else:
        any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        list(any_client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True))
    spans = http_instrumented.spans()
    genai = [s for s in spans if s.name == "chat gpt-4.1"]
    http = [s for s in spans if s.name == "POST"]
    assert len(genai) == 2 and len(http) == 2, [s.name for s in spans]
    for gen, sent, received in zip(genai, http, fake_openai.received[-2:], strict=True):
        assert sent.parent is not None and sent.parent.span_id == gen.context.span_id
        assert sent.context.trace_id == gen.context.trace_id
        _, trace_id, parent_id, _ = received.headers["traceparent"].split("-")
        assert int(trace_id, 16) == gen.context.trace_id
        assert int(parent_id, 16) == sent.context.span_id
    assert [dict(s.attributes or {})[semconv.COSTSPAN_PRICING_STATUS] for s in genai] == ["priced", "priced"]


def test_a_propagator_at_the_http_layer_names_the_genai_span(
    pipeline: Pipeline, fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    """Without an HTTP span, whatever injects trace headers at the HTTP layer (here an httpx event hook, as an app
    or gateway would) names the GenAI span as the parent; costspan itself adds no trace header."""
    from opentelemetry.propagate import inject

    http: Any = vars(openai._base_client).get("httpx2") or vars(openai._base_client)["httpx"]
    hooked = http.Client(event_hooks={"request": [lambda request: inject(request.headers)]})
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0, http_client=hooked) as own:
        own.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    span = pipeline.span()
    _, trace_id, parent_id, _ = fake_openai.received[-1].headers["traceparent"].split("-")
    assert (int(trace_id, 16), int(parent_id, 16)) == (span.context.trace_id, span.context.span_id)

    client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert "traceparent" not in fake_openai.received[-1].headers
