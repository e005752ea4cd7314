"""A minimal OTLP/HTTP receiver for tests: decodes requests with the official opentelemetry-proto messages.

It keeps spans, and the latest value of every sum metric point.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from costspan.store.receiver import attribute_values, decode_request

if TYPE_CHECKING:
    from typing import Self


class OtlpReceiver:
    """Collects received spans as dicts: name, span_id (hex), attributes, resource attributes; and sums.

    Trace decoding is ``costspan serve``'s own (the official opentelemetry-proto messages). ``sums`` maps
    (metric name, frozenset of attribute items) to the point's latest value: cumulative sums need no more.
    """

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.sums: dict[tuple[str, frozenset[tuple[str, Any]]], float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/v1/traces":
                    content_type = self.headers.get("content-type", "application/x-protobuf")
                    receiver._ingest(decode_request(body, content_type, self.headers.get("content-encoding", "")))
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver._ingest_metrics(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    reply = b""
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _ingest(self, request: ExportTraceServiceRequest) -> None:
        records = [
            {
                "name": span.name,
                "span_id": span.span_id.hex(),
                "attributes": attribute_values(span.attributes),
                "resource": attribute_values(resource_spans.resource.attributes),
            }
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self.lock:
            self.spans.extend(records)

    def _ingest_metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self.lock:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.WhichOneof("data") != "sum":
                            continue
                        for point in metric.sum.data_points:
                            labels = frozenset(attribute_values(point.attributes).items())
                            value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
                            self.sums[(metric.name, labels)] = value

    def total(self, metric: str, **where: Any) -> float:
        """The sum of a metric's latest points whose attributes include ``where``."""
        with self.lock:
            return sum(
                value
                for (name, labels), value in self.sums.items()
                if name == metric and all((key, wanted) in labels for key, wanted in where.items())
            )

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
