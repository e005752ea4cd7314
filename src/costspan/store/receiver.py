"""``costspan serve``: an OTLP/HTTP receiver that writes the spans it receives into the embedded store.

Apps keep the standard OTLP exporter and the configuration they will later point at a real collector
(``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``). Requests are decoded with the official
``opentelemetry-proto`` messages, turned back into SDK ``ReadableSpan`` objects and handed to a ``SpanExporter``
(``CostspanSpanExporter``), so a span received over the wire is stored by exactly the code that stores one
exported in-process.

Protocol: https://opentelemetry.io/docs/specs/otlp/#otlphttp (binary protobuf and JSON, optional gzip).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from costspan.store.exporter import CostspanSpanExporter, row_from_span
from costspan.store.sqlite import LAST_NS

logger = logging.getLogger("costspan.store.receiver")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY_BYTES = 32 * 1024 * 1024  # a generous batch; anything larger is refused rather than buffered

_KINDS = {
    PbSpan.SPAN_KIND_INTERNAL: SpanKind.INTERNAL,
    PbSpan.SPAN_KIND_SERVER: SpanKind.SERVER,
    PbSpan.SPAN_KIND_CLIENT: SpanKind.CLIENT,
    PbSpan.SPAN_KIND_PRODUCER: SpanKind.PRODUCER,
    PbSpan.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
}
_STATUS_CODES = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}
_REMOTE_PARENT = 0x300  # SpanFlags: "is remote" is known (0x100) and true (0x200)


class BadRequest(ValueError):
    """The request body cannot be decoded; answered with HTTP 400 (the client must not retry)."""


class TooLarge(BadRequest):
    """The request body is over ``MAX_BODY_BYTES``; answered with HTTP 413."""


# --- decoding -------------------------------------------------------------------------------------------
def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex, where the protobuf JSON mapping expects base64."""
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id") and value:
            try:
                value = base64.b64encode(bytes.fromhex(value)).decode()
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"{key} {value!r} is not a hex id") from exc
        converted[key] = _hex_ids_to_base64(value)
    return converted


def _gunzip(body: bytes) -> bytes:
    """A gzip body (of one or more members), inflated to at most MAX_BODY_BYTES: a small body may inflate a
    thousandfold, and must not take the receiver's memory with it. Raises ``TooLarge`` or ``BadRequest``."""
    parts: list[bytes] = []
    size = 0
    while body:
        inflater = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer
        try:
            part = inflater.decompress(body, MAX_BODY_BYTES + 1 - size)
        except zlib.error as exc:
            raise BadRequest(f"body is not valid gzip: {exc}") from exc
        size += len(part)
        if size > MAX_BODY_BYTES or inflater.unconsumed_tail:
            raise TooLarge(f"body inflates to more than the {MAX_BODY_BYTES}-byte limit")
        if not inflater.eof:
            raise BadRequest("body is not valid gzip: it ends before its last member does")
        parts.append(part)
        body = inflater.unused_data
    return b"".join(parts)


