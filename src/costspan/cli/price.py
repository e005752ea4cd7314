"""``costspan price``: see the rates costspan bills a call with, price a call by hand, check a pricing file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from costspan import environment_variables as env
from costspan.money import usd_column
from costspan.usage import Usage

# The price data is imported where it is used, not here: every `costspan` command's parsing loads this module.
if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, TieredPrices

    from costspan.pricing.pricer import BillLine, PriceSource

EPILOG = """\
examples:
  costspan price gpt-5.5                                   the rates in force today
  costspan price gpt-5.5 --input 15234 --cached 12000 --output 5312 --reasoning 4500
                                                           a call's bill, line by line
  costspan price gpt-5.4 --input 300000 --output 2000     above the 272K step: the whole request bills higher
  costspan price o3 --input 1000 --output 500 --at 2025-06-01      priced as on that day (o3 cost more then)
  costspan price gpt-5 --input 1000 --output 500 --tier flex       a flex-tier call
  costspan price gpt-4.1 --input 1000 --output 500 --batch         a Batch API call
  costspan price my-ft:gpt-4.1:acme --pricing-file prices.toml     through your overrides and aliases
  costspan price --list gpt-5                              known models whose name contains "gpt-5"
  costspan price --check prices.toml                       validate a pricing file (exit 1 on error)

Counts follow the API's usage object: --input is the whole prompt, cached and cache-write tokens included;
--output is the whole completion, reasoning tokens included. Reasoning is shown but never added again.
Rates are USD per million tokens, from the genai-prices data installed with costspan, or from the pricing
file (--pricing-file, else $OTEL_COSTSPAN_PRICING_FILE). Add --json for machine-readable output.
"""

# genai-prices price keys -> the words people use on a bill.
_LABELS = {
    "input_mtok": "input (uncached)",
    "cache_read_mtok": "cached input",
    "cache_write_mtok": "cache write",
    "input_audio_mtok": "input audio",
    "cache_audio_read_mtok": "cached input audio",
    "input_image_mtok": "input image",
    "cache_image_read_mtok": "cached input image",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
    "output_audio_mtok": "output audio",
    "output_image_mtok": "output image",
}
_TOKEN_FLAGS = (
    ("input", "input_tokens", "whole prompt, cached tokens included"),
    ("cached", "cache_read_tokens", "prompt tokens read from the cache"),
    ("cache-write", "cache_write_tokens", "prompt tokens written to the cache"),
    ("output", "output_tokens", "whole completion, reasoning included"),
    ("reasoning", "reasoning_tokens", "reasoning tokens (part of --output)"),
    ("input-audio", "input_audio_tokens", "audio tokens in the prompt"),
    ("output-audio", "output_audio_tokens", "audio tokens in the completion"),
    ("input-image", "input_image_tokens", "image tokens in the prompt"),
)


class _Failure(Exception):
    """A user error: printed as one line, exit status 1."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "price",
        help="show the rates a model is billed at and price a call by hand",
        description="Show the rates costspan uses for a model and the dollar breakdown of a call.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", help="model name as the API reports it, e.g. gpt-4.1-2025-04-14")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", nargs="?", const="", metavar="FILTER", help="list known models, optionally filtered")
    mode.add_argument("--check", metavar="FILE", help="validate a pricing file and exit (1 on error)")
    for flag, _, help_text in _TOKEN_FLAGS:
        parser.add_argument(f"--{flag}", type=_count, default=0, metavar="N", help=help_text)
    parser.add_argument("--tier", metavar="TIER", help="service tier the response reported: flex, priority, ...")
    parser.add_argument("--batch", action="store_true", help="price as a Batch API call")
    parser.add_argument("--at", type=_when, metavar="DATE", help="price as on this UTC date or time (default: now)")
    parser.add_argument("--provider", default="openai", help="genai-prices provider id (default: %(default)s)")
    parser.add_argument(
        "--pricing-file", metavar="FILE", help=f"pricing overrides (default: ${env.OTEL_COSTSPAN_PRICING_FILE})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def _count(raw: str) -> int:
    try:
        value = int(raw.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number of tokens") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{raw!r}: token counts cannot be negative")
    return value


def _when(raw: str) -> datetime:
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), time(12), tzinfo=UTC)
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date like 2026-05-01 (or 2026-05-01T09:30)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    try:
        if args.check is not None:
            return _check(args.check, args.json)
        if args.list is not None:
            return _list(args)
        if not args.model:
            raise _Failure("name a MODEL, or use --list or --check FILE (see costspan price --help)")
        return _price(args)
    except _Failure as failure:
        if args.json:
            print(json.dumps({"ok": False, "error": str(failure)}, indent=2))
        else:
            print(f"costspan price: {failure}", file=sys.stderr)
        return 1


