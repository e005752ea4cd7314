"""Watching an OpenAI stream for its span: its usage, its end, and the usage chunk costspan asked for.

Shared by the sync and async stream proxies (``costspan.instrumentation.proxies``). Runs once per chunk on the
user's iteration path, so it does as little as it can there.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from costspan.instrumentation.call import Call
from costspan.providers.openai.usage import StreamSummary

logger = logging.getLogger("costspan")


def _forget_null_usage(item: Any) -> None:
    """Asked for usage, the server sends ``"usage": null`` on every chunk; unasked, it sends no such field. Mark
    the field unset again, so that ``to_dict()`` / ``to_json()`` (which leave unset fields out) give the user
    the chunk they would have had."""
    try:  # an SDK chunk under pydantic 2: the common case, on every chunk, tried first
        if item.__dict__["usage"] is None:
            item.__pydantic_fields_set__.discard("usage")
    except (AttributeError, KeyError):  # a plain-dict chunk (client.post without a model class), or pydantic 1
        if type(item) is dict and item.get("usage", True) is None:
            del item["usage"]


def _usage_only(item: Any) -> bool:
    """A chunk with usage and no choices: the shape of the one costspan asks for. Never raises."""
    try:
        fields = item if type(item) is dict else getattr(item, "__dict__", None) or {}
        return not fields.get("choices") and fields.get("usage") is not None and "type" not in fields
    except Exception:
        return False


class StreamObserver:
    """Watches a stream's items for the span; shared by the sync and async stream proxies."""

    __slots__ = ("_add", "broken", "call", "choices", "hide_usage_chunk", "reading", "request_id", "state", "texts")

    def __init__(self, call: Call, hide_usage_chunk: bool, request_id: str | None) -> None:
        self.call = call
        n = call.request.body.get("n")
        self.choices = n if type(n) is int and n > 0 else 1
        self.hide_usage_chunk = hide_usage_chunk
        self.request_id = request_id
        self.state = StreamSummary()
        self._add = self.state.add
        self.broken = False
        # Inside the SDK stream's __next__, which closes the response as the stream ends: the reader sees that end.
        self.reading = False
        self.texts: list[str] | None = [] if call.telemetry.settings.capture_content else None

    def hides(self, item: Any) -> bool:
        """Record an item; True when it is the usage-only chunk costspan asked for, to be kept from the user."""
        if self.broken:
            return self.hide_usage_chunk and _usage_only(item)
        try:
            usage_only = self._add(item)
            if self.texts is not None:
                self._collect_text(item)
            if self.hide_usage_chunk:
                if usage_only:
                    return True
                _forget_null_usage(item)
            return False
        except Exception:
            self.broken = True
            logger.exception("costspan: could not read a stream item; this stream's usage is not recorded")
            # Even so, the chunk costspan asked for must not reach the user.
            return self.hide_usage_chunk and _usage_only(item)

    def _collect_text(self, item: Any) -> None:
        assert self.texts is not None
        delta = getattr(item, "delta", None)
        if isinstance(delta, str):  # Responses API text delta events
            self.texts.append(delta)
            return
        for choice in getattr(item, "choices", None) or ():
            text = getattr(getattr(choice, "delta", None), "content", None) or getattr(choice, "text", None)
            if isinstance(text, str):
                self.texts.append(text)

    def _content(self) -> str | None:
        if self.texts is None:
            return None
        return json.dumps([{"role": "assistant", "content": "".join(self.texts)}])

    def ended(self, exc: BaseException) -> None:
        """The SDK stream raised: ``StopIteration`` / ``StopAsyncIteration`` at its end, else an error midway
        (it was billed, and may still have reported usage)."""
        if isinstance(exc, (StopIteration, StopAsyncIteration)):
            self.call.finish(self.state.summary, self.request_id, output_content=self._content())
        else:
            self.call.fail(exc, self.state.summary)

    def awaits_usage(self) -> bool:
        """Stopped now, the stream's next and last event is the usage chunk costspan asked for: every choice
        has finished and no usage came yet."""
        summary = self.state.summary
        return (
            self.hide_usage_chunk
            and not self.broken
            and summary.usage is None
            and len(summary.finish_reasons) >= self.choices
            and not self.call.finished
        )

    def abandon(self) -> None:
        """The stream stopped before its end (closed, left, dropped): priced if its usage arrived, else
        ``incomplete``, since the provider billed an amount the stream did not say."""
        if not self.call.finished:
            self.call.finish(self.state.summary, self.request_id, incomplete=True, output_content=self._content())
