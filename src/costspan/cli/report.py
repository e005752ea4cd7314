"""``costspan report``: spend and usage from the store, grouped by any attribution dimension."""

from __future__ import annotations

import argparse
import sys
import textwrap
from datetime import UTC, datetime
from typing import Any

from costspan.cli._store_cli import (
    Column,
    add_filter_options,
    bucket_label,
    count,
    describe,
    guarded,
    millis,
    money_column,
    open_store,
    parse_dimensions,
    percent,
    positive_int,
    read_filters,
    render_table,
    text,
    write_csv,
    write_json,
)
from costspan.money import usd
from costspan.store.sqlite import MEASURES, dimension_names, round_usd


def examples() -> str:
    """The help's epilog; built with the parser, so that it lists the attribution keys in force."""
    return f"""\
columns:
  LLM calls     calls to the provider (app-level retries included: the provider billed them)
  spend         sum of the priced cost, USD; calls without a price are counted apart, never as $0
  tokens in/out prompt and completion tokens
  avg latency   mean call duration
  cache hit     cached prompt tokens / prompt tokens
  p95 prompt    95th percentile of prompt size in tokens (nearest rank)

dimensions (--by, --where; with the attribution keys in OTEL_COSTSPAN_ATTRIBUTION_KEYS):
{textwrap.fill(", ".join(dimension_names()), width=100, initial_indent="  ", subsequent_indent="  ")}

examples:
  costspan report                                      spend per feature over the last 7 days
  costspan report --by feature,customer_id --env prod --top 10
  costspan report --by customer_id --since 30d --where feature=search
  costspan report --by feature --since 2d --every hour --format csv > hourly.csv
  costspan report --by route --since 2026-11-01 --until 2026-12-01 --format json
"""


MEASURE_COLUMNS = (
    Column("requests", "LLM calls", count, numeric=True),
    money_column("spend_usd", "spend"),
    Column("input_tokens", "tokens in", count, numeric=True),
    Column("output_tokens", "tokens out", count, numeric=True),
    Column("avg_latency_ms", "avg latency", millis, numeric=True),
    Column("cache_hit_rate", "cache hit", percent, numeric=True),
    Column("p95_input_tokens", "p95 prompt", count, numeric=True),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="spend and usage by feature, customer, route, ...",
        description="Spend and usage from the costspan store, grouped by the dimensions you choose. Groups are "
        "sorted by spend, highest first.",
        epilog=examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--by", default="feature", metavar="DIM[,DIM...]", help="dimensions to group by (default: feature)"
    )
    parser.add_argument("--top", type=positive_int, metavar="N", help="only the N groups that spent most")
    parser.add_argument("--every", choices=("hour", "day"), help="split each group into hourly or daily buckets")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    add_filter_options(parser)
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    dimensions = parse_dimensions(args.by)
    filters = read_filters(args, datetime.now(UTC))
    with open_store(args) as store:
        rows = store.spend_by(
            dimensions,
            since=filters.since,
            until=filters.until,
            env=filters.env,
            where=filters.where,
            every=args.every,
            top=args.top,
        )
    keys = [*dimensions, *(["bucket"] if args.every else []), *MEASURES]
    if args.format == "csv":
        write_csv(keys, rows, sys.stdout)
    elif args.format == "json":
        write_json(keys, rows, sys.stdout)
    else:
        print(f"Spend by {', '.join(dimensions)}, {describe(filters)}\n")
        print(table(dimensions, args.every, rows))
    return 0


def table(dimensions: list[str], every: str | None, rows: list[dict[str, Any]]) -> str:
    """The terminal report: aligned columns, then a summary line and notes on what the totals leave out."""
    if not rows:
        return "No LLM spans in this period. Widen --since, or check --env/--where and --store."
    columns = [Column(d, d, text) for d in dimensions]
    if every:
        columns.append(Column("bucket", f"{every} (UTC)", bucket_label(every)))
    lines = [render_table([*columns, *MEASURE_COLUMNS], rows)]
    spend = sum(r["spend_usd"] or 0.0 for r in rows)
    calls = sum(r["requests"] for r in rows)
    unpriced = sum(r["unpriced"] for r in rows)
    retries = sum(r["retries"] for r in rows)
    lines.append(f"\n{len(rows):,} rows, {calls:,} LLM calls, {usd(round_usd(spend))} spent.")
    if unpriced:
        lines.append(
            f"{unpriced:,} LLM calls have no price (unknown model or tier, missing or implausible usage) and are "
            "not in the spend; `--by pricing_status` says why, `--by request_model` shows which models; add their "
            "prices to a pricing file (`costspan price --help`), then `costspan reprice`."
        )
    if retries:
        lines.append(f"{retries:,} LLM calls are app-level retries: billed again by the provider, and counted.")
    return "\n".join(lines)
