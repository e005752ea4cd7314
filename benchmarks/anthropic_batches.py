"""What costspan adds to reading an Anthropic Message Batch's results, per result line, against the floor of one
bare OTel span per line.

    .venv/bin/python benchmarks/anthropic_batches.py            # CPU time, medians over interleaved rounds

The SDK talks to an in-process ``httpx2.MockTransport`` (a retrieval, then the JSONL of ``--lines`` succeeded
results), so the network does not drown the figure. Variants, each reading one whole results stream:

- ``bare``: the SDK, not instrumented;
- ``floor``: the bare SDK, and one OTel SDK span per line started and ended with the attributes of a costspan result
  span, through the same span processor: what any instrumentation making a span per result pays;
- ``costspan``: the instrumented SDK (a span per succeeded result, priced at batch rates, attributed from the
  batch's creator, counted once: every round reads a batch of a new id).

Spans go through a ``SimpleSpanProcessor`` to an exporter that discards them, so that no queue drops any. The
figure is the thread's CPU time; the result is the ratio of costspan's added time per line to the floor's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
from anthropic._base_client import SyncAPIClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from costspan.instrumentor import CostspanInstrumentor

MODEL = "claude-sonnet-4-5-20250929"
BASE_URL = "https://api.anthropic.com"


class DiscardExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class UninstrumentedAnthropic(anthropic.Anthropic):
    """Runs the SDK's own request method while costspan is installed (it patches the base class)."""

    request = SyncAPIClient.request  # read at import, before any patch


def results_jsonl(lines: int) -> bytes:
    usage = {"input_tokens": 1_200, "output_tokens": 300, "service_tier": "batch"}
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "A short answer."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "result": {"type": "succeeded", "message": message}}).encode() + b"\n"
        for i in range(lines)
    )


def make_client(client_class: type[anthropic.Anthropic], lines: int) -> anthropic.Anthropic:
    body = results_jsonl(lines)

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("/results"):
            return httpx2.Response(200, content=body, headers={"content-type": "application/binary"})
        batch_id = path.rsplit("/", 1)[1]
        batch = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended",
            "request_counts": {"processing": 0, "succeeded": lines, "errored": 0, "canceled": 0, "expired": 0},
            "created_at": "2026-12-01T10:00:00Z",
            "expires_at": "2026-12-02T10:00:00Z",
            "ended_at": "2026-12-01T10:30:00Z",
            "results_url": f"{BASE_URL}/v1/messages/batches/{batch_id}/results",
        }
        return httpx2.Response(200, json=batch)

    http_client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return client_class(api_key="sk-ant-bench", base_url=BASE_URL, http_client=http_client)


class Bench:
    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.client = make_client(anthropic.Anthropic, lines)
        self.bare_client = make_client(UninstrumentedAnthropic, lines)
        self.ids = (f"msgbatch_bench{i:08d}" for i in itertools.count())  # a new batch each read: none is skipped
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(DiscardExporter()))
        self.floor_tracer = self.tracer_provider.get_tracer("floor")
        self.instrumentor = CostspanInstrumentor()
        self.attributes = self._result_span_attributes()
        self.instrumentor.instrument(tracer_provider=self.tracer_provider)

    def _result_span_attributes(self) -> dict[str, Any]:
        captured = TracerProvider()
        sample = InMemorySpanExporter()
        captured.add_span_processor(SimpleSpanProcessor(sample))
        self.instrumentor.instrument(tracer_provider=captured)
        self.read(self.client)
        self.instrumentor.uninstrument()
        return dict(sample.get_finished_spans()[0].attributes or {})

    def read(self, client: anthropic.Anthropic) -> None:
        for _ in client.messages.batches.results(next(self.ids)):
            pass

    def read_and_floor_spans(self) -> None:
        for _ in self.bare_client.messages.batches.results(next(self.ids)):
            span = self.floor_tracer.start_span(f"batch {MODEL}", kind=SpanKind.CLIENT)
            span.set_attributes(self.attributes)
            span.end()

    def variants(self) -> dict[str, Callable[[], None]]:
        return {
            "bare": lambda: self.read(self.bare_client),
            "floor": self.read_and_floor_spans,
            "costspan": lambda: self.read(self.client),
        }


def cpu_us(run: Callable[[], None]) -> float:
    start = time.thread_time_ns()
    run()
    return (time.thread_time_ns() - start) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds")
    parser.add_argument("--lines", type=int, default=500, help="succeeded results per batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        os.environ["COSTSPAN_STORE_PATH"] = os.path.join(store, "bench.sqlite3")  # who created each batch
        bench = Bench(args.lines)
        runs = bench.variants()
        for run in runs.values():
            run()  # untimed: the first read resolves prices and warms the caches
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved; the median discards the disturbed rounds
            for name, run in runs.items():
                samples[name].append(cpu_us(run))
        bench.instrumentor.uninstrument()
    medians = {name: statistics.median(values) / args.lines for name, values in samples.items()}
    print(f"thread CPU time per result line, median of {args.rounds} interleaved rounds of {args.lines} lines")
    for name, value in medians.items():
        print(f"  {name:9} {value:8.2f} µs")
    floor = medians["floor"] - medians["bare"]
    added = medians["costspan"] - medians["bare"]
    print(f"  floor (one bare span per line) adds {floor:.2f} µs; costspan adds {added:.2f} µs: {added / floor:.2f}x")


if __name__ == "__main__":
    main()
