"""The numbers behind docs/scaling.md: bytes per span on the wire and in ClickHouse, and a collector's span rate.

    .venv/bin/python benchmarks/collector.py [--seconds 10] [--rows 200000]

- OTLP size: a real costspan span (the instrumentor, the real openai SDK, FakeOpenAI, attribution baggage)
  serialized as the OTLP/HTTP exporter sends it, alone and in a 512-span batch, raw and gzipped.
- ClickHouse: that many exporter-shaped rows in chdb (otel_traces and the llm_cost_events view): the time of each
  query in clickhouse/queries/ over all of them, then bytes on disk per row after a merge.
- Collector rate: rotel (PyPI) receiving OTLP/HTTP batches of 512 such spans from local client threads and
  forwarding them to its blackhole exporter. The load generator shares the machine's cores with rotel, so this is
  a floor, not rotel's ceiling.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rotel_blackhole import rotel_blackhole

from costspan.instrumentor import CostspanInstrumentor
from costspan.providers.openai.fake import FakeOpenAI

BATCH = 512


def costspan_spans(n: int) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout-api", "service.version": "1.4.2"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(tracer_provider=provider, meter_provider=MeterProvider())
    try:
        with FakeOpenAI() as fake, openai.OpenAI(base_url=fake.base_url, api_key="sk-bench", max_retries=0) as client:
            ctx = baggage.set_baggage("feature", "support-chat")
            ctx = baggage.set_baggage("route", "/api/chat/{id}", ctx)
            ctx = baggage.set_baggage("customer_id", "cus_8f3k2j", ctx)
            ctx = baggage.set_baggage("environment", "production", ctx)
            token = context.attach(ctx)
            try:
                for i in range(n):
                    client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": "How do I reset my password? " * (1 + i % 5)}],
                    )
            finally:
                context.detach(token)
    finally:
        instrumentor.uninstrument()
    return list(exporter.get_finished_spans())


def otlp_sizes(spans: list[ReadableSpan]) -> dict[str, float]:
    one = encode_spans(spans[:1]).SerializeToString()
    batch = encode_spans(spans[:BATCH]).SerializeToString()
    n = len(spans[:BATCH])
    return {
        "one_span_request_bytes": len(one),
        "per_span_in_batch_bytes": len(batch) / n,
        "per_span_in_batch_gzip_bytes": len(gzip.compress(batch)) / n,
        "attributes_per_span": len(spans[0].attributes or {}),
    }


def clickhouse_bytes_per_row(spans: list[ReadableSpan], rows: int) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_clickhouse import QUERIES, clickhouse, exporter_rows, load_schema, otlp_request

    template = exporter_rows(otlp_request(spans))
    rng = random.Random(7)
    engine = clickhouse()
    engine.execute("DROP DATABASE IF EXISTS otel")
    load_schema(engine)
    base = time.time_ns() - 86_400 * 10**9
    for start in range(0, rows, 20_000):
        chunk = []
        for i in range(start, min(start + 20_000, rows)):
            row = dict(template[i % len(template)])
            attrs = dict(row["SpanAttributes"])
            attrs["customer_id"] = f"cus_{rng.randrange(50_000):06d}"
            attrs["route"] = f"/api/{rng.choice(['chat', 'search', 'summarize', 'rag', 'classify'])}/{{id}}"
            attrs["costspan.openai.request_id"] = f"req_{rng.getrandbits(96):024x}"
            attrs["gen_ai.response.id"] = f"chatcmpl-{rng.getrandbits(120):030x}"
            attrs["gen_ai.usage.cost.amount"] = repr(rng.uniform(0.00001, 0.05))
            ts = base + i * 432_000_000  # spread over about 1 day per 200k rows
            row.update(
                SpanAttributes=attrs,
                TraceId=f"{rng.getrandbits(128):032x}",
                SpanId=f"{rng.getrandbits(64):016x}",
                Timestamp=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts // 10**9)) + f".{ts % 10**9:09d}",
            )
            chunk.append(row)
        engine.insert_traces(chunk)
    # Query times before the final merge: what a live table with unmerged parts costs FINAL.
    timings: dict[str, float] = {}
    params = {
        "start": "2000-01-01 00:00:00",
        "end": "2100-01-01 00:00:00",
        "as_of": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(base // 10**9 + 86_400)),
    }
    for path in sorted(QUERIES.glob("*.sql")):
        sql = path.read_text()
        wanted = {k: v for k, v in params.items() if "{" + k + ":" in sql}
        started = time.perf_counter()
        engine.rows(sql, **wanted)
        timings[f"query_ms_{path.stem}"] = (time.perf_counter() - started) * 1000
    engine.execute("OPTIMIZE TABLE otel.otel_traces FINAL")
    engine.execute("OPTIMIZE TABLE otel.llm_cost_events FINAL")
    sizes = engine.rows(
        "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts "
        "WHERE database = 'otel' AND active GROUP BY table"
    )
    engine.execute("DROP DATABASE otel")
    return {**{f"{r['table']}_bytes_per_row": int(r["bytes"]) / int(r["rows"]) for r in sizes}, **timings}


def rotel_rate(spans: list[ReadableSpan], seconds: float, threads: int) -> dict[str, float]:
    payload = encode_spans(spans[:BATCH]).SerializeToString()
    per_request = len(spans[:BATCH])
    with rotel_blackhole() as (_, port):
        accepted = [0] * threads
        stop = time.monotonic() + seconds

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Content-Type": "application/x-protobuf"}
            while time.monotonic() < stop:
                conn.request("POST", "/v1/traces", body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    accepted[k] += per_request
            conn.close()

        started = time.monotonic()
        workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - started
    return {"rotel_spans_per_s": sum(accepted) / elapsed, "client_threads": threads, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to load rotel (default 10)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to write into chdb (default 200000)")
    parser.add_argument("--threads", type=int, default=2, help="client threads posting to rotel (default 2)")
    args = parser.parse_args()
    print("making costspan spans ...", file=sys.stderr)
    spans = costspan_spans(BATCH)
    results: dict[str, Any] = {**otlp_sizes(spans)}
    print(f"writing {args.rows} rows into chdb ...", file=sys.stderr)
    results.update(clickhouse_bytes_per_row(spans, args.rows))
    print(f"loading rotel for {args.seconds:.0f}s ...", file=sys.stderr)
    results.update(rotel_rate(spans, args.seconds, args.threads))
    for key, value in results.items():
        print(f"{key:36} {value:,.1f}" if isinstance(value, float) else f"{key:36} {value}")


if __name__ == "__main__":
    main()
