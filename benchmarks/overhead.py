"""Per-call overhead of costspan versus the bare OpenAI and Anthropic SDKs, and versus the floor of one bare OTel span.

    .venv/bin/python benchmarks/overhead.py              # CPU instructions under callgrind: exact, repeatable
    .venv/bin/python benchmarks/overhead.py --timed      # CPU time, medians over interleaved rounds
    .venv/bin/python benchmarks/overhead.py --readme     # instructions, and the figures written into README.md

The SDK talks to an in-process ``httpx2.MockTransport`` so the network does not drown the figure. Variants:

- ``bare``: the SDK call, not instrumented;
- ``floor``: the bare SDK call followed by one OTel SDK span started and ended with the same attributes as a
  costspan chat span, through the same ``BatchSpanProcessor``. Its difference from ``bare`` is the floor: what any
  span-producing instrumentation pays, measured where it would run;
- ``points_floor``: the bare SDK call followed by the three metric points the GenAI semantic conventions require
  of any instrumentation (token usage in and out, duration), with only their required attributes, recorded
  straight into the OTel SDK: the floor for metrics, as ``floor`` is for the span;
- ``costspan``: the instrumented SDK call (wrapping, usage, pricing, attribution, span and metrics);
- ``bare_stream`` / ``costspan_stream``: the same stream at 200 and at 600 chunks; the difference over the 400 more
  chunks is the cost per chunk, with nothing of the call's fixed cost in it.

The Anthropic mode (``benchmarks/overhead_anthropic.py``) counts the real ``anthropic`` SDK against the loopback
stand-in (``costspan.providers.anthropic.fake``, served from this process, outside callgrind): ``bare``, ``floor``
(with the attributes of costspan's Anthropic span), ``costspan`` and ``costspan_request_path`` as above, and the peer
``opentelemetry-instrumentation-anthropic`` with its own ``bare``, run in its venv ``.venv-peer-anthropic``
(``VENV=.venv-peer-anthropic bash scripts/setup-python peer-anthropic``) so its pins cannot meet costspan's.

On a shared 2-core machine wall-clock and even CPU time move by tens of percent between runs (other processes
evict the caches), so the default counts instructions with valgrind's callgrind, which gives the same figure on
every run (to ~15 k instructions a call). Callgrind counts only the calls (``callgrind_window.py``: start-up and
imports run uninstrumented, which also makes the run several times faster); streams run at two lengths, and the
difference leaves only the chunks. Timed mode reports the calling thread's CPU time, median over
many short interleaved rounds.

Targets (issue #2): costspan's added cost <= 1.5x the floor; < 5% of a bare mocked SDK call; < 1 µs per
streamed chunk. Issue #16: the Anthropic mode's added cost, as a ratio to its floor, at most the OpenAI mode's.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import callgrind_window
import httpx2
import openai
from openai._base_client import SyncAPIClient
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import baggage, context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.version import __version__ as otel_sdk_version
from opentelemetry.trace import SpanKind

from costspan.instrumentor import CostspanInstrumentor
from costspan.providers.anthropic.fake import FakeAnthropic

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "How do I reset my password?"}]
PROMPT_TOKENS, COMPLETION_TOKENS = 1200, 300
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
CHUNKS = 200
LONG_CHUNKS = 600
# What the semantic conventions require on every GenAI client metric point (request model: "if available").
REQUIRED_METRIC_ATTRIBUTES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1",
}
VARIANTS = (
    "bare",
    "floor",
    "points_floor",
    "costspan",
    "costspan_request_path",
    "bare_stream",
    "costspan_stream",
)
STREAMS = ("bare_stream", "costspan_stream")
# What costspan queued for the metric reader is recorded before counting in these (not in costspan_request_path).
DRAINED = ("costspan", "costspan_stream")


class DiscardExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def completion_body() -> bytes:
    message = {"role": "assistant", "content": "Hello!"}
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4.1-2025-04-14",
            "service_tier": "default",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
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


class UninstrumentedOpenAI(openai.OpenAI):
    """Runs the SDK's own request method even while costspan is installed (it patches the base class), so bare
    calls can be interleaved with instrumented ones without re-instrumenting in between."""

    request = SyncAPIClient.request  # read at import, before any patch


def make_client(client_class: type[openai.OpenAI], chunks: int = CHUNKS) -> openai.OpenAI:
    completion, stream = completion_body(), stream_body(chunks)

    def handler(request: httpx2.Request) -> httpx2.Response:
        if b'"stream":true' in request.content or b'"stream": true' in request.content:
            return httpx2.Response(200, content=stream, headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, content=completion, headers={"content-type": "application/json"})

    http_client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return client_class(api_key="sk-bench", base_url="https://api.openai.com/v1", http_client=http_client)


class Bench:
    """SDK clients with and without costspan, a tracer provider like an app's, and one callable per variant."""

    def __init__(self, chunks: int = CHUNKS) -> None:
        self.client = make_client(openai.OpenAI, chunks)
        self.bare_client = make_client(UninstrumentedOpenAI, chunks)
        self.tracer_provider = TracerProvider()
        # The export thread must not wake during a run: callgrind counts every thread, and how often a timer
        # fires depends on how busy the machine is. Spans are exported when the processor shuts down.
        self.processor = BatchSpanProcessor(
            DiscardExporter(), max_queue_size=100_000, max_export_batch_size=100_000, schedule_delay_millis=3_600_000
        )
        self.tracer_provider.add_span_processor(self.processor)
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        self.instrumentor = CostspanInstrumentor()
        ctx = context.get_current()
        for key, value in {"feature": "bench", "route": "/bench", "customer_id": "c1", "environment": "prod"}.items():
            ctx = baggage.set_baggage(key, value, ctx)
        context.attach(ctx)
        self.attributes = self._costspan_span_attributes()
        self.floor_tracer = self.tracer_provider.get_tracer("floor")
        floor_meter = self.meter_provider.get_meter("floor")
        self.floor_tokens = floor_meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
        self.floor_duration = floor_meter.create_histogram("gen_ai.client.operation.duration", unit="s")
        self.instrumentor.instrument(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def _costspan_span_attributes(self) -> dict[str, Any]:
        captured = TracerProvider()
        sample = InMemorySpanExporter()
        captured.add_span_processor(SimpleSpanProcessor(sample))
        self.instrumentor.instrument(tracer_provider=captured, meter_provider=self.meter_provider)
        self.plain(self.client)
        self.instrumentor.uninstrument()
        return dict(sample.get_finished_spans()[0].attributes or {})

    @staticmethod
    def plain(client: openai.OpenAI) -> Any:
        return client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)

    @staticmethod
    def streamed(client: openai.OpenAI) -> None:
        # Without stream_options, as most apps call: costspan asks for usage and hides the usage chunk, the
        # default path. The mock sends the same bytes either way.
        for _ in client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True):
            pass

    def plain_and_floor_span(self) -> None:
        self.plain(self.bare_client)
        span = self.floor_tracer.start_span("chat gpt-4.1", kind=SpanKind.CLIENT)
        span.set_attributes(self.attributes)
        span.end()

    def plain_and_floor_points(self) -> None:
        self.plain(self.bare_client)
        required = REQUIRED_METRIC_ATTRIBUTES
        self.floor_tokens.record(PROMPT_TOKENS, {**required, "gen_ai.token.type": "input"})
        self.floor_tokens.record(COMPLETION_TOKENS, {**required, "gen_ai.token.type": "output"})
        self.floor_duration.record(0.5, required)

    def variant(self, name: str) -> Callable[[], Any]:
        """The callable for a variant: the instrumented client for costspan's, the bypassing one for the rest."""
        if name == "floor":
            return self.plain_and_floor_span
        if name == "points_floor":
            return self.plain_and_floor_points
        client = self.client if name.startswith("costspan") else self.bare_client
        return functools.partial(self.streamed if name in STREAMS else self.plain, client)