def decode_request(body: bytes, content_type: str, content_encoding: str = "") -> ExportTraceServiceRequest:
    """The ``ExportTraceServiceRequest`` in an OTLP/HTTP body. Raises ``BadRequest``."""
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        body = _gunzip(body)
    elif encoding not in ("", "identity"):
        raise BadRequest(f"unsupported content-encoding {content_encoding!r}; use gzip or none")
    request = ExportTraceServiceRequest()
    try:
        if content_type == JSON:
            document = json.loads(body or b"{}")
            if not isinstance(document, dict):
                raise ValueError("the top level must be an object")
            json_format.ParseDict(_hex_ids_to_base64(document), request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except (DecodeError, json_format.ParseError, ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not a valid OTLP {content_type} ExportTraceServiceRequest: {exc}") from exc
    return request


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _span_context(trace_id: bytes, span_id: bytes, flags: int, is_remote: bool = False) -> SpanContext:
    if len(trace_id) != 16 or len(span_id) != 8:
        raise ValueError(f"trace id must be 16 bytes and span id 8 (got {len(trace_id)} and {len(span_id)})")
    context = SpanContext(
        trace_id=int.from_bytes(trace_id, "big"),
        span_id=int.from_bytes(span_id, "big"),
        is_remote=is_remote,
        # Only sampled spans are exported, and SDKs often leave the low byte (the W3C trace flags) unset.
        trace_flags=TraceFlags((flags & 0xFF) or TraceFlags.SAMPLED),
    )
    if not context.is_valid:
        raise ValueError("all-zero trace or span id")
    return context


def _readable_span(span: PbSpan, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    if not span.start_time_unix_nano:
        raise ValueError("no start time")
    if max(span.start_time_unix_nano, span.end_time_unix_nano) > LAST_NS:  # fixed64 goes past the year 2262
        raise ValueError("a time past what the store holds (2**63 - 1 nanoseconds)")
    parent = None
    if span.parent_span_id.strip(b"\0"):  # some exporters write eight zero bytes, not nothing, for a root span
        remote = span.flags & _REMOTE_PARENT == _REMOTE_PARENT
        parent = _span_context(span.trace_id, span.parent_span_id, span.flags, is_remote=remote)
    return ReadableSpan(
        name=span.name,
        context=_span_context(span.trace_id, span.span_id, span.flags),
        parent=parent,
        resource=resource,
        attributes=_attributes(span.attributes),
        events=[Event(e.name, _attributes(e.attributes), e.time_unix_nano) for e in span.events],
        links=_links(span.links),
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        status=Status(_STATUS_CODES.get(span.status.code, StatusCode.UNSET), span.status.message or None),
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=scope,
    )


def _links(links: Iterable[PbSpan.Link]) -> list[Link]:
    """The span's links that name a span; a malformed one is left out rather than losing the span (the store
    keeps no links)."""
    kept = []
    for link in links:
        try:
            kept.append(Link(_span_context(link.trace_id, link.span_id, link.flags), _attributes(link.attributes)))
        except ValueError:
            continue
    return kept


@dataclass
class Decoded:
    spans: list[ReadableSpan]
    errors: list[str]  # one per span that could not be decoded


def readable_spans(request: ExportTraceServiceRequest) -> Decoded:
    """SDK spans for every span in the request; a span with malformed ids or no start time is an error entry."""
    spans: list[ReadableSpan] = []
    errors: list[str] = []
    for resource_spans in request.resource_spans:
        resource = Resource(_attributes(resource_spans.resource.attributes), resource_spans.schema_url or None)
        for scope_spans in resource_spans.scope_spans:
            pb_scope = scope_spans.scope
            scope = InstrumentationScope(
                pb_scope.name,
                pb_scope.version or None,
                scope_spans.schema_url or None,
                _attributes(pb_scope.attributes),
            )
            for span in scope_spans.spans:
                try:
                    spans.append(_readable_span(span, resource, scope))
                except ValueError as exc:
                    errors.append(f"span {span.name!r}: {exc}")
    return Decoded(spans, errors)


# --- the receiver ---------------------------------------------------------------------------------------
@dataclass
class Counts:
    requests: int = 0
    spans: int = 0  # every span received
    stored: int = 0  # LLM spans newly written
    duplicates: int = 0  # LLM spans the store already had (a retried or repeated delivery)
    ignored: int = 0  # spans that are not LLM calls (HTTP server spans, database spans, ...)
    rejected: int = 0  # spans that could not be decoded or mapped
    failed_batches: int = 0  # batches the store could not write (answered 503)

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class OTLPReceiver:
    """A threaded OTLP/HTTP server writing into the store through ``CostspanSpanExporter``.

    Use as a context manager or ``start()``/``stop()``. Answers 200 with ``partial_success`` for spans it had to
    drop, 400 for bodies it cannot decode (the client must not retry), and 503 when the store cannot write (the
    OTLP exporter retries; the store deduplicates on span id, so a retried batch is stored once).
    """

    def __init__(self, exporter: CostspanSpanExporter, host: str = "127.0.0.1", port: int = 4318) -> None:
        self.exporter = exporter
        self.host = host
        self.counts = Counts()
        self._lock = threading.Lock()  # one batch at a time, so the counts per batch are exact
        handler = type("Handler", (_Handler,), {"receiver": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def export(self, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse | None:
        """Store a decoded request; None when the store failed (the caller answers 503)."""
        decoded = readable_spans(request)
        errors = list(decoded.errors)
        llm_spans: list[ReadableSpan] = []
        for span in decoded.spans:
            try:
                if row_from_span(span) is not None:
                    llm_spans.append(span)
            except Exception as exc:  # one malformed span must not sink (or endlessly retry) its batch
                errors.append(f"span {span.name!r}: {exc!r}")
        with self._lock:
            before = self.exporter.stored_spans
            result = self.exporter.export(llm_spans) if llm_spans else SpanExportResult.SUCCESS
            if result is not SpanExportResult.SUCCESS:
                self.counts.failed_batches += 1
                return None
            stored = self.exporter.stored_spans - before
            batch = Counts(
                requests=1,
                spans=len(decoded.spans) + len(decoded.errors),
                stored=stored,
                duplicates=len(llm_spans) - stored,
                ignored=len(decoded.spans) - len(llm_spans) - (len(errors) - len(decoded.errors)),
                rejected=len(errors),
            )
            self.counts.add(batch)
        logger.info(
            "received %d span(s): %d LLM call(s) stored, %d duplicate(s), %d other span(s) ignored, %d rejected",
            batch.spans,
            batch.stored,
            batch.duplicates,
            batch.ignored,
            batch.rejected,
        )
        response = ExportTraceServiceResponse()
        if errors:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=len(errors), error_message="; ".join(errors[:5]))
            )
        return response

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> OTLPReceiver:
        self._thread = threading.Thread(target=self.server.serve_forever, name="costspan-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_EMPTY_RESPONSES: Mapping[str, type[Message]] = {
    "/v1/metrics": ExportMetricsServiceResponse,  # accepted so an app exporting metrics too sees no errors
    "/v1/logs": ExportLogsServiceResponse,
}


class _Handler(BaseHTTPRequestHandler):
    timeout = 60  # seconds a client may stall mid-request before its connection (and thread) is let go
    receiver: OTLPReceiver
    protocol_version = "HTTP/1.1"
    server_version = "costspan-serve"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def _reply(self, status: int, message: Message, content_type: str) -> None:
        if content_type == JSON:
            data = json_format.MessageToJson(message, indent=None).encode()
        else:
            data = message.SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, content_type: str) -> None:
        logger.warning("costspan serve: %s %s -> %d: %s", self.command, self.path, status, message)
        self._reply(status, RpcStatus(code=status, message=message), content_type)

    def _body(self) -> bytes:
        """The request body, framed by Content-Length or chunked transfer encoding. Raises ``BadRequest``."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            received = 0
            while True:
                try:
                    size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("malformed chunked body") from None
                if size < 0:
                    raise BadRequest("malformed chunked body: a negative chunk size")
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                received += size
                if received > MAX_BODY_BYTES:
                    raise TooLarge(f"body exceeds the {MAX_BODY_BYTES}-byte limit")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)  # the CRLF after each chunk
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise TooLarge(f"body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
        return self.rfile.read(length) if length > 0 else b""

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        content_type = (self.headers.get("Content-Type") or PROTOBUF).split(";", 1)[0].strip().lower()
        reply_type = content_type if content_type in (PROTOBUF, JSON) else PROTOBUF
        try:
            body = self._body()
        except BadRequest as exc:
            self.close_connection = True  # the rest of the stream cannot be trusted to frame the next request
            self._error(413 if isinstance(exc, TooLarge) else 400, str(exc), reply_type)
            return
        if path in _EMPTY_RESPONSES:
            self._reply(200, _EMPTY_RESPONSES[path](), reply_type)
            return
        if path != "/v1/traces":
            self._error(404, f"unknown path {path}; send traces to /v1/traces", reply_type)
            return
        if content_type not in (PROTOBUF, JSON):
            self._error(415, f"content-type {content_type!r} is not {PROTOBUF} or {JSON}", reply_type)
            return
        try:
            request = decode_request(body, content_type, self.headers.get("Content-Encoding") or "")
        except BadRequest as exc:
            self._error(413 if isinstance(exc, TooLarge) else 400, str(exc), reply_type)
            return
        try:
            response = self.receiver.export(request)
        except Exception:  # an exporter bug must not kill the receiver; the client retries
            logger.exception("costspan serve: exporting a batch failed")
            response = None
        if response is None:
            self._error(503, "the store could not write this batch; retry later", reply_type)
            return
        self._reply(200, response, reply_type)
