"""A real collector between the app and the backend: rotel (PyPI ``rotel``; its binary needs Debian libpython3.11).

An app instrumented by costspan (real openai SDK against FakeOpenAI, OTLP/HTTP exporter with a batch processor)
sends spans to rotel, configured by ``collector-config/rotel.env``, which forwards them over OTLP/HTTP to a test
receiver. The collector is stopped, crashed and restarted mid-run; every span id the app produced is accounted for
on the far side, and what was lost is counted and named.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from costspan import semconv
from costspan.instrumentor import CostspanInstrumentor
from costspan.providers.openai.fake import FakeOpenAI
from tests.otlp_receiver import OtlpReceiver
from tests.ports import free_port

pytestmark = pytest.mark.integration

ROTEL_ENV = Path(__file__).resolve().parents[1] / "collector-config" / "rotel.env"
BATCH = 5  # rotel's batch size in this test: partial batches wait, which makes a crash's loss exact


def rotel_binary() -> Path:
    rotel = pytest.importorskip("rotel", reason="rotel is not installed (pip install rotel)")
    binary = Path(rotel.__file__).parent / "rotel-agent"
    try:
        subprocess.run([binary, "version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"rotel-agent does not run here ({exc}); it needs Debian's libpython3.11 (scripts/setup-system)")
    return binary


def load_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rotel exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"rotel did not listen on 127.0.0.1:{port} within {timeout}s")


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


class Rotel:
    """rotel-agent in the foreground, configured from rotel.env with its endpoints pointed at this test."""

    def __init__(self, binary: Path, receiver_endpoint: str, log: Path) -> None:
        self.binary = binary
        self.http_port = free_port()
        self.log = log
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")},
            **load_env_file(ROTEL_ENV),
            "ROTEL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.http_port}",
            "ROTEL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
            # The file's own `tempo` OTLP exporter, aimed at the test receiver instead of Tempo.
            "ROTEL_EXPORTERS_TRACES": "tempo",
            "ROTEL_EXPORTER_TEMPO_ENDPOINT": receiver_endpoint,
            "ROTEL_EXPORTER_PROMETHEUS_ENDPOINT": receiver_endpoint,
            "ROTEL_TRACES_BATCH_MAX_SIZE": str(BATCH),
            "ROTEL_BATCH_TIMEOUT": "120s",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "start"], env=self.env, stdout=log, stderr=log)
        wait_for_port(self.http_port, self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@dataclass
class App:
    """An instrumented app: spans go to rotel by OTLP/HTTP and, for the accounting, to memory."""

    collector_endpoint: str
    base_url: str
    sent: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)

    def __post_init__(self) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "rotel-test-app"}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.sent))
        # Connection errors are retried with backoff for up to `timeout` seconds: a short outage loses nothing.
        exporter = OTLPSpanExporter(endpoint=self.collector_endpoint, timeout=30)
        # rotel 0.0.1a15 drops a request that splits into more than two of its batches ("Too many batch items
        # split, dropping data"): export requests stay within its batch size.
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000, max_export_batch_size=BATCH)
        self.provider.add_span_processor(processor)
        self.instrumentor = CostspanInstrumentor()
        self.instrumentor.instrument(tracer_provider=self.provider, meter_provider=MeterProvider())
        self.client = openai.OpenAI(base_url=self.base_url, api_key="sk-test-not-a-secret", max_retries=0)

    def calls(self, n: int, phase: str) -> list[str]:
        """Make n calls attributed to `phase` (as the route); returns their span ids."""
        before = len(self.sent.get_finished_spans())
        ctx = baggage.set_baggage("feature", "collector-test")
        ctx = baggage.set_baggage("route", phase, ctx)
        ctx = baggage.set_baggage("customer_id", "acme", ctx)
        token = context.attach(ctx)
        try:
            for i in range(n):
                self.client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"{phase} question {i} " * (i + 1)}]
                )
        finally:
            context.detach(token)
        return [f"{s.context.span_id:016x}" for s in self.sent.get_finished_spans()[before:]]

    def flush(self) -> bool:
        return self.provider.force_flush(timeout_millis=60_000)

    def close(self) -> None:
        self.instrumentor.uninstrument()
        self.client.close()
        self.provider.shutdown()


class RecordingReceiver(OtlpReceiver):
    """Also keeps the raw export requests, to load them into the warehouse as the ClickHouse exporter would."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ExportTraceServiceRequest] = []

    def _ingest(self, request: ExportTraceServiceRequest) -> None:
        super()._ingest(request)
        with self.lock:
            self.requests.append(request)