# --- instruction counts ---------------------------------------------------------------------------------------


def child(variant: str, calls: int, chunks: int) -> None:
    bench = Bench(chunks)
    run = bench.variant(variant)

    def drain() -> None:
        # The metric points costspan queued are recorded into the SDK's histograms when a reader collects, off the
        # request path but in the app's process: they count. costspan_request_path leaves them queued.
        if variant in DRAINED:
            telemetry = bench.instrumentor.telemetry
            assert telemetry is not None and telemetry.metrics is not None
            telemetry.metrics.drain()

    run()  # uncounted, with its metric points: the first call resolves prices and warms the caches
    drain()
    # Set-up objects (clients, price data, the SDK's modules) out of the collector's way, as a preloading server
    # does: otherwise how often a full collection walks them, and when, moves a variant by ~20 k a call.
    gc.freeze()

    def work() -> None:
        for _ in range(calls):
            run()
        drain()

    callgrind_window.counted(work)


def instructions(variant: str, calls: int, chunks: int = CHUNKS) -> int:
    return callgrind_window.instructions(
        [sys.executable, __file__, "--child", variant, "--calls", str(calls), "--chunks", str(chunks)]
    )


def per_call_instructions(variant: str) -> float:
    return instructions(variant, PLAIN_CALLS) / PLAIN_CALLS


