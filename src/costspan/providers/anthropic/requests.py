"""What Anthropic requests say: which calls bill, what they ask for, and their content.

Pure functions over the body the SDK is about to send (``FinalRequestOptions.json_data``) and the parsed
response; ``patch.py`` calls them. Nothing here imports ``anthropic``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from costspan import semconv
from costspan.instrumentation.call import RequestInfo
from costspan.providers.anthropic.limits import COUNT_TOKENS, LIMITS

BATCH = "batch"  # the operation of creating a Message Batch, and of each of its results' spans
BATCHES_PATH = "/v1/messages/batches"

# POST paths that make a span, by path (the beta surface adds ``?beta=true``): gen_ai.operation.name.
# count_tokens is free: its span has a cost of $0 and budgets reserve nothing for it. Creating a batch bills
# nothing yet: its results are billed when read (``batches.py``).
ENDPOINTS: Mapping[str, str] = {
    "/v1/messages": "chat",
    "/v1/messages/count_tokens": COUNT_TOKENS,
    "/v1/complete": "text_completion",
    BATCHES_PATH: BATCH,
}


def read_request(
    url: str,
    body: Mapping[str, Any],
    *,
    stream: bool,
    provider: str,
    server: tuple[str | None, int | None],
    capture_content: bool = False,
) -> RequestInfo | None:
    """What a billable POST asks for, before it is sent; None for paths that make no span."""
    path = url.partition("?")[0]
    operation = ENDPOINTS.get(path)
    if operation is None:
        return None
    address, port = server
    model = body.get("model")
    max_tokens = body.get("max_tokens", body.get("max_tokens_to_sample"))
    tier = body.get("service_tier")
    tier = tier if type(tier) is str else None
    attributes: dict[str, Any] = {}
    if tier:
        attributes[semconv.ANTHROPIC_REQUEST_SERVICE_TIER] = tier
    return RequestInfo(
        path,
        operation,
        provider,
        model if type(model) is str else None,
        stream or body.get("stream") is True,
        tier,
        max_tokens if type(max_tokens) is int and operation != COUNT_TOKENS else None,
        address,
        port,
        body,
        LIMITS,
        attributes,
        semconv.ANTHROPIC_RESPONSE_SERVICE_TIER,
        input_content(body) if capture_content else None,
    )


def input_content(body: Mapping[str, Any]) -> str | None:
    """The prompt as JSON, for ``gen_ai.input.messages`` (only when the user opted in to content capture)."""
    messages = body.get("messages", body.get("prompt"))
    if messages is None:
        return None
    system = body.get("system")
    if system is not None and isinstance(messages, list):
        messages = [{"role": "system", "content": system}, *messages]
    return json.dumps(messages, default=str)


def output_content(body: Any) -> str | None:
    """The reply's text as JSON, for ``gen_ai.output.messages`` (only on opt-in)."""
    blocks = getattr(body, "content", None)
    if not isinstance(blocks, list):
        return None
    text = "".join(t for block in blocks if isinstance(t := getattr(block, "text", None), str))
    return json.dumps([{"role": "assistant", "content": text}])
