"""What OpenAI requests and responses say: which calls bill, what they ask for, and their content.

Pure functions over the request body the SDK is about to send (``FinalRequestOptions.json_data``) and the parsed
response; ``patch.py`` calls them. Nothing here imports ``openai``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from costspan import semconv
from costspan.instrumentation.call import RequestInfo
from costspan.providers.openai.limits import LIMITS

# POST endpoints that bill, by path: (gen_ai.operation.name, openai.api.type).
_ENDPOINTS: Mapping[str, tuple[str, str | None]] = {
    "/chat/completions": ("chat", "chat_completions"),
    "/responses": ("chat", "responses"),
    "/embeddings": ("embeddings", None),
    "/completions": ("text_completion", None),
    "/batches": ("batch", None),
    "/moderations": ("moderation", None),
    "/fine_tuning/jobs": ("fine_tuning", None),
    "/videos": ("generate_content", None),
}
_ENDPOINT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("/images/", "generate_content"),
    ("/audio/", "generate_content"),
)
# Streams whose usage can be requested with stream_options.include_usage.
_USAGE_INJECTABLE = frozenset({"/chat/completions", "/completions"})


def classify_endpoint(path: str) -> tuple[str, str | None] | None:
    """(operation, api type) for a billable POST path; None for paths that do not bill."""
    found = _ENDPOINTS.get(path)
    if found is not None:
        return found
    for prefix, operation in _ENDPOINT_PREFIXES:
        if path.startswith(prefix):
            return operation, None
    return None


def read_request(
    path: str,
    body: Mapping[str, Any],
    *,
    stream: bool,
    provider: str,
    server: tuple[str | None, int | None],
    capture_content: bool = False,
) -> RequestInfo | None:
    """What a billable POST asks for, before it is sent; None for paths that do not bill."""
    classified = classify_endpoint(path)
    if classified is None:
        return None
    operation, api_type = classified
    address, port = server
    max_tokens = body.get("max_completion_tokens") or body.get("max_output_tokens") or body.get("max_tokens")
    model = body.get("model")
    tier = body.get("service_tier")
    tier = tier if type(tier) is str else None
    cache_key = body.get("prompt_cache_key")
    attributes: dict[str, Any] = {}
    if api_type:
        attributes[semconv.OPENAI_API_TYPE] = api_type
    if tier:
        attributes[semconv.OPENAI_REQUEST_SERVICE_TIER] = tier
    if type(cache_key) is str:
        attributes[semconv.COSTSPAN_PROMPT_CACHE_KEY] = cache_key
    return RequestInfo(  # positional, in field order: this runs on every call
        path,
        operation,
        provider,
        model if type(model) is str else None,
        stream or body.get("stream") is True,
        tier,
        max_tokens if type(max_tokens) is int else None,
        address,
        port,
        body,
        LIMITS,
        attributes,
        semconv.OPENAI_RESPONSE_SERVICE_TIER,
        input_content(body) if capture_content else None,
    )


def wants_usage_injection(request: RequestInfo) -> bool:
    if not request.stream or request.endpoint not in _USAGE_INJECTABLE:
        return False
    options = request.body.get("stream_options")
    return not (isinstance(options, Mapping) and options.get("include_usage") is True)


def with_usage_requested(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("stream_options")
    merged = dict(options) if isinstance(options, Mapping) else {}
    merged["include_usage"] = True
    return {**body, "stream_options": merged}


def with_batch_attribution(body: Mapping[str, Any], attribution: Mapping[str, str]) -> dict[str, Any]:
    """The batch-create body with the caller's attribution added to its metadata (never replacing a key the
    caller set, within the API's 16 keys of 512 characters), so the job's cost attributes back to its workload."""
    metadata = dict(body.get("metadata") or {})
    for key, value in attribution.items():
        if len(metadata) >= 16:
            break
        metadata.setdefault(key, value[:512])
    return {**body, "metadata": metadata}


FINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


def input_content(body: Mapping[str, Any]) -> str | None:
    """The prompt as JSON, for ``gen_ai.input.messages`` (only when the user opted in to content capture)."""
    content = body.get("messages", body.get("input", body.get("prompt")))
    return None if content is None else json.dumps(content, default=str)


def output_content(body: Any) -> str | None:
    """The completion as JSON, for ``gen_ai.output.messages`` (only on opt-in)."""
    output_text = getattr(body, "output_text", None)
    if isinstance(output_text, str):
        return json.dumps([{"role": "assistant", "content": output_text}])
    choices = getattr(body, "choices", None)
    if not choices:
        return None
    messages = []
    for choice in choices:
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
        messages.append({"role": "assistant", "content": text})
    return json.dumps(messages, default=str)
