"""costspan: which feature, route, customer and environment spent this money?

Every OpenAI SDK call becomes an OpenTelemetry CLIENT span carrying its tokens, its USD cost and the attribution
found in OpenTelemetry Baggage.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("costspan")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from costspan.attribution import CostspanRefusal, MissingAttributionError, attribute

__all__ = ["CostspanRefusal", "MissingAttributionError", "__version__", "attribute"]
