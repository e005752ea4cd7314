"""costspan's fast price sheets agree with genai-prices' own calculation, to the Decimal.

For every OpenAI model in the installed genai-prices data (and every service tier and the batch mode it has a
price for), random usages, some across the long-context step, are priced both ways.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, Provider

from costspan import semconv
from costspan.pricing.pricer import Cost, Pricer, PriceSheet, usage_counts
from costspan.usage import Usage

AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
USAGES_PER_CONTEXT = 25


def _openai() -> Provider:
    return next(p for p in data_snapshot.get_snapshot().providers if p.id == "openai")


def _contexts(info: ModelInfo) -> list[dict[str, str]]:
    """Standard prices plus each variant in force on AT."""
    contexts: list[dict[str, str]] = [{}]
    for variant in info.price_variants or ():
        if variant.constraint is None or variant.constraint.active(AT):
            contexts.append(dict(variant.when))
    return contexts


def _random_usage(rng: random.Random) -> Usage:
    # Parts first, so they never exceed their totals; a third of the prompts straddle the 272K step.
    size = rng.choice((rng.randint(0, 5000), rng.randint(0, 400_000), rng.choice((271_999, 272_000, 272_001))))
    cache_read = rng.randint(0, size // 2)
    cache_write = rng.randint(0, (size - cache_read) // 4)
    input_audio = rng.choice((0, rng.randint(0, (size - cache_read - cache_write) // 4)))
    input_image = rng.choice((0, rng.randint(0, (size - cache_read - cache_write - input_audio) // 4)))
    output = rng.randint(0, 50_000)
    reasoning = rng.choice((0, rng.randint(0, output)))
    output_audio = rng.choice((0, rng.randint(0, output - reasoning)))
    output_image = rng.choice((0, rng.randint(0, output - reasoning - output_audio)))
    return Usage(
        input_tokens=size,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        input_audio_tokens=input_audio,
        output_audio_tokens=output_audio,
        input_image_tokens=input_image,
        output_image_tokens=output_image,
    )


def _cases() -> Iterator[tuple[str, ModelInfo, dict[str, str]]]:
    for info in _openai().models:
        for context in _contexts(info):
            label = ",".join(f"{k}={v}" for k, v in sorted(context.items())) or "standard"
            yield f"{info.id}[{label}]", info, context


CASES = list(_cases())


@pytest.mark.parametrize(("info", "context"), [(i, c) for _, i, c in CASES], ids=[n for n, _, _ in CASES])
def test_price_sheet_equals_genai_prices(info: ModelInfo, context: dict[str, str]) -> None:
    provider = _openai()
    sheet = PriceSheet(info.get_prices(AT, context or None))
    rng = random.Random(f"{info.id}/{sorted(context.items())}")
    refused = 0
    for _ in range(USAGES_PER_CONTEXT):
        usage = _random_usage(rng)
        counts = usage_counts(usage)
        try:
            theirs = info.calc_price(
                GenaiUsage(**counts), provider, genai_request_timestamp=AT, price_context=context or None
            )
        except ValueError as refusal:  # e.g. cached tokens and image tokens, but which cached tokens were images?
            assert "Missing usage" in str(refusal)
            assert sheet.cost(usage) is None, usage
            refused += 1
            continue
        amounts = sheet.cost(usage)
        assert amounts is not None, usage
        cost = Cost(semconv.STATUS_PRICED, amounts, sheet.scale)
        ours_input = cost.input + cost.cache_read + cost.cache_write
        assert (ours_input, cost.output) == (theirs.input_price, theirs.output_price), usage
        assert cost.total == theirs.total_price, usage
        lines = sheet.breakdown(usage)
        assert lines is not None
        assert sum((line.amount for line in lines), Decimal(0)) == theirs.total_price
    assert refused < USAGES_PER_CONTEXT  # most usages are comparable


@pytest.mark.parametrize(
    ("name", "tier", "batch"),
    [
        ("gpt-4o-mini-2024-07-18", None, False),
        ("gpt-4.1-2025-04-14", "priority", False),
        ("gpt-5-2025-08-07", "flex", False),
        ("gpt-5.4-2026-03-05", None, False),
        ("gpt-5.5-2026-04-23", "flex", False),
        ("gpt-5.5", None, True),
        ("o3-2025-04-16", None, True),
        ("gpt-6-sol-2026-09-01", "priority", False),
    ],
)
def test_pricer_equals_genai_calc_price(name: str, tier: str | None, batch: bool) -> None:
    """The whole path, by model name as the API reports it, against genai_prices.calc_price."""
    import genai_prices

    pricer = Pricer()
    rng = random.Random(name)
    context = {k: v for k, v in (("service_tier", tier), ("processing", "batch" if batch else None)) if v}
    for _ in range(USAGES_PER_CONTEXT):
        usage = _random_usage(rng)
        cost = pricer.price(usage, name, at=AT, service_tier=tier, batch=batch)
        theirs = genai_prices.calc_price(
            GenaiUsage(**usage_counts(usage)),
            name,
            provider_id="openai",
            genai_request_timestamp=AT,
            price_context=context or None,
        )
        assert cost.status == semconv.STATUS_PRICED
        assert cost.total == theirs.total_price, usage
