"""costspan: which feature, route, customer and environment spent this money?

Every OpenAI SDK call becomes an OpenTelemetry CLIENT span carrying its tokens, its USD cost and the attribution
found in OpenTelemetry Baggage.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from costspan.attribution.baggage import CostspanRefusal, MissingAttributionError, attribute
    from costspan.attribution.middleware import CostspanASGIMiddleware, CostspanWSGIMiddleware
    from costspan.budgets.guard import BudgetExceeded, BudgetUnavailable, PromptTooLarge

    __version__: str

# Loaded on first use, so that `import costspan` (and so every `costspan` command) stays cheap: the budgets pull
# in the price data, the attribution OpenTelemetry, the version importlib.metadata.
_LAZY = {
    "attribute": "costspan.attribution.baggage",
    "CostspanRefusal": "costspan.attribution.baggage",
    "MissingAttributionError": "costspan.attribution.baggage",
    "BudgetExceeded": "costspan.budgets.guard",
    "BudgetUnavailable": "costspan.budgets.guard",
    "PromptTooLarge": "costspan.budgets.guard",
    "CostspanASGIMiddleware": "costspan.attribution.middleware",
    "CostspanWSGIMiddleware": "costspan.attribution.middleware",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _installed_version()
    elif name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'costspan' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("costspan")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


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