# --- --check ------------------------------------------------------------------------------------------------


def _check(path: str, as_json: bool) -> int:
    from costspan.pricing.overrides import PricingFileError, load_pricing_file

    try:
        pricing = load_pricing_file(path)
    except PricingFileError as error:
        if as_json:
            report = {"ok": False, "path": path, "line": error.line, "field": error.field, "error": str(error)}
            print(json.dumps(report, indent=2))
        else:
            print(f"costspan price: {error}", file=sys.stderr)
        return 1
    discounts = {provider: str(percent) for provider, percent in pricing.discounts.items()}
    if as_json:
        report = {
            "ok": True,
            "path": path,
            "version": pricing.digest,
            "models": sorted({e.model for e in pricing.entries}),
            "entries": len(pricing.entries),
            "aliases": dict(pricing.aliases),
            "discounts_percent": discounts,
        }
        print(json.dumps(report, indent=2))
        return 0
    shown = ", ".join(f"{p} {d}% off" for p, d in discounts.items()) or "none"
    print(
        f"{path}: OK (version {pricing.digest}): {len(pricing.entries)} model rate entr"
        f"{'y' if len(pricing.entries) == 1 else 'ies'}, {len(pricing.aliases)} alias(es), discounts: {shown}"
    )
    return 0


# --- pricing one call ---------------------------------------------------------------------------------------


def _layers(args: argparse.Namespace) -> tuple[PriceSource, ...]:
    from costspan.pricing.overrides import OverridePrices, PricingFileError, load_pricing_file
    from costspan.pricing.pricer import packaged_prices

    path = args.pricing_file or os.environ.get(env.OTEL_COSTSPAN_PRICING_FILE)
    if not path:
        return (packaged_prices(),)
    try:
        return (OverridePrices(load_pricing_file(path)),)
    except PricingFileError as error:
        raise _Failure(f"{error} (the instrumentation would ignore this file and use the packaged prices)") from None


def _usage(args: argparse.Namespace) -> Usage | None:
    counts = {field: getattr(args, flag.replace("-", "_")) for flag, field, _ in _TOKEN_FLAGS}
    if not any(counts.values()):
        return None
    usage = Usage(**counts)
    if usage.cache_read_tokens + usage.cache_write_tokens > usage.input_tokens:
        raise _Failure("--cached plus --cache-write cannot exceed --input: cached tokens are part of the prompt")
    if usage.reasoning_tokens > usage.output_tokens:
        raise _Failure("--reasoning cannot exceed --output: reasoning tokens are part of the completion")
    return usage


def _price(args: argparse.Namespace) -> int:
    from costspan.pricing.pricer import STANDARD_TIERS, BillableCall, Pricer

    at: datetime = args.at or datetime.now(UTC)
    usage = _usage(args)
    pricer = Pricer(_layers(args))
    resolved = pricer.resolve(args.model, args.provider, at, args.tier, args.batch)
    if resolved is None:
        raise _Failure(_unknown_model_message(args.model, args.provider, at))
    # The CLI's model name stands for the response model: priced exactly as a span naming it would be.
    cost = pricer.bill(BillableCall(usage or Usage(0, 0), args.model, None, args.provider, args.tier, args.batch, at))
    if cost.status != "priced":
        raise _Failure(f"{cost.status}: {cost.note or 'cannot price this call'}")
    lines = resolved.sheet.breakdown(usage) if usage else []
    assert lines is not None  # _usage checked the parts against their totals
    tier = args.tier if args.tier not in STANDARD_TIERS else "standard"
    report: dict[str, Any] = {
        "ok": True,
        "model": args.model,
        "priced_as": resolved.model_id,
        "source": resolved.source,
        "version": resolved.version,
        "at": at.isoformat(),
        "service_tier": tier,
        "batch": args.batch,
        "rates_per_million": _rates_json(resolved.sheet.model_price),
    }
    if usage:
        report["usage"] = {name: getattr(usage, name) for name in usage.__slots__ if getattr(usage, name)}
        report["lines"] = [_line_json(line) for line in lines]
        report["total_usd"] = str(cost.total)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    source = f"{resolved.source} {resolved.version}"
    print(_price_text(args, resolved.model_id, resolved.sheet.model_price, source, at, tier, usage, lines, cost.total))
    return 0


