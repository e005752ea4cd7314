"""Batch jobs: a GET of a finished Batch records the job's cost once, at batch rates, for whoever created it."""

from __future__ import annotations

from typing import Any

from costspan.instrumentation.call import RequestInfo, Telemetry
from costspan.providers.openai.requests import FINAL_BATCH_STATUSES
from costspan.usage import ResponseSummary


class BatchRetrieval:
    """A GET of one Batch. It makes no span of its own; a finished job's usage is recorded by the telemetry."""

    __slots__ = ("finished", "request", "telemetry")

    def __init__(self, telemetry: Telemetry, request: RequestInfo) -> None:
        self.telemetry = telemetry
        self.request = request
        self.finished = False

    def fail(self, exc: BaseException, summary: ResponseSummary | None = None) -> None:
        self.finished = True

    def finish_body(self, body: Any, summary: ResponseSummary, request_id: str | None) -> None:
        self.finished = True
        if summary.batch_id and summary.usage is not None and getattr(body, "status", None) in FINAL_BATCH_STATUSES:
            self.telemetry.record_batch_job(
                self.request,
                summary,
                request_id,
                metadata=getattr(body, "metadata", None) or {},
                created_ns=_ns(getattr(body, "created_at", None)),
                completed_ns=_ns(getattr(body, "completed_at", None)),
            )


def _ns(unix_seconds: Any) -> int | None:
    """A Batch object's Unix-seconds timestamp in nanoseconds; None when it has none."""
    return int(unix_seconds) * 1_000_000_000 if type(unix_seconds) is int and unix_seconds > 0 else None
