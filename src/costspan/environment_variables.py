"""Environment variables costspan reads.

Registered under the ``opentelemetry_environment_variables`` entry point, so ``opentelemetry-instrument`` also
accepts each one as a flag: ``OTEL_COSTSPAN_ON_MISSING`` is ``--costspan_on_missing``.
"""

OTEL_COSTSPAN_ATTRIBUTION_KEYS = "OTEL_COSTSPAN_ATTRIBUTION_KEYS"
"""Comma-separated baggage keys copied onto every span. Default: ``feature,route,customer_id,environment``."""

OTEL_COSTSPAN_REQUIRED_KEYS = "OTEL_COSTSPAN_REQUIRED_KEYS"
"""Comma-separated keys that must be present. Default: all attribution keys."""

OTEL_COSTSPAN_ON_MISSING = "OTEL_COSTSPAN_ON_MISSING"
"""What a call missing a required key does: ``record`` (default), ``warn`` or ``raise``."""

OTEL_COSTSPAN_STREAM_USAGE = "OTEL_COSTSPAN_STREAM_USAGE"
"""``true`` (default): ask for usage on streams that did not, and hide the extra chunk. ``false`` turns it off
for backends that reject ``stream_options``."""

OTEL_COSTSPAN_PRICING_FILE = "OTEL_COSTSPAN_PRICING_FILE"
"""Path to a TOML or YAML pricing override file."""

OTEL_COSTSPAN_BUDGET_FILE = "OTEL_COSTSPAN_BUDGET_FILE"
"""Path to a TOML or YAML budget file: caps enforced before each call (see docs/budgets.md)."""

OTEL_COSTSPAN_COST_COMPAT = "OTEL_COSTSPAN_COST_COMPAT"
"""``true``: also write ``gen_ai.usage.cost`` (read by Langfuse and OpenLIT). Default ``false``."""

OTEL_COSTSPAN_METRICS = "OTEL_COSTSPAN_METRICS"
"""``true`` (default): record the token, duration and cost histograms. ``false``: spans only (each histogram point
costs the OTel SDK ~12 µs when a reader collects; the spans carry every figure, for span-derived metrics)."""

OTEL_COSTSPAN_METRICS_CUSTOMER_ID = "OTEL_COSTSPAN_METRICS_CUSTOMER_ID"
"""``true``: put ``customer_id`` on the cost metric (high cardinality). Default ``false``."""

OTEL_COSTSPAN_HIGH_CARDINALITY_KEYS = "OTEL_COSTSPAN_HIGH_CARDINALITY_KEYS"
"""Comma-separated attribution keys kept off the cost metric (one series per value would be too many; they stay on
spans and in the store). Default: ``customer_id``."""

OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""``true``: record prompt and completion content on spans. Default ``false``."""
