"""Settings, from ``instrument()`` keyword arguments first and environment variables second."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from costspan import environment_variables as env
from costspan.semconv import DEFAULT_ATTRIBUTION_KEYS

logger = logging.getLogger(__name__)

ON_MISSING_POLICIES = ("record", "warn", "raise")


# Each setting: its variable, and (for flags) its default.
_VARIABLES: Mapping[str, str] = {
    "attribution_keys": env.OTEL_COSTSPAN_ATTRIBUTION_KEYS,
    "required_keys": env.OTEL_COSTSPAN_REQUIRED_KEYS,
    "on_missing": env.OTEL_COSTSPAN_ON_MISSING,
    "stream_usage": env.OTEL_COSTSPAN_STREAM_USAGE,
    "pricing_file": env.OTEL_COSTSPAN_PRICING_FILE,
    "cost_compat": env.OTEL_COSTSPAN_COST_COMPAT,
    "metrics": env.OTEL_COSTSPAN_METRICS,
    "metrics_customer_id": env.OTEL_COSTSPAN_METRICS_CUSTOMER_ID,
    "capture_content": env.OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT,
    "budget_file": env.OTEL_COSTSPAN_BUDGET_FILE,
}
_FLAG_DEFAULTS: Mapping[str, bool] = {
    "stream_usage": True,
    "cost_compat": False,
    "metrics": True,
    "metrics_customer_id": False,
    "capture_content": False,
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _keys(raw: object) -> tuple[str, ...] | None:
    """Comma-separated names, from a variable or a keyword (a string or a sequence of names)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        names = raw.split(",")
    elif isinstance(raw, Iterable):
        names = [str(name) for name in raw]
    else:
        names = [str(raw)]
    return tuple(name.strip() for name in names if name.strip())


def _flag(raw: object, default: bool, name: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = "" if raw is None else str(raw).strip().lower()
    if not text:
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    logger.warning("costspan: %s=%r is neither true nor false; using %s.", name, raw, str(default).lower())
    return default


def _path(raw: object) -> str | None:
    text = str(raw).strip() if raw is not None else ""
    return text or None


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
        """Read the environment; any keyword given to ``instrument()`` wins over its variable. Both are read the
        same way: names split on commas, flags from true/false/1/0/yes/no/on/off, paths stripped."""
        e = os.environ if environ is None else environ
        raw = {
            name: overrides[name] if overrides.get(name) is not None else e.get(variable)
            for name, variable in _VARIABLES.items()
        }
        attribution_keys = _keys(raw["attribution_keys"]) or DEFAULT_ATTRIBUTION_KEYS
        required_keys = _keys(raw["required_keys"])
        on_missing = str(raw["on_missing"] or "record").strip().lower()
        if on_missing not in ON_MISSING_POLICIES:
            logger.error(
                "costspan: on_missing (%s) = %r is not one of %s; using 'record'.",
                env.OTEL_COSTSPAN_ON_MISSING,
                raw["on_missing"],
                ", ".join(ON_MISSING_POLICIES),
            )
            on_missing = "record"
        flags = {name: _flag(raw[name], default, _VARIABLES[name]) for name, default in _FLAG_DEFAULTS.items()}
        return cls(
            attribution_keys=attribution_keys,
            required_keys=attribution_keys if required_keys is None else required_keys,
            on_missing=on_missing,
            pricing_file=_path(raw["pricing_file"]),
            budget_file=_path(raw["budget_file"]),
            **flags,
        )
