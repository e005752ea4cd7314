"""Cost of one call, from dated prices.

The price data is `genai-prices`. Its own ``calc_price`` costs ~70 µs a call, too slow for the request path, so
this module resolves a model's price once per (model, UTC day, service tier, batch) into a ``PriceSheet`` and
computes each call with a few integer and Decimal operations. ``tests/test_pricing_reference.py`` checks
that the result equals genai-prices' own calculation.

Rules that matter for money (see README, "How cost is computed"):
- Cached reads and cache writes are parts of the input count, billed at their own rates where the model has one.
- Reasoning tokens are part of output. They are priced separately only if the model has a reasoning rate, and
  are never added on top.
- Tiered prices (e.g. above 272K input tokens) switch for the whole request, as the provider bills it.
- A model the data does not know is ``unknown_model`` with no amount; never a neighbour's price.
- The response model prices the call; the request model only when the response model has no price.
- Usage that cannot be right (a completion without its output count, counts no call can reach) is
  ``implausible_usage``: flagged, never billed.

``Pricer.bill`` is the one place a call's dollars come from: the span, ``costspan reprice`` and ``costspan price``
all build a ``BillableCall`` and hand it over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from operator import attrgetter
from typing import Any, Protocol

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    PriceVariant,
    Provider,
    TieredPrices,
    TimeOfDateConstraint,
)
from genai_prices.units import UnitDef, _get_registry  # the unit hierarchy; no public accessor exists

from costspan import semconv
from costspan.usage import Usage

logger = logging.getLogger(__name__)

_ZERO = Decimal(0)

# Service tiers billed at the standard rate. "auto" only appears on requests; responses say what ran.
STANDARD_TIERS = frozenset({None, "", "default", "auto", "standard"})


def billed_tier(service_tier: str | None) -> str | None:
    """The service tier that has prices of its own; None for the standard rate."""
    return None if service_tier in STANDARD_TIERS else service_tier


@dataclass(slots=True)  # not frozen: built on every call, and a frozen dataclass costs ~1 µs more
class Cost:
    """The priced outcome of one call. ``total`` is None unless ``status`` is ``priced``.

    Amounts are kept as exact integers in units of ``10**-scale`` USD (prices are decimal, so nothing is lost),
    because Decimal arithmetic and ``float(Decimal)`` on every call cost microseconds. Read them as Decimals
    through the properties, or as floats (correctly rounded) with ``floats()``.
    """

    status: str
    # Uncached input (all modalities), cache reads, cache writes, output; None unless priced.
    amounts: tuple[int, int, int, int] | None = None
    scale: int = 0
    source: str | None = None  # which price data priced it: "genai-prices" or "override:<file>"
    version: str | None = None  # that data's version, so stored events can be re-priced later
    model_id: str | None = None  # the price-data model the name resolved to
    note: str | None = None
    model_source: str | None = None  # which name priced it: "response" or "request" (MODEL_SOURCE_*)

    def _usd(self, units: int) -> Decimal:
        return Decimal(units).scaleb(-self.scale)

    @property
    def total(self) -> Decimal | None:
        return None if self.amounts is None else self._usd(sum(self.amounts))

    @property
    def input(self) -> Decimal:
        return _ZERO if self.amounts is None else self._usd(self.amounts[0])

    @property
    def cache_read(self) -> Decimal:
        return _ZERO if self.amounts is None else self._usd(self.amounts[1])

    @property
    def cache_write(self) -> Decimal:
        return _ZERO if self.amounts is None else self._usd(self.amounts[2])

    @property
    def output(self) -> Decimal:
        return _ZERO if self.amounts is None else self._usd(self.amounts[3])

    def floats(self) -> tuple[float, float, float, float, float] | None:
        """(total, input, cache_read, cache_write, output) as floats; int / int rounds correctly."""
        if self.amounts is None:
            return None
        divisor = 10**self.scale
        a, b, c, d = self.amounts
        return (a + b + c + d) / divisor, a / divisor, b / divisor, c / divisor, d / divisor


# --- the unit hierarchy, from genai-prices' registry --------------------------------------------------------

# Our Usage field -> genai-prices usage key.
_USAGE_KEYS: Mapping[str, str] = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_tokens": "cache_read_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "reasoning_tokens": "output_reasoning_tokens",
    "input_audio_tokens": "input_audio_tokens",
    "output_audio_tokens": "output_audio_tokens",
    "input_image_tokens": "input_image_tokens",
    "output_image_tokens": "output_image_tokens",
    "cache_write_1h_tokens": "cache_write_1h_tokens",  # within cache_write_tokens: its own, higher rate
    "web_search_requests": "web_searches",  # per search (web_searches_kcount), booked with input in Cost.amounts
}


_REPORTED = frozenset(_USAGE_KEYS.values())
_USAGE_FIELDS = {theirs: ours for ours, theirs in _USAGE_KEYS.items()}
# Cost.amounts positions; a unit that is neither cached nor output is billed as input.
_AMOUNT_INDEX = {"cache_read": 1, "cache_write": 2, "output": 3}


def usage_counts(usage: Usage) -> dict[str, int]:
    """The usage as genai-prices usage keys (zero counts left out)."""
    counts = {}
    for ours, theirs in _USAGE_KEYS.items():
        value = getattr(usage, ours)
        if value:
            counts[theirs] = value
    return counts


@dataclass(frozen=True, slots=True)
class _PricedUnit:
    usage_key: str
    price_key: str
    # Price per single unit (the per-million price shifted by six places: exact in Decimal). For tiered prices,
    # (threshold, rate) pairs from the highest threshold down, ending with (-1, base rate).
    rate: Decimal | None
    tiers: tuple[tuple[int, Decimal], ...]
    bucket: str  # input / cache_read / cache_write / output / other
    descendants: tuple[int, ...]  # indices (into PriceSheet.units) of more specific priced units


def _per_unit(price: Decimal | TieredPrices, per: int) -> tuple[Decimal | None, tuple[tuple[int, Decimal], ...]]:
    if isinstance(price, TieredPrices):
        steps = [(tier.start, tier.price / per) for tier in sorted(price.tiers, key=lambda t: -t.start)]
        return None, (*steps, (-1, price.base / per))
    return price / per, ()


def _joins(priced: list[UnitDef]) -> tuple[tuple[str, str, str], ...]:
    """(join, a, b) usage keys where the model prices the overlap of two counts a usage can report, such as
    cached image tokens (cache read x input image). Reported a and b without the join are ambiguous: which of the
    cached tokens were images? genai-prices refuses to guess, and so do we."""
    registry = _get_registry()
    reportable = [registry.units[key] for key in _USAGE_KEYS.values()]
    joins = []
    for unit in priced:
        for i, a in enumerate(reportable):
            for b in reportable[i + 1 :]:
                overlapping = a.is_compatible_with(b) and not (
                    a.dimensions.items() <= b.dimensions.items() or b.dimensions.items() <= a.dimensions.items()
                )
                if overlapping and dict(unit.dimensions) == {**a.dimensions, **b.dimensions}:
                    joins.append((unit.usage_key, a.usage_key, b.usage_key))
    return tuple(joins)


def _bucket(dimensions: Mapping[str, str]) -> str:
    token_type = dimensions.get("token_type")
    if token_type in ("cache_read", "cache_write"):
        return token_type
    direction = dimensions.get("direction")
    return direction if direction in ("input", "output") else "other"


def _count_reader(fields: tuple[str, ...]) -> Callable[[Usage], tuple[int, ...]]:
    """Reads these Usage fields as a tuple, in one C call when there are several (attrgetter's usual case)."""
    if len(fields) > 1:
        return attrgetter(*fields)
    getters = [attrgetter(name) for name in fields]
    return lambda usage: tuple(get(usage) for get in getters)


def _scale_of(rates: Iterable[Decimal]) -> int:
    """The number of decimal places that makes every rate an integer."""
    return max((-exponent for rate in rates if isinstance(exponent := rate.as_tuple().exponent, int)), default=0)


class PriceSheet:
    """A resolved ``ModelPrice``, precompiled so that pricing a call is a handful of integer operations."""

    __slots__ = ("_counts", "_nested", "_plan", "joins", "model_price", "scale", "units")

    def __init__(self, model_price: ModelPrice) -> None:
        registry = _get_registry()
        priced = []
        for key, value in model_price.__dict__.items():
            if key.startswith("_") or value is None:
                continue
            try:
                unit = registry.unit_for_price_key(key)
            except KeyError:
                continue
            priced.append((unit, value))
        self.joins = _joins([unit for unit, _ in priced])
        # A unit no Usage reports (cached audio, characters...) always has a zero count: leave it out of the
        # per-call loop. Joins were found above, on the full set.
        priced = [(unit, value) for unit, value in priced if unit.usage_key in _REPORTED]
        # Most specific first, as genai-prices' decomposition does, so descendants are computed before parents.
        priced.sort(key=lambda pair: (-len(pair[0].dimensions), pair[0].usage_key))
        units: list[_PricedUnit] = []
        for i, (unit, value) in enumerate(priced):
            descendants = tuple(
                j
                for j, (other, _) in enumerate(priced)
                if j != i and unit.dimensions.items() <= other.dimensions.items()
            )
            rate, tiers = _per_unit(value, unit.per)
            units.append(
                _PricedUnit(unit.usage_key, unit.price_key, rate, tiers, _bucket(unit.dimensions), descendants)
            )
        self.units = tuple(units)
        self.model_price = model_price
        self._counts = _count_reader(tuple(_USAGE_FIELDS[unit.usage_key] for unit in self.units))
        self._nested = tuple((i, unit.descendants) for i, unit in enumerate(units) if unit.descendants)
        # Per unit: (Cost.amounts index, rate or tiers in 10**-scale USD per token).
        rates = [unit.rate for unit in units if unit.rate is not None]
        rates += [rate for unit in units for _, rate in unit.tiers]
        self.scale = scale = _scale_of(rates)
        self._plan = tuple(
            (
                _AMOUNT_INDEX.get(unit.bucket, 0),
                None if unit.rate is None else int(unit.rate.scaleb(scale)),
                tuple((start, int(rate.scaleb(scale))) for start, rate in unit.tiers),
            )
            for unit in units
        )

    def _ambiguous(self, usage: Usage) -> bool:
        counts = usage_counts(usage)
        return any(not counts.get(j) and counts.get(a) and counts.get(b) for j, a, b in self.joins)

    def _leaves(self, usage: Usage) -> list[int] | None:
        """Per unit, the tokens billed at its rate: its count less those of more specific units (cached audio
        is not billed again as cached, nor as audio). None when the counts contradict each other."""
        if self.joins and self._ambiguous(usage):
            return None
        leaves = list(self._counts(usage))
        for i, descendants in self._nested:  # more specific units come first, so their leaves are final
            leaf = leaves[i]
            for j in descendants:
                leaf -= leaves[j]
            if leaf < 0:
                return None
            leaves[i] = leaf
        return leaves

    @staticmethod
    def _unit_rate(unit: _PricedUnit, input_tokens: int) -> Decimal:
        if unit.rate is not None:
            return unit.rate
        # Tiered: the whole request is billed at the tier its input size reaches.
        return next(price for start, price in unit.tiers if input_tokens > start)

    def cost(self, usage: Usage) -> tuple[int, int, int, int] | None:
        """``Cost.amounts`` for this usage, in 10**-scale USD; None when its counts contradict each other."""
        leaves = self._leaves(usage)
        if leaves is None:
            return None
        amounts = [0, 0, 0, 0]
        # Equal lengths by construction; strict=True would cost ~200 ns here.
        for (index, rate, tiers), leaf in zip(self._plan, leaves, strict=False):
            if leaf:
                if rate is None:  # tiered: the whole request is billed at the tier its input size reaches
                    rate = next(price for start, price in tiers if usage.input_tokens > start)
                amounts[index] += rate * leaf
        return amounts[0], amounts[1], amounts[2], amounts[3]

    def rate(self, price_key: str, input_tokens: int = 0) -> Decimal | None:
        """The per-million rate for a price key at this prompt size (for budgets and `costspan price`)."""
        price = getattr(self.model_price, price_key, None)
        if price is None:
            return None
        if isinstance(price, TieredPrices):
            rate: Decimal = price.base
            for tier in reversed(price.tiers):
                if input_tokens > tier.start:
                    return tier.price
            return rate
        return price if isinstance(price, Decimal) else None

    def breakdown(self, usage: Usage) -> list[BillLine] | None:
        """``cost`` line by line, for people (`costspan price`); None when the counts contradict each other."""
        leaves = self._leaves(usage)
        if leaves is None:
            return None
        lines = []
        for unit, leaf in zip(self.units, leaves, strict=True):
            if leaf:
                rate = self.rate(unit.price_key, usage.input_tokens)
                assert rate is not None
                amount = self._unit_rate(unit, usage.input_tokens) * leaf
                lines.append(BillLine(unit.price_key, unit.bucket, leaf, rate, amount))
        return lines


@dataclass(frozen=True, slots=True)
class BillLine:
    """One line of a call's bill: the tokens billed at one rate (those of more specific rates left out)."""

    price_key: str  # genai-prices price key, e.g. cache_read_mtok
    bucket: str  # input / cache_read / cache_write / output / other
    count: int
    rate: Decimal  # USD per million (per thousand for *_kcount keys)
    amount: Decimal


@dataclass(frozen=True, slots=True)
class ResolvedPrice:
    sheet: PriceSheet
    source: str
    version: str
    model_id: str
    tier_known: bool
    whole_day: bool = True  # holds for the whole UTC day (no time-of-day rates), so it may be memoized per day

    def unpriced(self, status: str, note: str, model_source: str) -> Cost:
        """A cost with no amount that still says which price data it was looked up in, and why."""
        return Cost(status, None, 0, self.source, self.version, self.model_id, note, model_source)


class PriceSource(Protocol):
    """A layer of prices. The override file is one; the packaged genai-prices data is the last."""

    def resolve(
        self, model: str, provider: str, at: datetime, service_tier: str | None, batch: bool
    ) -> ResolvedPrice | None: ...


def _has_variant(variants: Iterable[PriceVariant] | None, key: str, value: str, at: datetime) -> bool:
    return any(v.when.get(key) == value and (v.constraint is None or v.constraint.active(at)) for v in variants or ())


class PackagedPrices:
    """Prices shipped in the installed ``genai-prices`` package."""

    def __init__(self) -> None:
        snapshot = data_snapshot.get_snapshot()
        self._providers: dict[str, Provider] = {p.id: p for p in snapshot.providers}
        self._all = list(snapshot.providers)
        self.source = "genai-prices"
        self.version = genai_prices.__version__
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], ModelInfo | None] = {}

    def models(self, provider: str) -> list[ModelInfo]:
        """Every model the data knows for a provider (for `costspan price --list`)."""
        found = self._providers.get(provider)
        return list(found.models) if found is not None else []

    def find_model(self, model: str, provider: str) -> ModelInfo | None:
        key = (provider, model)
        try:
            return self._models[key]
        except KeyError:
            pass
        found = None
        provider_info = self._providers.get(provider)
        if provider_info is not None:
            found = provider_info.find_model(model, all_providers=self._all)
        with self._lock:
            self._models[key] = found
        return found

    def resolve(
        self, model: str, provider: str, at: datetime, service_tier: str | None, batch: bool
    ) -> ResolvedPrice | None:
        info = self.find_model(model, provider)
        if info is None:
            return None
        tier = billed_tier(service_tier)
        context: dict[str, str] = {}
        tier_known = True
        if tier is not None:
            tier_known = _has_variant(info.price_variants, "service_tier", tier, at)
            if tier_known:
                context["service_tier"] = tier
        if batch:
            # Without a batch price the data would fall back to the standard one: flag it rather than guess.
            tier_known = tier_known and _has_variant(info.price_variants, "processing", "batch", at)
            context["processing"] = "batch"
        sheet = PriceSheet(info.get_prices(at, context or None))
        return ResolvedPrice(sheet, self.source, self.version, info.id, tier_known, not time_of_day_priced(info))


