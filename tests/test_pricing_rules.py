"""Every billing rule, with dollars computed by hand.

Price source: the genai-prices 0.2.5 data frozen in tests/frozen_prices.py (as of 2026-11), in USD per million
tokens. Each case writes its arithmetic out: token count x rate, summed, then divided by 1,000,000. Service-tier
price variants in that data start on 2026-10-12 and batch ones on 2026-10-14, so most calls here are dated
2026-11-02.

The table uses ``costspan.pricing.pricer.Pricer`` directly (pure); a few end-to-end checks at the bottom go through
the real OpenAI SDK against ``FakeOpenAI`` and read ``gen_ai.usage.cost.amount`` off the span.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import openai
import pytest

from costspan import semconv
from costspan.pricing.pricer import Pricer
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from costspan.providers.openai.usage import normalize_usage
from costspan.usage import Usage
from tests.conftest import Pipeline

AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
M = 1_000_000


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    usage: Usage
    expected: Decimal | None  # None: no amount
    status: str = semconv.STATUS_PRICED
    tier: str | None = None
    batch: bool = False
    at: datetime = AT
    priced_as: str | None = None
    parts: dict[str, Decimal] = field(default_factory=dict)  # expected Cost buckets, where the case checks them


def usd(micro_dollars_times_rate: int | float | str) -> Decimal:
    """Sum of (tokens x USD-per-million rate), turned into dollars."""
    return Decimal(str(micro_dollars_times_rate)) / M


CASES = [
    # --- plain input and output, across the OpenAI line-up -------------------------------------------------
    Case("gpt-4o-mini", "gpt-4o-mini", Usage(1000, 500), usd(1000 * 0.15 + 500 * 0.6)),  # 150 + 300
    Case("gpt-4o", "gpt-4o", Usage(1000, 500), usd(1000 * 2.5 + 500 * 10)),  # 2500 + 5000
    Case("gpt-4.1", "gpt-4.1", Usage(1000, 500), usd(1000 * 2 + 500 * 8)),  # 2000 + 4000
    Case("gpt-4.1-mini", "gpt-4.1-mini", Usage(1000, 500), usd("1200")),  # 1000 x 0.40 + 500 x 1.60 = 400 + 800
    Case("gpt-4.1-nano", "gpt-4.1-nano", Usage(1000, 500), usd("300")),  # 1000 x 0.10 + 500 x 0.40 = 100 + 200
    Case("gpt-5", "gpt-5", Usage(1000, 500), usd("6250")),  # 1000 x 1.25 + 500 x 10 = 1250 + 5000
    Case("gpt-5-mini", "gpt-5-mini", Usage(1000, 500), usd("1250")),  # 1000 x 0.25 + 500 x 2 = 250 + 1000
    Case("gpt-5-nano", "gpt-5-nano", Usage(1000, 500), usd("250")),  # 1000 x 0.05 + 500 x 0.40 = 50 + 200
    Case("gpt-5.1", "gpt-5.1", Usage(1000, 500), usd("6250")),  # 1000 x 1.25 + 500 x 10 = 1250 + 5000
    Case("gpt-5.2", "gpt-5.2", Usage(1000, 500), usd("8750")),  # 1000 x 1.75 + 500 x 14 = 1750 + 7000
    Case("gpt-5.4-mini", "gpt-5.4-mini", Usage(1000, 500), usd("3000")),  # 1000 x 0.75 + 500 x 4.50 = 750 + 2250
    Case("gpt-5.5", "gpt-5.5", Usage(1000, 500), usd("20000")),  # 1000 x 5 + 500 x 30 = 5000 + 15000
    Case("gpt-5.5-pro", "gpt-5.5-pro", Usage(1000, 500), usd("120000")),  # 1000 x 30 + 500 x 180 = 30000 + 90000
    Case("gpt-5.6-luna", "gpt-5.6-luna", Usage(1000, 500), usd("800")),  # 1000 x 0.20 + 500 x 1.20 = 200 + 600
    Case("gpt-6.1-sol", "gpt-6.1-sol", Usage(1000, 500), usd("7000")),  # 1000 x 2 + 500 x 10 = 2000 + 5000
    Case("o3-deep-research", "o3-deep-research", Usage(1000, 500), usd("30000")),  # 1000 x 10 + 500 x 40
    Case("o1", "o1", Usage(1000, 500), usd("45000")),  # 1000 x 15 + 500 x 60 = 15000 + 30000
    Case("o3-mini", "o3-mini", Usage(1000, 500), usd("3300")),  # 1000 x 1.10 + 500 x 4.40 = 1100 + 2200
    Case("o3-pro", "o3-pro", Usage(1000, 500), usd("60000")),  # 1000 x 20 + 500 x 80 = 20000 + 40000
    Case("o4-mini", "o4-mini", Usage(1000, 500), usd("3300")),  # 1000 x 1.10 + 500 x 4.40 = 1100 + 2200
    # --- cached input at the cache-read rate ----------------------------------------------------------------
    # gpt-4o-mini: 2048 prompt tokens of which 1024 cached; 100 output.
    # 1024 x 0.15 + 1024 x 0.075 + 100 x 0.60 = 153.6 + 76.8 + 60 = 290.4
    Case(
        "cached/gpt-4o-mini",
        "gpt-4o-mini",
        Usage(2048, 100, cache_read_tokens=1024),
        usd("290.4"),
        parts={"input": usd("153.6"), "cache_read": usd("76.8"), "output": usd("60")},
    ),
    # gpt-4.1: 1,000,000 prompt tokens of which 250,000 cached; 100,000 output.
    # 750,000 x 2 + 250,000 x 0.50 + 100,000 x 8 = 1,500,000 + 125,000 + 800,000 = 2,425,000 -> $2.425
    Case("cached/gpt-4.1", "gpt-4.1", Usage(M, 100_000, cache_read_tokens=250_000), Decimal("2.425")),
    # o4-mini: 10,000 prompt, 8,000 cached, 1,000 output. 2,000 x 1.10 + 8,000 x 0.275 + 1,000 x 4.40
    # = 2,200 + 2,200 + 4,400 = 8,800
    Case("cached/o4-mini", "o4-mini", Usage(10_000, 1000, cache_read_tokens=8000), usd("8800")),
    # --- cache writes at the cache-write rate (OpenAI models that charge one) -------------------------------
    # gpt-6-sol: 10,000 prompt = 4,000 uncached + 4,000 cache read + 2,000 cache write; 1,000 output.
    # 4,000 x 2 + 4,000 x 0.20 + 2,000 x 2.50 + 1,000 x 10 = 8,000 + 800 + 5,000 + 10,000 = 23,800
    Case(
        "cache-write/gpt-6-sol",
        "gpt-6-sol",
        Usage(10_000, 1000, cache_read_tokens=4000, cache_write_tokens=2000),
        usd("23800"),
        parts={"input": usd("8000"), "cache_read": usd("800"), "cache_write": usd("5000"), "output": usd("10000")},
    ),
    # gpt-5.6-sol: same usage; input 4, cache read 0.40, write 5, output 20.
    # 4,000 x 4 + 4,000 x 0.40 + 2,000 x 5 + 1,000 x 20 = 16,000 + 1,600 + 10,000 + 20,000 = 47,600
    Case(
        "cache-write/gpt-5.6-sol",
        "gpt-5.6-sol",
        Usage(10_000, 1000, cache_read_tokens=4000, cache_write_tokens=2000),
        usd("47600"),
    ),
    # gpt-6.1-sol: same usage; cache read 0.10, write 2.50.
    # 4,000 x 2 + 4,000 x 0.10 + 2,000 x 2.50 + 1,000 x 10 = 8,000 + 400 + 5,000 + 10,000 = 23,400
    Case(
        "cache-write/gpt-6.1-sol",
        "gpt-6.1-sol",
        Usage(10_000, 1000, cache_read_tokens=4000, cache_write_tokens=2000),
        usd("23400"),
    ),
    # --- reasoning is inside output, never added again ------------------------------------------------------
    # The seed document's gpt-5.5 event, done right: 15,234 prompt (12,000 cached), completion 5,312 of which
    # 4,500 reasoning. 3,234 x 5 + 12,000 x 0.50 + 5,312 x 30 = 16,170 + 6,000 + 159,360 = 181,530 -> $0.18153
    # (the seed adds the 4,500 again and uses a cached rate of half the input rate; the data says a tenth).
    Case(
        "reasoning/gpt-5.5-seed-example",
        "gpt-5.5",
        Usage(15_234, 5312, cache_read_tokens=12_000, reasoning_tokens=4500),
        Decimal("0.18153"),
        parts={"input": usd("16170"), "cache_read": usd("6000"), "output": usd("159360")},
    ),
    # o3: 2,000 prompt, 3,000 completion of which 2,500 reasoning. 2,000 x 2 + 3,000 x 8 = 4,000 + 24,000
    # = 28,000 -> $0.028 (adding the reasoning again would give $0.048).
    Case("reasoning/o3", "o3", Usage(2000, 3000, reasoning_tokens=2500), Decimal("0.028")),
    # gpt-5-mini: 500 prompt, 4,000 completion of which 3,900 reasoning. 500 x 0.25 + 4,000 x 2 = 125 + 8,000
    Case("reasoning/gpt-5-mini", "gpt-5-mini", Usage(500, 4000, reasoning_tokens=3900), usd("8125")),
    # --- predicted outputs: accepted and rejected tokens are inside completion_tokens, billed as output -----
    # gpt-4o: 1,000 prompt; 300 completion, of which 100 accepted and 50 rejected prediction tokens.
    # 1,000 x 2.50 + 300 x 10 = 2,500 + 3,000 = 5,500
    Case(
        "prediction/gpt-4o",
        "gpt-4o",
        Usage(1000, 300, prediction_accepted_tokens=100, prediction_rejected_tokens=50),
        usd("5500"),
    ),
    # --- audio tokens at the audio rates --------------------------------------------------------------------
    # gpt-audio: 1,000 prompt of which 400 audio; 600 completion of which 500 audio.
    # 600 x 2.50 + 400 x 32 + 100 x 10 + 500 x 64 = 1,500 + 12,800 + 1,000 + 32,000 = 47,300
    Case(
        "audio/gpt-audio",
        "gpt-audio-2025-08-28",
        Usage(1000, 600, input_audio_tokens=400, output_audio_tokens=500),
        usd("47300"),
        priced_as="gpt-audio",
    ),
    # --- image tokens at the image rate ---------------------------------------------------------------------
    # gpt-image-1: 300 prompt of which 250 image; 4,160 output (image output bills at the output rate, $40).
    # 50 x 5 + 250 x 10 + 4,160 x 40 = 250 + 2,500 + 166,400 = 169,150
    Case("image/gpt-image-1", "gpt-image-1", Usage(300, 4160, input_image_tokens=250), usd("169150")),
    # --- long-context step at 272K: the whole request switches, as OpenAI bills it ---------------------------
    # gpt-5.5 at exactly 272,000 prompt tokens is not above the step: 272,000 x 5 + 1,000 x 30
    # = 1,360,000 + 30,000 = 1,390,000 -> $1.39
    Case("long-context/gpt-5.5-at-272000", "gpt-5.5", Usage(272_000, 1000), Decimal("1.39")),
    # one token more and every token bills higher: 272,001 x 10 + 1,000 x 45 = 2,720,010 + 45,000 = 2,765,010
    Case("long-context/gpt-5.5-at-272001", "gpt-5.5", Usage(272_001, 1000), usd("2765010")),
    # cached tokens switch too: 72,001 x 10 + 200,000 x 1 + 1,000 x 45 = 720,010 + 200,000 + 45,000 = 965,010
    Case(
        "long-context/gpt-5.5-cached",
        "gpt-5.5",
        Usage(272_001, 1000, cache_read_tokens=200_000),
        usd("965010"),
    ),
    # gpt-6-astra above the step: 300,000 x 20 + 1,000 x 75 = 6,000,000 + 75,000 = 6,075,000 -> $6.075
    Case("long-context/gpt-6-astra", "gpt-6-astra", Usage(300_000, 1000), Decimal("6.075")),
    # gpt-5.4: 272,000 x 2.50 + 1,000 x 15 = 680,000 + 15,000 = 695,000
    Case("long-context/gpt-5.4-at-272000", "gpt-5.4", Usage(272_000, 1000), usd("695000")),
    # gpt-5.4: 272,001 x 5 + 1,000 x 22.50 = 1,360,005 + 22,500 = 1,382,505
    Case("long-context/gpt-5.4-at-272001", "gpt-5.4", Usage(272_001, 1000), usd("1382505")),
    # --- service tiers, from the response's service_tier ----------------------------------------------------
    # gpt-5 flex: 10,000 prompt (2,000 cached), 1,000 output. 8,000 x 0.625 + 2,000 x 0.0625 + 1,000 x 5
    # = 5,000 + 125 + 5,000 = 10,125
    Case("tier/gpt-5-flex", "gpt-5", Usage(10_000, 1000, cache_read_tokens=2000), usd("10125"), tier="flex"),
    # gpt-5 priority: 8,000 x 2.50 + 2,000 x 0.25 + 1,000 x 20 = 20,000 + 500 + 20,000 = 40,500
    Case("tier/gpt-5-priority", "gpt-5", Usage(10_000, 1000, cache_read_tokens=2000), usd("40500"), tier="priority"),
    # a priority request the provider downgraded reports "default" and bills as default:
    # 8,000 x 1.25 + 2,000 x 0.125 + 1,000 x 10 = 10,000 + 250 + 10,000 = 20,250
    Case("tier/gpt-5-downgraded", "gpt-5", Usage(10_000, 1000, cache_read_tokens=2000), usd("20250"), tier="default"),
    # gpt-5.5 priority has one flat rate, even above 272K: 300,000 x 12.50 + 1,000 x 75 = 3,750,000 + 75,000
    Case("tier/gpt-5.5-priority-long", "gpt-5.5", Usage(300_000, 1000), usd("3825000"), tier="priority"),
    # gpt-5.5 flex keeps the step: 300,000 x 5 + 1,000 x 22.50 = 1,500,000 + 22,500 = 1,522,500
    Case("tier/gpt-5.5-flex-long", "gpt-5.5", Usage(300_000, 1000), usd("1522500"), tier="flex"),
    # o4-mini flex: 1,000 x 0.55 + 500 x 2.20 = 550 + 1,100 = 1,650
    Case("tier/o4-mini-flex", "o4-mini", Usage(1000, 500), usd("1650"), tier="flex"),
    # a tier the model has no price for is flagged, never billed as standard
    Case("tier/gpt-5-scale-unknown", "gpt-5", Usage(1000, 500), None, semconv.STATUS_UNKNOWN_TIER, tier="scale"),
    Case("tier/o1-flex-unknown", "o1", Usage(1000, 500), None, semconv.STATUS_UNKNOWN_TIER, tier="flex"),
    # a tier price not yet in force on the call's day is unknown too (the data's flex price starts 2026-10-12)
    Case(
        "tier/gpt-5-flex-before-its-price",
        "gpt-5",
        Usage(1000, 500),
        None,
        semconv.STATUS_UNKNOWN_TIER,
        tier="flex",
        at=datetime(2026, 10, 11, 12, tzinfo=UTC),
    ),
    # --- Batch API ------------------------------------------------------------------------------------------
    # gpt-4.1 batch: 1,000,000 x 1 + 1,000,000 x 4 = $5 (standard would be $10)
    Case("batch/gpt-4.1", "gpt-4.1", Usage(M, M), Decimal(5), batch=True),
    # gpt-5 batch: 8,000 x 0.625 + 2,000 x 0.0625 + 1,000 x 5 = 5,000 + 125 + 5,000 = 10,125
    Case("batch/gpt-5", "gpt-5", Usage(10_000, 1000, cache_read_tokens=2000), usd("10125"), batch=True),
    # gpt-5.5 batch above the step: 300,000 x 5 + 1,000 x 22.50 = 1,522,500
    Case("batch/gpt-5.5-long", "gpt-5.5", Usage(300_000, 1000), usd("1522500"), batch=True),
    # o3 batch: 1,000 x 1 + 500 x 4 = 3,000
    Case("batch/o3", "o3", Usage(1000, 500), usd("3000"), batch=True),
    # Cached input in a batch, where OpenAI's Batch table shows no cached rate (genai-prices 0.2.5: "The Batch
    # table publishes no cached-input rate, so cached input keeps the standard rate"). 1,000,000 in of which
    # 400,000 cached, 100,000 out; batch input and output rates, the standard cached rate (docs/cost.md, "Batch"):
    # gpt-4.1: 600,000 x 1 + 400,000 x 0.50 + 100,000 x 4 = 600,000 + 200,000 + 400,000
    Case("batch-cached/gpt-4.1", "gpt-4.1", Usage(M, 100_000, 400_000), Decimal("1.2"), batch=True),
    # gpt-4.1-mini: 600,000 x 0.20 + 400,000 x 0.10 + 100,000 x 0.80 = 120,000 + 40,000 + 80,000
    Case("batch-cached/gpt-4.1-mini", "gpt-4.1-mini", Usage(M, 100_000, 400_000), Decimal("0.24"), batch=True),
    # gpt-4.1-nano: 600,000 x 0.05 + 400,000 x 0.025 + 100,000 x 0.20 = 30,000 + 10,000 + 20,000
    Case("batch-cached/gpt-4.1-nano", "gpt-4.1-nano", Usage(M, 100_000, 400_000), Decimal("0.06"), batch=True),
    # o3: 600,000 x 1 + 400,000 x 0.50 + 100,000 x 4 = 600,000 + 200,000 + 400,000
    Case("batch-cached/o3", "o3", Usage(M, 100_000, 400_000), Decimal("1.2"), batch=True),
    # o4-mini: 600,000 x 0.55 + 400,000 x 0.275 + 100,000 x 2.20 = 330,000 + 110,000 + 220,000
    Case("batch-cached/o4-mini", "o4-mini", Usage(M, 100_000, 400_000), Decimal("0.66"), batch=True),
    # a model without a batch price is flagged, not billed at the standard rate
    Case("batch/gpt-audio-unknown", "gpt-audio", Usage(1000, 500), None, semconv.STATUS_UNKNOWN_TIER, batch=True),
    # --- embeddings: input only -----------------------------------------------------------------------------
    Case("embeddings/3-small", "text-embedding-3-small", Usage(M, 0), Decimal("0.02")),  # 1,000,000 x 0.02
    Case("embeddings/3-large", "text-embedding-3-large", Usage(8191, 0), usd("1064.83")),  # 8,191 x 0.13
    Case("embeddings/ada-002", "text-embedding-ada-002", Usage(5000, 0), usd("500")),  # 5,000 x 0.10
    # --- legacy completions ---------------------------------------------------------------------------------
    Case("legacy/gpt-3.5-turbo-instruct", "gpt-3.5-turbo-instruct", Usage(1000, 500), usd("2500")),  # 1500 + 1000
    Case("legacy/davinci-002", "davinci-002", Usage(1000, 500), usd("3000")),  # 1000 x 2 + 500 x 2
    # --- dated prices: o3 changed on 2025-06-10 (UTC); each call keeps the rate of its day -------------------
    # before: 1,000 x 10 + 1,000 x 40 = 50,000 -> $0.05
    Case(
        "dated/o3-before-2025-06-10",
        "o3",
        Usage(1000, 1000),
        Decimal("0.05"),
        at=datetime(2025, 6, 9, 23, 59, 59, tzinfo=UTC),
    ),
    # from that day: 1,000 x 2 + 1,000 x 8 = 10,000 -> $0.01
    Case(
        "dated/o3-from-2025-06-10",
        "o3",
        Usage(1000, 1000),
        Decimal("0.01"),
        at=datetime(2025, 6, 10, 0, 0, 0, tzinfo=UTC),
    ),
    # --- model names ----------------------------------------------------------------------------------------
    Case("name/dated-snapshot", "gpt-4o-mini-2024-07-18", Usage(1000, 500), usd("450"), priced_as="gpt-4o-mini"),
    Case("name/gpt-4.1-snapshot", "gpt-4.1-2025-04-14", Usage(1000, 500), usd("6000"), priced_as="gpt-4.1"),
    Case("name/o3-snapshot", "o3-2025-04-16", Usage(1000, 500), usd("6000"), priced_as="o3"),  # 2000 + 4000
    Case("name/gpt-5.5-snapshot", "gpt-5.5-2026-04-23", Usage(1000, 500), usd("20000"), priced_as="gpt-5.5"),
    # the data itself lists plain "gpt-5.6" as a name of gpt-5.6-sol: 1,000 x 4 + 500 x 20 = 4,000 + 10,000
    Case("name/gpt-5.6", "gpt-5.6", Usage(1000, 500), usd("14000"), priced_as="gpt-5.6-sol"),
    Case("name/upper-case", "GPT-4O-MINI", Usage(1000, 500), usd("450"), priced_as="gpt-4o-mini"),
    # fine-tunes of gpt-4o-mini have their own rates: 1,000 x 0.30 + 1,000 x 1.20 = 1,500
    Case(
        "name/ft-gpt-4o-mini",
        "ft:gpt-4o-mini-2024-07-18:acme::9abcDEF",
        Usage(1000, 1000),
        usd("1500"),
        priced_as="ft:gpt-4o-mini",
    ),
    # a fine-tune the data has no price for is unknown, never its base model's price
    Case(
        "name/ft-gpt-4.1-unknown",
        "ft:gpt-4.1-2025-04-14:acme::9abcDEF",
        Usage(1000, 1000),
        None,
        semconv.STATUS_UNKNOWN_MODEL,
    ),
    Case("name/near-neighbour-unknown", "gpt-4.1-turbo-x", Usage(1000, 1000), None, semconv.STATUS_UNKNOWN_MODEL),
    Case("name/azure-deployment-unknown", "prod-chat-eu", Usage(1000, 1000), None, semconv.STATUS_UNKNOWN_MODEL),
]


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_billing_rule(pricer: Pricer, case: Case) -> None:
    cost = pricer.price(case.usage, case.model, at=case.at, service_tier=case.tier, batch=case.batch)
    assert cost.status == case.status, cost.note
    assert cost.total == case.expected
    if case.priced_as:
        assert cost.model_id == case.priced_as
    for bucket, amount in case.parts.items():
        assert getattr(cost, bucket) == amount, bucket
    if case.expected is not None:
        assert cost.input + cost.cache_read + cost.cache_write + cost.output == cost.total
        assert (cost.source, cost.version) == ("genai-prices", genai_prices.__version__)


def test_unknown_tier_names_the_missing_price(pricer: Pricer) -> None:
    cost = pricer.price(Usage(1000, 500), "gpt-5-2025-08-07", at=AT, service_tier="scale")
    assert cost.note == "no 'scale' service-tier price for gpt-5"
    cost = pricer.price(Usage(1000, 500), "gpt-audio", at=AT, batch=True)
    assert cost.note == "no batch price for gpt-audio"


def test_a_price_change_never_rewrites_history(pricer: Pricer) -> None:
    """The same pricer, asked about the new day first, still prices an old call at the old rate."""
    usage = Usage(1000, 1000)
    after = pricer.price(usage, "o3", at=datetime(2025, 7, 1, tzinfo=UTC))
    before = pricer.price(usage, "o3", at=datetime(2025, 5, 1, tzinfo=UTC))
    again = pricer.price(usage, "o3", at=datetime(2025, 7, 1, tzinfo=UTC))
    assert (before.total, after.total, again.total) == (Decimal("0.05"), Decimal("0.01"), Decimal("0.01"))


O3_CUT_NS = int(datetime(2025, 6, 10, tzinfo=UTC).timestamp()) * 10**9


def test_the_last_nanosecond_of_a_day_keeps_that_days_price() -> None:
    """Span clocks are Unix nanoseconds. The last one before o3's price cut is still 2025-06-09 (a float conversion
    rounded it into the 10th, and the memo then served the new price to the rest of the 9th)."""
    pricer = Pricer()
    usage = Usage(1000, 1000)
    last = pricer.price(usage, "o3", at=O3_CUT_NS - 1)
    earlier_that_day = pricer.price(usage, "o3", at=O3_CUT_NS - 3_600 * 10**9)
    cut = pricer.price(usage, "o3", at=O3_CUT_NS)
    assert (last.total, earlier_that_day.total, cut.total) == (Decimal("0.05"), Decimal("0.05"), Decimal("0.01"))


def test_a_naive_datetime_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """genai-prices reads a naive datetime as UTC; so does the memo, even where local time is New York's."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        pricer = Pricer()
        usage = Usage(1000, 1000)
        late_on_the_9th = pricer.price(usage, "o3", at=datetime(2025, 6, 9, 23, 0))  # 19:00 in New York
        noon_on_the_10th = pricer.price(usage, "o3", at=datetime(2025, 6, 10, 12, 0, tzinfo=UTC))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (late_on_the_9th.total, noon_on_the_10th.total) == (Decimal("0.05"), Decimal("0.01"))


