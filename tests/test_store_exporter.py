"""The costspan span exporter: real SDK calls -> real OTel SDK -> SQLite file -> `costspan report` numbers."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import costspan
from costspan import semconv
from costspan.cli import main as cli_main
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from costspan.store.exporter import CostspanSpanExporter, row_from_span
from costspan.store.sqlite import Store
from tests.conftest import Pipeline, make_pipeline
from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# gpt-4o-mini in genai-prices 0.2.5 (tests/frozen_prices.py), USD per million tokens.
INPUT, CACHED, OUTPUT = 0.15, 0.075, 0.60


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Pipeline, CostspanSpanExporter]]:
    """The conftest pipeline (in-memory exporter) with the store exporter added beside it."""
    pipeline = make_pipeline()
    exporter = CostspanSpanExporter(tmp_path / "spans.sqlite3")
    pipeline.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield pipeline, exporter
    pipeline.instrumentor.uninstrument()
    exporter.shutdown()


def test_instrumented_calls_land_in_the_store_and_the_report(
    stored: tuple[Pipeline, CostspanSpanExporter],
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline, exporter = stored
    fake_openai.script(
        Scripted(
            usage={"prompt_tokens": 1000, "completion_tokens": 200, "prompt_tokens_details": {"cached_tokens": 600}}
        ),
        Scripted(usage={"prompt_tokens": 3000, "completion_tokens": 100}),
        Scripted(usage={"prompt_tokens": 500, "completion_tokens": 50}),
    )
    tracer = pipeline.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("POST /answer"):  # not an LLM span: not stored
        with costspan.attribute(feature="answer", customer_id="acme", route="/answer", environment="prod"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        with costspan.attribute(feature="search", customer_id="globex", route="/search", environment="prod"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert exporter.stored_spans == 3 and exporter.failed_spans == 0

    llm_spans = {
        s.context.span_id: s for s in pipeline.spans() if (s.attributes or {}).get(semconv.GEN_AI_OPERATION_NAME)
    }
    with Store(exporter.path) as store:
        rows = {int(r["span_id"], 16): r for r in store.query("SELECT * FROM spans")}
    assert rows.keys() == llm_spans.keys()
    for span_id, span in llm_spans.items():
        r, a = rows[span_id], span.attributes
        assert a is not None and span.parent is not None
        assert span.start_time is not None and span.end_time is not None
        assert r["cost_usd"] == a[semconv.GEN_AI_USAGE_COST_AMOUNT]
        assert r["trace_id"] == f"{span.context.trace_id:032x}"
        assert r["parent_span_id"] == f"{span.parent.span_id:016x}"
        assert (r["response_model"], r["pricing_status"]) == ("gpt-4o-mini-2024-07-18", "priced")
        assert r["request_id"] == a[semconv.COSTSPAN_REQUEST_ID]
        assert r["latency_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6)

    assert cli_main(["report", "--by", "feature", "--store", str(exporter.path), "--format", "json"]) == 0
    report = {r["feature"]: r for r in json.loads(capsys.readouterr().out)}
    answer = ((400 * INPUT + 600 * CACHED + 200 * OUTPUT) + (3000 * INPUT + 100 * OUTPUT)) / 1e6
    assert report["answer"]["spend_usd"] == pytest.approx(answer, rel=1e-12)
    assert report["answer"]["requests"] == 2
    assert report["answer"]["cache_hit_rate"] == pytest.approx(600 / 4000)
    assert report["answer"]["p95_input_tokens"] == 3000
    assert report["search"]["spend_usd"] == pytest.approx((500 * INPUT + 50 * OUTPUT) / 1e6, rel=1e-12)


def test_an_unwritable_store_is_counted_and_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spans.sqlite3"
    path.write_bytes(b"not sqlite" * 1000)
    exporter = CostspanSpanExporter(path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    def llm_call() -> None:
        with tracer.start_as_current_span("chat", attributes={semconv.GEN_AI_OPERATION_NAME: "chat"}):
            pass

    llm_call()
    llm_call()
    assert (exporter.failed_spans, exporter.stored_spans) == (2, 0)
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "costspan.store.exporter"]  # once a minute at most
    assert "is not a costspan store" in logged and "Pass the right --store path" in logged

    path.rename(tmp_path / "spans.txt")  # the file was never a store: the right path holds none yet
    llm_call()
    assert exporter.stored_spans == 1
    exporter.shutdown()
    assert exporter.export([]) == SpanExportResult.FAILURE  # after shutdown, as every SDK exporter


class UnreadableSpan(ReadableSpan):
    """A span whose attributes cannot be read (a broken processor upstream, say)."""

    @property
    def attributes(self) -> Any:
        raise RuntimeError("attributes are gone")


def test_a_span_that_cannot_be_read_is_lost_alone(tmp_path: Path) -> None:
    exporter = CostspanSpanExporter(tmp_path / "spans.sqlite3")
    recorded = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("chat", attributes={semconv.GEN_AI_OPERATION_NAME: "chat"}):
        pass
    (good,) = recorded.get_finished_spans()
    bad = UnreadableSpan(name="chat", context=good.context, start_time=1, end_time=2)
    assert exporter.export([bad, good]) == SpanExportResult.SUCCESS
    assert (exporter.failed_spans, exporter.stored_spans) == (1, 1)


def test_a_store_locked_past_the_timeout_loses_the_batch_not_the_call(tmp_path: Path) -> None:
    path = tmp_path / "spans.sqlite3"
    Store(path).close()
    exporter = CostspanSpanExporter(path, timeout_s=0.2)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # e.g. a stuck process mid-write
    try:
        with tracer.start_as_current_span("chat", attributes={semconv.GEN_AI_OPERATION_NAME: "chat"}):
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (exporter.failed_spans, exporter.stored_spans) == (1, 0)
    with tracer.start_as_current_span("chat", attributes={semconv.GEN_AI_OPERATION_NAME: "chat"}):
        pass
    assert exporter.stored_spans == 1
    exporter.shutdown()


def test_only_llm_spans_become_rows_and_unpriced_calls_keep_no_amount() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "billing-api"}))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /health") as plain:
        pass
    with tracer.start_as_current_span(
        "chat mystery-model",
        attributes={
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_REQUEST_MODEL: "mystery-model",
            semconv.GEN_AI_USAGE_INPUT_TOKENS: 10,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 5,
            semconv.COSTSPAN_PRICING_STATUS: semconv.STATUS_UNKNOWN_MODEL,
            "feature": "search",
        },
    ) as unknown:
        pass
    assert row_from_span(plain) is None  # type: ignore[arg-type]
    row = row_from_span(unknown)  # type: ignore[arg-type]
    assert row is not None
    assert (row.service, row.feature, row.input_tokens, row.cached_tokens) == ("billing-api", "search", 10, 0)
    assert (row.cost_usd, row.pricing_status) == (None, "unknown_model")


def test_registered_as_the_costspan_traces_exporter() -> None:
    (entry,) = entry_points(group="opentelemetry_traces_exporter", name="costspan")
    assert entry.load() is CostspanSpanExporter
    trace.get_tracer_provider()  # the global provider is untouched by loading it


def test_opentelemetry_instrument_writes_locally_and_to_a_collector(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite3"
    with FakeOpenAI() as fake, OtlpReceiver() as receiver:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "sk-test-not-a-secret",
            "OTEL_SERVICE_NAME": "quickstart",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_METRICS_EXPORTER": "none",
            "COSTSPAN_STORE_PATH": str(path),
        }
        result = subprocess.run(
            [
                str(BIN / "opentelemetry-instrument"),
                "--traces_exporter",
                "costspan,otlp_proto_http",
                sys.executable,
                str(ROOT / "examples" / "quickstart.py"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    collected = {s["attributes"]["customer_id"] for s in receiver.spans if "customer_id" in s["attributes"]}
    with Store(path) as store:
        local = store.query("SELECT customer_id, service, feature, cost_usd FROM spans ORDER BY customer_id")
    assert collected == {r["customer_id"] for r in local} == {"cust_0007", "cust_4291"}
    assert all(r["service"] == "quickstart" and r["feature"] == "support-chat" and r["cost_usd"] > 0 for r in local)