def _unknown_model_message(model: str, provider: str, at: datetime) -> str:
    import difflib

    from costspan.pricing.pricer import packaged_prices

    names = [info.id for info in packaged_prices().models(provider)]
    close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
    hint = (
        f" Similar names in the data: {', '.join(close)} (not used: a near neighbour's price is a guess)."
        if close
        else ""
    )
    return (
        f"no price for {model!r} (provider {provider}) on {at.date().isoformat()}: its spans get pricing status "
        f"unknown_model and no amount.{hint} Price it in a pricing file: [[models]] model = {model!r}, "
        "input = ..., output = ... (USD per million tokens), or alias it to a known model."
    )


def _line_json(line: BillLine) -> dict[str, Any]:
    return {
        "price_key": line.price_key,
        "item": _LABELS.get(line.price_key, line.price_key),
        "tokens": line.count,
        "rate_per_million": str(line.rate),
        "usd": str(line.amount),
    }


def _rates_json(model_price: ModelPrice) -> dict[str, Any]:
    from genai_prices.types import TieredPrices

    rates: dict[str, Any] = {}
    for key, price in _token_rates(model_price):
        if isinstance(price, TieredPrices):
            tiers = [{"input_tokens_above": t.start, "rate": str(t.price)} for t in price.tiers]
            rates[key] = {"base": str(price.base), "tiers": tiers}
        else:
            rates[key] = str(price)
    return rates


def _token_rates(model_price: ModelPrice) -> list[tuple[str, Decimal | TieredPrices]]:
    from genai_prices.types import TieredPrices

    return [
        (key, value)
        for key, value in model_price.__dict__.items()
        if key.endswith("_mtok") and isinstance(value, (Decimal, TieredPrices))
    ]


def _plain(value: Decimal, places: int = 2) -> str:
    """Exact, without exponent, at least ``places`` decimals: a bill must not round."""
    text = format(value.normalize(), "f")
    whole, _, fraction = text.partition(".")
    return f"{int(whole):,}.{fraction.ljust(places, '0')}" if not whole.startswith("-") else text


def _table(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right, strict=True)]
        out.append("  " + "  ".join(cells).rstrip())
    return "\n".join(out)


def _price_text(
    args: argparse.Namespace,
    model_id: str,
    model_price: ModelPrice,
    source: str,
    at: datetime,
    tier: str,
    usage: Usage | None,
    lines: list[BillLine],
    total: Decimal | None,
) -> str:
    from genai_prices.types import TieredPrices

    mode = ", batch" if args.batch else ""
    head = [
        f"{args.model}  priced as {model_id}",
        f"  prices: {source}, in force on {at.date().isoformat()} (UTC); service tier: {tier}{mode}",
    ]
    rates = _token_rates(model_price)
    steps = sorted({t.start for _, p in rates if isinstance(p, TieredPrices) for t in p.tiers})
    for start in steps:
        where = ""
        if usage is not None:
            side = "above" if usage.input_tokens > start else "not above"
            where = f"\n    (this call's {usage.input_tokens:,} input tokens are {side} it)"
        head.append(f"  long context: a prompt above {start:,} input tokens bills the whole call higher{where}")
    if usage is None:
        rows = [["rate", "USD / 1M tokens", ""]]
        for key, price in sorted(rates, key=lambda kv: _order(kv[0])):
            if isinstance(price, TieredPrices):
                above = ", ".join(f"{_plain(t.price)} above {t.start:,}" for t in price.tiers)
                rows.append([_LABELS.get(key, key), _plain(price.base), f"({above})"])
            else:
                rows.append([_LABELS.get(key, key), _plain(price), ""])
        return "\n".join([*head, "", _table(rows, (False, True, False))])
    rows = [["item", "tokens", "USD / 1M", "USD", ""]]
    lines = sorted(lines, key=lambda line: _order(line.price_key))
    *amounts, shown_total = usd_column([*(line.amount for line in lines), total or Decimal(0)])
    for line, amount in zip(lines, amounts, strict=True):
        label = _LABELS.get(line.price_key, line.price_key)
        rows.append([label, f"{line.count:,}", _plain(line.rate), amount, ""])
        if line.price_key == "output_mtok" and usage.reasoning_tokens:
            note = "inside output: billed once, not added again"
            rows.append(["  of which reasoning", f"{usage.reasoning_tokens:,}", "", "", note])
    rows.append(["total", "", "", shown_total, ""])
    return "\n".join([*head, "", _table(rows, (False, True, True, True, False))])