def test_a_model_priced_only_per_minute_or_character_is_not_priced_at_zero(pricer: Pricer) -> None:
    """whisper-1 and tts-1 have no token rate: their token usage cannot be priced, and $0 would be a guess."""
    usage = Usage(1000, 50, input_audio_tokens=990)
    for model in ("whisper-1", "tts-1"):
        cost = pricer.price(usage, model, at=AT)
        assert (cost.status, cost.total) == (semconv.STATUS_UNKNOWN_MODEL, None), model
        assert cost.note == "priced only per audio minute or character, which responses do not report"


def test_the_seed_event_as_written_is_malformed_usage() -> None:
    """The seed's event reports 4,500 reasoning tokens inside an 812-token completion: impossible, so no usage."""
    seed = {
        "prompt_tokens": 15234,
        "completion_tokens": 812,
        "prompt_tokens_details": {"cached_tokens": 12000},
        "completion_tokens_details": {"reasoning_tokens": 4500},
    }
    assert normalize_usage(seed) is None


def test_no_usage_and_parts_above_totals() -> None:
    pricer = Pricer()
    assert pricer.price(None, "gpt-4o", at=AT).status == semconv.STATUS_NO_USAGE
    contradiction = Usage(100, 10, input_audio_tokens=500)  # 500 audio tokens inside a 100-token prompt
    cost = pricer.price(contradiction, "gpt-audio", at=AT)
    assert (cost.status, cost.total) == (semconv.STATUS_INCOMPLETE, None)


