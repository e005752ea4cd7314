"""``costspan reconcile``: the store against the provider's own bill, day by day, with the likely cause of a gap."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
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
from costspan.reports.reconcile import (
    DEFAULT_TOLERANCE,
    OK,
    PARTIAL,
    PROVIDER_GAP,
    DayResult,
    ProviderBill,
    ReconcileError,
    compare,
    utc_midnight,
)

EXIT_MISMATCH = 1
AGREES = (OK, PARTIAL, PROVIDER_GAP)  # a provider gap is stated, not a finding: the rest of the day agrees


@dataclass(frozen=True)
class BillSource:
    """Where a provider's bill is read from, and the admin key it takes."""

    key_env: str
    key_shape: str
    base_url_env: str
    scope_option: str  # the option that narrows the bill: an OpenAI project, an Anthropic workspace


SOURCES = {
    "openai": BillSource("OPENAI_ADMIN_KEY", "an organization admin key (sk-admin-...)", "OPENAI_BASE_URL", "project"),
    "anthropic": BillSource(
        "ANTHROPIC_ADMIN_KEY", "an Admin API key (sk-ant-admin...)", "ANTHROPIC_BASE_URL", "workspace"
    ),
}

EXAMPLES = f"""\
what it compares, per UTC day:
  billed      OpenAI: the Costs API (dollars) and Usage API (LLM calls, tokens);
              Anthropic: the Admin API's cost report (dollars) and usage report (tokens; no call counts)
  recorded    the costspan store: that provider's calls with usage, app-level retries included (they are billed)
  verdict     ok within the tolerance; otherwise the likely cause, from the token counts:
              unseen calls, unpriced calls, over-counted, price mismatch. Today is partial. A provider gap
              is a part the provider's reports leave out (Anthropic's cost report has no priority tier, its
              usage report no code execution): set aside and stated, while the rest of the day agrees.

the admin key is read from $OPENAI_ADMIN_KEY (sk-admin-..., made by an organization owner) or
$ANTHROPIC_ADMIN_KEY (sk-ant-admin..., made by an organization admin), or from the variable --admin-key-env
names; never from the command line, where it would land in shell history.

--env and --where narrow only costspan's side: the provider bills per organization, project or workspace. Pair
them with --project (OpenAI) or --workspace (Anthropic) for where those calls bill to, or the rest shows as
unseen calls.

exit status: 0 every finished day agrees, {EXIT_MISMATCH} a finished day does not (for cron or CI), 2 an error.

examples:
  costspan reconcile                                   the last 7 days, whole organization
  costspan reconcile --since 30d --project proj_abc    only the project whose keys your apps use
  costspan reconcile --since 2026-11-01 --by-model     where a gap comes from, model by model
  costspan reconcile --project proj_prod --env prod --tolerance 5 --format json
  costspan reconcile --provider anthropic --since 14d  Anthropic's usage and cost reports
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
        description="Compare what costspan recorded with what the provider billed (OpenAI's organization Costs "
        "and Usage APIs, or Anthropic's usage and cost reports), per UTC day, and name the likely cause of every "
        "gap.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--provider",
        choices=tuple(SOURCES),
        default="openai",
        help="whose bill to compare with; only that provider's calls are read from the store (default: openai)",
    )
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="ID",
        help="OpenAI: only the figures for this project (repeatable); use the project(s) your "
        "instrumented apps' keys belong to, or other apps' spend shows as unseen calls",
    )
    parser.add_argument(
        "--workspace",
        action="append",
        default=[],
        metavar="ID",
        help="Anthropic: only the figures for this workspace (wrkspc_..., repeatable), likewise",
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
        metavar="NAME",
        help="the environment variable holding the admin key (default: OPENAI_ADMIN_KEY, or ANTHROPIC_ADMIN_KEY "
        "with --provider anthropic)",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="the API's base URL (default: $OPENAI_BASE_URL, else https://api.openai.com/v1; with --provider "
        "anthropic, $ANTHROPIC_BASE_URL, else https://api.anthropic.com)",
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    add_filter_options(parser)
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    source = SOURCES[args.provider]
    key_env = args.admin_key_env or source.key_env
    admin_key = os.environ.get(key_env)
    if not admin_key:
        raise UsageError(f"set ${key_env} to {source.key_shape}: the provider's usage and cost reports accept no other")
    wrong_scope = "workspace" if source.scope_option == "project" else "project"
    if getattr(args, wrong_scope):
        raise UsageError(
            f"--{wrong_scope} is for another provider; with --provider {args.provider} use --{source.scope_option}"
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
    on_page = (lambda path, page: print(f"reading {path}, page {page}...", file=sys.stderr)) if show_progress else None
    base_url = args.base_url or os.environ.get(source.base_url_env)
    reports: ProviderBill  # the provider's client is imported only for the provider asked for
    if args.provider == "anthropic":
        from costspan.providers.anthropic import reconcile as anthropic

        reports = anthropic.AdminReports(
            admin_key, base_url=base_url or anthropic.DEFAULT_BASE_URL, workspace_ids=args.workspace, on_page=on_page
        )
    else:
        from costspan.providers.openai import reconcile as openai

        reports = openai.OrganizationReports(
            admin_key, base_url=base_url or openai.DEFAULT_BASE_URL, project_ids=args.project, on_page=on_page
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
        scope_ids = args.project or args.workspace
        scope = f"{source.scope_option}s {', '.join(scope_ids)}" if scope_ids else "the whole organization"
        print(f"Recorded by costspan vs billed by {reports.name} ({scope}), {period}, tolerance {args.tolerance:g}%\n")
        print(_table(results, rows, by_model=args.by_model))
    return EXIT_MISMATCH if any(r.verdict not in AGREES for r in results) else 0


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
        "billed_requests": billed.requests if result.provider_counts_requests else None,  # Anthropic: not reported
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
    if all(r.verdict in AGREES for r in results):
        lines.append(
            "Every finished day agrees within the tolerance"
            + (", apart from what the provider's reports leave out." if findings else ".")
        )
    if by_model:
        model_rows = [_row(r, model) for r in results for model in r.models]
        lines.append("\nBy model:\n" + render_table(MODEL_COLUMNS, model_rows))
    return "\n".join(lines)