def _order(price_key: str) -> int:
    keys = list(_LABELS)
    return keys.index(price_key) if price_key in keys else len(keys)


# --- --list -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    model: str
    source: str
    prices: ModelPrice
    variants: tuple[str, ...]


def _variants(info: ModelInfo, at: datetime) -> tuple[str, ...]:
    from costspan.pricing.pricer import STANDARD_TIERS

    names = []
    for variant in info.price_variants or ():
        if variant.constraint is not None and not variant.constraint.active(at):
            continue
        value = variant.when.get("service_tier") or ("batch" if variant.when.get("processing") == "batch" else None)
        if value and value not in STANDARD_TIERS and value not in names:
            names.append(value)
    return tuple(names)


def _list_rows(args: argparse.Namespace, at: datetime) -> list[_Row]:
    from costspan.pricing.overrides import OverridePrices, discounted
    from costspan.pricing.pricer import packaged_prices

    layer = _layers(args)[0]
    wanted = (args.list or "").lower()
    rows = []
    discount = Decimal(0)
    if isinstance(layer, OverridePrices):  # the file's own entries in force that day come first
        day = at.date()
        pricing = layer.pricing
        discount = pricing.discounts.get(args.provider, Decimal(0))
        latest: dict[tuple[str, str | None, bool], Any] = {}
        for entry in pricing.entries:
            if entry.provider not in (None, args.provider) or (entry.effective_from or date.min) > day:
                continue
            key = (entry.model, entry.service_tier, entry.batch)
            if key not in latest or (entry.effective_from or date.min) >= (latest[key].effective_from or date.min):
                latest[key] = entry
        for (model, tier, batch), entry in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
            if wanted in model:
                prices = discounted(entry.model_price(), discount) if discount else entry.model_price()
                extra = tuple(x for x in (tier, "batch" if batch else None) if x)
                rows.append(_Row(model, pricing.source, prices, extra))
    for info in sorted(packaged_prices().models(args.provider), key=lambda i: i.id):
        if wanted not in info.id.lower():
            continue
        prices = info.get_prices(at)
        if discount:
            prices = discounted(prices, discount)
        rows.append(_Row(info.id, packaged_prices().source, prices, _variants(info, at)))
    return rows


def _cell(price: Any) -> str:
    from genai_prices.types import TieredPrices

    if isinstance(price, TieredPrices):
        return f"{_plain(price.base)}*"
    return _plain(price) if isinstance(price, Decimal) else "-"


def _list(args: argparse.Namespace) -> int:
    at: datetime = args.at or datetime.now(UTC)
    rows = _list_rows(args, at)
    if args.json:
        listed = [
            {
                "model": r.model,
                "source": r.source,
                "rates_per_million": _rates_json(r.prices),
                "variants": list(r.variants),
            }
            for r in rows
        ]
        print(json.dumps({"ok": True, "at": at.isoformat(), "provider": args.provider, "models": listed}, indent=2))
        return 0
    if not rows:
        raise _Failure(f"no {args.provider} model matches {args.list!r}")
    table = [["model", "input", "cached", "cache write", "output", "source", "other tiers"]]
    for r in rows:
        p = r.prices
        table.append(
            [
                r.model,
                _cell(getattr(p, "input_mtok", None)),
                _cell(getattr(p, "cache_read_mtok", None)),
                _cell(getattr(p, "cache_write_mtok", None)),
                _cell(getattr(p, "output_mtok", None)),
                "override" if r.source.startswith("override:") else r.source,
                ", ".join(r.variants),
            ]
        )
    print(f"USD per million tokens, standard tier, in force on {at.date().isoformat()} (UTC); * = long-context step")
    print(_table(table, (False, True, True, True, True, False, False)))
    return 0
