"""A stand-in for the OpenAI API on loopback, speaking its wire format (JSON and SSE streams).

``costspan demo`` runs against it, and the tests drive the real ``openai`` SDK against it. Usage is realistic and
deterministic: it follows from the request, so a test can compute the expected dollars by hand. A test may also
script the exact usage, status or service tier of the next responses with ``FakeOpenAI.script``.

Like the provider, it keeps its own bill of what it served (``FakeOpenAI.billed``), priced at its own rates
(``FakeOpenAI.rates``), and reports it through the organization Costs and Usage endpoints (admin keys only), so
``costspan reconcile`` can be tested against it. ``FakeOpenAI.bill`` adds usage the instrumentation never saw.

Run it alone with ``python -m costspan.providers.openai.fake --port 8899``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Request model -> the dated snapshot the API reports back, as the real API does.
SNAPSHOTS = {
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "o3": "o3-2025-04-16",
}
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")

# The stand-in bills at its own published rates, USD per million tokens (input, cached input, output), kept apart
# from costspan's price data on purpose: reconciliation compares two independent sources. Unlisted models bill 0.
PROVIDER_RATES: dict[str, tuple[str, str, str]] = {
    "gpt-4.1-2025-04-14": ("2.00", "0.50", "8.00"),
    "gpt-4.1-mini-2025-04-14": ("0.40", "0.10", "1.60"),
    "gpt-4o-mini-2024-07-18": ("0.15", "0.075", "0.60"),
    "gpt-4o-2024-08-06": ("2.50", "1.25", "10.00"),
    "gpt-5-2025-08-07": ("1.25", "0.125", "10.00"),
    "gpt-5-mini-2025-08-07": ("0.25", "0.025", "2.00"),
    "o3-2025-04-16": ("2.00", "0.50", "8.00"),
    "text-embedding-3-small": ("0.02", "0", "0"),
}
ADMIN_KEY_PREFIX = "sk-admin-"
DAY_S = 86_400


@dataclass
class Scripted:
    """One scripted answer: the usage object to return, an HTTP status, a service tier; for a stream, the number
    of events after which the connection drops (the client then fails midway through the stream), or after which
    the server goes quiet for ``stall_s`` seconds (chat streams)."""

    usage: dict[str, Any] | None = None
    status: int = 200
    service_tier: str | None = None
    model: str | None = None
    omit_usage: bool = False
    cut_after: int | None = None
    stall_after: int | None = None
    stall_s: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Billed:
    """One billed request, as the provider's ledger holds it."""

    at: int  # Unix seconds
    kind: str  # "completions" (chat, responses, legacy) or "embeddings": the Usage API endpoint it shows under
    model: str
    input_tokens: int
    cached_tokens: int = 0
    output_tokens: int = 0
    project_id: str = "proj_fake"
    request_id: str | None = None  # the x-request-id the answer carried


@dataclass
class _State:
    script: deque[Scripted] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    billed: list[Billed] = field(default_factory=list)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(part.get("text") or part.get("content") or "") for part in content)
    if isinstance(content, dict):
        return _text_of(content.get("content") or content.get("text") or "")
    return ""


