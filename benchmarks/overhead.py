"""Per-call overhead of costspan versus the bare OpenAI SDK, and versus the floor of one bare OTel span.

    .venv/bin/python benchmarks/overhead.py [--rounds 15] [--calls 400] [--chunks 200]

The SDK talks to an in-process ``httpx2.MockTransport`` so the network does not drown the figure. Each round
times, back to back: the bare SDK, the bare SDK followed by the floor (one OTel SDK span started and ended with the
same number of attributes through the same ``BatchSpanProcessor``), and the instrumented SDK. The floor is the
difference of the first two, so it is measured under the same cache pressure as costspan's own work. Times are
the calling thread's CPU time, so other processes on a noisy machine do not count; the report is the median over
interleaved rounds, and ratios.

Targets (issue #2): costspan's added cost <= 1.5x the floor; < 5% of a bare mocked SDK call; < 1 µs per
streamed chunk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
from opentelemetry import baggage, context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from costspan.instrumentor import CostspanInstrumentor

MESSAGES = [{"role": "user", "content": "How do I reset my password?"}]
USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


class DiscardExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def completion_body() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4.1-2025-04-14",
            "service_tier": "default",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
            "usage": USAGE,
        }
    ).encode()


def stream_body(chunks: int) -> bytes:
    def frame(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data)}\n\n"

    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4.1-2025-04-14"}
    parts = [
        frame({**base, "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}], "usage": None})
        for _ in range(chunks - 1)
    ]
    parts.append(frame({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}))
    parts.append(frame({**base, "choices": [], "usage": USAGE}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def make_client(chunks: int) -> openai.OpenAI:
    completion, stream = completion_body(), stream_body(chunks)

    def handler(request: httpx2.Request) -> httpx2.Response:
        if b'"stream":true' in request.content or b'"stream": true' in request.content:
            return httpx2.Response(200, content=stream, headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, content=completion, headers={"content-type": "application/json"})

    http_client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(api_key="sk-bench", base_url="https://api.openai.com/v1", http_client=http_client)


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    # CPU time of the calling thread: other processes on a busy machine do not count, and neither does the
    # span processor's export thread. What is left is what the user's call itself pays.
    start = time.thread_time_ns()
    for _ in range(calls):
        fn()
    return (time.thread_time_ns() - start) / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--chunks", type=int, default=200)
    args = parser.parse_args()

    client = make_client(args.chunks)
    tracer_provider = TracerProvider()
    processor = BatchSpanProcessor(DiscardExporter(), max_queue_size=100_000, schedule_delay_millis=200)
    tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrumentor = CostspanInstrumentor()
    floor_tracer = tracer_provider.get_tracer("floor")

    ctx = context.get_current()
    for key, value in {"feature": "bench", "route": "/bench", "customer_id": "c1", "environment": "prod"}.items():
        ctx = baggage.set_baggage(key, value, ctx)
    context.attach(ctx)

    def plain() -> Any:
        return client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)

    def streamed() -> Any:
        for _ in client.chat.completions.create(
            model="gpt-4.1", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ):
            pass

    # The floor: one span with as many attributes as a costspan chat span carries, through the same processor.
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    captured = TracerProvider()
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    sample = InMemorySpanExporter()
    captured.add_span_processor(SimpleSpanProcessor(sample))
    instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=captured, meter_provider=meter_provider)
    plain()
    instrumentor.uninstrument()
    attributes = dict(sample.get_finished_spans()[0].attributes or {})

    def floor() -> None:
        span = floor_tracer.start_span("chat gpt-4.1", kind=SpanKind.CLIENT)
        span.set_attributes(attributes)
        span.end()

    def plain_with_floor_span() -> None:
        # The floor measured where it would run: next to a real SDK call, with the same cache pressure.
        plain()
        floor()

    keys = ("bare", "bare_floor", "costspan", "floor", "bare_stream", "costspan_stream")
    results: dict[str, list[float]] = {k: [] for k in keys}
    for fn in (plain, streamed):  # warm up both paths
        fn()
    for _ in range(args.rounds):
        results["bare"].append(per_call_us(plain, args.calls))
        results["bare_floor"].append(per_call_us(plain_with_floor_span, args.calls))
        results["bare_stream"].append(per_call_us(streamed, args.calls // 10))
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        results["costspan"].append(per_call_us(plain, args.calls))
        results["costspan_stream"].append(per_call_us(streamed, args.calls // 10))
        instrumentor.uninstrument()
        results["floor"].append(per_call_us(floor, args.calls))
    processor.shutdown()

    med = {k: statistics.median(v) for k, v in results.items()}
    added = [c - b for c, b in zip(results["costspan"], results["bare"], strict=True)]
    added_stream = [c - b for c, b in zip(results["costspan_stream"], results["bare_stream"], strict=True)]
    added_med = statistics.median(added)
    floor_med = statistics.median(f - b for f, b in zip(results["bare_floor"], results["bare"], strict=True))
    per_chunk = (statistics.median(added_stream) - added_med) / args.chunks
    print(f"rounds={args.rounds} calls/round={args.calls} chunks/stream={args.chunks} attributes={len(attributes)}")
    print(f"  bare SDK call (mock transport)        {med['bare']:9.1f} µs")
    print(f"  instrumented SDK call                 {med['costspan']:9.1f} µs")
    print(f"  added by costspan (median of rounds)  {added_med:9.1f} µs")
    print(f"  floor: one bare OTel span, same attrs {floor_med:9.1f} µs   (next to an SDK call)")
    print(f"  floor, in a tight loop (hot caches)   {med['floor']:9.1f} µs")
    print(f"  added / floor                         {added_med / floor_med:9.2f} x   (target <= 1.5)")
    print(f"  added / bare call                     {100 * added_med / med['bare']:9.2f} %   (target < 5)")
    print(f"  bare streamed call                    {med['bare_stream']:9.1f} µs")
    print(f"  instrumented streamed call            {med['costspan_stream']:9.1f} µs")
    print(f"  added per streamed chunk              {per_chunk * 1000:9.0f} ns   (target < 1000)")


if __name__ == "__main__":
    main()