def time_of_day_priced(info: ModelInfo) -> bool:
    """Whether any of the model's prices depend on the time of day (then they are not memoized per day)."""
    prices = info.prices if isinstance(info.prices, list) else []
    return any(isinstance(p.constraint, TimeOfDateConstraint) for p in prices) or any(
        isinstance(v.constraint, TimeOfDateConstraint) for v in info.price_variants or ()
    )


@dataclass(slots=True)  # not frozen: built on every call, and a frozen dataclass costs ~1.5 µs more to build
class BillableCall:
    """Everything that decides what one call cost, as ``Pricer.bill`` takes it; treat as immutable.

    No field has a default, so no caller can leave one out. Built by the span at call time and by
    ``billable_from_row`` from a stored row, so both price the same inputs.
    """

    usage: Usage | None  # None: the call reported no usage
    response_model: str | None  # tried first
    request_model: str | None  # tried when the response model has no price
    provider: str  # genai-prices provider id (``provider_price_id``)
    service_tier: str | None  # what the response reported, else what was requested
    batch: bool  # a Batch API job's usage: batch rates
    at: datetime | int  # when the call started: a datetime, or Unix nanoseconds


class StoredRow(Protocol):
    """A stored span: a ``sqlite3.Row`` of the store's ``spans`` table, or any mapping of its column names."""

    def __getitem__(self, column: str) -> Any: ...


