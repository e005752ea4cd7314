"""The OpenAI SDK's classes that costspan patches or recognizes, in one place.

Several live in private modules (``openai._*``) that move between releases, so they are imported here and
nowhere else, and only when instrumenting (the SDK is an optional dependency). ``scripts/test-sdk-compat`` runs
the instrumentation tests on openai 1.x and 2.x; the main suite runs the current 3.x.
"""

from openai import APIResponse, AsyncAPIResponse, AsyncStream, BaseModel, Stream
from openai._base_client import AsyncAPIClient, SyncAPIClient
from openai._constants import RAW_RESPONSE_HEADER
from openai._legacy_response import LegacyAPIResponse
from openai.lib.azure import BaseAzureClient

__all__ = [
    "RAW_RESPONSE_HEADER",
    "APIResponse",
    "AsyncAPIClient",
    "AsyncAPIResponse",
    "AsyncStream",
    "BaseAzureClient",
    "BaseModel",
    "LegacyAPIResponse",
    "Stream",
    "SyncAPIClient",
]
