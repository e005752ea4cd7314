"""The ClickHouse warehouse pack, run on a real ClickHouse engine (chdb, in process).

Spans are made by the real OpenTelemetry SDK (plus real costspan spans from the instrumentor), encoded to OTLP, and
written into ``otel.otel_traces`` the way the collector's ClickHouse exporter writes them: every attribute turned
into a string by pdata's ``Value.AsString``. The DDL's materialized view must turn them back into typed
``llm_cost_events`` rows, and every query in ``collector-config/clickhouse/queries/`` must give the dollars computed
here independently, to the cent, with duplicate deliveries never counted twice.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from costspan import semconv
from costspan.providers.openai.fake import FakeOpenAI
from tests.conftest import make_pipeline

chdb_session = pytest.importorskip("chdb.session", reason="chdb (ClickHouse in process) is not installed")

CLICKHOUSE_DIR = Path(__file__).resolve().parents[1] / "collector-config" / "clickhouse"
QUERIES = CLICKHOUSE_DIR / "queries"
UTC = UTC
AS_OF = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)  # the anomaly hour is 11:00-12:00
ANOMALY_HOUR = datetime(2026, 11, 20, 11, tzinfo=UTC)
START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
CENT = Decimal("0.005")


# --- what the ClickHouse exporter writes -----------------------------------------------------------------------


def go_float_string(value: float) -> str:
    """pdata's ``float64AsString``: ES6 number formatting, exponent form below 1e-6 ('5e-7')."""
    if value == 0:
        return "0"
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        mantissa, exponent = f"{value!r}".split("e")
        return f"{mantissa}e{exponent[0]}{exponent[1:].lstrip('0')}"
    return format(Decimal(repr(value)).normalize(), "f")