def billable_from_row(row: StoredRow) -> BillableCall:
    """The ``BillableCall`` a stored span was priced from, so that re-pricing it prices exactly what the span did.

    The store keeps what the span's attributes said: the response's service tier (else the request's), the batch
    id of a Batch job's usage, and no output count where the response gave none.
    """
    input_tokens = row["input_tokens"]
    usage = None
    if input_tokens is not None:
        output_tokens = row["output_tokens"]
        usage = Usage(
            input_tokens,
            output_tokens or 0,
            row["cached_tokens"] or 0,
            row["cache_write_tokens"] or 0,
            row["reasoning_tokens"] or 0,
            row["input_audio_tokens"] or 0,
            row["output_audio_tokens"] or 0,
            row["input_image_tokens"] or 0,
            row["output_image_tokens"] or 0,
            output_unknown=output_tokens is None,
            cache_write_1h_tokens=row["cache_write_1h_tokens"] or 0,
            web_search_requests=row["web_search_requests"] or 0,
        )
    return BillableCall(
        usage,
        row["response_model"],
        row["request_model"],
        provider_price_id(row["provider"] or "openai"),
        row["service_tier"],
        row["batch_id"] is not None,
        row["start_ns"],
    )


# The most tokens one call can plausibly count. The largest context windows hold ~2M tokens, so 10**8 is fifty
# times beyond any real call; a Batch job holds at most 50,000 requests, so 50,000 x 2M = 10**11. Larger counts
# are a corrupt payload (2**63 - 1 would bill over a trillion dollars), not usage.
MAX_CALL_TOKENS = 10**8
MAX_BATCH_TOKENS = 10**11


