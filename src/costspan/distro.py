"""Makes ``pip install costspan`` enough for ``opentelemetry-instrument`` to set up the SDK and export.

Without a distro and configurator, auto-instrumentation patches libraries but creates no TracerProvider, so
nothing leaves the process. These defaults export traces and metrics over OTLP/HTTP (the exporter costspan
depends on) to ``OTEL_EXPORTER_OTLP_ENDPOINT``; every one of them can be overridden by its variable.
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
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL


class CostspanConfigurator(_OTelSDKConfigurator):
    """The SDK's own configurator: providers, processors and exporters from the OTEL_* variables."""


class CostspanDistro(BaseDistro):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault(OTEL_TRACES_EXPORTER, "otlp_proto_http")
        os.environ.setdefault(OTEL_METRICS_EXPORTER, "otlp_proto_http")
        os.environ.setdefault(OTEL_LOGS_EXPORTER, "none")
        os.environ.setdefault(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")
