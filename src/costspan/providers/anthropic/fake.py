"""A stand-in for the Anthropic Messages API on loopback, speaking its wire format (JSON and SSE streams).

Tests drive the real ``anthropic`` SDK against it (``base_url=fake.base_url``). Usage is deterministic: it follows
from the request, so a test can compute the expected dollars by hand; ``FakeAnthropic.script`` sets the exact usage,
status or stream shape of the next responses.

Like the provider, it keeps its own bill of what it served (``FakeAnthropic.billed``), priced at its own rates
(``FakeAnthropic.rates``), and serves it through the Admin API's usage and cost reports (Admin API keys only),
with the provider's documented gaps: no priority-tier dollars in the cost report, no code execution in the usage
report. ``FakeAnthropic.bill`` adds usage the instrumentation never saw.

Message Batches too: create, retrieve (``in_progress`` for ``batch_polls`` retrievals, then ``ended``), list, cancel
and the JSONL results, each request answered as ``/v1/messages`` would be, with ``service_tier: batch``;
``FakeAnthropic.script_results`` makes a custom_id's result errored, canceled or expired, or sets its usage.

Run it alone with ``python -m costspan.providers.anthropic.fake --port 8898``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Scripted:
    """One scripted answer. ``usage`` replaces the usage object (the Message's, and the stream's final
    ``message_delta``); ``status`` other than 200 answers with an error (``retry_after`` seconds for 429/529); in a
    stream, ``error_after`` sends an ``error`` event after that many events and ``cut_after`` drops the connection."""

    usage: dict[str, Any] | None = None
    status: int = 200
    retry_after: int | None = None
    model: str | None = None
    error_after: int | None = None
    cut_after: int | None = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


# The stand-in bills at its own rates, USD per million tokens (input, cache read, 5-minute cache write, 1-hour
# cache write, output), kept apart from costspan's price data on purpose: reconciliation compares two independent
# sources. Flat: no long-context tier. Batch bills half; priority bills, but not in the cost report; unlisted
# models bill 0.
PROVIDER_RATES: dict[str, tuple[str, str, str, str, str]] = {
    "claude-haiku-4-5-20251001": ("1", "0.10", "1.25", "2", "5"),
    "claude-sonnet-4-5-20250929": ("3", "0.30", "3.75", "6", "15"),
}
WEB_SEARCH_USD = Decimal("0.01")
ADMIN_KEY_PREFIX = "sk-ant-admin"
TOKEN_TYPES = (  # the cost report's token_type, with the rate's index in PROVIDER_RATES
    ("uncached_input_tokens", 0),
    ("cache_read_input_tokens", 1),
    ("cache_creation.ephemeral_5m_input_tokens", 2),
    ("cache_creation.ephemeral_1h_input_tokens", 3),
    ("output_tokens", 4),
)
BUCKETS = {"1d": (86_400, 7, 31), "1h": (3_600, 24, 168), "1m": (60, 60, 1_440)}  # seconds, default, max limit


@dataclass(frozen=True)
class Billed:
    """One billed message, as the provider's ledger holds it (token counts as the usage report splits them)."""

    at: int  # Unix seconds
    model: str
    uncached_input_tokens: int
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0
    service_tier: str = "standard"
    workspace_id: str | None = None  # None: the default workspace
    request_id: str | None = None

    @property
    def tokens_by_type(self) -> tuple[int, ...]:
        return (
            self.uncached_input_tokens,
            self.cache_read_input_tokens,
            self.cache_write_5m_tokens,
            self.cache_write_1h_tokens,
            self.output_tokens,
        )


@dataclass(frozen=True)
class CodeExecution:
    """Code-execution container time on the bill: in the cost report only."""

    at: int
    usd: Decimal
    workspace_id: str | None = None


