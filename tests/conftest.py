"""Shared fixtures: the loopback OpenAI stand-in and a real OpenTelemetry SDK pipeline in memory.

Every test in this process prices calls from ``tests/frozen_prices.py``, a frozen copy of the genai-prices data,
so the dollars a test states cannot move when a newer price-data release is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from genai_prices import data_snapshot
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from costspan.instrumentor import CostspanInstrumentor
from costspan.providers.openai.fake import FakeOpenAI
from tests import frozen_prices

if TYPE_CHECKING:  # imported where used: the compat venv with only the Anthropic SDK loads this file too
    import openai

# Before any Pricer reads the data (costspan.pricing.pricer.packaged_prices() is built on first use).
data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(frozen_prices.providers, from_auto_update=False))


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_script(request: pytest.FixtureRequest) -> None:
    if "fake_openai" in request.fixturenames:
        fake: FakeOpenAI = request.getfixturevalue("fake_openai")
        fake.state.script.clear()
        fake.state.received.clear()


@dataclass
class Pipeline:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    instrumentor: CostspanInstrumentor

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self) -> ReadableSpan:
        spans = self.spans()
        assert len(spans) == 1, [s.name for s in spans]
        return spans[0]

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


def make_pipeline(**instrument_kwargs: Any) -> Pipeline:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    instrumentor = CostspanInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        **instrument_kwargs,
    )
    return Pipeline(exporter, reader, tracer_provider, instrumentor)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    """Instrumented with default settings; tests needing other settings call ``make_pipeline`` themselves."""
    p = make_pipeline()
    yield p
    p.instrumentor.uninstrument()


@pytest.fixture
def client(fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    import openai

    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test-not-a-secret", max_retries=0) as c:
        yield c


@pytest.fixture
def async_client(fake_openai: FakeOpenAI) -> openai.AsyncOpenAI:
    import openai

    return openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test-not-a-secret", max_retries=0)


@pytest.fixture
def instrumented() -> Iterator[list[Pipeline]]:
    """Collects pipelines a test makes with ``make_pipeline``, and uninstruments them after it."""
    made: list[Pipeline] = []
    yield made
    for pipeline in made:
        pipeline.instrumentor.uninstrument()


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    """A real HTTP client for the app under test; the module provides the ``base_url`` fixture."""
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c
