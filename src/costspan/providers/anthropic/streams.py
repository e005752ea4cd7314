"""Watching an Anthropic Messages stream for its span: its usage and its end.

Shared by the sync and async stream proxies (``costspan.instrumentation.proxies``); runs once per event on the
user's iteration path.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from costspan.instrumentation.call import Call
from costspan.providers.anthropic.usage import StreamSummary

logger = logging.getLogger("costspan")


class StreamObserver:
    """Watches a stream's events for the span."""

    __slots__ = ("broken", "call", "reading", "request_id", "state", "texts")

    def __init__(self, call: Call, request_id: str | None) -> None:
        self.call = call
        self.request_id = request_id
        self.state = StreamSummary()
        self.broken = False
        # Inside the SDK stream's __next__, which closes the response as the stream ends: the reader sees that end.
        self.reading = False
        self.texts: list[str] | None = [] if call.telemetry.settings.capture_content else None

    def hides(self, event: Any) -> bool:
        """Record an event; never hides one (costspan asks an Anthropic stream for nothing the user did not)."""
        if self.broken:
            return False
        try:
            self.state.add(event)
            if self.texts is not None:
                text = getattr(getattr(event, "delta", None), "text", None)
                if isinstance(text, str):
                    self.texts.append(text)
        except Exception:
            self.broken = True
            logger.exception("costspan: could not read a stream event; this stream's usage is not recorded")
        return False

    def _content(self) -> str | None:
        if self.texts is None:
            return None
        return json.dumps([{"role": "assistant", "content": "".join(self.texts)}])

    def ended(self, exc: BaseException) -> None:
        """The SDK stream raised: ``StopIteration`` / ``StopAsyncIteration`` at its end, else an error midway (an
        ``error`` event, a dropped connection): billed, for an amount the stream did not finish saying."""
        state = self.state
        if isinstance(exc, (StopIteration, StopAsyncIteration)):
            self.call.finish(
                state.billed(), self.request_id, incomplete=not state.final, output_content=self._content()
            )
        else:
            self.call.fail(exc, state.billed())

    def abandon(self) -> None:
        """The stream stopped before its end (closed, left, dropped): priced if its final usage came, else
        ``incomplete``."""
        if not self.call.finished:
            self.call.finish(self.state.billed(), self.request_id, incomplete=True, output_content=self._content())
