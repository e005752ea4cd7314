"""A span exporter that writes costspan's LLM spans into the embedded store.

Registered as the ``costspan`` traces exporter, so ``opentelemetry-instrument --traces_exporter
costspan,otlp_proto_http python app.py`` writes locally and to a collector at once. It keeps only LLM spans
(those carrying ``gen_ai.operation.name``) and never raises into the application: a batch that cannot be
written (locked file, full disk, read-only filesystem) is counted in ``failed_spans`` and logged at WARNING at most
once a minute. A store deleted, replaced or damaged under it is detected and left for a new one (see
``CostspanSpanExporter``); nothing is written over.

The OpenTelemetry configurator creates it with no arguments, so it takes the attribution keys in force from
``OTEL_COSTSPAN_ATTRIBUTION_KEYS`` (``costspan.config.attribution_keys_in_force``): keys given only to
``instrument(attribution_keys=...)`` must be set there too, or passed as ``attribution_keys``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from costspan import semconv
from costspan.config import attribution_keys_in_force
from costspan.store.compaction import start_compaction
from costspan.store.errors import FileIdentity, StoreDamaged, StoreError, file_identity
from costspan.store.paths import default_store_path
from costspan.store.schema import CostRow
from costspan.store.segments import LANDING_COMPACT_AT, segment_dir
from costspan.store.sqlite import ATTRIBUTION_COLUMNS, Store, attribution_json

logger = logging.getLogger(__name__)

SERVICE_NAME = "service.name"  # resource attribute

# SQLite's lock bytes (os_unix.c, https://www.sqlite.org/lockingv3.html): every connection to a WAL-mode file holds
# a read lock on the shared range for as long as it is open, which is how its last connection knows it is last.
PENDING_BYTE: Final = 0x40000000
SHARED_FIRST: Final = PENDING_BYTE + 2
SHARED_SIZE: Final = 510


@dataclass
class OpenedFiles:
    """The files an open store reads and writes, as they were when it opened, and the spans stored there since."""

    store: FileIdentity | None
    wal: FileIdentity | None
    stored_spans: int = 0


def _wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def set_aside(path: Path) -> Path:
    """Rename the damaged store at ``path`` to ``<name>.damaged-<UTC time>``, never over an existing file, with the
    ``-wal`` a killed writer may have left (it holds committed rows); returns the new name.

    Only while no process has the file open, checked by taking SQLite's exclusive lock: renamed under a process
    still using it, the file would keep being written by name-less connections whose ``-wal`` and ``-shm``,
    named for the path, the new store there would share. Another connection in this same process is not seen
    (POSIX locks are per process). Raises ``StoreError`` when the file is in use.
    """
    import fcntl  # POSIX only: elsewhere the import fails, and the batch is counted failed and logged

    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, SHARED_SIZE, SHARED_FIRST, os.SEEK_SET)
        except OSError:
            raise StoreError(
                f"costspan store {path} is damaged and another process still has it open. Stop the processes "
                f"writing to it (`fuser {path}` lists them); costspan then moves it aside and starts a new store."
            ) from None
        damaged = path.with_name(f"{path.name}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}")
        os.link(path, damaged)  # unlike a rename, never replaces an existing file
        # The -wal and -shm go before the file: a new store at the path must never find them.
        if _wal(path).exists():
            os.rename(_wal(path), _wal(damaged))
        Path(f"{path}-shm").unlink(missing_ok=True)  # only an index of the -wal, rebuilt from it
        if segment_dir(path).exists():  # its compacted rows: found by the file's name, so they move with it
            os.rename(segment_dir(path), segment_dir(damaged))
        os.unlink(path)
        return damaged
    finally:
        os.close(fd)


def _text(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    return str(value) if value is not None and value != "" else None


def _int(attributes: Mapping[str, Any], name: str) -> int | None:
    value = attributes.get(name)  # a Python int may exceed what a store column (and OTLP) holds: not a count
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


def _float(attributes: Mapping[str, Any], name: str) -> float | None:
    value = attributes.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# Every span attribute ``row_columns`` reads besides the attribution keys, so a receiver can skip the rest.
ROW_ATTRIBUTES = frozenset(
    {
        semconv.GEN_AI_OPERATION_NAME,
        *ATTRIBUTION_COLUMNS,
        semconv.GEN_AI_PROVIDER_NAME,
        semconv.GEN_AI_REQUEST_MODEL,
        semconv.GEN_AI_RESPONSE_MODEL,
        semconv.GEN_AI_USAGE_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
        semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
        semconv.COSTSPAN_USAGE_INPUT_AUDIO_TOKENS,
        semconv.COSTSPAN_USAGE_OUTPUT_AUDIO_TOKENS,
        semconv.COSTSPAN_USAGE_INPUT_IMAGE_TOKENS,
        semconv.COSTSPAN_USAGE_OUTPUT_IMAGE_TOKENS,
        semconv.COSTSPAN_USAGE_CACHE_WRITE_1H_TOKENS,
        semconv.COSTSPAN_USAGE_WEB_SEARCH_REQUESTS,
        semconv.GEN_AI_USAGE_COST_AMOUNT,
        semconv.COSTSPAN_COST_INPUT,
        semconv.COSTSPAN_COST_CACHE_READ,
        semconv.COSTSPAN_COST_CACHE_WRITE,
        semconv.COSTSPAN_COST_OUTPUT,
        semconv.COSTSPAN_PRICING_STATUS,
        semconv.COSTSPAN_PRICING_SOURCE,
        semconv.COSTSPAN_PRICING_VERSION,
        semconv.COSTSPAN_PRICING_MODEL,
        semconv.ERROR_TYPE,
        semconv.COSTSPAN_REQUEST_ID,
        semconv.COSTSPAN_PROMPT_CACHE_KEY,
        *semconv.SERVICE_TIER_ATTRIBUTES,
        semconv.COSTSPAN_BATCH_ID,
    }
)


def row_from_span(span: ReadableSpan, attribution_keys: Sequence[str] = ()) -> CostRow | None:
    """The store row for one span; None for spans that are not LLM calls (or have no ids or start time).
    ``attribution_keys`` beyond the typed columns go to the row's ``attribution`` JSON."""
    context = span.context
    if context is None or span.start_time is None:
        return None
    columns = row_columns(
        # A plain dict: the SDK's attributes are a read-only view whose every lookup runs in Python, and a row
        # takes some 40 of them.
        dict(span.attributes or {}),
        span_id=f"{context.span_id:016x}",
        trace_id=f"{context.trace_id:032x}",
        parent_span_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
        start_ns=span.start_time,
        end_ns=span.end_time,
        resource=span.resource.attributes if span.resource is not None else {},
        attribution_keys=attribution_keys,
    )
    return CostRow(**columns) if columns is not None else None