def anthropic_per_call(python: str, variant: str, base_url: str) -> float:
    cmd = [python, str(ANTHROPIC_CHILD), variant, str(PLAIN_CALLS), base_url]
    return callgrind_window.instructions(cmd) / PLAIN_CALLS


def per_chunk_instructions(variant: str) -> float:
    long, short = (instructions(variant, STREAM_CALLS, chunks) for chunks in (LONG_CHUNKS, CHUNKS))
    return (long - short) / (STREAM_CALLS * (LONG_CHUNKS - CHUNKS))


def report(per_call: dict[str, float], per_chunk: float, unit: str, scale: float = 1.0) -> None:
    added = per_call["costspan"] - per_call["bare"]
    on_path = per_call["costspan_request_path"] - per_call["bare"]
    floor = per_call["floor"] - per_call["bare"]
    points_floor = per_call["points_floor"] - per_call["bare"]
    bare = per_call["bare"]
    print(f"  bare SDK call (mock transport)          {bare * scale:12,.1f} {unit}")
    print(f"  floor: one bare OTel span, same attrs   {floor * scale:12,.1f} {unit}")
    print(f"  floor / bare call                       {100 * floor / bare:12.2f} %    (a span alone)")
    print(f"  added by costspan, all of it            {added * scale:12,.1f} {unit}")
    print(f"    on the request path                   {on_path * scale:12,.1f} {unit}")
    print(f"    metric points, recorded at collection {(added - on_path) * scale:12,.1f} {unit}")
    print(f"  added / floor                           {added / floor:12.2f} x    (target <= 1.5)")
    print(f"  request path / floor                    {on_path / floor:12.2f} x")
    print(f"  added / bare call                       {100 * added / bare:12.2f} %    (target < 5)")
    print(f"  request path / bare call                {100 * on_path / bare:12.2f} %")
    print(f"  added per streamed chunk                {per_chunk * scale:12,.1f} {unit}")
    print(f"  floor for metrics: 3 semconv points     {points_floor * scale:12,.1f} {unit}")
    print(f"    / span floor                          {points_floor / floor:12.2f} x    (the 1.5x target leaves 0.5)")


# Call ids, uuids and addresses differ from call to call, so the figure moves by ~1 k instructions a call; 100
# calls average it out.
PLAIN_CALLS = 100
STREAM_CALLS = 5  # streams of 200 and of 600 chunks: 2,000 chunks more, which average the per-chunk noise out


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ANTHROPIC_CHILD = Path(__file__).resolve().parent / "overhead_anthropic.py"
ANTHROPIC_VARIANTS = ("bare", "floor", "costspan", "costspan_request_path")
PEER_PYTHON = ROOT / ".venv-peer-anthropic" / "bin" / "python"
README_BLOCK = re.compile(r"(<!-- overhead:begin -->\n).*?(<!-- overhead:end -->)", re.S)


