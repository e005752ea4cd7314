"""Attribution: which feature, route, customer and environment a call belongs to, read from Baggage."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from opentelemetry import baggage, context, trace

from costspan.config import Settings
from costspan.semconv import DEPLOYMENT_ENVIRONMENT_NAME

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class CostspanRefusal(Exception):
    """Base of the errors costspan raises on purpose, before any request is sent."""


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


@contextlib.contextmanager
def _attributed(values: dict[str, str]) -> Iterator[None]:
    ctx = context.get_current()
    for key, value in values.items():
        ctx = baggage.set_baggage(key, value, ctx)
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


class attribute(contextlib.ContextDecorator):
    """Attribute the OpenAI calls made inside a block or function, e.g. in a cron job or queue worker::

        with costspan.attribute(feature="nightly-summarize", route="cron:nightly-summarize",
                                customer_id="system"):
            ...

    Use explicit values such as ``system`` or ``internal`` rather than leaving a key unset.
    """

    def __init__(self, **values: str) -> None:
        bad = [key for key, value in values.items() if not isinstance(value, str) or not value]
        if bad:
            raise ValueError(f"costspan.attribute: give non-empty string values; bad keys: {', '.join(bad)}")
        self.values = values
        self._stack: list[contextlib.AbstractContextManager[None]] = []

    def __enter__(self) -> attribute:
        manager = _attributed(self.values)
        manager.__enter__()
        self._stack.append(manager)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.pop().__exit__(*exc)  # type: ignore[arg-type]

    def _recreate_cm(self) -> attribute:
        # A fresh instance per decorated call, so concurrent threads never share one stack.
        return attribute(**self.values)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with _attributed(self.values):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]
        return super().__call__(func)
