"""``costspan serve`` when clients send faster than the store writes: throttled with 503, nothing lost."""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from costspan.store.exporter import CostspanSpanExporter, row_from_span
from costspan.store.receiver import PROTOBUF, OTLPReceiver
from costspan.store.schema import CostRow
from costspan.store.writer import BatchWriter
from tests.test_serve import copy_with_new_ids, llm_spans, stored

__all__ = ["llm_spans"]  # a fixture, used by name


class GatedExporter(CostspanSpanExporter):
    """Writes only once ``gate`` is set: a store far slower than its clients."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()

    def write_rows(self, rows: Sequence[CostRow]) -> SpanExportResult:
        self.gate.wait(60)
        return super().write_rows(rows)


def send(url: str, body: bytes) -> tuple[int, str | None]:
    """The status and Retry-After of one POST."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": PROTOBUF}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Retry-After")


def batches(template: ReadableSpan, count: int, size: int) -> list[bytes]:
    rng = random.Random(3)
    return [
        encode_spans(
            [copy_with_new_ids(template, rng.getrandbits(128), rng.getrandbits(64)) for _ in range(size)]
        ).SerializeToString()
        for _ in range(count)
    ]


def test_a_flooding_client_is_throttled_and_every_accepted_span_is_stored_once(
    tmp_path: Path, llm_spans: list[ReadableSpan]
) -> None:
    template = next(s for s in llm_spans if row_from_span(s) is not None)
    bodies = batches(template, count=12, size=40)
    exporter = GatedExporter(tmp_path / "spans.sqlite3")
    with OTLPReceiver(exporter, port=0, max_queued_rows=100) as receiver:
        url = receiver.endpoint + "/v1/traces"
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            answers = [pool.submit(send, url, body) for body in bodies]
            # 40 rows being written and 40 queued fit in 100; every other batch is refused at once.
            deadline = time.monotonic() + 30
            while receiver.throttled < len(bodies) - 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert receiver.writer.queued_rows == 80
            exporter.gate.set()
            first = [answer.result() for answer in answers]
        assert sorted(first) == [(200, None)] * 2 + [(503, "1")] * 10
        assert receiver.writer.peak_queued_rows <= 100
        # The client retries what was refused, as the OTLP exporter does after Retry-After.
        retried = [send(url, body) for body, (status, _) in zip(bodies, first, strict=True) if status == 503]
        assert retried == [(200, None)] * 10
    assert len(stored(exporter.path)) == 12 * 40
    assert (receiver.counts.stored, receiver.counts.duplicates, receiver.counts.spans) == (480, 0, 480)
    assert receiver.writer.queued_rows == 0


def test_a_batch_over_the_bound_is_taken_when_nothing_waits(tmp_path: Path, llm_spans: list[ReadableSpan]) -> None:
    row = row_from_span(next(s for s in llm_spans if row_from_span(s) is not None))
    assert row is not None
    exporter = CostspanSpanExporter(tmp_path / "spans.sqlite3")
    writes: list[tuple[int, int, int, bool]] = []
    writer = BatchWriter(exporter, lambda *args: writes.append(args), max_queued_rows=10)
    try:
        pending = writer.submit([row] * 25)  # one span id 25 times: stored once, 24 duplicates
        assert pending is not None and pending.wait()
    finally:
        writer.close()
        exporter.shutdown()
    assert writes == [(1, 25, 1, True)]
