"""Message Batches: creating one keeps who created it; reading its results records each succeeded result once, at
batch rates, for that creator.

A Message Batch carries no metadata, and its results echo only each request's ``custom_id``, so the creating
call's attribution is kept by the telemetry, keyed by the new batch's id (``Telemetry.remember_batch``; the
instrumentor keeps it in the store's file, which every process of the host shares).

The SDK's ``results()`` first retrieves the batch, for its ``results_url``, then streams the JSONL from that URL.
The retrieval says which URL holds which batch's results, and when the batch was created and ended. As the user
reads the lines, each succeeded result becomes a span of its own (``Telemetry.record_batch_job``), priced like the
Messages call it was, at batch rates: Anthropic bills each request on its own (its long-context tier counts that
request's prompt, not the batch's) and a batch may mix models. The unit counted once is ``<batch id>/<custom_id>``
(the API requires a custom_id unique within its batch): reading the results again, here or in another process,
adds nothing, and results read to their end are not watched again by this process at all. Each result's span is in
a trace of its own, named by that unit, so that every copy of it meets in one trace, and the store never takes the
results of one batch for retries of one call. Errored, canceled and expired results are not billed, and make no
span.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from costspan.instrumentation.call import RequestInfo, Telemetry
from costspan.providers.anthropic.requests import BATCHES_PATH, read_request
from costspan.providers.anthropic.sdk import AsyncJSONLDecoder, JSONLDecoder
from costspan.providers.anthropic.usage import fields_of, summarize_message
from costspan.usage import ResponseSummary

logger = logging.getLogger("costspan")


@dataclass(frozen=True, slots=True)
class EndedBatch:
    """A batch whose processing has ended, as its retrieval said."""

    batch_id: str
    created_ns: int | None
    ended_ns: int | None


def summarize_created(body: Any) -> ResponseSummary:
    """The new batch's id, from the create call's response (a MessageBatch or its JSON)."""
    batch_id = fields_of(body).get("id")
    batch_id = batch_id if isinstance(batch_id, str) and batch_id else None
    return ResponseSummary(response_id=batch_id, batch_id=batch_id)


def summarize_result(line: Any, batch_id: str) -> ResponseSummary | None:
    """One line of the results JSONL, as the call it billed; None for a result that billed nothing (errored,
    canceled, expired)."""
    fields = fields_of(line)
    result = fields_of(fields.get("result"))
    custom_id = fields.get("custom_id")
    if result.get("type") != "succeeded" or not isinstance(custom_id, str):
        return None
    summary = summarize_message(result.get("message"))
    if summary.service_tier == "batch":
        # What the API reports for a batch request. The batch flag prices it; the price data has no such tier.
        summary.service_tier = None
    summary.batch_id = f"{batch_id}/{custom_id}"
    return summary


def unix_ns(moment: Any) -> int | None:
    """An RFC 3339 timestamp (parsed by the SDK into a datetime, or the raw string) in Unix nanoseconds."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return None
    if isinstance(moment, datetime) and moment.tzinfo is not None:
        return int(moment.timestamp() * 1_000_000) * 1_000
    return None


def _batch_path(url: str) -> tuple[str, str] | None:
    """(batch id, what follows it) of a URL under /v1/messages/batches/; None otherwise."""
    path = urlsplit(url).path
    rest = path.removeprefix(BATCHES_PATH + "/")
    if rest == path:
        return None
    batch_id, _, action = rest.partition("/")
    return (batch_id, action) if batch_id else None


