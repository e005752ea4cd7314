"""``CostspanInstrumentor``: turns every LLM SDK call into a priced, attributed CLIENT span.

It builds one ``Telemetry`` (tracer, metrics, prices, attribution, budget guards) and turns on every provider in
``PROVIDERS`` whose SDK is installed.

Loaded by ``opentelemetry-instrument`` through the ``opentelemetry_instrumentor`` entry point ``costspan``, or
used directly::

    CostspanInstrumentor().instrument(tracer_provider=..., meter_provider=...)
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from costspan import __version__
from costspan.attribution.baggage import Attributor
from costspan.config import Settings
from costspan.instrumentation.call import CallGuard, Telemetry
from costspan.instrumentation.metrics import CallMetrics
from costspan.instrumentation.provider import Provider
from costspan.pricing.overrides import price_layers
from costspan.pricing.pricer import Pricer
from costspan.providers.anthropic import PROVIDER as ANTHROPIC
from costspan.providers.openai import PROVIDER as OPENAI
from costspan.store.batch_origins import SQLiteBatchOrigins

logger = logging.getLogger("costspan")

PROVIDERS: tuple[Provider, ...] = (OPENAI, ANTHROPIC)
_SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"


class CostspanInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instrument the OpenAI SDK (``OpenAI``, ``AsyncOpenAI`` and the Azure clients).

    Keyword arguments to ``instrument()``: ``tracer_provider``, ``meter_provider``, ``guards`` (call guards such as
    budgets), ``price_layers`` (extra price sources tried before the packaged data), ``batch_origins`` (where who
    created each Anthropic Message Batch is kept for its results; default: a table in the store's file, opened
    only once a batch is created or read), and any ``Settings`` field
    (``attribution_keys``, ``required_keys``, ``on_missing``, ``stream_usage``, ``pricing_file``,
    ``cost_compat``, ``metrics_customer_id``, ``high_cardinality_keys``, ``capture_content``, ``budget_file``),
    which win over their environment variables.
    """

    telemetry: Telemetry | None = None
    providers: tuple[Provider, ...] = ()  # those turned on

    def instrumentation_dependencies(self) -> Collection[str]:
        # Any one installed SDK is enough; opentelemetry-instrument checks these only as a whole, so none is
        # listed and each provider is turned on below when its SDK is there.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        settings = Settings.load(**{k: v for k, v in kwargs.items() if k in Settings.__dataclass_fields__})
        tracer_provider = kwargs.get("tracer_provider")
        tracer = trace.get_tracer(__name__, __version__, tracer_provider, schema_url=_SCHEMA_URL)
        meter = metrics.get_meter(__name__, __version__, kwargs.get("meter_provider"), schema_url=_SCHEMA_URL)
        pricer = Pricer([*(kwargs.get("price_layers") or ()), *price_layers(settings.pricing_file)])
        telemetry = Telemetry(
            tracer=tracer,
            metrics=CallMetrics(meter, attribution_keys=settings.metric_attribution_keys) if settings.metrics else None,
            pricer=pricer,
            attributor=Attributor(settings, tracer_provider),
            settings=settings,
            guards=(
                *(kwargs.get("guards") or ()),
                *_budget_guards(settings, pricer, kwargs.get("meter_provider")),
            ),
            batch_origins=kwargs.get("batch_origins") or SQLiteBatchOrigins(),
        )
        self.telemetry = telemetry
        self.providers = tuple(provider for provider in PROVIDERS if _supported(provider))
        for provider in self.providers:
            provider.instrument(telemetry)

    def _uninstrument(self, **kwargs: Any) -> None:
        for provider in self.providers:
            provider.uninstrument()
        self.providers = ()
        if self.telemetry is not None and self.telemetry.metrics is not None:
            self.telemetry.metrics.drain()  # into the SDK's instruments: nothing queued is dropped with it
        self.telemetry = None


def _supported(provider: Provider) -> bool:
    """Whether the provider's SDK is installed at a supported version (a missing SDK is not an error)."""
    if importlib.util.find_spec(provider.sdk) is None:
        return False
    conflict = get_dependency_conflicts([provider.instruments])
    if conflict is not None:
        logger.warning("costspan: not instrumenting %s: %s", provider.sdk, conflict)
        return False
    return True


def _budget_guards(settings: Settings, pricer: Pricer, meter_provider: Any) -> tuple[CallGuard, ...]:
    """The budget file's guard. A file that cannot be used is logged, and calls go on without budgets."""
    if not settings.budget_file:
        return ()
    from costspan.budgets.guard import load_budget_guard

    try:
        guard = load_budget_guard(
            settings.budget_file,
            attribution_keys=settings.attribution_keys,
            pricer=pricer,
            meter_provider=meter_provider,
        )
        return (guard,)
    except Exception as exc:
        logger.error("costspan: budgets are OFF: %s", exc)
        return ()
