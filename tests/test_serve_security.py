"""``costspan serve`` against clients it must not trust: no token, forged costs, impossible counts, broken HTTP."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags

from costspan import semconv
from costspan.pricing.overrides import price_layers
from costspan.pricing.pricer import MAX_CALL_TOKENS, Pricer
from costspan.store.exporter import CostspanSpanExporter, row_from_span
from costspan.store.receiver import OTLPReceiver, TokenError
from tests.test_serve import BIN, llm_spans, post, stored

__all__ = ["llm_spans"]  # a fixture, used by name

TOKEN = "t0k3n-for-tests-only-0123456789"
_ids = iter(range(1, 10**6))


def forged(template: ReadableSpan, **attributes: Any) -> ReadableSpan:
    """A copy of ``template`` with fresh ids and some attributes replaced (a ``None`` value removes one)."""
    merged = {**(template.attributes or {}), **attributes}
    number = next(_ids)
    return ReadableSpan(
        name=template.name,
        context=SpanContext(number, number, is_remote=False, trace_flags=TraceFlags(1)),
        resource=template.resource,
        attributes={key: value for key, value in merged.items() if value is not None},
        kind=template.kind,
        start_time=template.start_time,
        end_time=template.end_time,
        instrumentation_scope=template.instrumentation_scope,
    )


def chat(spans: list[ReadableSpan]) -> ReadableSpan:
    return next(s for s in spans if (s.attributes or {}).get(semconv.GEN_AI_REQUEST_MODEL) == "gpt-4o-mini")


def send(receiver: OTLPReceiver, spans: list[ReadableSpan]) -> ExportTraceServiceResponse:
    status, raw = post(receiver.endpoint + "/v1/traces", encode_spans(spans).SerializeToString())
    assert status == 200, raw
    response: ExportTraceServiceResponse = ExportTraceServiceResponse.FromString(raw)
    return response


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[OTLPReceiver]:
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    with OTLPReceiver(exporter, port=0) as r:
        yield r
    exporter.shutdown()


def report_json(store: Path) -> dict[str, Any]:
    """`costspan report --format json` over everything, summed: total spend and unpriced spans."""
    out = subprocess.run(
        [sys.executable, "-m", "costspan.cli", "report", "--store", str(store), "--since", "3650d", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    assert out.returncode == 0, out.stderr
    assert "Infinity" not in out.stdout and "NaN" not in out.stdout
    rows = json.loads(out.stdout)
    spends = [row["spend_usd"] for row in rows if row["spend_usd"] is not None]
    return {"total_usd": sum(spends) if spends else None, "unpriced": sum(row["unpriced"] for row in rows)}


# --- the receiver prices; the client only claims ---------------------------------------------------------
@pytest.mark.parametrize(
    ("attributes", "why"),
    [
        ({semconv.GEN_AI_USAGE_COST_AMOUNT: math.inf}, "is not an amount"),
        ({semconv.GEN_AI_USAGE_COST_AMOUNT: math.nan}, "is not an amount"),
        ({semconv.GEN_AI_USAGE_COST_AMOUNT: -500.0}, "is not an amount"),
        ({semconv.COSTSPAN_COST_OUTPUT: -0.01}, "is not an amount"),
        ({semconv.GEN_AI_USAGE_COST_AMOUNT: "lots"}, "is not an amount"),
        ({semconv.GEN_AI_USAGE_INPUT_TOKENS: -1000}, "is not a token count"),
        ({semconv.GEN_AI_USAGE_OUTPUT_TOKENS: MAX_CALL_TOKENS + 1}, "is not a token count"),
        ({semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: -5}, "is not a token count"),
        ({semconv.GEN_AI_USAGE_INPUT_TOKENS: 12.5}, "is not a token count"),
        ({semconv.GEN_AI_USAGE_INPUT_TOKENS: "12"}, "is not a token count"),
        ({semconv.GEN_AI_USAGE_INPUT_TOKENS: True}, "is not a token count"),
    ],
)
def test_impossible_numbers_are_rejected_and_never_spend(
    receiver: OTLPReceiver, llm_spans: list[ReadableSpan], attributes: dict[str, Any], why: str
) -> None:
    honest = forged(chat(llm_spans))
    response = send(receiver, [honest, forged(chat(llm_spans), **attributes)])
    assert response.partial_success.rejected_spans == 1
    assert why in response.partial_success.error_message
    rows = stored(receiver.exporter.path)
    assert [r["span_id"] for r in rows] == [f"{honest.context.span_id:016x}"]
    assert receiver.counts.rejected == 1 and receiver.counts.stored == 1
    totals = report_json(receiver.exporter.path)
    assert math.isfinite(totals["total_usd"]) and totals["total_usd"] == pytest.approx(rows[0]["cost_usd"])


def test_a_span_that_ends_before_it_starts_is_rejected(receiver: OTLPReceiver, llm_spans: list[ReadableSpan]) -> None:
    template = chat(llm_spans)
    assert template.start_time is not None
    backwards = forged(template)
    backwards._end_time = template.start_time - 1
    response = send(receiver, [backwards])
    assert "ends before it starts" in response.partial_success.error_message
    assert stored(receiver.exporter.path) == []


def test_a_false_claim_is_kept_as_a_claim_and_the_spend_is_computed(
    receiver: OTLPReceiver, llm_spans: list[ReadableSpan]
) -> None:
    template = chat(llm_spans)
    honest_cost = row_from_span(template).cost_usd  # type: ignore[union-attr]
    assert honest_cost and honest_cost > 0
    greedy = forged(template, **{semconv.GEN_AI_USAGE_COST_AMOUNT: 1000.0, semconv.COSTSPAN_PRICING_VERSION: "mine"})
    response = send(receiver, [greedy])
    assert not response.partial_success.rejected_spans
    (row,) = stored(receiver.exporter.path)
    assert row["cost_usd"] == honest_cost and row["claimed_cost_usd"] == 1000.0
    assert row["pricing_status"] == "priced" and row["pricing_version"] != "mine"
    assert receiver.counts.disputed == 1
    assert report_json(receiver.exporter.path)["total_usd"] == pytest.approx(honest_cost)


def test_a_cost_claimed_without_usage_is_unpriced_not_spend(
    receiver: OTLPReceiver, llm_spans: list[ReadableSpan]
) -> None:
    no_usage = {name: None for name in (semconv.GEN_AI_USAGE_INPUT_TOKENS, semconv.GEN_AI_USAGE_OUTPUT_TOKENS)}
    claim = forged(chat(llm_spans), **no_usage, **{semconv.GEN_AI_USAGE_COST_AMOUNT: 250.0})
    unknown = forged(chat(llm_spans), **{semconv.GEN_AI_RESPONSE_MODEL: "my-own-model", "gen_ai.request.model": "x"})
    send(receiver, [claim, unknown])
    rows = {r["span_id"]: r for r in stored(receiver.exporter.path)}
    assert rows[f"{claim.context.span_id:016x}"]["pricing_status"] == "no_usage"
    assert rows[f"{unknown.context.span_id:016x}"]["pricing_status"] == "unknown_model"
    assert all(r["cost_usd"] is None for r in rows.values())
    assert rows[f"{claim.context.span_id:016x}"]["claimed_cost_usd"] == 250.0
    report = report_json(receiver.exporter.path)
    assert report["total_usd"] is None and report["unpriced"] == 2


def test_the_receiver_prices_with_the_pricing_file(
    tmp_path: Path, llm_spans: list[ReadableSpan], monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[[models]]\nmodel = "gpt-4o-mini"\ninput = 1000.0\noutput = 1000.0\n')
    monkeypatch.setenv("OTEL_COSTSPAN_PRICING_FILE", str(prices))
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    with OTLPReceiver(exporter, port=0) as receiver:
        send(receiver, [forged(chat(llm_spans))])
    (row,) = stored(exporter.path)
    tokens = row["input_tokens"] + row["output_tokens"]
    assert row["cost_usd"] == pytest.approx(tokens * 1000.0 / 1e6)
    assert row["pricing_source"].startswith("override:")
    expected = Pricer(price_layers(prices)).price(None, "gpt-4o-mini", at=0)
    assert expected.status == "no_usage"  # the same layers, as the receiver built them


# --- authentication --------------------------------------------------------------------------------------
def test_a_token_is_required_off_loopback(tmp_path: Path) -> None:
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    with pytest.raises(TokenError, match="reachable from other machines"):
        OTLPReceiver(exporter, host="0.0.0.0", port=0)
    with pytest.raises(TokenError, match="at least 16"):
        OTLPReceiver(exporter, port=0, token="short")
    OTLPReceiver(exporter, host="0.0.0.0", port=0, token=TOKEN).server.server_close()


def test_requests_without_the_token_are_refused_and_store_nothing(
    tmp_path: Path, llm_spans: list[ReadableSpan]
) -> None:
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    body = encode_spans(llm_spans).SerializeToString()
    with OTLPReceiver(exporter, port=0, token=TOKEN) as receiver:
        host, port = receiver.server.server_address[:2]
        for authorization in ("", "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
            with socket.create_connection((str(host), port), timeout=10) as conn:
                auth = f"Authorization: {authorization}\r\n" if authorization else ""
                head = f"POST /v1/traces HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode() + body)
                answer = conn.recv(65536)
            assert answer.startswith(b"HTTP/1.1 401"), answer
            assert b'WWW-Authenticate: Bearer realm="costspan"' in answer
        assert stored(exporter.path) == []
        assert receiver.counts.unauthorized == 4
        assert OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces").export(llm_spans).name == "FAILURE"
        exporter_with_token = OTLPSpanExporter(
            endpoint=receiver.endpoint + "/v1/traces", headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert exporter_with_token.export(llm_spans).name == "SUCCESS"
    assert len(stored(exporter.path)) == 3


def test_costspan_serve_off_loopback_end_to_end_with_the_sdk_header_variable(
    tmp_path: Path, llm_spans: list[ReadableSpan], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`costspan serve --host 0.0.0.0` refuses to start without a token; with --token-file, the SDK's exporter
    configured only by OTEL_EXPORTER_OTLP_HEADERS (as an app under opentelemetry-instrument is) gets in."""
    store = tmp_path / "served.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("COSTSPAN_SERVE_TOKEN", None)
    command = [str(BIN / "costspan"), "serve", "--host", "0.0.0.0", "--port", "0", "--store", str(store)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2 and "give a token (--token-file" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    serve = subprocess.Popen([*command, "--token-file", str(token_file)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert serve.stderr is not None
        banner = serve.stderr.readline()
        assert "receiving OTLP/HTTP on" in banner, banner + serve.stderr.read()
        port = banner.split("/v1/traces", 1)[0].rsplit(":", 1)[1]
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{TOKEN}")
        assert OTLPSpanExporter(endpoint=endpoint).export(llm_spans).name == "SUCCESS"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20not-the-token-at-all")
        assert OTLPSpanExporter(endpoint=endpoint).export(llm_spans).name == "FAILURE"
    finally:
        serve.terminate()
        _, log = serve.communicate(timeout=60)
    assert serve.returncode == 0, log
    assert "3 LLM span(s) stored" in log and "1 unauthorized request(s)" in log
    assert TOKEN not in banner + log
    assert len(stored(store)) == 3


# --- HTTP from broken or hostile clients ----------------------------------------------------------------
def exchange(receiver: OTLPReceiver, raw: bytes, half_close: bool = True) -> bytes:
    host, port = receiver.server.server_address[:2]
    with socket.create_connection((str(host), port), timeout=10) as conn:
        conn.sendall(raw)
        if half_close:
            conn.shutdown(socket.SHUT_WR)  # the client is done sending, early or not
        answer = b""
        while chunk := conn.recv(65536):  # the server closes a connection it cannot trust to frame a next request
            answer += chunk
        return answer


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Length: -5\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 1_0\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Transfer-Encoding: chunked\r\n",  # and then no chunk at all
    ],
)
def test_bad_lengths_are_400_without_a_traceback(
    receiver: OTLPReceiver, headers: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG", logger="costspan")
    answer = exchange(receiver, f"POST /v1/traces HTTP/1.1\r\nHost: x\r\n{headers}\r\nhello".encode())
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert "Traceback" not in capfd.readouterr().err and not any(r.exc_info for r in caplog.records)


def test_a_truncated_body_is_400_even_when_its_start_decodes(
    receiver: OTLPReceiver, llm_spans: list[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> None:
    """Half a protobuf batch can be a valid, smaller batch: only the length tells it was cut."""
    body = encode_spans(llm_spans).SerializeToString()
    caplog.set_level("DEBUG", logger="costspan")
    head = f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    answer = exchange(receiver, head + body[: len(body) // 2])
    assert answer.startswith(b"HTTP/1.1 400") and b"the body ended after" in answer
    assert stored(receiver.exporter.path) == [] and not any(r.exc_info for r in caplog.records)
    chunked = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert exchange(receiver, chunked + b"%x\r\n" % len(body) + body[:50]).startswith(b"HTTP/1.1 400")
    assert stored(receiver.exporter.path) == []


def test_a_client_that_trickles_its_request_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    """The socket timeout bounds each read; a byte sent just before every timeout must not hold a thread."""
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    with OTLPReceiver(exporter, port=0, request_timeout_s=1.0) as receiver:
        host, port = receiver.server.server_address[:2]
        with socket.create_connection((str(host), port), timeout=10) as conn:
            conn.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            started = time.monotonic()
            with pytest.raises(OSError):  # a reset, or a closed pipe
                for _ in range(20):
                    conn.sendall(b"x")
                    time.sleep(0.3)
                    if not conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        raise ConnectionResetError("closed by the server")
            assert time.monotonic() - started < 3


def test_connections_past_the_cap_get_503_and_the_receiver_recovers(
    tmp_path: Path, llm_spans: list[ReadableSpan]
) -> None:
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    with OTLPReceiver(exporter, port=0, max_connections=2) as receiver:
        host, port = receiver.server.server_address[:2]
        idle = [socket.create_connection((str(host), port), timeout=10) for _ in range(2)]
        while receiver.server.slots.acquire(blocking=False):  # until both are accepted and hold a slot
            receiver.server.slots.release()
            time.sleep(0.05)
        with socket.create_connection((str(host), port), timeout=10) as third:
            answer = third.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        assert receiver.server.busy == 1
        for conn in idle:
            conn.close()
        deadline = time.monotonic() + 5
        body = encode_spans(llm_spans).SerializeToString()
        while True:
            try:  # until the idle connections' threads have ended: 503, or a reset of the unread body
                if post(receiver.endpoint + "/v1/traces", body)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert len(stored(exporter.path)) == 3
