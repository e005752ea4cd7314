"""Pure functions that turn the OpenAI SDK's response shapes into one normalized ``Usage``.

Invariants, whatever the shape:
- ``input_tokens`` is the whole prompt: cached reads and cache writes are parts of it, not additions.
- ``output_tokens`` is the whole completion: reasoning, audio and prediction tokens are parts of it and are
  never added on top (OpenAI already counts them inside ``completion_tokens`` / ``output_tokens``).
- A missing or malformed usage object gives ``None`` ("no usage"), never an exception.

Each function accepts SDK pydantic objects or the plain dicts of the wire format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from costspan.usage import ResponseSummary, Usage


class _Malformed(Exception):
    pass


_NO_FIELDS: Mapping[str, Any] = {}


def _fields(obj: Any) -> Mapping[str, Any]:
    """The fields of a JSON dict or an SDK model, as a mapping (empty for None).

    Models are read through ``__dict__``: ``getattr`` on a pydantic model lacking the field raises and catches
    AttributeError inside pydantic, which costs microseconds. Fields the installed SDK does not know yet (a newer
    API) are in ``__pydantic_extra__``.
    """
    try:  # an SDK model: the common case, tried first
        fields = obj.__dict__
        extra = obj.__pydantic_extra__
    except AttributeError:
        if type(obj) is dict:
            return obj
        return getattr(obj, "__dict__", _NO_FIELDS)  # None, or a model from pydantic v1
    return {**extra, **fields} if extra else fields


_MAX_COUNT = 2**63 - 1  # what an OTLP int attribute holds; a larger count is no real usage


def _count(value: Any) -> int:
    """A token count: 0 when absent. Anything else than an int from 0 to 2**63 - 1 is malformed (bool is an int
    subclass, and a bool token count is a malformed payload, not 1)."""
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        raise _Malformed(value)
    return value


def _check_parts(usage: Usage) -> Usage:
    if usage.cache_read_tokens + usage.cache_write_tokens > usage.input_tokens:
        raise _Malformed("cached tokens exceed input tokens")
    if usage.reasoning_tokens > usage.output_tokens:
        raise _Malformed("reasoning tokens exceed output tokens")
    return usage


# Response objects of the endpoints that generate text, whose usage must count the completion. Embeddings ("list")
# legitimately have no completion_tokens.
_GENERATING_OBJECTS = frozenset({"chat.completion", "chat.completion.chunk", "text_completion"})


def _chat_usage(usage: Mapping[str, Any], generates: bool) -> Usage:
    """Chat Completions, legacy Completions and Embeddings (``prompt_tokens``/``completion_tokens``)."""
    prompt = _fields(usage.get("prompt_tokens_details")).get
    completion = _fields(usage.get("completion_tokens_details")).get
    completion_tokens = usage.get("completion_tokens")
    return Usage(  # positional, in field order: this runs on every call
        _count(usage.get("prompt_tokens")),  # present: normalize_usage checked
        _count(completion_tokens),
        _count(prompt("cached_tokens")),
        _count(prompt("cache_write_tokens")),
        _count(completion("reasoning_tokens")),
        _count(prompt("audio_tokens")),
        _count(completion("audio_tokens")),
        _count(prompt("image_tokens")),
        0,
        _count(completion("accepted_prediction_tokens")),
        _count(completion("rejected_prediction_tokens")),
        generates and completion_tokens is None,
    )


def _responses_usage(usage: Mapping[str, Any]) -> Usage:
    """Responses API, Images and audio transcription (``input_tokens``/``output_tokens``)."""
    # Responses says input_tokens_details; transcription says input_token_details.
    details = _fields(usage.get("input_tokens_details") or usage.get("input_token_details")).get
    output = _fields(usage.get("output_tokens_details")).get
    return Usage(
        _count(usage.get("input_tokens")),  # present: normalize_usage checked
        _count(usage.get("output_tokens")),
        cache_read_tokens=_count(details("cached_tokens")),
        cache_write_tokens=_count(details("cache_write_tokens")),
        input_audio_tokens=_count(details("audio_tokens")),
        input_image_tokens=_count(details("image_tokens")),
        reasoning_tokens=_count(output("reasoning_tokens")),
        output_image_tokens=_count(output("image_tokens")),
    )


def normalize_usage(usage: Any, object_type: Any = None) -> Usage | None:
    """Normalize any OpenAI usage object; ``None`` when it is missing or malformed. ``object_type`` is the
    ``object`` field of the response (or chunk) that carried it: it says whether a completion count is due."""
    fields = _fields(usage)
    try:
        if fields.get("prompt_tokens") is not None:
            generates = type(object_type) is str and object_type in _GENERATING_OBJECTS
            return _check_parts(_chat_usage(fields, generates))
        if fields.get("input_tokens") is not None:
            return _check_parts(_responses_usage(fields))
    except _Malformed:
        return None
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def summarize_response(body: Any) -> ResponseSummary:
    """Summarize a parsed (non-streamed) response body of any endpoint."""
    fields = _fields(body)
    object_type = fields.get("object")
    finish_reasons = []
    if object_type == "response":
        finish_reasons = _responses_finish_reasons(fields)
    elif object_type != "batch":
        choices = fields.get("choices")
        if type(choices) is list:
            for choice in choices:  # a loop, not a comprehension: this runs on every call
                reason = _fields(choice).get("finish_reason")
                if reason and type(reason) is str:
                    finish_reasons.append(reason)
    response_id = _str_or_none(fields.get("id"))
    return ResponseSummary(  # positional, in field order
        _str_or_none(fields.get("model")),
        response_id,
        _str_or_none(fields.get("service_tier")),
        finish_reasons,
        normalize_usage(fields.get("usage"), object_type),
        response_id if object_type == "batch" else None,
    )


def _responses_finish_reasons(response: Mapping[str, Any]) -> list[str]:
    status = response.get("status")
    if status == "incomplete":
        reason = _str_or_none(_fields(response.get("incomplete_details")).get("reason"))
        return [reason or "incomplete"]
    return [status] if isinstance(status, str) else []


# Responses API stream events that carry the final response object (and its usage).
_RESPONSES_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class StreamSummary:
    """Accumulates a ``ResponseSummary`` from stream items (chat/legacy chunks or Responses events).

    ``add`` runs once per chunk on the user's iteration path, so it touches only a few attributes.
    """

    __slots__ = ("summary",)

    def __init__(self) -> None:
        self.summary = ResponseSummary()

    def add(self, item: Any) -> bool:
        """Record one item; return True when it is a usage-only chunk (no choices, usage set)."""
        summary = self.summary
        # Fields through __dict__ (see _fields): a chat chunk has no `type`, and getattr would raise inside pydantic.
        # A plain dict is a chunk of a stream the user asked the client for without a model class (client.post).
        fields = item if type(item) is dict else getattr(item, "__dict__", _NO_FIELDS)
        event_type = fields.get("type")
        if event_type is not None:
            if isinstance(event_type, str) and event_type.startswith("response."):
                self._add_response_event(event_type, fields.get("response"))
            else:
                # Image and transcription streams end with an event that carries the usage itself
                # (image_generation.completed, image_edit.completed, transcript.text.done).
                usage = fields.get("usage")
                if usage is not None:
                    summary.usage = normalize_usage(usage)
            return False
        if summary.model is None:
            summary.model = _str_or_none(fields.get("model"))
            summary.response_id = _str_or_none(fields.get("id"))
        tier = fields.get("service_tier")
        if type(tier) is str:
            summary.service_tier = tier
        choices = fields.get("choices")
        if choices:
            for choice in choices:
                # A dict in a plain-dict chunk; a malformed chunk may hold a null choice.
                reason = choice.get("finish_reason") if type(choice) is dict else getattr(choice, "finish_reason", None)
                if reason and type(reason) is str:
                    summary.finish_reasons.append(reason)
        usage = fields.get("usage")
        if usage is not None:
            summary.usage = normalize_usage(usage, fields.get("object"))
            return not choices
        return False

    def _add_response_event(self, event_type: str, response: Any) -> None:
        if response is None:
            return
        summary = self.summary
        if event_type in _RESPONSES_TERMINAL_EVENTS:
            final = summarize_response(response)
            final.batch_id = summary.batch_id
            self.summary = final
        elif summary.model is None:
            fields = _fields(response)
            summary.model = _str_or_none(fields.get("model"))
            summary.response_id = _str_or_none(fields.get("id"))