@dataclass
class _Ledger:
    entries: list[Billed | CodeExecution] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _State:
    script: deque[Scripted] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    # custom_id -> what its batch result is instead of a deterministic success (``FakeAnthropic.script_results``).
    batch_results: dict[str, BatchOutcome] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    """One scripted batch result: ``type`` succeeded, errored, canceled or expired; ``usage`` for a success."""

    type: str = "succeeded"
    usage: dict[str, Any] | None = None


@dataclass
class FakeBatch:
    """A Message Batch. It answers ``in_progress`` to ``polls`` retrievals, then has ended; a cancelled one ends at
    the next retrieval, its requests ``canceled``."""

    id: str
    requests: list[dict[str, Any]]
    created_at: str
    polls: int = 0
    status: str = "in_progress"
    ended_at: str | None = None
    cancel_initiated_at: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(part.get("text") or "") for part in content if isinstance(part, dict))
    return ""


def input_tokens_for(body: dict[str, Any]) -> int:
    """Deterministic prompt size: 1 token per 4 characters plus 5 per message, plus the system prompt's."""
    messages = body.get("messages") or []
    return sum(len(_text_of(m.get("content"))) // 4 + 5 for m in messages) + len(_text_of(body.get("system"))) // 4


WORDS = ("Here", "is", "a", "concise", "answer", "from", "the", "stand-in", "model.")


def reply_words(body: dict[str, Any]) -> list[str]:
    """The reply: at most ``max_tokens`` words (one token each) and at most 9."""
    limit = min(int(body.get("max_tokens") or 9), len(WORDS))
    return list(WORDS[:limit])


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048  # a thousand concurrent clients in the concurrency test

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-stream are expected here


class FakeAnthropic:
    """A threaded HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self, port: int = 0, batch_polls: int = 0) -> None:
        self.state = _State()
        self.ledger = _Ledger()
        self.rates = {model: tuple(map(Decimal, rates)) for model, rates in PROVIDER_RATES.items()}
        self.batch_polls = batch_polls  # how many retrievals of a new batch answer in_progress
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = _QuietServer(("127.0.0.1", port), handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def received(self) -> list[Received]:
        return self.state.received

    def script(self, *answers: Scripted) -> None:
        with self.state.lock:
            self.state.script.extend(answers)

    @property
    def billed(self) -> list[Billed | CodeExecution]:
        return self.ledger.entries

    def bill(self, *entries: Billed | CodeExecution) -> None:
        """Add to the provider's ledger directly: usage costspan never saw, code execution, past days."""
        with self.ledger.lock:
            self.ledger.entries.extend(entries)

    def retime(self, moments: dict[str, int]) -> None:
        """Move ledger entries to the Unix second given for their request id (as the demo backdates its spans)."""
        with self.ledger.lock:
            self.ledger.entries[:] = [
                replace(e, at=moments[e.request_id])
                if isinstance(e, Billed) and e.request_id is not None and e.request_id in moments
                else e
                for e in self.ledger.entries
            ]

    def cost_of(self, entry: Billed) -> dict[str, Decimal]:
        """The provider's charge for one message, by the cost report's token_type (and web_search)."""
        zero = Decimal(0)
        rates = self.rates.get(entry.model, (zero,) * 5)
        share = Decimal("0.5") if entry.service_tier == "batch" else Decimal(1)
        tokens = entry.tokens_by_type
        costs = {name: tokens[i] * rates[i] * share / 1_000_000 for name, i in TOKEN_TYPES}
        costs["web_search"] = entry.web_search_requests * WEB_SEARCH_USD
        return costs

    def script_results(self, **outcomes: BatchOutcome) -> None:
        """What the batch results of these custom_ids are (a deterministic success otherwise)."""
        with self.state.lock:
            self.state.batch_results.update(outcomes)

    def next_scripted(self) -> Scripted:
        with self.state.lock:
            return self.state.script.popleft() if self.state.script else Scripted()

    def start(self) -> FakeAnthropic:
        threading.Thread(target=self.server.serve_forever, name="fakeanthropic", daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.request_id = f"req_fake_{next(self.fake.state.ids):06d}"
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        with self.fake.state.lock:
            self.fake.state.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        scripted = self.fake.next_scripted()
        if scripted.status != 200:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(scripted.status, "api_error")
            extra = {"retry-after": str(scripted.retry_after)} if scripted.retry_after is not None else {}
            self._json(
                {"type": "error", "error": {"type": kind, "message": "scripted failure"}}, scripted.status, extra
            )
            return
        path = self.path.split("?")[0]
        if path.endswith((":rawPredict", ":streamRawPredict")):  # Vertex AI: the model is in the path
            body.setdefault("model", path.rpartition("/")[2].partition(":")[0])
            path = "/v1/messages"
        if path.startswith("/v1/messages/batches"):
            self._batches_post(path, body)
        elif path == "/v1/messages":
            self._messages(body, scripted)
        elif path == "/v1/messages/count_tokens":
            self._json({"input_tokens": input_tokens_for(body)})
        else:
            self._json({"type": "error", "error": {"type": "not_found_error", "message": path}}, 404)

    def do_GET(self) -> None:
        self.request_id = f"req_fake_{next(self.fake.state.ids):06d}"
        with self.fake.state.lock:
            self.fake.state.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, {}))
        path = self.path.split("?")[0]
        if path.startswith("/v1/messages/batches"):
            self._batches_get(path)
        else:
            self._admin_report()

    # --- Message Batches: create, retrieve, list, cancel, results -------------------------------------------

    def _batches_post(self, path: str, body: dict[str, Any]) -> None:
        state = self.fake.state
        if path == "/v1/messages/batches":
            created = FakeBatch(
                f"msgbatch_fake{next(state.ids):06d}", list(body.get("requests") or []), _now(), self.fake.batch_polls
            )
            with state.lock:
                state.batches[created.id] = created
            self._json(self._batch_object(created))
            return
        batch_id, _, action = path.removeprefix("/v1/messages/batches/").partition("/")
        batch = state.batches.get(batch_id)
        if batch is None or action != "cancel":
            self._json({"type": "error", "error": {"type": "not_found_error", "message": path}}, 404)
            return
        with state.lock:
            if batch.status == "in_progress":
                batch.status, batch.cancel_initiated_at = "canceling", _now()
        self._json(self._batch_object(batch))

    def _batches_get(self, path: str) -> None:
        state = self.fake.state
        if path == "/v1/messages/batches":
            listed = [self._batch_object(b) for b in reversed(list(state.batches.values()))]
            first, last = (listed[0]["id"], listed[-1]["id"]) if listed else (None, None)
            self._json({"data": listed, "has_more": False, "first_id": first, "last_id": last})
            return
        batch_id, _, action = path.removeprefix("/v1/messages/batches/").partition("/")
        batch = state.batches.get(batch_id)
        if batch is None or action not in ("", "results") or (action == "results" and batch.status != "ended"):
            self._json({"type": "error", "error": {"type": "not_found_error", "message": path}}, 404)
            return
        if action == "results":
            data = b"".join(json.dumps(line).encode() + b"\n" for line in batch.results)
            self._headers(200, "application/binary", len(data), {})
            self.wfile.write(data)
            return
        with state.lock:
            self._advance(batch)
        self._json(self._batch_object(batch))

    def _advance(self, batch: FakeBatch) -> None:
        """One retrieval: an in-progress batch counts down its polls; then it ends and its results are made."""
        if batch.status == "in_progress" and batch.polls > 0:
            batch.polls -= 1
            return
        if batch.status == "ended":
            return
        canceled = batch.status == "canceling"
        for request in batch.requests:
            custom_id = str(request.get("custom_id"))
            outcome = self.fake.state.batch_results.get(custom_id, BatchOutcome())
            batch.results.append(self._batch_result(custom_id, request.get("params") or {}, outcome, canceled))
        batch.status, batch.ended_at = "ended", _now()

    def _batch_result(
        self, custom_id: str, params: dict[str, Any], outcome: BatchOutcome, canceled: bool
    ) -> dict[str, Any]:
        kind = "canceled" if canceled else outcome.type
        result: dict[str, Any] = {"type": kind}
        if kind == "errored":
            result["error"] = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "scripted failure"},
            }
        elif kind == "succeeded":
            words = reply_words(params)
            usage = outcome.usage or {
                "input_tokens": input_tokens_for(params),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": len(words),
                "service_tier": "batch",
            }
            result["message"] = {
                "id": f"msg_fake{next(self.fake.state.ids):06d}",
                "type": "message",
                "role": "assistant",
                "model": str(params.get("model")),
                "content": [{"type": "text", "text": " ".join(words)}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        return {"custom_id": custom_id, "result": result}

    def _batch_object(self, batch: FakeBatch) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if batch.status == "ended":
            for line in batch.results:
                counts[line["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch.requests)
        ended = batch.status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "created_at": batch.created_at,
            "expires_at": batch.created_at,
            "ended_at": batch.ended_at,
            "cancel_initiated_at": batch.cancel_initiated_at,
            "archived_at": None,
            "results_url": f"{self.fake.base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _headers(self, status: int, content_type: str, length: int | None, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("request-id", self.request_id)
        for name, value in extra.items():
            self.send_header(name, value)
        if length is None:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(length))
        self.end_headers()

    def _json(self, payload: dict[str, Any], status: int = 200, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._headers(status, "application/json", len(data), extra or {})
        self.wfile.write(data)

    def _usage(self, body: dict[str, Any], scripted: Scripted, output_tokens: int) -> dict[str, Any]:
        if scripted.usage is not None:
            return scripted.usage
        return {
            "input_tokens": input_tokens_for(body),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _messages(self, body: dict[str, Any], scripted: Scripted) -> None:
        words = reply_words(body)
        text = " ".join(words)
        usage = self._usage(body, scripted, len(words))
        self._record_bill(scripted.model or str(body.get("model")), usage)
        message: dict[str, Any] = {
            "id": f"msg_fake{next(self.fake.state.ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": scripted.model or str(body.get("model")),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if len(words) >= int(body.get("max_tokens") or 0) else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            self._json(message)
            return

        def events() -> Iterator[tuple[str, dict[str, Any]]]:
            # message_start has the input counts and a placeholder output count, as the API sends it.
            start_usage = {**usage, "output_tokens": 1}
            yield (
                "message_start",
                {
                    "type": "message_start",
                    "message": {**message, "content": [], "usage": start_usage, "stop_reason": None},
                },
            )
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield "ping", {"type": "ping"}
            for i, word in enumerate(words):
                delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
                yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            yield "content_block_stop", {"type": "content_block_stop", "index": 0}
            stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
            yield "message_delta", {"type": "message_delta", "delta": stop, "usage": usage}
            yield "message_stop", {"type": "message_stop"}

        self._headers(200, "text/event-stream", None, {})
        for sent, (event, data) in enumerate(events()):
            if sent == scripted.cut_after:
                self.close_connection = True  # no terminating chunk: the client sees the connection drop
                return
            if sent == scripted.error_after:
                event, data = "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            self.wfile.flush()
            if event == "error":
                break
        self.wfile.write(b"0\r\n\r\n")

    # --- the Admin API's usage and cost reports (Admin API keys) -----------------------------------------------
    def _admin_report(self) -> None:
        parts = urlsplit(self.path)
        reports: dict[str, Callable[[dict[str, list[str]]], None]] = {
            "/v1/organizations/usage_report/messages": self._usage_report,
            "/v1/organizations/cost_report": self._cost_report,
        }
        report = reports.get(parts.path)
        if report is None:
            self._json({"type": "error", "error": {"type": "not_found_error", "message": parts.path}}, 404)
        elif self._admin_authorized():
            # Array parameters arrive as `group_by[]=a&group_by[]=b` (the documented form) or `group_by=a`.
            query: dict[str, list[str]] = defaultdict(list)
            for name, values in parse_qs(parts.query).items():
                query[name.removesuffix("[]")].extend(values)
            report(query)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._json({"type": "error", "error": {"type": kind, "message": message}}, status)

    def _admin_authorized(self) -> bool:
        key = self.headers.get("x-api-key") or ""
        if not key:
            self._error(401, "authentication_error", "x-api-key header is required")
        elif not key.startswith(ADMIN_KEY_PREFIX):
            self._error(401, "authentication_error", "invalid x-api-key")
        elif not self.headers.get("anthropic-version"):
            self._error(400, "invalid_request_error", "anthropic-version: header is required")
        else:
            return True
        return False

    def _record_bill(self, model: str, usage: dict[str, Any]) -> None:
        """The provider bills what it generated, whether or not the client read the usage."""
        creation = usage.get("cache_creation") or {}
        one_hour = int(creation.get("ephemeral_1h_input_tokens") or 0)
        self.fake.bill(
            Billed(
                at=int(time.time()),
                model=model,
                uncached_input_tokens=int(usage.get("input_tokens") or 0),
                output_tokens=int(usage.get("output_tokens") or 0),
                cache_read_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
                cache_write_5m_tokens=int(usage.get("cache_creation_input_tokens") or 0) - one_hour,
                cache_write_1h_tokens=one_hour,
                web_search_requests=int((usage.get("server_tool_use") or {}).get("web_search_requests") or 0),
                service_tier=str(usage.get("service_tier") or "standard"),
                request_id=self.request_id,
            )
        )

    def _report_page(
        self,
        query: dict[str, list[str]],
        widths: tuple[str, ...],
        results: Callable[[list[Billed | CodeExecution]], list[dict[str, Any]]],
    ) -> None:
        """Buckets from ``starting_at`` (snapped to the bucket) until ``ending_at``, ``limit`` to a page; ``page``
        is the cursor the last page returned: the next bucket's start, base64-encoded."""
        try:
            if not query.get("starting_at"):
                raise ValueError("starting_at (an RFC 3339 timestamp) is required")
            start = int(datetime.fromisoformat(query["starting_at"][0]).timestamp())
            end = int(datetime.fromisoformat(query["ending_at"][0]).timestamp()) if query.get("ending_at") else None
            width = (query.get("bucket_width") or ["1d"])[0]
            if width not in widths:
                raise ValueError(f"bucket_width must be one of {', '.join(widths)}")
            seconds, default_limit, max_limit = BUCKETS[width]
            limit = int(query["limit"][0]) if query.get("limit") else default_limit
            if not 1 <= limit <= max_limit:
                raise ValueError(f"limit must be from 1 to {max_limit} for bucket_width {width}")
            if query.get("page"):
                cursor = base64.b64decode(query["page"][0].removeprefix("page_")).decode()
                start = int(datetime.fromisoformat(cursor).timestamp())
        except ValueError as error:  # binascii.Error and UnicodeDecodeError are ValueErrors too
            self._error(400, "invalid_request_error", str(error))
            return
        end = end if end is not None else int(time.time()) + 1
        first = start - start % seconds
        starts = list(range(first, end, seconds))
        with self.fake.ledger.lock:
            ledger = list(self.fake.ledger.entries)
        data = [
            {
                "starting_at": _rfc3339(bucket),
                "ending_at": _rfc3339(bucket + seconds),
                "results": results([e for e in ledger if bucket <= e.at < bucket + seconds]),
            }
            for bucket in starts[:limit]
        ]
        more = len(starts) > limit
        next_page = "page_" + base64.b64encode(_rfc3339(starts[limit]).encode()).decode() if more else None
        self._json({"data": data, "has_more": more, "next_page": next_page})

    def _usage_report(self, query: dict[str, list[str]]) -> None:
        group_by = set(query.get("group_by", []))
        workspaces = set(query.get("workspace_ids", []))
        tiers = set(query.get("service_tiers", []))

        def results(entries: list[Billed | CodeExecution]) -> list[dict[str, Any]]:
            sums: dict[tuple[str | None, ...], list[int]] = defaultdict(lambda: [0] * 6)
            for entry in entries:
                if not isinstance(entry, Billed):  # code execution is not in the usage report
                    continue
                if (workspaces and entry.workspace_id not in workspaces) or (tiers and entry.service_tier not in tiers):
                    continue
                key = (
                    entry.model if "model" in group_by else None,
                    entry.service_tier if "service_tier" in group_by else None,
                    entry.workspace_id if "workspace_id" in group_by else None,
                    "0-200k" if "context_window" in group_by else None,
                )
                for i, tokens in enumerate((*entry.tokens_by_type, entry.web_search_requests)):
                    sums[key][i] += tokens
            return [
                {
                    "api_key_id": None,
                    "workspace_id": workspace,
                    "model": model,
                    "service_tier": tier,
                    "context_window": window,
                    "uncached_input_tokens": uncached,
                    "cache_read_input_tokens": cache_read,
                    "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
                    "output_tokens": output,
                    "server_tool_use": {"web_search_requests": searches},
                }
                for (model, tier, workspace, window), (uncached, cache_read, write_5m, write_1h, output, searches) in (
                    sums.items()
                )
            ]

        self._report_page(query, ("1d", "1h", "1m"), results)

    def _cost_report(self, query: dict[str, list[str]]) -> None:
        group_by = set(query.get("group_by", []))
        described = "description" in group_by

        def results(entries: list[Billed | CodeExecution]) -> list[dict[str, Any]]:
            sums: dict[tuple[str | None, ...], Decimal] = defaultdict(Decimal)
            for entry in entries:
                workspace = entry.workspace_id if "workspace_id" in group_by else None
                if isinstance(entry, CodeExecution):
                    sums[("code_execution", None, None, None, workspace)] += entry.usd
                    continue
                if entry.service_tier in ("priority", "priority_on_demand"):
                    continue  # priority tier is billed apart: never in the cost report
                for token_type, amount in self.fake.cost_of(entry).items():
                    key: tuple[str | None, ...]
                    if token_type == "web_search":
                        key = ("web_search", None, None, None, workspace)
                    else:
                        key = ("tokens", entry.model, entry.service_tier, token_type, workspace)
                    sums[key if described else (None, None, None, None, workspace)] += amount
            return [
                {
                    "currency": "USD",
                    "amount": str(usd * 100),  # cents, as a decimal string
                    "workspace_id": workspace,
                    "description": _description(cost_type, model, token_type) if described else None,
                    "cost_type": cost_type,
                    "context_window": "0-200k" if cost_type == "tokens" else None,
                    "model": model,
                    "service_tier": tier,
                    "token_type": token_type,
                }
                for (cost_type, model, tier, token_type, workspace), usd in sums.items()
                if usd
            ]

        self._report_page(query, ("1d",), results)


def _rfc3339(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _description(cost_type: str | None, model: str | None, token_type: str | None) -> str:
    if cost_type == "code_execution":
        return "Code Execution Usage"
    if cost_type == "web_search":
        return "Web Search Usage"
    return f"{model} Usage - {token_type}"


def _now() -> str:
    """The current time as the API writes it (RFC 3339)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the loopback Anthropic stand-in.")
    parser.add_argument("--port", type=int, default=8898)
    args = parser.parse_args()
    with FakeAnthropic(port=args.port) as fake:
        print(f"Anthropic stand-in listening; set ANTHROPIC_BASE_URL={fake.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
