"""Makes ``pip install costspan`` enough for ``opentelemetry-instrument`` to set up the SDK and export.

Without a distro and configurator, auto-instrumentation patches libraries but creates no TracerProvider, so
nothing leaves the process. These defaults export traces and metrics over OTLP/HTTP (the exporter costspan
depends on) to ``OTEL_EXPORTER_OTLP_ENDPOINT``; every one of them can be overridden by its variable.

A store-only run (traces only to local exporters such as ``costspan``, no OTLP endpoint, metrics left unset)
names no collector, so metrics default to ``none`` there instead: nothing reaches for ``localhost:4318``.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
)

# Trace exporters that write inside the process or nowhere: choosing only these names no collector.
LOCAL_TRACE_EXPORTERS = frozenset({"costspan", "console", "none"})


class CostspanConfigurator(_OTelSDKConfigurator):
    """The SDK's own configurator: providers, processors and exporters from the OTEL_* variables."""


def _collector_configured() -> bool:
    """Whether the user pointed anything at a collector: a non-local trace exporter or an OTLP endpoint."""
    traces = os.environ.get(OTEL_TRACES_EXPORTER)
    if traces is None:
        return True  # the default below exports traces over OTLP
    if any(name.strip().lower() not in LOCAL_TRACE_EXPORTERS for name in traces.split(",") if name.strip()):
        return True
    return any(os.environ.get(name) for name in (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT))


class CostspanDistro(BaseDistro):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        # Decided before the defaults below are set. With no collector named, OTLP metrics would go to
        # localhost:4318: connection-refused errors and ~7 s of retries before exit. The store needs no metrics (every
        # number is on the span); an explicit OTEL_METRICS_EXPORTER is never overridden.
        metrics = "otlp_proto_http" if _collector_configured() else "none"
        os.environ.setdefault(OTEL_TRACES_EXPORTER, "otlp_proto_http")
        os.environ.setdefault(OTEL_METRICS_EXPORTER, metrics)
        os.environ.setdefault(OTEL_LOGS_EXPORTER, "none")
        os.environ.setdefault(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")
