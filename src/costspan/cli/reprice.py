"""``costspan reprice``: recompute stored costs with today's price data and pricing file.

Each changed row keeps its first figure in ``original_cost_usd`` and that figure's price data version in
``original_pricing_version`` (set once, on the first re-price), next to the new ``cost_usd`` and
``pricing_version``; ``repriced_at_ns`` says when. Rows without usage stay as they are: there is nothing to price.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from costspan import environment_variables as env
from costspan.cli._store_cli import (
    Progress,
    UsageError,
    add_store_option,
    guarded,
    open_store,
    parse_time,
)
from costspan.money import usd_column
from costspan.store.compaction import compact_under_lock, compaction_lock, land_again
from costspan.store.sqlite import to_ns

if TYPE_CHECKING:
    from costspan.pricing.pricer import Cost, Pricer, PriceSource

CHUNK = 5_000

EXAMPLES = """\
examples:
  costspan reprice --since 30d                          after upgrading costspan (newer genai-prices data)
  costspan reprice --since 2026-11-01 --pricing-file prices.toml   after adding a negotiated rate
  costspan reprice --since 7d --dry-run                 show what would change, write nothing

audit afterwards:
  costspan sql "SELECT span_id, original_cost_usd, original_pricing_version, cost_usd, pricing_version
                FROM spans WHERE repriced_at_ns IS NOT NULL"
"""

# Keyset pages in (start_ns, span_id) order: the same SQL reads the landing table and the store's DuckDB view.
_SELECT = """
SELECT span_id, start_ns, provider, request_model, response_model, service_tier,
       input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
       input_audio_tokens, output_audio_tokens, input_image_tokens, output_image_tokens,
       cache_write_1h_tokens, web_search_requests, batch_id, cost_usd, pricing_status, pricing_version
FROM spans
WHERE (start_ns > ? OR (start_ns = ? AND span_id > ?)) AND start_ns < ? AND input_tokens IS NOT NULL
ORDER BY start_ns, span_id LIMIT ?
"""

_UPDATE = """
UPDATE spans SET
    original_cost_usd = CASE WHEN repriced_at_ns IS NULL THEN cost_usd ELSE original_cost_usd END,
    original_pricing_version = CASE WHEN repriced_at_ns IS NULL THEN pricing_version
                                    ELSE original_pricing_version END,
    cost_usd = ?, cost_input = ?, cost_cache_read = ?, cost_cache_write = ?, cost_output = ?,
    pricing_status = ?, pricing_source = ?, pricing_version = ?, pricing_model = ?, repriced_at_ns = ?
WHERE start_ns = ? AND span_id = ?
"""


@dataclass
class Tally:
    examined: int = 0
    changed: int = 0
    before_usd: float = 0.0
    after_usd: float = 0.0


def _money(value: Any) -> float | None:
    return None if value is None else float(value)


def reprice_row(pricer: Pricer, row: Any) -> Cost:
    """The cost of one stored row under ``pricer``, computed from the same inputs as the span's."""
    # Imported where prices are used, not at the top: every `costspan` command's parsing loads this module.
    from costspan.pricing.pricer import billable_from_row

    return pricer.bill(billable_from_row(row))


def price_layers(pricing_file: str | None) -> tuple[PriceSource, ...]:
    """Packaged prices, under the pricing file when one is given. A bad file is an error here, not a fallback."""
    from costspan.pricing.pricer import packaged_prices

    if not pricing_file:
        return (packaged_prices(),)
    from costspan.pricing.overrides import OverridePrices, PricingFileError, load_pricing_file

    try:
        return (OverridePrices(load_pricing_file(pricing_file)),)
    except PricingFileError as error:
        raise UsageError(str(error)) from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reprice",
        help="recompute stored costs after a price fix or a new pricing file",
        description="Re-price the stored calls of a period with the installed price data and your pricing "
        "file. The first figure and its pricing version are kept on each changed row, so the change is "
        "auditable.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--since", default="30d", metavar="WHEN", help="start of the period (default: 30d)")
    parser.add_argument("--until", metavar="WHEN", help="end of the period, exclusive (default: now)")
    parser.add_argument(
        "--pricing-file", metavar="PATH", help=f"pricing overrides (default: ${env.OTEL_COSTSPAN_PRICING_FILE})"
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")
    add_store_option(parser)
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    from costspan.pricing.pricer import Pricer

    now = datetime.now(UTC)
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now
    pricer = Pricer(price_layers(args.pricing_file or os.environ.get(env.OTEL_COSTSPAN_PRICING_FILE)))
    tally = Tally()
    changed = "would change" if args.dry_run else "changed"
    with open_store(args) as store, ExitStack() as locked:
        total: int = store.query(
            "SELECT count(*) FROM spans WHERE start_ns >= ? AND start_ns < ? AND input_tokens IS NOT NULL",
            (to_ns(since), to_ns(until)),
        )[0][0]
        progress = Progress("re-pricing", total)
        # Rows are updated where they land: a real run first brings the period's compacted rows back there.
        read = store.query if args.dry_run else store.query_landed
        # A real run holds the compaction lock throughout: no compaction may move a row away before it is updated.
        if not args.dry_run:
            locked.enter_context(compaction_lock(store.path, wait=True))
            land_again(store, to_ns(since), to_ns(until))
        page_end: tuple[int, str] = (to_ns(since) - 1, "")
        while True:
            rows = read(_SELECT, (page_end[0], page_end[0], page_end[1], to_ns(until), CHUNK))
            if not rows:
                break
            page_end = (rows[-1]["start_ns"], rows[-1]["span_id"])
            updates = []
            stamp = time.time_ns()
            for row in rows:
                cost = reprice_row(pricer, row)
                new_total = _money(cost.total)
                tally.examined += 1
                tally.before_usd += row["cost_usd"] or 0.0
                tally.after_usd += new_total or 0.0
                if new_total == row["cost_usd"] and cost.status == row["pricing_status"]:
                    continue
                tally.changed += 1
                updates.append(
                    (
                        new_total,
                        *(
                            _money(getattr(cost, part)) if cost.total is not None else None
                            for part in ("input", "cache_read", "cache_write", "output")
                        ),
                        cost.status,
                        cost.source,
                        cost.version,
                        cost.model_id,
                        stamp,
                        row["start_ns"],
                        row["span_id"],
                    )
                )
            if updates and not args.dry_run:
                store.execute_write(_UPDATE, updates)
            progress.show(tally.examined, f" calls, {tally.changed:,} {changed}")
        progress.done()
        if not args.dry_run:
            compact_under_lock(store)
    before, after, difference = usd_column([tally.before_usd, tally.after_usd, tally.after_usd - tally.before_usd])
    spend = f"spend {before} -> {after} ({difference})"
    period = f"since {since:%Y-%m-%d %H:%M} UTC"
    if args.dry_run:
        print(
            f"Would re-price {tally.examined:,} calls {period}; {tally.changed:,} would change, {spend} "
            "(dry run: nothing written)."
        )
    else:
        print(f"Re-priced {tally.examined:,} calls {period}: {tally.changed:,} changed; {spend}.")
    return 0
