"""``costspan serve``: an OTLP/HTTP receiver that writes the spans it receives into the embedded store.

Apps keep the standard OTLP exporter and the configuration they will later point at a real collector
(``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``). Requests are decoded with the official
``opentelemetry-proto`` messages and read straight into store rows by ``row_columns``, the mapping behind
``CostspanSpanExporter``, so a span received over the wire is stored as one exported in-process is.

Nothing a client says about money is taken on trust: each LLM span is priced again here, from its model and
token counts, by the same ``Pricer.bill`` the instrumentor uses; the cost the span carried is kept only as
``claimed_cost_usd``. Counts and costs that cannot be a real call's (negative, non-finite, past the plausibility
bound) reject the span: it is not stored, and ``partial_success`` says why. With a token, every request must
carry ``Authorization: Bearer <token>``.

Protocol: https://opentelemetry.io/docs/specs/otlp/#otlphttp (binary protobuf and JSON, optional gzip).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
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

from costspan import semconv
from costspan.environment_variables import OTEL_COSTSPAN_PRICING_FILE
from costspan.pricing.overrides import price_layers
from costspan.pricing.pricer import MAX_BATCH_TOKENS, MAX_CALL_TOKENS, Pricer, billable_from_row
from costspan.store.exporter import ROW_ATTRIBUTES, SERVICE_NAME, CostspanSpanExporter, row_columns
from costspan.store.schema import CostRow
from costspan.store.sqlite import LAST_NS
from costspan.store.writer import MAX_QUEUED_ROWS, BatchWriter

logger = logging.getLogger("costspan.store.receiver")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY_BYTES = 32 * 1024 * 1024  # a generous batch; anything larger is refused rather than buffered
# A request (headers and body) must arrive within this; a client trickling bytes cannot hold a thread longer.
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32  # handled at once; more are answered 503 with Retry-After, which OTLP exporters retry
MIN_TOKEN_CHARS = 16
_DRAIN_BYTES = 1024 * 1024  # read (and drop) at most this much of a refused body, so the client sees the answer


class BadRequest(ValueError):
    """The request body cannot be decoded; answered with HTTP 400 (the client must not retry)."""


class Throttled(Exception):
    """Too many rows wait for the store; answered with HTTP 503 and Retry-After, which OTLP clients retry."""


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
        return attribute_values(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


def attribute_values(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP attributes as the SDK holds them (an array is a tuple, a key-value list a dict)."""
    return {pair.key: _value(pair.value) for pair in pairs}


def _check_ids(trace_id: bytes, span_id: bytes) -> None:
    if len(trace_id) != 16 or len(span_id) != 8:
        raise ValueError(f"trace id must be 16 bytes and span id 8 (got {len(trace_id)} and {len(span_id)})")
    if not trace_id.strip(b"\0") or not span_id.strip(b"\0"):
        raise ValueError("all-zero trace or span id")


def _check_times(span: PbSpan) -> None:
    if not span.start_time_unix_nano:
        raise ValueError("no start time")
    if max(span.start_time_unix_nano, span.end_time_unix_nano) > LAST_NS:  # fixed64 goes past the year 2262
        raise ValueError("a time past what the store holds (2**63 - 1 nanoseconds)")


def _has_parent(span: PbSpan) -> bool:
    return bool(span.parent_span_id.strip(b"\0"))  # some exporters write eight zero bytes, not nothing, for a root


