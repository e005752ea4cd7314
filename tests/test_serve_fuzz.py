"""A bounded, seeded fuzz of ``costspan serve``: malformed, truncated and forged OTLP among honest batches.

Whatever arrives, the store's spend must equal what the honest spans cost (priced by the instrumentor, at call
time), stay finite, and the receiver must keep answering.
"""

from __future__ import annotations

import gzip
import http.client
import math
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

from costspan import semconv
from costspan.pricing.pricer import MAX_CALL_TOKENS
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.receiver import OTLPReceiver
from costspan.store.sqlite import Store
from tests.test_serve import llm_spans
from tests.test_serve_security import TOKEN, chat, forged

__all__ = ["llm_spans"]  # a fixture, used by name

CASES = 300
SEED = 20261207
TIME_LIMIT_S = 90.0

_FORGERIES: list[dict[str, Any]] = [
    {semconv.GEN_AI_USAGE_COST_AMOUNT: math.inf},
    {semconv.GEN_AI_USAGE_COST_AMOUNT: -math.inf},
    {semconv.GEN_AI_USAGE_COST_AMOUNT: math.nan},
    {semconv.GEN_AI_USAGE_COST_AMOUNT: -500.0},
    {semconv.COSTSPAN_COST_INPUT: -1e-9},
    {semconv.GEN_AI_USAGE_COST_COMPAT: math.inf},
    {semconv.GEN_AI_USAGE_INPUT_TOKENS: -1},
    {semconv.GEN_AI_USAGE_OUTPUT_TOKENS: -(2**63)},
    {semconv.GEN_AI_USAGE_INPUT_TOKENS: 2**63 - 1},
    {semconv.GEN_AI_USAGE_OUTPUT_TOKENS: MAX_CALL_TOKENS + 1},
    {semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: -7},
    {semconv.GEN_AI_USAGE_INPUT_TOKENS: 1e9},
    {semconv.GEN_AI_USAGE_INPUT_TOKENS: "100"},
]


class Client:
    """Raw HTTP to the receiver: well-formed requests through http.client, broken ones over a bare socket."""

    def __init__(self, receiver: OTLPReceiver) -> None:
        host, port = receiver.server.server_address[:2]
        self.address = (str(host), int(port))

    def post(self, body: bytes, token: str | None = TOKEN, encoding: str | None = None) -> int:
        headers = {"Content-Type": "application/x-protobuf"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if encoding:
            headers["Content-Encoding"] = encoding
        conn = http.client.HTTPConnection(*self.address, timeout=10)
        try:
            conn.request("POST", "/v1/traces", body, headers)
            return conn.getresponse().status
        finally:
            conn.close()

    def raw(self, data: bytes) -> bytes:
        with socket.create_connection(self.address, timeout=10) as conn:
            try:
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)  # the client stops here, whatever its headers promised
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
                return answer
            except ConnectionResetError:
                return b""


def mutate(rng: random.Random, body: bytes) -> bytes:
    """One edit: a flipped bit, a replaced, deleted or inserted byte, or a cut."""
    position = rng.randrange(len(body))
    edit = rng.randrange(5)
    if edit == 0:
        return body[:position] + bytes([body[position] ^ (1 << rng.randrange(8))]) + body[position + 1 :]
    if edit == 1:
        return body[:position] + bytes([rng.randrange(256)]) + body[position + 1 :]
    if edit == 2:
        return body[:position] + body[position + 1 :]
    if edit == 3:
        return body[:position] + bytes([rng.randrange(256)]) + body[position:]
    return body[:position]


