"""The Anthropic calls that ``benchmarks/overhead.py`` counts, one variant per process:

    python benchmarks/overhead_anthropic.py VARIANT CALLS BASE_URL

The real ``anthropic`` SDK talks to the loopback stand-in (``costspan.providers.anthropic.fake``), which the
benchmark runs in its own process, outside callgrind, so only the client's side is counted. Variants:

- ``bare``: the SDK call, nothing instrumented;
- ``floor``: the bare call followed by one OTel SDK span with the same attributes as costspan's Anthropic span,
  through the same ``BatchSpanProcessor``;
- ``costspan`` / ``costspan_request_path``: the call with costspan, with and without recording the metric points
  it queued for the reader (as in the OpenAI mode);
- ``peer``: the call with ``opentelemetry-instrumentation-anthropic``, at its defaults, given the same tracer
  and meter providers. It runs in the peer's own venv (``.venv-peer-anthropic``), so this module imports only the
  SDK and OpenTelemetry at the top and costspan only in the variants that use it.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Callable
from typing import Any

import anthropic
from anthropic.types import MessageParam
from callgrind_window import counted
from opentelemetry import baggage, context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

MODEL = "claude-sonnet-4-5"
MESSAGES: list[MessageParam] = [{"role": "user", "content": "How do I reset my password?"}]
VARIANTS = ("bare", "floor", "costspan", "costspan_request_path", "peer")


class DiscardExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def call(client: anthropic.Anthropic) -> Any:
    return client.messages.create(model=MODEL, max_tokens=300, messages=MESSAGES)


def costspan_span_attributes(client: anthropic.Anthropic, meter_provider: MeterProvider) -> dict[str, Any]:
    """The attributes of one costspan span for this call: what the floor's bare span carries."""
    from costspan.instrumentor import CostspanInstrumentor

    captured = TracerProvider()
    sample = InMemorySpanExporter()
    captured.add_span_processor(SimpleSpanProcessor(sample))
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(tracer_provider=captured, meter_provider=meter_provider)
    call(client)
    instrumentor.uninstrument()
    return dict(sample.get_finished_spans()[0].attributes or {})


def prepare(variant: str, base_url: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    """The callable for one call of the variant, and what to run after the last call."""
    # The SDK's own spans (anthropic 2.x) off in every variant, as costspan turns them off: left on in the bare
    # call, they cost more than costspan's whole request path, which would then measure below nothing.
    os.environ["ANTHROPIC_OPEN_TELEMETRY"] = "false"
    client = anthropic.Anthropic(api_key="sk-ant-bench", base_url=base_url, max_retries=0)
    tracer_provider = TracerProvider()
    # As in the OpenAI mode: the export thread must not wake during a run (callgrind counts every thread).
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            DiscardExporter(), max_queue_size=100_000, max_export_batch_size=100_000, schedule_delay_millis=3_600_000
        )
    )
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    ctx = context.get_current()
    for key, value in {"feature": "bench", "route": "/bench", "customer_id": "c1", "environment": "prod"}.items():
        ctx = baggage.set_baggage(key, value, ctx)
    context.attach(ctx)

    def nothing() -> None:
        pass

    if variant == "bare":
        return lambda: call(client), nothing
    if variant == "floor":
        attributes = costspan_span_attributes(client, meter_provider)
        tracer = tracer_provider.get_tracer("floor")

        def call_and_floor_span() -> None:
            call(client)
            span = tracer.start_span(f"chat {MODEL}", kind=SpanKind.CLIENT)
            span.set_attributes(attributes)
            span.end()

        return call_and_floor_span, nothing
    if variant == "peer":
        from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

        AnthropicInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        return lambda: call(client), nothing
    from costspan.instrumentor import CostspanInstrumentor

    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    telemetry = instrumentor.telemetry
    assert telemetry is not None and telemetry.metrics is not None
    # costspan_request_path leaves the queued metric points unrecorded; costspan records them, as a reader would.
    return lambda: call(client), telemetry.metrics.drain if variant == "costspan" else nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("calls", type=int)
    parser.add_argument("base_url")
    args = parser.parse_args()
    run, finish = prepare(args.variant, args.base_url)
    run()  # uncounted: the first call imports what the SDK imports lazily, opens the connection, resolves prices
    finish()
    gc.freeze()  # set-up objects out of the collector's way, as in the OpenAI mode

    def work() -> None:
        for _ in range(args.calls):
            run()
        finish()

    counted(work)


if __name__ == "__main__":
    main()
