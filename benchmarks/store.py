"""Store benchmark: ingest rows/s, and `costspan report` latency at 1M rows.

    .venv/bin/python benchmarks/store.py [--rows 1000000] [--store PATH]

Synthetic rows are spread evenly over the last 30 days: 12 features, 40 routes, 2,000 customers, 3 environments
(60% prod), log-normal prompt sizes. Ingest goes through ``Store.insert`` in batches of 512 (the
BatchSpanProcessor's default export size), the exporter's path; only the insert calls are timed, not building the
rows. Every command then runs in this process through ``costspan.cli.main``; the best of 3 runs is reported.
With ``--store`` an existing file is reused (and created on the first run), to time queries again quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from costspan.cli import main as cli_main
from costspan.store.sqlite import NS_PER_S, CostRow, Store, to_ns

FEATURES = [f"feature-{i}" for i in range(12)]
ROUTES = [f"/api/v1/route-{i}" for i in range(40)]
CUSTOMERS = [f"cust-{i:04d}" for i in range(2000)]
ENVIRONMENTS = ["prod", "prod", "prod", "staging", "dev"]
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini"]
BATCH = 512
DAYS = 30

COMMANDS = [
    "report --by feature --since 7d --env prod",  # the everyday question, over a quarter of the rows
    "report --by feature --since 30d",  # every row
    "report --by customer_id --since 30d --top 10",
    "report --by feature,customer_id --since 30d --top 20",
    "report --by feature --since 30d --every day",
    "alerts --by feature",
    "report --by route --since 1d --where customer_id=cust-0042",
]


def synthetic_rows(count: int, end: datetime, seed: int = 7) -> Iterator[CostRow]:
    rng = random.Random(seed)
    span_ns = DAYS * 86400 * NS_PER_S
    start_ns = to_ns(end) - span_ns
    for i in range(count):
        input_tokens = int(rng.lognormvariate(6.5, 1.0))
        output_tokens = int(rng.lognormvariate(5, 0.8))
        yield CostRow(
            span_id=f"{i:016x}",
            trace_id=f"{i:032x}",
            parent_span_id=f"{i:016x}",
            start_ns=start_ns + i * (span_ns // count),
            feature=rng.choice(FEATURES),
            route=rng.choice(ROUTES),
            customer_id=rng.choice(CUSTOMERS),
            environment=rng.choice(ENVIRONMENTS),
            service="bench",
            provider="openai",
            operation="chat",
            request_model=rng.choice(MODELS),
            response_model="gpt-4o-mini-2024-07-18",
            input_tokens=input_tokens,
            cached_tokens=rng.choice((0, 0, input_tokens // 2)),
            cache_write_tokens=0,
            output_tokens=output_tokens,
            reasoning_tokens=0,
            latency_ms=rng.uniform(200, 3000),
            cost_usd=(input_tokens * 0.15 + output_tokens * 0.6) / 1e6,
            pricing_status="priced",
            pricing_source="genai-prices",
            pricing_version="0.2.3",
        )


def ingest(path: Path, rows: int) -> float:
    """Rows per second through ``Store.insert``, batch by batch."""
    spent = 0.0
    done = 0
    generated = synthetic_rows(rows, datetime.now(UTC))
    with Store(path) as store:
        while batch := list(itertools.islice(generated, BATCH)):
            started = time.perf_counter()
            store.insert(batch)
            spent += time.perf_counter() - started
            done += len(batch)
            if done % 100_000 < BATCH:
                print(f"  {done:,} rows", flush=True)
    return rows / spent


def best_of(argv: list[str], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        with contextlib.redirect_stdout(io.StringIO()):
            started = time.perf_counter()
            cli_main(argv)
            best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--store", type=Path, help="reuse (or create) this file instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or Path(tmp) / "bench.sqlite3"
        if not path.exists():
            print(f"ingesting {args.rows:,} rows in batches of {BATCH}...")
            print(f"ingest: {ingest(path, args.rows):,.0f} rows/s")
        with Store(path) as store:
            print(f"store: {store.count():,} rows, {path.stat().st_size / 1e6:,.0f} MB")
        for command in COMMANDS:
            seconds = best_of([*command.split(), "--store", str(path)])
            print(f"{seconds * 1000:6.0f} ms  costspan {command}")


if __name__ == "__main__":
    main()
