"""costspan: which feature, route, customer and environment spent this money?

Every OpenAI SDK call becomes an OpenTelemetry CLIENT span carrying its tokens, its USD cost and the attribution
found in OpenTelemetry Baggage.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("costspan")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from typing import Any

from costspan.attribution.baggage import CostspanRefusal, MissingAttributionError, attribute

# Loaded on first use: they pull in the price data, which `import costspan` alone should not.
_LAZY = {
    "BudgetExceeded": "costspan.budgets.guard",
    "BudgetUnavailable": "costspan.budgets.guard",
    "PromptTooLarge": "costspan.budgets.guard",
    "CostspanASGIMiddleware": "costspan.attribution.middleware",
    "CostspanWSGIMiddleware": "costspan.attribution.middleware",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'costspan' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)


__all__ = [
    "BudgetExceeded",
    "BudgetUnavailable",
    "CostspanASGIMiddleware",
    "CostspanRefusal",
    "CostspanWSGIMiddleware",
    "MissingAttributionError",
    "PromptTooLarge",
    "__version__",
    "attribute",
]
