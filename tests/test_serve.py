"""``costspan serve``: real OTLP/HTTP from the OTel SDK's exporter, into a real SQLite store."""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.util.types import AttributeValue

from costspan import semconv
from costspan.instrumentor import CostspanInstrumentor
from costspan.pricing.pricer import Pricer
from costspan.providers.openai.fake import FakeOpenAI
from costspan.store.exporter import CostspanSpanExporter, row_from_span
from costspan.store.receiver import JSON, MAX_BODY_BYTES, PROTOBUF, OTLPReceiver, received_rows
from costspan.store.sqlite import Store

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[OTLPReceiver]:
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    with OTLPReceiver(exporter, port=0) as r:
        yield r
    exporter.shutdown()


def stored(path: str | Path | None) -> list[dict[str, Any]]:
    with Store(path) as store:
        return [dict(row) for row in store.query("SELECT * FROM spans ORDER BY start_ns")]


def post(url: str, body: bytes, content_type: str = PROTOBUF, encoding: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def llm_spans(fake_openai: FakeOpenAI) -> Iterator[list[ReadableSpan]]:
    """Three real instrumented calls (chat, streamed chat, embeddings) with baggage, plus the app's own span."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop", "deployment.environment.name": "prod"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
        ctx = baggage.set_baggage("customer_id", "acme")
        ctx = baggage.set_baggage("feature", "support-chat", ctx)
        ctx = baggage.set_baggage("route", "POST /chat", ctx)
        token = context.attach(ctx)
        try:
            with provider.get_tracer("app").start_as_current_span("POST /chat"):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                for _ in client.chat.completions.create(
                    model="gpt-4.1", messages=[{"role": "user", "content": "hello"}], stream=True
                ):
                    pass
                client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        finally:
            context.detach(token)
        yield list(memory.get_finished_spans())
    finally:
        instrumentor.uninstrument()


def as_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the spec writes it: lowerCamelCase, hex trace and span ids, enums as integers."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)

    def hexify(node: Any) -> Any:
        if isinstance(node, list):
            return [hexify(item) for item in node]
        if isinstance(node, dict):
            return {
                key: base64.b64decode(value).hex() if key in ("traceId", "spanId", "parentSpanId") else hexify(value)
                for key, value in node.items()
            }
        return node

    return json.dumps(hexify(document)).encode()


def test_sdk_otlp_exporter_round_trip_stores_the_same_rows(
    receiver: OTLPReceiver, llm_spans: list[ReadableSpan]
) -> None:
    # The SDK's own OTLP/HTTP exporter, gzip on, sends what the instrumentor produced.
    exporter = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces", compression=Compression.Gzip)
    assert exporter.export(llm_spans).name == "SUCCESS"
    rows = stored(receiver.exporter.path)
    # One span -> row mapping: the row stored from the wire equals the row of the in-process span.
    expected = sorted(filter(None, map(row_from_span, llm_spans)), key=lambda r: r.start_ns)
    assert len(rows) == 3 == len(expected)
    for row, want in zip(rows, expected, strict=True):
        # The receiver prices the span again and gets the instrumentor's figure; the span's own is kept as a claim.
        assert {k: row[k] for k in want.__dataclass_fields__} == {
            k: getattr(want, k) for k in want.__dataclass_fields__ if k != "claimed_cost_usd"
        } | {"claimed_cost_usd": want.cost_usd}
    assert {r["customer_id"] for r in rows} == {"acme"}
    assert {r["environment"] for r in rows} == {"prod"}
    assert {r["service"] for r in rows} == {"shop"}
    assert all(r["cost_usd"] and r["cost_usd"] > 0 for r in rows)
    counts = receiver.counts
    assert (counts.spans, counts.stored, counts.ignored, counts.rejected) == (4, 3, 1, 0)


def test_json_and_duplicate_delivery(receiver: OTLPReceiver, llm_spans: list[ReadableSpan]) -> None:
    body = as_json(encode_spans(llm_spans))
    url = receiver.endpoint + "/v1/traces"
    for _ in range(2):  # a collector retrying a batch it already delivered
        status, raw = post(url, gzip.compress(body), JSON, "gzip")
        assert status == 200
        response = json_format.Parse(raw, ExportTraceServiceResponse())
        assert not response.HasField("partial_success")
    assert len(stored(receiver.exporter.path)) == 3
    assert (receiver.counts.stored, receiver.counts.duplicates) == (3, 3)


def test_malformed_spans_are_rejected_alone(receiver: OTLPReceiver, llm_spans: list[ReadableSpan]) -> None:
    request = encode_spans(llm_spans)
    spans = request.resource_spans[0].scope_spans
    victim = next(s for scope in spans for s in scope.spans if s.name.startswith("chat"))
    victim.trace_id = b"\x01\x02\x03"
    undated = next(s for scope in spans for s in scope.spans if s.name.startswith("embeddings"))
    undated.start_time_unix_nano = 0
    # fixed64 in OTLP: a time past 2**63 - 1 ns fits the message but no store column
    far = [s for scope in spans for s in scope.spans if s.name.startswith("chat")][1]
    far.start_time_unix_nano = 2**63 + 5
    status, raw = post(receiver.endpoint + "/v1/traces", request.SerializeToString())
    assert status == 200
    response = ExportTraceServiceResponse.FromString(raw)
    assert response.partial_success.rejected_spans == 3
    assert "trace id must be 16 bytes" in response.partial_success.error_message
    assert "no start time" in response.partial_success.error_message
    assert "a time past what the store holds" in response.partial_success.error_message
    assert len(stored(receiver.exporter.path)) == 0
    assert receiver.counts.rejected == 3 and receiver.counts.ignored == 1


def test_a_zero_parent_id_and_a_bad_link_do_not_lose_the_span(
    receiver: OTLPReceiver, llm_spans: list[ReadableSpan]
) -> None:
    """Eight zero bytes mean no parent, as some exporters write a root span; the store keeps no links, so a
    malformed one is left out rather than the span rejected."""
    request = encode_spans(llm_spans)
    spans = [s for scope in request.resource_spans[0].scope_spans for s in scope.spans]
    root = next(s for s in spans if s.name.startswith("chat"))
    root.parent_span_id = b"\0" * 8
    root.links.add(trace_id=b"\x01\x02", span_id=b"\x03")
    status, raw = post(receiver.endpoint + "/v1/traces", request.SerializeToString())
    assert status == 200
    assert not ExportTraceServiceResponse.FromString(raw).partial_success.rejected_spans
    rows = {row["span_id"]: row for row in stored(receiver.exporter.path)}
    assert rows[root.span_id.hex()]["parent_span_id"] is None


@pytest.mark.parametrize(
    ("path", "content_type", "encoding", "body", "status"),
    [
        ("/v1/traces", PROTOBUF, None, b"\xff\xff not protobuf", 400),
        ("/v1/traces", PROTOBUF, "gzip", b"not gzip", 400),
        ("/v1/traces", PROTOBUF, "br", b"", 400),
        ("/v1/traces", JSON, None, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', 400),
        ("/v1/traces", JSON, None, b"[]", 400),
        ("/v1/traces", "text/plain", None, b"hello", 415),
        ("/v1/nope", PROTOBUF, None, b"", 404),
    ],
)
def test_bad_requests_get_a_clear_status(
    receiver: OTLPReceiver, path: str, content_type: str, encoding: str | None, body: bytes, status: int
) -> None:
    got, raw = post(receiver.endpoint + path, body, content_type, encoding)
    assert got == status
    if content_type == PROTOBUF:
        assert RpcStatus.FromString(raw).message  # the OTLP error body: google.rpc.Status


def test_concurrent_clients_lose_and_duplicate_nothing(receiver: OTLPReceiver, llm_spans: list[ReadableSpan]) -> None:
    """Eight apps exporting at once (each batch twice, as a retrying client would): every span stored once."""
    template = next(s for s in llm_spans if row_from_span(s) is not None)

    def app(worker: int) -> list[int]:
        rng = random.Random(worker)
        statuses = []
        for _ in range(5):
            batch = [copy_with_new_ids(template, rng.getrandbits(128), rng.getrandbits(64)) for _ in range(20)]
            body = encode_spans(batch).SerializeToString()
            statuses += [post(receiver.endpoint + "/v1/traces", body)[0] for _ in range(2)]
        return statuses

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [status for result in pool.map(app, range(8)) for status in result]
    assert set(statuses) == {200}
    assert len(stored(receiver.exporter.path)) == 8 * 5 * 20
    assert (receiver.counts.stored, receiver.counts.duplicates) == (800, 800)


def copy_with_new_ids(span: ReadableSpan, trace_id: int, span_id: int) -> ReadableSpan:
    return ReadableSpan(
        name=span.name,
        context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)),
        resource=span.resource,
        attributes=span.attributes,
        kind=span.kind,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def test_chunked_body_is_read(receiver: OTLPReceiver, llm_spans: list[ReadableSpan]) -> None:
    """Clients that stream their body (no Content-Length) are understood, not read as empty."""
    body = encode_spans(llm_spans).SerializeToString()
    host, port = receiver.server.server_address[:2]
    with socket.create_connection((str(host), port), timeout=30) as conn:
        head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:]))
        conn.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    assert len(stored(receiver.exporter.path)) == 3


def test_a_body_that_inflates_past_the_limit_is_refused_without_inflating_it(receiver: OTLPReceiver) -> None:
    bomb = gzip.compress(b"\0" * (MAX_BODY_BYTES + 1024), compresslevel=9)  # ~33 KB on the wire
    status, raw = post(receiver.endpoint + "/v1/traces", bomb, PROTOBUF, "gzip")
    assert status == 413 and "inflates to more than" in RpcStatus.FromString(raw).message


def test_a_negative_chunk_size_is_refused(receiver: OTLPReceiver) -> None:
    host, port = receiver.server.server_address[:2]
    with socket.create_connection((str(host), port), timeout=30) as conn:
        head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        conn.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n-1\r\n".encode())
        assert conn.recv(4096).startswith(b"HTTP/1.1 400")


def test_metrics_and_logs_are_accepted_and_ignored(receiver: OTLPReceiver) -> None:
    assert post(receiver.endpoint + "/v1/metrics", b"")[0] == 200
    assert post(receiver.endpoint + "/v1/logs", b"{}", JSON)[0] == 200


def test_store_failure_answers_503_so_the_client_retries(tmp_path: Path, llm_spans: list[ReadableSpan]) -> None:
    not_a_file = tmp_path / "dir"
    not_a_file.mkdir()
    exporter = CostspanSpanExporter(not_a_file)
    with OTLPReceiver(exporter, port=0) as receiver:
        status, raw = post(receiver.endpoint + "/v1/traces", encode_spans(llm_spans).SerializeToString())
    assert status == 503
    assert "retry" in RpcStatus.FromString(raw).message
    assert receiver.counts.failed_batches == 1


def test_serve_refuses_a_damaged_store_at_start(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [str(BIN / "costspan"), "serve", "--port", "0", "--store", str(damaged)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "costspan serve: error:" in result.stderr and str(damaged) in result.stderr


@pytest.mark.integration
def test_opentelemetry_instrument_app_into_costspan_serve(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """The example app under `opentelemetry-instrument`, exporting OTLP to `costspan serve` in another process."""
    store = tmp_path / "served.sqlite3"
    serve = subprocess.Popen(
        [str(BIN / "costspan"), "serve", "--port", "0", "--store", str(store)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        banner = serve.stderr.readline()  # printed once the port is bound
        assert "receiving OTLP/HTTP on" in banner, banner
        endpoint = banner.split(" on ", 1)[1].split("/v1/traces", 1)[0]
        env = {
            **os.environ,
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_API_KEY": "sk-test",
            "OTEL_SERVICE_NAME": "support-app",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        }
        app = subprocess.run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, str(ROOT / "examples" / "support_app.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert app.returncode == 0, app.stderr
        assert "handled 3 chats" in app.stdout
    finally:
        serve.terminate()
        _, rest = serve.communicate(timeout=60)
    assert serve.returncode == 0, rest
    assert "7 LLM span(s) stored" in rest
    rows = stored(store)
    assert len(rows) == 7
    by_feature: dict[str, int] = {}
    for row in rows:
        by_feature[row["feature"]] = by_feature.get(row["feature"], 0) + 1
        assert row["environment"] == "prod" and row["service"] == "support-app"
        assert row["pricing_status"] == "priced"
    assert by_feature == {"support-chat": 3, "search-embeddings": 3, "nightly-batch": 1}
    assert {r["customer_id"] for r in rows} == {"acme", "globex", "system"}


def test_a_span_read_off_the_wire_maps_as_the_in_process_one(llm_spans: list[ReadableSpan]) -> None:
    """The receiver reads attributes straight from the protobuf; odd values (empty, zero, other types) must give
    the row the in-process exporter writes."""
    template = next(s for s in llm_spans if row_from_span(s) is not None)
    odd: dict[str, AttributeValue] = {
        "feature": 7,
        "route": "",
        "customer_id": True,
        "environment": 2.5,
        semconv.GEN_AI_RESPONSE_MODEL: "",
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 0,
        semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 3,
        semconv.COSTSPAN_REQUEST_ID: ("a", "b"),
        semconv.COSTSPAN_COST_INPUT: 0.0,
    }
    span = ReadableSpan(
        name=template.name,
        context=SpanContext(5, 6, is_remote=False, trace_flags=TraceFlags(1)),
        resource=template.resource,
        attributes={**(template.attributes or {}), **odd},
        start_time=template.start_time,
        end_time=template.end_time,
    )
    want = row_from_span(span)
    assert want is not None
    (row,) = received_rows(encode_spans([span]), Pricer(), ()).rows
    repriced = {name for name in want.__dataclass_fields__ if name.startswith(("cost_", "pricing_", "claimed_"))}
    assert {name: getattr(row, name) for name in want.__dataclass_fields__ if name not in repriced} == {
        name: getattr(want, name) for name in want.__dataclass_fields__ if name not in repriced
    }
    assert (row.feature, row.route, row.customer_id, row.environment) == ("7", None, "True", "2.5")
    assert row.request_id == "('a', 'b')" and row.claimed_cost_usd == want.cost_usd
