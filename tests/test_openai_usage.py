"""Usage normalization: one pure function per response shape, as JSON dicts and as the SDK's own models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
import pytest
from openai.types import CompletionUsage, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseCompletedEvent, ResponseTextDeltaEvent

from costspan.providers.openai.usage import StreamSummary, normalize_usage, summarize_response
from costspan.usage import Usage

CHAT = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 20, "cache_write_tokens": 100},
    "completion_tokens_details": {
        "reasoning_tokens": 200,
        "audio_tokens": 5,
        "accepted_prediction_tokens": 7,
        "rejected_prediction_tokens": 3,
    },
}
CHAT_USAGE = Usage(
    input_tokens=1200,
    output_tokens=300,  # the 200 reasoning tokens are inside, never added
    cache_read_tokens=1024,
    cache_write_tokens=100,
    reasoning_tokens=200,
    input_audio_tokens=20,
    output_audio_tokens=5,
    prediction_accepted_tokens=7,
    prediction_rejected_tokens=3,
)
RESPONSES = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 0},
    "output_tokens": 800,
    "output_tokens_details": {"reasoning_tokens": 600},
    "total_tokens": 2800,
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (CHAT, CHAT_USAGE),
        (CompletionUsage.model_validate(CHAT), CHAT_USAGE),
        ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, Usage(10, 5)),  # legacy completions
        ({"prompt_tokens": 1000, "total_tokens": 1000}, Usage(1000, 0)),  # embeddings: input only
        (RESPONSES, Usage(2000, 800, cache_read_tokens=1500, reasoning_tokens=600)),
        (  # audio transcription says input_token_details (singular)
            {"type": "tokens", "input_tokens": 50, "output_tokens": 12, "input_token_details": {"audio_tokens": 40}},
            Usage(50, 12, input_audio_tokens=40),
        ),
        (  # images
            {
                "input_tokens": 60,
                "input_tokens_details": {"text_tokens": 10, "image_tokens": 50},
                "output_tokens": 1056,
            },
            Usage(60, 1056, input_image_tokens=50),
        ),
    ],
    ids=["chat-json", "chat-sdk", "legacy", "embeddings", "responses", "transcription", "images"],
)
def test_each_shape(raw: Any, expected: Usage) -> None:
    assert normalize_usage(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        "1200 tokens",
        {"duration": 3.2, "type": "duration"},  # transcription billed by the second: no token usage
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": 10.5, "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
        {"prompt_tokens": "10", "completion_tokens": 1},
        {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}},
        {"prompt_tokens": 10, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2}},
        {"input_tokens": 10, "output_tokens": -3},
        {"prompt_tokens": 2**64, "completion_tokens": 1},  # more than an OTLP int holds
    ],
)
def test_missing_or_malformed_usage_is_none_never_an_exception(raw: Any) -> None:
    assert normalize_usage(raw) is None


class OldPromptDetails(openai.BaseModel):
    """Prompt details as an SDK release from before cache writes modelled them (the SDK keeps extras)."""

    cached_tokens: int | None = None


def test_a_field_newer_than_the_installed_sdk_is_still_read() -> None:
    details = OldPromptDetails.model_validate({"cached_tokens": 24, "cache_write_tokens": 100})
    assert "cache_write_tokens" not in details.__dict__  # an extra, not a field
    usage = normalize_usage({"prompt_tokens": 1200, "completion_tokens": 300, "prompt_tokens_details": details})
    assert usage == Usage(1200, 300, cache_read_tokens=24, cache_write_tokens=100)


def test_summarize_chat_completion() -> None:
    body = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4.1-2025-04-14",
            "service_tier": "priority",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": "length"},
            ],
            "usage": CHAT,
        }
    )
    summary = summarize_response(body)
    assert (summary.model, summary.response_id, summary.service_tier) == (
        "gpt-4.1-2025-04-14",
        "chatcmpl-1",
        "priority",
    )
    assert summary.finish_reasons == ["stop", "length"]
    assert summary.usage == CHAT_USAGE
    assert summary.batch_id is None


def test_summarize_responses_incomplete() -> None:
    body = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 0,
            "model": "gpt-5-2025-08-07",
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": RESPONSES,
        }
    )
    summary = summarize_response(body)
    assert summary.finish_reasons == ["max_output_tokens"]
    assert summary.usage is not None and summary.usage.reasoning_tokens == 600


def test_summarize_embeddings_and_batches() -> None:
    embeddings = CreateEmbeddingResponse.model_validate(
        {
            "object": "list",
            "model": "text-embedding-3-small",
            "data": [],
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )
    assert summarize_response(embeddings).usage == Usage(8, 0)
    batch = summarize_response({"id": "batch_1", "object": "batch", "usage": RESPONSES})
    assert batch.batch_id == "batch_1"


def chunk(**fields: Any) -> ChatCompletionChunk:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4.1-2025-04-14", "choices": []}
    return ChatCompletionChunk.model_validate({**base, **fields})


def test_chat_stream_summary_and_the_usage_only_chunk() -> None:
    state = StreamSummary()
    delta = {"index": 0, "delta": {"content": "hi"}, "finish_reason": None}
    assert state.add(chunk(choices=[delta], service_tier="flex")) is False
    assert state.add(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])) is False
    assert state.add(chunk(usage=CHAT)) is True  # no choices, usage set: the chunk costspan may hide
    summary = state.summary
    assert (summary.model, summary.service_tier, summary.finish_reasons) == ("gpt-4.1-2025-04-14", "flex", ["stop"])
    assert summary.usage == CHAT_USAGE


def test_responses_stream_takes_usage_from_the_terminal_event() -> None:
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 0,
        "model": "gpt-5-2025-08-07",
        "status": "completed",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": RESPONSES,
    }
    state = StreamSummary()
    delta = ResponseTextDeltaEvent.model_validate(
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "m",
            "output_index": 0,
            "content_index": 0,
            "delta": "hi",
            "logprobs": [],
        }
    )
    assert state.add(delta) is False
    completed = ResponseCompletedEvent.model_validate(
        {"type": "response.completed", "sequence_number": 2, "response": response}
    )
    assert state.add(completed) is False  # never hidden: the user asked for these events
    assert state.summary.usage == Usage(2000, 800, cache_read_tokens=1500, reasoning_tokens=600)
    assert state.summary.finish_reasons == ["completed"]


def test_image_and_transcription_streams_take_usage_from_their_last_event() -> None:
    from openai.types import ImageGenCompletedEvent
    from openai.types.audio import TranscriptionTextDoneEvent

    from costspan.pricing.pricer import Pricer

    image = StreamSummary()
    image.add(
        ImageGenCompletedEvent.model_validate(
            {
                "type": "image_generation.completed",
                "b64_json": "aGk=",
                "background": "opaque",
                "created_at": 0,
                "output_format": "png",
                "quality": "low",
                "size": "1024x1024",
                "usage": {
                    "input_tokens": 50,
                    "output_tokens": 4160,
                    "total_tokens": 4210,
                    "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                },
            }
        )
    )
    assert image.summary.usage is not None
    assert (image.summary.usage.input_tokens, image.summary.usage.output_tokens) == (50, 4160)
    # gpt-image-1: text input $5 per million, image output $40 per million: 50 x 5 + 4,160 x 40 = 166,650
    cost = Pricer().price(image.summary.usage, "gpt-image-1", at=datetime(2026, 11, 1, tzinfo=UTC))
    assert cost.total == Decimal("0.16665")

    transcript = StreamSummary()
    transcript.add(
        TranscriptionTextDoneEvent.model_validate(
            {
                "type": "transcript.text.done",
                "text": "hello",
                "usage": {
                    "type": "tokens",
                    "input_tokens": 120,
                    "output_tokens": 8,
                    "total_tokens": 128,
                    "input_token_details": {"audio_tokens": 110, "text_tokens": 10},
                },
            }
        )
    )
    assert transcript.summary.usage is not None
    assert (transcript.summary.usage.input_tokens, transcript.summary.usage.output_tokens) == (120, 8)
    assert transcript.summary.usage.input_audio_tokens == 110