def test_fuzzed_otlp_never_moves_spend_off_the_honest_spans(tmp_path: Path, llm_spans: list[ReadableSpan]) -> None:
    rng = random.Random(SEED)
    template = chat(llm_spans)
    honest_cost = (template.attributes or {})[semconv.GEN_AI_USAGE_COST_AMOUNT]  # the instrumentor's own figure
    assert isinstance(honest_cost, float) and honest_cost > 0
    # Byte edits land on spans of a model no price list has: whatever one edit makes of them, none is priced.
    unknown = {semconv.GEN_AI_REQUEST_MODEL: "zz-fuzz-model", semconv.GEN_AI_RESPONSE_MODEL: "zz-fuzz-model"}
    exporter = CostspanSpanExporter(tmp_path / "store.sqlite3")
    honest_ids: set[int] = set()
    sent: list[bytes] = []
    statuses: dict[str, set[int]] = {}
    started = time.monotonic()
    with OTLPReceiver(exporter, port=0, token=TOKEN, request_timeout_s=2.0) as receiver:
        client = Client(receiver)

        def honest(count: int, **claim: Any) -> list[ReadableSpan]:
            spans = [forged(template, **claim) for _ in range(count)]
            honest_ids.update(span.context.span_id for span in spans)
            return spans

        def case_honest() -> int:
            sent.append(encode_spans(honest(rng.randint(1, 4))).SerializeToString())
            return client.post(sent[-1], encoding=None)

        def case_redelivered() -> int:
            return client.post(rng.choice(sent)) if sent else 200

        def case_false_claim() -> int:
            claim = {semconv.GEN_AI_USAGE_COST_AMOUNT: rng.choice([0.0, 1e-12, 999.0, 1e300])}
            return client.post(encode_spans(honest(1, **claim)).SerializeToString())

        def case_forged_numbers() -> int:
            spans = [forged(template, **rng.choice(_FORGERIES)) for _ in range(rng.randint(1, 3))]
            return client.post(gzip.compress(encode_spans(spans).SerializeToString()), encoding="gzip")

        def case_mutated() -> int:
            spans = [forged(template, **unknown) for _ in range(rng.randint(1, 3))]
            return client.post(mutate(rng, encode_spans(spans).SerializeToString()))

        def case_wrong_token() -> int:
            body = encode_spans([forged(template) for _ in range(2)]).SerializeToString()
            return client.post(body, token=rng.choice([None, "x" * 16, TOKEN[:-1], TOKEN + "x", TOKEN.upper()]))

        def case_broken_http() -> int:
            body = encode_spans([forged(template)]).SerializeToString()
            auth = f"Authorization: Bearer {TOKEN}\r\n"
            head = f"POST /v1/traces HTTP/1.1\r\nHost: x\r\n{auth}"
            broken = rng.choice(
                [
                    f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[: rng.randrange(len(body))],
                    f"{head}Content-Length: -{len(body)}\r\n\r\n".encode() + body,
                    f"{head}Content-Length: {len(body)}x\r\n\r\n".encode() + body,
                    f"{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode() + body,
                    f"{head}Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode() + body[:10],
                    f"{head}Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body,
                    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(rng.randrange(256) for _ in range(64)),
                    bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
                ]
            )
            answer = client.raw(broken)
            return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0

        cases: list[Callable[[], int]] = [
            case_honest,
            case_redelivered,
            case_false_claim,
            case_forged_numbers,
            case_mutated,
            case_wrong_token,
            case_broken_http,
        ]
        for _ in range(CASES):
            case = rng.choice(cases)
            statuses.setdefault(case.__name__, set()).add(case())
            assert time.monotonic() - started < TIME_LIMIT_S
        assert client.post(encode_spans(honest(1)).SerializeToString()) == 200  # still serving
        counts = receiver.counts

    assert statuses["case_honest"] == statuses["case_redelivered"] == statuses["case_false_claim"] == {200}
    assert statuses["case_wrong_token"] == {401}
    assert statuses["case_forged_numbers"] == {200}  # accepted as a batch, every span rejected in partial_success
    assert statuses["case_broken_http"] <= {0, 400}
    assert statuses["case_mutated"] <= {200, 400}
    assert counts.rejected > 0 and counts.unauthorized > 0 and counts.duplicates > 0

    with Store(exporter.path) as store:
        totals = store.totals()
        priced = [dict(r) for r in store.query("SELECT span_id, cost_usd FROM spans WHERE cost_usd IS NOT NULL")]
        stored_ids = {int(r["span_id"], 16) for r in store.query("SELECT span_id FROM spans")}
    assert honest_ids <= stored_ids
    assert {int(r["span_id"], 16) for r in priced} == honest_ids  # only the honest spans are spend
    assert all(r["cost_usd"] == honest_cost for r in priced)
    assert math.isfinite(totals["spend_usd"])
    assert totals["spend_usd"] == round(len(honest_ids) * honest_cost, 9)
    assert totals["unpriced"] == len(stored_ids - honest_ids)
