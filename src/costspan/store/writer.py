"""One thread that writes ``costspan serve``'s batches into the store, with a bound on the rows waiting for it.

Request handlers decode and price on their own threads, then queue their rows here and wait for the write, so a
client is answered only once its spans are stored (or told to retry). Batches that queue up behind a write are
merged into the next one: one transaction for many requests. When the rows waiting reach ``max_queued_rows``,
``submit`` refuses, and the receiver answers 503 with Retry-After, which OTLP exporters retry: memory stays
bounded however fast clients send, and nothing is dropped that a client was told was stored.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace.export import SpanExportResult

from costspan.store.exporter import CostspanSpanExporter
from costspan.store.schema import CostRow

logger = logging.getLogger(__name__)

MAX_QUEUED_ROWS = 50_000  # ~1 s of ingest, ~50 MB of rows
MAX_WRITE_ROWS = 8_192  # merged into one transaction at most; a larger single batch is written alone


class Pending:
    """A batch queued for the writer; ``wait`` returns whether it was stored."""

    def __init__(self, rows: Sequence[CostRow]) -> None:
        self.rows = rows
        self.stored = False
        self._done = threading.Event()

    def wait(self) -> bool:
        self._done.wait()
        return self.stored

    def finish(self, stored: bool) -> None:
        self.stored = stored
        self._done.set()


# Called after each write with (batches, rows, rows newly stored, whether the write succeeded).
WriteListener = Callable[[int, int, int, bool], None]


class BatchWriter:
    """Writes queued batches through ``exporter.write_rows`` on one thread; see the module docstring."""

    def __init__(
        self,
        exporter: CostspanSpanExporter,
        on_write: WriteListener,
        max_queued_rows: int = MAX_QUEUED_ROWS,
        max_write_rows: int = MAX_WRITE_ROWS,
    ) -> None:
        self.exporter = exporter
        self.max_queued_rows = max_queued_rows
        self.max_write_rows = max_write_rows
        self.queued_rows = 0  # rows accepted and not yet written (those being written included)
        self.peak_queued_rows = 0
        self._on_write = on_write
        self._queue: deque[Pending] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="costspan-serve-writer", daemon=True)
        self._thread.start()

    def full(self) -> bool:
        """Whether a batch arriving now would likely be refused: worth knowing before decoding it."""
        return self.queued_rows >= self.max_queued_rows

    def submit(self, rows: Sequence[CostRow]) -> Pending | None:
        """Queues a batch; None when it does not fit (the client must retry later). A batch larger than the
        bound is taken when nothing else waits, so no batch is refused forever."""
        pending = Pending(rows)
        with self._changed:
            if self._closed:
                return None
            if self.queued_rows and self.queued_rows + len(rows) > self.max_queued_rows:
                return None
            self.queued_rows += len(rows)
            self.peak_queued_rows = max(self.peak_queued_rows, self.queued_rows)
            self._queue.append(pending)
            self._changed.notify()
        return pending

    def close(self) -> None:
        """Writes what is queued, then stops the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _next_write(self) -> list[Pending] | None:
        """The batches for the next transaction, oldest first; None once closed and drained."""
        with self._changed:
            while not self._queue:
                if self._closed:
                    return None
                self._changed.wait()
            batches = [self._queue.popleft()]
            rows = len(batches[0].rows)
            while self._queue and rows + len(self._queue[0].rows) <= self.max_write_rows:
                rows += len(self._queue[0].rows)
                batches.append(self._queue.popleft())
            return batches

    def _run(self) -> None:
        while (batches := self._next_write()) is not None:
            rows = [row for pending in batches for row in pending.rows]
            stored_before = self.exporter.stored_spans  # only this thread writes through the exporter
            try:
                ok = self.exporter.write_rows(rows) is SpanExportResult.SUCCESS
            except Exception:  # write_rows logs and counts its failures; anything else must not kill the thread
                logger.exception("costspan serve: writing %d row(s) failed", len(rows))
                ok = False
            try:
                self._on_write(len(batches), len(rows), self.exporter.stored_spans - stored_before, ok)
            finally:
                with self._changed:
                    self.queued_rows -= len(rows)
                for pending in batches:
                    pending.finish(ok)