@pytest.fixture
def rig(fake_openai: FakeOpenAI, tmp_path: Path) -> Iterator[tuple[App, Rotel, RecordingReceiver]]:
    binary = rotel_binary()
    with RecordingReceiver() as receiver:
        rotel = Rotel(binary, receiver.endpoint, tmp_path / "rotel.log")
        rotel.start()
        app = App(rotel.endpoint, fake_openai.base_url)
        try:
            yield app, rotel, receiver
        finally:
            app.close()
            rotel.stop()


def received_ids(receiver: OtlpReceiver) -> list[str]:
    with receiver.lock:
        return [s["span_id"] for s in receiver.spans]


def test_spans_cross_rotel_with_cost_and_attribution_and_losses_are_counted(
    rig: tuple[App, Rotel, RecordingReceiver],
) -> None:
    app, rotel, receiver = rig
    phases: dict[str, list[str]] = {}

    def arrived(ids: list[str]) -> bool:
        return set(ids) <= set(received_ids(receiver))

    # rotel holds spans in memory until a batch fills (BATCH spans) or its timeout (120 s here) passes.
    # 1. Steady state, then a graceful restart: SIGTERM makes rotel flush what it holds before it exits.
    phases["steady"] = app.calls(2 * BATCH, "steady")
    phases["graceful"] = app.calls(3, "graceful")
    assert app.flush()
    rotel.stop(signal.SIGTERM)
    assert wait_until(lambda: arrived(phases["steady"] + phases["graceful"])), "a graceful stop lost spans"
    rotel.start()

    # 2. Outage: the app exports while rotel is down. Its exporter retries with backoff, rotel comes back within
    #    the retry window and takes the batch.
    rotel.stop(signal.SIGTERM)
    phases["outage"] = app.calls(BATCH, "outage")
    flushed: list[bool] = []
    flusher = threading.Thread(target=lambda: flushed.append(app.flush()))
    flusher.start()
    time.sleep(1.5)  # the first attempts are refused
    rotel.start()
    flusher.join(timeout=120)
    assert flushed == [True], "the app's exporter gave up during a short outage"
    rotel.stop(signal.SIGTERM)
    assert wait_until(lambda: arrived(phases["outage"])), "spans exported during the outage were lost"
    rotel.start()

    # 3. Crash: rotel accepts a partial batch (the app's export succeeds) and is killed before forwarding it.
    phases["crash"] = app.calls(3, "crash")
    assert app.flush()
    rotel.stop(signal.SIGKILL)
    rotel.start()

    # 4. After the crash traffic flows again.
    phases["after"] = app.calls(BATCH, "after")
    assert app.flush()
    rotel.stop(signal.SIGTERM)

    sent = [sid for ids in phases.values() for sid in ids]
    assert len(sent) == len(set(sent)) == 2 * BATCH + 3 + BATCH + 3 + BATCH
    wait_until(lambda: arrived(phases["after"]))
    got = received_ids(receiver)
    duplicates = {sid: n for sid, n in Counter(got).items() if n > 1}
    lost = {phase: [sid for sid in ids if sid not in set(got)] for phase, ids in phases.items()}
    report = (
        f"sent {len(sent)} spans, received {len(set(got))} distinct ({len(got)} deliveries, "
        f"{len(duplicates)} duplicated); lost by phase: { {p: len(ids) for p, ids in lost.items()} }"
    )
    print(report)
    assert set(got) <= set(sent), "the receiver got spans the app never made"
    # What a crash costs: exactly the spans rotel had accepted and not yet forwarded (3 spans cannot fill a
    # batch of 5, so all 3 were waiting). The app's exporter saw success for them: only a count like this one,
    # or the collector's own metrics, shows the loss. Nothing else is lost.
    assert lost == {"steady": [], "graceful": [], "outage": [], "crash": phases["crash"], "after": []}, report

    # rotel 0.0.1a15 drops the resource (service.name included) of spans in a batch that fills up exactly; our
    # 5-span batches make that happen here. costspan's cost and attribution live on the span and survive it.
    no_resource = sum(1 for s in receiver.spans if not s["resource"])
    print(f"{no_resource} of {len(got)} spans arrived without their resource (rotel: batch filled exactly)")

    # Cost and attribution arrive intact, with their types (doubles stay doubles).
    by_id = {f"{s.context.span_id:016x}": s for s in app.sent.get_finished_spans()}
    with receiver.lock:
        spans = list(receiver.spans)
    for span in spans:
        original = by_id[span["span_id"]].attributes or {}
        attrs = span["attributes"]
        for key in (
            semconv.GEN_AI_USAGE_COST_AMOUNT,
            semconv.COSTSPAN_COST_INPUT,
            semconv.COSTSPAN_COST_OUTPUT,
            semconv.GEN_AI_USAGE_INPUT_TOKENS,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
            semconv.COSTSPAN_PRICING_STATUS,
            "feature",
            "route",
            "customer_id",
        ):
            assert attrs[key] == original[key], (key, attrs[key], original[key])
            assert type(attrs[key]) is type(original[key]), key
        assert attrs[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_PRICED
        assert attrs[semconv.GEN_AI_USAGE_COST_AMOUNT] > 0

    # Through to the warehouse: what crossed rotel, written as the ClickHouse exporter writes it, adds up to the
    # app's spend minus exactly the dollars of the spans the crash lost.
    from tests.test_clickhouse import clickhouse, exporter_rows, load_schema

    engine = clickhouse()
    engine.execute("DROP DATABASE IF EXISTS rotel_e2e")
    try:
        load_schema(engine, "rotel_e2e")
        with receiver.lock:
            requests = list(receiver.requests)
        for request in requests:
            engine.insert_traces(exporter_rows(request), "rotel_e2e")
        (row,) = engine.rows(
            "SELECT count() AS calls, sum(cost_usd) AS spend FROM rotel_e2e.llm_cost_events FINAL "
            "WHERE customer_id = 'acme' AND feature = 'collector-test'"
        )
    finally:
        engine.execute("DROP DATABASE IF EXISTS rotel_e2e")

    def dollars(ids: list[str]) -> Decimal:
        return sum((Decimal(repr(by_id[i].attributes[semconv.GEN_AI_USAGE_COST_AMOUNT])) for i in ids), Decimal(0))  # type: ignore[index]

    lost_usd = dollars(phases["crash"])
    assert row["calls"] == len(sent) - len(phases["crash"]), report
    assert abs(Decimal(row["spend"]) - (dollars(sent) - lost_usd)) < Decimal("1e-12"), (row, report)
    print(f"warehouse: {row['calls']} calls, ${row['spend']}; the crash lost ${lost_usd} of recorded spend")


def _rotel_settings(binary: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """From ``rotel-agent start --help``: the env names, and the (exporter type, PARAM) pairs its flags define."""
    out = subprocess.run([binary, "start", "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    env_names = set(re.findall(r"\[env: (ROTEL_\w+)=", out))
    params = {
        (kind, param.upper().replace("-", "_")) for kind, param in re.findall(r"--([a-z]+)-exporter-([a-z-]+)", out)
    }
    return env_names, params


def test_rotel_env_names_are_real_rotel_settings() -> None:
    """rotel ignores unknown ROTEL_* variables silently, so a typo would just not apply: check every name."""
    known, exporter_params = _rotel_settings(rotel_binary())
    env = load_env_file(ROTEL_ENV)
    exporters = dict(pair.split(":") for pair in env["ROTEL_EXPORTERS"].split(","))
    assert env["ROTEL_EXPORTERS_TRACES"] in exporters and env["ROTEL_EXPORTERS_METRICS"] in exporters
    for key in env:
        if key in known:
            continue
        # Per-exporter settings: ROTEL_EXPORTER_{NAME}_{PARAM}, PARAM being a flag of the exporter's type.
        match = re.fullmatch(r"ROTEL_EXPORTER_([A-Z]+)_(\w+)", key)
        assert match, f"{key} is not a rotel setting"
        name, param = match.group(1).lower(), match.group(2)
        assert name in exporters, f"{key}: no exporter named {name} in ROTEL_EXPORTERS"
        kind = exporters[name]
        assert (kind, param) in exporter_params, f"{key}: rotel's {kind} exporter has no --{kind}-exporter-* {param}"
