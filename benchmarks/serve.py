"""`costspan serve` ingest benchmark: CPU per LLM span over real OTLP/HTTP, against references from the same run.

    .venv/bin/python benchmarks/serve.py [--spans 20480] [--batch 512] [--connections 2] [--no-rotel]
                                         [--before REV]

One real instrumented call (openai SDK against the bundled stand-in) gives a template span; copies with fresh
ids are encoded by the SDK's own OTLP encoder and gzipped in batches of ``--batch`` (the BatchSpanProcessor's
default export size). A client in another process POSTs them over ``--connections`` keep-alive connections, so
the figures below are the receiving process's own CPU time (every thread), not the client's:

- reference, bare decode: gunzip + ``ExportTraceServiceRequest.ParseFromString`` of the same bodies, the floor any
  Python receiver using ``opentelemetry-proto`` pays;
- reference, decode + read each attribute's key: the least a Python receiver that looks at the attributes pays;
- reference, rotel (a collector written in Rust, from PyPI) receiving the same bodies into its blackhole exporter;
- the receiver without the store (HTTP + decode + span -> row + pricing), against the issue's target of 50,000
  spans/s on one core;
- the receiver writing a fresh SQLite store, and ``Store.insert`` of the same rows alone (the store's share).

Then ``costspan dashboard`` is timed over the resulting store. ``--before REV`` also measures the receiver of
git revision REV (its ``src/``, from ``git archive``) on the same bodies, alternating with this one, so a change is
shown before and after in one run.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import openai
from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext
from rotel_blackhole import rotel_blackhole

from costspan.cli import main as cli_main
from costspan.instrumentor import CostspanInstrumentor
from costspan.pricing.pricer import Pricer
from costspan.providers.openai.fake import FakeOpenAI
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.receiver import PROTOBUF, OTLPReceiver
from costspan.store.schema import CostRow
from costspan.store.sqlite import Store

TARGET_SPANS_PER_S = 50_000  # issue #17: on one core


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


# --- the client, in its own process -------------------------------------------------------------------------
def client(port: int, bodies_file: str, connections: int) -> None:
    """POSTs every body, connection k taking bodies k, k + connections, ...; a 503 is retried after Retry-After."""
    import threading

    bodies: list[bytes] = pickle.loads(Path(bodies_file).read_bytes())
    throttled = [0] * connections

    def send(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}
        for body in bodies[k::connections]:
            while True:
                conn.request("POST", "/v1/traces", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    break
                if response.status != 503:
                    raise SystemExit(f"the receiver answered {response.status}")
                throttled[k] += 1
                time.sleep(float(response.getheader("Retry-After") or 1))
        conn.close()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(sum(throttled))


def load(port: int, bodies_file: Path, connections: int) -> tuple[float, int]:
    """Runs the client to completion: (wall seconds, requests throttled)."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--client", str(port), str(bodies_file), str(connections)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return time.perf_counter() - started, int(out.strip() or 0)


# --- what is measured -----------------------------------------------------------------------------------------
class NoStore(CostspanSpanExporter):
    """Takes every row and writes none: the receiver's own cost, without the store's."""

    def write_rows(self, rows: Sequence[CostRow]) -> SpanExportResult:
        self.stored_spans += len(rows)
        return SpanExportResult.SUCCESS


def cpu_per_span(work: Callable[[], object], spans: int, repeat: int = 3) -> float:
    """The least process CPU time ``work`` took over ``repeat`` runs, in µs per span."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / spans * 1e6


def receiver_cpu(exporter: CostspanSpanExporter, bodies_file: Path, spans: int, connections: int) -> dict[str, float]:
    with OTLPReceiver(exporter, port=0) as receiver:
        port = int(receiver.server.server_address[1])
        started = time.process_time()  # this process only serves: the client runs in its own
        wall, throttled = load(port, bodies_file, connections)
        cpu = time.process_time() - started
    assert receiver.counts.stored == spans, receiver.counts
    return {"us": cpu / spans * 1e6, "wall_spans_per_s": spans / wall, "throttled": throttled}


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rotel_cpu(bodies_file: Path, spans: int, connections: int) -> float | None:
    """rotel's CPU µs per span receiving the same bodies (blackhole exporter); None without rotel."""
    try:
        import rotel  # noqa: F401  (the binary's package: optional)
    except ImportError:
        return None
    with rotel_blackhole() as (process, port):
        before = proc_cpu_s(process.pid)
        load(port, bodies_file, connections)
        time.sleep(0.2)  # let the pipeline drain what it accepted
        return (proc_cpu_s(process.pid) - before) / spans * 1e6


def receiver_figures(bodies_file: Path, spans: int, connections: int, store: Path | None = None) -> dict[str, float]:
    """The receiver's CPU µs per span without the store and with a fresh SQLite store at ``store``."""
    with tempfile.TemporaryDirectory() as tmp:
        alone = receiver_cpu(NoStore(Path(tmp) / "unused.sqlite3"), bodies_file, spans, connections)
        exporter = CostspanSpanExporter(store or Path(tmp) / "serve-bench.sqlite3")
        try:
            full = receiver_cpu(exporter, bodies_file, spans, connections)
        finally:
            exporter.shutdown()
    return {"alone_us": alone["us"], "full_us": full["us"], **{k: full[k] for k in ("wall_spans_per_s", "throttled")}}


