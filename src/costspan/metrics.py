"""GenAI client metrics, plus the cost histogram that spend alerts are built on."""

from __future__ import annotations

from typing import Any

from opentelemetry.metrics import Meter

from costspan import semconv

# Advisory bucket boundaries from the GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
COST_BUCKETS = (0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

# Attribution keys low-cardinality enough for metrics; customer_id only on opt-in.
METRIC_ATTRIBUTION_KEYS = ("feature", "route", "environment")


class CallMetrics:
    def __init__(self, meter: Meter) -> None:
        self.tokens = meter.create_histogram(
            semconv.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
        )
        self.duration = meter.create_histogram(
            semconv.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.cost = meter.create_histogram(
            semconv.METRIC_OPERATION_COST,
            unit="USD",
            description="Cost of the GenAI operation in US dollars, from dated prices.",
            explicit_bucket_boundaries_advisory=list(COST_BUCKETS),
        )

    def record(
        self,
        base: dict[str, Any],
        attribution: dict[str, Any],
        duration_s: float,
        input_tokens: int | None,
        output_tokens: int | None,
        cost_usd: float | None,
    ) -> None:
        self.duration.record(duration_s, base)
        if input_tokens is not None:
            self.tokens.record(input_tokens, {**base, semconv.GEN_AI_TOKEN_TYPE: "input"})
        if output_tokens is not None:
            self.tokens.record(output_tokens, {**base, semconv.GEN_AI_TOKEN_TYPE: "output"})
        if cost_usd is not None:
            self.cost.record(cost_usd, {**base, **attribution})