def _raw(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_raw(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _raw(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def as_string(value: AnyValue) -> str:
    """pdata's ``Value.AsString``, which the exporter applies to every attribute."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return go_float_string(value.double_value)
    if kind in ("array_value", "kvlist_value"):
        return json.dumps(_raw(value), separators=(",", ":"))
    return ""


def attribute_map(attributes: Sequence[KeyValue]) -> dict[str, str]:
    return {kv.key: as_string(kv.value) for kv in attributes}


# internal/coreinternal/traceutil SpanKindStr and StatusCodeStr, which the exporter uses. The view reads neither.
_SPAN_KIND = {
    k: f"SPAN_KIND_{n}" for k, n in enumerate(("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"))
}
_STATUS = {0: "STATUS_CODE_UNSET", 1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}


def exporter_rows(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """The rows the ClickHouse exporter inserts into ``otel_traces`` for one OTLP export request."""
    rows = []
    for resource_spans in request.resource_spans:
        resource = attribute_map(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                start = datetime.fromtimestamp(span.start_time_unix_nano // 10**9, UTC)
                rows.append(
                    {
                        "Timestamp": f"{start:%Y-%m-%d %H:%M:%S}.{span.start_time_unix_nano % 10**9:09d}",
                        "TraceId": span.trace_id.hex(),
                        "SpanId": span.span_id.hex(),
                        "ParentSpanId": span.parent_span_id.hex(),
                        "TraceState": span.trace_state,
                        "SpanName": span.name,
                        "SpanKind": _SPAN_KIND[span.kind],
                        "ServiceName": resource.get("service.name", ""),
                        "ResourceAttributes": resource,
                        "ScopeName": scope_spans.scope.name,
                        "ScopeVersion": scope_spans.scope.version,
                        "SpanAttributes": attribute_map(span.attributes),
                        "Duration": span.end_time_unix_nano - span.start_time_unix_nano,
                        "StatusCode": _STATUS[span.status.code],
                        "StatusMessage": span.status.message,
                    }
                )
    return rows


def otlp_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    request = encode_spans(spans)
    # Through the wire format and back, as the collector receives it.
    received = ExportTraceServiceRequest()
    received.ParseFromString(request.SerializeToString())
    return received


# --- the engine ---------------------------------------------------------------------------------------------------


def statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


class ClickHouse:
    """One chdb engine per process (chdb cannot open a second data path); tests keep apart by database name."""

    def __init__(self) -> None:
        self.session = chdb_session.Session()

    def execute(self, sql: str) -> None:
        for statement in statements(sql):
            self.session.query(statement)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        out = self.session.query(
            sql.strip().rstrip(";")
            + " SETTINGS output_format_json_quote_decimals = 1, output_format_json_quote_64bit_integers = 0",
            "JSONEachRow",
            params={k: (f"{v:%Y-%m-%d %H:%M:%S}" if isinstance(v, datetime) else v) for k, v in params.items()},
        )
        return [json.loads(line) for line in str(out).splitlines() if line.strip()]

    def query_file(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return self.rows((QUERIES / name).read_text(), **params)

    def insert_traces(self, rows: Sequence[dict[str, Any]], database: str = "otel") -> None:
        if not rows:  # an export request can carry no spans; ClickHouse refuses an empty INSERT
            return
        payload = "\n".join(json.dumps(r) for r in rows)
        self.session.query(f"INSERT INTO {database}.otel_traces FORMAT JSONEachRow\n{payload}")


@functools.cache
def clickhouse() -> ClickHouse:
    return ClickHouse()


def load_schema(engine: ClickHouse, database: str = "otel") -> None:
    """Runs the pack's DDL; another database name is how a user would rename it (a plain text substitution)."""
    for ddl in sorted(CLICKHOUSE_DIR.glob("*.sql")):
        sql = ddl.read_text()
        if database != "otel":
            sql = re.sub(r"\botel\.", f"{database}.", sql).replace(
                "DATABASE IF NOT EXISTS otel", f"DATABASE {database}"
            )
        engine.execute(sql)


# --- synthetic spans ----------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One LLM call as costspan records it; the expected values are computed from these, not from ClickHouse."""

    start: datetime
    feature: str
    route: str
    customer_id: str
    model: str = "gpt-4o-mini"
    input_tokens: int | None = 1000
    cached_tokens: int = 0
    output_tokens: int = 200
    cost: float | None = 0.001
    error_type: str | None = None
    latency_ms: int = 800

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_PROVIDER_NAME: "openai",
            semconv.GEN_AI_REQUEST_MODEL: self.model,
            semconv.GEN_AI_REQUEST_STREAM: False,
            "feature": self.feature,
            "route": self.route,
            "customer_id": self.customer_id,
            "environment": "production",
        }
        if self.input_tokens is not None:
            attrs[semconv.GEN_AI_RESPONSE_MODEL] = f"{self.model}-2024-07-18"
            attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = ("stop",)
            attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] = self.input_tokens
            attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = self.output_tokens
            attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = self.cached_tokens
            attrs[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = 0
            attrs[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = 0
        if self.error_type:
            attrs[semconv.ERROR_TYPE] = self.error_type
        if self.cost is None:
            status = semconv.STATUS_NO_USAGE if self.input_tokens is None else semconv.STATUS_UNKNOWN_MODEL
            attrs[semconv.COSTSPAN_PRICING_STATUS] = status
            return attrs
        attrs[semconv.COSTSPAN_PRICING_STATUS] = semconv.STATUS_PRICED
        attrs[semconv.COSTSPAN_PRICING_SOURCE] = "genai-prices"
        attrs[semconv.COSTSPAN_PRICING_VERSION] = "0.0.30"
        attrs[semconv.GEN_AI_USAGE_COST_AMOUNT] = self.cost
        attrs[semconv.GEN_AI_USAGE_COST_CURRENCY] = "USD"
        attrs[semconv.COSTSPAN_COST_INPUT] = self.cost * 0.6
        attrs[semconv.COSTSPAN_COST_CACHE_READ] = self.cost * 0.1
        attrs[semconv.COSTSPAN_COST_CACHE_WRITE] = 0.0
        attrs[semconv.COSTSPAN_COST_OUTPUT] = self.cost * 0.3
        return attrs


def synthetic_calls() -> list[Call]:
    rng = random.Random(20261120)
    calls: list[Call] = []
    # Seven days of baseline before the anomaly hour: "search" every hour ($0.01), "chat" every 4th hour ($0.04).
    for h in range(1, 169):
        at = ANOMALY_HOUR - timedelta(hours=h) + timedelta(minutes=rng.randrange(60))
        calls.append(Call(at, "search", "/search", "acme", cost=0.01, input_tokens=500, cached_tokens=100))
        if h % 4 == 0:
            calls.append(Call(at, "chat", "/chat", "globex", cost=0.04, input_tokens=2000, cached_tokens=1500))
    # The anomaly hour. search: $0.50 against a $0.01 baseline. chat: $0.0299 against $0.01/h, just below 3x.
    # summarize: no baseline at all. translate: spent only in the baseline, silent now.
    for minute in range(0, 50, 5):
        calls.append(Call(ANOMALY_HOUR + timedelta(minutes=minute), "search", "/search", "acme", cost=0.05))
    calls.append(Call(ANOMALY_HOUR + timedelta(minutes=7), "chat", "/chat", "globex", cost=0.0299))
    calls.append(Call(ANOMALY_HOUR + timedelta(minutes=9), "summarize", "/summarize", "initech", cost=0.2))
    calls.append(Call(ANOMALY_HOUR - timedelta(hours=30), "translate", "/translate", "initech", cost=0.3))
    # A busy day with 25 routes (top-20 cut) and a spread of prompt sizes.
    day = datetime(2026, 11, 18, tzinfo=UTC)
    for i in range(25):
        for j in range(i % 4 + 1):
            tokens = rng.randrange(50, 8000)
            calls.append(
                Call(
                    day + timedelta(minutes=i * 40 + j),
                    "rag",
                    f"/r/{i:02d}",
                    f"cust-{i % 6}",
                    input_tokens=tokens,
                    cached_tokens=tokens // 3 if j % 2 else 0,
                    cost=round(tokens * 0.15e-6 + (i + 1) * 0.0013, 9),
                )
            )
    # Last month, for the by-month query, plus a cost below 1e-6 that the exporter writes as '4e-7'.
    calls.append(Call(datetime(2026, 10, 31, 23, 59, tzinfo=UTC), "search", "/search", "acme", cost=1.25))
    calls.append(Call(datetime(2026, 10, 15, 8, tzinfo=UTC), "embed", "/embed", "acme", cost=4e-7, input_tokens=3))
    # Unpriced (unknown model) and failed (no usage) calls: counted as calls, never as dollars.
    calls.append(Call(day + timedelta(hours=20), "rag", "/r/00", "cust-0", model="ft:custom", cost=None))
    calls.append(
        Call(day + timedelta(hours=21), "rag", "/r/00", "cust-0", input_tokens=None, cost=None, error_type="500")
    )
    # The application retried a call itself: two real calls, two span ids, billed twice.
    for _ in range(2):
        calls.append(Call(day + timedelta(hours=22), "rag", "/r/01", "cust-1", cost=0.123456789))
    return calls


def make_spans(calls: Sequence[Call]) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "checkout-api", "deployment.environment.name": "production"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("costspan.instrumentor", "0.1.0")
    other = provider.get_tracer("opentelemetry.instrumentation.openai_v2")
    for call in calls:
        start_ns = int(call.start.timestamp()) * 10**9 + 123_456_789
        span = tracer.start_span(
            f"chat {call.model}", kind=SpanKind.CLIENT, start_time=start_ns, attributes=call.attributes()
        )
        if call.error_type:
            span.set_status(Status(StatusCode.ERROR, call.error_type))
        span.end(end_time=start_ns + call.latency_ms * 10**6)
    # Spans the warehouse must ignore: another GenAI instrumentation of a call, and a plain HTTP server span.
    at = int(ANOMALY_HOUR.timestamp()) * 10**9
    other.start_span(
        "chat gpt-4o-mini",
        kind=SpanKind.CLIENT,
        start_time=at,
        attributes={semconv.GEN_AI_OPERATION_NAME: "chat", "gen_ai.usage.cost.amount": 99.0, "feature": "search"},
    ).end(end_time=at + 10**9)
    tracer.start_span("GET /search", kind=SpanKind.SERVER, start_time=at, attributes={"feature": "search"}).end(
        end_time=at + 10**9
    )
    provider.shutdown()
    return list(exporter.get_finished_spans())


# --- fixtures -----------------------------------------------------------------------------------------------------


@dataclass
class Warehouse:
    engine: ClickHouse
    calls: list[Call]
    spans: list[ReadableSpan]
    redelivered: list[ReadableSpan]


@pytest.fixture(scope="module")
def warehouse() -> Iterator[Warehouse]:
    engine = clickhouse()
    engine.execute("DROP DATABASE IF EXISTS otel")
    load_schema(engine)
    engine.execute(
        "INSERT INTO otel.customer_budgets (customer_id, monthly_budget_usd, updated_at) VALUES "
        "('acme', 100, '2026-11-01 00:00:00'), ('acme', 20, '2026-11-02 00:00:00'), "
        "('globex', 1000, '2026-11-01 00:00:00')"
    )
    calls = synthetic_calls()
    spans = make_spans(calls)
    for start in range(0, len(spans), 100):  # export batches, as the batch processor sends them
        engine.insert_traces(exporter_rows(otlp_request(spans[start : start + 100])))
    # At-least-once delivery: spans whose acknowledgement was lost are exported again, as a new insert.
    redelivered = [s for s in spans if s.attributes and semconv.COSTSPAN_PRICING_STATUS in s.attributes][::7]
    engine.insert_traces(exporter_rows(otlp_request(redelivered)))
    yield Warehouse(engine, calls, spans, redelivered)
    engine.execute("DROP DATABASE otel")


# --- expected values, computed from the calls -----------------------------------------------------------------------


def in_range(call: Call) -> bool:
    return START <= call.start < END


def money(value: Any) -> Decimal:
    return Decimal(str(value))


def assert_money(actual: Any, expected: float, what: str) -> None:
    assert abs(money(actual) - Decimal(repr(expected))) < CENT, f"{what}: warehouse {actual} != expected {expected}"
    assert math.isclose(float(actual), expected, rel_tol=1e-9, abs_tol=1e-12), f"{what}: {actual} vs {expected}"


def spend_by(calls: Sequence[Call], key: Any) -> dict[Any, tuple[int, float, int]]:
    out: dict[Any, list[Any]] = defaultdict(lambda: [0, 0.0, 0])
    for call in calls:
        if not in_range(call):
            continue
        entry = out[key(call)]
        entry[0] += 1
        entry[1] += call.cost or 0.0
        entry[2] += call.cost is None
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


# --- tests ----------------------------------------------------------------------------------------------------------


def test_go_float_formatting_matches_pdata() -> None:
    assert go_float_string(0.00042) == "0.00042"
    assert go_float_string(1e-05) == "0.00001"
    assert go_float_string(4e-7) == "4e-7"
    assert go_float_string(1.5e-7) == "1.5e-7"
    assert go_float_string(2.0) == "2"
    assert go_float_string(123.456) == "123.456"


def test_exporter_rows_carry_costs_as_strings(warehouse: Warehouse) -> None:
    rows = warehouse.engine.rows(
        "SELECT SpanAttributes['gen_ai.usage.cost.amount'] AS cost, toTypeName(SpanAttributes) AS t "
        "FROM otel.otel_traces WHERE SpanAttributes['feature'] = 'embed'"
    )
    assert rows == [{"cost": "4e-7", "t": "Map(LowCardinality(String), String)"}]


def test_materialized_view_types_llm_spans_and_skips_the_rest(warehouse: Warehouse) -> None:
    engine = warehouse.engine
    types = {r["name"]: r["type"] for r in engine.rows("DESCRIBE TABLE otel.llm_cost_events")}
    assert types["cost_usd"] == "Nullable(Decimal(38, 18))"
    assert types["input_tokens"] == "Nullable(UInt64)"
    assert types["latency_ms"] == "Float64"
    (counts,) = engine.rows(
        "SELECT count() AS stored, uniqExact(trace_id, span_id) AS unique_spans FROM otel.llm_cost_events"
    )
    # Each call is one row; the other instrumentation's span and the HTTP span are not LLM cost events.
    assert counts["unique_spans"] == len(warehouse.calls)
    assert counts["stored"] == len(warehouse.calls) + len(warehouse.redelivered), "the redelivered batch must be stored"
    (final,) = engine.rows("SELECT count() AS n FROM otel.llm_cost_events FINAL")
    assert final["n"] == len(warehouse.calls)

    (embed,) = engine.rows(
        "SELECT cost_usd, input_tokens, latency_ms, pricing_status, service FROM otel.llm_cost_events FINAL "
        "WHERE feature = 'embed'"
    )
    assert embed == {
        "cost_usd": "0.0000004",
        "input_tokens": 3,
        "latency_ms": 800,
        "pricing_status": "priced",
        "service": "checkout-api",
    }
    failed = engine.rows(
        "SELECT cost_usd, input_tokens, error_type, pricing_status FROM otel.llm_cost_events FINAL "
        "WHERE error_type != ''"
    )
    assert failed == [{"cost_usd": None, "input_tokens": None, "error_type": "500", "pricing_status": "no_usage"}]


def test_every_query_file_is_tested() -> None:
    tested = {
        "spend_by_feature_day.sql",
        "spend_by_customer_month.sql",
        "spend_by_route_day_top20.sql",
        "cache_hit_rate_by_feature.sql",
        "p95_prompt_size_by_feature.sql",
        "hourly_spend_anomalies.sql",
        "budget_burn_by_customer.sql",
    }
    assert {p.name for p in QUERIES.glob("*.sql")} == tested


def test_spend_by_feature_day(warehouse: Warehouse) -> None:
    rows = warehouse.engine.query_file("spend_by_feature_day.sql", start=START, end=END)
    expected = spend_by(warehouse.calls, lambda c: (c.start.date().isoformat(), c.feature))
    assert {(r["day"], r["feature"]) for r in rows} == set(expected)
    for r in rows:
        calls, cost, unpriced = expected[(r["day"], r["feature"])]
        assert (r["calls"], r["unpriced_calls"]) == (calls, unpriced), r
        assert_money(r["spend_usd"], cost, f"{r['day']} {r['feature']}")
    total = sum(money(r["spend_usd"]) for r in rows)
    assert abs(total - Decimal(repr(sum(c.cost or 0 for c in warehouse.calls)))) < CENT


def test_spend_by_customer_month(warehouse: Warehouse) -> None:
    rows = warehouse.engine.query_file("spend_by_customer_month.sql", start=START, end=END)
    expected = spend_by(warehouse.calls, lambda c: (c.start.strftime("%Y-%m-01"), c.customer_id))
    assert {(r["month"], r["customer_id"]) for r in rows} == set(expected)
    for r in rows:
        calls, cost, unpriced = expected[(r["month"], r["customer_id"])]
        assert (r["calls"], r["unpriced_calls"]) == (calls, unpriced), r
        assert_money(r["spend_usd"], cost, f"{r['month']} {r['customer_id']}")
    # The application's own retry is two billed calls: both count.
    (cust1,) = [r for r in rows if (r["month"], r["customer_id"]) == ("2026-11-01", "cust-1")]
    assert cust1["calls"] == sum(1 for c in warehouse.calls if c.customer_id == "cust-1")


def test_spend_by_route_day_top20(warehouse: Warehouse) -> None:
    rows = warehouse.engine.query_file("spend_by_route_day_top20.sql", start=START, end=END)
    expected = spend_by(warehouse.calls, lambda c: (c.start.date().isoformat(), c.route))
    by_day: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (day, route), (_, cost, _) in expected.items():
        by_day[day].append((route, cost))
    for day, routes in by_day.items():
        got = [r for r in rows if r["day"] == day]
        top = sorted(routes, key=lambda rc: (-round(rc[1], 9), rc[0]))[:20]
        assert [r["route"] for r in got] == [route for route, _ in top], day
        for r, (route, cost) in zip(got, top, strict=True):
            assert_money(r["spend_usd"], cost, f"{day} {route}")
    assert len([r for r in rows if r["day"] == "2026-11-18"]) == 20, "25 routes that day: the cut keeps 20"


def test_cache_hit_rate_by_feature(warehouse: Warehouse) -> None:
    rows = warehouse.engine.query_file("cache_hit_rate_by_feature.sql", start=START, end=END)
    used = [c for c in warehouse.calls if in_range(c) and c.input_tokens]
    features = {c.feature for c in used}
    assert {r["feature"] for r in rows} == features
    for r in rows:
        mine = [c for c in used if c.feature == r["feature"]]
        input_tokens = sum(c.input_tokens or 0 for c in mine)
        cached = sum(c.cached_tokens for c in mine)
        assert (r["calls"], r["total_input_tokens"], r["total_cached_tokens"]) == (len(mine), input_tokens, cached), r
        assert r["token_hit_rate"] == pytest.approx(cached / input_tokens, abs=1e-6)
        assert r["call_hit_rate"] == pytest.approx(sum(c.cached_tokens > 0 for c in mine) / len(mine), abs=1e-6)
        assert_money(r["cache_read_cost_usd"], sum((c.cost or 0) * 0.1 for c in mine), r["feature"])
    (chat,) = [r for r in rows if r["feature"] == "chat"]
    assert chat["token_hit_rate"] == pytest.approx(42 * 1500 / (42 * 2000 + 1000), abs=1e-6)


def test_p95_prompt_size_by_feature(warehouse: Warehouse) -> None:
    rows = warehouse.engine.query_file("p95_prompt_size_by_feature.sql", start=START, end=END)
    for r in rows:
        sizes = sorted(c.input_tokens for c in warehouse.calls if c.feature == r["feature"] and c.input_tokens)
        assert r["calls"] == len(sizes)
        assert r["p95_input_tokens"] == sizes[math.ceil(0.95 * len(sizes)) - 1], r["feature"]  # nearest rank
        assert r["p50_input_tokens"] == sizes[math.ceil(0.5 * len(sizes)) - 1], r["feature"]
        assert r["max_input_tokens"] == sizes[-1]


def test_hourly_spend_anomalies(warehouse: Warehouse) -> None:
    rows = warehouse.engine.query_file("hourly_spend_anomalies.sql", as_of=AS_OF)
    hour_start, baseline_start = ANOMALY_HOUR, ANOMALY_HOUR - timedelta(hours=168)
    last: dict[str, float] = defaultdict(float)
    base: dict[str, float] = defaultdict(float)
    for c in warehouse.calls:
        if c.cost is not None and baseline_start <= c.start < hour_start:
            base[c.feature] += c.cost
        elif c.cost is not None and hour_start <= c.start < hour_start + timedelta(hours=1):
            last[c.feature] += c.cost
    flagged = {f for f in last if last[f] > 3 * base[f] / 168}
    assert flagged == {"search", "summarize"}, "chat spends 2.99x its baseline: silent"
    assert [r["feature"] for r in rows] == ["search", "summarize"], "largest excess first"
    for r in rows:
        assert r["hour_start"].startswith("2026-11-20 11:00:00")
        assert_money(r["last_hour_usd"], last[r["feature"]], r["feature"])
        assert_money(r["baseline_hourly_usd"], base[r["feature"]] / 168, r["feature"])
    (search,) = [r for r in rows if r["feature"] == "search"]
    assert search["ratio"] == pytest.approx(50.0)
    (summarize,) = [r for r in rows if r["feature"] == "summarize"]
    assert summarize["ratio"] is None, "no baseline: flagged, with no ratio to show"


def test_budget_burn_by_customer(warehouse: Warehouse) -> None:
    rows = warehouse.engine.query_file("budget_burn_by_customer.sql", as_of=AS_OF)
    month_start = datetime(2026, 11, 1, tzinfo=UTC)
    elapsed = (AS_OF - month_start) / (END - month_start)
    mtd: dict[str, float] = defaultdict(float)
    for c in warehouse.calls:
        if month_start <= c.start < AS_OF:
            mtd[c.customer_id] += c.cost or 0.0
    assert {r["customer_id"] for r in rows} == set(mtd)
    by_customer = {r["customer_id"]: r for r in rows}
    for customer, spent in mtd.items():
        assert_money(by_customer[customer]["mtd_usd"], spent, customer)
        assert by_customer[customer]["projected_month_usd"] == pytest.approx(spent / elapsed, abs=1e-5)
    acme = by_customer["acme"]
    assert money(acme["budget_usd"]) == 20, "the latest budget row wins"
    assert acme["burn_rate"] == pytest.approx(mtd["acme"] / elapsed / 20, abs=1e-4)
    assert by_customer["initech"]["budget_used"] is None, "no budget: listed, with no ratio"
    assert rows[0]["customer_id"] == "acme", "the fastest burn first"


def test_real_costspan_spans_land_typed(fake_openai: FakeOpenAI) -> None:
    """Spans from the instrumentor itself, not hand-made ones, come out of the view with their own numbers."""
    pipeline = make_pipeline()
    try:
        with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test-not-a-secret", max_retries=0) as client:
            ctx = baggage.set_baggage("feature", "support-bot")
            ctx = baggage.set_baggage("customer_id", "acme", ctx)
            token = context.attach(ctx)
            try:
                for text in ("hello", "a somewhat longer question about invoices"):
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
            finally:
                context.detach(token)
        spans = pipeline.spans()
    finally:
        pipeline.instrumentor.uninstrument()
    assert len(spans) == 2
    engine = clickhouse()
    engine.execute("DROP DATABASE IF EXISTS costspan_real")
    try:
        load_schema(engine, "costspan_real")
        engine.insert_traces(exporter_rows(otlp_request(spans)), "costspan_real")
        rows = engine.rows(
            "SELECT span_id, feature, customer_id, input_tokens, output_tokens, cost_usd, pricing_status "
            "FROM costspan_real.llm_cost_events FINAL ORDER BY span_id"
        )
    finally:
        engine.execute("DROP DATABASE IF EXISTS costspan_real")
    expected = sorted(
        (
            {
                "span_id": f"{s.context.span_id:016x}",
                "feature": "support-bot",
                "customer_id": "acme",
                "input_tokens": s.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS],
                "output_tokens": s.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS],
                "cost": s.attributes[semconv.GEN_AI_USAGE_COST_AMOUNT],
                "pricing_status": "priced",
            }
            for s in spans
            if s.attributes
        ),
        key=lambda r: str(r["span_id"]),
    )
    assert len(rows) == 2
    for row, want in zip(rows, expected, strict=True):
        cost = want.pop("cost")
        assert Decimal(row.pop("cost_usd")) == Decimal(go_float_string(float(cost)))  # type: ignore[arg-type]
        assert row == want


def test_query_parameters_are_the_documented_ones() -> None:
    for path in QUERIES.glob("*.sql"):
        params = set(re.findall(r"\{(\w+):", path.read_text()))
        assert params in ({"start", "end"}, {"as_of"}), (path.name, params)


# --- the sharded variant ----------------------------------------------------------------------------------------------

CLUSTER_DIR = CLICKHOUSE_DIR / "cluster"


def single_node_form(sql: str) -> str:
    """A cluster statement as one node would run it without Keeper: no ON CLUSTER, no replication."""
    sql = sql.replace(" ON CLUSTER '{cluster}'", "")
    sql = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(, )?", lambda m: f"{m[1]}(", sql)
    return sql.replace("_local", "")


def format_query(statement: str) -> str:
    """ClickHouse's own parser and formatter: raises on a syntax error, and normalizes layout for comparison."""
    literal = "'" + statement.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(clickhouse().rows(f"SELECT formatQuery({literal}) AS f")[0]["f"])


def test_cluster_ddl_parses_and_matches_the_single_node_schema() -> None:
    single = {format_query(s) for path in sorted(CLICKHOUSE_DIR.glob("*.sql")) for s in statements(path.read_text())}
    distributed = []
    for path in sorted(CLUSTER_DIR.glob("*.sql")):
        for statement in statements(path.read_text()):
            assert "ON CLUSTER '{cluster}'" in statement, f"{path.name}: every statement runs on the whole cluster"
            format_query(statement)  # parses, or raises
            if "ENGINE = Distributed" in statement:
                distributed.append(statement)
                continue
            formatted = format_query(single_node_form(statement))
            assert formatted in single, f"{path.name}: differs from the single-node DDL:\n{formatted}"
    # Copies of a span share its trace id: sharding by trace id puts them on one shard, where they are deduplicated.
    assert [re.search(r"Distributed\('\{cluster\}', otel, (\w+), (.+)\)", s).groups() for s in distributed] == [  # type: ignore[union-attr]
        ("otel_traces_local", "cityHash64(TraceId)"),
        ("llm_cost_events_local", "cityHash64(trace_id)"),
    ]


# --- the same spans in the embedded store ---------------------------------------------------------------------------


def test_every_query_agrees_with_the_embedded_store_to_the_cent(warehouse: Warehouse, tmp_path: Path) -> None:
    """The warehouse and `costspan report` answer the same questions about the same spans with the same numbers."""
    from costspan.cli.alerts import find_alerts
    from costspan.store.exporter import CostspanSpanExporter
    from costspan.store.sqlite import Store

    # The store keeps every span with gen_ai.operation.name; the warehouse only costspan's (see the DDL). Feed the
    # store what both count, delivered twice in part, as the warehouse was.
    costspan_spans = [s for s in warehouse.spans if s.attributes and semconv.COSTSPAN_PRICING_STATUS in s.attributes]
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    for batch in (costspan_spans, warehouse.redelivered):
        assert exporter.export(batch).name == "SUCCESS"
    exporter.shutdown()
    store = Store(tmp_path / "store.sqlite3", create=False)
    engine = warehouse.engine

    def same(warehouse_rows: list[dict[str, Any]], store_rows: list[dict[str, Any]], key: Any, what: str) -> None:
        ours = {key(r): r for r in warehouse_rows}
        theirs = {key(r): r for r in store_rows}
        assert set(ours) == set(theirs), what
        for k, r in ours.items():
            t = theirs[k]
            assert (r["calls"], r["unpriced_calls"]) == (t["requests"], t["unpriced"]), (what, k)
            assert_money(r["spend_usd"], t["spend_usd"] or 0.0, f"{what} {k}")

    def text(value: Any) -> str:
        return value or ""

    try:
        same(
            engine.query_file("spend_by_feature_day.sql", start=START, end=END),
            store.spend_by(["feature"], since=START, until=END, every="day"),
            lambda r: (str(r.get("day") or r["bucket"].date()), text(r["feature"])),
            "feature/day",
        )
        for month_start, month_end in (
            (START, datetime(2026, 11, 1, tzinfo=UTC)),
            (datetime(2026, 11, 1, tzinfo=UTC), END),
        ):
            same(
                [
                    r
                    for r in engine.query_file("spend_by_customer_month.sql", start=START, end=END)
                    if r["month"] == f"{month_start:%Y-%m-%d}"
                ],
                store.spend_by(["customer_id"], since=month_start, until=month_end),
                lambda r: text(r["customer_id"]),
                f"customer/{month_start:%Y-%m}",
            )
        routes = engine.query_file("spend_by_route_day_top20.sql", start=START, end=END)
        for day in sorted({r["day"] for r in routes}):
            since = datetime.fromisoformat(day).replace(tzinfo=UTC)
            same(
                [r for r in routes if r["day"] == day],
                store.spend_by(["route"], since=since, until=since + timedelta(days=1), top=20),
                lambda r: text(r["route"]),
                f"route/{day}",
            )
        by_feature = {text(r["feature"]): r for r in store.spend_by(["feature"], since=START, until=END)}
        for r in engine.query_file("cache_hit_rate_by_feature.sql", start=START, end=END):
            assert r["token_hit_rate"] == pytest.approx(by_feature[r["feature"]]["cache_hit_rate"], abs=1e-6)
        for r in engine.query_file("p95_prompt_size_by_feature.sql", start=START, end=END):
            assert r["p95_input_tokens"] == by_feature[r["feature"]]["p95_input_tokens"], r["feature"]

        hour = ANOMALY_HOUR
        hourly = store.spend_by(
            ["feature"], since=hour - timedelta(hours=168), until=hour + timedelta(hours=1), every="hour"
        )
        alerts = find_alerts(hourly, ["feature"], hour, 3.0, 0.0)
        anomalies = engine.query_file("hourly_spend_anomalies.sql", as_of=AS_OF)
        assert [r["feature"] for r in anomalies] == [a.group["feature"] for a in alerts]
        for r, a in zip(anomalies, alerts, strict=True):
            assert_money(r["last_hour_usd"], a.spend_usd, r["feature"])
            assert_money(r["baseline_hourly_usd"], a.baseline_hourly_usd, r["feature"])

        month = datetime(2026, 11, 1, tzinfo=UTC)
        mtd = {text(r["customer_id"]): r for r in store.spend_by(["customer_id"], since=month, until=AS_OF)}
        burn = engine.query_file("budget_burn_by_customer.sql", as_of=AS_OF)
        assert {r["customer_id"] for r in burn} == set(mtd)
        for r in burn:
            assert_money(r["mtd_usd"], mtd[r["customer_id"]]["spend_usd"] or 0.0, r["customer_id"])
    finally:
        store.close()


def test_a_batch_job_recorded_by_two_processes_counts_once(fake_openai: FakeOpenAI) -> None:
    """Two processes read the same finished batch; each records the job (own span id, same derived trace)."""
    spans: list[ReadableSpan] = []
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test-not-a-secret", max_retries=0) as client:
        batch = client.batches.create(input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h")
        client.batches.retrieve(batch.id)  # in progress
        for _process in range(2):  # a fresh instrumentation is what a second process has
            pipeline = make_pipeline()
            try:
                client.batches.retrieve(batch.id)
                spans += pipeline.spans()
            finally:
                pipeline.instrumentor.uninstrument()
    assert len(spans) == 2 and spans[0].context.span_id != spans[1].context.span_id
    engine = clickhouse()
    engine.execute("DROP DATABASE IF EXISTS costspan_batch")
    try:
        load_schema(engine, "costspan_batch")
        engine.insert_traces(exporter_rows(otlp_request(spans[:1])), "costspan_batch")
        engine.insert_traces(exporter_rows(otlp_request(spans[1:])), "costspan_batch")
        rows = engine.rows(
            "SELECT batch_id, input_tokens, cost_usd FROM costspan_batch.llm_cost_events FINAL "
            "WHERE operation = 'batch'"
        )
    finally:
        engine.execute("DROP DATABASE IF EXISTS costspan_batch")
    assert len(rows) == 1
    assert rows[0]["batch_id"] == batch.id
    # gpt-4o-mini at batch rates: 120,000 x $0.075 + 30,000 x $0.30 per million = $0.018
    assert Decimal(rows[0]["cost_usd"]) == Decimal("0.018")


def test_app_level_retries_count_twice_and_are_marked(fake_openai: FakeOpenAI) -> None:
    """A handler that repeats the same request is billed twice: both rows count, the later one is marked."""
    pipeline = make_pipeline()
    try:
        handler = pipeline.tracer_provider.get_tracer("app")
        with (
            openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test-not-a-secret", max_retries=0) as client,
            handler.start_as_current_span("POST /api/chat"),
        ):
            for text in ("same question", "same question", "a different, longer question"):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
        spans = pipeline.spans()
    finally:
        pipeline.instrumentor.uninstrument()
    engine = clickhouse()
    engine.execute("DROP DATABASE IF EXISTS costspan_retry")
    try:
        load_schema(engine, "costspan_retry")
        engine.insert_traces(exporter_rows(otlp_request(spans)), "costspan_retry")
        engine.insert_traces(exporter_rows(otlp_request(spans)), "costspan_retry")  # and delivered twice
        rows = engine.rows(
            "SELECT input_tokens, is_retry, cost_usd FROM costspan_retry.llm_cost_calls ORDER BY timestamp, span_id"
        )
    finally:
        engine.execute("DROP DATABASE IF EXISTS costspan_retry")
    assert [bool(r["is_retry"]) for r in rows] == [False, True, False]
    assert rows[0]["input_tokens"] == rows[1]["input_tokens"] != rows[2]["input_tokens"]
    assert Decimal(rows[0]["cost_usd"]) == Decimal(rows[1]["cost_usd"])  # billed twice, counted twice
