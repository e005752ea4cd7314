"""The provider-neutral records of what a call used and what its response said.

Every provider normalizes its own wire format into these (``costspan.providers.<name>.usage``); pricing, the
span, the store and budgets read only these. Invariants, whatever the provider:
- ``input_tokens`` is the whole prompt: cached reads and cache writes are parts of it, not additions.
- ``output_tokens`` is the whole completion: reasoning, audio and prediction tokens are parts of it and are
  never added on top.
- ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written for an hour (Anthropic), billed at its
  own rate; ``web_search_requests`` counts server-side searches, billed per search, not per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more to build, on every call
class Usage:
    """Token counts of one call; treat as immutable. Parts (cached, reasoning, ...) are inside the totals."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    prediction_accepted_tokens: int = 0
    prediction_rejected_tokens: int = 0
    # A text-generating call whose response left out completion_tokens: output_tokens is a 0 placeholder, and the
    # call cannot be billed (``pricing.implausible_usage``).
    output_unknown: bool = False
    # Last, so that positional construction above keeps its meaning.
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0


@dataclass(slots=True)
class ResponseSummary:
    """What the response says about itself, whatever endpoint produced it."""

    model: str | None = None
    response_id: str | None = None
    service_tier: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    usage: Usage | None = None
    batch_id: str | None = None
