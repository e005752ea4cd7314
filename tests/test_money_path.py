"""One money path: the span, `costspan reprice` (from the stored row) and `costspan price` (from CLI arguments)
get every dollar from ``Pricer.bill``, so they agree to the last digit, and none of them prices what another would
not. Rates: genai-prices 0.2.5 (tests/frozen_prices.py), USD per million tokens; the calls run today, after the
data's tier (2026-10-12) and batch (2026-10-14) variants took effect."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

from costspan import semconv
from costspan.cli import main
from costspan.cli.reprice import reprice_row
from costspan.pricing.pricer import Pricer
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from costspan.store.exporter import row_from_span
from costspan.store.receiver import received_rows
from costspan.store.sqlite import Store
from tests.conftest import Pipeline

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def store_spans(tmp_path: Path, spans: list[ReadableSpan]) -> str:
    path = tmp_path / "money.sqlite3"
    with Store(path) as store:
        store.insert([row for span in spans if (row := row_from_span(span)) is not None])
    return str(path)


def stored_rows(path: str) -> dict[str, Any]:
    """Stored rows by span id, with every column reprice reads."""
    with Store(path) as store:
        return {row["span_id"]: row for row in store.query("SELECT * FROM spans")}


def reprice(capsys: pytest.CaptureFixture[str], path: str) -> str:
    assert main(["reprice", "--store", path, "--since", "2d"]) == 0
    return capsys.readouterr().out


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def finish_batch(client: openai.OpenAI, fake: FakeOpenAI, usage: dict[str, Any], model: str) -> None:
    """Create a Batch and read it until it is finished: its usage makes one span, priced at batch rates."""
    fake.script(Scripted(), Scripted(), Scripted(usage=usage, model=model))
    batch = client.batches.create(input_file_id="file-in", endpoint="/v1/chat/completions", completion_window="24h")
    client.batches.retrieve(batch.id)
    client.batches.retrieve(batch.id)


# --- 1, 2: reprice prices a batch exactly as its span did -------------------------------------------------


def test_reprice_keeps_batch_rates(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # gpt-4o-mini batch: $0.075 in, $0.30 out per 1M (genai-prices 0.2.5). The fake's finished job reports
    # 120,000 in / 30,000 out: 120,000 x 0.075 + 30,000 x 0.30 = 9,000 + 9,000 = 18,000 micro-dollars = $0.018.
    # (Standard rates, $0.15 / $0.60, would make it $0.036: what reprice wrote before it read the batch id.)
    finish_batch(client, fake_openai, usage={}, model="gpt-4o-mini-2024-07-18")
    job = pipeline.spans()[-1]
    assert dict(job.attributes or {})[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.018
    path = store_spans(tmp_path, pipeline.spans())
    assert reprice_row(Pricer(), stored_rows(path)[span_id(job)]).total == Decimal("0.018")
    assert "0 changed" in reprice(capsys, path)
    assert stored_rows(path)[span_id(job)]["cost_usd"] == 0.018


def test_reprice_never_prices_a_batch_the_span_could_not(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # gpt-audio has no batch price in genai-prices 0.2.5: its batch is unknown_tier, never standard rates.
    usage = {"input_tokens": 1000, "output_tokens": 500}
    finish_batch(client, fake_openai, usage=usage, model="gpt-audio")
    job = pipeline.spans()[-1]
    a = dict(job.attributes or {})
    assert (a[semconv.COSTSPAN_PRICING_STATUS], a[semconv.COSTSPAN_PRICING_NOTE]) == (
        semconv.STATUS_UNKNOWN_TIER,
        "no batch price for gpt-audio",
    )
    path = store_spans(tmp_path, pipeline.spans())
    assert "0 changed" in reprice(capsys, path)
    row = stored_rows(path)[span_id(job)]
    assert (row["pricing_status"], row["cost_usd"]) == (semconv.STATUS_UNKNOWN_TIER, None)


# --- 4: the response model first, then the request model ------------------------------------------------


def test_request_model_prices_a_response_model_the_data_does_not_know(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The API answers davinci-002 as "davinci:2023-07-21-v2", which the data does not list; the request model has
    # a price. davinci-002: $2 in, $2 out per 1M (genai-prices 0.2.5): 1,000 x 2 + 500 x 2 = 3,000 -> $0.003.
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    fake_openai.script(Scripted(usage=usage, model="davinci:2023-07-21-v2"))
    client.completions.create(model="davinci-002", prompt="Say hi")
    (span,) = pipeline.spans()
    a = dict(span.attributes or {})
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.003
    assert (a[semconv.COSTSPAN_PRICING_MODEL], a[semconv.COSTSPAN_PRICING_MODEL_SOURCE]) == ("davinci-002", "request")
    path = store_spans(tmp_path, [span])
    assert reprice_row(Pricer(), stored_rows(path)[span_id(span)]).total == Decimal("0.003")
    assert "0 changed" in reprice(capsys, path)


def test_the_response_model_prices_first(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    # gpt-4o-mini answers as gpt-4o-mini-2024-07-18, a name the data maps to gpt-4o-mini: $0.15 in, $0.60 out per 1M
    # (genai-prices 0.2.5). 1,000 x 0.15 + 500 x 0.60 = 450 -> $0.00045.
    fake_openai.script(Scripted(usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    a = dict(pipeline.spans()[0].attributes or {})
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.00045
    assert a[semconv.COSTSPAN_PRICING_MODEL_SOURCE] == "response"


def test_an_unpriced_span_says_which_names_were_tried(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Scripted(usage={"prompt_tokens": 1000, "completion_tokens": 500}, model="acme-x-2026"))
    client.chat.completions.create(model="acme-x", messages=MESSAGES)
    a = dict(pipeline.spans()[0].attributes or {})
    assert a[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_UNKNOWN_MODEL
    assert a[semconv.COSTSPAN_PRICING_NOTE] == "no price for 'acme-x-2026' (response model) or 'acme-x' (request model)"
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a


# --- 5: usage that cannot be right is flagged, never billed -------------------------------------------------


def test_implausible_usage_is_flagged_not_billed_and_reported_unpriced(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_openai.script(
        Scripted(usage={"prompt_tokens": 1000, "completion_tokens": None, "total_tokens": 1000}),
        Scripted(usage={"prompt_tokens": 1000, "total_tokens": 1000}),  # legacy completion, no completion_tokens
        Scripted(usage={"prompt_tokens": 2**63 - 1, "completion_tokens": 10}),
        Scripted(usage={"prompt_tokens": 1000, "total_tokens": 1000}),  # embeddings: no completion, priced
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    spans = pipeline.spans()
    missing, legacy, huge, embedding = (dict(span.attributes or {}) for span in spans)
    for a in (missing, legacy):
        assert a[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_IMPLAUSIBLE_USAGE
        assert a[semconv.COSTSPAN_PRICING_NOTE] == (
            "the response reported no completion_tokens: its output is unknown, not 0"
        )
        assert semconv.GEN_AI_USAGE_OUTPUT_TOKENS not in a and semconv.GEN_AI_USAGE_COST_AMOUNT not in a
    assert huge[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_IMPLAUSIBLE_USAGE
    assert huge[semconv.COSTSPAN_PRICING_NOTE] == (
        "9,223,372,036,854,775,807 input / 10 output tokens exceed the 100,000,000 a call can count"
    )
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in huge
    # text-embedding-3-small: $0.02 per 1M (genai-prices 0.2.5): 1,000 x 0.02 = 20 -> $0.00002.
    assert embedding[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.00002

    path = store_spans(tmp_path, spans)
    assert "0 changed" in reprice(capsys, path)  # reprice flags them too, never bills them
    statuses = [row["pricing_status"] for row in stored_rows(path).values()]
    assert statuses.count(semconv.STATUS_IMPLAUSIBLE_USAGE) == 3
    assert main(["report", "--store", path, "--since", "2d"]) == 0
    assert "3 LLM calls have no price" in capsys.readouterr().out


def test_a_batch_job_may_count_more_than_a_call(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    # 2 x 10**8 input tokens: too many for one call, plausible for a job of up to 50,000 requests.
    # gpt-4o-mini batch: $0.075 in, $0.30 out per 1M (genai-prices 0.2.5): 200,000,000 x 0.075 = $15.
    finish_batch(client, fake_openai, usage={"input_tokens": 2 * 10**8, "output_tokens": 0}, model="gpt-4o-mini")
    assert dict(pipeline.spans()[-1].attributes or {})[semconv.GEN_AI_USAGE_COST_AMOUNT] == 15.0


# --- 7: every tier, through the span, reprice and `costspan price` -----------------------------------------


@dataclass(frozen=True)
class TierCase:
    name: str
    dollars: Decimal  # hand-computed, see each case's comment
    cli: tuple[str, ...]  # `costspan price` arguments for the same call
    usage: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    response_tier: str | None = None
    batch_model: str | None = None  # a Batch job of this model; a chat completion otherwise
    images: bool = False


GPT5_CACHED = {"prompt_tokens": 10_000, "completion_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 2000}}

TIER_CASES = [
    # gpt-5 standard: $1.25 in, $0.125 cached, $10 out per 1M: 8,000 x 1.25 + 2,000 x 0.125 + 1,000 x 10
    # = 10,000 + 250 + 10,000 = 20,250 micro-dollars
    TierCase(
        "standard-cached",
        Decimal("0.02025"),
        ("gpt-5-2025-08-07", "--input", "10000", "--cached", "2000", "--output", "1000"),
        GPT5_CACHED,
        {"model": "gpt-5"},
    ),
    # service_tier="auto" on the request, "default" on the response: the standard rate, as above
    TierCase(
        "auto-default",
        Decimal("0.02025"),
        ("gpt-5-2025-08-07", "--input", "10000", "--cached", "2000", "--output", "1000", "--tier", "default"),
        GPT5_CACHED,
        {"model": "gpt-5", "service_tier": "auto"},
        response_tier="default",
    ),
    # gpt-5 priority: $2.50 in, $0.25 cached, $20 out per 1M: 8,000 x 2.5 + 2,000 x 0.25 + 1,000 x 20
    # = 20,000 + 500 + 20,000 = 40,500 micro-dollars
    TierCase(
        "priority-cached",
        Decimal("0.0405"),
        ("gpt-5-2025-08-07", "--input", "10000", "--cached", "2000", "--output", "1000", "--tier", "priority"),
        GPT5_CACHED,
        {"model": "gpt-5", "service_tier": "priority"},
        response_tier="priority",
    ),
    # gpt-5.5 flex above the 272K step, for the whole call: $5 in, $0.50 cached, $22.50 out per 1M:
    # 200,000 x 5 + 100,000 x 0.5 + 2,000 x 22.5 = 1,000,000 + 50,000 + 45,000 = 1,095,000 micro-dollars
    TierCase(
        "flex-long-context",
        Decimal("1.095"),
        ("gpt-5.5", "--input", "300000", "--cached", "100000", "--output", "2000", "--tier", "flex"),
        {"prompt_tokens": 300_000, "completion_tokens": 2000, "prompt_tokens_details": {"cached_tokens": 100_000}},
        {"model": "gpt-5.5", "service_tier": "flex"},
        response_tier="flex",
    ),
    # gpt-audio: $2.50 text in, $32 audio in, $10 text out, $64 audio out per 1M:
    # 600 x 2.5 + 400 x 32 + 300 x 10 + 200 x 64 = 1,500 + 12,800 + 3,000 + 12,800 = 30,100 micro-dollars
    TierCase(
        "standard-audio",
        Decimal("0.0301"),
        ("gpt-audio", "--input", "1000", "--input-audio", "400", "--output", "500", "--output-audio", "200"),
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"audio_tokens": 400},
            "completion_tokens_details": {"audio_tokens": 200},
        },
        {"model": "gpt-audio"},
    ),
    # gpt-image-1: $5 text in, $10 image in, $40 out per 1M: 600 x 5 + 400 x 10 + 1,056 x 40
    # = 3,000 + 4,000 + 42,240 = 49,240 micro-dollars
    TierCase(
        "standard-image",
        Decimal("0.04924"),
        ("gpt-image-1", "--input", "1000", "--input-image", "400", "--output", "1056"),
        {"input_tokens": 1000, "input_tokens_details": {"image_tokens": 400}, "output_tokens": 1056},
        {"model": "gpt-image-1"},
        images=True,
    ),
    # gpt-4.1 batch: $1 in, $4 out per 1M; no batch cached rate, so cached input keeps its standard $0.50:
    # 600,000 x 1 + 200,000 x 0.5 + 100,000 x 4 = 600,000 + 100,000 + 400,000 = 1,100,000 micro-dollars
    TierCase(
        "batch-cached",
        Decimal("1.1"),
        ("gpt-4.1-2025-04-14", "--input", "800000", "--cached", "200000", "--output", "100000", "--batch"),
        {"input_tokens": 800_000, "input_tokens_details": {"cached_tokens": 200_000}, "output_tokens": 100_000},
        batch_model="gpt-4.1-2025-04-14",
    ),
    # gpt-image-1 batch: $2.50 text in, $5 image in, $20 out per 1M: 6,000 x 2.5 + 4,000 x 5 + 2,000 x 20
    # = 15,000 + 20,000 + 40,000 = 75,000 micro-dollars
    TierCase(
        "batch-image",
        Decimal("0.075"),
        ("gpt-image-1", "--input", "10000", "--input-image", "4000", "--output", "2000", "--batch"),
        {"input_tokens": 10_000, "input_tokens_details": {"image_tokens": 4000}, "output_tokens": 2000},
        batch_model="gpt-image-1",
    ),
]


@pytest.mark.parametrize("case", TIER_CASES, ids=lambda case: case.name)
def test_every_tier_costs_the_same_on_the_span_after_reprice_in_the_receiver_and_in_costspan_price(
    case: TierCase,
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case.batch_model:
        finish_batch(client, fake_openai, case.usage, case.batch_model)
    elif case.images:
        fake_openai.script(Scripted(usage=case.usage))
        client.images.generate(prompt="a lighthouse", **case.request)
    else:
        fake_openai.script(Scripted(usage=case.usage, service_tier=case.response_tier))
        client.chat.completions.create(messages=MESSAGES, **case.request)
    span = pipeline.spans()[-1]
    a = dict(span.attributes or {})
    assert a[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_PRICED
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == float(case.dollars)

    path = store_spans(tmp_path, pipeline.spans())
    assert reprice_row(Pricer(), stored_rows(path)[span_id(span)]).total == case.dollars
    assert "0 changed" in reprice(capsys, path)

    # The receiver (`costspan serve`) prices the span as it arrives over OTLP, never trusting the client's figure.
    (row,) = received_rows(encode_spans([span]), Pricer(), ()).rows
    assert row.cost_usd == float(case.dollars)

    assert main(["price", *case.cli, "--json"]) == 0
    assert Decimal(json.loads(capsys.readouterr().out)["total_usd"]) == case.dollars
