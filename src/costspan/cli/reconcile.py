"""``costspan reconcile``: the store against the provider's own bill, day by day, with the likely cause of a gap."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

from costspan.cli._store_cli import (
    Column,
    UsageError,
    add_filter_options,
    count,
    describe,
    guarded,
    money_column,
    open_store,
    percent,
    read_filters,
    render_table,
    text,
    write_csv,
    write_json,
)
from costspan.money import usd_column
from costspan.providers.openai.reconcile import DEFAULT_BASE_URL, OrganizationReports
from costspan.reports.reconcile import (
    DEFAULT_TOLERANCE,
    OK,
    PARTIAL,
    DayResult,
    ReconcileError,
    compare,
    utc_midnight,
)

EXIT_MISMATCH = 1

EXAMPLES = f"""\
what it compares, per UTC day:
  billed      the provider's Costs API (dollars) and Usage API (LLM calls, tokens), read with an admin key
  recorded    the costspan store: calls with usage, app-level retries included (they are billed)
  verdict     ok within the tolerance; otherwise the likely cause, from the token counts:
              unseen calls, unpriced calls, over-counted, price mismatch. Today is partial.

the admin key (sk-admin-..., made by an organization owner) is read from $OPENAI_ADMIN_KEY, or from the
variable --admin-key-env names; never from the command line, where it would land in shell history.

--env and --where narrow only costspan's side: the provider bills per organization or project. Pair them with
--project for the project those calls bill to (one project per environment), or the rest shows as unseen calls.

exit status: 0 every finished day agrees, {EXIT_MISMATCH} a finished day does not (for cron or CI), 2 an error.

examples:
  costspan reconcile                                   the last 7 days, whole organization
  costspan reconcile --since 30d --project proj_abc    only the project whose keys your apps use
  costspan reconcile --since 2026-11-01 --by-model     where a gap comes from, model by model
  costspan reconcile --project proj_prod --env prod --tolerance 5 --format json