class BatchReads:
    """What one instrumentation has seen of Message Batches (the latest ``LIMIT`` of each): which results URL
    holds which ended batch's results, from the retrievals; and which batches' results were read to the end, so
    that reading them again is not watched at all."""

    LIMIT = 1_000

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._ended: OrderedDict[str, EndedBatch] = OrderedDict()
        self._read_through: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def watch(self, url: str, provider: str, server: tuple[str | None, int | None]) -> BatchRead | None:
        """A GET costspan watches: a batch's retrieval, or its results (found by the URL its retrieval gave, else
        by the documented path); None for any other GET, and for results already recorded to the end."""
        with self._lock:
            ended = self._ended.get(url)
        if ended is None:
            found = _batch_path(url)
            if found is None or found[1] not in ("", "results"):
                return None
            if found[1] == "results":
                ended = EndedBatch(found[0], None, None)
        if ended is not None and self.was_read_through(ended.batch_id):
            return None
        request = read_request(BATCHES_PATH, {}, stream=False, provider=provider, server=server)
        return None if request is None else BatchRead(self, request, ended)

    def noted(self, batch: Any) -> None:
        """Keep where an ended batch's results are, from its retrieval (a MessageBatch, or a BetaMessageBatch)."""
        fields = fields_of(batch)
        batch_id, url = fields.get("id"), fields.get("results_url")
        if fields.get("processing_status") == "ended" and isinstance(batch_id, str) and isinstance(url, str):
            ended = EndedBatch(batch_id, unix_ns(fields.get("created_at")), unix_ns(fields.get("ended_at")))
            with self._lock:
                _bounded_put(self._ended, url, ended, self.LIMIT)

    def read_through(self, batch_id: str) -> None:
        with self._lock:
            _bounded_put(self._read_through, batch_id, None, self.LIMIT)

    def was_read_through(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self._read_through


def _bounded_put(entries: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    entries[key] = value
    entries.move_to_end(key)
    if len(entries) > limit:
        entries.popitem(last=False)


class BatchRead:
    """A GET of one batch (``retrieve``) or of its results. It makes no span of its own: a retrieval only notes
    where an ended batch's results are; reading the results records each succeeded one."""

    __slots__ = ("ended", "reads", "request")

    def __init__(self, reads: BatchReads, request: RequestInfo, ended: EndedBatch | None) -> None:
        self.reads = reads
        self.request = request
        self.ended = ended  # None: a retrieval

    def observe(self, result: Any) -> Any:
        """What the SDK returned, watched when it is a results stream. Never raises."""
        try:
            if self.ended is None:
                self.reads.noted(result)
            elif isinstance(result, JSONLDecoder):
                return SyncResultsProxy(result, ResultsRecorder(self, self.ended, result))
            elif isinstance(result, AsyncJSONLDecoder):
                return AsyncResultsProxy(result, ResultsRecorder(self, self.ended, result))
        except Exception:
            logger.exception("costspan: could not watch a Message Batch read; the call was not affected")
        return result


class ResultsRecorder:
    """Records each succeeded result of one results stream as the user reads it."""

    __slots__ = ("attribution", "batch", "read", "request_id")

    def __init__(self, read: BatchRead, batch: EndedBatch, decoder: Any) -> None:
        self.read = read
        self.batch = batch
        self.attribution: Any = None  # looked up at the first succeeded result
        try:
            request_id = decoder.http_response.headers.get("request-id")
        except Exception:
            request_id = None
        self.request_id = request_id if isinstance(request_id, str) else None

    def seen(self, line: Any) -> None:
        try:
            batch = self.batch
            summary = summarize_result(line, batch.batch_id)
            if summary is None:
                return
            telemetry = self.read.reads.telemetry
            if self.attribution is None:
                self.attribution = telemetry.batch_attribution(batch.batch_id)
            telemetry.record_batch_job(
                self.read.request,
                summary,
                self.request_id,
                metadata=self.attribution,
                created_ns=batch.created_ns,
                completed_ns=batch.ended_ns,
            )
        except Exception:
            logger.exception("costspan: could not record a Message Batch result; the results are not affected")

    def ended(self) -> None:
        """The stream was read to its end: every result is recorded."""
        self.read.reads.read_through(self.batch.batch_id)


class _ObservedResults:
    """Stands in for the SDK's JSONL decoder: forwards everything and passes ``isinstance`` checks for its class."""

    __slots__ = ("__weakref__", "_decoder", "_recorder", "_seen")

    def __init__(self, decoder: Any, recorder: ResultsRecorder) -> None:
        self._decoder = decoder
        self._recorder = recorder
        self._seen = recorder.seen

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._decoder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)

    def __repr__(self) -> str:
        return repr(self._decoder)


class SyncResultsProxy(_ObservedResults):
    __slots__ = ()

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        try:
            line = self._decoder.__next__()
        except StopIteration:
            self._recorder.ended()
            raise
        self._seen(line)
        return line


class AsyncResultsProxy(_ObservedResults):
    __slots__ = ()

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        try:
            line = await self._decoder.__anext__()
        except StopAsyncIteration:
            self._recorder.ended()
            raise
        self._seen(line)
        return line
