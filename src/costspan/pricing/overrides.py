"""A user's pricing file: negotiated discounts, own rates, and aliases, layered over the packaged prices.

Example (TOML; YAML with the same keys works too)::

    [discounts]
    openai = 12.5                        # percent off every OpenAI price, packaged or from this file

    [aliases]
    "my-ft:gpt-4.1:acme" = "gpt-4.1"     # price this name as that model
    "prod-chat-eu" = "gpt-4o"            # an Azure deployment name
    "ft:gpt-4.1-*:acme:*" = "gpt-4.1"    # `*` matches any run of characters

    [[models]]
    model = "gpt-4.1"                    # also covers the names the price data maps to it (dated snapshots)
    effective_from = 2026-07-01          # optional; calls before that day keep the earlier price
    input = 1.60                         # USD per million tokens
    cache_read = 0.40
    output = 6.40

``load_pricing_file`` validates the whole file and raises one ``PricingFileError`` naming the line and field.
``price_layers`` is what the instrumentor calls: it never raises, and falls back to the packaged prices when the
file is bad. Every price this file decides is reported with source ``override:<path>`` and the file's sha256
prefix as version, so an auditor can tell which figures it touched.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, Tier, TieredPrices

from costspan.pricing.pricer import (
    PackagedPrices,
    PriceSheet,
    PriceSource,
    ResolvedPrice,
    aware_utc,
    billed_tier,
    packaged_prices,
)

logger = logging.getLogger("costspan")

# Rate fields of a [[models]] entry (USD per million tokens) -> genai-prices price keys.
RATE_FIELDS: Mapping[str, str] = {
    "input": "input_mtok",
    "cache_read": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "cache_write_1h": "cache_write_1h_mtok",
    "output": "output_mtok",
    "reasoning": "output_reasoning_mtok",
    "input_audio": "input_audio_mtok",
    "cache_audio_read": "cache_audio_read_mtok",
    "output_audio": "output_audio_mtok",
    "input_image": "input_image_mtok",
    "cache_image_read": "cache_image_read_mtok",
    "output_image": "output_image_mtok",
}
_ENTRY_FIELDS = ("model", "provider", "effective_from", "service_tier", "batch", *RATE_FIELDS)
_TOP_LEVEL = ("discounts", "aliases", "models")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class PricingFileError(ValueError):
    """A pricing file that cannot be used. ``str()`` is the one message a user needs: file, line, field, fix."""

    def __init__(self, path: str, message: str, *, line: int | None = None, field: str | None = None) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class RateEntry:
    """One ``[[models]]`` entry: rates for a model from a date on, for one service tier and processing mode."""

    model: str  # lower case
    provider: str | None  # None: any provider
    effective_from: date | None  # None: since always
    service_tier: str | None  # None: the standard tier
    batch: bool
    rates: Mapping[str, Decimal]  # rate field -> USD per million tokens

    def model_price(self) -> ModelPrice:
        return ModelPrice(**{RATE_FIELDS[name]: rate for name, rate in self.rates.items()})


@dataclass(frozen=True)
class PricingFile:
    """A validated pricing file."""

    path: str
    digest: str  # sha256 prefix of the file's bytes: the price version of everything this file priced
    entries: tuple[RateEntry, ...]
    aliases: tuple[tuple[str, str], ...]  # (lower-case name or glob pattern, target model), in file order
    discounts: Mapping[str, Decimal]  # genai-prices provider id -> percent off

    @property
    def source(self) -> str:
        return f"override:{self.path}"

    def alias_for(self, model: str) -> str | None:
        name = model.lower()
        for pattern, target in self.aliases:
            if pattern == name:
                return target
        for pattern, target in self.aliases:
            if "*" in pattern and fnmatch.fnmatchcase(name, pattern):
                return target
        return None

    def entries_for(self, model: str, provider: str) -> list[RateEntry]:
        name = model.lower()
        return [e for e in self.entries if e.model == name and e.provider in (None, provider)]


# --- loading and validation ---------------------------------------------------------------------------------


def load_pricing_file(path: str | os.PathLike[str]) -> PricingFile:
    """Read and validate a TOML (``.toml``) or YAML (``.yaml``/``.yml``) pricing file.

    Raises ``PricingFileError`` on the first problem, naming the line (where the format allows) and the field.
    """
    shown = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise PricingFileError(shown, f"cannot read the file ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PricingFileError(shown, "is not UTF-8 text") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".toml":
        data, locate = _parse_toml(shown, text)
    elif suffix in (".yaml", ".yml"):
        data, locate = _parse_yaml(shown, text)
    else:
        raise PricingFileError(shown, f"unknown file type {suffix or '(none)'!r}; use .toml, .yaml or .yml")
    return _Validator(shown, locate).pricing_file(data, hashlib.sha256(raw).hexdigest()[:12])


_Locate = Callable[[Sequence[str | int]], int | None]


def _parse_toml(shown: str, text: str) -> tuple[Any, _Locate]:
    lines = text.splitlines()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(found.group(1)) if found else None
        message = message[: found.start()].strip() if found else message
        if line is None and message.endswith("(at end of document)"):
            line = len(lines)
        field = None
        if line is not None and line <= len(lines):
            key = _KEY.match(lines[line - 1])
            field = next((k for k in key.groups() if k), None) if key else None
            if _DATE.search(lines[line - 1]):
                message += " (is it a real date, written 2026-05-01?)"
        raise PricingFileError(shown, f"not valid TOML: {message}", line=line, field=field) from None
    return data, lambda path: _toml_line(lines, path)


def _parse_yaml(shown: str, text: str) -> tuple[Any, _Locate]:
    try:
        import yaml
    except ImportError:
        raise PricingFileError(shown, "YAML pricing files need PyYAML: pip install pyyaml") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        line = mark.line + 1 if mark is not None else None
        raise PricingFileError(shown, f"not valid YAML: {problem}", line=line) from None
    return ({} if data is None else data), lambda path: _yaml_line(root, path)


def _toml_line(lines: list[str], path: Sequence[str | int]) -> int | None:
    """Best-effort line of a value in TOML text: tomllib keeps no positions."""
    head = re.escape(str(path[0]))
    if len(path) >= 2 and isinstance(path[1], int):  # [[models]] array of tables
        headers = [i for i, line in enumerate(lines) if re.match(rf"\s*\[\[\s*{head}\s*\]\]", line)]
        if path[1] >= len(headers):
            return None
        start = headers[path[1]]
        found = _key_line(lines, start + 1, str(path[2])) if len(path) > 2 else None
        return found or start + 1
    for i, line in enumerate(lines):
        if re.match(rf"\s*\[\s*{head}\s*\]", line):
            found = _key_line(lines, i + 1, str(path[1])) if len(path) > 1 else None
            return found or i + 1
        if re.match(rf"\s*{head}\s*=", line):
            return i + 1
    return None


_KEY = re.compile(r"""\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")


