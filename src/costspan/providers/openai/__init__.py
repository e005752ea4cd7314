"""OpenAI and Azure OpenAI on the instrumentation core: ``PROVIDER`` is what the instrumentor turns on.

The SDK is imported only when instrumenting (``sdk.py``), so this package imports without ``openai`` installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# For the annotation only: `costspan reconcile` imports this package's reconcile module, and the instrumentation
# core would bring OpenTelemetry and the price data with it.
if TYPE_CHECKING:
    from costspan.instrumentation.call import Telemetry


class OpenAIProvider:
    sdk = "openai"
    instruments = "openai >= 1.40"

    def instrument(self, telemetry: Telemetry) -> None:
        from wrapt import wrap_function_wrapper

        from costspan.providers.openai.patch import wrap_async_request, wrap_sync_request
        from costspan.providers.openai.sdk import AsyncAPIClient, SyncAPIClient

        # The request layer, not each resource method: every surface and helper is seen, retries stay in one span.
        wrap_function_wrapper(SyncAPIClient, "request", wrap_sync_request(telemetry))
        wrap_function_wrapper(AsyncAPIClient, "request", wrap_async_request(telemetry))

    def uninstrument(self) -> None:
        from opentelemetry.instrumentation.utils import unwrap

        from costspan.providers.openai.sdk import AsyncAPIClient, SyncAPIClient

        unwrap(SyncAPIClient, "request")
        unwrap(AsyncAPIClient, "request")


PROVIDER = OpenAIProvider()