# --- what a client may not decide ------------------------------------------------------------------------
_TOKEN_ATTRIBUTES = (
    semconv.GEN_AI_USAGE_INPUT_TOKENS,
    semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
    semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    semconv.COSTSPAN_USAGE_INPUT_AUDIO_TOKENS,
    semconv.COSTSPAN_USAGE_OUTPUT_AUDIO_TOKENS,
    semconv.COSTSPAN_USAGE_INPUT_IMAGE_TOKENS,
    semconv.COSTSPAN_USAGE_OUTPUT_IMAGE_TOKENS,
    semconv.COSTSPAN_USAGE_PREDICTION_ACCEPTED_TOKENS,
    semconv.COSTSPAN_USAGE_PREDICTION_REJECTED_TOKENS,
    semconv.COSTSPAN_USAGE_CACHE_WRITE_1H_TOKENS,
    semconv.COSTSPAN_USAGE_WEB_SEARCH_REQUESTS,
)
_COST_ATTRIBUTES = (
    semconv.GEN_AI_USAGE_COST_AMOUNT,
    semconv.GEN_AI_USAGE_COST_COMPAT,
    semconv.COSTSPAN_COST_INPUT,
    semconv.COSTSPAN_COST_CACHE_READ,
    semconv.COSTSPAN_COST_CACHE_WRITE,
    semconv.COSTSPAN_COST_OUTPUT,
)
# Why a span has no usage is the client's to say (a stream cut short is "incomplete"); any other status is ours.
_STATUSES_WITHOUT_USAGE = frozenset({semconv.STATUS_NO_USAGE, semconv.STATUS_INCOMPLETE})


def _shown(value: Any, width: int = 40) -> str:
    text = repr(value)  # repr: a client's text reaches the log with its newlines escaped
    return text if len(text) <= width else text[: width - 3] + "..."


def implausible_span(attributes: Mapping[str, Any], columns: Mapping[str, Any], end_ns: int) -> str | None:
    """Why a span's numbers cannot be a real call's, so it must not be stored; None when they can. ``columns``
    are the row's (``row_columns``)."""
    limit = MAX_BATCH_TOKENS if columns["batch_id"] is not None else MAX_CALL_TOKENS
    for name in _TOKEN_ATTRIBUTES:
        count = attributes.get(name)
        if count is not None and (type(count) is not int or not 0 <= count <= limit):
            return f"{name} {_shown(count)} is not a token count (a whole number from 0 to {limit:,})"
    for name in _COST_ATTRIBUTES:
        amount = attributes.get(name)
        if amount is None:
            continue
        if not isinstance(amount, int | float) or isinstance(amount, bool) or not math.isfinite(amount) or amount < 0:
            return f"{name} {_shown(amount)} is not an amount (a finite number of 0 or more)"
    if end_ns < columns["start_ns"]:
        return "it ends before it starts"
    return None


def priced_row(pricer: Pricer, columns: dict[str, Any]) -> CostRow:
    """The row of ``columns`` (``row_columns``) with the cost ``pricer`` computes from its usage and model, through
    the same ``billable_from_row`` and ``Pricer.bill`` as ``costspan reprice``; the client's figure moves to
    ``claimed_cost_usd``. Updates ``columns``."""
    cost = pricer.bill(billable_from_row(columns))
    total, cost_input, cache_read, cache_write, output = cost.floats() or (None, None, None, None, None)
    status = cost.status
    if columns["input_tokens"] is None and columns["pricing_status"] in _STATUSES_WITHOUT_USAGE:
        status = columns["pricing_status"]
    columns.update(
        claimed_cost_usd=columns["cost_usd"],
        cost_usd=total,
        cost_input=cost_input,
        cost_cache_read=cache_read,
        cost_cache_write=cache_write,
        cost_output=output,
        pricing_status=status,
        pricing_source=cost.source,
        pricing_version=cost.version,
        pricing_model=cost.model_id,
    )
    return CostRow(**columns)


# Read from the wire straight into row columns: rebuilding SDK ReadableSpans (every attribute, event and link as
# Python objects) cost more than everything else the receiver does, and the store keeps only these attributes.
# The pricing a span claims is replaced by this receiver's (its status is kept only for a call without usage).
_REPRICED = {semconv.COSTSPAN_PRICING_SOURCE, semconv.COSTSPAN_PRICING_VERSION, semconv.COSTSPAN_PRICING_MODEL}
_READ_ATTRIBUTES = (ROW_ATTRIBUTES - _REPRICED) | set(_TOKEN_ATTRIBUTES) | set(_COST_ATTRIBUTES)


