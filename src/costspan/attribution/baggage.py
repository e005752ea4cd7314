"""Attribution: which feature, route, customer and environment a call belongs to, read from Baggage."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import baggage, context, trace

from costspan.config import Settings
from costspan.semconv import DEPLOYMENT_ENVIRONMENT_NAME

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class CostspanRefusal(Exception):
    """Base of the errors costspan raises on purpose, before any request is sent.

    A refusal the API's caller can act on says how to answer it over HTTP (the middleware does); one that is the
    app's own bug (missing attribution) has no ``http_status`` and stays a server error.
    """

    http_status: int | None = None
    retry_after_s: int | None = None
    error_code = "ai_refused"
    client_message = "The request was refused."


class MissingAttributionError(CostspanRefusal):
    """A call lacked required attribution keys while ``on_missing`` is ``raise``."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            "costspan refused an OpenAI call before sending it: attribution baggage is missing "
            f"{', '.join(missing)}. Set it in request middleware or with `costspan.attribute(...)`, "
            "or relax OTEL_COSTSPAN_ON_MISSING (record|warn|raise)."
        )


class Attributor:
    """Reads the configured baggage keys at call time, and applies the on-missing policy."""

    WARN_INTERVAL_S = 60.0

    def __init__(self, settings: Settings, tracer_provider: Any = None) -> None:
        self.keys = settings.attribution_keys
        self.required = settings.required_keys
        self.policy = settings.on_missing
        self._environment_fallback = "environment" in self.keys
        self._tracer_provider = tracer_provider
        self._last_warning = 0.0

    def _resource_environment(self) -> str | None:
        provider = self._tracer_provider or trace.get_tracer_provider()
        resource = getattr(provider, "resource", None)
        attributes = getattr(resource, "attributes", None) or {}
        value = attributes.get(DEPLOYMENT_ENVIRONMENT_NAME) or attributes.get("deployment.environment")
        return str(value) if value else None

    @property
    def refuses_missing(self) -> bool:
        return self.policy == "raise"

    def collect(self) -> tuple[dict[str, str], list[str]]:
        """Attribution of the current context, and the required keys it lacks (logged if the policy is warn)."""
        entries = baggage.get_all()
        found = {}
        for key in self.keys:  # a loop, not a comprehension: this runs on every call
            value = entries.get(key)
            if value is not None:
                found[key] = value if type(value) is str else str(value)
        if self._environment_fallback and "environment" not in found:
            environment = self._resource_environment()
            if environment:
                found["environment"] = environment
        if not self.required:
            return found, []
        missing = [key for key in self.required if key not in found]
        if missing and self.policy == "warn":
            now = time.monotonic()
            if now - self._last_warning >= self.WARN_INTERVAL_S:
                self._last_warning = now
                logger.warning("costspan: OpenAI call without attribution for %s", ", ".join(missing))
        return found, missing


# The open ``attribute`` blocks of the current thread or task, innermost last, with the context token each one
# restores. A ContextVar, not a list on the instance, so that blocks of one instance never see each other.
_open_blocks: ContextVar[tuple[tuple[attribute, Any], ...]] = ContextVar("costspan_attribute_blocks", default=())


class attribute(contextlib.ContextDecorator):
    """Attribute the OpenAI calls made inside a block or function, e.g. in a cron job or queue worker::

        with costspan.attribute(feature="nightly-summarize", route="cron:nightly-summarize",
                                customer_id="system"):
            ...

    Use explicit values such as ``system`` or ``internal`` rather than leaving a key unset. One instance may be
    entered by several threads or tasks at once (a module-level decorator or constant): each block restores its
    own thread's or task's context.
    """

    def __init__(self, **values: str) -> None:
        bad = [key for key, value in values.items() if not isinstance(value, str) or not value]
        if bad:
            raise ValueError(f"costspan.attribute: give non-empty string values; bad keys: {', '.join(bad)}")
        self.values = values

    def __enter__(self) -> attribute:
        ctx = context.get_current()
        for key, value in self.values.items():
            ctx = baggage.set_baggage(key, value, ctx)
        token = context.attach(ctx)
        _open_blocks.set((*_open_blocks.get(), (self, token)))
        return self

    def __exit__(self, *exc: object) -> None:
        blocks = _open_blocks.get()
        for i in range(len(blocks) - 1, -1, -1):  # this instance's innermost block in this thread or task
            if blocks[i][0] is self:
                _open_blocks.set(blocks[:i] + blocks[i + 1 :])
                context.detach(blocks[i][1])
                return

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]
        return super().__call__(func)