def test_lookups_are_memoized(pricer: Pricer) -> None:
    first = pricer.resolve("gpt-4.1-2025-04-14", "openai", AT)
    assert first is pricer.resolve("gpt-4.1-2025-04-14", "openai", AT.replace(hour=23))
    assert first is not pricer.resolve("gpt-4.1-2025-04-14", "openai", AT.replace(day=3))


# --- end to end: real SDK, loopback server, the span's attributes ---------------------------------------------


def _cost_attrs(p: Pipeline) -> dict[str, Any]:
    return dict(p.span().attributes or {})


def test_e2e_chat_cached_and_reasoning(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    # gpt-5.5 (the fake reports gpt-5.5-2026-04-23): 3,234 x 5 + 12,000 x 0.50 + 5,312 x 30 = 181,530 -> $0.18153
    fake_openai.script(
        Scripted(
            model="gpt-5.5-2026-04-23",
            usage={
                "prompt_tokens": 15234,
                "completion_tokens": 5312,
                "total_tokens": 20546,
                "prompt_tokens_details": {"cached_tokens": 12000},
                "completion_tokens_details": {"reasoning_tokens": 4500},
            },
        )
    )
    client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "hi"}])
    a = _cost_attrs(pipeline)
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.18153
    assert a[semconv.COSTSPAN_COST_OUTPUT] == 0.15936
    assert a[semconv.COSTSPAN_PRICING_MODEL] == "gpt-5.5"