def row_columns(
    attributes: Mapping[str, Any],
    *,
    span_id: str,
    trace_id: str,
    parent_span_id: str | None,
    start_ns: int,
    end_ns: int | None,
    resource: Mapping[str, Any],
    attribution_keys: Sequence[str],
) -> dict[str, Any] | None:
    """A ``CostRow``'s fields for one span, by name; None unless the span is an LLM call. A dict rather than the
    row, so ``costspan serve`` can price it and build the row once (``dataclasses.replace`` costs ~20 µs a row).
    Reads only ``ROW_ATTRIBUTES`` and ``attribution_keys`` of the span, and ``SERVICE_NAME`` of its resource."""
    operation = _text(attributes, semconv.GEN_AI_OPERATION_NAME)
    if operation is None:
        return None
    has_usage = semconv.GEN_AI_USAGE_INPUT_TOKENS in attributes

    def tokens(name: str) -> int | None:
        # Breakdown counts are zero, not unknown, whenever the call reported usage at all.
        return (_int(attributes, name) or 0) if has_usage else None

    carried = {}
    for key in attribution_keys:
        value = _text(attributes, key)
        if value is not None:
            carried[key] = value

    return {
        "span_id": span_id,
        "trace_id": trace_id,
        "parent_span_id": parent_span_id,
        "start_ns": start_ns,
        "feature": _text(attributes, "feature"),
        "route": _text(attributes, "route"),
        "customer_id": _text(attributes, "customer_id"),
        "environment": _text(attributes, "environment"),
        "service": _text(resource, SERVICE_NAME),
        "provider": _text(attributes, semconv.GEN_AI_PROVIDER_NAME),
        "operation": operation,
        "request_model": _text(attributes, semconv.GEN_AI_REQUEST_MODEL),
        "response_model": _text(attributes, semconv.GEN_AI_RESPONSE_MODEL),
        "input_tokens": _int(attributes, semconv.GEN_AI_USAGE_INPUT_TOKENS),
        "cached_tokens": tokens(semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        "cache_write_tokens": tokens(semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        "output_tokens": _int(attributes, semconv.GEN_AI_USAGE_OUTPUT_TOKENS),
        "reasoning_tokens": tokens(semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
        "input_audio_tokens": tokens(semconv.COSTSPAN_USAGE_INPUT_AUDIO_TOKENS),
        "output_audio_tokens": tokens(semconv.COSTSPAN_USAGE_OUTPUT_AUDIO_TOKENS),
        "input_image_tokens": tokens(semconv.COSTSPAN_USAGE_INPUT_IMAGE_TOKENS),
        "output_image_tokens": tokens(semconv.COSTSPAN_USAGE_OUTPUT_IMAGE_TOKENS),
        "latency_ms": (end_ns - start_ns) / 1e6 if end_ns is not None else None,
        "cost_usd": _float(attributes, semconv.GEN_AI_USAGE_COST_AMOUNT),
        "cost_input": _float(attributes, semconv.COSTSPAN_COST_INPUT),
        "cost_cache_read": _float(attributes, semconv.COSTSPAN_COST_CACHE_READ),
        "cost_cache_write": _float(attributes, semconv.COSTSPAN_COST_CACHE_WRITE),
        "cost_output": _float(attributes, semconv.COSTSPAN_COST_OUTPUT),
        "pricing_status": _text(attributes, semconv.COSTSPAN_PRICING_STATUS),
        "pricing_source": _text(attributes, semconv.COSTSPAN_PRICING_SOURCE),
        "pricing_version": _text(attributes, semconv.COSTSPAN_PRICING_VERSION),
        "pricing_model": _text(attributes, semconv.COSTSPAN_PRICING_MODEL),
        "error_type": _text(attributes, semconv.ERROR_TYPE),
        "request_id": _text(attributes, semconv.COSTSPAN_REQUEST_ID),
        "prompt_cache_key": _text(attributes, semconv.COSTSPAN_PROMPT_CACHE_KEY),
        "service_tier": next(filter(None, (_text(attributes, name) for name in semconv.SERVICE_TIER_ATTRIBUTES)), None),
        "batch_id": _text(attributes, semconv.COSTSPAN_BATCH_ID),
        "attribution": attribution_json(carried),
        "cache_write_1h_tokens": tokens(semconv.COSTSPAN_USAGE_CACHE_WRITE_1H_TOKENS),
        "web_search_requests": tokens(semconv.COSTSPAN_USAGE_WEB_SEARCH_REQUESTS),
    }


class CostspanSpanExporter(SpanExporter):
    """Writes LLM spans to the costspan store at ``path`` (default: ``costspan.store.paths.default_store_path()``).

    The file is opened on first export, so a bad file never stops the application from starting.
    ``failed_spans`` counts the LLM spans that could not be stored; ``stored_spans`` those newly stored.

    A batch counts as stored only if the file it went into is still the one at ``path`` afterwards (one ``stat``
    per batch). A store deleted or replaced while open is left, and one SQLite finds damaged is renamed to
    ``<name>.damaged-<UTC time>``; either way the batch is written again to the store now at ``path``, and a
    WARNING says where both files are.
    """

    LOG_INTERVAL_S = 60.0

    def __init__(
        self, path: str | Path | None = None, *, timeout_s: float = 5.0, attribution_keys: Sequence[str] | None = None
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.attribution_keys = attribution_keys_in_force(keyword=attribution_keys)
        self.timeout_s = timeout_s
        self.failed_spans = 0
        self.stored_spans = 0
        self._store: Store | None = None
        self._opened: OpenedFiles | None = None  # which files self._store has open, and what it stored there
        self._lock = threading.Lock()
        self._last_log = -self.LOG_INTERVAL_S
        self._shutdown = False
        self._landed_since_check = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = []
        for span in spans:  # one span that cannot be read must not take its batch with it
            try:
                row = row_from_span(span, self.attribution_keys)
            except Exception as error:
                with self._lock:
                    self._failed(1, error)
                continue
            if row is not None:
                rows.append(row)
        return self.write_rows(rows)

    def write_rows(self, rows: Sequence[CostRow]) -> SpanExportResult:
        """Store rows already mapped (and, by ``costspan serve``, re-priced) in one transaction."""
        with self._lock:
            if self._shutdown:
                return SpanExportResult.FAILURE
            if not rows:
                return SpanExportResult.SUCCESS
            try:
                added = self._insert(rows)
                self.stored_spans += added
                self._landed_since_check += added
            except Exception as error:
                self._close_store()  # reopen next time: the file may have been moved aside or repaired
                return self._failed(len(rows), error)
            if self._landed_since_check >= LANDING_COMPACT_AT and self._store is not None:
                self._landed_since_check = 0
                self._compact_if_due(self._store)
        return SpanExportResult.SUCCESS

    def _compact_if_due(self, store: Store) -> None:
        """Start a compaction in a child process once enough rows wait in the landing table (any writer's)."""
        try:
            if store.landed() >= LANDING_COMPACT_AT:
                start_compaction(self.path)
        except Exception:  # the rows are stored; a compaction that cannot start now is tried again later
            logger.warning("costspan: could not start compacting the store %s", self.path, exc_info=True)

    def _failed(self, count: int, error: Exception) -> SpanExportResult:
        self.failed_spans += count  # under self._lock
        now = time.monotonic()
        if now - self._last_log >= self.LOG_INTERVAL_S:
            self._last_log = now
            logger.warning(
                "costspan: %d LLM span(s) not stored (%d so far); the application is not affected: %s",
                count,
                self.failed_spans,
                error,
            )
        return SpanExportResult.FAILURE

    def _close_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                logger.debug("costspan: closing the store failed", exc_info=True)
            self._store, self._opened = None, None

    def _insert(self, rows: Sequence[CostRow]) -> int:
        """Insert into the store at ``self.path``, following it when it is deleted, replaced or damaged."""
        for _ in range(2):  # the second time into the store now at the path
            try:
                store, opened = self._open()
                added = store.insert(rows)
            except StoreDamaged as error:
                self._set_aside(error)
                continue
            if file_identity(self.path) == opened.store:
                opened.stored_spans += added
                return added
            self._leave_lost_store(store, opened)
        raise StoreError(
            f"costspan store {self.path} was deleted, replaced or damaged again while one batch was written to it"
        )

    def _open(self) -> tuple[Store, OpenedFiles]:
        if self._store is None or self._opened is None:
            before = file_identity(self.path)
            store = Store(self.path, timeout_s=self.timeout_s)
            opened = OpenedFiles(file_identity(self.path), file_identity(_wal(self.path)))
            if before is not None and before != opened.store:  # moved aside by another process as it was opened
                store.close()
                raise StoreError(f"costspan store {self.path} changed while it was opened; the next batch retries")
            self._store, self._opened = store, opened
        return self._store, self._opened

    def _leave_lost_store(self, store: Store, opened: OpenedFiles) -> None:
        """The file at the path is no longer the one open (deleted, or replaced by a rename): leave it for the one
        there now. Its ``-wal`` and ``-shm`` are named for the path, so the file there would read them as its
        own (its rows replaced by the old file's): first checkpoint the old rows into the old file, then remove
        those two files, if still the old file's."""
        try:
            store.checkpoint()
        except StoreError:
            logger.debug("costspan: checkpointing the store left behind failed", exc_info=True)
        self._close_store()
        wal, shm = _wal(self.path), Path(f"{self.path}-shm")
        if opened.wal is not None and file_identity(wal) == opened.wal:
            for name in (wal, shm):
                name.unlink(missing_ok=True)
        logger.warning(
            "costspan: the store %s was deleted or replaced while in use; the %d LLM span(s) this process stored "
            "there are only in the old file (gone, if it was deleted). Writing to the store now at %s.",
            self.path,
            opened.stored_spans,
            self.path,
        )

    def _set_aside(self, error: StoreDamaged) -> None:
        """Move a damaged store aside so that a new one starts at the path; re-raise ``error`` when the file is
        not known to be a costspan store (costspan never moves another application's file)."""
        ours = self._opened is not None and file_identity(self.path) == self._opened.store  # opened as a store
        self._close_store()  # the last connection to close checkpoints and removes the -wal and -shm
        if not (ours or error.is_store):
            raise error
        damaged = set_aside(self.path)
        logger.warning(
            "costspan: the store %s is damaged (%s). Moved it to %s (`sqlite3 %s .recover` may save its rows) and "
            "started a new store at %s.",
            self.path,
            error.__cause__ or error,
            damaged,
            damaged,
            self.path,
        )

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            self._close_store()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is written before it returns