def write_readme(per_call: dict[str, float], per_chunk: float) -> None:
    """Replaces the README's figures with this run's, so the README shows only what was measured last."""
    bare = per_call["bare"]
    floor = per_call["floor"] - bare
    rows = [
        ("bare SDK call (mock transport)", bare, "", ""),
        ("floor: one bare OTel span with the same attributes", floor, "1x", f"{100 * floor / bare:.1f}%"),
    ]
    for label, variant in (("added on the request path", "costspan_request_path"), ("added, all of it", "costspan")):
        added = per_call[variant] - bare
        rows.append((label, added, f"{added / floor:.2f}x", f"{100 * added / bare:.1f}%"))
    table = "\n".join(f"| {label} | {value / 1e6:.2f} M | {ratio} | {share} |" for label, value, ratio, share in rows)
    today = time.strftime("%Y-%m-%d")
    block = (
        f"Per call, CPU instructions under callgrind ({today}; openai {openai.__version__}, "
        f"OTel SDK {otel_sdk_version}, CPython {sys.version.split()[0]}):\n\n"
        "| | instructions | vs the floor | vs a bare call |\n|---|---:|---:|---:|\n"
        f"{table}\n| added per streamed chunk | {per_chunk / 1e3:.1f} k | | |\n"
    )
    text = README.read_text(encoding="utf-8")
    if not README_BLOCK.search(text):
        sys.exit(f"{README} has no <!-- overhead:begin --> ... <!-- overhead:end --> block to fill")
    README.write_text(README_BLOCK.sub(lambda m: m[1] + block + m[2], text), encoding="utf-8")
    print(f"wrote these figures into {README}")


def report_modes(openai_calls: dict[str, float], anthropic_calls: dict[str, float]) -> None:
    """The modes side by side, each as a ratio to the floor measured in this run (the peer's to the Anthropic floor:
    both venvs hold the same SDK and OTel SDK releases, which count_instructions checks)."""
    columns = ("bare call", "floor", "added, all", "/ floor", "request path", "/ floor")
    print(f"\n  {'mode':<40}" + "".join(f"{c:>13}" for c in columns))
    ratios = {}
    for label, calls in (("costspan, OpenAI mode", openai_calls), ("costspan, Anthropic mode", anthropic_calls)):
        bare, floor = calls["bare"], calls["floor"] - calls["bare"]
        added, on_path = calls["costspan"] - bare, calls["costspan_request_path"] - bare
        ratios[label] = added / floor
        print(
            f"  {label:<40}{bare:13,.0f}{floor:13,.0f}{added:13,.0f}{added / floor:12.2f}x"
            f"{on_path:13,.0f}{on_path / floor:12.2f}x"
        )
    peer_bare, floor = anthropic_calls["peer_bare"], anthropic_calls["floor"] - anthropic_calls["bare"]
    peer_added = anthropic_calls["peer"] - peer_bare
    print(
        f"  {'opentelemetry-instrumentation-anthropic':<40}{peer_bare:13,.0f}{floor:13,.0f}"
        f"{peer_added:13,.0f}{peer_added / floor:12.2f}x  (all of it on the request path)"
    )
    met = ratios["costspan, Anthropic mode"] <= ratios["costspan, OpenAI mode"]
    print(f"  issue #16, Anthropic mode / floor <= OpenAI mode / floor: {'met' if met else 'NOT met'}")


