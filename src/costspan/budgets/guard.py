"""Budget caps, enforced before the call: reserve the worst case, refuse past the cap, settle to the real cost.

A ``BudgetGuard`` is a ``CallGuard`` (see ``costspan.instrumentation.call``): ``instrument(guards=[guard])``, or set
``OTEL_COSTSPAN_BUDGET_FILE``. For every OpenAI call it

1. estimates the prompt locally (no network) and applies the prompt-size guardrail;
2. finds the budgets that cover the call's attribution (any attribution keys in force: customer, feature, ...);
3. reserves the call's worst-case cost in a shared ledger, atomically against the cap, and raises
   ``BudgetExceeded`` when that would cross it: the most the request can bill (``worst_case_usage``), priced by the
   same ``Pricer.price`` as the span;
4. once the call is over, settles the reservation to the real cost (zero when the call failed) and fires the
   threshold alerts, once per window.

A finished Batch job, which nothing checks before it runs, is charged to its creator's budgets (``charge``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opentelemetry import metrics, trace

from costspan import environment_variables as env
from costspan import semconv
from costspan.attribution.baggage import CostspanRefusal
from costspan.budgets.ledger import Ledger, Reservation, open_ledger, to_nano, to_usd
from costspan.config import attribution_keys_in_force
from costspan.instrumentation.call import RequestInfo
from costspan.money import usd_column
from costspan.pricing.pricer import Cost, Pricer, billed_tier, provider_price_id

logger = logging.getLogger("costspan")

WINDOWS = ("hourly", "daily", "monthly")
LEDGER_POLICIES = ("open", "closed")
DEFAULT_THRESHOLDS = (Decimal("0.8"), Decimal("1"))
# The output ceiling assumed for a model MODEL_OUTPUT_CEILINGS lacks: the most any OpenAI model documents
# (gpt-5-pro), so that a call without an output limit cannot bill more than it reserved.
MAX_OUTPUT_TOKENS = 272_000
PROMPT_WARN_TOKENS = 250_000  # under the 272K step where some models switch to a higher price
EXPIRY_GRACE_S = 3_600  # a window's counters outlive it by this much, so calls that straddle its end settle
UNAVAILABLE_RETRY_AFTER_S = 30
_UNCAPPED = 2**53 - 1  # nano-dollars; exact in Redis' Lua numbers
_WARN_INTERVAL_S = 60.0


class BudgetExceeded(CostspanRefusal):
    """The call's worst-case cost would cross a budget's cap. Raised before anything is sent.

    ``error_code`` and ``client_message`` are what an API should tell its caller (the middleware answers 429 with
    them); ``str(exc)`` is for the developer and carries the figures.
    """

    http_status = 429

    def __init__(
        self,
        budget: Budget,
        window: Window,
        *,
        used_usd: Decimal,
        requested_usd: Decimal,
        retry_after_s: int,
    ) -> None:
        self.budget = budget
        self.window = window
        self.used_usd = used_usd
        self.requested_usd = requested_usd
        self.retry_after_s = retry_after_s
        self.error_code = f"{window.kind}_ai_quota_exceeded"
        self.client_message = f"Your {window.kind} AI quota has been exceeded. Upgrade your plan or contact billing."
        used, limit, requested = usd_column([used_usd, budget.limit_usd, requested_usd])
        super().__init__(
            f"costspan refused an OpenAI call before sending it: budget {budget.name!r} has used "
            f"{used} of {limit} in the {window.kind} window that ends {window.end.isoformat()}, "
            f"and this call could cost up to {requested}. Catch costspan.BudgetExceeded (the middleware "
            "answers 429), or raise the cap in the budget file."
        )


class BudgetUnavailable(CostspanRefusal):
    """The ledger could not be reached and the budget file says ``on_ledger_error = "closed"``."""

    http_status = 503

    error_code = "ai_budget_unavailable"
    client_message = "AI features are briefly unavailable. Please retry shortly."
    retry_after_s = UNAVAILABLE_RETRY_AFTER_S

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"costspan refused an OpenAI call before sending it: the budget ledger is unreachable ({reason}) and "
            'on_ledger_error is "closed". Fix the ledger, or set on_ledger_error = "open" to let calls through.'
        )


class PromptTooLarge(CostspanRefusal):
    """The prompt is estimated above the configured hard limit (``prompt_refuse_tokens``)."""

    http_status = 413
    error_code = "ai_prompt_too_large"
    client_message = "The request is too large."

    def __init__(self, estimated_tokens: int, limit: int) -> None:
        self.estimated_tokens = estimated_tokens
        self.limit = limit
        super().__init__(
            f"costspan refused an OpenAI call before sending it: the prompt is about {estimated_tokens:,} tokens, "
            f"above prompt_refuse_tokens = {limit:,}. Shorten it, or raise the limit in the budget file."
        )


class BudgetFileError(ValueError):
    """The budget file cannot be used; the message says which entry and what to change."""


# --- windows --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    kind: str
    start: datetime
    end: datetime

    id: str = field(init=False)  # e.g. "monthly@2026-11-01T00:00:00+01:00": part of the ledger key

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.kind}@{self.start.isoformat()}")


def window_at(kind: str, now: datetime, tz: ZoneInfo) -> Window:
    """The calendar window of ``kind`` that contains ``now``, in the time zone ``tz``."""
    local = now.astimezone(tz)
    if kind == "hourly":
        start = local.replace(minute=0, second=0, microsecond=0)
        # In UTC, so that the hour a DST change repeats or skips is still one hour long.
        return Window(kind, start, (start.astimezone(UTC) + timedelta(hours=1)).astimezone(tz))
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
    if kind == "daily":
        following = midnight.date() + timedelta(days=1)
        return Window(kind, midnight, datetime(following.year, following.month, following.day, tzinfo=tz))
    if kind == "monthly":
        first = midnight.replace(day=1)
        year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
        return Window(kind, first, datetime(year, month, 1, tzinfo=tz))
    raise ValueError(f"unknown budget window {kind!r}; use one of {', '.join(WINDOWS)}")


# --- the budget file ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """A cap on spend over a window, for the calls whose attribution matches ``scope``.

    ``scope`` maps one or more attribution keys (``customer_id``, ``feature``, ``tenant``, ...) to a value; ``*``
    gives every value its own cap. For one call, an exact entry wins over a ``*`` entry of the same keys and window.
    """

    scope: Mapping[str, str]
    window: str
    limit_usd: Decimal
    tz: ZoneInfo = ZoneInfo("UTC")  # noqa: RUF009 - immutable, and ZoneInfo caches instances
    thresholds: tuple[Decimal, ...] = DEFAULT_THRESHOLDS
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            scope = ", ".join(f"{k}={v}" for k, v in self.scope.items())
            object.__setattr__(self, "name", f"{self.window} {scope}")


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """Spend in a window reached ``threshold`` of a budget's cap (1 = the cap; also sent on the first refusal)."""

    budget: Budget
    subject: Mapping[str, str]  # the attribution values this window counts, e.g. {"customer_id": "acme"}
    window: Window
    threshold: Decimal
    spent_usd: Decimal

    @property
    def percent(self) -> str:
        return f"{(self.threshold * 100).normalize():f}%"


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise BudgetFileError(f"{what} must be a number, not {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise BudgetFileError(f"{what} must be a number, not {value!r}") from None
    if not number.is_finite() or number < 0:
        raise BudgetFileError(f"{what} must be a non-negative number, not {value!r}")
    return number


def _zone(name: Any, what: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise BudgetFileError(f"{what}: unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from None


def _thresholds(raw: Any, what: str) -> tuple[Decimal, ...]:
    if not isinstance(raw, list) or not raw:
        raise BudgetFileError(f"{what}: alert_thresholds must be a list of fractions such as [0.8, 1.0]")
    return tuple(sorted(_decimal(t, f"{what}: alert threshold") for t in raw))


def _positive_int(raw: Any, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise BudgetFileError(f"{what} must be a non-negative whole number, not {raw!r}")
    return raw


def _read(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BudgetFileError(f"cannot read budget file {path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise BudgetFileError(f"{path}: YAML budget files need PyYAML (pip install pyyaml)") from None
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except BudgetFileError:
        raise
    except Exception as exc:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "TOML"
        raise BudgetFileError(f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(data, Mapping):
        raise BudgetFileError(f"{path}: expected a table of settings and [[budget]] entries")
    return data


_TOP_LEVEL = frozenset(
    {
        "ledger",
        "on_ledger_error",
        "timezone",
        "alert_thresholds",
        "default_max_output_tokens",
        "max_output_tokens",
        "prompt_warn_tokens",
        "prompt_refuse_tokens",
        "budget",
    }
)
# An entry's settings; its other keys are its scope, each one an attribution key in force.
_ENTRY = frozenset({"name", "window", "limit_usd", "timezone", "alert_thresholds"})


def parse_budgets(
    data: Mapping[str, Any], source: str = "budget file", attribution_keys: Sequence[str] | None = None
) -> tuple[dict[str, Any], list[Budget]]:
    """Validate a loaded budget file: the guard's keyword arguments, and the budgets. A budget scopes on
    ``attribution_keys`` (default: the keys in force, ``costspan.config.attribution_keys_in_force``)."""
    keys = attribution_keys_in_force(keyword=attribution_keys)
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise BudgetFileError(f"{source}: unknown setting(s) {', '.join(sorted(unknown))}")
    tz = _zone(data.get("timezone", "UTC"), source)
    thresholds = _thresholds(data["alert_thresholds"], source) if "alert_thresholds" in data else DEFAULT_THRESHOLDS
    options: dict[str, Any] = {}
    policy = data.get("on_ledger_error", "open")
    if policy not in LEDGER_POLICIES:
        raise BudgetFileError(f'{source}: on_ledger_error must be "open" or "closed", not {policy!r}')
    options["on_ledger_error"] = policy
    if "default_max_output_tokens" in data:
        logger.warning(
            "costspan: %s: default_max_output_tokens is no longer used (a call without an output limit reserves "
            "its model's output ceiling, see docs/budgets.md); delete it",
            source,
        )
    for key in ("max_output_tokens", "prompt_warn_tokens", "prompt_refuse_tokens"):
        if key in data:
            options[key] = _positive_int(data[key], f"{source}: {key}")
    entries = data.get("budget", [])
    if not isinstance(entries, list):
        raise BudgetFileError(f"{source}: budgets are a list of [[budget]] tables")
    budgets = []
    for i, entry in enumerate(entries, 1):
        what = f"{source}: budget #{i}"
        if not isinstance(entry, Mapping):
            raise BudgetFileError(f"{what} is not a table")
        # Sorted, so that a scope's ledger keys and name do not depend on the order the file lists it in.
        scope_keys = sorted(set(entry) - _ENTRY)
        foreign = [key for key in scope_keys if key not in keys]
        if foreign:
            raise BudgetFileError(
                f"{what}: unknown key(s) {', '.join(foreign)}; a budget scopes on the attribution keys in force "
                f"({', '.join(keys)}; set by {env.OTEL_COSTSPAN_ATTRIBUTION_KEYS})"
            )
        scope = {key: str(entry[key]) for key in scope_keys}
        if not scope or any(not value for value in scope.values()):
            raise BudgetFileError(
                f'{what}: scope it on one or more of {", ".join(keys)} (a value, or "*" for each one)'
            )
        window = entry.get("window", "monthly")
        if window not in WINDOWS:
            raise BudgetFileError(f"{what}: window must be one of {', '.join(WINDOWS)}, not {window!r}")
        if "limit_usd" not in entry:
            raise BudgetFileError(f"{what}: limit_usd is required")
        budgets.append(
            Budget(
                scope=scope,
                window=window,
                limit_usd=_decimal(entry["limit_usd"], f"{what}: limit_usd"),
                tz=_zone(entry["timezone"], what) if "timezone" in entry else tz,
                thresholds=_thresholds(entry["alert_thresholds"], what) if "alert_thresholds" in entry else thresholds,
                name=str(entry.get("name") or ""),
            )
        )
    return options, budgets


def ledger_url(data: Mapping[str, Any]) -> str:
    """The file's ``ledger``; ``$NAME`` reads it from that environment variable, keeping credentials out."""
    raw = str(data.get("ledger", "sqlite"))
    if raw.startswith("$"):
        value = os.environ.get(raw[1:])
        if not value:
            raise BudgetFileError(f"ledger = {raw!r}, but the environment variable {raw[1:]} is not set")
        return value
    return raw


def load_budgets(path: str | Path, attribution_keys: Sequence[str] | None = None) -> list[Budget]:
    """The budgets a TOML or YAML budget file sets (see docs/budgets.md). Raises ``BudgetFileError``."""
    path = Path(path)
    return parse_budgets(_read(path), str(path), attribution_keys)[1]


def load_budget_guard(path: str | Path, attribution_keys: Sequence[str] | None = None, **overrides: Any) -> BudgetGuard:
    """A ``BudgetGuard`` from a TOML or YAML budget file (see docs/budgets.md), scoping on ``attribution_keys``
    (default: the keys in force). Raises ``BudgetFileError``."""
    path = Path(path)
    data = _read(path)
    options, budgets = parse_budgets(data, str(path), attribution_keys)
    ledger = overrides.pop("ledger", None) or open_ledger(ledger_url(data))
    return BudgetGuard(budgets, ledger, **{**options, **overrides})


# --- estimating a call before it is sent -----------------------------------------------------------------------


# --- the worst case: what a request can bill --------------------------------------------------------------------


def tiers_to_reserve(service_tier: str | None) -> tuple[str | None, ...]:
    """The service tiers a request may run (and bill) at. ``auto`` runs at the project's tier, which may be
    priority: reserve the dearer of standard and priority."""
    if service_tier == "auto":
        return (None, "priority")
    return (billed_tier(service_tier),)


# --- the guard --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    budget: Budget
    subject: Mapping[str, str]
    window: Window
    cap: int
    reservation: Reservation


@functools.lru_cache(maxsize=4096)
def _ledger_key(subject: tuple[tuple[str, str], ...], window_id: str) -> str:
    scope = "|".join(f"{k}={quote(v, safe='')}" for k, v in subject)
    return f"{scope}|{window_id}"


class BudgetGuard:
    """Enforces budgets for every instrumented call (a ``CallGuard``). Thread-safe; one per process."""

    def __init__(
        self,
        budgets: Iterable[Budget],
        ledger: Ledger,
        *,
        pricer: Pricer | None = None,
        on_ledger_error: str = "open",
        max_output_tokens: int = MAX_OUTPUT_TOKENS,
        prompt_warn_tokens: int = PROMPT_WARN_TOKENS,
        prompt_refuse_tokens: int = 0,
        on_alert: Callable[[BudgetAlert], None] | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if on_ledger_error not in LEDGER_POLICIES:
            raise ValueError(f'on_ledger_error must be "open" or "closed", not {on_ledger_error!r}')
        self.budgets = tuple(budgets)
        self.ledger = ledger
        self.blocking = getattr(ledger, "blocking", True)  # see CallGuard: async calls admit and settle off the loop
        self.pricer = pricer or Pricer()
        self.fail_closed = on_ledger_error == "closed"
        self.max_output_tokens = max_output_tokens
        self.prompt_warn_tokens = prompt_warn_tokens
        self.prompt_refuse_tokens = prompt_refuse_tokens
        self.on_alert = on_alert
        self.clock = clock
        self.ledger_errors = 0  # calls let through (or refused, when closed) because the ledger failed
        self._ledger_error_counter = metrics.get_meter(__name__, meter_provider=meter_provider).create_counter(
            semconv.METRIC_BUDGET_LEDGER_ERRORS,
            unit="{call}",
            description="Budget checks or settlements that failed because the ledger was unreachable",
        )
        self._lock = threading.Lock()
        self._last_warning: dict[str, float] = {}
        self._alerted: set[tuple[str, str]] = set()
        self._caps = {id(budget): to_nano(budget.limit_usd) for budget in self.budgets}
        self._windows: dict[tuple[str, str], tuple[Window, float]] = {}
        # (scope keys, window) -> {scope values, "*" allowed -> budget}: a call finds its budgets by lookups.
        self._index: dict[tuple[tuple[str, ...], str], dict[tuple[str, ...], Budget]] = {}
        for budget in self.budgets:
            shape = (tuple(sorted(budget.scope)), budget.window)  # sorted: as parse_budgets, for the ledger keys
            self._index.setdefault(shape, {})[tuple(budget.scope[k] for k in shape[0])] = budget

    # -- the CallGuard protocol --

    def admit(self, request: RequestInfo, attribution: Mapping[str, str]) -> Callable[[Cost | None], None] | None:
        span = trace.get_current_span()  # the call's span: _call runs guards inside it
        input_tokens = request.limits.estimate_input_tokens(request)
        self._check_prompt_size(input_tokens, span)
        matches = self.matching(attribution)
        if not matches:
            return None
        now = self.clock()
        worst = self.worst_case(request, input_tokens, now)
        amount = to_nano(worst) if worst is not None else 0
        held: list[_Held] = []
        for budget, subject in matches:
            window, expires_at = self._window(budget, now)
            key = _ledger_key(tuple(subject.items()), window.id)
            cap = self._caps[id(budget)]
            try:
                reservation, used = self.ledger.reserve(key, amount, cap, expires_at)
            except Exception as exc:
                self._ledger_failed(exc, span, held)
                continue
            if reservation is None:
                self._release(held)
                raise self._refusal(budget, subject, window, key, used, amount, now, span)
            held.append(_Held(budget, subject, window, cap, reservation))
        if not held:
            return None
        return functools.partial(self._settle, held, span)

    def charge(self, attribution: Mapping[str, str], charge_id: str, cost: Cost | None) -> None:
        """Count a cost billed without a reservation (a finished Batch job) in every budget that covers its
        attribution, in the window current now, once per ``charge_id`` across replicas. It may carry spend past a
        cap (nothing was checked before it ran): the calls that follow are refused."""
        if cost is None or cost.total is None:
            return  # not billed, or by an unknown amount: nothing was reserved that could stand for it
        span = trace.get_current_span()
        now = self.clock()
        held: list[_Held] = []
        for budget, subject in self.matching(attribution):
            window, expires_at = self._window(budget, now)
            key = _ledger_key(tuple(subject.items()), window.id)
            try:
                if not self.ledger.claim_alert(key, f"charge {charge_id}", expires_at):
                    continue  # another replica polling the same job counted it
                # The ledger's own atomic steps, with no cap: a zero reservation, settled to the cost below.
                reservation, _ = self.ledger.reserve(key, 0, _UNCAPPED, expires_at)
            except Exception as exc:
                self._count_ledger_error(exc, "charge")
                self._warn("charge", "costspan: could not charge %s to a budget: %s", charge_id, exc)
                continue
            if reservation is not None:
                held.append(_Held(budget, subject, window, self._caps[id(budget)], reservation))
        self._settle(held, span, cost)

    # -- the parts --

    def _window(self, budget: Budget, now: datetime) -> tuple[Window, float]:
        """The budget's current window and when its counters expire; computed once per window."""
        cache_key = (budget.window, budget.tz.key)
        cached = self._windows.get(cache_key)
        if cached is not None and cached[0].start <= now < cached[0].end:
            return cached
        window = window_at(budget.window, now, budget.tz)
        fresh = (window, window.end.timestamp() + EXPIRY_GRACE_S)
        self._windows[cache_key] = fresh
        return fresh

    def matching(self, attribution: Mapping[str, str]) -> list[tuple[Budget, dict[str, str]]]:
        """The budgets that cover a call, each with the attribution values its window counts."""
        found = []
        for (keys, _window), table in self._index.items():
            values = [attribution.get(k) or "" for k in keys]
            if not all(values):
                continue  # no cap applies to a call that lacks the key (use required attribution for that)
            for candidate in itertools.product(*((v, "*") for v in values)):
                budget = table.get(candidate)
                if budget is not None:
                    found.append((budget, dict(zip(keys, values, strict=True))))
                    break
        return found

    def worst_case(self, request: RequestInfo, input_tokens: int, at: datetime) -> Decimal | None:
        """The most the call can cost in dollars, priced as the span prices it; None when its price is unknown."""
        if not request.model:
            return None
        model = request.model
        usage = request.limits.worst_case_usage(request, input_tokens, self.max_output_tokens)
        provider = provider_price_id(request.provider)

        def price(tier: str | None) -> Decimal | None:
            return self.pricer.price(usage, model, at=at, provider=provider, service_tier=tier).total

        totals = [total for tier in tiers_to_reserve(request.service_tier) if (total := price(tier)) is not None]
        # A tier the price data does not know for this model: its standard price.
        worst = max(totals) if totals else price(None)
        if worst is None:
            self._warn("price:" + model, "costspan: no price for %r; budgets count its calls as $0", model)
        return worst

    def _check_prompt_size(self, tokens: int, span: Any) -> None:
        if self.prompt_warn_tokens and tokens >= self.prompt_warn_tokens:
            span.add_event(
                semconv.EVENT_PROMPT_LARGE,
                {
                    semconv.COSTSPAN_PROMPT_ESTIMATED_TOKENS: tokens,
                    semconv.COSTSPAN_PROMPT_LIMIT: self.prompt_warn_tokens,
                },
            )
            self._warn(
                "prompt",
                "costspan: a prompt of about %s tokens crossed prompt_warn_tokens = %s (price steps up past 272K "
                "on some models)",
                f"{tokens:,}",
                f"{self.prompt_warn_tokens:,}",
            )
        if self.prompt_refuse_tokens and tokens > self.prompt_refuse_tokens:
            raise PromptTooLarge(tokens, self.prompt_refuse_tokens)

    def _refusal(
        self,
        budget: Budget,
        subject: Mapping[str, str],
        window: Window,
        key: str,
        used: int,
        amount: int,
        now: datetime,
        span: Any,
    ) -> BudgetExceeded:
        span.add_event(
            semconv.EVENT_BUDGET_EXCEEDED,
            {
                semconv.COSTSPAN_BUDGET_NAME: budget.name,
                semconv.COSTSPAN_BUDGET_WINDOW: window.id,
                semconv.COSTSPAN_BUDGET_LIMIT_USD: float(budget.limit_usd),
                semconv.COSTSPAN_BUDGET_USED_USD: float(to_usd(used)),
                semconv.COSTSPAN_BUDGET_RESERVED_USD: float(to_usd(amount)),
            },
        )
        # Settled spend alone can stay just under the cap for ever; the first refusal is when the cap is reached.
        if Decimal(1) in budget.thresholds:
            self._alert(budget, subject, window, key, Decimal(1), used, span)
        retry_after = max(1, math.ceil((window.end - now).total_seconds()))
        return BudgetExceeded(
            budget, window, used_usd=to_usd(used), requested_usd=to_usd(amount), retry_after_s=retry_after
        )

    def _count_ledger_error(self, exc: Exception, operation: str) -> None:
        with self._lock:
            self.ledger_errors += 1
        self._ledger_error_counter.add(
            1, {semconv.ERROR_TYPE: type(exc).__name__, semconv.COSTSPAN_BUDGET_OPERATION: operation}
        )

    def _ledger_failed(self, exc: Exception, span: Any, held: list[_Held]) -> None:
        self._count_ledger_error(exc, "reserve")
        reason = f"{type(exc).__name__}: {exc}"
        span.add_event(semconv.EVENT_BUDGET_LEDGER_ERROR, {semconv.ERROR_TYPE: type(exc).__name__})
        if self.fail_closed:
            self._release(held)
            self._warn("ledger", "costspan: budget ledger unreachable (%s); refusing calls (fail closed)", reason)
            raise BudgetUnavailable(reason) from exc
        self._warn(
            "ledger",
            "costspan: budget ledger unreachable (%s); calls go on unchecked (fail open), %d so far",
            reason,
            self.ledger_errors,
        )

    def _release(self, held: list[_Held]) -> None:
        for h in held:
            try:
                self.ledger.settle(h.reservation, 0)
            except Exception:
                logger.exception("costspan: could not release a budget reservation")

    def _settle(self, held: list[_Held], span: Any, cost: Cost | None) -> None:
        for h in held:
            actual = self._actual(cost, h.reservation)
            try:
                settled = self.ledger.settle(h.reservation, actual)
            except Exception as exc:
                self._count_ledger_error(exc, "settle")
                self._warn("settle", "costspan: could not settle a budget reservation; it stays at the worst case")
                continue
            for threshold in h.budget.thresholds:
                if settled >= h.cap * threshold:
                    self._alert(h.budget, h.subject, h.window, h.reservation.key, threshold, settled, span)

    @staticmethod
    def _actual(cost: Cost | None, reservation: Reservation) -> int:
        if cost is None:
            return 0  # the call failed before the provider billed anything
        if cost.total is not None:
            return to_nano(cost.total)
        # Billed, but by how much is unknown (a stream cut short, an answer without usage, an unknown service
        # tier): keep the worst case, which is 0 for a model with no price at all.
        return reservation.amount

    def _alert(
        self,
        budget: Budget,
        subject: Mapping[str, str],
        window: Window,
        key: str,
        threshold: Decimal,
        spent: int,
        span: Any,
    ) -> None:
        alert = BudgetAlert(budget, subject, window, threshold, to_usd(spent))
        marker = (key, alert.percent)
        with self._lock:
            if marker in self._alerted:
                return
            if len(self._alerted) > 10_000:  # old windows' markers; the ledger still dedups
                self._alerted.clear()
            self._alerted.add(marker)
        try:
            if not self.ledger.claim_alert(key, alert.percent, window.end.timestamp() + EXPIRY_GRACE_S):
                return  # another replica fired it
        except Exception:
            logger.exception("costspan: could not record a budget alert; firing it here")
        logger.warning(
            "costspan: budget %r reached %s of $%s in the %s window %s (spent $%s)",
            budget.name,
            alert.percent,
            budget.limit_usd,
            window.kind,
            window.start.isoformat(),
            f"{alert.spent_usd:.6f}",
        )
        span.add_event(
            semconv.EVENT_BUDGET_ALERT,
            {
                semconv.COSTSPAN_BUDGET_NAME: budget.name,
                semconv.COSTSPAN_BUDGET_WINDOW: window.id,
                semconv.COSTSPAN_BUDGET_THRESHOLD: float(threshold),
                semconv.COSTSPAN_BUDGET_LIMIT_USD: float(budget.limit_usd),
                semconv.COSTSPAN_BUDGET_USED_USD: float(alert.spent_usd),
            },
        )
        if self.on_alert is not None:
            try:
                self.on_alert(alert)
            except Exception:
                logger.exception("costspan: the on_alert callback failed")

    def _warn(self, topic: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning.get(topic, -_WARN_INTERVAL_S) < _WARN_INTERVAL_S:
                return
            self._last_warning[topic] = now
        logger.warning(message, *args)