def implausible_usage(usage: Usage, batch: bool) -> str | None:
    """Why these counts cannot be billed; None when they can."""
    if usage.output_unknown:
        return "the response reported no completion_tokens: its output is unknown, not 0"
    limit = MAX_BATCH_TOKENS if batch else MAX_CALL_TOKENS
    if usage.input_tokens > limit or usage.output_tokens > limit:
        return (
            f"{usage.input_tokens:,} input / {usage.output_tokens:,} output tokens exceed the "
            f"{limit:,} a {'batch job' if batch else 'call'} can count"
        )
    return None


_NS_PER_DAY = 86_400 * 10**9
_MEMO_LIMIT = 4096  # distinct (model, day, tier) lookups kept; far more than an app uses in a day


def _utc_day(at: datetime | int) -> int:
    """Days since the Unix epoch, in UTC, of a datetime (naive means UTC, as in genai-prices) or of Unix
    nanoseconds."""
    if isinstance(at, int):
        return at // _NS_PER_DAY
    return int(aware_utc(at).timestamp() // 86_400)


class Pricer:
    """Prices calls from an ordered list of price layers; the first layer that knows the model wins.

    ``at`` is when the call started: a datetime, or Unix nanoseconds (the span's clock, which spares the
    request path a datetime). Resolved prices are memoized per UTC day unless they change within the day, so
    pricing a call is a dict lookup and a few integer operations.
    """

    def __init__(self, layers: Iterable[PriceSource] | None = None) -> None:
        self.layers: tuple[PriceSource, ...] = tuple(layers) if layers is not None else (packaged_prices(),)
        self._warned: set[str] = set()
        self._memo: dict[tuple[str, str, int, str | None, bool], ResolvedPrice] = {}

    def resolve(
        self, model: str, provider: str, at: datetime | int, service_tier: str | None = None, batch: bool = False
    ) -> ResolvedPrice | None:
        tier = billed_tier(service_tier)
        key = (model, provider, _utc_day(at), tier, batch)
        resolved = self._memo.get(key)
        if resolved is not None:
            return resolved
        when = aware_utc(at) if isinstance(at, datetime) else as_utc(at)
        for layer in self.layers:
            resolved = layer.resolve(model, provider, when, tier, batch)
            if resolved is not None:
                if resolved.whole_day:
                    if len(self._memo) >= _MEMO_LIMIT:
                        self._memo.clear()
                    self._memo[key] = resolved
                return resolved
        return None

    def bill(self, call: BillableCall) -> Cost:
        """What ``call`` cost: the one computation behind every dollar costspan reports."""
        usage = call.usage
        if usage is None:
            return Cost(semconv.STATUS_NO_USAGE, note="the response reported no usage")
        implausible = implausible_usage(usage, call.batch)
        if implausible is not None:
            return Cost(semconv.STATUS_IMPLAUSIBLE_USAGE, note=implausible)
        response_model, request_model, provider, at = call.response_model, call.request_model, call.provider, call.at
        tier, batch = call.service_tier, call.batch
        resolved = self.resolve(response_model, provider, at, tier, batch) if response_model else None
        model_source = semconv.MODEL_SOURCE_RESPONSE
        if resolved is None and request_model and request_model != response_model:
            # The response may name a model the data does not list (davinci-002 answers "davinci:2023-07-21-v2"):
            # the model that was asked for, and billed, still has a price.
            resolved = self.resolve(request_model, provider, at, tier, batch)
            model_source = semconv.MODEL_SOURCE_REQUEST
        if resolved is None:
            self._warn_unknown(response_model or request_model or "<none>")
            return Cost(semconv.STATUS_UNKNOWN_MODEL, note=_no_price_note(response_model, request_model))
        if not resolved.tier_known:
            return resolved.unpriced(
                semconv.STATUS_UNKNOWN_TIER, _missing_variant_note(resolved.model_id, tier, batch), model_source
            )
        if not resolved.sheet.units:
            # Priced only in units no response reports (audio minutes, characters): $0 would be a guess.
            self._warn_unknown(resolved.model_id, "it is priced only per audio minute or character")
            return resolved.unpriced(
                semconv.STATUS_UNKNOWN_MODEL,
                "priced only per audio minute or character, which responses do not report",
                model_source,
            )
        sheet = resolved.sheet
        amounts = sheet.cost(usage)
        if amounts is None:
            return resolved.unpriced(
                semconv.STATUS_INCOMPLETE,
                "usage parts exceed their totals, or overlap in a way this model's rates make ambiguous",
                model_source,
            )
        return Cost(
            semconv.STATUS_PRICED,
            amounts,
            sheet.scale,
            resolved.source,
            resolved.version,
            resolved.model_id,
            None,
            model_source,
        )

    def price(
        self,
        usage: Usage | None,
        model: str | None,
        *,
        at: datetime | int,
        provider: str = "openai",
        service_tier: str | None = None,
        batch: bool = False,
    ) -> Cost:
        """``bill`` for a call whose response named ``model`` (and whose request named no other)."""
        return self.bill(BillableCall(usage, model, None, provider, service_tier, batch, at))

    def _warn_unknown(self, model: str, why: str = "no price is known for it") -> None:
        if model not in self._warned:
            self._warned.add(model)
            logger.warning(
                "costspan: cannot price model %r: %s; its spans carry pricing status unknown_model and no "
                "amount. Add it to a pricing override file (see `costspan price --help`).",
                model,
                why,
            )


def _no_price_note(response_model: str | None, request_model: str | None) -> str:
    names = [f"{response_model!r} (response model)"] if response_model else []
    if request_model and request_model != response_model:
        names.append(f"{request_model!r} (request model)")
    return f"no price for {' or '.join(names)}" if names else "the call names no model"


def _missing_variant_note(model_id: str, service_tier: str | None, batch: bool) -> str:
    if service_tier not in STANDARD_TIERS:
        what = f"{service_tier!r} service-tier batch" if batch else f"{service_tier!r} service-tier"
    else:
        what = "batch" if batch else "standard-tier"
    return f"no {what} price for {model_id}"


@lru_cache(maxsize=1)
def packaged_prices() -> PackagedPrices:
    return PackagedPrices()


_PRICE_IDS: Mapping[str, str] = {"openai": "openai", "azure.ai.openai": "azure", "anthropic": "anthropic"}


def provider_price_id(provider_name: str) -> str:
    """genai-prices provider id for a ``gen_ai.provider.name``. Others (``aws.bedrock``, ``gcp.vertex_ai``) keep
    their own name, which the packaged data does not know: their calls are ``unknown_model`` unless a pricing file
    prices that provider, because a cloud's rates for a model are not the model maker's."""
    return _PRICE_IDS.get(provider_name, provider_name)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def as_utc(timestamp_ns: int) -> datetime:
    """Unix nanoseconds as a UTC datetime, truncated to the microsecond: exact, so the last instant of a day never
    rounds into the next (a float division would, and the price memo is keyed by the exact day)."""
    return _EPOCH + timedelta(microseconds=timestamp_ns // 1000)


def aware_utc(moment: datetime) -> datetime:
    """A datetime in UTC; a naive one is taken to be UTC already, as genai-prices takes it."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
