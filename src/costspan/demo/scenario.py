"""``costspan demo``: a small instrumented app, run against the bundled OpenAI and Anthropic stand-ins, writing to
a demo store.

The app is built the way a real one is: a middleware opens a SERVER span per request and puts the authenticated
customer and the route into OpenTelemetry Baggage, each handler names its feature with ``costspan.attribute``,
and a nightly job attributes its own calls. It calls the real ``openai`` and ``anthropic`` SDKs, instrumented by
``CostspanInstrumentor``; a ``BatchSpanProcessor`` hands the spans to ``CostspanSpanExporter``.

Against the stand-in the demo replays two weeks of traffic in a few seconds: each request really runs now, and its
spans are then moved to the moment it stands for, so the report and dashboard have history to show. The last
full hour holds a burst from one customer, which ``costspan alerts`` flags. With ``real_api`` (``costspan demo
--real-api``) it makes a dozen small calls to the real OpenAI API instead, and keeps their real timestamps.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import anthropic
import openai
from opentelemetry import baggage, context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

import costspan
from costspan.instrumentor import CostspanInstrumentor
from costspan.providers.anthropic.fake import FakeAnthropic
from costspan.providers.anthropic.reconcile import AdminReports
from costspan.providers.openai.fake import FakeOpenAI
from costspan.providers.openai.reconcile import OrganizationReports
from costspan.reports.reconcile import DayResult, ProviderBill, compare, utc_midnight
from costspan.semconv import DEFAULT_ATTRIBUTION_KEYS
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.sqlite import Store

CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli", "stark-industries")
CUSTOMER_WEIGHTS = (34, 22, 16, 12, 9, 7)
BURST_CUSTOMER = "globex"  # its support bot loops in the last full hour

# The support assistant's instructions: long and identical on every call, so prompt caching pays off.
SUPPORT_PROMPT = (
    "You are the support assistant for Northwind Cloud. Answer in at most three sentences, cite the help-center "
    "article you used, never promise refunds, escalate billing disputes to a human, and keep the customer's data "
    "private. "
) * 24
QUESTIONS = (
    "How do I rotate my API key without downtime?",
    "Why was I charged twice this month?",
    "Can I move my workspace to the EU region?",
    "The export job has been stuck for an hour, what should I do?",
    "How do I add a teammate with read-only access?",
)
DOCUMENT = "Quarterly operations review: uptime, incidents, costs, hiring and the roadmap for next quarter. " * 10


# --- the app --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Visit:
    """One unit of traffic: an HTTP request from a customer, or a nightly job run."""

    at: datetime  # the moment it stands for
    route: str
    customer_id: str
    size: int  # how much work: conversation turns, document pages, search chunks


class SupportApp:
    """A small LLM-backed SaaS backend: support chat, document summaries, semantic search and a nightly job."""

    def __init__(self, client: Any, claude: Any | None = None, *, cheap: bool = False) -> None:
        self.client = client
        self.claude = claude  # an Anthropic client: medium documents are summarized by Claude; None: by OpenAI
        self.cheap = cheap  # real API: small models and few tokens
        self.routes: dict[str, Callable[[Visit], None]] = {
            "POST /api/chat": self.chat,
            "POST /api/documents/summarize": self.summarize,
            "GET /api/search": self.search,
        }

    def handle(self, visit: Visit) -> None:
        """Serve one visit, inside the SERVER (or job) span its web framework (or scheduler) opened."""
        if visit.route == "cron:nightly-batch":
            self.nightly_batch(visit)
            return
        with self._middleware(visit):
            self.routes[visit.route](visit)

    @contextmanager
    def _middleware(self, visit: Visit) -> Iterator[None]:
        # What a web framework's middleware does once it has authenticated the caller: the customer comes from the
        # API key, never from an inbound header, so a client cannot bill its calls to someone else.
        ctx = baggage.set_baggage("customer_id", visit.customer_id)
        ctx = baggage.set_baggage("route", visit.route, ctx)
        token = context.attach(ctx)
        try:
            yield
        finally:
            context.detach(token)

    @costspan.attribute(feature="support-chat")
    def chat(self, visit: Visit) -> None:
        messages: list[dict[str, str]] = [{"role": "system", "content": SUPPORT_PROMPT}]
        for turn in range(visit.size):
            messages.append({"role": "user", "content": QUESTIONS[(turn + len(visit.customer_id)) % len(QUESTIONS)]})
        hard = visit.size >= 4  # long conversations go to the bigger model
        model = "gpt-4o-mini" if self.cheap or not hard else "gpt-4.1"
        stream = self.client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            max_completion_tokens=60 if self.cheap else 40 + 8 * visit.size,
            prompt_cache_key="support-assistant-v3",
        )
        for _chunk in stream:
            pass  # a real handler forwards each delta to the browser

    @costspan.attribute(feature="summarize")
    def summarize(self, visit: Visit) -> None:
        long_document = visit.size >= 6
        if self.claude is not None and 3 <= visit.size < 6:
            self.claude.messages.create(
                model="claude-sonnet-4-5-20250929",
                system="Summarize the document in five bullet points for an executive.",
                messages=[{"role": "user", "content": DOCUMENT * visit.size}],
                max_tokens=48,
            )
            return
        model = "gpt-4o-mini" if self.cheap else ("gpt-5" if long_document else "gpt-4.1")
        self.client.responses.create(
            model=model,
            instructions="Summarize the document in five bullet points for an executive.",
            input=DOCUMENT[: 400 * visit.size] if self.cheap else DOCUMENT * visit.size,
            max_output_tokens=64 if self.cheap else 48,
        )

    @costspan.attribute(feature="search-embeddings")
    def search(self, visit: Visit) -> None:
        chunks = [f"{QUESTIONS[i % len(QUESTIONS)]} (passage {i})" for i in range(visit.size)]
        self.client.embeddings.create(model="text-embedding-3-small", input=chunks)

    def nightly_batch(self, visit: Visit) -> None:
        # Background work has no request to carry baggage, so it names everything itself.
        with costspan.attribute(
            feature="nightly-batch", route="cron:nightly-batch", customer_id="system", environment="prod"
        ):
            for page in range(visit.size):
                self.client.chat.completions.create(
                    model="gpt-4o-mini" if self.cheap else "gpt-5",
                    messages=[
                        {"role": "system", "content": "Classify the ticket and extract the product area."},
                        {"role": "user", "content": f"Ticket batch page {page}: " + QUESTIONS[page % len(QUESTIONS)]},
                    ],
                    max_completion_tokens=64 if self.cheap else 32,
                )


# --- traffic --------------------------------------------------------------------------------------------
_HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 10, 10, 9, 7, 5, 4, 3, 3, 2, 2)  # UTC, business hours


def simulated_traffic(now: datetime, *, days: int, requests: int, seed: int = 7) -> list[Visit]:
    """``requests`` customer requests over the past ``days`` (busier in business hours and on weekdays, growing
    week over week), a nightly batch job at 02:00, and a burst from one customer in the last full hour."""
    rng = random.Random(seed)
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    start = this_hour - timedelta(days=days)
    span_s = (this_hour - timedelta(hours=1) - start).total_seconds()  # the last full hour is the burst's alone
    routes = ("POST /api/chat", "POST /api/documents/summarize", "GET /api/search")
    visits: list[Visit] = []
    while len(visits) < requests:
        at = start + timedelta(seconds=rng.uniform(0, span_s))
        weight = _HOUR_WEIGHTS[at.hour] / 10 * (0.45 if at.weekday() >= 5 else 1.0)
        weight *= 0.6 + 0.4 * (at - start).total_seconds() / span_s  # growth
        if rng.random() > weight:
            continue
        route = rng.choices(routes, weights=(55, 20, 25))[0]
        customer = rng.choices(CUSTOMERS, weights=CUSTOMER_WEIGHTS)[0]
        size = rng.randint(1, 5 if route == "POST /api/chat" else 8)
        visits.append(Visit(at, route, customer, size))
    night = start.replace(hour=2)
    while night < this_hour - timedelta(hours=1):
        if night >= start:
            visits.append(Visit(night + timedelta(minutes=rng.randint(0, 20)), "cron:nightly-batch", "system", 3))
        night += timedelta(days=1)
    burst_start = this_hour - timedelta(hours=1)
    for i in range(max(12, requests // 10)):
        at = burst_start + timedelta(seconds=rng.uniform(0, 3599))
        visits.append(Visit(at, "POST /api/chat", BURST_CUSTOMER, 1 + i % 3))
    visits.sort(key=lambda v: v.at)
    return visits


def real_api_traffic(now: datetime) -> list[Visit]:
    """About ten small calls for the real API: a fraction of a cent with the cheap models."""
    routes = ["POST /api/chat"] * 4 + ["POST /api/documents/summarize"] * 2 + ["GET /api/search"] * 3
    visits = [Visit(now, route, CUSTOMERS[i % 3], 2) for i, route in enumerate(routes)]
    return [*visits, Visit(now, "cron:nightly-batch", "system", 2)]


class Backdate(SpanExporter):
    """Moves each trace's spans by the offset registered for it, then exports them. Demo-only: it lets a few
    seconds of real calls stand for two weeks of traffic."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.offsets: dict[int, int] = {}  # trace id -> nanoseconds to add
        self._lock = threading.Lock()

    def register(self, trace_id: int, offset_ns: int) -> None:
        with self._lock:
            self.offsets[trace_id] = offset_ns

    def _moved(self, span: ReadableSpan) -> ReadableSpan:
        with self._lock:
            offset = self.offsets.get(span.context.trace_id, 0) if span.context else 0
        if not offset or span.start_time is None:
            return span
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes,
            events=span.events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time + offset,
            end_time=span.end_time + offset if span.end_time is not None else None,
            instrumentation_scope=span.instrumentation_scope,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([self._moved(span) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


# --- running it -----------------------------------------------------------------------------------------
class Progress:
    """One line on stderr, under 80 columns: redrawn in place on a terminal, printed every 25% otherwise."""

    WIDTH = 20

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_quarter = -1

    def step(self, label: str) -> None:
        with self._lock:
            self.done += 1
            quarter = 4 * self.done // self.total
            if not self.tty and quarter == self._last_quarter:
                return
            self._last_quarter = quarter
            filled = self.WIDTH * self.done // self.total
            line = (
                f"  [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} requests/jobs"
                f"  {time.monotonic() - self.started:4.1f}s  {label[:24]:<24}"
            )
            self.stream.write(("\r" + line) if self.tty else line.rstrip() + "\n")
            if self.tty and self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


@dataclass
class DemoRun:
    store: Path
    visits: int
    stored_spans: int
    failed_spans: int
    real_api: bool
    seconds: float
    reconciliations: dict[str, list[DayResult]] | None = None  # the store against each stand-in's own bill


def reconcile_with_stand_ins(
    store_path: Path, fakes: tuple[FakeOpenAI, FakeAnthropic], now: datetime, days: int
) -> dict[str, list[DayResult]]:
    """What ``costspan reconcile`` does against each provider's reports, against each stand-in's bill. Its ledger
    entries move to their spans' (backdated) start, matched by request id, first."""
    fake_openai, fake_anthropic = fakes
    bills: list[tuple[ProviderBill, FakeOpenAI | FakeAnthropic]] = [
        (OrganizationReports("sk-admin-demo", base_url=fake_openai.base_url), fake_openai),
        (AdminReports("sk-ant-admin01-demo", base_url=fake_anthropic.base_url), fake_anthropic),
    ]
    since = utc_midnight(now.date() - timedelta(days=days))
    until = utc_midnight(now.date() + timedelta(days=1))
    results = {}
    with Store(store_path) as store:
        for reports, fake in bills:
            # Each stand-in numbers its request ids from 1: match them within its own provider's calls.
            rows = store.query(
                "SELECT request_id, start_ns FROM spans WHERE request_id IS NOT NULL AND provider = ?",
                [reports.span_providers[0]],
            )
            fake.retime({request_id: start_ns // 1_000_000_000 for request_id, start_ns in rows})
            results[reports.name] = compare(reports, store, since, until, today=now.date())
    return results


def run(
    store: Path,
    *,
    real_api: bool,
    requests: int = 400,
    days: int = 14,
    workers: int = 4,
    progress_stream: IO[str] | None = None,
    reconcile_bill: bool = False,
) -> DemoRun:
    """Run the demo app and write its spans to ``store``. Against the stand-in unless ``real_api``; with
    ``reconcile_bill`` (for a store that holds only this run), the store is then checked against its bill."""
    started = time.monotonic()
    now = datetime.now(UTC)
    visits = real_api_traffic(now) if real_api else simulated_traffic(now, days=days, requests=requests)
    store_exporter = CostspanSpanExporter(store)
    backdate = Backdate(store_exporter)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "support-app", "deployment.environment.name": "prod"})
    )
    provider.add_span_processor(BatchSpanProcessor(backdate, max_export_batch_size=512, schedule_delay_millis=500))
    instrumentor = CostspanInstrumentor()
    # The demo's own attribution settings, whatever OTEL_COSTSPAN_* variables the user's shell holds.
    instrumentor.instrument(
        tracer_provider=provider,
        attribution_keys=DEFAULT_ATTRIBUTION_KEYS,
        required_keys=DEFAULT_ATTRIBUTION_KEYS,
        on_missing="warn",
        stream_usage=True,
    )
    fakes = None if real_api else (FakeOpenAI().start(), FakeAnthropic().start())
    reconciliations = None
    try:
        try:
            if fakes is not None:
                fake_openai, fake_anthropic = fakes
                client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-demo-not-a-real-key", max_retries=0)
                claude = anthropic.Anthropic(
                    base_url=fake_anthropic.base_url, api_key="sk-ant-demo-not-a-real-key", max_retries=0
                )
                app = SupportApp(client, claude)
            else:
                client = openai.OpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment
                app = SupportApp(client, cheap=True)
            tracer = provider.get_tracer("support-app")
            progress = Progress(len(visits), progress_stream)

            def serve(visit: Visit) -> None:
                # The span a web framework's instrumentation (or the job scheduler's) opens around the handler.
                kind = SpanKind.INTERNAL if visit.route.startswith("cron:") else SpanKind.SERVER
                with tracer.start_as_current_span(visit.route, kind=kind) as span:
                    if not real_api:
                        offset = int(visit.at.timestamp() * 1e9) - time.time_ns()
                        backdate.register(span.get_span_context().trace_id, offset)
                    app.handle(visit)
                progress.step(visit.route)

            with ThreadPoolExecutor(max_workers=1 if real_api else workers) as pool:
                for result in pool.map(serve, visits):
                    del result  # surfaces the first error
        finally:
            provider.shutdown()  # flushes the batch processor into the store
            instrumentor.uninstrument()
        if fakes is not None and reconcile_bill:
            reconciliations = reconcile_with_stand_ins(store, fakes, now, days)
    finally:
        for fake in fakes or ():
            fake.stop()
    return DemoRun(
        store=store,
        visits=len(visits),
        stored_spans=store_exporter.stored_spans,
        failed_spans=store_exporter.failed_spans,
        real_api=real_api,
        seconds=time.monotonic() - started,
        reconciliations=reconciliations,
    )
