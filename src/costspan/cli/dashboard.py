"""``costspan dashboard``: write one self-contained HTML page of spend over time, top customers and routes."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from costspan.cli._store_cli import EXIT_ERROR, add_filter_options, guarded, open_store, read_filters
from costspan.money import usd

EPILOG = """\
examples:
  costspan dashboard                                   # spend.html, the last 30 days
  costspan dashboard --out week.html --since 7d --env prod
  costspan dashboard --out today.html --since 24h      # hourly bars up to two days, daily beyond
  costspan dashboard --out acme.html --where customer_id=acme

The page has no scripts and loads nothing from the network: open it offline, mail it, attach it to a
ticket. Hover a bar for its exact figure.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="write a self-contained HTML spend dashboard",
        description="Write one HTML page (inline CSS and SVG, works offline) with spend over time per feature, "
        "top customers, routes and models, and cache-hit rate and p95 prompt size per feature.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", metavar="FILE", default="spend.html", help="HTML file to write (default: %(default)s)")
    parser.add_argument("--every", choices=("hour", "day"), help="bar width (default: hourly up to 2 days, else daily)")
    add_filter_options(parser, since="30d")
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    from costspan.reports import dashboard

    now = datetime.now(UTC)
    filters = read_filters(args, now)
    with open_store(args) as store:
        data = dashboard.collect(
            store,
            since=filters.since,
            until=filters.until or now,
            every=args.every,
            env=filters.env,
            where=filters.where,
        )
    out = Path(args.out)
    try:
        out.write_text(dashboard.render(data), encoding="utf-8")
    except OSError as exc:
        print(f"costspan dashboard: error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    spend = usd(data.totals["spend_usd"] or 0.0)
    print(f"wrote {out}: {spend} over {data.totals['requests']} calls. Open it in a browser: {out.resolve().as_uri()}")
    return 0
