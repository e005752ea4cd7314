"""Anthropic (and Claude on Bedrock, Vertex AI and Foundry) on the instrumentation core: ``PROVIDER`` is what the
instrumentor turns on.

The SDK is imported only when instrumenting (``sdk.py``), so this package imports without ``anthropic`` installed.
"""

from __future__ import annotations

from collections.abc import Callable

from costspan.instrumentation.call import Telemetry


class AnthropicProvider:
    sdk = "anthropic"
    # The request layer costspan wraps (Stainless' SyncAPIClient.request, options.json_data) and the usage fields
    # it reads (cache_creation by lifetime) are in every release from 0.52 on (scripts/test-sdk-compat runs 0.52).
    instruments = "anthropic >= 0.52"

    def __init__(self) -> None:
        self._restore_sdk_spans: Callable[[], None] | None = None

    def instrument(self, telemetry: Telemetry) -> None:
        from wrapt import wrap_function_wrapper

        from costspan.providers.anthropic.batches import BatchReads
        from costspan.providers.anthropic.patch import silence_sdk_spans, wrap_async_request, wrap_sync_request
        from costspan.providers.anthropic.sdk import AsyncAPIClient, SyncAPIClient

        # The request layer, not each resource method: every surface and helper is seen, retries stay in one span.
        batches = BatchReads(telemetry)  # shared by sync and async clients: a batch read by either counts once
        wrap_function_wrapper(SyncAPIClient, "request", wrap_sync_request(telemetry, batches))
        wrap_function_wrapper(AsyncAPIClient, "request", wrap_async_request(telemetry, batches))
        self._restore_sdk_spans = silence_sdk_spans()

    def uninstrument(self) -> None:
        from opentelemetry.instrumentation.utils import unwrap

        from costspan.providers.anthropic.sdk import AsyncAPIClient, SyncAPIClient

        unwrap(SyncAPIClient, "request")
        unwrap(AsyncAPIClient, "request")
        if self._restore_sdk_spans is not None:
            self._restore_sdk_spans()
            self._restore_sdk_spans = None


PROVIDER = AnthropicProvider()
