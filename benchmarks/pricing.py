"""Nanoseconds per cost computation: costspan's memoized pricing versus ``genai_prices.calc_price``.

    .venv/bin/python benchmarks/pricing.py [--rounds 15] [--calls 20000]

Each round times every case back to back (interleaved), ``--calls`` computations each; the report is the median
ns per computation over the rounds. The costspan cases are the request path: ``Pricer.price`` with a dated
snapshot name, cached and reasoning tokens, and the price lookup memoized per (model, UTC day, tier, batch).
"cold lookup" is the first call for a model on a day: match the name, resolve dated prices, build the sheet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import genai_prices

from costspan.pricing.overrides import price_layers
from costspan.pricing.pricer import PackagedPrices, Pricer, usage_counts
from costspan.usage import Usage

AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
USAGE = Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1024, reasoning_tokens=120)
OVERRIDES = """\
[discounts]
openai = 10

[aliases]
"prod-chat-eu" = "gpt-4.1"
"""


def cases(override_file: Path) -> dict[str, Callable[[], object]]:
    packaged = Pricer()
    overridden = Pricer(price_layers(override_file))
    genai_usage = genai_prices.Usage(**usage_counts(USAGE))

    def cold() -> object:
        return Pricer([PackagedPrices()]).price(USAGE, "gpt-4.1-2025-04-14", at=AT)

    return {
        "costspan gpt-4.1 (memoized)": lambda: packaged.price(USAGE, "gpt-4.1-2025-04-14", at=AT),
        "costspan gpt-5.5 tiered (memoized)": lambda: packaged.price(USAGE, "gpt-5.5-2026-04-23", at=AT),
        "costspan gpt-5 flex (memoized)": lambda: packaged.price(USAGE, "gpt-5", at=AT, service_tier="flex"),
        "costspan alias + discount (memoized)": lambda: overridden.price(USAGE, "prod-chat-eu", at=AT),
        "costspan cold lookup": cold,
        "genai_prices.calc_price gpt-4.1": lambda: genai_prices.calc_price(
            genai_usage, "gpt-4.1-2025-04-14", provider_id="openai", genai_request_timestamp=AT
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        override_file = Path(tmp) / "prices.toml"
        override_file.write_text(OVERRIDES)
        timed = cases(override_file)
        samples: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.rounds):
            for name, fn in timed.items():
                calls = args.calls if "memoized" in name else max(args.calls // 100, 20)  # the slow ones, fewer
                fn()  # warm
                start = time.perf_counter_ns()
                for _ in range(calls):
                    fn()
                samples[name].append((time.perf_counter_ns() - start) / calls)
    reference = statistics.median(samples["genai_prices.calc_price gpt-4.1"])
    width = max(len(name) for name in samples)
    print(f"{'case':<{width}}  {'ns/call (median)':>16}  {'vs calc_price':>13}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<{width}}  {median:>16,.0f}  {median / reference:>12.3f}x")
    print(f"\n{args.rounds} interleaved rounds; memoized cases {args.calls:,} calls per round.")


if __name__ == "__main__":
    main()
