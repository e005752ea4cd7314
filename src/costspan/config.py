"""Settings, from ``instrument()`` keyword arguments first and environment variables second."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from costspan import environment_variables as env
from costspan.semconv import DEFAULT_ATTRIBUTION_KEYS

logger = logging.getLogger(__name__)

ON_MISSING_POLICIES = ("record", "warn", "raise")


def _keys(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _flag(raw: str | None, default: bool) -> bool:
    if raw is None or not raw.strip():
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    attribution_keys: tuple[str, ...] = DEFAULT_ATTRIBUTION_KEYS
    required_keys: tuple[str, ...] = DEFAULT_ATTRIBUTION_KEYS
    on_missing: str = "record"
    stream_usage: bool = True
    pricing_file: str | None = None
    cost_compat: bool = False
    metrics: bool = True
    metrics_customer_id: bool = False
    capture_content: bool = False
    budget_file: str | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the environment; any keyword given to ``instrument()`` wins over its variable."""
        e = os.environ if environ is None else environ
        attribution_keys = _keys(e.get(env.OTEL_COSTSPAN_ATTRIBUTION_KEYS)) or DEFAULT_ATTRIBUTION_KEYS
        values: dict[str, Any] = {
            "attribution_keys": attribution_keys,
            "required_keys": _keys(e.get(env.OTEL_COSTSPAN_REQUIRED_KEYS)),
            "on_missing": (e.get(env.OTEL_COSTSPAN_ON_MISSING) or "record").strip().lower(),
            "stream_usage": _flag(e.get(env.OTEL_COSTSPAN_STREAM_USAGE), True),
            "pricing_file": e.get(env.OTEL_COSTSPAN_PRICING_FILE) or None,
            "cost_compat": _flag(e.get(env.OTEL_COSTSPAN_COST_COMPAT), False),
            "metrics": _flag(e.get(env.OTEL_COSTSPAN_METRICS), True),
            "metrics_customer_id": _flag(e.get(env.OTEL_COSTSPAN_METRICS_CUSTOMER_ID), False),
            "capture_content": _flag(e.get(env.OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT), False),
            "budget_file": e.get(env.OTEL_COSTSPAN_BUDGET_FILE) or None,
        }
        for name, value in overrides.items():
            if name in values and value is not None:
                values[name] = tuple(value) if name.endswith("_keys") else value
        if values["required_keys"] is None:
            values["required_keys"] = values["attribution_keys"]
        if values["on_missing"] not in ON_MISSING_POLICIES:
            logger.error(
                "costspan: %s=%r is not one of %s; using 'record'.",
                env.OTEL_COSTSPAN_ON_MISSING,
                values["on_missing"],
                ", ".join(ON_MISSING_POLICIES),
            )
            values["on_missing"] = "record"
        return cls(**values)
