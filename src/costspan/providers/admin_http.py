"""One page of a provider's admin report, read over stdlib HTTP for ``costspan reconcile``.

Stdlib HTTP, so it works whichever provider SDK and ``httpx`` versions are installed, and is never instrumented.
Every failure is a ``ReconcileError`` whose message says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from costspan.reports.reconcile import ReconcileError

if TYPE_CHECKING:
    import urllib.error


def get_page(
    base_url: str,
    path: str,
    params: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    refused: Callable[[int, str], str],
) -> dict[str, Any]:
    """GET ``base_url/path?params`` and return its JSON object. ``refused(status, said)`` words the error for a
    401 or 403 (a key that is not an admin key); ``said`` is the provider's own message in parentheses, or empty."""
    # The HTTP client (and the ssl and email modules under it) only when reading a bill: parsing any `costspan`
    # command imports the provider modules for their defaults.
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{base_url}/{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        request = urllib.request.Request(url, headers=dict(headers))
    except ValueError as error:
        raise ReconcileError(f"--base-url {base_url!r} is not a URL ({error})") from None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            page = json.load(response)
    except urllib.error.HTTPError as error:
        said = _message(error)
        if error.code in (401, 403):
            raise ReconcileError(refused(error.code, said)) from None
        raise ReconcileError(f"{path} answered HTTP {error.code}{said}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ReconcileError(
            f"cannot reach {base_url} ({reason}); check the network, or --base-url for a proxy"
        ) from None
    except http.client.HTTPException as error:  # the answer broke off, or was not HTTP
        raise ReconcileError(f"{base_url}/{path} broke off its answer ({error!r}); try again") from None
    except ValueError:
        raise ReconcileError(f"{base_url}/{path} did not answer JSON; is --base-url the API?") from None
    if not isinstance(page, dict):
        raise ReconcileError(f"{base_url}/{path} answered JSON that is not a page; is --base-url the API?")
    return page


def _message(error: urllib.error.HTTPError) -> str:
    """The provider's error message, `` (message)``; both OpenAI and Anthropic put it at ``error.message``."""
    try:
        message = json.loads(error.read()).get("error", {}).get("message") or ""
    except (ValueError, AttributeError):
        message = ""
    return f" ({message})" if message else ""
