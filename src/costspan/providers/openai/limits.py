"""The most an OpenAI request can bill, read from what it asks for: budgets reserve this before the call.

Prompt size is estimated locally (no tokenizer download); output is the request's limit, at most the model's
documented ceiling, times the completions it asks for; images and audio output count at their own rates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from costspan.instrumentation.call import RequestInfo
from costspan.usage import Usage

_GENERATING = frozenset({"chat", "text_completion"})

# Request fields whose text the model reads as input.
_PROMPT_FIELDS = ("messages", "input", "prompt", "instructions", "tools", "functions")
_TOKENS_PER_MESSAGE = 3  # role and separators, as OpenAI's own counting recipe
_TOKENS_PER_IMAGE = 1_600  # an inline image is billed by its size, not its base64 length; this covers high detail


def _measure(value: Any) -> tuple[int, int]:
    """(characters of text, inline images) in a JSON value."""
    if isinstance(value, str):
        return (0, 1) if value.startswith("data:image/") else (len(value), 0)
    if isinstance(value, Mapping):
        chars = images = 0
        for key, item in value.items():
            c, i = _measure(item)
            chars += len(key) + c
            images += i
        return chars, images
    if isinstance(value, list):
        chars = images = 0
        for item in value:
            c, i = _measure(item)
            chars += c
            images += i
        return chars, images
    return (len(str(value)), 0) if value is not None else (0, 0)


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Input tokens of a request, estimated locally: 4 characters a token plus per-message overhead.

    A heuristic, not a tokenizer: English averages about 4 characters a token, so this is generous for prose
    (field names count too); code or non-Latin text can take more. Settlement corrects the ledger to the real
    count once the response says it.
    """
    chars = images = messages = 0
    for name in _PROMPT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        c, i = _measure(value)
        chars += c
        images += i
        if name in ("messages", "input") and isinstance(value, list):
            messages += len(value)
    return math.ceil(chars / 4) + _TOKENS_PER_MESSAGE * (messages + 1) + _TOKENS_PER_IMAGE * images


# The most output tokens (reasoning and audio included) one completion can have, per model family: a model is in
# a family when its name is the family's or starts with it and "-" (a snapshot, or mini/nano); the longest family
# wins. From OpenAI's model pages, https://platform.openai.com/docs/models ("Max output tokens").
MODEL_OUTPUT_CEILINGS: Mapping[str, int] = {
    "gpt-3.5-turbo": 4_096,
    "gpt-3.5-turbo-16k": 16_384,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 4_096,
    "gpt-4o": 16_384,
    "gpt-4o-2024-05-13": 4_096,
    "chatgpt-4o-latest": 16_384,
    "gpt-4.1": 32_768,
    "gpt-4.5-preview": 16_384,
    "gpt-audio": 16_384,
    "gpt-5": 128_000,
    "gpt-5-chat-latest": 16_384,
    "gpt-5-pro": 272_000,
    "gpt-5.1": 128_000,
    "gpt-5.2": 128_000,
    "o1": 100_000,
    "o1-mini": 65_536,
    "o1-preview": 32_768,
    "o3": 100_000,
    "o4-mini": 100_000,
    "codex-mini-latest": 100_000,
}


@functools.lru_cache(maxsize=1024)
def model_output_ceiling(model: str) -> int | None:
    """The most output tokens one completion of ``model`` can have; None for a model the table does not know."""
    families = [family for family in MODEL_OUTPUT_CEILINGS if model == family or model.startswith(family + "-")]
    return MODEL_OUTPUT_CEILINGS[max(families, key=len)] if families else None


def _completions_billed(body: Mapping[str, Any]) -> int:
    """How many completions a request makes: ``n`` (chat and legacy completions), or legacy ``best_of``, which
    generates (and bills) that many to return ``n``. Each may use the whole output limit."""
    counts = [value for value in (body.get("n"), body.get("best_of")) if type(value) is int and value > 1]
    return max(counts, default=1)


def _wants_audio(body: Mapping[str, Any]) -> bool:
    """Chat Completions asked to speak (``modalities=["text", "audio"]``): its output may all be audio tokens."""
    modalities = body.get("modalities")
    return isinstance(modalities, list) and "audio" in modalities


# Output tokens of one image from the GPT Image 1 models (gpt-image-1, gpt-image-1-mini, gpt-image-1.5), by quality
# and size, as OpenAI's image-generation guide tabulates them (https://platform.openai.com/docs/guides/image-generation,
# "Cost and latency"). An omitted or "auto" quality or size, one this table lacks, or another image model may
# produce the most of any row.
IMAGE_OUTPUT_TOKENS: Mapping[tuple[str, str], int] = {
    ("low", "1024x1024"): 272,
    ("low", "1024x1536"): 408,
    ("low", "1536x1024"): 400,
    ("medium", "1024x1024"): 1_056,
    ("medium", "1024x1536"): 1_584,
    ("medium", "1536x1024"): 1_568,
    ("high", "1024x1024"): 4_160,
    ("high", "1024x1536"): 6_240,
    ("high", "1536x1024"): 6_208,
}
PARTIAL_IMAGE_TOKENS = 100  # a streamed partial image bills this many more output tokens (the same guide)
_IMAGE_QUALITIES = frozenset(quality for quality, _ in IMAGE_OUTPUT_TOKENS)
_IMAGE_SIZES = frozenset(size for _, size in IMAGE_OUTPUT_TOKENS)
_IMAGE_ENDPOINTS = frozenset({"/images/generations", "/images/edits"})


def image_output_tokens(body: Mapping[str, Any]) -> int:
    """The most output tokens an image request can bill: ``n`` images of the largest its quality and size allow,
    plus its streamed partial images."""
    quality, size = body.get("quality"), body.get("size")
    per_image = max(
        tokens
        for (q, s), tokens in IMAGE_OUTPUT_TOKENS.items()
        if (quality == q or quality not in _IMAGE_QUALITIES) and (size == s or size not in _IMAGE_SIZES)
    )
    partial = body.get("partial_images")
    if type(partial) is int and partial > 0:
        per_image += partial * PARTIAL_IMAGE_TOKENS
    return per_image * _completions_billed(body)


def worst_case_usage(request: RequestInfo, input_tokens: int, output_ceiling: int) -> Usage:
    """The most a request can bill, as a usage for ``Pricer.price``: the span's own pricing, applied to the worst
    case. Output: its max_tokens, at most the model's ``output_ceiling`` (all of it when it sets none), for each
    completion it asks for."""
    if request.endpoint in _IMAGE_ENDPOINTS:
        images = image_output_tokens(request.body)
        return Usage(input_tokens, images, output_image_tokens=images)
    if request.operation not in _GENERATING:
        return Usage(input_tokens, 0)
    asked = request.max_output_tokens
    limit = output_ceiling if asked is None or asked <= 0 else min(asked, output_ceiling)
    output = limit * _completions_billed(request.body)
    # Audio output tokens are part of the output count, billed at the (much higher) audio rate.
    return Usage(input_tokens, output, output_audio_tokens=output if _wants_audio(request.body) else 0)


class OpenAILimits:
    """What costspan's budgets need to know about an OpenAI request (``RequestLimits``)."""

    def estimate_input_tokens(self, request: RequestInfo) -> int:
        return estimate_input_tokens(request.body)

    def worst_case_usage(self, request: RequestInfo, input_tokens: int, default_output_ceiling: int) -> Usage:
        ceiling = (model_output_ceiling(request.model) if request.model else None) or default_output_ceiling
        return worst_case_usage(request, input_tokens, ceiling)


LIMITS = OpenAILimits()