def _key_line(lines: list[str], start: int, key: str) -> int | None:
    for i in range(start, len(lines)):
        if lines[i].lstrip().startswith("["):
            return None
        found = _KEY.match(lines[i])
        if found and key in found.groups():
            return i + 1
    return None


def _yaml_line(node: Any, path: Sequence[str | int]) -> int | None:
    import yaml

    line: int | None = node.start_mark.line + 1 if node is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}Known: {', '.join(known)}"


class _Validator:
    def __init__(self, path: str, locate: _Locate) -> None:
        self.path = path
        self.locate = locate

    def fail(self, where: Sequence[str | int], message: str) -> PricingFileError:
        field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(where))
        return PricingFileError(self.path, message, line=self.locate(where), field=field or None)

    def pricing_file(self, data: Any, digest: str) -> PricingFile:
        if not isinstance(data, Mapping):
            raise self.fail((), f"the file must be a table of {', '.join(_TOP_LEVEL)}, got {_kind(data)}")
        for key in data:
            if key not in _TOP_LEVEL:
                raise self.fail((str(key),), f"unknown section; {_did_you_mean(str(key), _TOP_LEVEL)}")
        entries = self.entries(data.get("models", []))
        aliases = self.aliases(data.get("aliases", {}), {e.model for e in entries})
        discounts = self.discounts(data.get("discounts", {}))
        return PricingFile(self.path, digest, entries, aliases, discounts)

    def table(self, value: Any, where: Sequence[str | int]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a table, got {_kind(value)}")
        return value

    def discounts(self, value: Any) -> dict[str, Decimal]:
        providers = sorted(p.id for p in data_snapshot.get_snapshot().providers)
        discounts: dict[str, Decimal] = {}
        for provider, percent in self.table(value, ("discounts",)).items():
            where = ("discounts", provider)
            if provider not in providers:
                raise self.fail(where, f"unknown provider; {_did_you_mean(provider, providers)}")
            number = self.number(percent, where, "a percentage")
            if number >= 100:
                raise self.fail(where, f"a discount is a percentage below 100, got {percent}")
            discounts[provider] = number
        return discounts

    def aliases(self, value: Any, own_models: set[str]) -> tuple[tuple[str, str], ...]:
        packaged = packaged_prices()
        aliases = []
        for name, target in self.table(value, ("aliases",)).items():
            where = ("aliases", name)
            if not isinstance(target, str) or not target.strip():
                raise self.fail(where, f"must be the name of the model to price it as, got {_kind(target)}")
            known = target.lower() in own_models or any(
                packaged.find_model(target, provider) for provider in ("openai", "azure", "anthropic")
            )
            if not known:
                raise self.fail(
                    where, f"alias target {target!r} is neither in the price data nor a [[models]] entry of this file"
                )
            aliases.append((name.lower(), target.strip()))
        return tuple(aliases)

    def entries(self, value: Any) -> tuple[RateEntry, ...]:
        if not isinstance(value, list):
            raise self.fail(("models",), f"must be a list of model entries ([[models]] in TOML), got {_kind(value)}")
        entries: list[RateEntry] = []
        seen: dict[tuple[str, str | None, date | None, str | None, bool], int] = {}
        for index, item in enumerate(value):
            entry = self.entry(self.table(item, ("models", index)), index)
            key = (entry.model, entry.provider, entry.effective_from, entry.service_tier, entry.batch)
            if key in seen:
                raise self.fail(
                    ("models", index, "model"),
                    f"duplicates models[{seen[key]}]: same model, provider, effective_from, service_tier and batch",
                )
            seen[key] = index
            entries.append(entry)
        return tuple(entries)

    def entry(self, item: Mapping[str, Any], index: int) -> RateEntry:
        for field in item:
            if field not in _ENTRY_FIELDS:
                raise self.fail(
                    ("models", index, str(field)), f"unknown field; {_did_you_mean(str(field), _ENTRY_FIELDS)}"
                )
        model = item.get("model")
        if not isinstance(model, str) or not model.strip():
            raise self.fail(("models", index, "model"), 'every entry needs model = "<model name>"')
        provider = self.text(item, index, "provider")
        tier = self.text(item, index, "service_tier")
        batch = item.get("batch", False)
        if not isinstance(batch, bool):
            raise self.fail(("models", index, "batch"), f"must be true or false, got {_kind(batch)}")
        rates = {
            name: self.number(item[name], ("models", index, name), "a price in USD per million tokens")
            for name in RATE_FIELDS
            if name in item
        }
        if "input" not in rates:
            # Every other kind falls back to input (or to output, which falls back to nothing): without it, some
            # tokens would be billed at $0.
            raise self.fail(
                ("models", index),
                f"entry for {model!r} has no input rate; give input (and output for a model that generates), "
                f"then any of {', '.join(name for name in RATE_FIELDS if name != 'input')}",
            )
        return RateEntry(
            model=model.strip().lower(),
            provider=provider,
            effective_from=self.date(item.get("effective_from"), ("models", index, "effective_from")),
            service_tier=billed_tier(tier),
            batch=batch,
            rates=rates,
        )

    def text(self, item: Mapping[str, Any], index: int, field: str) -> str | None:
        value = item.get(field)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(("models", index, field), f"must be a non-empty string, got {_kind(value)}")
        return value.strip()

    def number(self, value: Any, where: Sequence[str | int], what: str) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(where, f"must be {what} (a number), got {_kind(value)} {value!r}")
        number = Decimal(str(value))  # str() keeps 0.15 as 0.15, not its binary approximation
        if not number.is_finite():
            raise self.fail(where, f"must be a finite number, got {value}")
        if number < 0:
            raise self.fail(where, f"{what} cannot be negative, got {value}")
        return number

    def date(self, value: Any, where: Sequence[str | int]) -> date | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            raise self.fail(where, f"must be a date like 2026-05-01 without a time of day, got {value.isoformat()}")
        if isinstance(value, date):
            return value
        if isinstance(value, str) and _DATE.fullmatch(value.strip()):
            try:
                return date.fromisoformat(value.strip())
            except ValueError as error:
                raise self.fail(where, f"is not a real date: {value!r} ({error})") from None
        raise self.fail(where, f"must be a date like 2026-05-01, got {_kind(value)} {value!r}")


# --- the price layer ----------------------------------------------------------------------------------------


def _scaled(price: Decimal | TieredPrices, factor: Decimal) -> Decimal | TieredPrices:
    if isinstance(price, TieredPrices):
        return TieredPrices(base=price.base * factor, tiers=[Tier(t.start, t.price * factor) for t in price.tiers])
    return price * factor


def discounted(model_price: ModelPrice, percent: Decimal) -> ModelPrice:
    """The same prices, ``percent`` off every rate (tiers included)."""
    factor = (100 - percent) / 100
    return ModelPrice(
        **{
            key: _scaled(value, factor)
            for key, value in model_price.__dict__.items()
            if not key.startswith("_") and isinstance(value, (Decimal, TieredPrices))
        }
    )


class OverridePrices:
    """A ``PriceSource``: the pricing file over the packaged data, which it consults for aliases and discounts.

    - An alias renames the model before anything else.
    - The file's own rates win for a model (or for the price-data model a name maps to) from their
      ``effective_from`` day on; before the first of them, the packaged price applies, so a new rate never
      rewrites history. An entry decides only its own service tier and mode: the others keep the packaged
      prices, and for a model the data does not know they are ``unknown_tier``, never the file's standard rate.
    - A provider's discount applies to every price of that provider, the file's and the packaged ones.
    The file's dates are whole UTC days, so its own rates hold all day (``Pricer`` memoizes them per day).
    """

    def __init__(self, pricing: PricingFile, packaged: PackagedPrices | None = None) -> None:
        self.pricing = pricing
        self.packaged = packaged or packaged_prices()

    def resolve(
        self, model: str, provider: str, at: datetime, service_tier: str | None, batch: bool
    ) -> ResolvedPrice | None:
        tier = billed_tier(service_tier)
        day = aware_utc(at).date()
        pricing = self.pricing
        target = pricing.alias_for(model)
        name = target or model
        info = self.packaged.find_model(name, provider)
        entries = pricing.entries_for(name, provider) or (pricing.entries_for(info.id, provider) if info else [])
        in_force = [e for e in entries if e.effective_from is None or e.effective_from <= day]
        discount = pricing.discounts.get(provider, Decimal(0))
        matching = [e for e in in_force if e.service_tier == tier and e.batch == batch]
        if matching:
            return self._from_entries(matching, discount)
        packaged = self.packaged.resolve(name, provider, at, tier, batch)
        if packaged is None and in_force:  # the file prices this model, but not at this tier or in this mode
            return ResolvedPrice(PriceSheet(ModelPrice()), pricing.source, pricing.digest, in_force[0].model, False)
        if packaged is None or (target is None and not discount):
            return packaged
        sheet = PriceSheet(discounted(packaged.sheet.model_price, discount)) if discount else packaged.sheet
        version = f"{pricing.digest}+{packaged.source} {packaged.version}"
        return ResolvedPrice(sheet, pricing.source, version, packaged.model_id, packaged.tier_known, packaged.whole_day)

    def _from_entries(self, matching: list[RateEntry], discount: Decimal) -> ResolvedPrice:
        entry = max(matching, key=lambda e: e.effective_from or date.min)
        model_price = entry.model_price()
        if discount:
            model_price = discounted(model_price, discount)
        pricing = self.pricing
        return ResolvedPrice(PriceSheet(model_price), pricing.source, pricing.digest, entry.model, True)


def price_layers(pricing_file: str | os.PathLike[str] | None) -> tuple[PriceSource, ...]:
    """The price layers for a ``pricing_file`` setting. Never raises: a bad file is logged once, with what to
    fix, and the packaged prices are used alone."""
    packaged = packaged_prices()
    if not pricing_file:
        return (packaged,)
    try:
        return (OverridePrices(load_pricing_file(pricing_file), packaged),)
    except PricingFileError as error:
        logger.error(
            "costspan: pricing file not used, pricing with the packaged prices (%s %s) instead: %s. "
            "Check a fix with `costspan price --check %s`.",
            packaged.source,
            packaged.version,
            error,
            pricing_file,
        )
    except Exception:
        logger.exception("costspan: could not load the pricing file %s; using the packaged prices", pricing_file)
    return (packaged,)