def _some_attributes(pairs: Iterable[KeyValue], names: AbstractSet[str]) -> dict[str, Any]:
    kept = {}
    for pair in pairs:
        key = pair.key
        if key in names:
            value = pair.value
            # Most values are a non-empty string or a non-zero int, and a oneof holds one field: either read
            # alone is that value. Spares ~0.2 µs of WhichOneof a value, a fifth of reading it.
            kept[key] = value.string_value or value.int_value or _value(value)
    return kept


@dataclass
class Received:
    rows: list[CostRow]  # the LLM spans to store, priced here
    spans: int  # every span in the request
    ignored: int  # spans that are not LLM calls
    errors: list[str]  # one per span rejected


def received_rows(request: ExportTraceServiceRequest, pricer: Pricer, attribution_keys: Sequence[str]) -> Received:
    """The priced rows of the request's LLM spans; a span that is malformed, or whose numbers cannot be a call's,
    is an error entry instead."""
    names = _READ_ATTRIBUTES.union(attribution_keys)
    received = Received([], 0, 0, [])
    for resource_spans in request.resource_spans:
        resource = _some_attributes(resource_spans.resource.attributes, {SERVICE_NAME})
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.spans += 1
                try:
                    _check_times(span)
                    _check_ids(span.trace_id, span.span_id)
                    parent = span.parent_span_id if _has_parent(span) else None
                    if parent is not None:
                        _check_ids(span.trace_id, parent)
                except ValueError as exc:
                    received.errors.append(f"span {span.name!r}: {exc}")
                    continue
                try:
                    attributes = _some_attributes(span.attributes, names)
                    columns = row_columns(
                        attributes,
                        span_id=span.span_id.hex(),
                        trace_id=span.trace_id.hex(),
                        parent_span_id=parent.hex() if parent is not None else None,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        resource=resource,
                        attribution_keys=attribution_keys,
                    )
                    if columns is None:
                        received.ignored += 1
                        continue
                    problem = implausible_span(attributes, columns, span.end_time_unix_nano)
                    if problem is not None:
                        received.errors.append(f"span {_shown(span.name)}: {problem}")
                        continue
                    received.rows.append(priced_row(pricer, columns))
                except Exception as exc:  # one malformed span must not sink (or endlessly retry) its batch
                    received.errors.append(f"span {_shown(span.name)}: {_shown(exc, 120)}")
    return received


def _disputed(row: CostRow) -> bool:
    """Whether the client claimed a cost other than ours (to the nano-dollar the reports round to)."""
    claimed = row.claimed_cost_usd
    if claimed is None:
        return False
    return row.cost_usd is None or abs(claimed - row.cost_usd) > 1e-9


# --- authentication --------------------------------------------------------------------------------------
class TokenError(ValueError):
    """No usable token where one is required, or a token too weak to be one."""