def prompt_tokens_for(body: dict[str, Any]) -> int:
    """Deterministic prompt size: 1 token per 4 characters plus 7 per message (roughly the real tokenizer)."""
    if "messages" in body:
        messages = body["messages"]
        return sum(len(_text_of(m.get("content"))) // 4 + 7 for m in messages) + 3
    prompt = body.get("input", body.get("prompt", ""))
    if isinstance(prompt, list):
        return sum(len(_text_of(p)) // 4 + 7 for p in prompt) + 3
    return len(_text_of(prompt)) // 4 + 3


def _wants_json(body: dict[str, Any]) -> bool:
    """Structured output was asked for (chat ``response_format`` or Responses ``text.format``)."""
    chat_format = body.get("response_format") or {}
    text_format = (body.get("text") or {}).get("format") or {}
    return "json_schema" in (chat_format.get("type"), text_format.get("type"))


def _completion_text(body: dict[str, Any]) -> str:
    limit = body.get("max_completion_tokens") or body.get("max_output_tokens") or body.get("max_tokens") or 48
    words = ["Here", "is", "a", "concise", "answer", "from", "the", "stand-in", "model."]
    text = " ".join(words[i % len(words)] for i in range(min(int(limit), 48)))
    return json.dumps({"answer": text}) if _wants_json(body) else text


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of concurrent clients in the concurrency tests and the demo

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-stream (an abandoned stream) are expected here


class FakeOpenAI:
    """A threaded HTTP server on 127.0.0.1. Use as a context manager; ``base_url`` is what the SDK needs."""

    def __init__(self, port: int = 0, latency_s: float = 0.0) -> None:
        self.state = _State()
        self.latency_s = latency_s
        self.rates = {model: tuple(map(Decimal, rates)) for model, rates in PROVIDER_RATES.items()}
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = _QuietServer(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def received(self) -> list[Received]:
        return self.state.received

    @property
    def billed(self) -> list[Billed]:
        return self.state.billed

    def bill(self, *entries: Billed) -> None:
        """Add to the provider's ledger directly: usage from clients costspan never saw, or from past days."""
        with self.state.lock:
            self.state.billed.extend(entries)

    def retime(self, moments: Mapping[str, int]) -> None:
        """Move ledger entries to the Unix second given for their request id (the demo's two weeks of traffic
        happen in seconds; its spans are moved the same way)."""
        with self.state.lock:
            self.state.billed[:] = [
                replace(e, at=moments[e.request_id]) if e.request_id is not None and e.request_id in moments else e
                for e in self.state.billed
            ]

    def cost_of(self, entry: Billed) -> dict[str, Decimal]:
        """The provider's charge for one ledger entry, by line item."""
        zero = Decimal(0)
        rate_in, rate_cached, rate_out = self.rates.get(entry.model, (zero, zero, zero))
        per_token = Decimal(1_000_000)
        return {
            f"{entry.model}, input": (entry.input_tokens - entry.cached_tokens) * rate_in / per_token,
            f"{entry.model}, cached input": entry.cached_tokens * rate_cached / per_token,
            f"{entry.model}, output": entry.output_tokens * rate_out / per_token,
        }

    def script(self, *answers: Scripted) -> None:
        with self.state.lock:
            self.state.script.extend(answers)

    def next_scripted(self) -> Scripted:
        with self.state.lock:
            return self.state.script.popleft() if self.state.script else Scripted()

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self.server.serve_forever, name="fakeopenai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"
    request_id: str  # this request's x-request-id, set first: the bill records it too

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing --------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self.request_id = f"req_fake_{next(self.fake.state.ids):06d}"
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/v1/batches/"):
            self._batch_status(path[len("/v1/batches/") :])
            return
        reports: dict[str, Callable[[dict[str, list[str]]], None]] = {
            "/v1/organization/costs": self._costs,
            "/v1/organization/usage/completions": lambda query: self._usage("completions", query),
            "/v1/organization/usage/embeddings": lambda query: self._usage("embeddings", query),
        }
        report = reports.get(path)
        if report is None:
            self._json({"error": {"message": f"unknown path {self.path}", "type": "invalid_request_error"}}, 404)
        elif self._admin_authorized():
            # Array parameters arrive as `group_by=a&group_by=b` (the SDK's form) or `group_by[]=a`.
            query: dict[str, list[str]] = defaultdict(list)
            for name, values in parse_qs(parts.query).items():
                query[name.removesuffix("[]")].extend(values)
            report(query)

    def do_POST(self) -> None:
        self.request_id = f"req_fake_{next(self.fake.state.ids):06d}"
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake = self.fake
        with fake.state.lock:
            fake.state.received.append(Received(self.path, headers, body))
        if fake.latency_s:
            time.sleep(fake.latency_s)
        scripted = fake.next_scripted()
        if scripted.status != 200:
            self._json(
                {"error": {"message": "scripted failure", "type": "server_error", "code": None}},
                scripted.status,
            )
            return
        path = self.path.split("?")[0]
        if path.startswith("/openai/deployments/"):  # Azure: /openai/deployments/{name}/chat/completions
            deployment, _, rest = path[len("/openai/deployments/") :].partition("/")
            body.setdefault("model", deployment)
            path = "/v1/" + rest
        routes = {
            "/v1/chat/completions": self._chat,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/completions": self._legacy_completions,
            "/v1/images/generations": self._images,
            "/v1/batches": self._batches,
        }
        route = routes.get(path)
        if route is None:
            self._json({"error": {"message": f"unknown path {path}", "type": "invalid_request_error"}}, 404)
            return
        route(body, scripted)

    def _record_bill(self, kind: str, model: str, usage: dict[str, Any] | None) -> None:
        """The provider bills what it generated, whether or not the response showed the usage."""
        if not usage:
            return
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        entry = Billed(
            at=int(time.time()),
            kind=kind,
            model=model,
            input_tokens=int(usage.get("prompt_tokens", usage.get("input_tokens")) or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens", usage.get("output_tokens")) or 0),
            request_id=self.request_id,
        )
        self.fake.bill(entry)

    def _headers_common(self, status: int, content_type: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("x-request-id", self.request_id)
        if length is not None:
            self.send_header("content-length", str(length))
        else:
            self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _json(self, payload: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self._headers_common(status, "application/json", len(data))
        self.wfile.write(data)

    def _sse(
        self,
        events: Iterator[tuple[str | None, dict[str, Any] | str]],
        cut_after: int | None = None,
        stall: tuple[int | None, float] = (None, 0.0),
    ) -> None:
        self._headers_common(200, "text/event-stream")
        for sent, (event, data) in enumerate(events):
            if sent == cut_after:
                self.close_connection = True  # no terminating chunk: the client sees the connection drop
                return
            if sent == stall[0]:
                time.sleep(stall[1])
            text = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
            chunk = frame.encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    # --- answers ---------------------------------------------------------------------------------------
    def _model(self, body: dict[str, Any], scripted: Scripted) -> str:
        requested = str(body.get("model") or "gpt-4o-mini")
        return scripted.model or SNAPSHOTS.get(requested, requested)

    def _tier(self, body: dict[str, Any], scripted: Scripted) -> str:
        if scripted.service_tier:
            return scripted.service_tier
        requested = body.get("service_tier")
        return "default" if requested in (None, "auto") else str(requested)

    def _chat_usage(self, body: dict[str, Any], scripted: Scripted, completion_tokens: int) -> dict[str, Any]:
        if scripted.usage is not None:
            return scripted.usage
        prompt = prompt_tokens_for(body)
        cached = (prompt // 128) * 128 if body.get("prompt_cache_key") and prompt >= 1024 else 0
        reasoning = completion_tokens * 3 if str(body.get("model", "")).startswith(REASONING_PREFIXES) else 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens + reasoning,
            "total_tokens": prompt + completion_tokens + reasoning,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _chat(self, body: dict[str, Any], scripted: Scripted) -> None:
        text = _completion_text(body)
        words = text.split(" ")
        usage = self._chat_usage(body, scripted, len(words))
        model = self._model(body, scripted)
        self._record_bill("completions", model, usage)
        tier = self._tier(body, scripted)
        created = int(time.time())
        cid = f"chatcmpl-fake{next(self.fake.state.ids):06d}"
        if not body.get("stream"):
            message = {"role": "assistant", "content": text, "refusal": None}
            payload: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "service_tier": tier,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            }
            if not scripted.omit_usage:
                payload["usage"] = usage
            self._json(payload)
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": tier,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            if include_usage:
                data["usage"] = None
            return data

        def events() -> Iterator[tuple[str | None, dict[str, Any] | str]]:
            yield None, chunk({"role": "assistant", "content": ""}, None)
            for i, word in enumerate(words):
                yield None, chunk({"content": word if i == 0 else " " + word}, None)
            yield None, chunk({}, "stop")
            if include_usage and not scripted.omit_usage:
                yield (
                    None,
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "service_tier": tier,
                        "system_fingerprint": "fp_fake",
                        "choices": [],
                        "usage": usage,
                    },
                )
            yield None, "[DONE]"

        self._sse(events(), scripted.cut_after, (scripted.stall_after, scripted.stall_s))

    def _responses_usage(self, body: dict[str, Any], scripted: Scripted, output_tokens: int) -> dict[str, Any]:
        if scripted.usage is not None:
            return scripted.usage
        chat = self._chat_usage(body, scripted, output_tokens)
        return {
            "input_tokens": chat["prompt_tokens"],
            "input_tokens_details": {
                "cached_tokens": chat["prompt_tokens_details"]["cached_tokens"],
                "cache_write_tokens": 0,
            },
            "output_tokens": chat["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": chat["completion_tokens_details"]["reasoning_tokens"]},
            "total_tokens": chat["total_tokens"],
        }

    def _responses(self, body: dict[str, Any], scripted: Scripted) -> None:
        text = _completion_text(body)
        words = text.split(" ")
        rid = f"resp_fake{next(self.fake.state.ids):06d}"
        item_id = f"msg_fake{next(self.fake.state.ids):06d}"
        model = self._model(body, scripted)
        base: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "service_tier": self._tier(body, scripted),
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "output": [],
            "status": "in_progress",
        }
        message = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        final = {**base, "status": "completed", "output": [message]}
        usage = self._responses_usage(body, scripted, len(words))
        self._record_bill("completions", model, usage)
        if not scripted.omit_usage:
            final["usage"] = usage
        if not body.get("stream"):
            self._json(final)
            return

        def events() -> Iterator[tuple[str | None, dict[str, Any] | str]]:
            seq = itertools.count()
            yield (
                "response.created",
                {"type": "response.created", "sequence_number": next(seq), "response": base},
            )
            in_progress = {**message, "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": []}
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            yield (
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": in_progress,
                },
            )
            yield (
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "sequence_number": next(seq),
                    **where,
                    "part": part,
                },
            )
            for i, word in enumerate(words):
                yield (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": word if i == 0 else " " + word,
                        "logprobs": [],
                    },
                )
            yield (
                "response.output_text.done",
                {
                    "type": "response.output_text.done",
                    "sequence_number": next(seq),
                    **where,
                    "text": text,
                    "logprobs": [],
                },
            )
            yield (
                "response.content_part.done",
                {
                    "type": "response.content_part.done",
                    "sequence_number": next(seq),
                    **where,
                    "part": {**part, "text": text},
                },
            )
            yield (
                "response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": message,
                },
            )
            yield (
                "response.completed",
                {
                    "type": "response.completed",
                    "sequence_number": next(seq),
                    "response": final,
                },
            )

        self._sse(events(), scripted.cut_after)

    def _embeddings(self, body: dict[str, Any], scripted: Scripted) -> None:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt = sum(len(_text_of(i)) // 4 + 1 for i in items)
        usage = scripted.usage or {"prompt_tokens": prompt, "total_tokens": prompt}
        model = self._model(body, scripted)
        self._record_bill("embeddings", model, usage)
        self._json(
            {
                "object": "list",
                "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2]} for i in range(len(items))],
                "usage": usage,
            }
        )

    def _legacy_completions(self, body: dict[str, Any], scripted: Scripted) -> None:
        text = _completion_text(body)
        words = text.split(" ")
        usage = scripted.usage or {
            "prompt_tokens": prompt_tokens_for(body),
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens_for(body) + len(words),
        }
        cid = f"cmpl-fake{next(self.fake.state.ids):06d}"
        model = self._model(body, scripted)
        self._record_bill("completions", model, usage)

        def completion(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                **extra,
            }

        def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}

        if not body.get("stream"):
            self._json(completion([choice(text, "length")], usage=usage))
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events() -> Iterator[tuple[str | None, dict[str, Any] | str]]:
            for i, word in enumerate(words):
                yield None, completion([choice(" " + word, "length" if i == len(words) - 1 else None)])
            if include_usage:
                yield None, completion([], usage=usage)
            yield None, "[DONE]"

        self._sse(events(), scripted.cut_after)

    def _images(self, body: dict[str, Any], scripted: Scripted) -> None:
        prompt = len(_text_of(body.get("prompt"))) // 4 + 3
        usage = scripted.usage or {
            "input_tokens": prompt,
            "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0},
            "output_tokens": 1056,
            "total_tokens": prompt + 1056,
        }
        self._json({"created": int(time.time()), "data": [{"b64_json": "aW1hZ2U="}], "usage": usage})

    def _batches(self, body: dict[str, Any], scripted: Scripted) -> None:
        batch = {
            "id": f"batch_fake{next(self.fake.state.ids):06d}",
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "input_file_id": body.get("input_file_id", "file-fake"),
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
        }
        with self.fake.state.lock:
            self.fake.state.batches[batch["id"]] = batch
        self._json(batch)

    def _batch_status(self, batch_id: str) -> None:
        """A created batch reads as in progress on its first retrieval and completed (with usage) after."""
        with self.fake.state.lock:
            batch = self.fake.state.batches.get(batch_id)
        if batch is None:
            self._json({"error": {"message": f"no batch {batch_id}", "type": "invalid_request_error"}}, 404)
            return
        scripted = self.fake.next_scripted()
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        else:
            usage = scripted.usage or {
                "input_tokens": 120_000,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 30_000,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 150_000,
            }
            batch.update(
                status="completed",
                completed_at=int(time.time()),
                model=scripted.model or "gpt-4o-mini-2024-07-18",
                usage=usage,
                request_counts={"total": 100, "completed": 100, "failed": 0},
            )
        self._json(batch)

    # --- organization Costs and Usage (admin keys) --------------------------------------------------------------
    def _admin_authorized(self) -> bool:
        key = (self.headers.get("authorization") or "").removeprefix("Bearer ").strip()
        if key.startswith(ADMIN_KEY_PREFIX):
            return True
        message = (
            "This endpoint requires an admin API key (sk-admin-...), created by an organization owner."
            if key
            else "You didn't provide an API key."
        )
        self._json({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}, 401)
        return False

    def _bucket_page(
        self, query: dict[str, list[str]], results: Callable[[list[Billed], set[str]], list[dict[str, Any]]]
    ) -> None:
        """Daily buckets from ``start_time``, ``limit`` to a page; ``page`` is the cursor the last page returned."""
        try:
            start = int(query["start_time"][0])
            end = int(query["end_time"][0]) if query.get("end_time") else int(time.time()) + 1
            limit = int(query["limit"][0]) if query.get("limit") else 7
        except (KeyError, ValueError):
            self._json(
                {"error": {"message": "start_time (Unix seconds) is required", "type": "invalid_request_error"}}, 400
            )
            return
        group_by = set(query.get("group_by", []))
        projects = set(query.get("project_ids", []))
        first = int(query["page"][0].removeprefix("page_")) if query.get("page") else 0
        starts = list(range(start - start % DAY_S, end, DAY_S))
        with self.fake.state.lock:
            billed = [e for e in self.fake.state.billed if not projects or e.project_id in projects]
        data = []
        for bucket_start in starts[first : first + limit]:
            bucket_end = bucket_start + DAY_S
            entries = [e for e in billed if max(start, bucket_start) <= e.at < min(end, bucket_end)]
            data.append(
                {
                    "object": "bucket",
                    "start_time": bucket_start,
                    "end_time": bucket_end,
                    "results": results(entries, group_by),
                }
            )
        more = first + limit < len(starts)
        self._json(
            {"object": "page", "data": data, "has_more": more, "next_page": f"page_{first + limit}" if more else None}
        )

    def _costs(self, query: dict[str, list[str]]) -> None:
        def results(entries: list[Billed], group_by: set[str]) -> list[dict[str, Any]]:
            sums: dict[tuple[str | None, str | None], Decimal] = defaultdict(Decimal)
            for entry in entries:
                project = entry.project_id if "project_id" in group_by else None
                for line_item, amount in self.fake.cost_of(entry).items():
                    sums[(line_item if "line_item" in group_by else None, project)] += amount
            return [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": float(amount), "currency": "usd"},
                    "line_item": line_item,
                    "project_id": project,
                }
                for (line_item, project), amount in sums.items()
                if amount or line_item is None
            ]

        self._bucket_page(query, results)

    def _usage(self, kind: str, query: dict[str, list[str]]) -> None:
        def results(entries: list[Billed], group_by: set[str]) -> list[dict[str, Any]]:
            sums: dict[tuple[str | None, str | None], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            for entry in entries:
                if entry.kind != kind:
                    continue
                key = (
                    entry.model if "model" in group_by else None,
                    entry.project_id if "project_id" in group_by else None,
                )
                sums[key][0] += entry.input_tokens
                sums[key][1] += entry.cached_tokens
                sums[key][2] += entry.output_tokens
                sums[key][3] += 1
            rows = []
            for (model, project), (input_tokens, cached, output_tokens, requests) in sums.items():
                row: dict[str, Any] = {
                    "object": f"organization.usage.{kind}.result",
                    "input_tokens": input_tokens,
                    "num_model_requests": requests,
                    "model": model,
                    "project_id": project,
                }
                if kind == "completions":
                    row.update(input_cached_tokens=cached, output_tokens=output_tokens)
                rows.append(row)
            return rows

        self._bucket_page(query, results)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the loopback OpenAI stand-in.")
    parser.add_argument("--port", type=int, default=8899)
    args = parser.parse_args()
    with FakeOpenAI(port=args.port) as fake:
        print(f"OpenAI stand-in listening; set OPENAI_BASE_URL={fake.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
