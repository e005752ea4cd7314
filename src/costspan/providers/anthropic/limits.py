"""The most an Anthropic request can bill, read from what it asks for: budgets reserve this before the call.

``max_tokens`` is required by the Messages API, so the output side of the worst case is exact. The prompt is
estimated locally (no tokenizer download). Where the request asks for caching, the worst case writes the whole
prompt to the cache at the dearest lifetime it names (1.25x input for 5 minutes, 2x for an hour); web searches
count up to the tool's ``max_uses``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from costspan.instrumentation.call import RequestInfo
from costspan.usage import Usage

COUNT_TOKENS = "count_tokens"  # the operation of messages.count_tokens, which is free
_PROMPT_FIELDS = ("system", "messages", "tools", "prompt")
_TOKENS_PER_MESSAGE = 3
# An image is billed by its pixels (about width x height / 750, at most ~1,600 tokens once the API scales it down),
# not by its base64 length.
_TOKENS_PER_IMAGE = 1_600


class _Prompt:
    __slots__ = ("cache", "chars", "images")

    def __init__(self) -> None:
        self.chars = 0
        self.images = 0
        self.cache: str | None = None  # None, "5m" or "1h": the dearest cache lifetime asked for

    def measure(self, value: Any) -> None:
        if isinstance(value, str):
            self.chars += len(value)
        elif isinstance(value, Mapping):
            if value.get("type") == "image":
                self.images += 1
                return
            for key, item in value.items():
                if key == "cache_control":
                    self.cached(item)
                    continue
                self.chars += len(key)
                self.measure(item)
        elif isinstance(value, list):
            for item in value:
                self.measure(item)
        elif value is not None:
            self.chars += len(str(value))

    def cached(self, control: Any) -> None:
        ttl = control.get("ttl") if isinstance(control, Mapping) else None
        if ttl == "1h" or self.cache is None:
            self.cache = "1h" if ttl == "1h" else "5m"


def _prompt(body: Mapping[str, Any]) -> tuple[int, str | None]:
    prompt = _Prompt()
    messages = 0
    for name in _PROMPT_FIELDS:
        value = body.get(name)
        if value is not None:
            prompt.measure(value)
            if name == "messages" and isinstance(value, list):
                messages = len(value)
    if "cache_control" in body:  # automatic caching, set on the request itself
        prompt.cached(body["cache_control"])
    tokens = math.ceil(prompt.chars / 4) + _TOKENS_PER_MESSAGE * (messages + 1) + _TOKENS_PER_IMAGE * prompt.images
    return tokens, prompt.cache


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Input tokens of a request, estimated locally: 4 characters a token plus per-message overhead. A heuristic;
    settlement corrects the ledger to the real count once the response says it."""
    return _prompt(body)[0]


def web_search_ceiling(body: Mapping[str, Any]) -> int:
    """The most web searches the request allows: the sum of its web search tools' ``max_uses`` (0 if unset, since
    then the model may search any number of times and no bound exists to reserve)."""
    total = 0
    for tool in body.get("tools") or ():
        if isinstance(tool, Mapping) and str(tool.get("type", "")).startswith("web_search"):
            uses = tool.get("max_uses")
            total += uses if type(uses) is int and uses > 0 else 0
    return total


def worst_case_usage(request: RequestInfo, input_tokens: int, default_output_ceiling: int) -> Usage:
    """The most a request can bill, as a usage for ``Pricer.price``."""
    if request.operation == COUNT_TOKENS:
        return Usage(0, 0)  # free
    asked = request.max_output_tokens
    output = asked if asked is not None and asked > 0 else default_output_ceiling
    cache = _prompt(request.body)[1]
    written = input_tokens if cache else 0
    return Usage(
        input_tokens,
        output,
        cache_write_tokens=written,
        cache_write_1h_tokens=written if cache == "1h" else 0,
        web_search_requests=web_search_ceiling(request.body),
    )


class AnthropicLimits:
    """What costspan's budgets need to know about an Anthropic request (``RequestLimits``)."""

    def estimate_input_tokens(self, request: RequestInfo) -> int:
        return estimate_input_tokens(request.body)

    def worst_case_usage(self, request: RequestInfo, input_tokens: int, default_output_ceiling: int) -> Usage:
        return worst_case_usage(request, input_tokens, default_output_ceiling)


LIMITS = AnthropicLimits()