def test_e2e_priority_downgraded_bills_default(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    # asked for priority, the response says default: 1,000 x 1.25 + 500 x 10 = 6,250 -> $0.00625
    fake_openai.script(Scripted(service_tier="default", usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}], service_tier="priority")
    a = _cost_attrs(pipeline)
    assert a[semconv.OPENAI_REQUEST_SERVICE_TIER] == "priority"
    assert a[semconv.OPENAI_RESPONSE_SERVICE_TIER] == "default"
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.00625


def test_e2e_flex_from_the_response(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    # the fake answers in flex: 1,000 x 0.625 + 500 x 5 = 3,125 -> $0.003125 (only if the call ran today's data)
    fake_openai.script(Scripted(service_tier="flex", usage={"input_tokens": 1000, "output_tokens": 500}))
    client.responses.create(model="gpt-5", input="hi", service_tier="flex")
    a = _cost_attrs(pipeline)
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.003125


def test_e2e_unknown_tier_is_flagged(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(Scripted(service_tier="scale", usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    a = _cost_attrs(pipeline)
    assert a[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_UNKNOWN_TIER
    assert a[semconv.COSTSPAN_PRICING_NOTE] == "no 'scale' service-tier price for gpt-5"
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a


def test_e2e_embeddings_input_only(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    # 8,191 x 0.13 = 1,064.83 -> $0.00106483
    fake_openai.script(Scripted(usage={"prompt_tokens": 8191, "total_tokens": 8191}))
    client.embeddings.create(model="text-embedding-3-large", input="hello")
    assert _cost_attrs(pipeline)[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.00106483


def test_e2e_legacy_completion(pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    # 1,000 x 1.50 + 500 x 2 = 2,500 -> $0.0025
    fake_openai.script(Scripted(usage={"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}))
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert _cost_attrs(pipeline)[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.0025


def test_e2e_unknown_fine_tune_has_no_amount(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Scripted(usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    client.chat.completions.create(model="ft:gpt-4.1-2025-04-14:acme::x1", messages=[{"role": "user", "content": "hi"}])
    a = _cost_attrs(pipeline)
    assert a[semconv.COSTSPAN_PRICING_STATUS] == semconv.STATUS_UNKNOWN_MODEL
    assert semconv.GEN_AI_USAGE_COST_AMOUNT not in a


def test_e2e_batch_usage_bills_batch_rates_tagged_with_the_batch_id(
    pipeline: Pipeline, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    """A finished Batch that reports usage is billed at batch rates, as of its creation (2026-11: in force).

    gpt-4.1 batch: 600,000 x 1 + 200,000 x 0.50 (cache read keeps its standard rate in the data's batch
    variant) + 100,000 x 4 = 600,000 + 100,000 + 400,000 = 1,100,000 -> $1.10
    """
    usage = {
        "input_tokens": 800_000,
        "input_tokens_details": {"cached_tokens": 200_000},
        "output_tokens": 100_000,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 900_000,
    }
    # The create call, a first read (in progress), then the read that finds the job finished.
    fake_openai.script(Scripted(), Scripted(), Scripted(usage=usage, model="gpt-4.1-2025-04-14"))
    batch = client.batches.create(input_file_id="file-in", endpoint="/v1/chat/completions", completion_window="24h")
    client.batches.retrieve(batch.id)
    client.batches.retrieve(batch.id)
    job = pipeline.spans()[-1]
    a = dict(job.attributes or {})
    assert a[semconv.COSTSPAN_BATCH_ID] == batch.id
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 1.1
