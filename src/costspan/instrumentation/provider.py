"""What a provider supplies to the instrumentation core, and nothing else.

A provider is a package under ``costspan.providers`` with a thin patch layer over its SDK. It reads each billable
request into a ``RequestInfo`` (its model, tier, stream flag, output limit, operation, and the ``RequestLimits``
budgets reserve), normalizes each response or stream into a ``ResponseSummary``, and hands both to ``Telemetry``.
The core never imports a provider; the instrumentor turns on each provider whose SDK is installed.
"""

from __future__ import annotations

from typing import Protocol

from costspan.instrumentation.call import Telemetry


class Provider(Protocol):
    """One LLM provider's SDK, instrumented on the core."""

    @property
    def sdk(self) -> str:
        """The importable package that turns this provider on; a missing SDK is not an error."""

    @property
    def instruments(self) -> str:
        """The SDK versions supported, as an ``instrumentation_dependencies`` requirement (``openai >= 1.40``)."""

    def instrument(self, telemetry: Telemetry) -> None:
        """Wrap the SDK methods that bill; each call then goes through ``telemetry``."""

    def uninstrument(self) -> None:
        """Undo ``instrument``."""
