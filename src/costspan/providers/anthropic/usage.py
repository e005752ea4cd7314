"""Pure functions that turn Anthropic's usage objects into one normalized ``Usage``.

Anthropic's ``input_tokens`` counts only the prompt after the last cache breakpoint: cache reads
(``cache_read_input_tokens``) and cache writes (``cache_creation_input_tokens``) are reported beside it. costspan's
``input_tokens`` is the whole prompt, so the three are added. Cache writes split by lifetime in ``cache_creation``;
the 1-hour part has its own rate. A missing or malformed usage object gives ``None``, never an exception.

Each function accepts SDK pydantic objects or the plain dicts of the wire format; nothing here imports
``anthropic``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from costspan.usage import ResponseSummary, Usage


class _Malformed(Exception):
    pass


_NO_FIELDS: Mapping[str, Any] = {}
_MAX_COUNT = 2**63 - 1  # what an OTLP int attribute holds


def fields_of(obj: Any) -> Mapping[str, Any]:
    """The fields of a JSON dict or an SDK model (fields a newer API added included), as a mapping."""
    if type(obj) is dict:
        return obj
    if obj is None:  # an absent part (most calls have no thinking or tool use): no failed attribute lookup
        return _NO_FIELDS
    fields = getattr(obj, "__dict__", None)
    if fields is None:
        return _NO_FIELDS
    extra = getattr(obj, "__pydantic_extra__", None)
    return {**extra, **fields} if extra else fields


def _count(value: Any) -> int:
    """A count: 0 when absent; anything but an int from 0 to 2**63 - 1 is malformed (a bool too)."""
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        raise _Malformed(value)
    return value


def normalize_usage(usage: Any) -> Usage | None:
    """Normalize an Anthropic usage object (a Message's, or the merged usage of a stream); ``None`` when it is
    missing or malformed."""
    fields = fields_of(usage)
    if fields.get("input_tokens") is None:
        return None
    get = fields.get
    try:
        cache_read = _count(get("cache_read_input_tokens"))
        cache_write = _count(get("cache_creation_input_tokens"))
        one_hour = _count(fields_of(get("cache_creation")).get("ephemeral_1h_input_tokens"))
        output = _count(get("output_tokens"))
        thinking = _count(fields_of(get("output_tokens_details")).get("thinking_tokens"))
        searches = _count(fields_of(get("server_tool_use")).get("web_search_requests"))
        if one_hour > cache_write or thinking > output:
            raise _Malformed("a part exceeds its total")
        return Usage(
            _count(get("input_tokens")) + cache_read + cache_write,
            output,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=thinking,
            output_unknown=get("output_tokens") is None,
            cache_write_1h_tokens=one_hour,
            web_search_requests=searches,
        )
    except _Malformed:
        return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def billed_tier(usage: Any) -> str | None:
    """The tier the usage says was billed. Fast mode (``speed: fast``) bills its own rates, which costspan does not
    price yet: reported as the tier ``fast``, so the call is ``unknown_tier`` rather than priced at standard."""
    fields = fields_of(usage)
    if fields.get("speed") == "fast":
        return "fast"
    return _str_or_none(fields.get("service_tier"))


def summarize_message(body: Any) -> ResponseSummary:
    """Summarize a parsed Message (or its JSON)."""
    fields = fields_of(body)
    reason = _str_or_none(fields.get("stop_reason"))
    usage = fields.get("usage")
    return ResponseSummary(
        _str_or_none(fields.get("model")),
        _str_or_none(fields.get("id")),
        billed_tier(usage),
        [reason] if reason else [],
        normalize_usage(usage),
    )


class StreamSummary:
    """Accumulates a ``ResponseSummary`` from Messages stream events.

    ``message_start`` carries the message with its usage so far; each ``message_delta`` carries cumulative usage
    (newer APIs repeat the input counts there, older ones only ``output_tokens``), so its non-null fields replace
    the earlier ones. ``add`` runs once per event on the user's iteration path.
    """

    __slots__ = ("_usage", "final", "summary")

    def __init__(self) -> None:
        self.summary = ResponseSummary()
        self._usage: dict[str, Any] = {}
        # A message_delta came: its usage is the bill. Before it, message_start's output count is a placeholder.
        self.final = False

    def add(self, event: Any) -> None:
        fields = event if type(event) is dict else getattr(event, "__dict__", _NO_FIELDS)
        kind = fields.get("type")
        if kind == "message_start":
            message = fields_of(fields.get("message"))
            summary = self.summary
            summary.model = _str_or_none(message.get("model"))
            summary.response_id = _str_or_none(message.get("id"))
            self._merge(message.get("usage"))
        elif kind == "message_delta":
            reason = _str_or_none(fields_of(fields.get("delta")).get("stop_reason"))
            if reason:
                self.summary.finish_reasons = [reason]
            self._merge(fields.get("usage"))
            self.final = True

    def _merge(self, usage: Any) -> None:
        if usage is None:
            return
        for key, value in fields_of(usage).items():
            if value is not None:
                self._usage[key] = value
        self.summary.usage = normalize_usage(self._usage)
        self.summary.service_tier = billed_tier(self._usage)

    def billed(self) -> ResponseSummary:
        """The summary to bill from: without usage until the final counts came, since a stream stopped before its
        message_delta billed an output the stream never said (``incomplete``, not message_start's placeholder)."""
        return self.summary if self.final else replace(self.summary, usage=None)