def peer_versions() -> list[str]:
    """The peer venv's interpreter, SDK and OTel SDK releases, and the peer's."""
    code = (
        "import sys; from importlib.metadata import version as v; print(sys.base_prefix, sys.version.split()[0], "
        "*(v(p) for p in ('anthropic', 'opentelemetry-sdk', 'opentelemetry-instrumentation-anthropic')))"
    )
    result = subprocess.run([str(PEER_PYTHON), "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.split()


def count_instructions(readme: bool = False) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian package valgrind); use --timed")
    make_peer = "VENV=.venv-peer-anthropic PYTHON=<this venv's base python> bash scripts/setup-python peer-anthropic"
    if not PEER_PYTHON.exists():
        sys.exit(f"no {PEER_PYTHON}: run `{make_peer}`")
    *theirs, peer = peer_versions()
    # The same interpreter build (another one runs the same code in ~10% more or fewer instructions), SDK and OTel
    # SDK: the peer's cost is then comparable with the floor measured in this venv.
    ours = [sys.base_prefix, sys.version.split()[0], anthropic.__version__, otel_sdk_version]
    if theirs != ours:
        sys.exit(
            f"the peer venv has (python, version, anthropic, OTel SDK) {theirs}, this one {ours}: rebuild it with "
            f"`{make_peer}` and align requirements/peer-anthropic.lock with requirements/dev.lock"
        )
    sdk = anthropic.__version__
    print(
        f"callgrind instructions per call ({PLAIN_CALLS} calls; per chunk: {STREAM_CALLS} "
        f"streams of {LONG_CHUNKS} - of {CHUNKS} chunks); anthropic {sdk}, "
        f"opentelemetry-instrumentation-anthropic {peer}"
    )
    with FakeAnthropic() as fake, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        calls = {v: pool.submit(per_call_instructions, v) for v in VARIANTS if v not in STREAMS}
        chunks = {v: pool.submit(per_chunk_instructions, v) for v in STREAMS}
        main_python, peer_python = sys.executable, str(PEER_PYTHON)
        anthropic_jobs = {v: (main_python, v) for v in ANTHROPIC_VARIANTS} | {
            "peer": (peer_python, "peer"),
            "peer_bare": (peer_python, "bare"),
        }
        anthropic_futures = {
            name: pool.submit(anthropic_per_call, python, variant, fake.base_url)
            for name, (python, variant) in anthropic_jobs.items()
        }
        per_call = {v: future.result() for v, future in calls.items()}
        per_chunk = chunks["costspan_stream"].result() - chunks["bare_stream"].result()
        anthropic_calls = {name: future.result() for name, future in anthropic_futures.items()}
    print("OpenAI mode (mock transport)")
    report(per_call, per_chunk, "instr")
    report_modes(per_call, anthropic_calls)
    if readme:
        write_readme(per_call, per_chunk)


# --- CPU time ---------------------------------------------------------------------------------------------------


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    # CPU time of the calling thread: other processes do not count, nor does the span processor's export thread.
    start = time.thread_time_ns()
    for _ in range(calls):
        fn()
    return (time.thread_time_ns() - start) / calls / 1000


def time_rounds(rounds: int, calls: int) -> None:
    bench = Bench()
    runs = {name: bench.variant(name) for name in VARIANTS}
    for run in runs.values():
        run()  # untimed: the first call resolves prices and warms the caches
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):  # many short interleaved rounds; the median discards the disturbed ones
        for name, run in runs.items():
            samples[name].append(per_call_us(run, max(calls // 2, 1) if name in STREAMS else calls))
    bench.processor.shutdown()  # type: ignore[no-untyped-call]
    print(f"thread CPU time per call, median of {rounds} interleaved rounds of {calls} calls")
    print("  (the metric points are recorded by a background thread here, so 'all of it' is the request path)")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    # Per chunk here, roughly: the stream's difference less the plain call's (a stream's fixed costs count in).
    added = medians["costspan"] - medians["bare"]
    report(medians, (medians["costspan_stream"] - medians["bare_stream"] - added) / CHUNKS, "µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timed", action="store_true", help="measure CPU time instead of instructions")
    parser.add_argument("--readme", action="store_true", help="write the instruction counts into README.md")
    parser.add_argument("--rounds", type=int, default=301, help="timed mode: interleaved rounds")
    parser.add_argument("--calls", type=int, default=10, help="calls per round (timed) or per run (child)")
    parser.add_argument("--chunks", type=int, default=CHUNKS, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls, args.chunks)
    elif args.timed:
        time_rounds(args.rounds, args.calls)
    else:
        count_instructions(readme=args.readme)


if __name__ == "__main__":
    main()
