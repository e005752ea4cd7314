"""``costspan budgets``: stored spend against the caps of a budget file, with the 80% and 100% marks.

The budget file is the one the enforcement reads (``costspan.budgets``, see docs/budgets.md). This command
reports from the store, so it sees what was exported; the enforcement ledger also holds in-flight reservations.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costspan import environment_variables as env
from costspan.cli._store_cli import (
    Column,
    UsageError,
    add_store_option,
    guarded,
    money_column,
    open_store,
    parse_time,
    percent,
    render_table,
    text,
    write_csv,
    write_json,
)

if TYPE_CHECKING:
    from costspan.budgets.guard import Budget, Window
    from costspan.store.sqlite import Store

EXIT_OVER = 1

EXAMPLES = """\
budget file (TOML or YAML; the same file the enforcement reads):
  [[budget]]
  customer_id = "acme"          # one customer ...
  window = "monthly"            # hourly | daily | monthly (calendar windows, in `timezone`, default UTC)
  limit_usd = 500

  [[budget]]
  customer_id = "*"             # ... or every customer, each with its own cap
  window = "daily"
  limit_usd = 20

exit status: 0 all under their caps, 1 at least one at or over 100%, 2 error.

examples:
  costspan budgets --file budgets.toml
  costspan budgets --file budgets.toml --format json
"""


@dataclass(frozen=True)
class Standing:
    """One budgeted subject (e.g. customer_id=acme) in the current window of one budget."""

    budget: Budget
    subject: dict[str, str]
    window: Window
    spent_usd: Decimal

    @property
    def used(self) -> Decimal:
        return self.spent_usd / self.budget.limit_usd if self.budget.limit_usd else Decimal("Infinity")

    @property
    def mark(self) -> Decimal | None:
        """The highest threshold reached (0.8 and 1 by default), or None below all of them."""
        reached = [t for t in self.budget.thresholds if self.used >= t]
        return max(reached) if reached else None


def standings(store: Store, budgets: list[Budget], now: datetime) -> list[Standing]:
    """Every budget's subjects with their spend in the window containing ``now``.

    A ``*`` entry covers the values that have no exact budget of the same keys and window, as enforced.
    """
    # Here and in run, not at the top: the enforcement side imports the price data, which parsing must not.
    from costspan.budgets.guard import window_at

    exact = {(b.window, tuple(sorted(b.scope.items()))) for b in budgets if "*" not in b.scope.values()}
    result = []
    for budget in budgets:
        window = window_at(budget.window, now, budget.tz)
        fixed = {k: v for k, v in budget.scope.items() if v != "*"}
        spread = [k for k, v in budget.scope.items() if v == "*"]
        rows = store.spend_by(spread, since=window.start, until=window.end, where=fixed, percentiles=False)
        if not spread and not rows:
            rows = [{"spend_usd": 0.0}]
        for row in rows:
            if spread and any(row[k] is None for k in spread):
                continue  # spans without that attribute belong to no one's budget
            subject = {**fixed, **{k: str(row[k]) for k in spread}}
            key = (budget.window, tuple(sorted(subject.items())))
            if spread and key in exact:
                continue
            spent = Decimal(repr(row["spend_usd"] or 0.0))
            result.append(Standing(budget, {k: subject[k] for k in budget.scope}, window, spent))
    return result


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "budgets",
        help="spend against the caps of a budget file (80%% / 100%% marks)",
        description="Show each budget's spend in its current window (hour, day or month) against its cap, "
        # Not %-expanded by argparse (only argument and subcommand help is), so a single % here.
        "marking the 80% and 100% thresholds (or the file's alert_thresholds).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--file", metavar="PATH", help=f"the budget file (default: ${env.OTEL_COSTSPAN_BUDGET_FILE})", type=Path
    )
    parser.add_argument("--at", metavar="WHEN", help="evaluate the windows containing this UTC time (default: now)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    add_store_option(parser)
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    from costspan.budgets.guard import BudgetFileError, load_budgets

    from_env = os.environ.get(env.OTEL_COSTSPAN_BUDGET_FILE)
    path = args.file or (Path(from_env) if from_env else None)
    if path is None:
        raise UsageError(f"give the budget file with --file PATH (or set {env.OTEL_COSTSPAN_BUDGET_FILE})")
    try:
        budgets = load_budgets(path)
    except BudgetFileError as error:
        raise UsageError(str(error)) from None
    now = datetime.now(UTC)
    at = parse_time(args.at, now) if args.at else now
    with open_store(args) as store:
        found = standings(store, budgets, at)
    rows = [
        {
            "budget": s.budget.name,
            "subject": ", ".join(f"{k}={v}" for k, v in s.subject.items()),
            "window": s.budget.window,
            "window_start": s.window.start,
            "window_end": s.window.end,
            "spent_usd": float(s.spent_usd),
            "limit_usd": float(s.budget.limit_usd),
            "used": float(s.used),
            "mark": f"{float(s.mark) * 100:g}%" if s.mark is not None else None,
        }
        for s in sorted(found, key=lambda s: -s.used)
    ]
    # The same columns with no budget at all, so that scripts reading the CSV or JSON need no special case.
    keys = ["budget", "subject", "window", "window_start", "window_end", "spent_usd", "limit_usd", "used", "mark"]
    if args.format == "csv":
        write_csv(keys, rows, sys.stdout)
    elif args.format == "json":
        write_json(keys, rows, sys.stdout)
    elif not rows:
        print(f"No budgets in {path}.")
    else:
        print(
            render_table(
                [
                    Column("subject", "subject", text),
                    Column("window", "window", text),
                    Column("window_start", "since", text),
                    money_column("spent_usd", "spent"),
                    money_column("limit_usd", "cap"),
                    Column("used", "used", percent, numeric=True),
                    Column("mark", "mark", lambda m: {"100%": "100% cap reached"}.get(m, m or "")),
                ],
                rows,
            )
        )
    return EXIT_OVER if any(s.used >= 1 for s in found) else 0
