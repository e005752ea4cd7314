"""A minimal OTLP/HTTP trace receiver for tests: decodes requests with the official opentelemetry-proto messages."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from costspan.serve import decode_request, readable_spans

if TYPE_CHECKING:
    from typing_extensions import Self


class OtlpReceiver:
    """Collects received spans as dicts: name, span_id (hex), attributes, resource attributes.

    Decoding is ``costspan serve``'s own (the official opentelemetry-proto messages).
    """

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
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
                "span_id": f"{span.context.span_id:016x}",
                "attributes": dict(span.attributes or {}),
                "resource": dict(span.resource.attributes),
            }
            for span in readable_spans(request).spans
        ]
        with self.lock:
            self.spans.extend(records)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