def checked_token(token: str) -> bytes:
    """A bearer token as ``OTLPReceiver`` compares it. Raises ``TokenError`` unless it is at least
    ``MIN_TOKEN_CHARS`` printable ASCII characters without spaces (so it fits an HTTP header as it is)."""
    if len(token) < MIN_TOKEN_CHARS or not re.fullmatch(r"[\x21-\x7e]+", token):
        raise TokenError(
            f"the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters with no spaces; "
            "make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token.encode("ascii")


def is_loopback(address: str) -> bool:
    """Whether a bound address is reachable only from this machine."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# --- the receiver ---------------------------------------------------------------------------------------
@dataclass
class Counts:
    requests: int = 0
    spans: int = 0  # every span received
    stored: int = 0  # LLM spans newly written
    duplicates: int = 0  # LLM spans the store already had (a retried or repeated delivery)
    ignored: int = 0  # spans that are not LLM calls (HTTP server spans, database spans, ...)
    rejected: int = 0  # spans that could not be decoded or mapped, or whose numbers cannot be a call's
    disputed: int = 0  # LLM spans stored whose claimed cost differs from the one computed here
    failed_batches: int = 0  # batches the store could not write (answered 503)
    unauthorized: int = 0  # requests without the right token (answered 401)

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class OTLPReceiver:
    """A threaded OTLP/HTTP server writing into the store through ``CostspanSpanExporter``.

    Use as a context manager or ``start()``/``stop()``. Answers 200 with ``partial_success`` for spans it had to
    drop, 400 for bodies it cannot decode (the client must not retry), 401 without the token, and 503 when the
    store cannot write, ``max_connections`` are busy or ``max_queued_rows`` wait for the store (503 with
    Retry-After, which the OTLP exporter retries; the store deduplicates on span id, so a retried batch is stored
    once).

    ``token`` is required unless the server binds a loopback address (``TokenError`` otherwise). ``pricer``
    defaults to the packaged prices under ``$OTEL_COSTSPAN_PRICING_FILE``.
    """

    def __init__(
        self,
        exporter: CostspanSpanExporter,
        host: str = "127.0.0.1",
        port: int = 4318,
        *,
        token: str | None = None,
        pricer: Pricer | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_queued_rows: int = MAX_QUEUED_ROWS,
    ) -> None:
        self.exporter = exporter
        self.host = host
        self.token = checked_token(token) if token is not None else None
        self.pricer = pricer or Pricer(price_layers(os.environ.get(OTEL_COSTSPAN_PRICING_FILE)))
        self.counts = Counts()
        self.throttled = 0  # requests answered 503 because max_queued_rows were waiting for the store
        self._lock = threading.Lock()  # guards counts
        handler = type("Handler", (_Handler,), {"receiver": self, "timeout": request_timeout_s})
        self.server = _Server((host, port), handler, max_connections, request_timeout_s)
        if self.token is None and not is_loopback(str(self.server.server_address[0])):
            self.server.server_close()
            raise TokenError(
                f"{host or '0.0.0.0'} is reachable from other machines, and anyone who can reach it could write "
                "spend into the store: give a token (--token-file or $COSTSPAN_SERVE_TOKEN), or bind 127.0.0.1"
            )
        self.writer = BatchWriter(exporter, self._count_write, max_queued_rows)
        self._thread: threading.Thread | None = None
        self._last_throttle_log = -60.0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (compared in constant time)."""
        if self.token is None:
            return True
        scheme, _, presented = (header or "").strip().partition(" ")
        # latin-1: how http.client decoded the header, so every presented byte is compared as it was sent.
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode("latin-1"), self.token)

    def count_unauthorized(self) -> None:
        with self._lock:
            self.counts.unauthorized += 1

    def throttle(self) -> None:
        with self._lock:
            self.throttled += 1
        now = time.monotonic()
        if now - self._last_throttle_log >= 60:  # a flood must not flood the log too
            self._last_throttle_log = now
            logger.warning(
                "costspan serve: %d rows are waiting for the store; answering 503 (retried)", self.writer.queued_rows
            )

    def _count_write(self, batches: int, rows: int, stored: int, ok: bool) -> None:
        with self._lock:
            if ok:
                self.counts.stored += stored
                self.counts.duplicates += rows - stored
            else:
                self.counts.failed_batches += batches

    def export(self, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse | None:
        """Price and store a decoded request; None when the store failed (the caller answers 503). Raises
        ``Throttled`` when too many rows already wait for the store."""
        received = received_rows(request, self.pricer, self.exporter.attribution_keys)
        rows, errors = received.rows, received.errors
        pending = self.writer.submit(rows) if rows else None
        if rows and pending is None:
            raise Throttled
        if pending is not None and not pending.wait():
            return None  # counted once the client's retry is stored
        disputed = sum(map(_disputed, rows))
        with self._lock:
            self.counts.add(
                Counts(
                    requests=1,
                    spans=received.spans,
                    ignored=received.ignored,
                    rejected=len(errors),
                    disputed=disputed,
                )
            )
        logger.info(
            "received %d span(s): %d LLM call(s) stored or already there, %d other span(s) ignored, %d rejected, "
            "%d claiming another cost",
            received.spans,
            len(rows),
            received.ignored,
            len(errors),
            disputed,
        )
        response = ExportTraceServiceResponse()
        if errors:
            more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=len(errors), error_message="; ".join(errors[:5]) + more)
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
        self.close()

    def close(self) -> None:
        """Stops listening, and writes the batches already accepted."""
        self.server.server_close()
        self.writer.close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Server(ThreadingHTTPServer):
    """At most ``max_connections`` handled at once, and none for longer than ``request_timeout_s`` a request."""

    daemon_threads = True
    request_queue_size = 64  # a burst of exporters connecting at once waits in the backlog, not refused

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        request_timeout_s: float,
    ) -> None:
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.request_timeout_s = request_timeout_s
        self.busy = 0  # connections answered 503 for want of a slot; written by the accept thread alone
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        self._closed = threading.Event()
        self._last_busy_log = -60.0
        super().__init__(address, handler)
        threading.Thread(target=self._enforce_deadlines, name="costspan-serve-deadlines", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        # The slot goes back here only if no thread started. Not on KeyboardInterrupt (Ctrl-C, or SIGTERM in
        # `costspan serve`): it can land after the thread started, which then releases the slot itself, and a
        # second release would raise instead of stopping cleanly.
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        self.busy += 1
        now = time.monotonic()
        if now - self._last_busy_log >= 60:  # a flood must not flood the log too
            self._last_busy_log = now
            logger.warning("costspan serve: all %d connections busy; answering 503 (retried)", self.max_connections)
        with contextlib.suppress(OSError):
            request.settimeout(1.0)  # on the accept thread: never wait long on one client
            request.sendall(_BUSY)
        self.shutdown_request(request)

    def watch(self, connection: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines[connection] = time.monotonic() + self.request_timeout_s

    def unwatch(self, connection: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(connection, None)

    def _enforce_deadlines(self) -> None:
        """Shuts the connections past their deadline: their blocked read returns, and their thread ends. The socket
        timeout alone bounds each read, not a client that sends one byte just before every timeout."""
        while not self._closed.wait(min(0.25, self.request_timeout_s / 4)):
            now = time.monotonic()
            with self._deadlines_lock:
                late = [connection for connection, deadline in self._deadlines.items() if deadline <= now]
                for connection in late:
                    del self._deadlines[connection]
            for connection in late:
                with contextlib.suppress(OSError):  # already closed
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client hung up or was cut off: its business, not a fault here
            logger.debug("costspan serve: connection from %s ended: %r", client_address[0], error)
        else:
            logger.exception("costspan serve: handling a request from %s failed", client_address[0])

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()


_EMPTY_RESPONSES: Mapping[str, type[Message]] = {
    "/v1/metrics": ExportMetricsServiceResponse,  # accepted so an app exporting metrics too sees no errors
    "/v1/logs": ExportLogsServiceResponse,
}
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


class _Handler(BaseHTTPRequestHandler):
    receiver: OTLPReceiver
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "costspan-serve"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def handle_one_request(self) -> None:
        self.server.watch(self.connection)
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch(self.connection)

    def _reply(self, status: int, message: Message, content_type: str, headers: Mapping[str, str] = {}) -> None:
        if content_type == JSON:
            data = json_format.MessageToJson(message, indent=None).encode()
        else:
            data = message.SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, content_type: str, headers: Mapping[str, str] = {}) -> None:
        logger.warning("costspan serve: %s %s -> %d: %s", self.command, self.path[:80], status, message)
        self._reply(status, RpcStatus(code=status, message=message), content_type, headers)

    def _content_length(self) -> int:
        values = {value.strip() for value in self.headers.get_all("Content-Length") or ()}
        if not values:
            return 0
        # Only digits: int() would also take "-5", "+5" and "1_0", and two lengths are a request-smuggling tell.
        if len(values) > 1 or not all(value.isascii() and value.isdigit() for value in values):
            raise BadRequest(f"Content-Length {_shown(', '.join(sorted(values)))} is not one byte count")
        return int(values.pop())

    def _read(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) != size:
            raise BadRequest(f"the body ended after {len(data)} of {size} bytes")
        return data

    def _body(self) -> bytes:
        """The request body, framed by Content-Length or chunked transfer encoding. Raises ``BadRequest``."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            received = 0
            while True:
                size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_line):
                    raise BadRequest(f"malformed chunked body: chunk size {_shown(size_line)}")
                size = int(size_line, 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                received += size
                if received > MAX_BODY_BYTES:
                    raise TooLarge(f"body exceeds the {MAX_BODY_BYTES}-byte limit")
                chunks.append(self._read(size))
                if self.rfile.readline(1024) != b"\r\n":
                    raise BadRequest("malformed chunked body: a chunk is longer than its size says")
        length = self._content_length()
        if length > MAX_BODY_BYTES:
            raise TooLarge(f"body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
        return self._read(length)

    def _throttle(self, reply_type: str) -> None:
        """503 with Retry-After: the OTLP/HTTP answer to a client sending faster than the store writes
        (https://opentelemetry.io/docs/specs/otlp/#otlphttp-throttling). 503 rather than 429: older
        opentelemetry-python exporters dropped a batch answered 429 (open-telemetry/opentelemetry-python#5460)."""
        self.receiver.throttle()
        self._reply(
            503,
            RpcStatus(code=503, message="the store is behind; retry after the Retry-After seconds"),
            reply_type,
            {"Retry-After": "1"},
        )

    def _refuse_unauthorized(self, reply_type: str) -> None:
        self.close_connection = True
        try:  # a small body is read first, so the client is not cut off (reset) before it reads the 401
            length = self._content_length()
            if length <= _DRAIN_BYTES and "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
                self.rfile.read(length)
        except BadRequest:
            pass
        self.receiver.count_unauthorized()
        self._error(401, "missing or wrong bearer token", reply_type, {"WWW-Authenticate": 'Bearer realm="costspan"'})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        content_type = (self.headers.get("Content-Type") or PROTOBUF).split(";", 1)[0].strip().lower()
        reply_type = content_type if content_type in (PROTOBUF, JSON) else PROTOBUF
        if not self.receiver.authorized(self.headers.get("Authorization")):
            self._refuse_unauthorized(reply_type)
            return
        try:
            body = self._body()
        except BadRequest as exc:
            self.close_connection = True  # the rest of the stream cannot be trusted to frame the next request
            self._error(413 if isinstance(exc, TooLarge) else 400, str(exc), reply_type)
            return
        finally:
            self.server.unwatch(self.connection)  # read in time; storing it may take the store's own timeout
        if path in _EMPTY_RESPONSES:
            self._reply(200, _EMPTY_RESPONSES[path](), reply_type)
            return
        if path != "/v1/traces":
            self._error(404, f"unknown path {_shown(path, 80)}; send traces to /v1/traces", reply_type)
            return
        if content_type not in (PROTOBUF, JSON):
            self._error(415, f"content-type {_shown(content_type)} is not {PROTOBUF} or {JSON}", reply_type)
            return
        if self.receiver.writer.full():  # refused before decoding: a flood costs little more than reading it
            self._throttle(reply_type)
            return
        try:
            request = decode_request(body, content_type, self.headers.get("Content-Encoding") or "")
        except BadRequest as exc:
            self._error(413 if isinstance(exc, TooLarge) else 400, str(exc), reply_type)
            return
        try:
            response = self.receiver.export(request)
        except Throttled:
            self._throttle(reply_type)
            return
        except Exception:  # an exporter bug must not kill the receiver; the client retries
            logger.exception("costspan serve: exporting a batch failed")
            response = None
        if response is None:
            self._error(503, "the store could not write this batch; retry later", reply_type)
            return
        self._reply(200, response, reply_type)