def figures_at(rev: str, bodies_file: Path, spans: int, connections: int) -> dict[str, float]:
    """``receiver_figures`` for the ``src/`` of git revision ``rev``, in a process that imports that code."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", rev, "src"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = subprocess.run(
            [sys.executable, __file__, "--receiver-only", str(bodies_file), str(spans), str(connections)],
            env={**os.environ, "PYTHONPATH": str(Path(tmp) / "src")},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    figures: dict[str, float] = json.loads(out.splitlines()[-1])
    return figures


def line(label: str, us: float, reference_us: float | None = None) -> str:
    rate = 1e6 / us
    versus = f"  {us / reference_us:5.1f}x the bare decode" if reference_us else ""
    return f"  {label:<54} {us:7.2f} µs CPU/span  {rate:>9,.0f} spans/s per core{versus}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=20_480)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--connections", type=int, default=2, help="client connections posting at once")
    parser.add_argument("--no-rotel", action="store_true", help="skip the rotel reference")
    parser.add_argument("--before", metavar="REV", help="also measure the receiver of this git revision")
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--receiver-only", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(int(args.client[0]), args.client[1], int(args.client[2]))
        return
    if args.receiver_only:
        bodies_file, spans, connections = Path(args.receiver_only[0]), int(args.receiver_only[1]), args.receiver_only[2]
        print(json.dumps(receiver_figures(bodies_file, spans, int(connections))))
        return
    rng = random.Random(7)
    span = template_span()
    bodies = [
        gzip.compress(encode_spans(copies(span, min(args.batch, args.spans - i), rng)).SerializeToString())
        for i in range(0, args.spans, args.batch)
    ]
    n = args.spans
    with tempfile.TemporaryDirectory() as tmp:
        bodies_file = Path(tmp) / "bodies.pickle"
        bodies_file.write_bytes(pickle.dumps(bodies))
        print(
            f"serve ingest: {n:,} LLM spans in {len(bodies)} gzip protobuf batches of {args.batch} "
            f"(~{len(bodies[0]):,} bytes each), {args.connections} client connection(s) in another process"
        )
        requests = [ExportTraceServiceRequest.FromString(gzip.decompress(body)) for body in bodies]
        decode_us = cpu_per_span(lambda: [ExportTraceServiceRequest.FromString(gzip.decompress(b)) for b in bodies], n)
        keys_us = cpu_per_span(
            lambda: [
                [pair.key for pair in span.attributes]
                for body in bodies
                for resource_spans in ExportTraceServiceRequest.FromString(gzip.decompress(body)).resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ],
            n,
        )
        print("references")
        print(line("bare decode (gunzip + ParseFromString)", decode_us))
        print(line("decode + read every attribute's key", keys_us, decode_us))
        rotel_us = None if args.no_rotel else rotel_cpu(bodies_file, n, args.connections)
        if rotel_us is not None:
            print(line("rotel over HTTP into its blackhole exporter", rotel_us, decode_us))

        store = Path(tmp) / "serve-bench.sqlite3"
        runs: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("this tree", lambda: receiver_figures(bodies_file, n, args.connections, store))
        ]
        if args.before:
            before = args.before
            runs.insert(0, (before, lambda: figures_at(before, bodies_file, n, args.connections)))
        for label, measure in runs:
            figures = measure()
            print(f"costspan serve, {label}")
            print(line("HTTP + decode + map + price (no store)", figures["alone_us"], decode_us))
            print(
                f"    target {TARGET_SPANS_PER_S:,} spans/s on one core ({1e6 / TARGET_SPANS_PER_S:.0f} µs/span): "
                f"{1e6 / figures['alone_us'] / TARGET_SPANS_PER_S:.2f} of it"
            )
            print(line("... and writing SQLite (the whole path)", figures["full_us"], decode_us))
            print(f"    wall clock {figures['wall_spans_per_s']:,.0f} spans/s, {figures['throttled']:.0f} throttled")

        from costspan.store.receiver import received_rows  # after the runs: a --before tree may not have it

        pricer = Pricer()
        rows = [row for request in requests for row in received_rows(request, pricer, ()).rows]

        def insert_fresh() -> None:
            with Store(Path(tmp) / f"insert-{time.monotonic_ns()}.sqlite3") as fresh:
                for i in range(0, n, args.batch):
                    fresh.insert(rows[i : i + args.batch])

        print("the store's share")
        print(line("Store.insert alone, same rows and batches", cpu_per_span(insert_fresh, n, repeat=1), decode_us))
        out = Path(tmp) / "spend.html"
        started = time.perf_counter()
        cli_main(["dashboard", "--out", str(out), "--store", str(store)])
        print(f"dashboard over {n} rows: {time.perf_counter() - started:.2f}s, {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
