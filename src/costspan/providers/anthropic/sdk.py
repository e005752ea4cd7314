"""The Anthropic SDK's classes that costspan patches or recognizes, in one place.

Some live in private modules (``anthropic._*``) that move between releases, so they are imported here and nowhere
else, and only when instrumenting (the SDK is an optional dependency).
"""

from typing import Any

from anthropic import (
    AnthropicBedrock,
    AnthropicVertex,
    APIResponse,
    AsyncAnthropicBedrock,
    AsyncAnthropicVertex,
    AsyncAPIResponse,
    AsyncStream,
    BaseModel,
    NotGiven,
    Omit,
    Stream,
)
from anthropic._base_client import AsyncAPIClient, BaseClient, SyncAPIClient
from anthropic._decoders.jsonl import AsyncJSONLDecoder, JSONLDecoder

try:  # the Microsoft Foundry clients arrived in later releases
    from anthropic import AnthropicFoundry, AsyncAnthropicFoundry

    FOUNDRY_CLIENTS: tuple[type, ...] = (AnthropicFoundry, AsyncAnthropicFoundry)
except ImportError:  # pragma: no cover - older SDKs
    FOUNDRY_CLIENTS = ()

try:  # what with_raw_response returns in older releases (0.52 among them); later ones return an APIResponse
    from anthropic._legacy_response import LegacyAPIResponse

    LEGACY_RESPONSES: tuple[type[Any], ...] = (LegacyAPIResponse,)
except ImportError:  # pragma: no cover - newer SDKs
    LEGACY_RESPONSES = ()

# The SDK's placeholders for arguments not given: they sit in the request body until it is serialized.
UNSET_TYPES: tuple[type, ...] = (Omit, NotGiven)
BEDROCK_CLIENTS: tuple[type, ...] = (AnthropicBedrock, AsyncAnthropicBedrock)
VERTEX_CLIENTS: tuple[type, ...] = (AnthropicVertex, AsyncAnthropicVertex)

__all__ = [
    "BEDROCK_CLIENTS",
    "FOUNDRY_CLIENTS",
    "LEGACY_RESPONSES",
    "UNSET_TYPES",
    "VERTEX_CLIENTS",
    "APIResponse",
    "AsyncAPIClient",
    "AsyncAPIResponse",
    "AsyncJSONLDecoder",
    "AsyncStream",
    "BaseClient",
    "BaseModel",
    "JSONLDecoder",
    "Stream",
    "SyncAPIClient",
]
