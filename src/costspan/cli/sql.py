"""``costspan sql``: any read-only SQL over every stored span, wherever it is kept (landing table or segment)."""

from __future__ import annotations

import argparse
import sys

from costspan.cli._store_cli import add_store_option, guarded, open_store, write_csv, write_json

EXAMPLES = """\
The table is `spans` (its columns: docs/store.md). The SQL is DuckDB's dialect: `//` divides integers,
json_extract_string(attribution, '$.team') reads an attribution key with no column of its own.

examples:
  costspan sql "SELECT feature, sum(cost_usd) FROM spans GROUP BY ALL ORDER BY 2 DESC"
  costspan sql "SELECT span_id, cost_usd, claimed_cost_usd FROM spans WHERE claimed_cost_usd IS DISTINCT FROM cost_usd"
  costspan sql "SELECT span_id, original_cost_usd, cost_usd FROM spans WHERE repriced_at_ns IS NOT NULL" --format json
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sql",
        help="run your own SQL over every stored span",
        description="Run a read-only SQL query over every stored span and print the rows.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", metavar="SQL", help="one SELECT over the table `spans`")
    parser.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default: csv)")
    add_store_option(parser)
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    import duckdb

    with open_store(args) as store:
        try:
            rows = store.query(args.query)
        except duckdb.Error as error:
            print(f"costspan sql: error: {str(error).splitlines()[0]}", file=sys.stderr)
            return 2
    keys = rows[0].keys() if rows else []
    named = [dict(zip(keys, row, strict=True)) for row in rows]
    (write_json if args.format == "json" else write_csv)(keys, named, sys.stdout)
    return 0