"""

DAY_COLUMNS = (
    Column("day", "day (UTC)", text),
    money_column("billed_usd", "billed"),
    money_column("recorded_usd", "recorded"),
    money_column("difference_usd", "difference"),
    Column("difference_pct", "diff %", percent, numeric=True),
    Column("billed_requests", "billed calls", count, numeric=True),
    Column("recorded_requests", "recorded calls", count, numeric=True),
    Column("billed_tokens", "billed tokens", count, numeric=True),
    Column("recorded_tokens", "recorded tokens", count, numeric=True),
    Column("verdict", "verdict", text),
)
MODEL_COLUMNS = (DAY_COLUMNS[0], Column("model", "model", text), *DAY_COLUMNS[1:-1])
KEYS = [*(c.key for c in DAY_COLUMNS), "unpriced", "cause"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="compare recorded spend with the provider's bill, day by day",
        description="Compare what costspan recorded with what OpenAI billed (its organization Costs and Usage "
        "APIs), per UTC day, and name the likely cause of every gap.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="ID",
        help="only the provider's figures for this project (repeatable); use the project(s) your "
        "instrumented apps' keys belong to, or other apps' spend shows as unseen calls",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE * 100,
        metavar="PERCENT",
        help=f"allowed difference per day, in percent of the bill (default: {DEFAULT_TOLERANCE * 100:g}%%)",
    )
    parser.add_argument("--by-model", action="store_true", help="also break every day down by model")
    parser.add_argument(
        "--admin-key-env",
        default="OPENAI_ADMIN_KEY",
        metavar="NAME",
        help="the environment variable holding the admin key (default: OPENAI_ADMIN_KEY)",
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        metavar="URL",
        help=f"the API's base URL (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    add_filter_options(parser)
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    admin_key = os.environ.get(args.admin_key_env)
    if not admin_key:
        raise UsageError(
            f"set ${args.admin_key_env} to an organization admin key (sk-admin-...): the provider's Costs and Usage "
            "APIs accept no other"
        )
    if args.tolerance < 0:
        raise UsageError("--tolerance is a percentage, 0 or more")
    now = datetime.now(UTC)
    filters = read_filters(args, now)
    # Whole UTC days, as the provider buckets them: a part of a day compared with a whole one is a false gap.
    since = utc_midnight((filters.since or now).date())
    until = utc_midnight((filters.until or now).date() + timedelta(days=1))
    if filters.until is not None and filters.until.time() == time() and filters.until.tzinfo is not None:
        until = utc_midnight(filters.until.date())  # --until 2026-11-08 means up to that midnight
    if until <= since:
        raise UsageError("--until must be after --since")
    show_progress = args.format == "table" and sys.stderr.isatty()
    reports = OrganizationReports(
        admin_key,
        base_url=args.base_url,
        project_ids=args.project,
        on_page=(lambda path, page: print(f"reading {path}, page {page}...", file=sys.stderr))
        if show_progress
        else None,
    )
    try:
        with open_store(args) as store:
            results = compare(
                reports,
                store,
                since,
                until,
                today=now.date(),
                tolerance=args.tolerance / 100,
                env=filters.env,
                where=filters.where,
            )
    except ReconcileError as error:
        print(f"costspan reconcile: error: {error}", file=sys.stderr)
        return 2
    rows = [_row(result) for result in results]
    if args.format != "table":
        keys = KEYS
        if args.by_model:  # one row per day and model; the day's verdict and cause repeat on each
            rows = [_row(result, model) for result in results for model in result.models]
            keys = ["day", "model", *KEYS[1:]]
        (write_csv if args.format == "csv" else write_json)(keys, rows, sys.stdout)
    else:
        period = describe(replace(filters, since=since, until=until))
        scope = f"projects {', '.join(args.project)}" if args.project else "the whole organization"
        print(f"Recorded by costspan vs billed by OpenAI ({scope}), {period}, tolerance {args.tolerance:g}%\n")
        print(_table(results, rows, by_model=args.by_model))
    return EXIT_MISMATCH if any(r.verdict not in (OK, PARTIAL) for r in results) else 0


def _row(result: DayResult, model: str | None = None) -> dict[str, Any]:
    billed, recorded_ = result.provider, result.costspan
    if model is not None:
        billed, recorded_ = result.models[model]
    difference = recorded_.usd - billed.usd
    return {
        "day": result.day.isoformat(),
        "model": model,
        "billed_usd": billed.usd,
        "recorded_usd": recorded_.usd,
        "difference_usd": difference,
        "difference_pct": difference / billed.usd if billed.usd else None,
        "billed_requests": billed.requests,
        "recorded_requests": recorded_.requests,
        "billed_tokens": billed.tokens,
        "recorded_tokens": recorded_.tokens,
        "unpriced": recorded_.unpriced,
        "verdict": result.verdict,
        "cause": result.cause,
    }


def _table(results: list[DayResult], rows: list[dict[str, Any]], *, by_model: bool) -> str:
    if not results:
        return "No days in this period."
    lines = [render_table(DAY_COLUMNS, rows)]
    billed = sum(r.provider.usd for r in results)
    recorded_ = sum(r.costspan.usd for r in results)
    shown = usd_column([billed, recorded_, recorded_ - billed])
    lines.append(f"\n{len(results)} days: billed {shown[0]}, recorded {shown[1]}, difference {shown[2]}.")
    findings = [r for r in results if r.verdict not in (OK, PARTIAL)]
    for result in findings:
        lines.append(f"{result.day}: {result.verdict}: {result.cause}")
    if not findings:
        lines.append("Every finished day agrees within the tolerance.")
    if by_model:
        model_rows = [_row(r, model) for r in results for model in r.models]
        lines.append("\nBy model:\n" + render_table(MODEL_COLUMNS, model_rows))
    return "\n".join(lines)
