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
    "high_cardinality_keys": env.OTEL_COSTSPAN_HIGH_CARDINALITY_KEYS,
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
# Attribution keys kept off metric attributes unless configured otherwise: a series per customer is too many.
DEFAULT_HIGH_CARDINALITY_KEYS = ("customer_id",)
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


def attribution_keys_in_force(environ: Mapping[str, str] | None = None, keyword: object = None) -> tuple[str, ...]:
    """The attribution keys in force: the ``attribution_keys`` keyword of ``instrument()``, else
    ``OTEL_COSTSPAN_ATTRIBUTION_KEYS``, else the defaults. The instrumentor, the store exporter, ``costspan serve``,
    the CLI and budget files all ask here, so that a key configured once is copied, stored, reported and budgeted."""
    if keyword is None:
        keyword = (os.environ if environ is None else environ).get(env.OTEL_COSTSPAN_ATTRIBUTION_KEYS)
    return _keys(keyword) or DEFAULT_ATTRIBUTION_KEYS


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
    high_cardinality_keys: tuple[str, ...] = DEFAULT_HIGH_CARDINALITY_KEYS
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
        keys = attribution_keys_in_force(e, overrides.get("attribution_keys"))
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
            attribution_keys=keys,
            required_keys=keys if required_keys is None else required_keys,
            high_cardinality_keys=_keys(raw["high_cardinality_keys"]) or DEFAULT_HIGH_CARDINALITY_KEYS,
            on_missing=on_missing,
            pricing_file=_path(raw["pricing_file"]),
            budget_file=_path(raw["budget_file"]),
            **flags,
        )

    @property
    def metric_attribution_keys(self) -> tuple[str, ...]:
        """The attribution keys the cost metric carries: every one in force but the high-cardinality ones, of
        which ``metrics_customer_id`` lets ``customer_id`` back on."""
        off = set(self.high_cardinality_keys) - ({"customer_id"} if self.metrics_customer_id else set())
        return tuple(key for key in self.attribution_keys if key not in off)
