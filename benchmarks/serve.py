"""`costspan serve` ingest benchmark: LLM spans per second over real OTLP/HTTP, and the dashboard's render time.

    .venv/bin/python benchmarks/serve.py [--spans 20000] [--batch 512]

One real instrumented call (openai SDK against the bundled stand-in) gives a template span; copies with fresh
ids are encoded by the SDK's own OTLP encoder and POSTed as gzip protobuf in batches of ``--batch`` (the
BatchSpanProcessor's default export size) to an ``OTLPReceiver`` writing a fresh SQLite store. The time covers
HTTP, gzip, protobuf decoding, the span -> row mapping and the SQLite insert. Then ``costspan dashboard`` is
timed over the resulting store.
"""

from __future__ import annotations

import argparse
import gzip
import random
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from costspan.cli import main as cli_main
from costspan.instrumentor import CostspanInstrumentor
from costspan.providers.openai.fake import FakeOpenAI
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.receiver import PROTOBUF, OTLPReceiver


def template_span() -> ReadableSpan:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with FakeOpenAI() as fake:
            client = openai.OpenAI(base_url=fake.base_url, api_key="sk-bench", max_retries=0)
            token = context.attach(baggage.set_baggage("feature", "bench", baggage.set_baggage("customer_id", "c")))
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            finally:
                context.detach(token)
    finally:
        instrumentor.uninstrument()
    return memory.get_finished_spans()[0]


def copies(span: ReadableSpan, count: int, rng: random.Random) -> list[ReadableSpan]:
    spans = []
    for _ in range(count):
        ctx = SpanContext(
            rng.getrandbits(128), rng.getrandbits(64), is_remote=False, trace_flags=span.context.trace_flags
        )
        spans.append(
            ReadableSpan(
                name=span.name,
                context=ctx,
                resource=span.resource,
                attributes=span.attributes,
                kind=span.kind,
                status=span.status,
                start_time=span.start_time,
                end_time=span.end_time,
                instrumentation_scope=span.instrumentation_scope,
            )
        )
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    rng = random.Random(7)
    span = template_span()
    bodies = [
        gzip.compress(encode_spans(copies(span, min(args.batch, args.spans - i), rng)).SerializeToString())
        for i in range(0, args.spans, args.batch)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "serve-bench.sqlite3"
        exporter = CostspanSpanExporter(store)
        with OTLPReceiver(exporter, port=0) as receiver:
            url = receiver.endpoint + "/v1/traces"
            started = time.perf_counter()
            for body in bodies:
                request = urllib.request.Request(
                    url, data=body, headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, method="POST"
                )
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
            elapsed = time.perf_counter() - started
        exporter.shutdown()
        stored = receiver.counts.stored
        print(f"serve ingest: {stored} spans in {len(bodies)} batches of {args.batch}: {elapsed:.2f}s")
        print(f"  {stored / elapsed:,.0f} LLM spans/s (gzip protobuf over HTTP, decode, map, SQLite insert)")
        assert stored == args.spans, receiver.counts
        out = Path(tmp) / "spend.html"
        started = time.perf_counter()
        cli_main(["dashboard", "--out", str(out), "--store", str(store)])
        print(f"dashboard over {stored} rows: {time.perf_counter() - started:.2f}s, {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
